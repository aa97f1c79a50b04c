//! Delivery limits and dead-letter cycles: no path drops a message, on classic and on
//! quorum queues (each test runs both side by side, whatever `TEST_QUEUE_TYPE` says).
//!
//! The queues get small delivery limits (3 returns on the close queue, and 3 on the
//! parking queue, standing for RabbitMQ 4.x's default of 20, which this machine's 3.10
//! does not have), so that the broker's own rules are seen at work here:
//! - a message returned past the close queue's limit (consumers that nack it, or lose
//!   their channel holding it) is parked by the broker with `x-death` saying
//!   `delivery_limit`, and `reconcile parked` shows that reason; on classic queues (no
//!   limit exists) it is still in the close queue;
//! - a message the parking queue hands back with a nack past its limit is dropped (it has
//!   no dead-letter target): the control that shows the limit is real. `reconcile parked`
//!   lists a parked message more times than that and it is still there;
//! - the message the broker parked is requeued by `reconcile parked` before its deadline:
//!   it goes through a tier into the close queue again (a cycle if it carried its old
//!   `x-death`, which 3.10 would drop) and is decided;
//! - a message that retries through the same tier until it is parked, and one forwarded
//!   early through the same tier twice;
//! - at the end every order is decided once and every queue is counted: 0 lost.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use order_closer::broker::publisher::ParkNote;
use order_closer::broker::topology::{DeliveryLimits, QueueType};
use order_closer::decide::Mode;
use order_closer::message::CloseMessage;
use order_closer::order::OrderStatus;
use order_closer::reconcile::parked::{self, ParkedAction, ParkedReport};
use order_closer::sim::FaultKind;

use crate::common::{TestEnv, eventually};

/// Returns the close queue allows (quorum) before the broker parks a message.
const CLOSE_LIMIT: u32 = 3;
/// Returns the parking queue allows (quorum) before the broker drops a message: 4.x's
/// default of 20, made small.
const PARKED_LIMIT: u32 = 3;
/// More listings than the parking queue's limit allows returns.
const LISTINGS: usize = 2 * PARKED_LIMIT as usize + 2;
const WITHIN: Duration = Duration::from_secs(60);

fn kind(queue_type: QueueType) -> &'static str {
    match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    }
}

/// How a misbehaving consumer hands a message back.
#[derive(Debug, Clone, Copy)]
enum HandBack {
    /// Cancels its consumer, then `basic.nack` with requeue.
    Nack,
    /// Closes the channel that holds it unacknowledged.
    LoseChannel,
}

/// Consumes the next message of `queue` on a channel of its own and hands it back;
/// false if none came within 30 s.
async fn take_and_hand_back(env: &TestEnv, queue: &str, how: HandBack) -> bool {
    let channel = env.connection.create_channel().await.unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "misbehaving".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        _ => return false,
    };
    if let HandBack::Nack = how {
        // Cancelled first, so the broker does not hand it straight back to this consumer.
        channel
            .basic_cancel("misbehaving".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        assert!(delivery.acker.nack(requeue).await.unwrap());
    }
    channel.close(200, "gone".into()).await.unwrap();
    true
}

/// Waits until `queue` holds `n` ready messages; false if it does not within 30 s.
async fn holds(env: &TestEnv, queue: &str, n: u32) -> bool {
    eventually(Duration::from_secs(30), || async {
        (env.queue_len(queue).await == n).then_some(())
    })
    .await
    .is_some()
}

/// One `reconcile parked` run.
async fn reconcile(env: &TestEnv, action: ParkedAction, mode: Mode) -> ParkedReport {
    let channel = env.connection.create_channel().await.unwrap();
    let decider = env.decider("reconcile-test");
    let report = parked::run(
        &channel,
        &env.publisher,
        &decider,
        action,
        mode,
        100,
        "test",
    )
    .await
    .unwrap();
    let _ = channel.close(200, "done".into()).await;
    report
}

/// Lists the parking queue `LISTINGS` times; every listing must see `n` messages.
async fn list_many_times(env: &TestEnv, n: usize) -> ParkedReport {
    let mut last = None;
    for i in 0..LISTINGS {
        let listed = reconcile(env, ParkedAction::List, Mode::Apply).await;
        assert_eq!(listed.messages, n, "listing {i}: {:?}", listed.lines);
        last = Some(listed);
    }
    assert!(holds(env, &env.topology.parked_queue(), n as u32).await);
    last.unwrap_or_else(|| unreachable!("LISTINGS > 0"))
}

