//! The notify endpoint under hostile traffic: slow bodies from several hosts,
//! heads that cannot be a notification, forged forms naming many orders or another
//! merchant. Throughout, the gateways' genuine notifications are answered and applied;
//! nothing here asserts how fast, only what must hold (who is served beside whom, who is
//! cut off and how, what is never asked).
// It runs the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use order_closer::http_server::Limits;
use order_closer::notify::hints::{HintBudget, Refusal};
use order_closer::notify::{self, HINT_CONCURRENCY, HINT_SPACING, NotifyOutcome};
use order_closer::order::OrderStatus;
use order_closer::sim::Forge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::notices::{claimed_paid, outcomes, queries, refused_hints};
use crate::common::slow_clients::SlowClients;
use crate::common::{NotifyEndpoint, TestEnv, eventually};

/// A notification's head declaring 60,000 bytes of form, and its first bytes: the body
/// then comes at a byte a second, never whole.
const SLOW_BODY: &[u8] = b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\nout_trade_no=";

/// The endpoint's socket address.
fn addr(endpoint: &NotifyEndpoint) -> SocketAddr {
    let url = reqwest::Url::parse(&endpoint.base).unwrap();
    url.socket_addrs(|| None).unwrap()[0]
}

/// At each gateway, an order paid now: its genuine notification is answered (within a
/// generous bound: failing, not timing) and applies the payment.
async fn genuine_payments_land(env: &TestEnv, endpoint: &NotifyEndpoint, name: &str) {
    for channel in env.sim().channels() {
        let no = env.no(&format!("{name}-{channel}"));
        env.create_at(channel, &no, 1234, Duration::from_secs(600))
            .await;
        let paid = env
            .buyers
            .at(channel)
            .buyer(&no)
            .scans(1234)
            .pays()
            .send()
            .await
            .unwrap();
        let genuine = env.notice(&paid, Forge::genuine());
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            env.deliver(endpoint, channel, &genuine),
        )
        .await
        .expect("a genuine notification is answered during the attack");
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(
            env.order(&no).await.status(),
            OrderStatus::Paid,
            "{channel}"
        );
    }
}

/// 1,030 connections declaring a body and sending a byte every two seconds held
/// the endpoint's 1,024 slots, and a genuine notification waited 70.9 s. Here three
/// hosts open more slow-body connections than the endpoint serves at once (its slots
/// scaled down to 64, a host's bound to 16, every deadline an hour so that nothing is
/// cut by time): each host keeps 16, the rest are closed at once, and the gateways are
/// served beside the 48 held connections, which are still open afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_from_three_hosts_leave_room_for_the_gateways() {
    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let hour = Duration::from_secs(3600);
    let limits = Limits {
        max_connections: 64,
        max_connections_per_source: 16,
        header_read_timeout: hour,
        body_read_timeout: hour,
        connection_lifetime: hour,
        ..Limits::PUBLIC
    };
    let stop = CancellationToken::new();
    let notifier = Arc::new(env.notifier_over(env.pool.clone()));
    let bound = notify::http::serve_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&notifier),
        limits,
        stop.clone(),
    )
    .await
    .unwrap();
    let endpoint = NotifyEndpoint {
        notifier,
        base: format!("http://{bound}/notify"),
        url: format!("http://{bound}/notify/alipay"),
    };
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let per_host = 24;
    assert!(hosts.len() * per_host > limits.max_connections);
    let attack = SlowClients::start(bound, &hosts, per_host, SLOW_BODY, true).await;
    let refused = hosts.len() * (per_host - limits.max_connections_per_source);
    let cut = eventually(Duration::from_secs(60), || async {
        (attack.closed() == refused).then_some(())
    })
    .await;
    assert!(
        cut.is_some(),
        "{} connections closed, {refused} expected (those over each host's bound)",
        attack.closed()
    );

    genuine_payments_land(&env, &endpoint, "beside").await;
    assert_eq!(
        attack.closed(),
        refused,
        "the attack's held connections are still open: the gateways were served beside them"
    );
    assert!(attack.answers().is_empty(), "{:?}", attack.answers());
    stop.cancel();
    env.cleanup().await;
}

/// A slow body was held for the connection's whole life (30 s, then 35 s of
/// grace). With the endpoint's real limits, every slow body is answered 408 at the body
/// deadline and its connection closed, while genuine notifications are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_are_cut_at_the_body_deadline() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let hosts = ["127.0.0.2", "127.0.0.3"];
    let attack = SlowClients::start(addr(&endpoint), &hosts, 100, SLOW_BODY, true).await;

    genuine_payments_land(&env, &endpoint, "during").await;
    let freed = eventually(Duration::from_secs(90), || async {
        (attack.closed() == attack.total).then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "{} of {} slow connections freed",
        attack.closed(),
        attack.total
    );
    let answers = attack.answers();
    assert_eq!(answers.len(), attack.total, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 408")),
        "each cut by the body deadline: {answers:?}"
    );
    let text = endpoint.notifier.metrics().render();
    assert_eq!(
        outcomes(&text, NotifyOutcome::Rejected),
        attack.total as u64,
        "{text}"
    );
    env.cleanup().await;
}

/// Sends `request` on a connection of its own and returns everything the endpoint sent
/// back until it closed the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // A reset after the answer is an ending like any other: the bytes read are kept.
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the endpoint answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request's head: `target`, `content_type`, `extra` header lines, and a close.
fn head(target: &str, content_type: &str, extra: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\n{extra}\r\n"
    )
}

