//! The WeChat Pay simulator against the widely used Python SDK `wechatpayv3` (PyPI), as a
//! shop testing its own WeChat code against `gateway-sim` would use it: the SDK queries,
//! closes and refunds through the simulator and verifies a notification the simulator
//! sent, refusing any answer or notification that is not WeChat-exact (its
//! `Wechatpay-Signature-Type` header, its signature); every time must be whole seconds.
//!
//! How it runs is `python_sdk.rs` (the SDK pinned to 2.0.4, in `target/tmp/wechatpayv3-venv`
//! unless a Python has it already); the script is `tests/python/wechatpayv3_check.py`.
// It drives the simulator: only with the `sim` feature.
#![cfg(feature = "tooling")]

use axum::http::StatusCode;

use crate::python_sdk::SdkCheck;
use order_closer::sim::SimConfig;
use order_closer::sim::wechat::WechatSim;

/// wechatpayv3, pinned.
const WECHAT_SDK: SdkCheck = SdkCheck {
    package: "wechatpayv3",
    version: "2.0.4",
    import: "wechatpayv3",
    venv: "wechatpayv3-venv",
    script: "wechatpayv3_check.py",
    channel: "wechat",
    // WeChat Pay takes any 2xx without a body as received.
    ack: (StatusCode::NO_CONTENT, ""),
    system_packages: "requests and cryptography",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_wechatpayv3_accepts_every_answer_and_notification_of_the_simulator() {
    WECHAT_SDK
        .run(SimConfig::one(WechatSim::generate().unwrap()))
        .await;
}
