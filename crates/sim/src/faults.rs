//! The simulator's fault injection: which gateway faults exist ([`FaultKind`]), the plan
//! that draws them at given rates with latency ([`FaultPlan`], `PUT /sim/faults`), the
//! per-trade one-shots ([`FailNext`]) and what the fault layer decides for one request
//! ([`FaultDecision`]). Pure data and validation; the trade store draws from it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long a `timeout` fault holds a request when [`FaultPlan::timeout_ms`] is not set.
pub const DEFAULT_TIMEOUT_HOLD: Duration = Duration::from_secs(30);

/// Largest `latency_ms`, `latency_jitter_ms` or `timeout_ms` a plan may ask for (10 min).
pub const MAX_FAULT_MS: u64 = 600_000;

/// Tolerance when checking that the rates sum to at most 1.0 (`0.1 + 0.2` is not `0.3`).
const RATE_SUM_EPSILON: f64 = 1e-9;

/// One kind of injected gateway fault. The serialized name is the one used in
/// [`FaultPlan`], in `fail-next` requests and in
/// [`SimStats::faults_injected`](crate::SimStats::faults_injected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FaultKind {
    /// HTTP 502 with an HTML body, as a proxy in front of the gateway would answer.
    #[serde(rename = "http_502")]
    Http502,
    /// A signed `20000 Service Currently Unavailable` answer.
    #[serde(rename = "busy_20000")]
    Busy20000,
    /// A signed `40004` answer with `sub_code` `ACQ.SYSTEM_ERROR`.
    #[serde(rename = "system_error")]
    SystemError,
    /// The request is held for the plan's `timeout_ms` (default 30 s) without touching
    /// the trade, then the connection is dropped without an answer.
    #[serde(rename = "timeout")]
    Timeout,
    /// The request is applied (a close closes), then held for `timeout_ms` before the
    /// real answer is sent: the close happened but the client never hears about it.
    #[serde(rename = "timeout_after_apply")]
    TimeoutAfterApply,
    /// HTTP 200 with `text/html` (a maintenance page).
    #[serde(rename = "html")]
    Html,
    /// A correctly signed answer cut in half.
    #[serde(rename = "truncated_json")]
    TruncatedJson,
    /// The answer the request would get, signed with a key other than the simulator's.
    #[serde(rename = "bad_signature")]
    BadSignature,
    /// A correctly signed answer naming another `out_trade_no`. Not applied to bill URL
    /// requests (their answer names no order).
    #[serde(rename = "wrong_order")]
    WrongOrder,
    /// A correctly signed query answer whose `total_amount` (and, when paid, the paid
    /// amounts) is one fen more than the trade's. Only for queries of existing trades;
    /// drawn for anything else, it is not applied and the answer is normal.
    #[serde(rename = "wrong_amount")]
    WrongAmount,
    /// HTTP 200 with an empty body.
    #[serde(rename = "empty_body")]
    EmptyBody,
}

impl FaultKind {
    /// Every kind, in the order rates are laid out when a fault is drawn.
    pub const ALL: [FaultKind; 11] = [
        Self::Http502,
        Self::Busy20000,
        Self::SystemError,
        Self::Timeout,
        Self::TimeoutAfterApply,
        Self::Html,
        Self::TruncatedJson,
        Self::BadSignature,
        Self::WrongOrder,
        Self::WrongAmount,
        Self::EmptyBody,
    ];

    /// The kind's name: the [`FaultPlan`] rate field and the stats key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http502 => "http_502",
            Self::Busy20000 => "busy_20000",
            Self::SystemError => "system_error",
            Self::Timeout => "timeout",
            Self::TimeoutAfterApply => "timeout_after_apply",
            Self::Html => "html",
            Self::TruncatedJson => "truncated_json",
            Self::BadSignature => "bad_signature",
            Self::WrongOrder => "wrong_order",
            Self::WrongAmount => "wrong_amount",
            Self::EmptyBody => "empty_body",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault kind name that does not exist.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("unknown fault kind {0:?}")]
pub struct UnknownFaultKind(pub String);

impl FromStr for FaultKind {
    type Err = UnknownFaultKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownFaultKind(s.to_owned()))
    }
}

