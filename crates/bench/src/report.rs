//! The results as JSON and as a table, with the figures derived from them and compared
//! with its targets.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ceilings::Ceilings;
use super::create::CreateResult;
use super::pending::PendingResult;
use super::pipeline::{self, BatchResult};
use super::queue_types::QueueTypeRun;
use super::scale_out::ScaleOutRun;
use super::sustained::SustainedResult;
use super::{Plan, Results};

/// The targets the benchmark is held to.
pub mod targets {
    /// Pipeline throughput as a fraction of the crypto ceiling, at least.
    pub const CRYPTO_FRACTION: f64 = 0.90;
    /// Pipeline throughput over the classic consumer's, at least.
    pub const PIPELINE_OVER_CLASSIC: f64 = 50.0;
    /// Worker CPU per decision over its own signing cost per decision, at most.
    pub const CPU_OVER_SIGNING: f64 = 1.25;
    /// Sustained p99 lateness at half of peak, at most (ms).
    pub const SUSTAINED_P99_MS: f64 = 1000.0;
    /// `create_order` over raw insert, at least.
    pub const CREATE_OVER_RAW: f64 = 0.70;
    /// Worker RSS growth while a million closes are scheduled, at most (MiB): "flat".
    pub const PENDING_RSS_GROWTH_MIB: f64 = 16.0;
    /// Payment to PAID through a notification, p99 at 1,000 payments/s, at most (ms).
    pub const NOTIFY_P99_MS: f64 = 50.0;
}

/// One figure against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub name: &'static str,
    /// The measured value.
    pub value: f64,
    /// The target.
    pub target: f64,
    /// `>=` or `<=`.
    pub direction: &'static str,
    /// Whether the value meets the target.
    pub met: bool,
}

impl Target {
    fn at_least(name: &'static str, value: f64, target: f64) -> Self {
        Self {
            name,
            value,
            target,
            direction: ">=",
            met: value >= target,
        }
    }

    fn at_most(name: &'static str, value: f64, target: f64) -> Self {
        Self {
            name,
            value,
            target,
            direction: "<=",
            met: value <= target,
        }
    }
}

/// Figures computed from several measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Derived {
    /// Signatures our side makes per decision for this mix (1 per query, 1 per close).
    pub our_signatures_per_decision: f64,
    /// Signatures per decision on both sides (the simulator signs every answer).
    pub total_signatures_per_decision: f64,
    /// Decisions per second the all-cores signing rate allows on this machine.
    pub crypto_ceiling_decisions_per_second: Option<f64>,
    /// Pipeline decisions/s x signatures per decision / all-cores signs per second.
    pub throughput_vs_crypto_ceiling: Option<f64>,
    /// Pipeline decisions/s over classic decisions/s.
    pub pipeline_over_classic: Option<f64>,
    /// Decisions/s with two trades per order (`pipeline_two_trades`) over decisions/s with
    /// one (`pipeline`).
    pub two_trades_over_one_trade: Option<f64>,
    /// The worker's own signing CPU per decision (ms): our signatures / one-thread rate.
    pub worker_signing_ms_per_decision: Option<f64>,
    /// Worker CPU per decision over its signing cost per decision.
    pub worker_cpu_over_signing: Option<f64>,
    /// The same counting only the CPU spent after the deadline (deciding, without the
    /// forwarding of early hops).
    pub worker_deciding_cpu_over_signing: Option<f64>,
    /// `create_order` over raw insert.
    pub create_over_raw: Option<f64>,
    /// Sustained p99 lateness (ms).
    pub sustained_p99_ms: Option<f64>,
    /// Worker RSS growth over the pending run (MiB).
    pub pending_worker_rss_growth_mib: Option<f64>,
    /// Payment to PAID p99 in the notification run (ms).
    pub notify_p99_ms: Option<f64>,
}

/// Facts about the run and the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// Host name.
    pub host: String,
    /// order-closer version.
    pub version: &'static str,
}

