//! Opening a Postgres connection the way libpq would read the same URL, TLS included.
//!
//! diesel-async's own set-up connects without TLS; here the URL's `sslmode` (`disable`,
//! `allow`, `prefer` (the default, as in libpq), `require`, `verify-ca`, `verify-full`)
//! and `sslrootcert` (a PEM file, or `system`) choose a rustls connector, tokio-postgres
//! opens the connection, and diesel-async is handed the result. As in libpq, `require`
//! with a CA file checks the chain like `verify-ca`; unlike libpq, `verify-*` without a CA
//! file trusts the system's store (libpq's `sslrootcert=system`) instead of failing, which
//! is what managed offerings with public certificates need.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use diesel_async::AsyncPgConnection;
use tokio_postgres::Socket;
use tokio_postgres::config::{Host, SslMode as WireMode};
use tokio_postgres::tls::{MakeTlsConnect, NoTls, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{DbError, conninfo};
use crate::tls::{self, Verify};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, no certificate check (the default).
    Prefer,
    /// TLS or nothing; no certificate check unless a CA file is named.
    Require,
    /// TLS, the chain checked against the CA.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Every mode, weakest first.
    pub const ALL: [Self; 6] = [
        Self::Disable,
        Self::Allow,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];

    /// As written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|m| m.as_str()).collect();
                format!("sslmode={s:?} is not one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed database URL: where to connect and how.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    mode: SslMode,
    /// The rustls connector (`None` for `disable`); cloning it shares its configuration.
    tls: Option<MakeRustlsConnect>,
    /// `host:port/database sslmode=…`, for messages (no user, no password).
    shown: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// What a database URL says, read without touching any file or server.
pub struct Options {
    /// tokio-postgres's configuration (hosts, ports, user, database, session attributes).
    pub config: tokio_postgres::Config,
    /// The TLS mode.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, `system`, or none.
    pub root: Option<String>,
}

/// How long one host may take to accept a connection when the URL does not say
/// (`connect_timeout`): with several hosts, a host that does not answer must not hold up
/// the next for the system's TCP timeout (minutes).
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Options {
    /// Reads a database URL or keyword/value string.
    pub fn read(url: &str) -> Result<Self, DbError> {
        // tokio-postgres ends the password at the first '@': one holding '@' would be
        // read as part of the host, and printed as one.
        crate::url_secret::check_userinfo(url)
            .map_err(|e| DbError::Unavailable(format!("DATABASE_URL {e}")))?;
        let split = conninfo::split(url)?;
        let mode = split
            .sslmode
            .map(|m| m.parse::<SslMode>())
            .transpose()
            .map_err(|e| DbError::Unavailable(format!("DATABASE_URL: {e}")))?;
        let root = split.sslrootcert;
        // As libpq: `sslrootcert=system` means verify-full, and refuses a weaker mode.
        let mode = match (mode, root.as_deref()) {
            (None, Some("system")) => SslMode::VerifyFull,
            (Some(m), Some("system")) if m != SslMode::VerifyFull => {
                return Err(DbError::Unavailable(format!(
                    "DATABASE_URL: sslrootcert=system requires sslmode=verify-full, not {m}"
                )));
            }
            (m, _) => m.unwrap_or(SslMode::Prefer),
        };
        let mut config = tokio_postgres::Config::from_str(&split.rest).map_err(|e| {
            DbError::Unavailable(format!(
                "DATABASE_URL: {}",
                crate::url_secret::redact(&with_causes(&e))
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(Self { config, mode, root })
    }
}

impl Target {
    /// Reads a database URL (or libpq's keyword/value form, see [`super::conninfo`]); the
    /// CA file named by `sslrootcert` is read now, so that a missing file fails at
    /// start-up.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        let Options {
            mut config,
            mode,
            root,
        } = Options::read(url)?;
        let ca_pem = match root.as_deref() {
            None | Some("system") => None,
            Some(path) => Some(
                tls::read_ca_pem(Path::new(path))
                    .map_err(|e| DbError::Unavailable(format!("DATABASE_URL sslrootcert: {e}")))?,
            ),
        };
        let verify = match mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if ca_pem.is_some() => Verify::Chain,
            SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndName,
        };
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(
                tls::client_config(verify, ca_pem.as_deref())
                    .map_err(|e| DbError::Unavailable(format!("DATABASE_URL: {e}")))?,
            )),
        };
        config.ssl_mode(match mode {
            SslMode::Disable | SslMode::Allow => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            _ => WireMode::Require,
        });
        let shown = format!("postgres {} sslmode={mode}", describe(&config));
        Ok(Self {
            config,
            mode,
            tls,
            shown,
        })
    }

    /// The TLS mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens one connection; the error names the server and the mode, never a password.
    pub async fn connect(&self) -> Result<AsyncPgConnection, String> {
        let result = match (&self.tls, self.mode) {
            (None, _) => open(&self.config, NoTls).await,
            // `allow`: plain text first; if the server refuses it, TLS.
            (Some(tls), SslMode::Allow) => match open(&self.config, NoTls).await {
                Ok(conn) => Ok(conn),
                Err(plain) => {
                    let mut config = self.config.clone();
                    config.ssl_mode(WireMode::Require);
                    open(&config, tls.clone())
                        .await
                        .map_err(|e| format!("{plain}; then over TLS: {e}"))
                }
            },
            (Some(tls), _) => open(&self.config, tls.clone()).await,
        };
        result.map_err(|e| format!("{}: {e}", self.shown))
    }
}

/// Opens a connection with `tls` (or [`NoTls`]) and hands it to diesel-async.
async fn open<T>(config: &tokio_postgres::Config, tls: T) -> Result<AsyncPgConnection, String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: TlsStream + Unpin + Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(|e| with_causes(&e))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(|e| e.to_string())
}