/// Run-time fault injection for every gateway's requests, changeable while the simulator
/// runs (`PUT /sim/faults`, [`SimState::set_faults`](crate::SimState::set_faults)).
/// [`Default`] injects nothing.
///
/// Each authenticated gateway request (to a method the plan applies to) draws at most one
/// fault: with probability `http_502` an HTTP 502, with probability `busy_20000` a busy
/// answer, and so on; with the remaining probability (1 minus the sum of the rates) it is
/// answered normally. A fault never changes a trade, except `timeout_after_apply`, which
/// applies the request and then withholds the answer. Requests the simulator refuses
/// (bad signature, missing parameters) get the latency but never a fault.
///
/// As JSON every field is optional, for example
/// `{"latency_ms": 50, "busy_20000": 0.1, "methods": ["close"], "seed": 7}`;
/// unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Added before every gateway answer, faulted or not (milliseconds).
    pub latency_ms: u64,
    /// A uniformly random `0..=latency_jitter_ms` added on top of `latency_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_jitter_ms: Option<u64>,
    /// Rate of [`FaultKind::Http502`].
    pub http_502: f64,
    /// Rate of [`FaultKind::Busy20000`].
    pub busy_20000: f64,
    /// Rate of [`FaultKind::SystemError`].
    pub system_error: f64,
    /// Rate of [`FaultKind::Timeout`].
    pub timeout: f64,
    /// Rate of [`FaultKind::TimeoutAfterApply`].
    pub timeout_after_apply: f64,
    /// How long `timeout` and `timeout_after_apply` hold a request; default 30 000. Keep
    /// it above the client's own timeout so that the client gives up first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Rate of [`FaultKind::Html`].
    pub html: f64,
    /// Rate of [`FaultKind::TruncatedJson`].
    pub truncated_json: f64,
    /// Rate of [`FaultKind::BadSignature`].
    pub bad_signature: f64,
    /// Rate of [`FaultKind::WrongOrder`].
    pub wrong_order: f64,
    /// Rate of [`FaultKind::WrongAmount`].
    pub wrong_amount: f64,
    /// Rate of [`FaultKind::EmptyBody`].
    pub empty_body: f64,
    /// When set, the plan (latency and faults) applies only to these calls (`query`,
    /// `close`, `refund`, `bill`: each gateway's own method of that kind); otherwise to
    /// every request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Seeds the random draws when the plan is set, so that the same sequence of requests
    /// meets the same faults; without it the draws are unpredictable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Why a [`FaultPlan`] was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct FaultPlanError {
    /// The offending field (for a sum over 1.0: the rate that crossed it).
    pub field: String,
    /// What is wrong, naming the field(s).
    pub message: String,
}

impl FaultPlanError {
    fn new(field: &str, message: String) -> Self {
        Self {
            field: field.to_owned(),
            message,
        }
    }
}

impl FaultPlan {
    /// No latency and no faults (the same as [`Default`]).
    pub fn none() -> Self {
        Self::default()
    }

    /// A plan injecting only `kind`, at `rate`.
    pub fn only(kind: FaultKind, rate: f64) -> Self {
        let mut plan = Self::default();
        *plan.rate_mut(kind) = rate;
        plan
    }

    /// The rate of one fault kind.
    pub fn rate(&self, kind: FaultKind) -> f64 {
        match kind {
            FaultKind::Http502 => self.http_502,
            FaultKind::Busy20000 => self.busy_20000,
            FaultKind::SystemError => self.system_error,
            FaultKind::Timeout => self.timeout,
            FaultKind::TimeoutAfterApply => self.timeout_after_apply,
            FaultKind::Html => self.html,
            FaultKind::TruncatedJson => self.truncated_json,
            FaultKind::BadSignature => self.bad_signature,
            FaultKind::WrongOrder => self.wrong_order,
            FaultKind::WrongAmount => self.wrong_amount,
            FaultKind::EmptyBody => self.empty_body,
        }
    }

    /// The rate of one fault kind, to change it.
    pub fn rate_mut(&mut self, kind: FaultKind) -> &mut f64 {
        match kind {
            FaultKind::Http502 => &mut self.http_502,
            FaultKind::Busy20000 => &mut self.busy_20000,
            FaultKind::SystemError => &mut self.system_error,
            FaultKind::Timeout => &mut self.timeout,
            FaultKind::TimeoutAfterApply => &mut self.timeout_after_apply,
            FaultKind::Html => &mut self.html,
            FaultKind::TruncatedJson => &mut self.truncated_json,
            FaultKind::BadSignature => &mut self.bad_signature,
            FaultKind::WrongOrder => &mut self.wrong_order,
            FaultKind::WrongAmount => &mut self.wrong_amount,
            FaultKind::EmptyBody => &mut self.empty_body,
        }
    }

    /// Whether the plan injects anything at all (latency or a non-zero rate).
    pub fn is_active(&self) -> bool {
        self.latency_ms > 0
            || self.latency_jitter_ms.is_some_and(|j| j > 0)
            || FaultKind::ALL.iter().any(|k| self.rate(*k) > 0.0)
    }