/// Everything the JSON holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run tag (schema `bench_<tag>`, queues `bench-<tag>.*`).
    pub run: String,
    /// When the measurements started.
    pub started_at: DateTime<Utc>,
    /// When they ended.
    pub finished_at: DateTime<Utc>,
    /// The machine.
    pub machine: Machine,
    /// The parameters.
    pub parameters: Plan,
    /// Machine ceilings.
    pub ceilings: Option<Ceilings>,
    /// create_order against raw insert.
    pub create: Option<CreateResult>,
    /// The pipeline run.
    pub pipeline: BatchResult,
    /// The pipeline run with two trades per order.
    pub pipeline_two_trades: Option<BatchResult>,
    /// The classic run.
    pub classic: Option<BatchResult>,
    /// The sustained run.
    pub sustained: Option<SustainedResult>,
    /// The pending-closes run.
    pub pending: Option<PendingResult>,
    /// The notification run.
    pub notifications: Option<super::notifications::NotifyResult>,
    /// The pipeline once per compared queue type (`--queue-types`).
    pub queue_types: Vec<QueueTypeRun>,
    /// The pipeline decided by 1, 2, 3 worker processes (`--scale-out`).
    pub scale_out: Vec<ScaleOutRun>,
    /// Derived figures.
    pub derived: Derived,
    /// The targets.
    pub targets: Vec<Target>,
}

