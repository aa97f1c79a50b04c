//! Payments after close, refunded or held: the simulator's `alipay.trade.refund` over HTTP
//! (with its idempotency rule), a worker on real RabbitMQ sending the refund, real
//! Postgres. However often a refund is sent (a timeout after it was applied, an operator
//! asking twice), the simulator shows exactly one.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use order_closer::db::refunds::RefundProgress;
use order_closer::db::{self, refunds};
use order_closer::decide::refund::RefundRequestResult;
use order_closer::notify::NotifyOutcome;
use order_closer::order::OrderStatus;
use order_closer::reconcile::refund::{self, RefundError};
use order_closer::sim::{FaultKind, FaultPlan, SimTradeStatus};

use common::{TestEnv, eventually};

fn count(events: &[serde_json::Value], no: &str, event: &str) -> usize {
    events
        .iter()
        .filter(|e| e["out_trade_no"] == no && e["event"] == event)
        .count()
}

/// `order_closer_refunds_total{outcome}` in a metrics text.
fn refunds_counted(metrics: &str, progress: RefundProgress) -> u64 {
    let needle = format!(
        "order_closer_refunds_total{{outcome=\"{}\"}} ",
        progress.as_str()
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn refund_row(env: &TestEnv, order_id: i64) -> Option<refunds::RefundRow> {
    let mut conn = db::conn(&env.pool).await.unwrap();
    refunds::for_order(&mut conn, order_id).await.unwrap()
}

/// Waits until the order's refund leaves `requested`.
async fn refund_settled(env: &TestEnv, order_id: i64, limit: Duration) -> refunds::RefundRow {
    eventually(limit, || async {
        refund_row(env, order_id)
            .await
            .filter(|r| r.status() != refunds::RefundStatus::Requested)
    })
    .await
    .unwrap_or_else(|| panic!("the refund of order {order_id} did not settle within {limit:?}"))
}

async fn open_refunds(env: &TestEnv) -> Vec<refunds::RefundRow> {
    let mut conn = db::conn(&env.pool).await.unwrap();
    refunds::open(&mut conn, 100).await.unwrap()
}

async fn outcomes(env: &TestEnv, order_id: i64) -> Vec<String> {
    env.trail(order_id)
        .await
        .into_iter()
        .map(|d| d.outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_refund_a_payment_after_close_is_refunded_once_even_when_the_refund_times_out_after_being_applied()
 {
    for channel in order_closer::gateway::rules::channels() {
        refunded_once_despite_a_timeout(channel).await;
    }
}

/// On `channel`'s gateway.
async fn refunded_once_despite_a_timeout(channel: &str) {
    let mut env = TestEnv::new(&[
        ("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund"),
        // Long enough that an answered call never times out on a loaded machine (the
        // attempts are counted exactly); the injected timeout holds well past it.
        ("ALIPAY_TIMEOUT", "3s"),
        ("WECHAT_TIMEOUT", "3s"),
    ])
    .await;
    let worker = env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    let no = env.no("late");
    let order = env
        .create_at(channel, &no, 1500, Duration::from_secs(1))
        .await;
    assert_eq!(
        env.settled(&no, Duration::from_secs(15)).await.status(),
        OrderStatus::Closed
    );
    // The first refund call is applied at the gateway, but its answer never arrives.
    let mut plan = FaultPlan::none();
    plan.timeout_ms = Some(10_000);
    env.buyers.set_faults(&plan).await.unwrap();
    env.buyers
        .fail_next(&no, FaultKind::TimeoutAfterApply, 1)
        .await
        .unwrap();
    // A QR code without expiry, scanned and paid after we closed.
    env.buyers
        .at(channel)
        .scan_and_pay(&no, 1500)
        .await
        .unwrap();

    let row = refund_settled(&env, order.id, Duration::from_secs(30)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded, "{channel}");
    assert_eq!(row.amount_minor, 1500);
    assert_eq!(
        row.attempts, 2,
        "the timed-out call, then the same request again"
    );
    assert_eq!(row.out_request_no, refunds::out_request_no(order.id));

    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(
        trade.refunds.len(),
        1,
        "{channel}: exactly one refund: {trade:?}"
    );
    assert_eq!(trade.refunds[0].amount_minor, 1500);
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(stats.refund_requests, 2);

    assert_eq!(
        outcomes(&env, order.id).await,
        vec!["closed", "refund_requested", "refund_retry", "refunded"]
    );
    // Counted where each step happened: requested by the endpoint, sent by the worker.
    let notified = endpoint.notifier.metrics().render();
    assert_eq!(
        refunds_counted(&notified, RefundProgress::Requested),
        1,
        "{notified}"
    );
    let worked = worker.metrics.render();
    for (progress, n) in [
        (RefundProgress::Requested, 0),
        (RefundProgress::Retried, 1),
        (RefundProgress::Succeeded, 1),
        (RefundProgress::Failed, 0),
    ] {
        assert_eq!(
            refunds_counted(&worked, progress),
            n,
            "{progress:?}: {worked}"
        );
    }
    // The gateway's TRADE_CLOSED notification after the full refund only makes us ask
    // the gateway, which confirms the trade is closed: nothing changes.
    let asked = eventually(Duration::from_secs(15), || async {
        let text = endpoint.notifier.metrics().render();
        text.contains(&format!(
            "order_closer_notifications_total{{outcome=\"{}\"}} 1",
            NotifyOutcome::Queried.as_str()
        ))
        .then_some(())
    })
    .await;
    assert!(asked.is_some(), "the TRADE_CLOSED notification was handled");
    assert_eq!(env.order(&no).await.status(), OrderStatus::Closed);

    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.anomaly.paid_after_close"), 1);
    assert_eq!(count(&events, &no, "order.refunded"), 1);
    assert_eq!(count(&events, &no, "order.refund_failed"), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_hold_an_operator_refunds_on_request_and_bad_requests_are_named() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let _notify = env.start_notify().await;
    let decider = env.decider("reconcile:test");
    let no = env.no("held");
    let order = env.create(&no, 900, Duration::from_secs(1)).await;
    env.settled(&no, Duration::from_secs(15)).await;
    env.buyers.scan_and_pay(&no, 900).await.unwrap();
    // Held: the anomaly is recorded, nothing is refunded.
    let recorded = eventually(Duration::from_secs(10), || async {
        let mut conn = db::conn(&env.pool).await.ok()?;
        let rows = db::anomalies::list(
            &mut conn,
            Some(db::anomalies::AnomalyKind::PaidAfterClose),
            10,
        )
        .await
        .ok()?;
        rows.iter().any(|a| a.out_trade_no == no).then_some(())
    })
    .await;
    assert!(recorded.is_some(), "the payment after close was recorded");
    assert!(
        refund_row(&env, order.id).await.is_none(),
        "held, not refunded"
    );

    // Bad requests: an unknown order, an order that is not CLOSED.
    assert!(matches!(
        refund::request(&decider, "no-such-order", true).await,
        Err(RefundError::NoSuchOrder(_))
    ));
    let open = env.no("open");
    env.create(&open, 100, Duration::from_secs(3600)).await;
    let err = refund::request(&decider, &open, false).await.unwrap_err();
    assert!(matches!(err, RefundError::NotClosed(_)), "{err}");
    assert!(err.to_string().contains("NEW"), "{err}");
    // A CLOSED order the gateway reports unpaid.
    let unpaid = env.no("unpaid");
    env.create(&unpaid, 100, Duration::from_secs(1)).await;
    env.settled(&unpaid, Duration::from_secs(15)).await;
    let err = refund::request(&decider, &unpaid, false).await.unwrap_err();
    assert!(matches!(err, RefundError::NotPaid { .. }), "{err}");

    // A dry run asks the gateway and changes nothing.
    let dry = refund::request(&decider, &no, true).await.unwrap();
    assert_eq!(dry.paid_minor, 900);
    assert!(matches!(
        dry.result,
        RefundRequestResult::WouldRequest {
            amount_minor: 900,
            ..
        }
    ));
    assert!(refund_row(&env, order.id).await.is_none());

    let done = refund::request(&decider, &no, false).await.unwrap();
    assert!(matches!(
        done.result,
        RefundRequestResult::Requested {
            amount_minor: 900,
            ..
        }
    ));
    let row = refund_settled(&env, order.id, Duration::from_secs(15)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded);
    // Asked again: refunded before, nothing sent.
    let again = refund::request(&decider, &no, false).await.unwrap();
    assert!(matches!(
        again.result,
        RefundRequestResult::AlreadyRefunded { .. }
    ));
    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(trade.refunds.len(), 1);
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.refunded"), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_out_of_retry_steps_fails_parks_and_is_sent_again_on_request() {
    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    let worker = env.start_worker(4, 8);
    let _notify = env.start_notify().await;
    let no = env.no("busy");
    let order = env.create(&no, 700, Duration::from_secs(1)).await;
    env.settled(&no, Duration::from_secs(15)).await;
    // Every refund attempt (first try and three retry steps) finds the gateway busy.
    env.buyers
        .fail_next(&no, FaultKind::Busy20000, 4)
        .await
        .unwrap();
    env.buyers.scan_and_pay(&no, 700).await.unwrap();

    let row = refund_settled(&env, order.id, Duration::from_secs(30)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Failed);
    assert_eq!(row.attempts, 4);
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("20000"),
        "{row:?}"
    );
    let parked = env
        .wait_parked(1, Duration::from_secs(10))
        .await
        .expect("the refund message is parked");
    let body: serde_json::Value = serde_json::from_slice(&parked[0].0).unwrap();
    assert_eq!(body["job"], "refund");
    assert!(
        env.buyers
            .trade(&no)
            .await
            .unwrap()
            .unwrap()
            .refunds
            .is_empty()
    );
    let worked = worker.metrics.render();
    assert_eq!(
        refunds_counted(&worked, RefundProgress::Retried),
        3,
        "{worked}"
    );
    assert_eq!(
        refunds_counted(&worked, RefundProgress::Failed),
        1,
        "{worked}"
    );
    assert_eq!(
        refunds_counted(&worked, RefundProgress::Succeeded),
        0,
        "{worked}"
    );
    // The operator's list shows it until it succeeds.
    let listed = open_refunds(&env).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status(), refunds::RefundStatus::Failed);

    // The operator asks again: the failed refund is reopened and sent.
    let decider = env.decider("reconcile:test");
    let again = refund::request(&decider, &no, false).await.unwrap();
    assert!(matches!(
        again.result,
        RefundRequestResult::Requested { .. }
    ));
    let row = refund_settled(&env, order.id, Duration::from_secs(15)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded);
    assert_eq!(
        env.buyers.trade(&no).await.unwrap().unwrap().refunds.len(),
        1
    );
    assert!(open_refunds(&env).await.is_empty());
    let worked = worker.metrics.render();
    assert_eq!(
        refunds_counted(&worked, RefundProgress::Succeeded),
        1,
        "{worked}"
    );
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.refund_failed"), 1);
    assert_eq!(count(&events, &no, "order.refunded"), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bill_s_payments_after_close_go_through_the_policy() {
    use chrono::Utc;

    use order_closer::gateway::alipay::response::china;
    use order_closer::reconcile::bill::{load, reconcile};

    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.quiet_notifications();
    env.start_worker(4, 8);
    let no = env.no("billed");
    let order = env.create(&no, 2500, Duration::from_secs(1)).await;
    env.settled(&no, Duration::from_secs(15)).await;
    // Paid after close, and the notification lost: only the bill tells.
    env.buyers.scan_and_pay(&no, 2500).await.unwrap();
    let today = Utc::now().with_timezone(&china()).date_naive();
    let gateways = env.gateways();
    let source = gateways.bill_source("alipay").unwrap();
    let parsed = load(source.as_ref(), today, None).await.unwrap();
    let decider = env.decider("reconcile:test");

    let dry = reconcile(&decider, "alipay", &parsed, false).await.unwrap();
    assert_eq!(dry.paid_after_close.len(), 1);
    assert!(
        dry.paid_after_close[0]
            .action
            .contains("would request its refund"),
        "{:?}",
        dry.paid_after_close[0]
    );
    assert!(refund_row(&env, order.id).await.is_none());

    let applied = reconcile(&decider, "alipay", &parsed, true).await.unwrap();
    assert!(
        applied.paid_after_close[0]
            .action
            .contains("refund requested"),
        "{:?}",
        applied.paid_after_close[0]
    );
    let row = refund_settled(&env, order.id, Duration::from_secs(15)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded);
    // The same bill again requests nothing more.
    let again = reconcile(&decider, "alipay", &parsed, true).await.unwrap();
    // (The gateway, asked again, may now say the refunded trade is closed.)
    assert!(
        again
            .paid_after_close
            .iter()
            .all(|l| !l.action.contains("refund requested")),
        "{again:?}"
    );
    assert_eq!(
        env.buyers.trade(&no).await.unwrap().unwrap().refunds.len(),
        1
    );
    env.cleanup().await;
}

/// A gateway whose refund call lets another worker settle the refund first (a duplicate
/// message), then fails: the decider must see the refund settled, not retry or park it.
struct SettledMeanwhile {
    pool: order_closer::db::DbPool,
    order_id: i64,
    error: order_closer::gateway::GatewayError,
}

#[async_trait::async_trait]
impl order_closer::gateway::Gateway for SettledMeanwhile {
    async fn query(
        &self,
        _: order_closer::gateway::TradeRef<'_>,
    ) -> Result<order_closer::gateway::QueryAnswer, order_closer::gateway::GatewayError> {
        Err(self.error.clone())
    }

    async fn close(
        &self,
        _: order_closer::gateway::TradeRef<'_>,
    ) -> Result<order_closer::gateway::CloseAnswer, order_closer::gateway::GatewayError> {
        Err(self.error.clone())
    }

    async fn refund(
        &self,
        _: &order_closer::gateway::RefundRequest<'_>,
    ) -> Result<order_closer::gateway::RefundAnswer, order_closer::gateway::GatewayError> {
        let mut conn = db::conn(&self.pool).await.unwrap();
        let moved = refunds::record_attempt(
            &mut conn,
            self.order_id,
            refunds::RefundStatus::Succeeded,
            None,
            Some("the other worker's answer"),
        )
        .await
        .unwrap();
        assert!(moved);
        Err(self.error.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_settled_by_another_worker_meanwhile_is_neither_retried_nor_parked() {
    use order_closer::decide::{AttemptInfo, Decider, Gateways, Outcome};
    use order_closer::gateway::GatewayError;

    let env = TestEnv::new(&[]).await;
    let first = AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    };
    for (name, error) in [
        ("transient", GatewayError::retryable("timeout", "no answer")),
        (
            "refused",
            GatewayError::permanent("ACQ.TRADE_STATUS_ERROR", "no"),
        ),
    ] {
        let no = env.no(name);
        let order = env.create(&no, 500, Duration::from_secs(3600)).await;
        let mut conn = db::conn(&env.pool).await.unwrap();
        db::orders::mark_closed(&mut conn, order.id, "deadline_no_trade")
            .await
            .unwrap();
        drop(conn);
        let closed = env.order(&no).await;
        let requested = env
            .decider("reconcile:test")
            .request_refund(&closed, 500, false)
            .await
            .unwrap();
        assert!(matches!(requested, RefundRequestResult::Requested { .. }));
        let gateways = Gateways::default().with(
            "alipay",
            std::sync::Arc::new(SettledMeanwhile {
                pool: env.pool.clone(),
                order_id: order.id,
                error,
            }),
        );
        let decider = Decider::new(env.pool.clone(), gateways, env.settings.retry.clone(), "w");
        let outcome = decider
            .refund(order.id, &no, first, order_closer::decide::Mode::Apply)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Settled(OrderStatus::Closed), "{name}");
        let row = refund_row(&env, order.id).await.unwrap();
        assert_eq!(row.status(), refunds::RefundStatus::Succeeded, "{name}");
        assert_eq!(row.attempts, 1, "{name}: only the other worker's attempt");
        assert_eq!(
            outcomes(&env, order.id).await,
            vec!["refund_requested"],
            "{name}: nothing recorded for the late answer"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_parked_refund_sends_it_again() {
    use order_closer::decide::Mode;
    use order_closer::reconcile::Verdict;
    use order_closer::reconcile::parked::{self, ParkedAction};

    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.start_worker(4, 8);
    let _notify = env.start_notify().await;
    let no = env.no("replayed");
    let order = env.create(&no, 800, Duration::from_secs(1)).await;
    env.settled(&no, Duration::from_secs(15)).await;
    env.buyers
        .fail_next(&no, FaultKind::Busy20000, 4)
        .await
        .unwrap();
    env.buyers.scan_and_pay(&no, 800).await.unwrap();
    let row = refund_settled(&env, order.id, Duration::from_secs(30)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Failed);
    let queue = env.topology.parked_queue();
    let parked_now = eventually(Duration::from_secs(10), || async {
        (env.queue_len(&queue).await == 1).then_some(())
    })
    .await;
    assert!(parked_now.is_some(), "the refund message is parked");

    let decider = env.decider("reconcile:test");
    let channel = env.connection.create_channel().await.unwrap();
    let run = |mode| {
        let (channel, decider, publisher) = (&channel, &decider, &env.publisher);
        async move {
            parked::run(
                channel,
                publisher,
                decider,
                ParkedAction::Requeue,
                mode,
                10,
                "test",
            )
            .await
            .unwrap()
        }
    };
    // A dry run says the refund would be sent, and changes nothing.
    let dry = run(Mode::DryRun).await;
    assert_eq!(dry.removed, 0);
    assert_eq!(dry.lines[0].verdict, Some(Verdict::WouldRefund));
    let row = refund_row(&env, order.id).await.unwrap();
    assert_eq!(row.status(), refunds::RefundStatus::Failed);

    // Replayed: reopened and sent at once; the message leaves the parking queue.
    let replayed = run(Mode::Apply).await;
    assert_eq!(replayed.removed, 1);
    assert_eq!(replayed.lines[0].verdict, Some(Verdict::Refunded));
    let row = refund_row(&env, order.id).await.unwrap();
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded);
    assert_eq!(
        env.buyers.trade(&no).await.unwrap().unwrap().refunds.len(),
        1
    );
    env.cleanup().await;
}
