//! Reading one environment variable at a time, each failure naming its variable: the
//! readers that [`Settings`](super::Settings) and every gateway's own configuration share
//! (a gateway reads its variables, `ALIPAY_*`, `WECHAT_*`, from the same [`Vars`]).

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, urls};

/// Largest file a secret (`<VAR>_FILE`) is read from.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The lookup behind [`Vars`].
type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A name -> value lookup: the process environment, or a map (tests, the demo). An empty
/// or blank value reads as unset.
#[derive(Clone)]
pub struct Vars {
    get: Lookup,
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: never shown.
        f.write_str("Vars(..)")
    }
}

impl Vars {
    /// The process environment as it is now.
    pub fn from_env() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    /// A fixed map.
    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self::from_fn(move |name| map.get(name).cloned())
    }

    /// Any lookup.
    pub fn from_fn(get: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { get: Arc::new(get) }
    }

    /// These variables, with `pairs` set over them.
    pub fn overlay(&self, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let over: HashMap<String, String> = pairs.into_iter().collect();
        let under = Arc::clone(&self.get);
        Self::from_fn(move |name| over.get(name).cloned().or_else(|| under(name)))
    }

    /// The value, unless unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// The value, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// Whether the variable, or its `<VAR>_FILE` form, is set.
    pub fn is_set(&self, name: &'static str, file_var: &'static str) -> bool {
        self.get(name).is_some() || self.get(file_var).is_some()
    }

    /// A secret, given in its variable or as a file named by `file_var` (Kubernetes
    /// secrets are files); never both.
    pub fn secret(
        &self,
        name: &'static str,
        file_var: &'static str,
    ) -> Result<Option<SecretString>, ConfigError> {
        match (self.get(name), self.get(file_var)) {
            (value, None) => Ok(value.map(SecretString::from)),
            (None, Some(path)) => {
                crate::files::read_capped_text(Path::new(path.trim()), MAX_SECRET_FILE)
                    .map(|text| {
                        Some(SecretString::from(
                            text.trim_end_matches(['\n', '\r']).to_owned(),
                        ))
                    })
                    .map_err(|e| ConfigError::invalid(file_var, &path, e))
            }
            (Some(_), Some(path)) => Err(ConfigError::invalid(
                file_var,
                &path,
                format!("set {name} or {file_var}, not both"),
            )),
        }
    }

    /// A whole number from `min` to `max`, or `default`.
    pub fn number(
        &self,
        name: &'static str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ConfigError::invalid(
                    name,
                    &text,
                    format!("expected a whole number from {min} to {max}"),
                )),
            },
        }
    }

    /// A share from 0.0 to 1.0 (`0.1`, `0.25`), or `default`.
    pub fn share(&self, name: &'static str, default: f64) -> Result<f64, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.trim().parse::<f64>() {
            Ok(share) if share.is_finite() && (0.0..=1.0).contains(&share) => Ok(share),
            _ => Err(ConfigError::invalid(
                name,
                &text,
                "expected a share from 0.0 to 1.0, such as 0.1",
            )),
        }
    }

    /// A duration within `range` (both ends included), or `default`.
    pub fn duration(
        &self,
        name: &'static str,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        let d = parse_duration(name, &text)?;
        if range.contains(&d) {
            return Ok(d);
        }
        Err(ConfigError::invalid(
            name,
            &text,
            format!(
                "must be from {} to {}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        ))
    }

    /// An absolute `http`/`https` URL without a trailing slash, or `default`.
    pub fn http_url(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let url = self.string(name, default);
        urls::check_http_url(&url)
            .map_err(|reason| ConfigError::invalid_url(name, &url, reason))?;
        Ok(url.trim_end_matches('/').to_owned())
    }

    /// Back-off steps (`3s,30s,60s`), if set.
    pub fn retry_steps(
        &self,
        name: &'static str,
    ) -> Result<Option<crate::retry::RetryPolicy>, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let steps = parse_duration_list(name, &text)?;
        crate::retry::RetryPolicy::new(steps)
            .map(Some)
            .map_err(|e| ConfigError::invalid(name, &text, e))
    }

    /// One of `choices` (by its name), or `default`.
    pub fn choice<T: Copy>(
        &self,
        name: &'static str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(word, _)| *word == text.trim())
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                ConfigError::invalid(name, &text, format!("expected {}", words.join(" or ")))
            })
    }
}

/// Reads a key given inline (PEM or base64) or as a path to a file holding it.
pub fn key_material(
    var: &'static str,
    value: Option<&str>,
    hint: &'static str,
) -> Result<String, ConfigError> {
    let value = value.ok_or(ConfigError::Missing { var, hint })?.trim();
    if value.contains("-----BEGIN") {
        return Ok(value.to_owned());
    }
    let looks_like_path =
        value.contains('/') && Path::new(value).exists() || value.ends_with(".pem");
    if looks_like_path {
        return crate::files::read_capped_text(Path::new(value), crate::files::MAX_KEY_BYTES)
            .map_err(|e| ConfigError::invalid(var, value, format!("cannot read key file: {e}")));
    }
    Ok(value.to_owned())
}

/// Parses a human duration such as `500ms`, `30s`, `15m`, `2h`.
pub fn parse_duration(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::invalid(name, text, format!("{e} (write it like 500ms, 30s, 15m)"))
    })?;
    if d.is_zero() {
        return Err(ConfigError::invalid(
            name,
            text,
            "must be greater than zero",
        ));
    }
    Ok(d)
}

/// Parses a comma-separated list of durations.
pub fn parse_duration_list(name: &'static str, text: &str) -> Result<Vec<Duration>, ConfigError> {
    text.split(',')
        .map(|part| parse_duration(name, part))
        .collect()
}
