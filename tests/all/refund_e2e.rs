//! Payments after close, refunded or held: the simulator's `alipay.trade.refund` over HTTP
//! (with its idempotency rule), a worker on real RabbitMQ sending the refund, real
//! Postgres. However often a refund is sent (a timeout after it was applied, an operator
//! asking twice), the simulator shows exactly one.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use order_closer::db::refunds::RefundProgress;
use order_closer::db::{self, refunds};
use order_closer::decide::refund::RefundRequestResult;
use order_closer::decide::refund_plan::refund_number;
use order_closer::notify::NotifyOutcome;
use order_closer::order::OrderStatus;
use order_closer::reconcile::refund::{self, RefundError};
use order_closer::sim::{FaultKind, FaultPlan, SimMethod, SimTradeStatus};

use crate::common::{TestEnv, eventually};

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
    // The first refund call is applied at the gateway, but its answer never arrives (the
    // query before it is answered).
    let mut plan = FaultPlan::none();
    plan.timeout_ms = Some(10_000);
    env.buyers.set_faults(&plan).await.unwrap();
    env.buyers
        .fail_next_on(
            &no,
            Some(SimMethod::Refund),
            FaultKind::TimeoutAfterApply,
            1,
        )
        .await
        .unwrap();
    // A QR code without expiry, scanned and paid after we closed.
    env.buyers
        .at(channel)
        .buyer(&no)
        .scans(1500)
        .pays()
        .send()
        .await
        .unwrap();

    let row = refund_settled(&env, order.id, Duration::from_secs(30)).await;
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded, "{channel}");
    assert_eq!(row.amount_minor, Some(1500));
    assert_eq!(
        row.attempts, 2,
        "the timed-out call, then the same request again"
    );

    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(row.out_request_no, refund_number(&trade.trade_no));
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
    env.buyers
        .buyer(&no)
        .scans(900)
        .pays()
        .send()
        .await
        .unwrap();
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
    assert!(matches!(err, RefundError::NotPaid(_)), "{err}");
    assert!(err.to_string().contains("nothing to refund"), "{err}");

    // A dry run asks the gateway and changes nothing.
    let dry = refund::request(&decider, &no, true).await.unwrap();
    assert_eq!(dry.paid_minor, Some(900));
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
        .fail_next_on(&no, Some(SimMethod::Refund), FaultKind::Busy20000, 4)
        .await
        .unwrap();
    env.buyers
        .buyer(&no)
        .scans(700)
        .pays()
        .send()
        .await
        .unwrap();

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

    use order_closer::reconcile::bill::{load, reconcile};
    use order_closer::time::china;

    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.quiet_notifications();
    env.start_worker(4, 8);
    let no = env.no("billed");
    let order = env.create(&no, 2500, Duration::from_secs(1)).await;
    env.settled(&no, Duration::from_secs(15)).await;
    // Paid after close, and the notification lost: only the bill tells.
    env.buyers
        .buyer(&no)
        .scans(2500)
        .pays()
        .send()
        .await
        .unwrap();
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
        // One trade number per order: refund numbers are unique.
        Ok(order_closer::gateway::QueryAnswer {
            state: order_closer::gateway::TradeState::Paid {
                trade_no: format!("T-{}", self.order_id),
                amount_minor: 500,
                paid_at: None,
            },
            raw: "{}".into(),
        })
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
        let closed_trade = env.trade(&no).await;
        let planned = order_closer::decide::refund_plan::plan(
            &order_closer::gateway::TradeState::Paid {
                trade_no: "T-500".into(),
                amount_minor: 500,
                paid_at: None,
            },
            None,
        )
        .unwrap();
        let requested = env
            .decider("reconcile:test")
            .request_refund(&closed, &closed_trade, &planned)
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
        let decider = Decider::new(
            env.pool.clone(),
            gateways,
            env.settings.decisions.retry.clone(),
            "w",
        );
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
        .fail_next_on(&no, Some(SimMethod::Refund), FaultKind::Busy20000, 4)
        .await
        .unwrap();
    env.buyers
        .buyer(&no)
        .scans(800)
        .pays()
        .send()
        .await
        .unwrap();
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

