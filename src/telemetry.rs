//! Logging set-up: `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG`.
//!
//! Log lines carry text from outside (order numbers, gateway answers, error messages, the
//! channel segment of a notify URL), so one event is always one line, and no such text
//! can reach a terminal as a control character:
//! - the text format writes every field of events and spans through `EscapedFields`,
//!   which escapes every control character ([`crate::text::printable`]: `\n`, `\r`,
//!   `\t`, else `\u{1b}`): ESC, NUL, backspace, C1 codes. tracing-subscriber's own formatter escapes only the `message`
//!   field (and errors), and not NUL, so a field written with `%` (`channel = %name`)
//!   printed `/notify/x%1B%5B2J`'s escape code raw;
//! - the JSON format escapes control characters in its strings itself;
//! - `OneLine` escapes any newline left inside an event, whatever wrote it.
//!
//! Colours are used only when stderr is a terminal.

use std::fmt;
use std::io::{IsTerminal, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt;

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
    let ansi = std::io::stderr().is_terminal();
    let stderr = || OneLine(std::io::stderr());
    // An error means a subscriber is installed already: later calls do nothing.
    match format {
        LogFormat::Text => {
            let _ = text(filter, ansi, stderr).try_init();
        }
        LogFormat::Json => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(stderr)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .try_init();
        }
    }
    Ok(())
}

/// The text format's subscriber, writing to `writer`.
fn text<W>(filter: EnvFilter, ansi: bool, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .fmt_fields(EscapedFields)
        .finish()
}

/// Writes fields as the default text format does (`name=value`, the message bare, strings
/// quoted), with every control character in a value escaped.
struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            result: Ok(()),
            seen: false,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    seen: bool,
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `log.*` fields are a `log` record's metadata, shown by the format itself.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        let separator = if self.seen { " " } else { "" };
        self.seen = true;
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{}", crate::text::printable(&text)),
            name => write!(
                self.writer,
                "{separator}{}={}",
                name.trim_start_matches("r#"),
                crate::text::printable(&text)
            ),
        };
    }
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

    /// What the text format writes, as one string.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `/notify/x%1B%5B2J`'s channel reached the terminal as ESC [ 2 J (clear
    /// the screen): a span field written with `%` was not escaped, nor was NUL anywhere.
    #[test]
    fn no_control_character_from_outside_reaches_the_text_log() {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let hostile = "x\u{1b}[2J\0\u{8}\u{9b}31m";
        tracing::subscriber::with_default(text(EnvFilter::new("info"), false, writer), || {
            let span = tracing::info_span!("notify", channel = %hostile, out_trade_no = tracing::field::Empty);
            span.record("out_trade_no", hostile);
            span.in_scope(|| {
                tracing::warn!(detail = %hostile, name = hostile, "refused {hostile}");
            });
        });
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = written.strip_suffix('\n').expect("one line");
        assert!(!line.contains('\n'), "{written:?}");
        assert!(!line.chars().any(char::is_control), "{written:?}");
        for shown in [
            r"channel=x\u{1b}[2J\u{0}\u{8}\u{9b}31m",
            r#"out_trade_no="x\u{1b}[2J\0\u{8}\u{9b}31m""#,
            r"detail=x\u{1b}[2J",
            r"refused x\u{1b}[2J\u{0}",
        ] {
            assert!(line.contains(shown), "{shown} in {line}");
        }
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
