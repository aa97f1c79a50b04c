//! Passwords in URLs, which parsers disagree about: [`check_userinfo`] refuses a user part
//! that parsers would read differently, and [`redact`] hides a URL's user name and
//! password in any text before it is printed, whatever a parser would make of it.
//!
//! Both follow one rule: the user part runs from `://` to the last `@` after it. A
//! generated base64 password holds `/`, and the URL standard ends the user part at the
//! last `@` while tokio-postgres ends it at the first; so anything else either leaks part
//! of a password (as a host name, a path) or sends it where it does not belong.

/// Checks that a URL's user name and password end where every parser ends them: at a
/// single `@`, before the first `/`, `?` or `#`. Parsers disagree on anything else (the
/// URL standard ends the user part at the last `@`, tokio-postgres at the first, and both
/// end the host at a `/`), so a password holding `/`, `?`, `#` or `@` would be read as a
/// host, a port or a path, and then printed as one.
pub fn check_userinfo(url: &str) -> Result<(), String> {
    let Some(start) = url.find("://") else {
        return Ok(());
    };
    let rest = &url[start + 3..];
    match rest.rfind('@') {
        Some(at) if rest[..at].contains(['/', '?', '#', '@']) => Err(
            "the part before its last '@' holds a '/', '?', '#' or '@': percent-encode \
             those in a user name or password (%2F, %3F, %23, %40), and write an '@' \
             elsewhere as %40"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The text with every URL's user name and password hidden, and any `password=` value:
/// everything between a `://` and the last `@` after it becomes `***`, whatever a URL
/// parser would make of it (a password may hold `/`, `?`, `#` or `@`; hiding too much of
/// a message is better than showing part of a password). Works on text that is not a
/// valid URL too, since that is when it gets printed. The one function every message
/// that can hold a URL goes through.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some(scheme_end) = text.find("://")
        && let Some(at) = text[scheme_end + 3..].rfind('@')
    {
        out.replace_range(scheme_end + 3..scheme_end + 3 + at, "***");
    }
    let mut from = 0;
    while let Some(i) = out[from..].find("password=") {
        let start = from + i + "password=".len();
        // libpq's keyword/value form may quote a value (`password='a b'`, `\'` inside).
        let end = if out[start..].starts_with('\'') {
            let mut escaped = false;
            out[start + 1..]
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(out.len(), |(j, _)| start + 1 + j + 1)
        } else {
            out[start..]
                .find(['&', ' ', '#'])
                .map_or(out.len(), |j| start + j)
        };
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (text, shown) in [
            (
                " postgres://postgres:SeCrEt123@127.0.0.1:1/x",
                " postgres://***@127.0.0.1:1/x",
            ),
            ("amqp://u:p@ss@h/v", "amqp://***@h/v"),
            ("AMQP://guest:SeCrEt@h", "AMQP://***@h"),
            (
                "postgres://h/db?user=u&password=SeCrEt&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            ("postgres://h/db", "postgres://h/db"),
            (
                "host=a password='Se cR\\'Et' dbname=db",
                "host=a password=*** dbname=db",
            ),
            ("host=a password='SeCrEt", "host=a password=***"),
            ("no url at all", "no url at all"),
        ] {
            assert_eq!(redact(text), shown);
        }
    }
}