impl Report {
    /// Assembles the report and derives the comparisons.
    pub fn new(plan: &Plan, tag: &str, started_at: DateTime<Utc>, r: Results) -> Self {
        let (ours, total) = pipeline::signatures_per_decision(&r.pipeline.mix);
        let p = &r.pipeline;
        let crypto_ceiling = r
            .ceilings
            .as_ref()
            .filter(|c| c.rsa_signs_per_second_all_cores > 0.0 && total > 0.0)
            .map(|c| c.rsa_signs_per_second_all_cores / total);
        let signing_ms = r
            .ceilings
            .as_ref()
            .filter(|c| c.rsa_signs_per_second_one_thread > 0.0)
            .map(|c| ours * 1000.0 / c.rsa_signs_per_second_one_thread);
        let derived = Derived {
            our_signatures_per_decision: ours,
            total_signatures_per_decision: total,
            crypto_ceiling_decisions_per_second: crypto_ceiling,
            throughput_vs_crypto_ceiling: crypto_ceiling.map(|c| p.decisions_per_second / c),
            pipeline_over_classic: r
                .classic
                .as_ref()
                .filter(|c| c.decisions_per_second > 0.0)
                .map(|c| p.decisions_per_second / c.decisions_per_second),
            two_trades_over_one_trade: r
                .pipeline_two_trades
                .as_ref()
                .filter(|_| p.decisions_per_second > 0.0)
                .map(|t| t.decisions_per_second / p.decisions_per_second),
            worker_signing_ms_per_decision: signing_ms,
            worker_cpu_over_signing: signing_ms
                .filter(|s| *s > 0.0)
                .map(|s| p.worker_cpu_ms_per_decision / s),
            worker_deciding_cpu_over_signing: signing_ms
                .filter(|s| *s > 0.0)
                .map(|s| p.worker_cpu_ms_per_decision_after_deadline / s),
            create_over_raw: r.create.as_ref().map(|c| c.ratio),
            sustained_p99_ms: r.sustained.as_ref().map(|s| s.lateness_ms.p99),
            pending_worker_rss_growth_mib: r.pending.as_ref().map(|p| p.worker_rss_growth_mib),
            notify_p99_ms: r.notifications.as_ref().map(|n| n.payment_to_paid_ms.p99),
        };
        let mut goals = Vec::new();
        if let Some(v) = derived.throughput_vs_crypto_ceiling {
            goals.push(Target::at_least(
                "throughput_vs_crypto_ceiling",
                v,
                targets::CRYPTO_FRACTION,
            ));
        }
        if let Some(v) = derived.pipeline_over_classic {
            goals.push(Target::at_least(
                "pipeline_over_classic",
                v,
                targets::PIPELINE_OVER_CLASSIC,
            ));
        }
        if let Some(v) = derived.worker_cpu_over_signing {
            goals.push(Target::at_most(
                "worker_cpu_over_signing",
                v,
                targets::CPU_OVER_SIGNING,
            ));
        }
        if let Some(v) = derived.sustained_p99_ms {
            goals.push(Target::at_most(
                "sustained_p99_lateness_ms",
                v,
                targets::SUSTAINED_P99_MS,
            ));
        }
        if let Some(v) = derived.create_over_raw {
            goals.push(Target::at_least(
                "create_over_raw",
                v,
                targets::CREATE_OVER_RAW,
            ));
        }
        if let Some(v) = derived.pending_worker_rss_growth_mib {
            goals.push(Target::at_most(
                "pending_worker_rss_growth_mib",
                v,
                targets::PENDING_RSS_GROWTH_MIB,
            ));
        }
        if let Some(v) = derived.notify_p99_ms {
            goals.push(Target::at_most(
                "notify_payment_to_paid_p99_ms",
                v,
                targets::NOTIFY_P99_MS,
            ));
        }
        Self {
            run: tag.to_owned(),
            started_at,
            finished_at: Utc::now(),
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(1, usize::from),
                host: host_name(),
                version: env!("CARGO_PKG_VERSION"),
            },
            parameters: plan.clone(),
            ceilings: r.ceilings,
            create: r.create,
            pipeline: r.pipeline,
            pipeline_two_trades: r.pipeline_two_trades,
            classic: r.classic,
            sustained: r.sustained,
            pending: r.pending,
            notifications: r.notifications,
            queue_types: r.queue_types,
            scale_out: r.scale_out,
            derived,
            targets: goals,
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let p = &self.pipeline;
        let params = &self.parameters;
        let _ = writeln!(
            t,
            "\norder-closer bench {}: {} CPUs, gateway round trip {} ms, paid share {:.0}%, transient faults {:.0}%",
            self.run,
            self.machine.cpus,
            params.gateway_latency_ms,
            params.paid_share * 100.0,
            params.fault_rate * 100.0
        );
        if let Some(c) = &self.ceilings {
            let _ = writeln!(t, "\nmachine ceilings ({:.1} s each)", c.seconds_each);
            row(
                &mut t,
                "RSA-2048 signs/s, 1 thread",
                &num(c.rsa_signs_per_second_one_thread),
            );
            row(
                &mut t,
                &format!("RSA-2048 signs/s, {} threads", c.threads),
                &num(c.rsa_signs_per_second_all_cores),
            );
            row(
                &mut t,
                "broker publish+confirm/s, sequential",
                &num(c.broker_publish_confirm_per_second_sequential),
            );
            row(
                &mut t,
                &format!(
                    "broker publish+confirm/s, {} in flight",
                    c.broker_pipeline_window
                ),
                &num(c.broker_publish_confirm_per_second_pipelined),
            );
            row(
                &mut t,
                "broker consume+ack/s",
                &num(c.broker_consume_ack_per_second),
            );
            row(
                &mut t,
                "db decision tx/s, 1 connection",
                &num(c.db_decision_tx_per_second_sequential),
            );
            row(
                &mut t,
                &format!(
                    "db decision tx/s, {} connections",
                    c.db_concurrent_connections
                ),
                &num(c.db_decision_tx_per_second_concurrent),
            );
        }
        if let Some(c) = &self.create {
            let _ = writeln!(
                t,
                "\ncreate ({} orders per side, {} tasks)",
                c.orders, c.tasks
            );
            row(
                &mut t,
                "Closer::create_order/s",
                &num(c.create_order_per_second),
            );
            row(&mut t, "raw INSERT/s", &num(c.raw_insert_per_second));
        }
        let _ = writeln!(
            t,
            "\n{:<44} {:>12} {:>12} {:>12}",
            "batch", "pipeline", "2 trades", "classic"
        );
        let two_trades = self.pipeline_two_trades.as_ref();
        let classic = self.classic.as_ref();
        let both = |t: &mut String, name: &str, f: &dyn Fn(&BatchResult) -> String| {
            let _ = writeln!(
                t,
                "  {name:<42} {:>12} {:>12} {:>12}",
                f(p),
                two_trades.map_or("-".into(), f),
                classic.map_or("-".into(), f)
            );
        };
        both(&mut t, "orders", &|b| b.orders.to_string());
        both(&mut t, "trades per order", &|b| {
            b.trades_per_order.to_string()
        });
        both(&mut t, "concurrency / prefetch", &|b| {
            format!("{}/{}", b.concurrency, b.prefetch)
        });
        both(&mut t, "decided (paid / closed)", &|b| {
            format!("{}/{}", b.paid, b.closed)
        });
        both(&mut t, "undecided / retries / parked", &|b| {
            format!("{}/{}/{}", b.undecided, b.retries, b.parked)
        });
        both(&mut t, "quick retries", &|b| b.quick_retries.to_string());
        both(&mut t, "mismatches", &|b| b.mismatches.to_string());
        both(&mut t, "trade mismatches", &|b| {
            b.trade_mismatches.to_string()
        });
        both(&mut t, "gateway calls/decision (queries + closes)", &|b| {
            format!("{:.2}", b.gateway_calls_per_decision)
        });
        both(&mut t, "gateway calls/attempt (retries, parks too)", &|b| {
            format!("{:.2}", b.gateway_calls_per_attempt)
        });
        both(&mut t, "decisions/s", &|b| num(b.decisions_per_second));
        both(&mut t, "lateness p50 ms", &|b| num(b.lateness_ms.p50));
        both(&mut t, "lateness p95 ms", &|b| num(b.lateness_ms.p95));
        both(&mut t, "lateness p99 ms", &|b| num(b.lateness_ms.p99));
        both(&mut t, "lateness max ms", &|b| num(b.lateness_ms.max));
        both(&mut t, "worker CPU ms/decision", &|b| {
            format!("{:.3}", b.worker_cpu_ms_per_decision)
        });
        both(&mut t, "  of which deciding (after the deadline)", &|b| {
            format!("{:.3}", b.worker_cpu_ms_per_decision_after_deadline)
        });
        both(&mut t, "worker peak RSS MiB", &|b| {
            format!("{:.1}", b.worker_peak_rss_mib)
        });
        both(&mut t, "creation s (deadline lead s)", &|b| {
            format!(
                "{:.1} ({:.0}){}",
                b.creation_seconds,
                b.deadline_lead_seconds,
                if b.creation_overran_deadline { "!" } else { "" }
            )
        });
        if let Some(s) = &self.sustained {
            let _ = writeln!(
                t,
                "\nsustained {:.0} s at {:.0}/s (achieved {:.0}/s): {} orders, {} decided, {} undecided, {} retries, {} parked, {} quick retries, {:.2} gateway calls/decision",
                s.duration_seconds,
                s.target_rate,
                s.achieved_rate,
                s.orders,
                s.decided,
                s.undecided,
                s.retries,
                s.parked,
                s.quick_retries,
                s.gateway_calls_per_decision
            );
            let _ = writeln!(
                t,
                "  {:<10} {:>8} {:>10} {:>10} {:>10}",
                "window s", "orders", "p50 ms", "p99 ms", "max ms"
            );
            for w in &s.windows {
                let _ = writeln!(
                    t,
                    "  {:<10} {:>8} {:>10} {:>10} {:>10}",
                    format!("{:.0}", w.start_seconds),
                    w.lateness_ms.count,
                    num(w.lateness_ms.p50),
                    num(w.lateness_ms.p99),
                    num(w.lateness_ms.max)
                );
            }
            let _ = writeln!(
                t,
                "  {:<10} {:>8} {:>10} {:>10} {:>10}",
                "all",
                s.lateness_ms.count,
                num(s.lateness_ms.p50),
                num(s.lateness_ms.p99),
                num(s.lateness_ms.max)
            );
            row(
                &mut t,
                "worker CPU ms/decision",
                &format!("{:.3}", s.worker_cpu_ms_per_decision),
            );
        }
        if let Some(n) = &self.notifications {
            let _ = writeln!(
                t,
                "\nnotifications: {} payments at {:.0}/s (achieved {:.0}/s) to order-closer notify",
                n.payments, n.target_rate, n.achieved_rate
            );
            row(&mut t, "committed PAID", &n.committed.to_string());
            row(
                &mut t,
                "notifications/s through to commit",
                &format!("{:.0}", n.notifications_per_second),
            );
            row(
                &mut t,
                "payment to PAID p50 / p99 / max ms",
                &format!(
                    "{} / {} / {}",
                    num(n.payment_to_paid_ms.p50),
                    num(n.payment_to_paid_ms.p99),
                    num(n.payment_to_paid_ms.max)
                ),
            );
            row(
                &mut t,
                "sends / answered success",
                &format!("{} / {}", n.sends, n.acknowledged),
            );
        }
        if let Some(p) = &self.pending {
            let _ = writeln!(
                t,
                "\npending closes: {} written by create_orders without a broker, scheduled by the worker's relay",
                p.orders
            );
            row(
                &mut t,
                "written/s (create_orders)",
                &num(p.written_per_second),
            );
            row(
                &mut t,
                "scheduled/s (relay, batched confirms)",
                &num(p.relayed_per_second),
            );
            row(
                &mut t,
                "pending in the delay tiers at the end",
                &p.pending_in_tiers.to_string(),
            );
            row(
                &mut t,
                "worker RSS MiB start / max / end",
                &format!(
                    "{:.1} / {:.1} / {:.1}",
                    p.worker_rss_start_mib, p.worker_rss_max_mib, p.worker_rss_end_mib
                ),
            );
            row(
                &mut t,
                "worker CPU s relaying",
                &format!("{:.1}", p.worker_cpu_seconds),
            );
        }
        if !self.queue_types.is_empty() {
            let heading = format!("queue types (pipeline, {} orders)", self.parameters.orders);
            side_by_side(
                &mut t,
                &heading,
                (42, 12),
                &self.queue_types,
                |q| q.queue_type.clone(),
                &[
                    ("decided / undecided", &|q| {
                        format!("{}/{}", q.pipeline.decided, q.pipeline.undecided)
                    }),
                    ("decisions/s", &|q| num(q.pipeline.decisions_per_second)),
                    ("lateness p50 ms", &|q| num(q.pipeline.lateness_ms.p50)),
                    ("lateness p99 ms", &|q| num(q.pipeline.lateness_ms.p99)),
                    ("worker CPU ms/decision", &|q| {
                        format!("{:.3}", q.pipeline.worker_cpu_ms_per_decision)
                    }),
                    ("broker CPU ms/decision", &|q| {
                        q.broker_cpu_ms_per_decision
                            .map_or("-".into(), |v| format!("{v:.3}"))
                    }),
                ],
            );
        }
        if !self.scale_out.is_empty() {
            let heading = format!(
                "scale-out (pipeline, {} orders, default concurrency), processes",
                self.parameters.orders
            );
            side_by_side(
                &mut t,
                &heading,
                (60, 8),
                &self.scale_out,
                |r| r.processes.to_string(),
                &[
                    ("decided / undecided", &|r| {
                        format!("{}/{}", r.pipeline.decided, r.pipeline.undecided)
                    }),
                    ("decisions/s", &|r| num(r.pipeline.decisions_per_second)),
                    ("speed-up over one process", &|r| {
                        r.speed_up.map_or("-".into(), |v| format!("{v:.2}"))
                    }),
                    ("lateness p99 ms", &|r| num(r.pipeline.lateness_ms.p99)),
                    ("workers' CPU ms/decision", &|r| {
                        format!("{:.3}", r.pipeline.worker_cpu_ms_per_decision)
                    }),
                    ("machine CPU busy while deciding (all cores)", &|r| {
                        r.pipeline
                            .machine_cpu_busy
                            .map_or("-".into(), |v| format!("{:.0}%", v * 100.0))
                    }),
                ],
            );
        }
        let d = &self.derived;
        let _ = writeln!(t, "\nderived");
        row(
            &mut t,
            "signatures/decision (ours + simulator)",
            &format!(
                "{:.2} + {:.2}",
                d.our_signatures_per_decision,
                d.total_signatures_per_decision - d.our_signatures_per_decision
            ),
        );
        if let Some(r) = d.two_trades_over_one_trade {
            row(
                &mut t,
                "decisions/s, 2 trades / 1 trade",
                &format!("{r:.2}"),
            );
        }
        if let Some(c) = d.crypto_ceiling_decisions_per_second {
            row(&mut t, "crypto ceiling decisions/s", &num(c));
        }
        if let Some(s) = d.worker_signing_ms_per_decision {
            row(&mut t, "worker signing ms/decision", &format!("{s:.3}"));
        }
        if let Some(r) = d.worker_deciding_cpu_over_signing {
            row(
                &mut t,
                "worker deciding CPU / signing CPU",
                &format!("{r:.2}"),
            );
        }
        let _ = writeln!(t, "\ntargets");
        for g in &self.targets {
            let _ = writeln!(
                t,
                "  {:<42} {:>12}  {} {:<8} {}",
                g.name,
                format!("{:.3}", g.value),
                g.direction,
                g.target,
                if g.met { "met" } else { "MISSED" }
            );
        }
        t
    }
}

fn row(t: &mut String, name: &str, value: &str) {
    let _ = writeln!(t, "  {name:<42} {value:>12}");
}

/// One figure of runs compared side by side: its label, and how a run shows it.
type Figure<'a, R> = (&'a str, &'a dyn Fn(&R) -> String);

/// A section comparing `runs` side by side: `heading` followed by each run's name, then a
/// line per figure, labels `widths.0` wide and columns `widths.1`.
fn side_by_side<R>(
    t: &mut String,
    heading: &str,
    (label, column): (usize, usize),
    runs: &[R],
    name: impl Fn(&R) -> String,
    figures: &[Figure<'_, R>],
) {
    let _ = write!(t, "\n{heading}");
    for run in runs {
        let _ = write!(t, " {:>column$}", name(run));
    }
    let _ = writeln!(t);
    for (figure, show) in figures {
        let _ = write!(t, "  {figure:<label$}");
        for run in runs {
            let _ = write!(t, " {:>column$}", show(run));
        }
        let _ = writeln!(t);
    }
}

/// A figure with sensible precision.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
