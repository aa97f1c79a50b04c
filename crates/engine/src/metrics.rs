//! Prometheus metrics of a worker process, served at `/metrics` in the text format.
//!
//! Names: `order_closer_decisions_total{outcome}`, `order_closer_decision_lateness_seconds`,
//! `order_closer_gateway_request_seconds{channel,method}`,
//! `order_closer_gateway_errors_total{channel,method,code}`,
//! `order_closer_retries_total{attempt}`, `order_closer_parked_total{reason}`,
//! `order_closer_missing_orders_total`, `order_closer_outbox_backlog`,
//! `order_closer_in_flight`, `order_closer_forwarded_total`,
//! `order_closer_redriven_total{verdict}` (orders the janitor found overdue and re-drove: a
//! healthy system keeps it at 0), `order_closer_janitor_passes_total{result}`,
//! `order_closer_anomalies_total{kind}`, `order_closer_broker_consuming`,
//! `order_closer_notifications_total{outcome}`, `order_closer_hints_refused_total{reason}`
//! (untrusted notifications that did not become a gateway query, and why),
//! `order_closer_refunds_total{outcome}`,
//! `order_closer_payment_to_paid_seconds`
//! (from the payment at the gateway to our commit, for payments learnt from a
//! notification), `order_closer_quick_retries_total{channel,method}` (transient gateway
//! errors retried in the process) and `order_closer_quick_retries_refused_total{reason}`
//! (left to the delay tiers: `attempts`, `time_cap`, `budget`).
//!
//! The counters alerts watch start at 0 for their known labels: Prometheus's `increase()`
//! cannot see the first increment of a series that appears at 1.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use order_closer_gateway::GatewayMethod;

/// Label: what a decision did (`closed`, `paid`, `lost_race`, `settled`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: String,
}

/// Labels: payment channel and gateway method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// The payment channel (`alipay`, ...).
    pub channel: String,
    /// `query`, `close` or `refund`.
    pub method: String,
}

/// Labels: payment channel, gateway method and error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// The payment channel (`alipay`, ...).
    pub channel: String,
    /// `query`, `close` or `refund`.
    pub method: String,
    /// The classified error code.
    pub code: String,
}

/// Label: attempt number of a retry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    /// The attempt the retry will be.
    pub attempt: String,
}

/// Label: why a message was parked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason code.
    pub reason: String,
}

/// Label: what became of an order the janitor re-drove.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// The reconcile verdict (`closed`, `paid`, `already_settled`, `retry_later`, ...).
    pub verdict: String,
}

/// Label: an anomaly's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `amount_mismatch`, `paid_after_close`, `paid_missing_from_bill`.
    pub kind: String,
}

/// Label: how a janitor pass went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabel {
    /// `ran`, `skipped_backlog` (the close queue had messages waiting), `failed`.
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the worker keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<OutcomeLabel, Counter>,
    lateness: Histogram,
    gateway_latency: HistogramFamily<MethodLabel>,
    gateway_errors: Family<ErrorLabel, Counter>,
    retries: Family<AttemptLabel, Counter>,
    parked: Family<ReasonLabel, Counter>,
    missing: Counter,
    forwarded: Counter,
    redriven: Family<VerdictLabel, Counter>,
    janitor_passes: Family<PassLabel, Counter>,
    anomalies: Family<KindLabel, Counter>,
    notifications: Family<OutcomeLabel, Counter>,
    hints_refused: Family<ReasonLabel, Counter>,
    payment_to_paid: Histogram,
    refunds: Family<OutcomeLabel, Counter>,
    quick_retries: Family<MethodLabel, Counter>,
    /// The same, all channels and methods together (not exported: the demo reads it).
    quick_retries_made: Counter,
    quick_retries_refused: Family<ReasonLabel, Counter>,
    /// 1 while the worker's broker session consumes the close queue (set by the worker).
    pub consuming: Gauge,
    /// Outbox rows waiting to be published (set by the relay).
    pub outbox_backlog: Gauge,
    /// Messages being handled right now.
    pub in_flight: Gauge,
}

