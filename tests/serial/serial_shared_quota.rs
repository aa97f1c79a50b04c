//! One gateway quota per merchant account, shared by every worker process: three
//! `order-closer worker` processes with `ALIPAY_RATE_LIMIT` at [`QUOTA`] a second decide
//! thousands of due orders, and the simulator counts the requests it gets a second. The
//! three together stay within the quota (per-process limits would send three times it);
//! then one worker is killed with SIGKILL and the other two take up its share: the rate
//! stays near the quota. Kills processes: runs serially.
//!
//! Tolerance, above: the quota lets through at most `QUOTA * window + burst` requests in a
//! window (the burst is a tenth of the rate, 4). The simulator counts a request when it
//! arrives, a little after its slot began; the slots are mapped to each process's clock
//! from the moment the booking's answer arrives, never before the database's; and a slot
//! may go out late on a busy machine and bunch with the next ones. Over windows of 20 s
//! and more, those shift at most a few requests across each edge: 10% over the quota is
//! far more than they can add, and far less than two processes' worth of a per-process
//! limit (+100%).
//!
//! Tolerance, below: the workers always have due orders waiting, so only the machine can
//! keep them under the quota. A killed worker's booked slots (at most its waiting
//! callers', a second or two of the quota) pass unused, so the count after the kill
//! starts [`AFTER_KILL_SKIP`] later. 30% under the quota leaves room for a 2-core
//! machine running the broker, the database, the simulator and the three workers; a
//! dead worker's share not taken up would leave a third under it, or less.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::BIN;
use crate::common::worker_process::{sigterm, spawn_worker};
use crate::common::{TestEnv, eventually};
use order_closer::closer::{Due, NewOrder};
use order_closer::db::{self, schema::decisions};

/// The merchant's quota at Alipay, requests a second (`ALIPAY_RATE_LIMIT`).
const QUOTA: u32 = 40;
/// Due orders: each is one query (its trade was never scanned), more than the run uses.
const ORDERS: usize = 4_000;
/// How long the three workers run before one is killed, and the two after.
const RUN: Duration = Duration::from_secs(30);
/// Seconds of warm-up before the first window (connections, the first burst).
const WARM_UP_SECS: i64 = 5;
/// Seconds after the kill that are not counted: the dead worker's booked slots pass.
const AFTER_KILL_SKIP: i64 = 6;
/// Above the quota, at most.
const OVER: f64 = 1.10;
/// Below the quota, at least.
const UNDER: f64 = 0.70;

/// SIGTERM, and up to 30 s for the worker to stop.
async fn stop(child: &mut tokio::process::Child) {
    if sigterm(child) {
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
}

/// The workers that decided an order so far (their audit rows' actors).
async fn deciders(env: &TestEnv) -> BTreeSet<String> {
    let mut conn = db::conn(&env.pool).await.unwrap();
    decisions::table
        .select(decisions::actor)
        .distinct()
        .load::<String>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.starts_with("worker:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_three_workers_share_one_gateway_quota_and_take_up_a_killed_ones_share() {
    let quota = QUOTA.to_string();
    let env = TestEnv::new(&[
        ("ALIPAY_RATE_LIMIT", quota.as_str()),
        ("ORDER_CLOSER_GATEWAY_PROCESSES", "3"),
        ("ORDER_CLOSER_HTTP_LISTEN", "off"),
    ])
    .await;
    let dir = std::env::temp_dir().join(format!("oc-shared-quota-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);

    let new: Vec<NewOrder> = (0..ORDERS)
        .map(|i| {
            NewOrder::new(
                "alipay",
                env.no(&format!("q{i:05}")),
                100 + i as i64,
                Due::After(Duration::from_secs(1)),
            )
        })
        .collect();
    for chunk in new.chunks(1_000) {
        env.closer
            .create_orders(chunk)
            .await
            .expect("create orders");
    }

    let mut workers: Vec<tokio::process::Child> = (0..3)
        .map(|n| spawn_worker(BIN, &vars, &dir.join(format!("worker-{n}.log"))))
        .collect();
    // The run starts with the first request the simulator sees.
    let first = eventually(Duration::from_secs(60), || async {
        let stats = env.buyers.stats().await.ok()?;
        stats
            .requests_per_second
            .get("alipay")?
            .keys()
            .next()
            .copied()
    })
    .await
    .expect("the workers send requests");

    tokio::time::sleep(RUN).await;
    let busy = deciders(&env).await;
    let killed_at = Utc::now().timestamp();
    workers[0].kill().await.unwrap(); // SIGKILL
    tokio::time::sleep(RUN).await;
    let stats = env.buyers.stats().await.unwrap();
    let ended_at = Utc::now().timestamp();
    for worker in &mut workers[1..] {
        stop(worker).await;
    }

    let before = (first + WARM_UP_SECS, killed_at);
    let after = (killed_at + AFTER_KILL_SKIP, ended_at);
    let (n_before, rate_before) = stats.rate("alipay", before.0, before.1);
    let (n_after, rate_after) = stats.rate("alipay", after.0, after.1);
    let q = f64::from(QUOTA);
    eprintln!(
        "quota {QUOTA}/s; three workers: {n_before} requests in {} s, {rate_before:.1}/s; \
         after the kill, two: {n_after} in {} s, {rate_after:.1}/s; deciders before the \
         kill: {}",
        before.1 - before.0,
        after.1 - after.0,
        busy.len()
    );
    assert!(
        before.1 - before.0 >= 20,
        "a window of 20 s at least: {before:?}"
    );
    assert!(
        after.1 - after.0 >= 20,
        "a window of 20 s at least: {after:?}"
    );
    assert_eq!(busy.len(), 3, "every worker decided orders: {busy:?}");
    assert!(
        rate_before <= q * OVER,
        "three workers sent {rate_before:.1}/s, over the quota of {QUOTA}/s"
    );
    assert!(
        rate_before >= q * UNDER,
        "three workers sent only {rate_before:.1}/s of {QUOTA}/s"
    );
    assert!(
        rate_after <= q * OVER,
        "two workers sent {rate_after:.1}/s, over the quota of {QUOTA}/s"
    );
    assert!(
        rate_after >= q * UNDER,
        "two workers sent only {rate_after:.1}/s of {QUOTA}/s: the killed one's share \
         was not taken up"
    );
    env.cleanup().await;
}