/// `Expect: 100-continue` with `Content-Length: 10485760` got `100 Continue`,
/// and an absolute-form target or `Transfer-Encoding: gzip, chunked` (the compressed bytes
/// passed on as the body) were accepted. Each is refused from its head, nothing read or
/// asked; a genuine notification sent chunked is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_that_cannot_be_a_notification_are_refused_before_the_body() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let addr = addr(&endpoint);
    let channels = env.sim().channels();
    for &channel in &channels {
        let no = env.no(&format!("heads-{channel}"));
        env.create_at(channel, &no, 800, Duration::from_secs(600))
            .await;
        let paid = env
            .buyers
            .at(channel)
            .buyer(&no)
            .scans(800)
            .pays()
            .send()
            .await
            .unwrap();
        let genuine = env.notice(&paid, Forge::genuine());
        let path = format!("/notify/{channel}");
        let signed: String = genuine
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();

        let declared = head(
            &path,
            genuine.content_type,
            "Content-Length: 10485760\r\nExpect: 100-continue\r\n",
        );
        let answer = exchange(addr, declared.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{channel}: {answer}");
        assert!(!answer.contains("100 Continue"), "{channel}: {answer}");

        let absolute = head(
            &format!("http://127.0.0.1{path}"),
            genuine.content_type,
            &format!("{signed}Content-Length: {}\r\n", genuine.body.len()),
        ) + &genuine.body;
        let answer = exchange(addr, absolute.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{channel}: {answer}");

        let chunked = |coding: &str| {
            head(
                &path,
                genuine.content_type,
                &format!("{signed}Transfer-Encoding: {coding}\r\n"),
            ) + &format!("{:x}\r\n{}\r\n0\r\n\r\n", genuine.body.len(), genuine.body)
        };
        let answer = exchange(addr, chunked("gzip, chunked").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{channel}: {answer}");
        assert_eq!(env.order(&no).await.status(), OrderStatus::New, "{channel}");

        let answer = exchange(addr, chunked("chunked").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 2"), "{channel}: {answer}");
        assert_eq!(
            env.order(&no).await.status(),
            OrderStatus::Paid,
            "{channel}"
        );
    }
    assert_eq!(queries(&env).await, 0, "nothing asked");
    let n = channels.len() as u64;
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 3 * n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), n, "{text}");
    env.cleanup().await;
}

/// Unsigned forms naming 2,000 real order numbers made 4,034 gateway queries in
/// 20 s, the whole gateway rate limit the deadline queries share. A notification naming
/// another merchant now costs nothing, and forged ones naming our merchant become at most
/// `rate` queries a second (plus one second's burst), however many orders they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_notifications_are_bounded_in_all_and_another_merchant_costs_nothing() {
    let env = TestEnv::new(&[]).await;
    let rate = NonZeroU32::new(2).unwrap();
    let notifier = env
        .notifier_over(env.pool.clone())
        .with_hint_budget(HintBudget::new(HINT_SPACING, HINT_CONCURRENCY, rate));
    let endpoint = env.serve_notify(notifier, 0.001).await;
    env.quiet_notifications();
    let channels = env.sim().channels();
    let unsigned = Forge {
        unsigned: true,
        ..Forge::genuine()
    };
    let mut forged = Vec::new();
    let mut foreign = Vec::new();
    for &channel in &channels {
        for i in 0..8 {
            let no = env.no(&format!("forged{i}-{channel}"));
            env.create_at(channel, &no, 500, Duration::from_secs(600))
                .await;
            let waiting = env
                .buyers
                .at(channel)
                .buyer(&no)
                .scans(500)
                .send()
                .await
                .unwrap();
            let claim = claimed_paid(waiting, Utc::now());
            if i == 0 {
                for other in [
                    Forge {
                        other_merchant: true,
                        ..Forge::genuine()
                    },
                    Forge {
                        other_merchant: true,
                        ..unsigned
                    },
                ] {
                    foreign.push((channel, env.notice(&claim, other)));
                }
            }
            forged.push((channel, no, env.notice(&claim, unsigned)));
        }
    }

    let before = queries(&env).await;
    for (channel, notice) in &foreign {
        let sent = env.deliver(&endpoint, channel, notice).await;
        assert_eq!((sent.status, sent.acknowledged), (400, false), "{channel}");
    }
    assert_eq!(
        queries(&env).await,
        before,
        "another merchant: nothing asked"
    );

    let started = Instant::now();
    for (channel, _, notice) in &forged {
        let sent = env.deliver(&endpoint, channel, notice).await;
        assert!(
            sent.acknowledged || sent.status == 503,
            "{channel}: asked, or refused for the rate: {sent:?}"
        );
    }
    let elapsed = started.elapsed();
    let asked = queries(&env).await - before;
    // A token bucket of `rate` a second holding `rate`: at most this many in `elapsed`.
    let most = u64::from(rate.get()) + (elapsed.as_secs_f64() * f64::from(rate.get())) as u64;
    assert!(
        (1..=most).contains(&asked),
        "{asked} queries for {} forged notifications in {elapsed:?}, at most {most}",
        forged.len()
    );
    let text = endpoint.notifier.metrics().render();
    assert_eq!(
        refused_hints(&text, Refusal::RateLimited),
        forged.len() as u64 - asked,
        "{text}"
    );
    assert_eq!(
        refused_hints(&text, Refusal::NotOurMerchant),
        foreign.len() as u64,
        "{text}"
    );
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), asked, "{text}");
    for (channel, no, _) in &forged {
        assert_eq!(env.order(no).await.status(), OrderStatus::New, "{channel}");
    }
    env.cleanup().await;
}
