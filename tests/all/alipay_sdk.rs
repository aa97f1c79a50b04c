//! The Alipay simulator against Alipay's official Python SDK `alipay-sdk-python` (PyPI),
//! as a shop testing its own Alipay code against `gateway-sim` would use it: the SDK's
//! `DefaultAlipayClient` queries, closes and refunds through the simulator's
//! `/gateway.do`, verifying every answer's RSA2 signature itself (over the exact
//! `..._response` JSON text), and the script verifies a notification the simulator sent
//! with the SDK's `verify_with_rsa`, the way Alipay's docs say (sorted parameters without
//! `sign` and `sign_type`). The script also shows the checks are not vacuous: a tampered
//! answer and an answer checked against another Alipay public key are refused.
//!
//! How it runs is `python_sdk.rs` (the SDK pinned to 3.7.1411, in `target/tmp/alipay-sdk-venv`
//! unless a Python has it already); the script is `tests/python/alipay_sdk_check.py`.
// It drives the simulator: only with the `sim` feature.
#![cfg(feature = "tooling")]

use axum::http::StatusCode;

use crate::python_sdk::SdkCheck;
use order_closer::sim::SimConfig;
use order_closer::sim::alipay::AlipaySim;

/// alipay-sdk-python, pinned.
const ALIPAY_SDK: SdkCheck = SdkCheck {
    package: "alipay-sdk-python",
    version: "3.7.1411",
    import: "alipay.aop.api.DefaultAlipayClient",
    venv: "alipay-sdk-venv",
    script: "alipay_sdk_check.py",
    channel: "alipay",
    // Acknowledged as Alipay wants it: the bare body `success`.
    ack: (StatusCode::OK, "success"),
    system_packages: "rsa and pycryptodome",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipays_python_sdk_accepts_every_answer_and_notification_of_the_simulator() {
    ALIPAY_SDK
        .run(SimConfig::one(AlipaySim::generate().unwrap()))
        .await;
}
