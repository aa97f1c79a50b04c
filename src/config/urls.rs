//! Server URLs checked in full at start-up, so that a URL that can never work fails
//! naming its variable instead of starting a process that retries for ever; and every URL
//! shown in a message with its password hidden.

use lapin::uri::AMQPUri;
use url::Url;

/// Checks a PostgreSQL URL: `postgres://` or `postgresql://`, a host, a valid port, a
/// database name, and a known `sslmode`. Returns why it is unusable (never the URL).
pub fn check_database_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    let database = parsed.path().trim_start_matches('/');
    if database.is_empty() {
        return Err("names no database (postgres://user:password@host:port/DATABASE)".into());
    }
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode" {
            value.parse::<crate::db::connect::SslMode>()?;
        }
    }
    Ok(())
}

/// Checks an AMQP URL as the client will read it (scheme, host, port, vhost, and query
/// options such as `heartbeat`).
pub fn check_amqp_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err("must start with amqp:// or amqps://".into());
    }
    url.parse::<AMQPUri>().map(|_| ())
}

/// Checks an `http://` or `https://` URL with a host.
pub fn check_http_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    Ok(())
}

/// The text with any URL password (`user:PASSWORD@`, `password=...`) replaced by `***`;
/// works on text that is not a valid URL too, since that is when it gets printed.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@')
            && let Some(colon) = out[auth_start..auth_start + at].find(':')
        {
            out.replace_range(auth_start + colon + 1..auth_start + at, "***");
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' ', '#'])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn passwords_never_show() {
        for (text, shown) in [
            (
                " postgres://postgres:SeCrEt123@127.0.0.1:1/x",
                " postgres://postgres:***@127.0.0.1:1/x",
            ),
            ("amqp://u:p@ss@h/v", "amqp://u:***@h/v"),
            ("AMQP://guest:SeCrEt@h", "AMQP://guest:***@h"),
            (
                "postgres://h/db?user=u&password=SeCrEt&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("no url at all", "no url at all"),
        ] {
            assert_eq!(redact(text), shown);
        }
    }
}