    /// How long `timeout` faults hold a request.
    pub fn timeout_hold(&self) -> Duration {
        self.timeout_ms
            .map_or(DEFAULT_TIMEOUT_HOLD, Duration::from_millis)
    }

    /// Whether the plan applies to requests for `method` (`None`: the method is unknown
    /// because the request was refused before it was read).
    pub fn applies_to(&self, method: Option<SimMethod>) -> bool {
        match (&self.methods, method) {
            (None, _) => true,
            (Some(methods), Some(m)) => methods.iter().any(|x| x == m.as_str()),
            (Some(_), None) => false,
        }
    }

    /// Checks every rate is within `0.0..=1.0`, that they sum to at most 1.0, that the
    /// durations are at most [`MAX_FAULT_MS`], and that `methods` names known methods.
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        for (field, value) in [
            ("latency_ms", Some(self.latency_ms)),
            ("latency_jitter_ms", self.latency_jitter_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if let Some(v) = value.filter(|v| *v > MAX_FAULT_MS) {
                return Err(FaultPlanError::new(
                    field,
                    format!("{field} must be at most {MAX_FAULT_MS}, got {v}"),
                ));
            }
        }
        let mut sum = 0.0;
        let mut terms = Vec::new();
        let mut crossed: Option<&str> = None;
        for kind in FaultKind::ALL {
            let field = kind.as_str();
            let rate = self.rate(kind);
            if !rate.is_finite() || !(0.0..=1.0).contains(&rate) {
                return Err(FaultPlanError::new(
                    field,
                    format!("{field} must be a rate between 0.0 and 1.0, got {rate}"),
                ));
            }
            if rate > 0.0 {
                sum += rate;
                terms.push(format!("{field}={rate}"));
                if crossed.is_none() && sum > 1.0 + RATE_SUM_EPSILON {
                    crossed = Some(field);
                }
            }
        }
        if let Some(field) = crossed {
            return Err(FaultPlanError::new(
                field,
                format!(
                    "fault rates must sum to at most 1.0, but {} = {sum}",
                    terms.join(" + ")
                ),
            ));
        }
        if let Some(methods) = &self.methods {
            if methods.is_empty() {
                return Err(FaultPlanError::new(
                    "methods",
                    "methods must not be empty (leave it out to apply the plan to every \
                     method)"
                        .to_owned(),
                ));
            }
            if let Some(bad) = methods.iter().find(|m| SimMethod::parse(m).is_none()) {
                return Err(FaultPlanError::new(
                    "methods",
                    format!(
                        "methods names {bad:?}; the simulator implements {}",
                        SimMethod::ALL.map(SimMethod::as_str).join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads a plan from JSON and validates it. A type error is reported with the name
    /// of the field that holds the bad value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FaultPlanError> {
        let members = match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Object(members)) => members,
            Ok(_) => {
                return Err(FaultPlanError::new(
                    "body",
                    "the fault plan body must be a JSON object".to_owned(),
                ));
            }
            Err(e) => {
                return Err(FaultPlanError::new(
                    "body",
                    format!("the fault plan body is not valid JSON: {e}"),
                ));
            }
        };
        let plan = match serde_json::from_value::<Self>(serde_json::Value::Object(members.clone()))
        {
            Ok(plan) => plan,
            Err(e) => return Err(locate_json_error(members, &e)),
        };
        plan.validate()?;
        Ok(plan)
    }

    /// The fault a uniform draw in `[0, 1)` lands on, walking the rates in
    /// [`FaultKind::ALL`] order; `None` past their sum.
    pub(crate) fn pick(&self, draw: f64) -> Option<FaultKind> {
        let mut upper = 0.0;
        for kind in FaultKind::ALL {
            let rate = self.rate(kind);
            if rate <= 0.0 {
                continue;
            }
            upper += rate;
            if draw < upper {
                return Some(kind);
            }
        }
        None
    }
}

/// Names the field behind a JSON error: serde's own message for a type error gives only
/// a line and column, so each member is tried alone to find the one that fails.
fn locate_json_error(
    members: serde_json::Map<String, serde_json::Value>,
    error: &serde_json::Error,
) -> FaultPlanError {
    for (name, value) in members {
        let mut alone = serde_json::Map::new();
        alone.insert(name.clone(), value);
        if let Err(e) = serde_json::from_value::<FaultPlan>(serde_json::Value::Object(alone)) {
            return FaultPlanError::new(&name, format!("{name}: {e}"));
        }
    }
    FaultPlanError::new("body", format!("invalid fault plan body: {error}"))
}

/// A per-trade one-shot: the next `remaining` gateway answers about the trade (to
/// `method` only, when given) fail with `kind`, whatever the [`FaultPlan`] says
/// (`POST /sim/trades/{no}/fail-next`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailNext {
    /// The trade's `out_trade_no` (it need not exist yet).
    pub out_trade_no: String,
    /// The fault to inject.
    pub kind: FaultKind,
    /// How many answers are still to fail.
    pub remaining: u32,
    /// Only requests of this method fail (a refund's, not the query before it); `None`:
    /// any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<SimMethod>,
}

/// What the fault layer decides for one authenticated gateway request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long before doing anything else.
    pub latency: Duration,
    /// The fault to inject, if any; `None` answers normally.
    pub fault: Option<FaultKind>,
    /// How long a `timeout` / `timeout_after_apply` fault holds the request.
    pub hold: Duration,
}

impl FaultDecision {
    /// Answer normally, at once.
    pub const PROCEED: Self = Self {
        latency: Duration::ZERO,
        fault: None,
        hold: DEFAULT_TIMEOUT_HOLD,
    };
}

/// A gateway call, as the fault plan and the counters name it, whatever the gateway
/// calls it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimMethod {
    /// The trade query.
    Query,
    /// The trade close.
    Close,
    /// A refund.
    Refund,
    /// The request for a day's bill.
    Bill,
}

