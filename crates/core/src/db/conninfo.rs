//! `DATABASE_URL` in either of libpq's two forms: a URL (`postgres://u@a:5432,b:5433/db?
//! target_session_attrs=read-write`) or keyword/value pairs (`host=a,b port=5432,5433
//! dbname=db target_session_attrs=read-write`). Both may list several hosts; tokio-postgres
//! tries them in order and, with `target_session_attrs=read-write`, skips a standby.
//!
//! The TLS options (`sslmode` with libpq's six modes, `sslrootcert`) are read here and
//! applied by [`super::connect::Target`], since tokio-postgres knows only three modes and no CA
//! file; [`split`] takes them out and hands the rest to tokio-postgres as written.

use super::DbError;

/// The options this crate reads itself, every other one left to tokio-postgres.
#[derive(Debug, Default)]
pub struct Split {
    /// The string for tokio-postgres, without the options below.
    pub rest: String,
    /// `sslmode`, decoded.
    pub sslmode: Option<String>,
    /// `sslrootcert`, decoded.
    pub sslrootcert: Option<String>,
}

/// The TLS options a client certificate needs, which are refused (not supported).
const CLIENT_CERT_KEYS: [&str; 3] = ["sslcert", "sslkey", "sslpassword"];

/// Whether the text is libpq's URL form (else keyword/value pairs).
fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Takes the TLS options out of a database URL or keyword/value string.
pub fn split(text: &str) -> Result<Split, DbError> {
    let bad = |what: String| DbError::Unavailable(format!("DATABASE_URL: {what}"));
    let mut split = Split::default();
    let mut take = |key: &str, value: String| -> Result<bool, DbError> {
        match key {
            "sslmode" => split.sslmode = Some(value),
            "sslrootcert" => split.sslrootcert = Some(value),
            k if CLIENT_CERT_KEYS.contains(&k) => {
                return Err(bad(format!(
                    "{key} (a client certificate for Postgres) is not supported"
                )));
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if is_url(text) {
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut kept = Vec::new();
        for (part, key, value) in query_parts(query) {
            let decoded = percent_decode(value)
                .ok_or_else(|| bad(format!("{key} is not a valid percent-encoded UTF-8 value")))?;
            if !take(key, decoded)? {
                kept.push(part);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in pairs(text).map_err(bad)? {
            if !take(&key, value.clone())? {
                kept.push(format!("{key}={}", quote(&value)));
            }
        }
        kept.join(" ")
    };
    split.rest = rest;
    Ok(split)
}

/// The value of `key`, decoded as libpq decodes it; None when it is absent (or not validly
/// written, which [`split`] refuses).
pub fn value(text: &str, key: &str) -> Option<String> {
    if is_url(text) {
        let (_, query) = text.split_once('?')?;
        query_parts(query)
            .find(|(_, k, _)| *k == key)
            .and_then(|(_, _, v)| percent_decode(v))
    } else {
        pairs(text)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// The text with `key=value` added, written so that libpq (and [`split`]) read the value
/// back exactly: percent-encoded in a URL (a space is `%20`, never `+`), quoted in
/// keyword/value form.
pub fn with_param(text: &str, key: &str, value: &str) -> String {
    if is_url(text) {
        let sep = if text.contains('?') { '&' } else { '?' };
        format!("{text}{sep}{key}={}", percent_encode(value))
    } else {
        format!("{} {key}={}", text.trim_end(), quote(value))
    }
}

/// The `key=value` parts of a URL's query: (the part as written, key, raw value).
fn query_parts(query: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        (part, key, value)
    })
}

/// libpq's keyword/value pairs: `key = value`, separated by spaces; a value in single
/// quotes may hold spaces; a backslash takes the next character as it is.
fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return match chars.peek() {
                None => Ok(out),
                Some(_) => Err("an option has no name before its '='".into()),
            };
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("option {key} has no '=' and value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => return Err(format!("option {key}: unterminated quote")),
                None => break,
            }
        }
        if value.is_empty() && !quoted {
            return Err(format!("option {key} has no value"));
        }
        out.push((key, value));
    }
}

/// A value quoted for keyword/value form.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
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
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("%2Ftmp%2Fca.pem").unwrap(), "/tmp/ca.pem");
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%+A"), None);
        assert_eq!(percent_decode("a%00b"), None);
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        let url = with_param(
            "postgres://h/db?sslmode=require",
            "sslrootcert",
            "/a b+c.pem",
        );
        assert_eq!(
            url,
            "postgres://h/db?sslmode=require&sslrootcert=/a%20b%2Bc.pem"
        );
        assert_eq!(value(&url, "sslrootcert").unwrap(), "/a b+c.pem");
        assert_eq!(value(&url, "sslcert"), None);
    }

    #[test]
    fn keyword_value_form_is_read_like_libpq() {
        let text = "host=a,b port = 5432,5433 dbname=db password='it\\'s' \
                    options='-c search_path=x' sslmode=verify-ca application_name=a\\ b";
        let parsed = pairs(text).unwrap();
        assert_eq!(parsed[0], ("host".into(), "a,b".into()));
        assert_eq!(parsed[1], ("port".into(), "5432,5433".into()));
        assert_eq!(parsed[4], ("options".into(), "-c search_path=x".into()));
        assert_eq!(parsed[6], ("application_name".into(), "a b".into()));
        let split = split(text).unwrap();
        assert_eq!(split.sslmode.as_deref(), Some("verify-ca"));
        assert!(!split.rest.contains("sslmode"), "{}", split.rest);
        // What is left reads back the same.
        let again = pairs(&split.rest).unwrap();
        assert_eq!(again.len(), parsed.len() - 1);
        let with = with_param("host=a dbname=db", "sslrootcert", "/x y/it's.pem");
        assert_eq!(value(&with, "sslrootcert").unwrap(), "/x y/it's.pem");
        for bad in ["host", "host=", "=a", "host='a", "host=a b"] {
            assert!(pairs(bad).is_err(), "{bad:?}");
        }
        assert!(split_err("host=a sslkey=k.pem").contains("not supported"));
    }

    fn split_err(text: &str) -> String {
        split(text).unwrap_err().to_string()
    }
}
