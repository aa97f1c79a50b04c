//! A real Prometheus scrapes a running worker with the shipped alerting rules loaded:
//! every metric the rules name arrives under that name, and every rule evaluates
//! cleanly, so a renamed metric cannot silently break an alert.
//! `scripts/test.sh` installs Debian's `prometheus` package when it is missing.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{TestEnv, eventually};
use order_closer::health;
use order_closer::sim::FaultKind;
use tokio_util::sync::CancellationToken;

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus/alerts.yml")
}

/// The metric names the rules use.
fn rule_metrics() -> BTreeSet<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("order_closer_"))
        .map(str::to_owned)
        .collect()
}

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_metric_the_alerts_use() {
    let mut env = TestEnv::new(&[]).await;
    let observed = env.start_worker(4, 8);
    let stop = CancellationToken::new();
    let routes = health::router(
        observed.metrics.clone(),
        observed.readiness.clone(),
        env.pool.clone(),
    );
    let target = health::serve("127.0.0.1:0".parse().unwrap(), routes, stop.clone())
        .await
        .unwrap();
    // One failed gateway answer, then a decision: the labelled families get series.
    let no = env.no("scraped");
    env.buyers
        .fail_next(&no, FaultKind::Busy20000, 1)
        .await
        .unwrap();
    env.create(&no, 100, Duration::from_millis(500)).await;
    env.settled(&no, Duration::from_secs(30)).await;

    let dir = std::env::temp_dir().join(format!("oc-prometheus-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: order-closer\n    static_configs:\n      - targets: ['{target}']\n",
            rules_file().display()
        ),
    )
    .unwrap();
    let port = spare_port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start prometheus ({e}): install Debian's prometheus package (scripts/test.sh does)")
        });
    let api = reqwest::Client::new();
    let get = |path: &'static str| {
        let api = api.clone();
        async move {
            let response = api
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .ok()?;
            serde_json::from_slice::<serde_json::Value>(&response.bytes().await.ok()?).ok()
        }
    };

    let wanted = rule_metrics();
    let arrived = eventually(Duration::from_secs(60), || async {
        let names = get("/api/v1/label/__name__/values").await?;
        let names: BTreeSet<String> = names["data"]
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        wanted.is_subset(&names).then_some(names)
    })
    .await;
    let missing: Vec<_> = match &arrived {
        Some(_) => Vec::new(),
        None => wanted.iter().collect(),
    };
    assert!(
        arrived.is_some(),
        "Prometheus never saw these metrics the alerts use: {missing:?}"
    );

    // Every rule evaluates without error against the scraped data.
    let healthy = eventually(Duration::from_secs(60), || async {
        let rules = get("/api/v1/rules").await?;
        let rules: Vec<(String, String)> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        (rules.len() >= 7 && rules.iter().all(|(_, h)| h == "ok")).then_some(rules)
    })
    .await;
    assert!(healthy.is_some(), "the rules did not all evaluate cleanly");

    stop.cancel();
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