/// An error with its causes (tokio-postgres shows a server's refusal as "db error" and
/// keeps the server's message in the cause).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// `host:port,host:port/database` of a configuration (every host, in the order tried).
pub fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            };
            // As libpq: one port for every host, or one per host.
            let port = match ports {
                [one] => *one,
                many => many.get(i).copied().unwrap_or(5432),
            };
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let db = config.get_dbname().unwrap_or("");
    format!("{hosts}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_options_are_read_like_libpq() {
        let t = Target::parse("postgres://u:p@h:5433/db").unwrap();
        assert_eq!(t.mode(), SslMode::Prefer);
        assert_eq!(format!("{t:?}"), "postgres h:5433/db sslmode=prefer");
        for name in SslMode::ALL.map(SslMode::as_str) {
            let t = Target::parse(&format!(
                "postgres://u:p@h/db?options=-c%20search_path%3Dx&sslmode={name}"
            ))
            .unwrap();
            assert_eq!(t.mode().to_string(), name);
            assert_eq!(t.tls.is_some(), name != "disable");
        }
        let err = Target::parse("postgres://u:SeCrEt@h/db?sslmode=bogus").unwrap_err();
        assert!(err.to_string().contains("sslmode"), "{err}");
        assert!(!err.to_string().contains("SeCrEt"), "{err}");
        let err = Target::parse("postgres://h/db?sslmode=require&sslrootcert=%2Fno%2Fsuch.pem")
            .unwrap_err();
        assert!(err.to_string().contains("/no/such.pem"), "{err}");
        let t = Target::parse("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(t.mode(), SslMode::VerifyFull);
        let err = Target::parse("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = Target::parse("postgres://h/db?sslcert=c.pem").unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn every_host_is_shown_in_the_order_tried() {
        for (url, shown) in [
            (
                "postgres://u:SeCrEt@a:5433,b:5434/db?target_session_attrs=read-write",
                "postgres a:5433,b:5434/db sslmode=prefer",
            ),
            (
                "postgres://u@a,b:6000/db",
                "postgres a:5432,b:6000/db sslmode=prefer",
            ),
            (
                "host=a,b port=6000 dbname=db password=SeCrEt sslmode=require",
                "postgres a:6000,b:6000/db sslmode=require",
            ),
        ] {
            let t = Target::parse(url).unwrap();
            assert_eq!(format!("{t:?}"), shown);
            assert_eq!(
                t.config.get_connect_timeout(),
                Some(&DEFAULT_CONNECT_TIMEOUT)
            );
        }
        let t = Target::parse("postgres://h/db?connect_timeout=3").unwrap();
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
    }

    /// Tokio-postgres would read `S@cr3t` as the password `S` and the
    /// host `cr3t@127.0.0.1`, and name that host in its errors.
    #[test]
    fn a_password_the_parser_would_misread_is_refused_unshown() {
        for url in [
            "postgres://app:S@cr3t@127.0.0.1:5432/db",
            "postgres://app:Se/cr3t@127.0.0.1:5432/db",
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains("percent-encode"), "{err}");
            assert!(!err.contains("cr3t"), "{err}");
        }
        let t = Target::parse("postgres://app:S%40cr3t@127.0.0.1:5432/db").unwrap();
        assert_eq!(
            format!("{t:?}"),
            "postgres 127.0.0.1:5432/db sslmode=prefer"
        );
    }
}
