//! Alipay's asynchronous payment notification (`trade_status_sync`): a form POST signed
//! with Alipay's key over every parameter except `sign` and `sign_type`. A form that does
//! not name our `app_id` (and `seller_id` when configured) is not ours, whatever its
//! signature ([`Claim::NotOurs`]). Verified here: the signature, a known trade status and
//! the notification's age; the amount is checked against the order by the notify
//! endpoint. Alipay wants the bare body `success` once handled; anything else makes it
//! send again (8 times within about 25 hours).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use chrono::{DateTime, Duration as Span, Utc};

use super::sign::verify_notify_params;
use order_closer_core::money::parse_minor;
use order_closer_core::time::parse_china_time;
use order_closer_gateway::TradeState;
use order_closer_gateway::notice::{self, Claim, Notice, NoticeError, NotifyVerifier, Reply, echo};
use order_closer_gateway::rsa::RsaPublicKey;

/// A notification older than this is not believed by itself (Alipay resends for about
/// 25 hours; an older one is a replay, so the gateway is asked instead).
pub const MAX_AGE: Span = Span::hours(30);

/// Verifies Alipay notifications for one merchant application.
pub struct AlipayNotify {
    app_id: String,
    seller_id: Option<String>,
    alipay_public_key: Arc<RsaPublicKey>,
    now: fn() -> DateTime<Utc>,
}

impl AlipayNotify {
    /// A verifier for `app_id` (and `seller_id`, when given) trusting `alipay_public_key`.
    pub fn new(
        app_id: impl Into<String>,
        seller_id: Option<String>,
        alipay_public_key: Arc<RsaPublicKey>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            seller_id,
            alipay_public_key,
            now: Utc::now,
        }
    }

    /// The same verifier with another clock (tests).
    pub fn with_clock(mut self, now: fn() -> DateTime<Utc>) -> Self {
        self.now = now;
        self
    }

    /// Whether the form names our `app_id` (and `seller_id`, when configured); checked
    /// before the signature, since a form for another merchant is refused whatever it is.
    fn ours(&self, form: &BTreeMap<String, String>) -> Result<(), String> {
        if field(form, "app_id") != Some(self.app_id.as_str()) {
            return Err(format!(
                "app_id {:?} is not ours",
                echo(field(form, "app_id").unwrap_or(""))
            ));
        }
        if let Some(seller) = &self.seller_id
            && field(form, "seller_id") != Some(seller.as_str())
        {
            return Err(format!(
                "seller_id {:?} is not ours",
                echo(field(form, "seller_id").unwrap_or(""))
            ));
        }
        Ok(())
    }

    /// Everything but the signature and the merchant: age, status.
    fn claim(&self, form: &BTreeMap<String, String>) -> Result<TradeState, String> {
        let field = |k: &str| field(form, k);
        let sent = field("notify_time")
            .and_then(parse_china_time)
            .ok_or("notify_time missing or unreadable")?;
        if (self.now)() - sent > MAX_AGE {
            return Err(format!(
                "sent at {sent}, more than {MAX_AGE} ago (a replay)"
            ));
        }
        match field("trade_status") {
            Some("TRADE_SUCCESS" | "TRADE_FINISHED") => {
                let trade_no = field("trade_no").ok_or("paid without trade_no")?;
                let amount = field("total_amount").ok_or("paid without total_amount")?;
                let amount_minor = parse_minor(amount)
                    .ok()
                    .filter(|a| *a > 0)
                    .ok_or_else(|| format!("bad total_amount {:?}", echo(amount)))?;
                Ok(TradeState::Paid {
                    trade_no: trade_no.to_owned(),
                    amount_minor,
                    paid_at: field("gmt_payment").and_then(parse_china_time),
                })
            }
            Some("WAIT_BUYER_PAY") => Ok(TradeState::WaitingForPayment),
            Some("TRADE_CLOSED") => Ok(TradeState::Closed),
            other => Err(format!(
                "trade_status {:?} is not one we act on",
                echo(other.unwrap_or(""))
            )),
        }
    }
}

/// A form field's value, if present and not empty.
fn field<'a>(form: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