/// What one queue type's run saw.
#[derive(Debug)]
struct Seen {
    queue_type: QueueType,
    /// Times the misbehaving consumers handed the message back.
    returns: u32,
    /// The reason `reconcile parked` showed for it (None: not parked).
    parked_as: Option<String>,
    /// Whether a nack-requeue past the parking queue's limit dropped the probe.
    nack_past_limit_drops: bool,
}

async fn run(queue_type: QueueType) -> Seen {
    let mut env = TestEnv::new(&[("ORDER_CLOSER_QUEUE_TYPE", kind(queue_type))]).await;
    env.with_delivery_limits(DeliveryLimits {
        close: CLOSE_LIMIT,
        parked: Some(PARKED_LIMIT),
    })
    .await;
    let parked_queue = env.topology.parked_queue();
    let close_queue = env.topology.close_queue();
    let quorum = queue_type == QueueType::Quorum;

    // The control: what a listing that handed messages back with a nack would do.
    let note = ParkNote {
        reason: "probe",
        last_error: "-",
        attempts: 0,
        first_seen: Utc::now(),
    };
    env.publisher.park(b"probe", &note).await.unwrap();
    let channel = env.connection.create_channel().await.unwrap();
    for _ in 0..=PARKED_LIMIT {
        let got = channel
            .basic_get(
                parked_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
            .expect("the probe");
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        got.delivery.acker.nack(requeue).await.unwrap();
    }
    // Quorum: dropped (no dead-letter target). Classic: no limit exists.
    let left = if quorum { 0 } else { 1 };
    assert!(
        holds(&env, &parked_queue, left).await,
        "{} probe(s) expected",
        left
    );
    let nack_past_limit_drops = env.get_all(&parked_queue).await.is_empty();

    // A: due in 8 s, so its message reaches the close queue from the 4 s tier early, where
    // misbehaving consumers hand it back (no worker runs yet).
    let a = env.no("limit");
    env.create(&a, 100, Duration::from_secs(8)).await;
    let mut returns = 0;
    let to_give = if quorum {
        CLOSE_LIMIT + 1
    } else {
        2 * CLOSE_LIMIT + 2
    };
    for i in 0..to_give {
        let how = if i % 2 == 0 {
            HandBack::Nack
        } else {
            HandBack::LoseChannel
        };
        assert!(
            take_and_hand_back(&env, &close_queue, how).await,
            "return {i}"
        );
        returns += 1;
    }
    let parked_as = if quorum {
        // Past the limit: parked by the broker, with its reason.
        assert!(
            holds(&env, &parked_queue, 1).await,
            "not parked by the broker"
        );
        assert!(holds(&env, &close_queue, 0).await);
        let listed = list_many_times(&env, 1).await;
        let line = &listed.lines[0];
        assert_eq!(line.out_trade_no.as_deref(), Some(a.as_str()));
        assert!(line.last_error.contains(&close_queue), "{line:?}");
        Some(line.reason.clone())
    } else {
        assert!(holds(&env, &close_queue, 1).await, "classic dropped it");
        assert!(holds(&env, &parked_queue, 0).await);
        None
    };

    env.start_worker(4, 8);
    if quorum {
        // Before its deadline: back through a tier into the close queue (fresh, or the
        // old x-death would make that a cycle), decided there.
        let requeued = reconcile(&env, ParkedAction::Requeue, Mode::Apply).await;
        assert_eq!(requeued.removed, 1, "{:?}", requeued.lines);
    }

    // B: every gateway answer fails, so it retries through the 1 s tier until it is
    // parked (`ORDER_CLOSER_RETRY_STEPS=1s,1s,1s` in tests).
    let b = env.no("retries");
    env.buyers
        .fail_next(&b, FaultKind::Http502, 1000)
        .await
        .unwrap();
    env.create(&b, 100, Duration::ZERO).await;
    // D: due in 3.25 s, and a copy dropped into the 500 ms tier: it arrives early and is
    // forwarded through the 2 s tier, then through the 500 ms tier again.
    let d = env.no("early");
    let order_d = env.create(&d, 100, Duration::from_millis(3250)).await;
    env.buyers.buyer(&d).scans(100).send().await.unwrap();
    let copy = CloseMessage::new(order_d.id, &d, order_d.deadline).encode();
    let smallest = env.topology.delay_queue(Duration::from_millis(500));
    env.publisher
        .publish("", &smallest, &copy, FieldTable::default())
        .await
        .unwrap();

    for no in [&a, &d] {
        assert_eq!(
            env.settled(no, WITHIN).await.status(),
            OrderStatus::Closed,
            "{no}"
        );
    }
    assert!(holds(&env, &parked_queue, 1).await, "B is not parked");
    let listed = list_many_times(&env, 1).await;
    assert_eq!(listed.lines[0].reason, "attempts_exhausted");
    assert_eq!(env.order(&b).await.status(), OrderStatus::New);

    // The operator's way out once the gateway answers again.
    env.buyers.clear_faults().await.unwrap();
    let requeued = reconcile(&env, ParkedAction::Requeue, Mode::Apply).await;
    assert_eq!(requeued.removed, 1, "{:?}", requeued.lines);

    // Count everything: each order decided once, and no message anywhere.
    for no in [&a, &b, &d] {
        let order = env.settled(no, WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{no}");
        let decided = env
            .decisions(order.id)
            .await
            .into_iter()
            .filter(|(outcome, _)| outcome == "closed")
            .count();
        assert_eq!(decided, 1, "{no}");
    }
    let mut queues = env.topology.queues();
    queues.retain(|q| *q != env.topology.events_audit_queue());
    for queue in &queues {
        assert!(holds(&env, queue, 0).await, "{queue} is not empty");
    }
    env.cleanup().await;
    Seen {
        queue_type,
        returns,
        parked_as,
        nack_past_limit_drops,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_message_is_dropped_past_a_delivery_limit_or_by_a_dead_letter_cycle() {
    let (classic, quorum) = tokio::join!(run(QueueType::Classic), run(QueueType::Quorum));
    println!("\nqueue type  returns  parked by the broker as  nack past the parked limit");
    for seen in [&classic, &quorum] {
        println!(
            "{:<10} {:>8}  {:<23} {}",
            kind(seen.queue_type),
            seen.returns,
            seen.parked_as.as_deref().unwrap_or("(not parked)"),
            if seen.nack_past_limit_drops {
                "drops it"
            } else {
                "keeps it"
            }
        );
    }
    assert_eq!(quorum.parked_as.as_deref(), Some("delivery_limit"));
    assert_eq!(classic.parked_as, None);
}

/// Why every publish of ours is fresh: a copy that carried the `x-death` of a message the
/// close queue dead-lettered (as a re-park or a requeue passing the broker's headers on
/// would) and went through a tier to the close queue again would be dropped by 3.x as a
/// dead-letter cycle; 4.x ignores a client's `x-death`. Printed, not asserted (it
/// depends on the broker's version); the fresh twin must always arrive.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_copy_carrying_the_brokers_x_death_would_meet() {
    let mut rows = Vec::new();
    for queue_type in [QueueType::Classic, QueueType::Quorum] {
        let env = TestEnv::new(&[("ORDER_CLOSER_QUEUE_TYPE", kind(queue_type))]).await;
        let close = env.topology.close_queue();
        let mut death = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), text("delivery_limit"));
        death.insert("queue".into(), text(&close));
        death.insert("exchange".into(), text(&env.topology.close_exchange()));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![text("due")])),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let tier = env.topology.delay_queue(Duration::from_millis(500));
        // Same tier, same TTL: the copy expires first.
        for (body, headers) in [
            (&b"copy"[..], headers),
            (&b"fresh"[..], FieldTable::default()),
        ] {
            env.publisher
                .publish("", &tier, body, headers)
                .await
                .unwrap();
        }
        assert!(holds(&env, &tier, 0).await);
        let fresh = eventually(Duration::from_secs(30), || async {
            (env.queue_len(&close).await >= 1).then_some(())
        })
        .await;
        assert!(fresh.is_some(), "the fresh message never arrived");
        let arrived: Vec<Vec<u8>> = env
            .get_all(&close)
            .await
            .into_iter()
            .map(|(body, _)| body)
            .collect();
        assert!(arrived.contains(&b"fresh".to_vec()));
        let copy = if arrived.contains(&b"copy".to_vec()) {
            "delivered"
        } else {
            "dropped as a cycle"
        };
        rows.push((kind(queue_type), copy));
        env.cleanup().await;
    }
    println!("\nqueue type  a copy carrying the close queue's x-death, through a tier");
    for (kind, copy) in rows {
        println!("{kind:<10}  {copy}");
    }
}

/// From RabbitMQ 4.3 a `basic.nack` with requeue no longer counts toward a quorum
/// queue's delivery limit, and a `basic.reject` still does: the code hands messages back
/// only with a nack. (A reject without requeue would also dead-letter with reason
/// `rejected`.)
#[test]
fn no_code_hands_a_message_back_with_reject() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        dirs.push(entry.unwrap().path().join("src"));
    }
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 50, "{} source files", files.len());
    let mut offenders = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        for needle in ["basic_reject", "BasicRejectOptions", ".reject("] {
            if text.contains(needle) {
                offenders.push(format!("{}: {needle}", path.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}