/// The first attempt of a refund message.
const FIRST: order_closer::decide::AttemptInfo = order_closer::decide::AttemptInfo {
    number: 0,
    first_seen: None,
    not_before: None,
};

/// An order of `channel` closed by us without a trade (as a deadline before the buyer
/// scanned closes it), then scanned and paid after the close at the simulator `buyers`
/// speaks to (the environment's own, or another deployment's).
async fn closed_then_paid(
    env: &TestEnv,
    buyers: &order_closer::sim::BuyerClient,
    channel: &str,
    no: &str,
    amount_minor: i64,
) -> (order_closer::order::Order, order_closer::sim::SimTradeView) {
    let order = env
        .create_at(channel, no, amount_minor, Duration::from_secs(3600))
        .await;
    let mut conn = db::conn(&env.pool).await.unwrap();
    assert!(
        db::orders::mark_closed(&mut conn, order.id, "deadline_no_trade")
            .await
            .unwrap()
    );
    drop(conn);
    let trade = buyers
        .at(channel)
        .buyer(no)
        .scans(amount_minor)
        .pays()
        .send()
        .await
        .unwrap();
    (env.order(no).await, trade)
}

/// Sends an order's requested refund as the worker does (one attempt), expects it made,
/// and returns its row.
async fn send_refund(
    env: &TestEnv,
    decider: &order_closer::decide::Decider,
    order_id: i64,
    no: &str,
) -> refunds::RefundRow {
    use order_closer::decide::{Mode, Outcome};

    let outcome = decider
        .refund(order_id, no, FIRST, Mode::Apply)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Refunded { .. }),
        "{no}: {outcome:?}"
    );
    let row = refund_row(env, order_id).await.unwrap();
    assert_eq!(row.status(), refunds::RefundStatus::Succeeded, "{no}");
    row
}

/// What reports a payment after close (a bill row, a notification) is
/// not believed about its amount. A bill row saying 5.00 for a CLOSED order whose buyer
/// paid 1.00 requests a refund, and the worker gives back the 1.00 the gateway says was
/// paid (before: a refund of 5.00, refused by the gateway for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_back_what_the_gateway_says_was_paid_not_what_the_report_claimed() {
    use order_closer::decide::Mode;
    use order_closer::decide::refund::PolicyEffect;

    let env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.quiet_notifications();
    let decider = env.decider("reconcile:test");
    for channel in order_closer::gateway::rules::channels() {
        let no = env.no(&format!("claimed-{channel}"));
        let (order, trade) = closed_then_paid(&env, &env.buyers, channel, &no, 100).await;
        let stored = env.trade(&no).await;
        let reported = decider
            .paid_after_close(
                &order,
                &stored,
                500,
                Some(&trade.trade_no),
                "the bill's row says 5.00",
                Mode::Apply,
            )
            .await
            .unwrap();
        assert_eq!(reported.policy, PolicyEffect::RefundRequested);
        let row = refund_row(&env, order.id).await.unwrap();
        assert_eq!(
            (row.amount_minor, row.out_request_no.as_deref()),
            (None, None),
            "{channel}: nothing is decided before the gateway is asked"
        );

        let row = send_refund(&env, &decider, order.id, &no).await;
        assert_eq!(row.amount_minor, Some(100), "{channel}");
        let refunded = env.buyers.trade(&no).await.unwrap().unwrap();
        let amounts: Vec<i64> = refunded.refunds.iter().map(|r| r.amount_minor).collect();
        assert_eq!(amounts, vec![100], "{channel}");
        let trail = env.trail(order.id).await;
        assert!(
            trail
                .iter()
                .any(|d| d.detail.contains("reported paid 5.00")),
            "{channel}: the claim stays in the trail: {trail:?}"
        );
    }
    env.cleanup().await;
}

