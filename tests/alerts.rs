//! The alerting rules in `docker/prometheus/` are checked by Prometheus's own tool:
//! `promtool check rules` (they parse) and `promtool test rules` (they fire when they
//! must, and only then). `scripts/test.sh` installs promtool (Debian's `prometheus`
//! package) when it is missing.

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
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_metric_an_alert_names_is_one_the_worker_exports() {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus/alerts.yml"),
    )
    .unwrap();
    let exported = order_closer::metrics::Metrics::default();
    exported.redriven("closed");
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
