//! WeChat Pay's payment notification as the simulator sends it: a JSON envelope
//! (`TRANSACTION.SUCCESS`, or `REFUND.SUCCESS` once fully refunded) whose `resource` is
//! the transaction (or the refund) encrypted with the merchant's APIv3 key, POSTed with
//! the `Wechatpay-*` signature headers (`Wechatpay-Signature-Type` included), its times in
//! whole seconds; any 2xx reply acknowledges it, anything else has it sent again at
//! WeChat Pay's intervals.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use serde_json::{Value, json};

use order_closer_wechat::aead::{AeadError, ApiV3Key};
use order_closer_wechat::format_time;

/// WeChat Pay's intervals between a notification's sends (15 resends over about 24 h).
pub const RESEND_SCHEDULE: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(3 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
];

/// A 12-character nonce for the resource.
fn resource_nonce() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The envelope of a notification about `resource` (the plaintext JSON, encrypted here).
pub fn envelope(
    key: &ApiV3Key,
    notify_id: &str,
    event_type: &str,
    original_type: &str,
    resource: &Value,
    sent_at: DateTime<Utc>,
) -> Result<String, AeadError> {
    let nonce = resource_nonce();
    let ciphertext = key.encrypt(&resource.to_string(), &nonce, original_type)?;
    let summary = if event_type.starts_with("REFUND") {
        "退款成功"
    } else {
        "支付成功"
    };
    Ok(json!({
        "id": format!("EV-{notify_id}"),
        "create_time": format_time(sent_at),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": original_type,
            "nonce": nonce,
        },
    })
    .to_string())
}
