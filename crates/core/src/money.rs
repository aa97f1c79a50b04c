//! Money amounts: integer minor units (fen, cents) and their decimal text form.
//!
//! Gateways speak decimal strings such as `"88.88"`; we store and compare integer minor
//! units so that no float ever touches an amount.

use thiserror::Error;

/// Why a decimal amount could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AmountError {
    /// The text is not a plain decimal number (`12`, `12.3`, `12.34`).
    #[error("amount {0:?} is not a decimal number with at most 2 fraction digits")]
    Malformed(String),
    /// The number does not fit in 64-bit minor units.
    #[error("amount {0:?} is too large")]
    TooLarge(String),
}

/// Parses a decimal amount with at most two fraction digits into minor units.
///
/// Accepts an optional leading `-` (refund rows in a bill are negative). Rejects
/// exponents, signs in the middle, more than two decimals, and empty strings.
pub fn parse_minor(text: &str) -> Result<i64, AmountError> {
    let malformed = || AmountError::Malformed(text.to_owned());
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if whole.is_empty()
        || frac.len() > 2
        || (digits.contains('.') && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(malformed());
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| AmountError::TooLarge(text.to_owned()))?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => i64::from(frac.as_bytes()[0] - b'0') * 10,
        _ => frac.parse().map_err(|_| malformed())?,
    };
    let minor = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| AmountError::TooLarge(text.to_owned()))?;
    Ok(if negative { -minor } else { minor })
}

/// Formats minor units as a decimal string with two fraction digits (`1234` -> `"12.34"`).
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_amounts() {
        assert_eq!(parse_minor("12.34"), Ok(1234));
        assert_eq!(parse_minor("12.3"), Ok(1230));
        assert_eq!(parse_minor("12"), Ok(1200));
        assert_eq!(parse_minor("0.01"), Ok(1));
        assert_eq!(parse_minor("-12.34"), Ok(-1234));
    }

    #[test]
    fn rejects_malformed_amounts() {
        for bad in [
            "", ".5", "1.", "1.234", "1e3", "+1", "1,00", " 1", "abc", "--1", "1.-2",
        ] {
            assert!(
                matches!(parse_minor(bad), Err(AmountError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_minor("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for minor in [0, 1, 10, 99, 100, 1234, -1234, 123_456_789] {
            assert_eq!(parse_minor(&format_minor(minor)), Ok(minor));
        }
        assert_eq!(format_minor(5), "0.05");
    }
}
