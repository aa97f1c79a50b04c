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

use super::DbError;
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

impl Target {
    /// Reads a `postgres://` URL; the CA file named by `sslrootcert` is read now, so that a
    /// missing file fails at start-up.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        // tokio-postgres ends the password at the first '@': one holding '@' would be
        // read as part of the host, and printed as one.
        crate::url_secret::check_userinfo(url)
            .map_err(|e| DbError::Unavailable(format!("DATABASE_URL {e}")))?;
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode: Option<SslMode> = None;
        let mut root: Option<String> = None;
        let mut kept = Vec::new();
        for (part, key, value) in query_parts(query) {
            let decoded = || {
                percent_decode(value).ok_or_else(|| {
                    DbError::Unavailable(format!(
                        "DATABASE_URL: {key} is not a valid percent-encoded UTF-8 value"
                    ))
                })
            };
            match key {
                "sslmode" => {
                    mode = Some(
                        decoded()?
                            .parse()
                            .map_err(|e| DbError::Unavailable(format!("DATABASE_URL: {e}")))?,
                    );
                }
                "sslrootcert" => root = Some(decoded()?),
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(DbError::Unavailable(format!(
                        "DATABASE_URL: {key} (a client certificate for Postgres) is not supported"
                    )));
                }
                _ => kept.push(part),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
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
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| DbError::Unavailable(format!("DATABASE_URL: {e}")))?;
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

/// `host:port/database` of a configuration.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// The `key=value` parts of a URL's query: (the part as written, key, raw value).
fn query_parts(query: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        (part, key, value)
    })
}

/// The value of `key` in a database URL's query, decoded as libpq decodes it; None when
/// it is absent (or not validly encoded, which [`Target::parse`] refuses).
pub fn query_value(url: &str, key: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query_parts(query)
        .find(|(_, k, _)| *k == key)
        .and_then(|(_, _, v)| percent_decode(v))
}

/// The URL with `key=value` added to its query, the value percent-encoded so that libpq
/// (and [`Target::parse`]) read it back exactly (a space is `%20`, never `+`).
pub fn with_query_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", percent_encode(value))
}

/// Every byte but the unreserved ones (and `/`) as `%XX`.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A percent-encoded query value, decoded as libpq does: `%XX` with two hex digits (not
/// `%00`); anything else after a `%` is refused. `+` stays `+`.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let b = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if b == 0 {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("%2Ftmp%2Fca.pem").unwrap(), "/tmp/ca.pem");
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%+A"), None);
        assert_eq!(percent_decode("a%00b"), None);
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        let url = with_query_param(
            "postgres://h/db?sslmode=require",
            "sslrootcert",
            "/a b+c.pem",
        );
        assert_eq!(
            url,
            "postgres://h/db?sslmode=require&sslrootcert=/a%20b%2Bc.pem"
        );
        assert_eq!(query_value(&url, "sslrootcert").unwrap(), "/a b+c.pem");
        assert_eq!(query_value(&url, "sslcert"), None);
    }
}
