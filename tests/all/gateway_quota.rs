//! The merchant account's quota shared through Postgres: the booking statement answers
//! exactly as the local arithmetic does (a scripted clock, priorities and slow-downs
//! included); several quotas on one account, each with its own pool as separate
//! processes have, stay together within the account's rate and each gets a share; a
//! throttling answer reported by one slows every other down; a process that cannot reach
//! the database keeps sending at its share of the rate, and shares again once it can.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{TestEnv, eventually};
use order_closer::db::{self, quota};
use order_closer::gateway::quota::{
    Admission, BOOK_TIMEOUT, Bucket, Micros, Priority, Quota, RETRY_SHARED, Rate, SLOW_DOWN_US,
    SharedQuota,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate::new(
        NonZeroU32::new(per_second).unwrap(),
        NonZeroU32::new(burst).unwrap(),
    )
}

fn ask(account: &str, at: Micros, want: u32, r: Rate, bulk: bool) -> quota::Ask<'_> {
    quota::Ask {
        account,
        at: Some(at),
        want,
        interval_us: r.interval_us(),
        burst: r.burst.get(),
        bulk,
    }
}

/// The statement and the arithmetic, driven by one script of bookings (deadline and bulk,
/// one to six slots, callers arriving together or apart) and throttling answers, give the
/// same answers and leave the same clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_booking_statement_does_the_local_arithmetic() {
    let env = TestEnv::new(&[]).await;
    let mut conn = db::conn(&env.pool).await.unwrap();
    let account = "sim:equivalence";
    let r = rate(50, 5);
    assert_eq!(
        quota::book(&mut conn, ask(account, 0, 1, r, false))
            .await
            .unwrap(),
        None
    );
    quota::ensure(&mut conn, account).await.unwrap();
    quota::ensure(&mut conn, account).await.unwrap();

    let mut bucket = Bucket::default();
    let mut rng = StdRng::seed_from_u64(22);
    let mut at: Micros = 1_767_225_600_000_000; // 2026-01-01, a clock like the server's
    let (mut refused, mut slowed) = (0, 0);
    for step in 0..600 {
        at += [0, 0, 3_000, 17_000, 40_000, 2_000_000][rng.random_range(0..6)];
        if rng.random_range(0..40) == 0 {
            let sql = quota::slow_down(&mut conn, account, Some(at), SLOW_DOWN_US)
                .await
                .unwrap()
                .unwrap();
            let started = bucket.slow_down(at);
            assert_eq!(
                (sql.started, sql.until),
                (started, bucket.slow_until),
                "step {step}"
            );
            slowed += 1;
            continue;
        }
        let want = rng.random_range(1..=6);
        let bulk = rng.random_range(0..3) == 0;
        let admission = if bulk {
            Admission::Headroom
        } else {
            Admission::Queue
        };
        let sql = quota::book(&mut conn, ask(account, at, want, r, bulk))
            .await
            .unwrap()
            .unwrap();
        let local = bucket.book(at, want, r, admission);
        let what = format!("step {step}: {want} at {at}, bulk {bulk}");
        assert_eq!(sql.now, at, "{what}");
        assert_eq!(
            (sql.slots, sql.first, sql.spacing),
            (i64::from(local.slots), local.first, local.spacing),
            "{what}"
        );
        if bulk {
            assert_eq!(sql.retry_at, local.retry_at, "{what}");
        }
        refused += usize::from(local.slots == 0);
    }
    // The script did reach every case.
    assert!(
        refused > 10 && slowed > 5,
        "refused {refused}, slowed {slowed}"
    );
    let row: (i64, i64) = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use order_closer::db::schema::gateway_quotas::dsl;
        dsl::gateway_quotas
            .filter(dsl::account.eq(account))
            .select((dsl::tat_us, dsl::slow_until_us))
            .get_result(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(row, (bucket.tat, bucket.slow_until));
    drop(conn);
    env.cleanup().await;
}

/// Three quotas on one account, each with a pool of its own (three processes), each
/// with twenty callers asking as fast as they can: together they stay within the
/// account's rate, and each gets a share.
///
/// The bound: in any window the clock lets through at most `rate * window + burst`
/// slots; a slot is mapped to each process's clock from the moment the booking's answer
/// arrives (later than the server's, never earlier), so the processes' clocks add at
/// most a round trip each; 5% over covers that and the counting at the window's edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_stay_within_the_account_rate_together() {
    let env = TestEnv::new(&[]).await;
    let url = env.database_url.clone();
    let r = rate(100, 10);
    let window = Duration::from_secs(3);
    let quotas: Vec<Arc<SharedQuota>> = (0..3)
        .map(|_| {
            Arc::new(SharedQuota::new(
                db::pool(&url, 2).unwrap(),
                "sim:shared".into(),
                r,
                Priority::Deadline,
                NonZeroU32::new(3).unwrap(),
            ))
        })
        .collect();
    // Each process's first booking makes (or finds) the row, then the count starts.
    for q in &quotas {
        q.acquire().await;
    }
    let start = Instant::now();
    let end = start + window;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (p, q) in quotas.iter().enumerate() {
        for _ in 0..20 {
            let q = Arc::clone(q);
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut served = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    q.acquire().await;
                    if Instant::now() < end {
                        served += 1;
                    }
                }
                (p, served)
            }));
        }
    }
    tokio::time::sleep_until(end).await;
    stop.store(true, Ordering::Relaxed);
    let mut per_process = [0usize; 3];
    for task in tasks {
        let (p, served) = task.await.unwrap();
        per_process[p] += served;
    }
    let total: usize = per_process.iter().sum();
    let most = (100.0 * window.as_secs_f64() * 1.05) as usize + 10;
    eprintln!("served in {window:?}: {per_process:?}, {total} in all (at most {most})");
    assert!(total <= most, "{total} > {most}: {per_process:?}");
    // Not starved: most of the rate is used, and every process has a part of it.
    assert!(total >= 150, "{total}: {per_process:?}");
    for served in per_process {
        assert!(served >= total / 10, "{per_process:?}");
    }
    env.cleanup().await;
}

