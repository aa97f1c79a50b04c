//! The alerting rules in `docker/prometheus/` are checked by Prometheus's own tool:
//! `promtool check rules` (they parse) and `promtool test rules` (they fire when they
//! must, and only then). `scripts/test.sh` installs promtool (Debian's `prometheus`
//! package) when it is missing.
// It needs the worker (`--features worker`).
#![cfg(feature = "worker")]

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/test.sh does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alerting_rules_parse() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_alerting_rules_fire_when_they_must_and_only_then() {
    let out = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_metric_an_alert_names_is_one_the_worker_exports() {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus/alerts.yml"),
    )
    .unwrap();
    // A fresh worker's metrics, after one failed gateway call (labelled families
    // appear with their first series; the alerting counters start at 0).
    let exported = order_closer::metrics::Metrics::default();
    exported.gateway_call(
        "alipay",
        order_closer::gateway::GatewayMethod::Query,
        std::time::Duration::from_millis(10),
        Some("20000"),
    );
    let text = exported.render();
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("order_closer_"))
    {
        assert!(
            text.contains(name),
            "alerts.yml names {name}, which the worker does not export"
        );
    }
}

/// The dashboard's queries: valid PromQL (checked by promtool as recording rules) over
/// metrics the worker exports.
#[test]
fn the_dashboard_queries_are_valid_and_name_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/grafana/order-closer.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let exported = order_closer::metrics::Metrics::default();
    exported.decision("closed");
    exported.gateway_call(
        "alipay",
        order_closer::gateway::GatewayMethod::Query,
        std::time::Duration::from_millis(10),
        Some("20000"),
    );
    exported.retry(1);
    exported.forwarded();
    let text = exported.render();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("order_closer_"))
        {
            assert!(
                text.contains(name),
                "the dashboard names {name}, which the worker does not export"
            );
        }
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("oc-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-rules.yml"), rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", "dashboard-rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose stack's Prometheus configuration is valid (with its rule file found where
/// the container mounts it).
#[test]
fn the_compose_prometheus_configuration_is_valid() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus");
    let config = std::fs::read_to_string(source.join("prometheus.yml")).unwrap();
    let local = config.replace(
        "/etc/prometheus/alerts.yml",
        &source.join("alerts.yml").display().to_string(),
    );
    assert_ne!(
        local, config,
        "the rule file is mounted at /etc/prometheus/alerts.yml"
    );
    let dir = std::env::temp_dir().join(format!("oc-prom-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), local).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