fn gateway_histogram() -> Histogram {
    // 5 ms .. ~40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("order_closer");
        let decisions = Family::<OutcomeLabel, Counter>::default();
        registry.register("decisions", "Decisions by outcome", decisions.clone());
        // 10 ms .. ~80 s
        let lateness = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "decision_lateness_seconds",
            "Decision commit time minus the order's deadline",
            lateness.clone(),
        );
        let gateway_latency: HistogramFamily<MethodLabel> =
            Family::new_with_constructor(gateway_histogram);
        registry.register(
            "gateway_request_seconds",
            "Gateway round-trip time by method",
            gateway_latency.clone(),
        );
        let gateway_errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "gateway_errors",
            "Gateway failures by method and code",
            gateway_errors.clone(),
        );
        let retries = Family::<AttemptLabel, Counter>::default();
        registry.register(
            "retries",
            "Retries scheduled, by the attempt they will be",
            retries.clone(),
        );
        let parked = Family::<ReasonLabel, Counter>::default();
        registry.register("parked", "Messages parked, by reason", parked.clone());
        let missing = Counter::default();
        registry.register(
            "missing_orders",
            "Messages naming an order that does not exist",
            missing.clone(),
        );
        let forwarded = Counter::default();
        registry.register(
            "forwarded",
            "Early arrivals forwarded to a delay tier",
            forwarded.clone(),
        );
        let redriven = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "redriven",
            "NEW orders the janitor found overdue past their schedule and re-drove (their close message was lost); 0 when healthy",
            redriven.clone(),
        );
        let janitor_passes = Family::<PassLabel, Counter>::default();
        registry.register(
            "janitor_passes",
            "Janitor passes by result",
            janitor_passes.clone(),
        );
        let anomalies = Family::<KindLabel, Counter>::default();
        registry.register(
            "anomalies",
            "Anomalies recorded by this process, by kind (money and orders disagree)",
            anomalies.clone(),
        );
        let notifications = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "notifications",
            "Payment notifications by outcome",
            notifications.clone(),
        );
        let hints_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "hints_refused",
            "Untrusted payment notifications that did not become a gateway query, by reason",
            hints_refused.clone(),
        );
        // 5 ms .. ~80 s (a notification's `gmt_payment` has whole seconds).
        let payment_to_paid = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "payment_to_paid_seconds",
            "From the payment at the gateway to our PAID commit, for payments learnt from a notification",
            payment_to_paid.clone(),
        );
        let refunds = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "refunds",
            "Refunds of payments after close by outcome (requested, succeeded, retried, failed)",
            refunds.clone(),
        );
        let quick_retries = Family::<MethodLabel, Counter>::default();
        registry.register(
            "quick_retries",
            "Transient gateway errors retried at once in the process, by channel and method",
            quick_retries.clone(),
        );
        let quick_retries_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "quick_retries_refused",
            "Transient gateway errors left to the delay tiers instead of a quick retry, by reason (attempts, time_cap, budget)",
            quick_retries_refused.clone(),
        );
        let consuming = Gauge::default();
        registry.register(
            "broker_consuming",
            "1 while the worker's broker session consumes the close queue",
            consuming.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Outbox rows waiting to be published",
            outbox_backlog.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight", "Messages being handled now", in_flight.clone());
        let metrics = Self {
            registry,
            decisions,
            lateness,
            gateway_latency,
            gateway_errors,
            retries,
            parked,
            missing,
            forwarded,
            redriven,
            janitor_passes,
            anomalies,
            notifications,
            hints_refused,
            payment_to_paid,
            refunds,
            quick_retries,
            quick_retries_made: Counter::default(),
            quick_retries_refused,
            consuming,
            outbox_backlog,
            in_flight,
        };
        for verdict in [
            "closed",
            "paid",
            "already_settled",
            "retry_later",
            "needs_operator",
            "database_unavailable",
        ] {
            let _ = metrics.redriven.get_or_create(&VerdictLabel {
                verdict: verdict.to_owned(),
            });
        }
        for reason in [
            "malformed",
            "oversized",
            "attempts_exhausted",
            "order_mismatch",
        ] {
            let _ = metrics.parked.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            });
        }
        for kind in order_closer_core::db::anomalies::AnomalyKind::ALL {
            let _ = metrics.anomalies.get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            });
        }
        for progress in order_closer_core::db::refunds::RefundProgress::ALL {
            let _ = metrics.refunds.get_or_create(&OutcomeLabel {
                outcome: progress.as_str().to_owned(),
            });
        }
        for outcome in crate::notify::outcome::NotifyOutcome::ALL {
            let _ = metrics.notifications.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            });
        }
        for refusal in crate::decide::quick_retry::Refusal::ALL {
            let _ = metrics.quick_retries_refused.get_or_create(&ReasonLabel {
                reason: refusal.as_str().to_owned(),
            });
        }
        for refusal in crate::notify::hints::Refusal::ALL {
            let _ = metrics.hints_refused.get_or_create(&ReasonLabel {
                reason: refusal.as_str().to_owned(),
            });
        }
        metrics
    }
}

