//! A throwaway RabbitMQ node for tests that must stop, restart or reconfigure a broker:
//! started from the Debian package's scripts on spare ports, with its own data directory,
//! Erlang cookie and configuration, and stopped (directory removed) when dropped, whether
//! the test passed or not, or by a watchdog when the test process is killed. The
//! machine's own broker on 5672 is never touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rand::Rng;

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A running node.
pub struct RabbitNode {
    /// `oc-<tag>@localhost`.
    pub name: String,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// Erlang distribution's port (kept, so that a restarted node is the same node).
    dist_port: u16,
    dir: PathBuf,
}

pub(crate) fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a spare port")
}

impl RabbitNode {
    /// Starts a node; `advanced_config` is an Erlang term list for `advanced.config`
    /// (`[]` for none). Blocks until the node accepts AMQP connections (about 10 s).
    pub fn start(advanced_config: &str) -> Self {
        Self::start_with(advanced_config, |port| {
            format!("listeners.tcp.default = 127.0.0.1:{port}\n")
        })
    }

    /// Starts a node whose only listener is TLS on `port`, with the server certificate
    /// and key and the CA (PEM files), requiring a client certificate signed by that CA.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Self {
        let (ca, cert, key) = (ca.display(), cert.display(), key.display());
        Self::start_with("[]", |port| {
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n"
            )
        })
    }

    /// Starts a node whose listeners `listeners(port)` writes in `rabbitmq.conf`.
    fn start_with(advanced_config: &str, listeners: impl Fn(u16) -> String) -> Self {
        let tag = format!("{:08x}", rand::rng().random::<u32>());
        let node = Self::create(
            &format!("oc-{tag}"),
            &format!("OCTEST{tag}"),
            |port| format!("{}loopback_users = none\n", listeners(port)),
            advanced_config,
        );
        node.launch();
        node.watch_this_process();
        node.await_startup();
        node
    }

    /// Prepares a node named `<stem>@localhost` (its directory, Erlang cookie and
    /// configuration) without starting it; a cluster's nodes share `cookie`.
    pub(crate) fn create(
        stem: &str,
        cookie: &str,
        conf: impl Fn(u16) -> String,
        advanced_config: &str,
    ) -> Self {
        assert!(
            Path::new(BIN).join("rabbitmq-server").exists(),
            "{BIN}/rabbitmq-server is missing: install the rabbitmq-server package (scripts/services.sh does)"
        );
        let dir = std::env::temp_dir().join(format!("oc-rabbit-{stem}"));
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("node directory");
        }
        let cookie_file = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie_file, cookie).expect("cookie");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400))
                .expect("cookie mode");
        }
        let port = spare_port();
        std::fs::write(dir.join("rabbitmq.conf"), conf(port)).expect("rabbitmq.conf");
        std::fs::write(dir.join("advanced.config"), format!("{advanced_config}.\n"))
            .expect("advanced.config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        Self {
            name: format!("{stem}@localhost"),
            port,
            dist_port: spare_port(),
            dir,
        }
    }

    /// Starts the node's Erlang VM, detached (after [`RabbitNode::create`], or again after
    /// [`RabbitNode::stop`] or [`RabbitNode::kill`], with the same data).
    pub(crate) fn launch(&self) {
        let started = self
            .command("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .status()
            .expect("run rabbitmq-server");
        assert!(started.success(), "rabbitmq-server -detached failed");
    }

    /// Kills the node's Erlang VM with SIGKILL (no goodbye to its peers or clients).
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL {} failed", pid.trim());
        // The pid file names a dead process now; a later start writes it again.
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    /// Stops the node cleanly (its VM exits).
    pub fn stop(&self) {
        self.ctl_ok(&["stop"]);
    }

    /// Starts a stopped or killed node again, with its data, and waits until it runs.
    pub fn restart(&self) {
        self.launch();
        self.await_startup();
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(Path::new(BIN).join(program));
        command
            .env("HOME", self.dir.join("home"))
            // An Erlang VM that dies writes its dump beside the node, not in the checkout.
            .env("ERL_CRASH_DUMP", self.dir.join("erl_crash.dump"))
            .env("RABBITMQ_NODENAME", &self.name);
        command
    }

    /// A detached watchdog stops the node and removes its directory if this test process
    /// dies without dropping it (killed, or aborted): a node never outlives its test.
    pub(crate) fn watch_this_process(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 2; done; \
             [ -d {dir} ] && cd {dir} && HOME={home} {bin}/rabbitmqctl -n {name} stop >/dev/null 2>&1; \
             rm -rf {dir}",
            pid = std::process::id(),
            home = self.dir.join("home").display(),
            bin = BIN,
            name = self.name,
            dir = self.dir.display(),
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!(
                "no watchdog for RabbitMQ node {} ({e}); it is stopped on drop only",
                self.name
            );
        }
    }

    /// Waits until the rabbit application runs (a freshly detached node is not even
    /// registered for a moment, and `await_startup` fails at once then).
    pub fn await_startup(&self) {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.ctl(&["await_startup", "--timeout", "30"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < until,
                "node {} did not start: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.command("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run rabbitmqctl")
    }

    /// Runs `rabbitmqctl` and fails the test if it fails.
    pub fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The AMQP URL of the node.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