impl NotifyVerifier for AlipayNotify {
    fn read(&self, headers: &HeaderMap, body: &[u8]) -> Result<Notice, NoticeError> {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(NoticeError::Malformed(format!(
                "Content-Type {:?} is not a form",
                echo(content_type)
            )));
        }
        let raw = std::str::from_utf8(body)
            .map_err(|_| NoticeError::Malformed("the form is not UTF-8".into()))?;
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut form = BTreeMap::new();
        for (k, v) in &pairs {
            if form.insert(k.clone(), v.clone()).is_some() {
                return Err(NoticeError::Malformed(format!(
                    "parameter {:?} appears twice",
                    echo(k)
                )));
            }
        }
        let out_trade_no = notice::order_number(form.get("out_trade_no").map(String::as_str))?;
        let claim = if let Err(reason) = self.ours(&form) {
            Claim::NotOurs { reason }
        } else if !verify_notify_params(&self.alipay_public_key, &pairs) {
            Claim::Unverified {
                reason: "the signature does not verify with Alipay's key".into(),
            }
        } else {
            match self.claim(&form) {
                Ok(state) => Claim::Verified { state },
                Err(reason) => Claim::Unverified { reason },
            }
        };
        Ok(Notice {
            out_trade_no,
            claim,
            raw: raw.to_owned(),
        })
    }

    fn acknowledge(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "success".into(),
        }
    }

    fn refuse(&self, status: u16) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: "fail".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::notify_signing_content;
    use order_closer_core::time::format_china_time;
    use order_closer_gateway::rsa::RsaPrivateKey;

    fn fixed_now() -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    /// A signed form of `fields` (plus `sign_type` and `sign`).
    fn signed(key: &RsaPrivateKey, fields: &[(&str, &str)]) -> String {
        let sign = key
            .sign_base64(notify_signing_content(fields).as_bytes())
            .unwrap();
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            ser.append_pair(k, v);
        }
        ser.append_pair("sign_type", "RSA2");
        ser.append_pair("sign", &sign);
        ser.finish()
    }

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        h
    }

    fn paid_fields(now: &str) -> Vec<(&'static str, String)> {
        vec![
            ("notify_time", now.to_owned()),
            ("notify_type", "trade_status_sync".into()),
            ("notify_id", "n1".into()),
            ("app_id", "2021".into()),
            ("charset", "utf-8".into()),
            ("version", "1.0".into()),
            ("trade_no", "2026T1".into()),
            ("out_trade_no", "ORD-1".into()),
            ("trade_status", "TRADE_SUCCESS".into()),
            ("total_amount", "12.34".into()),
            ("gmt_payment", now.to_owned()),
            ("seller_id", "2088".into()),
        ]
    }

    fn read(verifier: &AlipayNotify, key: &RsaPrivateKey, fields: &[(&str, String)]) -> Notice {
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        verifier
            .read(&form_headers(), signed(key, &refs).as_bytes())
            .unwrap()
    }

    #[test]
    fn verified_paid_and_every_way_to_be_unverified() {
        let alipay = RsaPrivateKey::generate().unwrap();
        let verifier = AlipayNotify::new(
            "2021",
            Some("2088".into()),
            Arc::new(alipay.public_key().clone()),
        )
        .with_clock(fixed_now);
        let now = format_china_time(fixed_now());
        let notice = read(&verifier, &alipay, &paid_fields(&now));
        assert_eq!(notice.out_trade_no, "ORD-1");
        assert_eq!(
            notice.claim,
            Claim::Verified {
                state: TradeState::Paid {
                    trade_no: "2026T1".into(),
                    amount_minor: 1234,
                    paid_at: Some(fixed_now()),
                }
            }
        );

        // The reason of a claim that is not Verified, and whether it is NotOurs.
        let refused = |fields: Vec<(&'static str, String)>, key: &RsaPrivateKey| match read(
            &verifier, key, &fields,
        )
        .claim
        {
            Claim::Unverified { reason } => (reason, false),
            Claim::NotOurs { reason } => (reason, true),
            other => panic!("{other:?}"),
        };
        let unverified = |fields, key, why: &str| {
            let (reason, not_ours) = refused(fields, key);
            assert!(reason.contains(why) && !not_ours, "{why}: {reason}");
        };
        let not_ours = |fields, key, why: &str| {
            let (reason, not_ours) = refused(fields, key);
            assert!(reason.contains(why) && not_ours, "{why}: {reason}");
        };
        let forger = RsaPrivateKey::generate().unwrap();
        unverified(paid_fields(&now), &forger, "signature");
        let with = |k: &'static str, v: &str| {
            let mut f = paid_fields(&now);
            f.retain(|(key, _)| *key != k);
            f.push((k, v.to_owned()));
            f
        };
        // Another merchant, signed by Alipay or by nobody: not ours, not even a hint.
        not_ours(with("app_id", "9999"), &alipay, "app_id");
        not_ours(with("seller_id", "1111"), &alipay, "seller_id");
        not_ours(with("app_id", "9999"), &forger, "app_id");
        let mut no_seller = paid_fields(&now);
        no_seller.retain(|(k, _)| *k != "seller_id");
        not_ours(no_seller, &alipay, "seller_id");
        unverified(with("trade_status", "TRADE_WEIRD"), &alipay, "trade_status");
        unverified(with("total_amount", "abc"), &alipay, "total_amount");
        let old = format_china_time(fixed_now() - Span::hours(31));
        unverified(with("notify_time", &old), &alipay, "replay");
        match read(&verifier, &alipay, &with("trade_status", "TRADE_CLOSED")).claim {
            Claim::Verified {
                state: TradeState::Closed,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_a_notification_is_refused() {
        let alipay = RsaPrivateKey::generate().unwrap();
        let verifier = AlipayNotify::new("2021", None, Arc::new(alipay.public_key().clone()));
        let json = {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
            h
        };
        assert!(matches!(
            verifier.read(&json, b"{}"),
            Err(NoticeError::Malformed(_))
        ));
        assert!(matches!(
            verifier.read(&form_headers(), b"a=1&a=2&out_trade_no=X"),
            Err(NoticeError::Malformed(_))
        ));
        assert_eq!(
            verifier.read(&form_headers(), b"trade_status=TRADE_SUCCESS"),
            Err(NoticeError::NoOrder)
        );
        assert!(matches!(
            verifier.read(&form_headers(), &[b'a', b'=', 0xff]),
            Err(NoticeError::Malformed(_))
        ));
        assert_eq!(verifier.acknowledge().body, "success");
        assert_ne!(verifier.refuse(503).body, "success");
    }
}
