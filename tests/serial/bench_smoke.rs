//! `order-closer bench --quick` against the local services: it completes, writes the JSON
//! with every section and a chart, and every throughput is positive. No timing
//! assertions: performance is reported by the benchmark, never asserted in tests.
//!
//! In the serial binary, so that `scripts/test.sh` runs it alone, where it does not
//! compete with the parallel tests for the CPU.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::process::Command;

use crate::BIN;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/order_closer_test".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number: {at}", path.join(".")))
}

#[test]
fn serial_bench_quick_writes_results_and_chart() {
    let dir = std::env::temp_dir().join(format!("oc-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("r.json");
    let run = Command::new(BIN)
        // One scale-out batch, with two worker processes (the full run has 1, 2, 3).
        .args(["bench", "--quick", "--scale-out", "2", "--out"])
        .arg(&out)
        .env("DATABASE_URL", database_url())
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .env_remove("ORDER_CLOSER_QUEUE_PREFIX")
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("decisions/s"), "{stdout}");
    assert!(stdout.contains("payment to PAID"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("results file")).expect("JSON");
    for key in [
        "run",
        "machine",
        "parameters",
        "ceilings",
        "create",
        "pipeline",
        "pipeline_two_trades",
        "classic",
        "notifications",
        "derived",
        "targets",
    ] {
        assert!(!report[key].is_null(), "missing {key}: {report}");
    }
    assert_eq!(report["parameters"]["orders"], 2000);
    assert_eq!(report["parameters"]["classic_orders"], 50);
    for path in [
        &["pipeline", "decisions_per_second"][..],
        &["pipeline", "worker_cpu_seconds"],
        &["pipeline", "worker_peak_rss_mib"],
        &["pipeline_two_trades", "decisions_per_second"],
        &["derived", "two_trades_over_one_trade"],
        &["classic", "decisions_per_second"],
        &["notifications", "notifications_per_second"],
        &["notifications", "payment_to_paid_ms", "p99"],
        &["ceilings", "rsa_signs_per_second_one_thread"],
        &["ceilings", "rsa_signs_per_second_all_cores"],
        &["ceilings", "broker_publish_confirm_per_second_sequential"],
        &["ceilings", "broker_publish_confirm_per_second_pipelined"],
        &["ceilings", "broker_consume_ack_per_second"],
        &["ceilings", "db_decision_tx_per_second_sequential"],
        &["ceilings", "db_decision_tx_per_second_concurrent"],
        &["create", "create_order_per_second"],
        &["create", "raw_insert_per_second"],
        &["derived", "throughput_vs_crypto_ceiling"],
        &["derived", "pipeline_over_classic"],
        &["derived", "worker_cpu_over_signing"],
    ] {
        let v = number(&report, path);
        assert!(v > 0.0, "{} = {v}", path.join("."));
    }
    assert_eq!(report["parameters"]["scale_out"], serde_json::json!([2]));
    let scale_out = &report["scale_out"][0];
    assert_eq!(scale_out["processes"], 2, "{scale_out}");
    assert_eq!(scale_out["pipeline"]["worker_processes"], 2, "{scale_out}");
    assert_eq!(
        scale_out["pipeline"]["decided"], scale_out["pipeline"]["orders"],
        "{scale_out}"
    );
    assert!(
        number(scale_out, &["pipeline", "decisions_per_second"]) > 0.0,
        "{scale_out}"
    );
    assert_eq!(report["pipeline"]["trades_per_order"], 1);
    assert_eq!(report["pipeline_two_trades"]["trades_per_order"], 2);
    assert_eq!(report["pipeline_two_trades"]["orders"], 2000);
    for batch in ["pipeline", "pipeline_two_trades", "classic"] {
        let b = &report[batch];
        assert_eq!(b["decided"], b["orders"], "{batch}: {b}");
        assert_eq!(b["mismatches"], 0, "{batch}: {b}");
        assert_eq!(b["trade_mismatches"], 0, "{batch}: {b}");
        for p in ["p50", "p95", "p99", "max"] {
            assert!(b["lateness_ms"][p].is_number(), "{batch}.lateness_ms.{p}");
        }
    }
    let n = &report["notifications"];
    assert_eq!(n["committed"], n["payments"], "every payment PAID: {n}");
    let chart = std::fs::read(dir.join("chart.png")).expect("chart");
    assert!(chart.starts_with(b"\x89PNG"), "chart is not a PNG");
    let _ = std::fs::remove_dir_all(&dir);
}
