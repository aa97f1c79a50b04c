//! The worker binary stopped with SIGTERM mid-run and started again: every order is
//! decided exactly once, with exactly one event. Kills processes: runs serially.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::{TestEnv, eventually};
use order_closer::order::OrderStatus;

use crate::BIN;
use crate::common::worker_process::{sigterm, spawn_worker};

#[tokio::test(flavor = "multi_thread")]
async fn serial_worker_stopped_with_sigterm_mid_run_and_restarted_decides_every_order_once() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-sigterm-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);

    let total = 150;
    let mut numbers = Vec::new();
    for i in 0..total {
        let no = env.no(&format!("term{i:03}"));
        let after = Duration::from_millis(1000 + (i as u64 * 40));
        env.create(&no, 100 + i as i64, after).await;
        match i % 3 {
            0 => {}
            1 => env
                .buyers
                .buyer(&no)
                .scans(100 + i as i64)
                .send()
                .await
                .map(|_| ())
                .unwrap(),
            _ => env
                .buyers
                .buyer(&no)
                .scans(100 + i as i64)
                .pays()
                .send()
                .await
                .map(|_| ())
                .unwrap(),
        }
        numbers.push(no);
    }

    let mut first = spawn_worker(BIN, &vars, &dir.join("worker-1.log"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sigterm(&first));
    let status = tokio::time::timeout(Duration::from_secs(40), first.wait())
        .await
        .expect("the worker stops within its grace period")
        .unwrap();
    assert!(status.success(), "exit {status:?}");
    let log = std::fs::read_to_string(dir.join("worker-1.log")).unwrap();
    assert!(log.contains("shutdown requested"), "{log}");

    let mut second = spawn_worker(BIN, &vars, &dir.join("worker-2.log"));
    for no in &numbers {
        env.settled(no, Duration::from_secs(60)).await;
    }
    // Let the relay announce the last decisions.
    let drained = eventually(Duration::from_secs(15), || async {
        (env.outbox_backlog().await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some());
    assert!(sigterm(&second));
    let status = tokio::time::timeout(Duration::from_secs(40), second.wait())
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(status.success());

    let mut ids = std::collections::BTreeSet::new();
    for (i, no) in numbers.iter().enumerate() {
        let order = env.order(no).await;
        let expected = if i % 3 == 2 {
            OrderStatus::Paid
        } else {
            OrderStatus::Closed
        };
        assert_eq!(order.status(), expected, "{no}");
        let final_decisions = env
            .decisions(order.id)
            .await
            .into_iter()
            .filter(|(o, _)| o == "closed" || o == "paid")
            .count();
        assert_eq!(final_decisions, 1, "{no}");
        ids.insert(order.id);
    }
    let events = env.drain_events().await;
    let event_ids: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), total, "one event per order");
    assert_eq!(event_ids.len(), total, "no duplicate events");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
