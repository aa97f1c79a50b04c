//! Server URLs checked in full at start-up, so that a URL that can never work fails
//! naming its variable instead of starting a process that retries for ever; and every URL
//! shown in a message with its password hidden.

use url::Url;

use crate::url_secret::check_userinfo;

/// Checks a PostgreSQL URL (`postgres://` or `postgresql://`, one host or several) or
/// libpq's keyword/value form (`host=a,b dbname=db ...`): at least one host, valid ports, a
/// database name, and a known `sslmode`. Returns why it is unusable (never the URL).
pub fn check_database_url(url: &str) -> Result<(), String> {
    if url.contains("://") && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(
            "must start with postgres:// or postgresql:// (or be libpq's keyword/value form, \
             host=... dbname=...)"
                .into(),
        );
    }
    let options = crate::db::connect::Options::read(url).map_err(|e| {
        e.to_string()
            .trim_start_matches("database unavailable: ")
            .to_owned()
    })?;
    let config = &options.config;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err("names no host".into());
    }
    if config.get_dbname().is_none_or(str::is_empty) {
        return Err(
            "names no database (postgres://user:password@host:port/DATABASE, or dbname=...)".into(),
        );
    }
    Ok(())
}

/// Checks an AMQP URL, or a comma-separated list of them, as the client will read each
/// (scheme, host, port, vhost, and query options such as `heartbeat`).
pub fn check_amqp_url(url: &str) -> Result<(), String> {
    crate::broker::addresses::parse(url).map(|_| ())
}

/// Checks an `http://` or `https://` URL with a host.
pub fn check_http_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    check_userinfo(url)?;
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url_secret::redact;

    #[test]
    fn unusable_database_urls_are_named() {
        for (url, why) in [
            ("postgres://", "no host"),
            ("postgres://u:p@h:99999/db", "port"),
            ("postgres://u:p@h/db?sslmode=bogus", "sslmode"),
            ("postgres://u:p@h:5432", "no database"),
            ("postgres://u:p@h:5432/", "no database"),
            ("mysql://u:p@h/db", "postgres://"),
            (" postgres://u:p@h/db", "postgres://"),
            ("postgres://u:p@a:5432,b:99999/db", "port"),
            ("host=a,b user=u password=p", "no database"),
            ("host=a dbname=db sslmode=bogus", "sslmode"),
            ("host=a dbname='db", "unterminated"),
            ("dbname=db bogus_option=1", "bogus_option"),
        ] {
            let err = check_database_url(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
            assert!(
                !err.contains(url.trim()),
                "{url}: the URL is echoed in {err}"
            );
        }
        for url in [
            "postgres://postgres:postgres@127.0.0.1:5432/order_closer",
            "postgres://u:p@a:5432,b:5433/db?target_session_attrs=read-write",
            "postgresql://u@a,b,c/db?sslmode=verify-full&target_session_attrs=read-write",
            "host=a,b port=5432,5433 user=u password='p w' dbname=db target_session_attrs=read-write",
            "postgresql://h/db?sslmode=verify-full&options=-c%20search_path%3Dx",
        ] {
            assert_eq!(check_database_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn unusable_amqp_and_http_urls_are_named() {
        assert!(check_amqp_url("amqp://g:g@127.0.0.1:99999/%2f").is_err());
        assert!(check_amqp_url("amqp://g:g@127.0.0.1:5672/%2f?heartbeat=abc").is_err());
        assert!(check_amqp_url("AMQP://g:g@h/%2f").is_err());
        assert_eq!(check_amqp_url("amqps://u:p@broker:5671/vh"), Ok(()));
        assert!(check_http_url("http://").is_err());
        assert!(check_http_url("http://h:99999").is_err());
        assert!(check_http_url("ftp://h").is_err());
        assert_eq!(check_http_url("https://openapi.alipay.com"), Ok(()));
    }

    /// A password holding `/`, `?`, `#` or `@` (a generated base64
    /// password holds `/`) never shows, in part or whole, whatever a parser makes of the
    /// URL; such a URL is refused, saying how to write it.
    #[test]
    fn passwords_with_url_delimiters_never_show_and_are_refused() {
        for secret in [
            "Se/cr3t",
            "Se?cr3t",
            "Se#cr3t",
            "S@cr3t",
            "x@y/z?w#v",
            "aB+c==",
        ] {
            for (url, check) in [
                (
                    format!("postgres://app:{secret}@127.0.0.1:5432/db"),
                    check_database_url as fn(&str) -> Result<(), String>,
                ),
                (
                    format!("amqp://app:{secret}@127.0.0.1:5672/%2f"),
                    check_amqp_url,
                ),
                (format!("https://app:{secret}@gw.example/x"), check_http_url),
            ] {
                let shown = redact(&url);
                assert!(shown.contains("://***@"), "{url}: {shown}");
                for part in secret.split(['/', '?', '#', '@', '+', '=']) {
                    assert!(!shown.contains(part) || part.len() < 2, "{url}: {shown}");
                }
                if secret.contains(['/', '?', '#', '@']) {
                    let err = check(&url).unwrap_err();
                    assert!(err.contains("percent-encode"), "{url}: {err}");
                    assert!(!err.contains("cr3t"), "{url}: {err}");
                } else {
                    assert_eq!(check(&url), Ok(()), "{url}");
                }
            }
        }
        // Percent-encoded, the same passwords are fine.
        assert_eq!(
            check_database_url("postgres://app:Se%2Fcr3t@127.0.0.1:5432/db"),
            Ok(())
        );
        assert_eq!(check_amqp_url("amqp://app:S%40cr3t@h/%2f"), Ok(()));
        // An '@' in a query value must be encoded too (tokio-postgres would end the
        // user name there).
        assert!(check_database_url("postgres://h/db?application_name=a@b").is_err());
        // Text around the URL, and several URLs: all that is between the first `://`
        // and the last `@` goes.
        assert_eq!(
            redact("cannot reach amqp://u:Se/cr3t@h:5672/v (refused)"),
            "cannot reach amqp://***@h:5672/v (refused)"
        );
        assert_eq!(
            redact("a http://u:p1@h1/x then b http://u:p2@h2/y"),
            "a http://***@h2/y"
        );
    }
}