/// A refund an older version stored with a bill row's wrong amount
/// (5.00 for a 1.00 payment) failed at the gateway. The operator's dry run says what the
/// real run sends, and the real run sends the gateway's 1.00 under the new number (before:
/// the dry run said 1.00 and the real run sent the stored 5.00 again, refused again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_stored_with_a_wrong_amount_goes_out_for_the_gateway_s_amount_when_asked_again()
 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use order_closer::db::schema::refunds as r;
    use order_closer::decide::{Mode, Outcome};

    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let decider = env.decider("reconcile:test");
    for channel in order_closer::gateway::rules::channels() {
        let no = env.no(&format!("stored-{channel}"));
        let (order, trade) = closed_then_paid(&env, &env.buyers, channel, &no, 100).await;
        // As an older version left it: the claimed amount under `RF-<order id>`, sent and
        // refused.
        let trade_id = env.trade(&no).await.id;
        let mut conn = db::conn(&env.pool).await.unwrap();
        diesel::insert_into(r::table)
            .values((
                r::order_id.eq(order.id),
                r::trade_id.eq(trade_id),
                r::out_trade_no.eq(&no),
                r::out_request_no.eq(format!("RF-{}", order.id)),
                r::amount_minor.eq(500_i64),
                r::status.eq("failed"),
                r::attempts.eq(1),
                r::last_error.eq("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL: 退款金额超限"),
                r::requested_by.eq("an older version"),
                r::sent_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        let number = refund_number(&trade.trade_no).unwrap();

        // The operator's dry run and the replay's dry run: the gateway's amount.
        let dry = refund::request(&decider, &no, true).await.unwrap();
        assert_eq!(dry.paid_minor, Some(100));
        assert_eq!(
            dry.result,
            RefundRequestResult::WouldRequest {
                amount_minor: 100,
                out_request_no: number.clone(),
            },
            "{channel}"
        );
        assert_eq!(
            decider
                .refund(order.id, &no, FIRST, Mode::DryRun)
                .await
                .unwrap(),
            Outcome::WouldRefund { amount_minor: 100 }
        );
        let row = refund_row(&env, order.id).await.unwrap();
        assert_eq!(row.status(), refunds::RefundStatus::Failed, "unchanged");
        assert_eq!(row.amount_minor, Some(500), "unchanged");

        // The real run does what the dry run said.
        let done = refund::request(&decider, &no, false).await.unwrap();
        assert_eq!(
            done.result,
            RefundRequestResult::Requested {
                amount_minor: 100,
                out_request_no: number.clone(),
            }
        );
        let row = send_refund(&env, &decider, order.id, &no).await;
        assert_eq!(
            (row.amount_minor, row.out_request_no.as_deref()),
            (Some(100), Some(number.as_str()))
        );
        let refunded = env.buyers.trade(&no).await.unwrap().unwrap();
        assert_eq!(refunded.refunds.len(), 1, "{channel}");
        assert_eq!(refunded.refunds[0].amount_minor, 100);
        assert_eq!(
            refunded.refunds[0].out_request_no.as_deref(),
            Some(number.as_str())
        );
    }
    env.cleanup().await;
}

/// Two deployments sharing one merchant account (staging and
/// production, a restored database, one schema per tenant) each refund their own order,
/// and the two orders have the same id in their own databases. `RF-<order id>` was one
/// number for both: WeChat Pay holds `out_refund_no` unique per merchant and refused the
/// second refund for good. The number now comes from the gateway's trade number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_one_merchant_account_each_refund_their_own_order() {
    let production = TestEnv::new(&[]).await;
    production.quiet_notifications();
    let shared = production.sim().client_vars();
    let gateway_vars: Vec<(&str, &str)> = shared
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let staging = TestEnv::new(&gateway_vars).await;
    for channel in order_closer::gateway::rules::channels() {
        let mut paid = Vec::new();
        for env in [&production, &staging] {
            let no = env.no(&format!("tenant-{channel}"));
            let (order, trade) = closed_then_paid(env, &production.buyers, channel, &no, 300).await;
            paid.push((env, no, order, trade));
        }
        assert_eq!(paid[0].2.id, paid[1].2.id, "one order id in both databases");
        for (env, no, order, trade) in &paid {
            let decider = env.decider("reconcile:test");
            refund::request(&decider, no, false).await.unwrap();
            send_refund(env, &decider, order.id, no).await;
            let refunded = production.buyers.trade(no).await.unwrap().unwrap();
            assert_eq!(refunded.refunds.len(), 1, "{channel} {no}");
            assert_eq!(
                refunded.refunds[0].out_request_no,
                refund_number(&trade.trade_no)
            );
        }
    }
    staging.cleanup().await;
    production.cleanup().await;
}

