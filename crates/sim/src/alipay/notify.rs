//! Alipay's asynchronous payment notification as the simulator sends it: a form POST,
//! signed over every parameter but `sign` and `sign_type`, acknowledged only by the bare
//! body `success`, resent at Alipay's intervals.

use std::time::Duration;

use crate::state::{SimTradeStatus, SimTradeView};
use order_closer_alipay::{format_china_time, notify_signing_content};
use order_closer_core::money::format_minor;
use order_closer_gateway::rsa::RsaPrivateKey;

/// Alipay's intervals between a notification's sends (8 sends within about 25 hours).
pub const RESEND_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(4 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(15 * 3600),
];

/// The simulated merchant's `seller_id` (Alipay's 2088... partner id).
pub const SIM_SELLER_ID: &str = "2088000000000156";

/// The form Alipay would POST about `trade` (`TRADE_SUCCESS` when paid, `TRADE_CLOSED`
/// when fully refunded or closed), sent at `sent_at`, signed with `key` (unsigned when
/// `None`); None for a trade still waiting for payment.
pub fn notification_form(
    key: Option<&RsaPrivateKey>,
    app_id: &str,
    trade: &SimTradeView,
    notify_id: &str,
    sent_at: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let status = match trade.status {
        SimTradeStatus::TradeSuccess => "TRADE_SUCCESS",
        SimTradeStatus::TradeClosed => "TRADE_CLOSED",
        SimTradeStatus::WaitBuyerPay => return None,
    };
    let amount = format_minor(trade.amount_minor);
    let mut params: Vec<(&str, String)> = vec![
        ("notify_time", format_china_time(sent_at)),
        ("notify_type", "trade_status_sync".into()),
        ("notify_id", notify_id.to_owned()),
        ("app_id", app_id.to_owned()),
        ("charset", "utf-8".into()),
        ("version", "1.0".into()),
        ("trade_no", trade.trade_no.clone()),
        ("out_trade_no", trade.out_trade_no.clone()),
        ("trade_status", status.into()),
        ("total_amount", amount.clone()),
        ("receipt_amount", amount.clone()),
        ("buyer_pay_amount", amount),
        ("gmt_create", format_china_time(trade.created_at)),
        ("seller_id", SIM_SELLER_ID.into()),
        ("buyer_id", "2088102177846880".into()),
    ];
    if let Some(paid) = trade.paid_at {
        params.push(("gmt_payment", format_china_time(paid)));
    }
    if let Some(closed) = trade.closed_at {
        params.push(("gmt_close", format_china_time(closed)));
    }
    let refunded: i64 = trade.refunds.iter().map(|r| r.amount_minor).sum();
    if refunded > 0 {
        params.push(("refund_fee", format_minor(refunded)));
    }
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        form.append_pair(k, v);
    }
    if let Some(key) = key {
        let sign = key
            .sign_base64(notify_signing_content(&params).as_bytes())
            .ok()?;
        form.append_pair("sign_type", "RSA2");
        form.append_pair("sign", &sign);
    }
    Some(form.finish())
}
