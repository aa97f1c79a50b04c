//! Close-queue messages far over the contract's 64 KiB: the worker
//! parks them cut to the limit, with their size, never whole, and neither the worker nor
//! `reconcile parked` holds them whole for longer than it takes to cut them. Memory is
//! read from the processes themselves (their peak resident set), since that is what an
//! oversized flood used to blow up: 291 MB for the worker, 520 to 749 MB for
//! `reconcile parked`, with bodies of 32 to 64 MiB.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::process::Stdio;
use std::time::Duration;

use crate::common::{TestEnv, eventually};
use chrono::Utc;
use order_closer::broker::publisher::{HEADER_LAST_ERROR, HEADER_REASON, ParkNote};
use order_closer::broker::topology::header_text;
use order_closer::message::MAX_BODY;

use crate::BIN;

/// The flood: bodies this large, this many.
const BIG: usize = 32 * 1024 * 1024;
const FLOOD: usize = 6;

/// The worker's prefetch in the flood: the broker hands it at most this many messages at
/// once, so at most this many bodies are ever held whole before they are cut, however the
/// machine schedules the worker. (A body arrives whole from the broker: a worker's bound
/// is its prefetch times the broker's `max_message_size`; see docs/operations.md.)
const PREFETCH: &str = "2";

/// A peak a process stays under when it holds at most two of the flood's bodies whole at
/// once, plus one growing while it is received (the baseline of a worker is about 30 MB):
/// the worker with a prefetch of 2, and `reconcile parked`, which takes one message at a
/// time. Before the fix each parked body was also copied whole to be parked, and
/// `reconcile parked` held every body it listed (6 × 32 MiB).
const PEAK_LIMIT_KB: u64 = 160 * 1024;

/// A process's peak resident set so far (`VmHWM`), in kB.
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

fn big_body(i: usize) -> Vec<u8> {
    let mut body = format!("{{\"v\":1,\"order_id\":{i},\"pad\":\"").into_bytes();
    body.resize(BIG, b'x');
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_parks_an_oversized_message_cut_with_its_size() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    env.publish_raw(&vec![b' '; MAX_BODY + 1]).await;
    let mut json = b"{\"v\":1,\"pad\":\"".to_vec();
    json.resize(3 * MAX_BODY, b'y');
    env.publish_raw(&json).await;
    let parked = env
        .wait_parked(2, Duration::from_secs(30))
        .await
        .expect("both parked");
    assert_eq!(parked.len(), 2);
    for (body, headers) in &parked {
        assert_eq!(body.len(), MAX_BODY, "parked cut to the contract's limit");
        assert_eq!(
            header_text(headers, HEADER_REASON).as_deref(),
            Some("oversized")
        );
        let error = header_text(headers, HEADER_LAST_ERROR).unwrap();
        assert!(
            error.contains(&format!("{} bytes", MAX_BODY + 1))
                || error.contains(&format!("{} bytes", 3 * MAX_BODY)),
            "{error}"
        );
    }
    // Exactly at the limit is not oversized: it is read (and, not being JSON, malformed).
    env.publish_raw(&vec![b'z'; MAX_BODY]).await;
    let parked = env
        .wait_parked(1, Duration::from_secs(30))
        .await
        .expect("parked");
    assert_eq!(
        header_text(&parked[0].1, HEADER_REASON).as_deref(),
        Some("malformed")
    );
    assert_eq!(parked[0].0.len(), MAX_BODY);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_huge_messages_leaves_the_worker_and_reconcile_parked_small() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-oversized-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vars = env.binary_env(&dir);
    vars.push(("ORDER_CLOSER_HTTP_LISTEN".into(), "off".into()));
    let mut worker_vars = vars.clone();
    worker_vars.push(("ORDER_CLOSER_PREFETCH".into(), PREFETCH.into()));
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let mut worker = tokio::process::Command::new(BIN)
        .arg("worker")
        .envs(worker_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker");
    let pid = worker.id().expect("running");

    for i in 0..FLOOD {
        env.publish_raw(&big_body(i)).await;
    }
    let queue = env.topology.parked_queue();
    let parked = eventually(Duration::from_secs(120), || async {
        (env.queue_len(&queue).await as usize >= FLOOD).then_some(())
    })
    .await;
    assert!(parked.is_some(), "the flood was parked");
    let worker_peak = peak_kb(pid);
    worker.kill().await.ok();

    // What an older version parked whole, as `reconcile parked` finds it.
    env.get_all(&queue).await;
    let note = ParkNote {
        reason: "malformed",
        last_error: "message body too large",
        attempts: 0,
        first_seen: Utc::now(),
    };
    for i in 0..FLOOD {
        env.publisher.park(&big_body(i), &note).await.unwrap();
    }
    let mut listing = std::process::Command::new(BIN);
    listing
        .args(["reconcile", "parked", "--format", "json"])
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (output, reconcile_peak) = tokio::task::spawn_blocking(move || run_measured(listing))
        .await
        .unwrap();
    println!("peak resident set: worker {worker_peak} kB, reconcile parked {reconcile_peak} kB");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["messages"], FLOOD);
    assert_eq!(report["lines"][0]["oversized_bytes"], BIG);
    // Listing consumes nothing: every message is back, re-parked cut to the contract's
    // limit (a listing parks a fresh copy of what it keeps), saying so.
    let back = eventually(Duration::from_secs(10), || async {
        (env.queue_len(&queue).await as usize == FLOOD).then_some(())
    })
    .await;
    assert!(back.is_some());
    for (body, headers) in env.get_all(&queue).await {
        assert_eq!(body.len(), MAX_BODY);
        let error = header_text(&headers, HEADER_LAST_ERROR).unwrap_or_default();
        assert!(error.contains("re-parked cut"), "{error}");
    }
    assert!(
        worker_peak < PEAK_LIMIT_KB,
        "the worker peaked at {worker_peak} kB"
    );
    assert!(
        reconcile_peak < PEAK_LIMIT_KB,
        "reconcile parked peaked at {reconcile_peak} kB"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// Runs `command` to its end and returns its output with its peak resident set in kB
/// (from `wait4`, which reports it for exactly that child).
// Reaped by wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(mut command: std::process::Command) -> (std::process::Output, u64) {
    use std::io::Read;
    let mut child = command.spawn().expect("start the command");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).ok();
        buf
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).ok();
    let err = err_reader.join().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in; the pid is our own child, not
    // yet reaped (std's Child is not waited on).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4");
    let output = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: out,
        stderr: err,
    };
    (output, usage.ru_maxrss as u64)
}