/// Refund rows of versions before the amount and number were decided at send
/// time, migrated. Never sent: the claimed amount and `RF-<order id>` are forgotten (the
/// first send decides them from the gateway). Sent: kept, so that sending again confirms
/// a refund the old request may have made. Succeeded: untouched. The migration's down step
/// gives a never-sent row the order's amount and the old number back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_rows_of_older_versions_are_migrated_keeping_only_what_was_sent() {
    use crate::common::migrations;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use order_closer::db::schema::refunds as r;

    /// Runs this migration's down step (`up` false) or every pending one.
    async fn migrate(url: &str, up: bool) {
        if up {
            migrations::run_pending(url).await;
        } else {
            migrations::revert(url, "refund_from_gateway").await;
        }
    }

    let env = TestEnv::new(&[]).await;
    let mut ids = Vec::new();
    for name in ["never-sent", "sent", "succeeded", "new-shape"] {
        let no = env.no(name);
        ids.push((env.create(&no, 100, Duration::from_secs(3600)).await.id, no));
    }
    // A row of this version, never sent.
    let mut conn = db::conn(&env.pool).await.unwrap();
    let trade_id = env.trade(&ids[3].1).await.id;
    refunds::request(&mut conn, ids[3].0, trade_id, &ids[3].1, "new")
        .await
        .unwrap();
    drop(conn);

    migrate(&env.database_url, false).await;
    let mut conn = db::connect(&env.database_url).await.unwrap();
    let back: (Option<i64>, Option<String>) = r::table
        .filter(r::order_id.eq(ids[3].0))
        .select((r::amount_minor, r::out_request_no))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(back, (Some(100), Some(format!("RF-{}", ids[3].0))));
    for ((id, no), (status, attempts)) in
        ids.iter()
            .take(3)
            .zip([("requested", 0), ("failed", 1), ("succeeded", 2)])
    {
        diesel::sql_query(
            "INSERT INTO refunds (order_id, out_trade_no, out_request_no, amount_minor, status, attempts, requested_by, trade_id) \
             SELECT $1, $2, 'RF-' || $1, 500, $3, $4, 'an older version', t.id FROM trades t WHERE t.order_id = $1",
        )
        .bind::<diesel::sql_types::BigInt, _>(id)
        .bind::<diesel::sql_types::Text, _>(no)
        .bind::<diesel::sql_types::Text, _>(status)
        .bind::<diesel::sql_types::Integer, _>(attempts)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    drop(conn);

    migrate(&env.database_url, true).await;
    let row = |i: usize| {
        let id = ids[i].0;
        let env = &env;
        async move { refund_row(env, id).await.unwrap() }
    };
    let never_sent = row(0).await;
    assert_eq!(never_sent.status(), refunds::RefundStatus::Requested);
    assert_eq!(
        (
            never_sent.amount_minor,
            never_sent.out_request_no,
            never_sent.sent_at
        ),
        (None, None, None)
    );
    for (i, status) in [
        (1, refunds::RefundStatus::Failed),
        (2, refunds::RefundStatus::Succeeded),
    ] {
        let kept = row(i).await;
        assert_eq!(kept.status(), status);
        assert_eq!(
            kept.sent(),
            Some((500, format!("RF-{}", ids[i].0).as_str())),
            "{status:?}"
        );
    }
    let new_shape = row(3).await;
    assert_eq!(
        (new_shape.amount_minor, new_shape.out_request_no),
        (None, None)
    );
    env.cleanup().await;
}
