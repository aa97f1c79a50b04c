//! The database section of the settings: where Postgres is and how many connections a
//! process may hold. Read apart from the rest so that each part of the product is handed
//! only the section it uses.

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, Vars, urls};

/// The default database URL: the local server, database `order_closer`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/order_closer";

/// Where the orders are kept.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Postgres connection URL (`DATABASE_URL` or `DATABASE_URL_FILE`), with the CA of
    /// `ORDER_CLOSER_DB_TLS_CA` as its `sslrootcert`; it may carry a password.
    pub url: SecretString,
    /// Maximum database connections per process (`ORDER_CLOSER_DB_POOL_SIZE`).
    pub pool_size: usize,
}

impl DatabaseSettings {
    /// Reads `DATABASE_URL` (or its file), `ORDER_CLOSER_DB_TLS_CA` and
    /// `ORDER_CLOSER_DB_POOL_SIZE`; an invalid value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let url = vars
            .secret("DATABASE_URL", "DATABASE_URL_FILE")?
            .map_or_else(
                || DEFAULT_DATABASE_URL.to_owned(),
                |s| s.expose_secret().to_owned(),
            );
        urls::check_database_url(&url)
            .map_err(|reason| ConfigError::invalid_url("DATABASE_URL", &url, reason))?;
        let url = match vars.get("ORDER_CLOSER_DB_TLS_CA") {
            None => url,
            Some(path) => with_root_cert(&url, path.trim())
                .map_err(|reason| ConfigError::invalid("ORDER_CLOSER_DB_TLS_CA", &path, reason))?,
        };
        Ok(Self {
            url: url.into(),
            pool_size: vars.number("ORDER_CLOSER_DB_POOL_SIZE", 16, 1, 1000)?,
        })
    }
}

/// The database URL with `sslrootcert` naming the CA file `path`
/// (`ORDER_CLOSER_DB_TLS_CA`); refused when the URL names another one.
fn with_root_cert(url: &str, path: &str) -> Result<String, String> {
    use crate::db::conninfo::{value, with_param};
    match value(url, "sslrootcert") {
        Some(named) if named == path => Ok(url.to_owned()),
        Some(named) => Err(format!(
            "DATABASE_URL names another sslrootcert ({named}); set one of them"
        )),
        None => Ok(with_param(url, "sslrootcert", path)),
    }
}
