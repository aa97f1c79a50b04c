//! Logging set-up: `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG`.
//!
//! Log lines carry text from outside (order numbers, gateway answers, error messages), so
//! one event is always one line: a newline or carriage return inside an event is written
//! as `\n` / `\r` (the JSON format escapes them itself; tracing-subscriber escapes
//! terminal escape codes in field values). Colours are used only when stderr is a
//! terminal.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `RUST_LOG` is set to something that is not a filter.
#[derive(Debug, thiserror::Error)]
#[error("RUST_LOG={value:?} is invalid: {reason} (for example RUST_LOG=info,lapin=warn)")]
pub struct FilterError {
    value: String,
    reason: String,
}

/// The filter: `RUST_LOG` when set and not empty, else `default_filter`.
pub fn filter(rust_log: Option<&str>, default_filter: &str) -> Result<EnvFilter, FilterError> {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(EnvFilter::new(default_filter)),
        Some(value) => EnvFilter::try_new(value).map_err(|e| FilterError {
            value: value.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Installs the global subscriber once; later calls do nothing (tests call it freely).
/// `default_filter` applies when `RUST_LOG` is unset or empty; an invalid `RUST_LOG` is
/// an error naming it.
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), FilterError> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| OneLine(std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    Ok(())
}

/// Writes each event (one `write` call per event) with any line break inside it escaped,
/// so that text from outside cannot forge a log line.
struct OneLine<W>(W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(event: &[u8]) -> Vec<u8> {
        let mut out = OneLine(Vec::new());
        out.write_all(event).unwrap();
        out.0
    }

    #[test]
    fn an_event_stays_one_line() {
        assert_eq!(written(b"plain event\n"), b"plain event\n");
        assert_eq!(
            written(b"out_trade_no=A\n2026 INFO forged\r\n"),
            b"out_trade_no=A\\n2026 INFO forged\\r\n"
        );
        assert_eq!(written(b"no newline at all"), b"no newline at all");
    }

    #[test]
    fn an_invalid_filter_is_named_and_an_empty_one_is_the_default() {
        let err = filter(Some("info,,=x[y"), "warn").unwrap_err().to_string();
        assert!(err.contains("RUST_LOG"), "{err}");
        assert_eq!(
            filter(Some("  "), "warn").unwrap().to_string(),
            EnvFilter::new("warn").to_string()
        );
        assert_eq!(
            filter(None, "info").unwrap().to_string(),
            EnvFilter::new("info").to_string()
        );
        assert!(filter(Some("debug,lapin=warn"), "info").is_ok());
    }
}
