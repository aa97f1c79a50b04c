//! The log format (`ORDER_CLOSER_LOG_FORMAT`), a setting of its own because a command
//! that reads nothing else of the product's settings (the gateway simulator) still logs.

use super::{ConfigError, Vars};

/// Where the log lines go and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Reads `ORDER_CLOSER_LOG_FORMAT` (`text`, the default, or `json`).
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        match vars.get("ORDER_CLOSER_LOG_FORMAT").as_deref() {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ConfigError::invalid(
                "ORDER_CLOSER_LOG_FORMAT",
                other,
                "expected text or json",
            )),
        }
    }
}