impl SimMethod {
    /// Every method.
    pub const ALL: [Self; 4] = [Self::Query, Self::Close, Self::Refund, Self::Bill];

    /// The name in a fault plan's `methods`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Close => "close",
            Self::Refund => "refund",
            Self::Bill => "bill",
        }
    }

    /// The method of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_validation_names_the_field() {
        assert_eq!(FaultPlan::default().validate(), Ok(()));
        assert!(!FaultPlan::default().is_active());
        let err = FaultPlan::only(FaultKind::Html, 1.5)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "html");
        assert!(err.message.contains("html"), "{err}");
        let err = FaultPlan::only(FaultKind::Timeout, f64::NAN)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "timeout");
        let err = FaultPlan::only(FaultKind::EmptyBody, -0.1)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "empty_body");

        let mut over = FaultPlan::only(FaultKind::Http502, 0.6);
        over.busy_20000 = 0.3;
        assert_eq!(over.validate(), Ok(()));
        over.wrong_order = 0.2;
        let err = over.validate().unwrap_err();
        assert_eq!(err.field, "wrong_order");
        for name in ["http_502=0.6", "busy_20000=0.3", "wrong_order=0.2"] {
            assert!(err.message.contains(name), "{err}");
        }
        // Float sums that are 1.0 on paper pass.
        let mut tenths = FaultPlan::default();
        for kind in &FaultKind::ALL[..10] {
            *tenths.rate_mut(*kind) = 0.1;
        }
        assert_eq!(tenths.validate(), Ok(()));

        let slow = FaultPlan {
            timeout_ms: Some(MAX_FAULT_MS + 1),
            ..FaultPlan::default()
        };
        assert_eq!(slow.validate().unwrap_err().field, "timeout_ms");
        let mut methods = FaultPlan {
            methods: Some(vec!["pay".into()]),
            ..FaultPlan::default()
        };
        assert_eq!(methods.validate().unwrap_err().field, "methods");
        methods.methods = Some(vec![]);
        assert_eq!(methods.validate().unwrap_err().field, "methods");
    }

    #[test]
    fn plan_json() {
        let plan = FaultPlan::from_json(
            br#"{"latency_ms":5,"busy_20000":0.25,"methods":["close"],"seed":3}"#,
        )
        .unwrap();
        assert_eq!(plan.latency_ms, 5);
        assert_eq!(plan.rate(FaultKind::Busy20000), 0.25);
        assert_eq!(plan.seed, Some(3));
        assert!(plan.applies_to(Some(SimMethod::Close)));
        assert!(!plan.applies_to(Some(SimMethod::Query)));
        assert!(!plan.applies_to(None));
        let back: FaultPlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        assert_eq!(FaultPlan::from_json(b"{}").unwrap(), FaultPlan::default());

        for (body, field) in [
            (r#"{"http_502":1.5}"#, "http_502"),
            (r#"{"html":"often"}"#, "html"),
            (r#"{"busy":0.1}"#, "busy"),
            (r#"{"latency_ms":-1}"#, "latency_ms"),
            ("[1]", "body"),
            ("{oops", "body"),
        ] {
            let err = FaultPlan::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
            assert!(err.message.contains(field), "{body}: {err}");
        }
        for kind in FaultKind::ALL {
            assert_eq!(kind.as_str().parse::<FaultKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert!("nope".parse::<FaultKind>().is_err());
    }
}
