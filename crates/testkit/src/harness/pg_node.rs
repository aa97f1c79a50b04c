//! A throwaway PostgreSQL cluster for tests that need a server configured otherwise than
//! the machine's own (TLS only, for one): `initdb` from the Debian package into a
//! temporary directory, started on a spare port, stopped and removed when dropped, or by
//! a watchdog when the test process is killed. The machine's server on 5432 is never
//! touched. Run as the `postgres` user when the test runs as root (the server refuses
//! root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::Rng;

/// A running cluster.
pub struct PgNode {
    /// The port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql is missing: install the postgresql package")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let newest = versions.last().expect("no PostgreSQL server installed");
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PgNode {
    /// Starts a cluster that accepts only TLS connections on TCP (`hostssl`, trust
    /// authentication), with the server certificate and key given as PEM text.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             max_connections = 50\n",
            "hostssl all all 127.0.0.1/32 trust\n",
            &[("server.crt", cert_pem), ("server.key", key_pem)],
        )
    }

    /// Starts a cluster that takes plain-text connections on TCP (trust authentication),
    /// with room for several worker processes' pools (for a run that restarts it).
    pub fn start_plain() -> Self {
        Self::start_plain_with("")
    }

    /// [`PgNode::start_plain`] with more `postgresql.conf` lines (for example
    /// `default_transaction_read_only = on`, which makes it answer a read-write check as a
    /// standby does).
    pub fn start_plain_with(conf: &str) -> Self {
        Self::start_with(
            &format!("ssl = off\nmax_connections = 300\n{conf}"),
            "host all all 127.0.0.1/32 trust\n",
            &[],
        )
    }

    /// `initdb`, the configuration (`conf` and the `pg_hba.conf` lines `hba`), the `files`
    /// written into the data directory (private: mode 0600), then started.
    fn start_with(conf: &str, hba: &str, files: &[(&str, &str)]) -> Self {
        let tag = format!("{:08x}", rand::rng().random::<u32>());
        let dir = std::env::temp_dir().join(format!("oc-pg-{tag}"));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a spare port");
        let node = Self {
            port,
            dir,
            bin: server_bin(),
        };
        node.chown();
        node.run_ok(
            "initdb",
            &[
                "-D",
                &node.data().display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let data = node.data();
        for (name, text) in files {
            std::fs::write(data.join(name), text).expect("a file of the cluster");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o600))
                    .expect("file mode");
            }
        }
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             fsync = off\n{conf}",
            dir = node.dir.display()
        );
        let mut postgresql_conf =
            std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        postgresql_conf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), postgresql_conf).expect("postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .expect("pg_hba.conf");
        node.chown();
        node.watch_this_process();
        node.start();
        node
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&self) {
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.join("log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server (`fast`: open connections are cut, the way a restart does).
    pub fn stop(&self) {
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Hands the directory to the `postgres` user when running as root.
    fn chown(&self) {
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", self.dir.display());
        }
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run a PostgreSQL program");
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A watchdog stops the cluster and removes it if this process dies first.
    fn watch_this_process(&self) {
        let stop = if as_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 2; done; \
             {stop}{bin}/pg_ctl -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            bin = self.bin.display(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    /// A URL for database `db` on `host` (`localhost` matches the test certificate).
    pub fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!(
            "postgres://postgres:SeCrEt-pw@{host}:{}/{db}?{query}",
            self.port
        )
    }

    /// A plain-text URL for database `db` ([`PgNode::start_plain`]).
    pub fn plain_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The directory (for files the test writes beside the cluster).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
