//! Moving instants by configured durations without ever overflowing: a duration that
//! passed validation can still be too long to add to "now" (`1000000y`), and chrono's
//! operators panic then. These saturate at the ends of representable time instead.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeZone, Utc};

/// The `yyyy-MM-dd HH:mm:ss` China-time format of the Chinese gateways' timestamps and
/// bills.
const CHINA_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Formats an instant as `yyyy-MM-dd HH:mm:ss` in China time (UTC+8).
pub fn format_china_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&china())
        .format(CHINA_TIME_FORMAT)
        .to_string()
}

/// Reads a `yyyy-MM-dd HH:mm:ss` China time (UTC+8) into UTC.
pub fn parse_china_time(text: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, CHINA_TIME_FORMAT).ok()?;
    china()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// China Standard Time (UTC+8), the calendar of the Chinese gateways' days and times.
pub fn china() -> FixedOffset {
    // 8 hours is in range, so `east_opt` cannot fail; UTC is the harmless fallback.
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix())
}

fn signed(by: Duration) -> chrono::Duration {
    chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX)
}

/// `at + by`, or the latest representable instant.
pub fn later(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    at.checked_add_signed(signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at - by`, or the earliest representable instant.
pub fn earlier(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    at.checked_sub_signed(signed(by))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_overflowing() {
        let now = Utc::now();
        assert_eq!(later(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(earlier(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        let year_million = Duration::from_secs(1_000_000 * 365 * 86_400);
        assert_eq!(earlier(now, year_million), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            earlier(now, Duration::from_secs(60)),
            now - chrono::Duration::seconds(60)
        );
        assert_eq!(
            later(now, Duration::from_millis(1500)),
            now + chrono::Duration::milliseconds(1500)
        );
    }
}
