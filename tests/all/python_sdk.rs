//! Running a gateway's official (or widely used) Python SDK against the simulator, as a
//! shop testing its own code against `gateway-sim` would: the harness both SDK checks
//! share (`alipay_sdk.rs`, `wechat_sdk.rs`). The simulator serves one gateway and sends
//! its payment notification to a receiver here; a buyer pays one order and leaves another
//! waiting; then the gateway's script (`tests/python/<script>`) queries, closes, refunds
//! and verifies the notification with the SDK, and must print "every check passed".
//!
//! The Python: `python3` (or `$TEST_PYTHON`) with the SDK importable is used as it is;
//! otherwise the SDK is installed once, with pip, into a virtual environment under the
//! target directory (`target/tmp/<venv>`, pinned to the check's version; this needs PyPI
//! once). A check is skipped, saying why, only when there is no Python 3 or it has no
//! `venv`/`pip` to install with.

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

use order_closer::sim::{self, BuyerClient, NotifyPlan, SimConfig};

/// How long the simulator's notification may take to arrive (it is sent at once).
const NOTIFICATION_WAIT: Duration = Duration::from_secs(30);

/// One gateway's SDK check.
pub struct SdkCheck {
    /// The package on PyPI, as pip names it.
    pub package: &'static str,
    /// The release the virtual environment gets.
    pub version: &'static str,
    /// What `python -c` imports to see that the SDK is there.
    pub import: &'static str,
    /// The virtual environment's directory under the target directory.
    pub venv: &'static str,
    /// The script under `tests/python/`.
    pub script: &'static str,
    /// The gateway's channel (the notification's path, the buyers' gateway).
    pub channel: &'static str,
    /// How the receiver acknowledges a notification, as the gateway wants it.
    pub ack: (StatusCode, &'static str),
    /// Packages the environment takes from the system when they are installed already
    /// (said in the messages).
    pub system_packages: &'static str,
}

impl SdkCheck {
    /// A Python with the SDK importable, or why there is none (then the check skips).
    fn python(&self) -> Result<PathBuf, String> {
        let system =
            PathBuf::from(std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into()));
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
        let import = format!("import {}", self.import);
        if runs(&system, &["-c", &import]) {
            return Ok(system);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(self.venv);
        let python = venv.join("bin").join("python");
        if runs(&python, &["-c", &import]) {
            return Ok(python);
        }
        if !runs(&system, &["-m", "venv", "--help"]) || !runs(&system, &["-m", "pip", "--version"])
        {
            return Err(format!(
                "{} has no venv or pip module to install {} with",
                system.display(),
                self.package
            ));
        }
        // System packages stay visible: the SDK's dependencies (`system_packages`) need
        // not be fetched when they are installed already.
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
            .arg(format!("{}=={}", self.package, self.version))
            .output()
            .expect("run pip");
        assert!(
            installed.status.success(),
            "pip could not install {}=={} into {} (PyPI is needed once; or install it for {} \
             yourself, with {}):\n{}",
            self.package,
            self.version,
            venv.display(),
            system.display(),
            self.system_packages,
            String::from_utf8_lossy(&installed.stderr)
        );
        Ok(python)
    }

    /// Runs the check against a simulator started with `config` (its one gateway being
    /// this check's); fails unless the SDK accepts everything the simulator said.
    pub async fn run(&self, mut config: SimConfig) {
        let python = match self.python() {
            Ok(python) => python,
            Err(why) => {
                eprintln!(
                    "SKIPPED: the {} check needs Python 3 with venv and pip: {why}",
                    self.package
                );
                return;
            }
        };
        let (notify_url, mut arrivals) = receiver(self.channel, self.ack).await;
        config.notify = NotifyPlan::to(notify_url, 1.0);
        let sim = sim::start(config).await.unwrap();
        let buyers = BuyerClient::new(sim.base_url()).unwrap().at(self.channel);
        let paid = format!("SDK-PAID-{}", std::process::id());
        let waiting = format!("SDK-WAIT-{}", std::process::id());
        buyers.buyer(&paid).scans(990).pays().send().await.unwrap();
        buyers.buyer(&waiting).scans(500).send().await.unwrap();
        let (headers, body) = tokio::time::timeout(NOTIFICATION_WAIT, arrivals.recv())
            .await
            .expect("the simulator's notification arrives")
            .expect("the receiver runs");

        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-sdk-{}",
            self.channel,
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let notification = dir.join("notification.json");
        std::fs::write(
            &notification,
            serde_json::json!({"headers": headers, "body": body}).to_string(),
        )
        .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/python")
            .join(self.script);
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
            "{} refused the simulator:\n{stdout}\n{stderr}",
            self.package
        );
        assert!(stdout.contains("every check passed"), "{stdout}");
        println!("{stdout}");
    }
}

/// A notification as it arrived: its headers (lower-case names, as a web framework
/// hands them over) and its body.
type Arrival = (BTreeMap<String, String>, String);

/// What the receiver keeps: where arrivals go, and its acknowledgement.
type Receiving = (mpsc::UnboundedSender<Arrival>, (StatusCode, &'static str));

async fn receive(
    State((tx, ack)): State<Receiving>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let _ = tx.send((headers, String::from_utf8_lossy(&body).into_owned()));
    ack
}

/// A notify endpoint for `channel` on a free port, acknowledging with `ack`: its base URL
/// and what arrives there.
async fn receiver(
    channel: &str,
    ack: (StatusCode, &'static str),
) -> (String, mpsc::UnboundedReceiver<Arrival>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let app = Router::new()
        .route(&format!("/notify/{channel}"), post(receive))
        .with_state((tx, ack));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}
