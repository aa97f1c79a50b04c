//! The Alipay simulator against Alipay's official Python SDK `alipay-sdk-python` (PyPI),
//! as a shop testing its own Alipay code against `gateway-sim` would use it: the SDK's
//! `DefaultAlipayClient` queries, closes and refunds through the simulator's
//! `/gateway.do`, verifying every answer's RSA2 signature itself (over the exact
//! `..._response` JSON text), and the script verifies a notification the simulator sent
//! with the SDK's `verify_with_rsa`, the way Alipay's docs say (sorted parameters without
//! `sign` and `sign_type`). The script also shows the checks are not vacuous: a tampered
//! answer and an answer checked against another Alipay public key are refused.
//!
//! How it runs: `python3` (or `$TEST_PYTHON`) with `alipay` (the SDK) importable is used
//! as it is; otherwise the SDK is installed once, with pip, into a virtual environment
//! under the target directory (`target/tmp/alipay-sdk-venv`, pinned to [`SDK_VERSION`];
//! this needs PyPI once). The test is skipped, saying why, only when there is no Python 3
//! or it has no `venv`/`pip` to install with. The script is
//! `tests/python/alipay_sdk_check.py`.
// It drives the simulator: only with the `sim` feature.
#![cfg(feature = "tooling")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::mpsc;

use order_closer::sim::alipay::AlipaySim;
use order_closer::sim::{self, BuyerClient, NotifyPlan, SimConfig};

/// The SDK release the virtual environment gets.
const SDK_VERSION: &str = "3.7.1411";

/// How long the simulator's notification may take to arrive (it is sent at once).
const NOTIFICATION_WAIT: Duration = Duration::from_secs(30);

/// A Python with the SDK (`alipay-sdk-python`, module `alipay`) importable, or why there is none (then the test skips).
fn python_with_sdk() -> Result<PathBuf, String> {
    let system = PathBuf::from(std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into()));
    let runs = |python: &Path, args: &[&str]| {
        Command::new(python)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !runs(&system, &["--version"]) {
        return Err(format!("no Python 3 ({} does not run)", system.display()));
    }
    if runs(
        &system,
        &["-c", "import alipay.aop.api.DefaultAlipayClient"],
    ) {
        return Ok(system);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alipay-sdk-venv");
    let python = venv.join("bin").join("python");
    if runs(
        &python,
        &["-c", "import alipay.aop.api.DefaultAlipayClient"],
    ) {
        return Ok(python);
    }
    if !runs(&system, &["-m", "venv", "--help"]) || !runs(&system, &["-m", "pip", "--version"]) {
        return Err(format!(
            "{} has no venv or pip module to install alipay-sdk-python with",
            system.display()
        ));
    }
    // System packages stay visible: `rsa` and `pycryptodome` need not be fetched
    // when they are installed already.
    let made = Command::new(&system)
        .args(["-m", "venv", "--clear", "--system-site-packages"])
        .arg(&venv)
        .output()
        .expect("run python -m venv");
    if !made.status.success() {
        return Err(format!(
            "python -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("alipay-sdk-python=={SDK_VERSION}"))
        .output()
        .expect("run pip");
    assert!(
        installed.status.success(),
        "pip could not install alipay-sdk-python=={SDK_VERSION} into {} (PyPI is needed once; \
         or install it for {} yourself):\n{}",
        venv.display(),
        system.display(),
        String::from_utf8_lossy(&installed.stderr)
    );
    Ok(python)
}

/// A notification as it arrived: its headers (lower-case names, as a web framework
/// hands them over) and its body.
type Arrival = (BTreeMap<String, String>, String);

/// Acknowledged as Alipay wants it: the bare body `success`.
async fn receive(
    State(tx): State<mpsc::UnboundedSender<Arrival>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let _ = tx.send((headers, String::from_utf8_lossy(&body).into_owned()));
    (StatusCode::OK, "success")
}

/// A notify endpoint on a free port: its base URL and what arrives there.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Arrival>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/notify/alipay", post(receive))
        .with_state(tx);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipays_python_sdk_accepts_every_answer_and_notification_of_the_simulator() {
    let python = match python_with_sdk() {
        Ok(python) => python,
        Err(why) => {
            eprintln!(
                "SKIPPED: the alipay-sdk-python check needs Python 3 with venv and pip: {why}"
            );
            return;
        }
    };
    let (notify_url, mut arrivals) = receiver().await;
    let mut config = SimConfig::one(AlipaySim::generate().unwrap());
    config.notify = NotifyPlan::to(notify_url, 1.0);
    let sim = sim::start(config).await.unwrap();
    let buyers = BuyerClient::new(sim.base_url()).unwrap().at("alipay");
    let paid = format!("SDK-PAID-{}", std::process::id());
    let waiting = format!("SDK-WAIT-{}", std::process::id());
    buyers.buyer(&paid).scans(990).pays().send().await.unwrap();
    buyers.buyer(&waiting).scans(500).send().await.unwrap();
    let (headers, body) = tokio::time::timeout(NOTIFICATION_WAIT, arrivals.recv())
        .await
        .expect("the simulator's notification arrives")
        .expect("the receiver runs");

    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("alipay-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notification = dir.join("notification.json");
    std::fs::write(
        &notification,
        serde_json::json!({"headers": headers, "body": body}).to_string(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/alipay_sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .envs(sim.client_vars())
        .env("SDK_PAID_ORDER", &paid)
        .env("SDK_WAITING_ORDER", &waiting)
        .env("SDK_NOTIFICATION", &notification)
        .output()
        .await
        .expect("run the SDK script");
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "alipay-sdk-python refused the simulator:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
    println!("{stdout}");
}
