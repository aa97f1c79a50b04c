//! Text from outside (an order number, a gateway's answer, a bill cell, a header of a
//! parked message, a URL path segment) made safe to print on a terminal or in a log line.
//!
//! A terminal obeys escape codes: an `ESC [2J` in a bill cell clears the operator's
//! screen, a backspace or carriage return rewrites what was printed before it, a NUL or a
//! line break splits one log line into two that look like ours. [`printable`] writes every
//! control character (C0, DEL, C1) and the bidirectional overrides as a visible escape
//! (`\u{1b}`), and leaves every other character, Chinese text included, as it is.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates reorder what follows them.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character written as a Rust-style escape (`\n`, `\t`,
/// `\u{1b}`): one line, nothing a terminal acts on. Borrows when there is nothing to
/// escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Untrusted text fit for an error message or a log line: [`printable`], then at most
/// `max` characters (an ellipsis marks a cut).
pub fn shortened(text: &str, max: usize) -> String {
    let text = printable(text);
    if text.chars().count() <= max {
        text.into_owned()
    } else {
        let mut short: String = text.chars().take(max).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(printable("ORD-1"), "ORD-1");
        assert!(matches!(printable("商户订单号"), Cow::Borrowed(_)));
        assert_eq!(printable("x\u{1b}[2J"), "x\\u{1b}[2J");
        assert_eq!(printable("a\0b\u{8}c"), "a\\u{0}b\\u{8}c");
        assert_eq!(printable("one\ntwo\r"), "one\\ntwo\\r");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("\u{7f}"), "\\u{7f}");
        assert_eq!(printable("abc\u{202e}def"), "abc\\u{202e}def");
    }

    #[test]
    fn shortened_text_is_printable_and_marks_its_cut() {
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "abc…");
        assert_eq!(shortened("\u{1b}[2J", 64), "\\u{1b}[2J");
    }
}
