//! Fault injection end to end: the simulator (real HTTP on loopback) injects each fault
//! kind and the real Alipay client must classify it as a retryable error with a stable
//! code, without any fault changing a trade behind the client's back (except
//! `timeout_after_apply`, which is meant to).
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use crate::common::gateway::{GatewayEnv, gateway_env};

use std::time::{Duration, Instant};

use chrono::Utc;

use order_closer::gateway::{CloseAnswer, FaultClass, Gateway, GatewayError, TradeRef, TradeState};
use order_closer::sim::{BuyerError, FaultKind, FaultPlan, SimTradeStatus, SimTradeView};

/// The client's own timeout: every `timeout` hold below is longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

type Env = GatewayEnv;

async fn env_with_timeout(timeout: Duration) -> Env {
    gateway_env(timeout).await
}

async fn env() -> Env {
    env_with_timeout(CLIENT_TIMEOUT).await
}

fn retryable_code(result: Result<impl std::fmt::Debug, GatewayError>) -> String {
    match result {
        Err(GatewayError {
            class: FaultClass::Retryable,
            code,
            ..
        }) => code,
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

async fn status(env: &Env, no: &str) -> SimTradeStatus {
    env.buyers.trade(no).await.unwrap().unwrap().status
}

/// Every fault kind but the timeouts (tested apart, they take the client timeout) and
/// `wrong_amount` (not an error), with the code the client reports for a query and for
/// a close.
const FAST_KINDS: [(FaultKind, &str); 8] = [
    (FaultKind::Http502, "http_502"),
    (FaultKind::Busy20000, "20000"),
    (FaultKind::SystemError, "ACQ.SYSTEM_ERROR"),
    (FaultKind::Html, "unparseable"),
    (FaultKind::TruncatedJson, "unparseable"),
    (FaultKind::BadSignature, "bad_signature"),
    (FaultKind::WrongOrder, "wrong_order"),
    (FaultKind::EmptyBody, "unparseable"),
];

#[tokio::test]
async fn each_fault_kind_is_a_stable_retryable_code_and_changes_nothing() {
    let env = env().await;
    for (kind, code) in FAST_KINDS {
        let no = format!("ORD-{kind}");
        env.buyers.buyer(&no).scans(1234).send().await.unwrap();
        let installed = env
            .buyers
            .set_faults(&FaultPlan::only(kind, 1.0))
            .await
            .unwrap();
        assert_eq!(installed.rate(kind), 1.0);

        assert_eq!(
            retryable_code(env.client.query(TradeRef::new(&no)).await),
            code,
            "{kind} query"
        );
        assert_eq!(
            retryable_code(env.client.close(TradeRef::new(&no)).await),
            code,
            "{kind} close"
        );
        // The same code for a trade the gateway does not know.
        assert_eq!(
            retryable_code(env.client.query(TradeRef::new("ORD-unknown")).await),
            code,
            "{kind} query of an unknown trade"
        );
        // A faulted close does not close.
        assert_eq!(
            status(&env, &no).await,
            SimTradeStatus::WaitBuyerPay,
            "{kind}"
        );
    }
    // A paid trade behind the faults stays paid and unchanged as well.
    env.buyers
        .buyer("ORD-paid")
        .scans(500)
        .pays()
        .send()
        .await
        .unwrap();
    for (kind, code) in FAST_KINDS {
        env.buyers
            .set_faults(&FaultPlan::only(kind, 1.0))
            .await
            .unwrap();
        assert_eq!(
            retryable_code(env.client.close(TradeRef::new("ORD-paid")).await),
            code
        );
    }
    assert_eq!(status(&env, "ORD-paid").await, SimTradeStatus::TradeSuccess);

    let stats = env.buyers.stats().await.unwrap();
    for (kind, _) in FAST_KINDS {
        assert_eq!(stats.faults_injected.get(kind.as_str()), Some(&4), "{kind}");
    }
    // Every faulted request was authenticated and counted.
    assert_eq!(stats.queries, 16);
    assert_eq!(stats.closes, 16);
    env.sim.shutdown().await;
}

/// Every fault kind on every gateway the simulator speaks, through the registry's
/// clients: a retryable error, the same code for the same fault whatever the call or
/// the trade, and nothing changed (each gateway names the fault in its own words).
#[tokio::test]
async fn every_fault_kind_on_every_gateway_is_retryable_stable_and_changes_nothing() {
    let sim = order_closer::sim::start_local().await.unwrap();
    let vars = order_closer::config::Vars::from_map(sim.client_vars().into_iter().collect());
    let settings = order_closer::config::Settings::from_vars(vars).unwrap();
    let gateways =
        order_closer::decide::Gateways::from_settings(&settings, order_closer::gateway::ALL)
            .unwrap();
    let buyers = order_closer::sim::BuyerClient::new(sim.base_url()).unwrap();
    for channel in sim.channels() {
        let gateway = gateways.get(channel).unwrap();
        let at = buyers.at(channel);
        let paid = format!("PAID-{channel}");
        at.buyer(&paid).scans(500).pays().send().await.unwrap();
        for (kind, _) in FAST_KINDS {
            let no = format!("W{channel}-{kind}");
            at.buyer(&no).scans(1234).send().await.unwrap();
            buyers
                .set_faults(&FaultPlan::only(kind, 1.0))
                .await
                .unwrap();
            // A fault the gateway's close answer cannot show (WeChat's 204 has no body)
            // is not drawn: that close is answered as usual and is not compared.
            let close_shows = sim
                .gateway(channel)
                .unwrap()
                .can_show(kind, order_closer::sim::SimMethod::Close);
            let mut codes = vec![
                retryable_code(gateway.query(TradeRef::new(&no)).await),
                retryable_code(gateway.query(TradeRef::new("W-unknown")).await),
            ];
            if close_shows {
                codes.push(retryable_code(gateway.close(TradeRef::new(&no)).await));
                codes.push(retryable_code(gateway.close(TradeRef::new(&paid)).await));
            }
            assert!(
                codes.iter().all(|c| *c == codes[0]),
                "{channel} {kind}: {codes:?}"
            );
            buyers.clear_faults().await.unwrap();
            assert_eq!(
                buyers.trade(&no).await.unwrap().unwrap().status,
                SimTradeStatus::WaitBuyerPay,
                "{channel} {kind}: a faulted close does not close"
            );
        }
        assert_eq!(
            buyers.trade(&paid).await.unwrap().unwrap().status,
            SimTradeStatus::TradeSuccess
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn timeout_holds_until_the_client_gives_up_and_changes_nothing() {
    let env = env().await;
    env.buyers.buyer("ORD-T").scans(100).send().await.unwrap();
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::Timeout, 1.0))
        .await
        .unwrap();
    let started = Instant::now();
    let (query, close) = tokio::join!(
        env.client.query(TradeRef::new("ORD-T")),
        env.client.close(TradeRef::new("ORD-T"))
    );
    let elapsed = started.elapsed();
    assert_eq!(retryable_code(query), "timeout");
    assert_eq!(retryable_code(close), "timeout");
    assert!(elapsed >= CLIENT_TIMEOUT, "{elapsed:?}");
    // Well short of the simulator's 30 s hold: the client gave up at its own timeout.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(status(&env, "ORD-T").await, SimTradeStatus::WaitBuyerPay);
    assert_eq!(
        env.buyers
            .stats()
            .await
            .unwrap()
            .faults_injected
            .get("timeout"),
        Some(&2)
    );

    // A hold shorter than the client timeout: the connection is dropped without an
    // answer, still retryable and still without effect.
    let mut short = FaultPlan::only(FaultKind::Timeout, 1.0);
    short.timeout_ms = Some(100);
    env.buyers.set_faults(&short).await.unwrap();
    assert_eq!(
        retryable_code(env.client.close(TradeRef::new("ORD-T")).await),
        "http_transport"
    );
    assert_eq!(status(&env, "ORD-T").await, SimTradeStatus::WaitBuyerPay);

    // Shutting down does not wait for the 30 s holds still in flight.
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::Timeout, 1.0))
        .await
        .unwrap();
    let _ = env.client.query(TradeRef::new("ORD-T")).await;
    let stopping = Instant::now();
    env.sim.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn timeout_after_apply_closes_but_the_client_sees_a_timeout() {
    let env = env().await;
    env.buyers.buyer("ORD-TA").scans(100).send().await.unwrap();
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::TimeoutAfterApply, 1.0))
        .await
        .unwrap();
    assert_eq!(
        retryable_code(env.client.close(TradeRef::new("ORD-TA")).await),
        "timeout"
    );
    // The close happened; we never heard.
    let trade = env.buyers.trade("ORD-TA").await.unwrap().unwrap();
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);
    assert!(trade.closed_at.is_some());
    // A query under the same fault times out too; once cleared it tells the truth.
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-TA")).await),
        "timeout"
    );
    env.buyers.clear_faults().await.unwrap();
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-TA"))
            .await
            .unwrap()
            .state,
        TradeState::Closed
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn wrong_amount_yields_paid_with_the_gateways_amount() {
    let env = env().await;
    env.buyers
        .buyer("ORD-A")
        .scans(1234)
        .pays()
        .send()
        .await
        .unwrap();
    env.buyers.buyer("ORD-W").scans(777).send().await.unwrap();
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::WrongAmount, 1.0))
        .await
        .unwrap();
    let answer = env.client.query(TradeRef::new("ORD-A")).await.unwrap();
    match answer.state {
        TradeState::Paid { amount_minor, .. } => {
            assert_ne!(amount_minor, 1234, "the gateway's amount, not the trade's");
            assert_eq!(amount_minor, 1235);
        }
        other => panic!("expected Paid, got {other:?}"),
    }
    assert!(
        answer.raw.contains("\"total_amount\":\"12.35\""),
        "{}",
        answer.raw
    );
    // Unpaid trades still read as unpaid (the amount is not looked at).
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-W"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    // Not applicable to closes or unknown trades: those answer normally.
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-none"))
            .await
            .unwrap()
            .state,
        TradeState::NotFound
    );
    assert_eq!(
        env.client.close(TradeRef::new("ORD-W")).await.unwrap(),
        CloseAnswer::Closed
    );
    assert_eq!(status(&env, "ORD-A").await, SimTradeStatus::TradeSuccess);
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(stats.faults_injected.get("wrong_amount"), Some(&2));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn fail_next_affects_exactly_n_answers() {
    let env = env().await;
    env.buyers.buyer("ORD-F").scans(100).send().await.unwrap();
    env.buyers.buyer("ORD-G").scans(100).send().await.unwrap();
    let pending = env
        .buyers
        .fail_next("ORD-F", FaultKind::Busy20000, 3)
        .await
        .unwrap();
    assert_eq!((pending.kind, pending.remaining), (FaultKind::Busy20000, 3));
    // Other trades are not affected.
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-G"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    // Queries and closes both consume it.
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-F")).await),
        "20000"
    );
    assert_eq!(
        retryable_code(env.client.close(TradeRef::new("ORD-F")).await),
        "20000"
    );
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-F")).await),
        "20000"
    );
    assert_eq!(status(&env, "ORD-F").await, SimTradeStatus::WaitBuyerPay);
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-F"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    assert_eq!(
        env.client.close(TradeRef::new("ORD-F")).await.unwrap(),
        CloseAnswer::Closed
    );

    // It wins over the plan, and works for a trade that does not exist yet.
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::Html, 1.0))
        .await
        .unwrap();
    env.buyers
        .fail_next("ORD-later", FaultKind::SystemError, 1)
        .await
        .unwrap();
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-later")).await),
        "ACQ.SYSTEM_ERROR"
    );
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-later")).await),
        "unparseable"
    );
    env.buyers.clear_faults().await.unwrap();

    // Count 0 cancels.
    env.buyers
        .fail_next("ORD-G", FaultKind::Http502, 2)
        .await
        .unwrap();
    env.buyers
        .fail_next("ORD-G", FaultKind::Http502, 0)
        .await
        .unwrap();
    assert!(env.client.query(TradeRef::new("ORD-G")).await.is_ok());

    // Bad requests.
    let http = reqwest::Client::new();
    for body in [
        r#"{"kind":"nope","count":1}"#,
        r#"{"count":1}"#,
        r#"{"kind":"html","count":-1}"#,
        "oops",
    ] {
        let r = http
            .post(format!("{}/sim/trades/ORD-G/fail-next", env.sim.base_url()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(stats.faults_injected.get("busy_20000"), Some(&3));
    assert_eq!(stats.faults_injected.get("system_error"), Some(&1));
    assert_eq!(stats.faults_injected.get("html"), Some(&1));
    assert_eq!(stats.faults_injected.get("http_502"), None);
    env.sim.shutdown().await;
}

/// PUTs a raw body to `/sim/faults`; returns the status and the JSON answer.
async fn put_raw(env: &Env, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/sim/faults", env.sim.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn invalid_plans_are_rejected_naming_the_field() {
    let env = env().await;
    let good = FaultPlan::only(FaultKind::Busy20000, 0.5);
    env.buyers.set_faults(&good).await.unwrap();

    let cases = [
        (r#"{"http_502":1.5}"#, "http_502", vec!["http_502"]),
        (
            r#"{"http_502":0.6,"system_error":0.5}"#,
            "system_error",
            vec!["http_502", "system_error"],
        ),
        (
            r#"{"wrong_order":-0.1}"#,
            "wrong_order",
            vec!["wrong_order"],
        ),
        (r#"{"html":"sometimes"}"#, "html", vec!["html"]),
        (r#"{"busy":0.1}"#, "busy", vec!["busy"]),
        (r#"{"methods":["pay"]}"#, "methods", vec!["methods"]),
        (
            r#"{"timeout_ms":99999999}"#,
            "timeout_ms",
            vec!["timeout_ms"],
        ),
        ("[]", "body", vec!["body"]),
        ("not json", "body", vec!["body"]),
    ];
    for (body, field, named) in cases {
        let (status, answer) = put_raw(&env, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_fault_plan", "{body}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        for name in named {
            assert!(message.contains(name), "{body}: {message}");
        }
    }
    // Through the buyer client as well.
    let mut over = FaultPlan::only(FaultKind::Timeout, 0.7);
    over.timeout_after_apply = 0.7;
    match env.buyers.set_faults(&over).await {
        Err(BuyerError::Rejected {
            status, message, ..
        }) => {
            assert_eq!(status, 400);
            assert!(message.contains("timeout_after_apply"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The plan in force is untouched by the rejected ones.
    assert_eq!(env.buyers.faults().await.unwrap(), good);
    // Rates that sum to exactly 1.0 are fine.
    let (status, _) = put_raw(&env, r#"{"html":0.7,"empty_body":0.3}"#).await;
    assert_eq!(status, 200);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn clearing_faults_restores_normal_answers() {
    let env = env().await;
    env.buyers.buyer("ORD-C").scans(100).send().await.unwrap();
    assert_eq!(env.buyers.faults().await.unwrap(), FaultPlan::default());
    env.buyers
        .set_faults(&FaultPlan::only(FaultKind::Http502, 1.0))
        .await
        .unwrap();
    env.buyers
        .fail_next("ORD-C", FaultKind::Busy20000, 5)
        .await
        .unwrap();
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-C")).await),
        "20000"
    );
    assert_eq!(
        retryable_code(env.client.query(TradeRef::new("ORD-other")).await),
        "http_502"
    );
    env.buyers.clear_faults().await.unwrap();
    assert_eq!(env.buyers.faults().await.unwrap(), FaultPlan::default());
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-C"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    assert_eq!(
        env.client.close(TradeRef::new("ORD-C")).await.unwrap(),
        CloseAnswer::Closed
    );
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-other"))
            .await
            .unwrap()
            .state,
        TradeState::NotFound
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn methods_filter_limits_the_plan() {
    let env = env().await;
    env.buyers.buyer("ORD-M").scans(100).send().await.unwrap();
    let mut plan = FaultPlan::only(FaultKind::SystemError, 1.0);
    plan.methods = Some(vec!["close".into()]);
    env.buyers.set_faults(&plan).await.unwrap();
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-M"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    assert_eq!(
        retryable_code(env.client.close(TradeRef::new("ORD-M")).await),
        "ACQ.SYSTEM_ERROR"
    );
    assert_eq!(status(&env, "ORD-M").await, SimTradeStatus::WaitBuyerPay);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_and_a_late_close_still_applies() {
    let env = env_with_timeout(CLIENT_TIMEOUT).await;
    env.buyers.buyer("ORD-L").scans(100).send().await.unwrap();
    let mut plan = FaultPlan {
        latency_ms: 200,
        latency_jitter_ms: Some(50),
        ..FaultPlan::default()
    };
    env.buyers.set_faults(&plan).await.unwrap();
    let started = Instant::now();
    assert!(env.client.query(TradeRef::new("ORD-L")).await.is_ok());
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");

    // Latency past the client's timeout: the client gives up, but the gateway finishes
    // the close it started (as a real one would).
    // The latency is four times the timeout, so the close is still pending when the
    // client gives up; it then applies, however long the machine takes to get there.
    plan.latency_ms = 4 * CLIENT_TIMEOUT.as_millis() as u64;
    plan.latency_jitter_ms = None;
    env.buyers.set_faults(&plan).await.unwrap();
    assert_eq!(
        retryable_code(env.client.close(TradeRef::new("ORD-L")).await),
        "timeout"
    );
    assert_eq!(status(&env, "ORD-L").await, SimTradeStatus::WaitBuyerPay);
    let closed = crate::common::eventually(Duration::from_secs(30), || async {
        (status(&env, "ORD-L").await == SimTradeStatus::TradeClosed).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the late close was never applied");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_seeded_plan_repeats_its_faults() {
    let env = env().await;
    env.buyers.buyer("ORD-S").scans(100).send().await.unwrap();
    let mut plan = FaultPlan::only(FaultKind::Busy20000, 0.5);
    plan.seed = Some(2024);
    let mut runs = Vec::new();
    for _ in 0..2 {
        env.buyers.set_faults(&plan).await.unwrap();
        let mut pattern = Vec::new();
        for _ in 0..30 {
            pattern.push(env.client.query(TradeRef::new("ORD-S")).await.is_ok());
        }
        runs.push(pattern);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&true) && runs[0].contains(&false),
        "{:?}",
        runs[0]
    );
    let failures = runs[0].iter().filter(|ok| !**ok).count() as u64;
    assert_eq!(
        env.buyers
            .stats()
            .await
            .unwrap()
            .faults_injected
            .get("busy_20000"),
        Some(&(2 * failures))
    );
    env.sim.shutdown().await;
}

/// The buyer API's refusal, as (status, error kind).
fn rejection(result: Result<SimTradeView, BuyerError>) -> (u16, String) {
    match result {
        Err(BuyerError::Rejected { status, error, .. }) => (status, error),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn not_closeable() -> CloseAnswer {
    CloseAnswer::NotCloseable {
        sub_code: "ACQ.TRADE_STATUS_ERROR".into(),
    }
}

#[tokio::test]
async fn a_qr_code_cannot_be_scanned_after_time_expire() {
    let env = env().await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    let expired = (409, "trade_expired".to_owned());
    assert_eq!(
        rejection(
            env.buyers
                .buyer("ORD-late")
                .scans(100)
                .expiring_at(past)
                .send()
                .await
        ),
        expired
    );
    assert_eq!(
        rejection(
            env.buyers
                .buyer("ORD-late")
                .scans(100)
                .expiring_at(past)
                .pays()
                .send()
                .await
        ),
        expired
    );
    // No trade came into existence: the gateway does not know it.
    assert_eq!(env.buyers.trade("ORD-late").await.unwrap(), None);
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-late"))
            .await
            .unwrap()
            .state,
        TradeState::NotFound
    );
    assert_eq!(
        env.client.close(TradeRef::new("ORD-late")).await.unwrap(),
        CloseAnswer::Closed
    );
    assert!(env.sim.state().trades().is_empty());
    env.sim.shutdown().await;
}

#[tokio::test]
async fn time_expire_closes_what_is_unpaid_and_leaves_the_rest() {
    let env = env().await;
    // Far enough that the set-up below (six calls) ends before it on a loaded machine.
    let expire = Utc::now() + chrono::Duration::seconds(5);
    let waiting = env
        .buyers
        .buyer("ORD-wait")
        .scans(100)
        .expiring_at(expire)
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.time_expire, Some(expire));
    let paid = env
        .buyers
        .buyer("ORD-paid")
        .scans(200)
        .expiring_at(expire)
        .pays()
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
    env.buyers
        .buyer("ORD-race")
        .scans(300)
        .expiring_at(expire)
        .send()
        .await
        .unwrap();
    assert!(
        env.buyers
            .buyer("ORD-race")
            .pays_on_close()
            .send()
            .await
            .unwrap()
            .pay_on_close
    );
    let forever = env
        .buyers
        .buyer("ORD-forever")
        .scans(400)
        .send()
        .await
        .unwrap();
    assert_eq!(forever.time_expire, None);
    // Before the expiry, the trade waits as usual.
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-wait"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );

    let until = (expire - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until + Duration::from_millis(100)).await;

    // The waiting trade is closed, as of its expiry.
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-wait"))
            .await
            .unwrap()
            .state,
        TradeState::Closed
    );
    let closed = env.buyers.trade("ORD-wait").await.unwrap().unwrap();
    assert_eq!(closed.status, SimTradeStatus::TradeClosed);
    assert_eq!(closed.closed_at, Some(expire));
    assert_eq!(closed.time_expire, Some(expire));
    // The buyer can no longer pay it, and it stays closed.
    assert_eq!(
        rejection(env.buyers.buyer("ORD-wait").pays().send().await),
        (409, "conflict".to_owned())
    );
    assert_eq!(
        rejection(env.buyers.buyer("ORD-wait").scans(100).pays().send().await),
        (409, "conflict".to_owned())
    );
    // Re-scanning returns the closed trade, expiry unchanged.
    assert_eq!(
        env.buyers
            .buyer("ORD-wait")
            .scans(100)
            .expiring_at(Utc::now() + chrono::Duration::hours(1))
            .send()
            .await
            .unwrap(),
        closed
    );
    // Closing it answers as Alipay does for a closed trade.
    assert_eq!(
        env.client.close(TradeRef::new("ORD-wait")).await.unwrap(),
        not_closeable()
    );
    assert_eq!(env.buyers.trade("ORD-wait").await.unwrap(), Some(closed));

    // Paid before the expiry: still paid after it, and not closeable.
    match env
        .client
        .query(TradeRef::new("ORD-paid"))
        .await
        .unwrap()
        .state
    {
        TradeState::Paid { amount_minor, .. } => assert_eq!(amount_minor, 200),
        other => panic!("expected Paid, got {other:?}"),
    }
    assert_eq!(
        env.client.close(TradeRef::new("ORD-paid")).await.unwrap(),
        not_closeable()
    );
    assert_eq!(status(&env, "ORD-paid").await, SimTradeStatus::TradeSuccess);

    // An armed race cannot fire: the buyer cannot pay an expired trade.
    assert_eq!(
        env.client.close(TradeRef::new("ORD-race")).await.unwrap(),
        not_closeable()
    );
    let race = env.buyers.trade("ORD-race").await.unwrap().unwrap();
    assert_eq!(
        (race.status, race.paid_at, race.closed_at, race.pay_on_close),
        (SimTradeStatus::TradeClosed, None, Some(expire), false)
    );

    // Without time_expire nothing changes: still waiting, and our close closes it.
    assert_eq!(
        env.client
            .query(TradeRef::new("ORD-forever"))
            .await
            .unwrap()
            .state,
        TradeState::WaitingForPayment
    );
    assert_eq!(
        env.client
            .close(TradeRef::new("ORD-forever"))
            .await
            .unwrap(),
        CloseAnswer::Closed
    );
    let trades = env.sim.state().trades();
    assert_eq!(trades.len(), 4);
    assert!(
        trades
            .iter()
            .all(|t| t.status != SimTradeStatus::WaitBuyerPay),
        "{trades:?}"
    );
    env.sim.shutdown().await;
}