impl Metrics {
    /// Counts a payment notification by outcome.
    pub fn notification(&self, outcome: crate::notify::outcome::NotifyOutcome) {
        self.notifications
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts an untrusted notification that did not become a gateway query.
    pub fn hint_refused(&self, refusal: crate::notify::hints::Refusal) {
        self.hints_refused
            .get_or_create(&ReasonLabel {
                reason: refusal.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a step of a refund.
    pub fn refund(&self, progress: order_closer_core::db::refunds::RefundProgress) {
        self.refunds
            .get_or_create(&OutcomeLabel {
                outcome: progress.as_str().to_owned(),
            })
            .inc();
    }

    /// Records the time from a payment at the gateway to our commit.
    pub fn payment_to_paid(&self, elapsed: Duration) {
        self.payment_to_paid.observe(elapsed.as_secs_f64());
    }

    /// Counts a decision outcome.
    pub fn decision(&self, outcome: &str) {
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records how late a committed decision was.
    pub fn lateness(&self, lateness: Duration) {
        self.lateness.observe(lateness.as_secs_f64());
    }

    /// Records one gateway round trip and, if it failed, its code.
    pub fn gateway_call(
        &self,
        channel: &str,
        method: GatewayMethod,
        elapsed: Duration,
        error_code: Option<&str>,
    ) {
        self.gateway_latency
            .get_or_create(&MethodLabel {
                channel: channel.to_owned(),
                method: method.as_str().to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.gateway_errors
                .get_or_create(&ErrorLabel {
                    channel: channel.to_owned(),
                    method: method.as_str().to_owned(),
                    code: code.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a transient gateway error retried at once, in the process.
    pub fn quick_retry(&self, channel: &str, method: GatewayMethod) {
        self.quick_retries
            .get_or_create(&MethodLabel {
                channel: channel.to_owned(),
                method: method.as_str().to_owned(),
            })
            .inc();
        self.quick_retries_made.inc();
    }

    /// Quick retries made so far, every channel and method together.
    pub fn quick_retries_made(&self) -> u64 {
        self.quick_retries_made.get()
    }

    /// Counts a transient gateway error left to the delay tiers instead of a quick retry.
    pub fn quick_retry_refused(&self, refusal: crate::decide::quick_retry::Refusal) {
        self.quick_retries_refused
            .get_or_create(&ReasonLabel {
                reason: refusal.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a scheduled retry.
    pub fn retry(&self, attempt: u32) {
        self.retries
            .get_or_create(&AttemptLabel {
                attempt: attempt.to_string(),
            })
            .inc();
    }

    /// Counts a parked message.
    pub fn parked(&self, reason: &str) {
        self.parked
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a message for an order that does not exist.
    pub fn missing_order(&self) {
        self.missing.inc();
    }

    /// Counts an early arrival forwarded to a tier.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Counts an order the janitor re-drove, by what became of it.
    pub fn redriven(&self, verdict: &str) {
        self.redriven
            .get_or_create(&VerdictLabel {
                verdict: verdict.to_owned(),
            })
            .inc();
    }

    /// Counts the duplicate payments a decision found and the refunds it requested.
    pub fn found(&self, found: crate::decide::DuplicatesFound) {
        for _ in 0..found.new_anomalies {
            self.anomaly(order_closer_core::db::anomalies::AnomalyKind::DuplicatePayment);
        }
        for _ in 0..found.refunds_requested {
            self.refund(order_closer_core::db::refunds::RefundProgress::Requested);
        }
    }

    /// Counts an anomaly recorded by this process.
    pub fn anomaly(&self, kind: order_closer_core::db::anomalies::AnomalyKind) {
        self.anomalies
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a janitor pass.
    pub fn janitor_pass(&self, result: &str) {
        self.janitor_passes
            .get_or_create(&PassLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        let m = Metrics::default();
        m.decision("closed");
        m.lateness(Duration::from_millis(120));
        m.gateway_call(
            "alipay",
            GatewayMethod::Query,
            Duration::from_millis(30),
            Some("20000"),
        );
        m.retry(2);
        m.parked("malformed");
        m.missing_order();
        m.outbox_backlog.set(7);
        m.redriven("closed");
        m.janitor_pass("ran");
        m.quick_retry("alipay", GatewayMethod::Close);
        m.quick_retry("wechat", GatewayMethod::Query);
        assert_eq!(m.quick_retries_made(), 2);
        m.quick_retry_refused(crate::decide::quick_retry::Refusal::Budget);
        let text = m.render();
        for needle in [
            "order_closer_decisions_total{outcome=\"closed\"} 1",
            "order_closer_decision_lateness_seconds_count 1",
            "order_closer_gateway_errors_total{channel=\"alipay\",method=\"query\",code=\"20000\"} 1",
            "order_closer_retries_total{attempt=\"2\"} 1",
            "order_closer_parked_total{reason=\"malformed\"} 1",
            "order_closer_missing_orders_total 1",
            "order_closer_outbox_backlog 7",
            "order_closer_redriven_total{verdict=\"closed\"} 1",
            "order_closer_janitor_passes_total{result=\"ran\"} 1",
            "order_closer_quick_retries_total{channel=\"alipay\",method=\"close\"} 1",
            "order_closer_quick_retries_refused_total{reason=\"budget\"} 1",
            "order_closer_quick_retries_refused_total{reason=\"time_cap\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