/// A throttling answer reported by one process halves the rate for every process of the
/// account for the slow-down window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_seen_by_one_process_slows_every_process() {
    let env = TestEnv::new(&[]).await;
    let r = rate(200, 20);
    let one = SharedQuota::new(
        db::pool(&env.database_url, 1).unwrap(),
        "sim:throttled".into(),
        r,
        Priority::Deadline,
        NonZeroU32::MIN,
    );
    one.acquire().await;
    one.throttled().await;
    // Another process books: at half the rate.
    let mut conn = db::conn(&env.pool).await.unwrap();
    let other = quota::Ask {
        at: None,
        ..ask("sim:throttled", 0, 1, r, false)
    };
    let booked = quota::book(&mut conn, other).await.unwrap().unwrap();
    assert_eq!(booked.spacing, 2 * r.interval_us());
    // For the window: it ends about SLOW_DOWN from now, by the server's clock.
    let slowed = quota::slow_down(&mut conn, "sim:throttled", Some(booked.now), 0)
        .await
        .unwrap()
        .unwrap();
    assert!(!slowed.started, "the slow-down was running");
    let left = slowed.until - booked.now;
    assert!(
        left > SLOW_DOWN_US - 10_000_000 && left <= SLOW_DOWN_US,
        "{left}"
    );
    // An unknown account has no row to slow down.
    assert_eq!(
        quota::slow_down(&mut conn, "sim:nobody", None, SLOW_DOWN_US)
            .await
            .unwrap(),
        None
    );
    drop(conn);
    env.cleanup().await;
}

/// The clock of an account, read from its row.
async fn tat(env: &TestEnv, account: &str) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use order_closer::db::schema::gateway_quotas::dsl;
    let mut conn = db::conn(&env.pool).await.unwrap();
    dsl::gateway_quotas
        .filter(dsl::account.eq(account))
        .select(dsl::tat_us)
        .get_result(&mut conn)
        .await
        .unwrap()
}

/// Callers asking as fast as they can for `window`: how many were served in it.
async fn served_within(quota: &Arc<SharedQuota>, callers: usize, window: Duration) -> usize {
    let end = Instant::now() + window;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let q = Arc::clone(quota);
            tokio::spawn(async move {
                let mut served = 0;
                loop {
                    q.acquire().await;
                    if Instant::now() >= end {
                        return served;
                    }
                    served += 1;
                }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

/// The database out of reach: the process neither stops its gateway traffic nor sends
/// beyond its share (the rate divided by the processes said to share it), and books on
/// the database again once it answers (within the retry interval and a booking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_a_process_keeps_to_its_share_and_shares_again_after() {
    let env = TestEnv::new(&[]).await;
    let (proxy, via_proxy) = env.database_through_proxy(true).await;
    let account = "sim:outage";
    let r = rate(100, 10);
    let quota = Arc::new(SharedQuota::new(
        db::pool(&via_proxy, 1).unwrap(),
        account.into(),
        r,
        Priority::Deadline,
        NonZeroU32::new(4).unwrap(),
    ));
    quota.acquire().await;
    let booked = tat(&env, account).await;

    proxy.switch_off();
    let window = Duration::from_secs(3);
    let served = served_within(&quota, 10, window).await;
    // A quarter of the rate (25/s) and of the burst (2).
    let most = (25.0 * window.as_secs_f64() * 1.05) as usize + 2;
    eprintln!("served without the database in {window:?}: {served} (at most {most})");
    assert!(served >= 25, "gateway traffic stopped: {served}");
    assert!(
        served <= most,
        "{served} > {most}: beyond the process's share"
    );
    assert_eq!(tat(&env, account).await, booked, "nothing booked meanwhile");

    proxy.switch_on();
    let shared = eventually(RETRY_SHARED + BOOK_TIMEOUT * 3, || {
        let quota = Arc::clone(&quota);
        let env = &env;
        async move {
            quota.acquire().await;
            (tat(env, account).await > booked).then_some(())
        }
    })
    .await;
    assert!(
        shared.is_some(),
        "the quota is booked on the database again"
    );
    env.cleanup().await;
}
