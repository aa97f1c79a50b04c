//! Clients that hold a server's connections: each connects from a loopback address of its
//! own choosing (127.0.0.2, 127.0.0.3, ...: every 127/8 address is this host, so one
//! machine plays several source hosts), sends the start of a request and then at most a
//! byte a second, and notes when the server closes it and what it answered first.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// The clients of one attack; dropping it lets their connections go.
pub struct SlowClients {
    closed: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    /// Connections made.
    pub total: usize,
}

impl SlowClients {
    /// `per_host` connections from each of `hosts` to `server`, every one connected and
    /// its `head` sent before this returns. With `trickle`, each then sends one more
    /// byte a second (as a slow body would), never finishing.
    pub async fn start(
        server: SocketAddr,
        hosts: &[&str],
        per_host: usize,
        head: &[u8],
        trickle: bool,
    ) -> Self {
        let clients = Self {
            closed: Arc::new(AtomicUsize::new(0)),
            answers: Arc::new(Mutex::new(Vec::new())),
            stop: CancellationToken::new(),
            total: hosts.len() * per_host,
        };
        for host in hosts {
            let ip: IpAddr = host.parse().expect("a loopback address");
            for _ in 0..per_host {
                let socket = TcpSocket::new_v4().expect("a socket");
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .expect("bind a loopback address");
                let mut stream = socket.connect(server).await.expect("connect");
                // A connection the server closed already may refuse the write: it is
                // counted as closed below all the same.
                let _ = stream.write_all(head).await;
                let closed = Arc::clone(&clients.closed);
                let answers = Arc::clone(&clients.answers);
                let stop = clients.stop.clone();
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            read = stream.read(&mut buf) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => received.extend_from_slice(&buf[..n]),
                            },
                            () = tokio::time::sleep(Duration::from_secs(1)), if trickle => {
                                let _ = stream.write_all(b"a").await;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&received);
                    if let Some(first) = text.lines().next().filter(|l| !l.is_empty()) {
                        answers.lock().unwrap().push(first.to_owned());
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        clients
    }

    /// Connections the server has closed so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// The first line of every answer received on a closed connection (a status line).
    pub fn answers(&self) -> Vec<String> {
        self.answers.lock().unwrap().clone()
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
