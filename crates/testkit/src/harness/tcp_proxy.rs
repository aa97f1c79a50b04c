//! A TCP proxy a test can switch off and on, to make a server unreachable for one
//! component only (the notify endpoint's database, for example) while everything else
//! keeps using it. Switched off, it refuses new connections and cuts the open ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Proxies a free loopback port to `target`; starts switched `on`.
    pub async fn start(target: SocketAddr, on: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(on));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (o, c, s) = (open.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(token) = c.lock().map(|t| t.clone()) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            cut,
            stop,
        }
    }

    /// Lets connections through again.
    pub fn switch_on(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Refuses new connections and cuts the open ones.
    pub fn switch_off(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut token) = self.cut.lock() {
            token.cancel();
            *token = CancellationToken::new();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(token) = self.cut.lock() {
            token.cancel();
        }
    }
}
