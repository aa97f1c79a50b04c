//! The buyer, as one builder: which trade, at which gateway, scanned for how much and
//! until when, paid now, just before the shop's close or not at all, its payment
//! notification sent or lost.
//!
//! ```text
//! buyers.buyer("ORD-1").scans(1234).expiring_at(t).pays().send().await?; // over HTTP
//! state.buyer("ORD-1").at("wechat").scans(990).pays_on_close().send()?;  // in process
//! ```
//!
//! The same builder acts in process on a [`SimState`] ([`SimState::buyer`]) and over the
//! buyer API through a [`BuyerClient`](crate::BuyerClient) (`BuyerClient::buyer`), whose
//! request bodies are its `Terms`: the API's handlers rebuild the builder from them and
//! both end in `apply`, so the two ways cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::{BuyerOpError, SimState, SimTradeView};

/// When the buyer pays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pays {
    /// Not (yet): the buyer only scans.
    #[default]
    Never,
    /// Now (a trade that is not waiting for payment refuses it: paying twice, or after the
    /// close, is a conflict).
    Now,
    /// Just before the next close request for the trade lands: the close is refused and
    /// the trade is paid (the race a shop must survive).
    OnClose,
}

impl Pays {
    /// The buyer API's endpoint for it (`/sim/trades/{no}/<endpoint>`).
    pub(crate) fn endpoint(self) -> &'static str {
        match self {
            Pays::Never => "scan",
            Pays::Now => "pay",
            Pays::OnClose => "pay-on-close",
        }
    }
}

/// What the buyer's action says besides its trade and when it pays: the body of the
/// buyer API's `scan`, `pay` and `pay-on-close` requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Terms {
    /// The amount: the trade is scanned first (created if it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) amount_minor: Option<i64>,
    /// The gateway a trade created here is at (None: the first one served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<String>,
    /// The trade's expiry (`time_expire`), for a trade created here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time_expire: Option<DateTime<Utc>>,
    /// The QR code's validity: no first scan at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) qr_code_expire: Option<DateTime<Utc>>,
    /// The trade's payment notifications are lost: only a query learns of the payment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) lose_notification: bool,
}

impl Terms {
    /// An expiry applies to the trade being created: it needs an amount.
    pub(crate) fn check(&self) -> Result<(), BuyerOpError> {
        if (self.time_expire.is_some() || self.qr_code_expire.is_some())
            && self.amount_minor.is_none()
        {
            return Err(BuyerOpError::BadRequest(
                "time_expire needs amount_minor (it applies to the trade being created)".into(),
            ));
        }
        Ok(())
    }
}

/// One buyer's action on one trade, built step by step and sent to `T`: a
/// [`&SimState`](SimState) (in process) or a [`&BuyerClient`](crate::BuyerClient) (the
/// buyer API).
#[derive(Debug, Clone)]
#[must_use = "a buyer does nothing until sent"]
pub struct Buyer<T> {
    pub(crate) target: T,
    pub(crate) out_trade_no: String,
    pub(crate) terms: Terms,
    pub(crate) pays: Pays,
}

impl<T> Buyer<T> {
    /// The buyer of `out_trade_no`, who does nothing yet, acting on `target`.
    pub(crate) fn new(target: T, out_trade_no: &str) -> Self {
        Self {
            target,
            out_trade_no: out_trade_no.to_owned(),
            terms: Terms::default(),
            pays: Pays::Never,
        }
    }

    /// Scans the QR code for `amount_minor`: the trade comes into existence, waiting for
    /// payment (idempotent for the same amount; another amount is a conflict).
    pub fn scans(mut self, amount_minor: i64) -> Self {
        self.terms.amount_minor = Some(amount_minor);
        self
    }

    /// The trade scanned here is at `channel`'s gateway (default: the first one served).
    pub fn at(mut self, channel: &str) -> Self {
        self.terms.channel = Some(channel.to_owned());
        self
    }

    /// The shop created the trade with an expiry (`time_expire`): at or after it the scan
    /// is refused (`trade_expired`) and no trade exists; before it, the trade waits for
    /// payment and closes if still unpaid at `time_expire`. Scanning an existing trade
    /// again returns it as it is, its expiry unchanged.
    pub fn expiring_at(mut self, time_expire: DateTime<Utc>) -> Self {
        self.terms.time_expire = Some(time_expire);
        self
    }

    /// The QR code is valid until `qr_code_expire`: at or after it a first scan is refused
    /// (`trade_expired`) and no trade exists; a trade scanned in time stays payable.
    pub fn qr_valid_until(mut self, qr_code_expire: DateTime<Utc>) -> Self {
        self.terms.qr_code_expire = Some(qr_code_expire);
        self
    }

    /// The buyer pays now.
    pub fn pays(self) -> Self {
        self.paying(Pays::Now)
    }

    /// The buyer pays just before the next close request for the trade lands.
    pub fn pays_on_close(self) -> Self {
        self.paying(Pays::OnClose)
    }

    /// When the buyer pays.
    pub fn paying(mut self, pays: Pays) -> Self {
        self.pays = pays;
        self
    }

    /// The trade's payment notifications are lost: only the deadline's query can learn of
    /// the payment.
    pub fn loses_notification(mut self) -> Self {
        self.terms.lose_notification = true;
        self
    }
}

impl Buyer<&SimState> {
    /// Acts on the simulator's trades at once; the trade as it is afterwards.
    pub fn send(self) -> Result<SimTradeView, BuyerOpError> {
        apply(self.target, &self.out_trade_no, &self.terms, self.pays)
    }
}

impl SimState {
    /// The buyer of `out_trade_no`, acting on these trades in process.
    pub fn buyer(&self, out_trade_no: &str) -> Buyer<&SimState> {
        Buyer::new(self, out_trade_no)
    }
}

/// Acts: scans when the terms give an amount, loses the notifications if asked, then pays
/// as `pays` says. The trade as the last step left it.
///
/// A buyer who neither scans, nor pays, nor loses a notification has nothing to do: a
/// bad request.
pub(crate) fn apply(
    state: &SimState,
    out_trade_no: &str,
    terms: &Terms,
    pays: Pays,
) -> Result<SimTradeView, BuyerOpError> {
    terms.check()?;
    let mut view = match terms.amount_minor {
        Some(amount) => Some(state.scan(
            terms.channel.as_deref(),
            out_trade_no,
            amount,
            terms.time_expire,
            terms.qr_code_expire,
        )?),
        None => None,
    };
    if terms.lose_notification {
        view = Some(state.lose_notifications(out_trade_no)?);
    }
    match pays {
        Pays::Now => state.pay(out_trade_no),
        Pays::OnClose => state.arm_pay_on_close(out_trade_no),
        Pays::Never => view.ok_or_else(|| {
            BuyerOpError::BadRequest("the buyer does nothing: give amount_minor to scan".into())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SimTradeStatus;

    #[test]
    fn terms_travel_as_the_buyer_api_bodies() {
        let empty = serde_json::to_string(&Terms::default()).unwrap();
        assert_eq!(empty, "{}");
        let t = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let terms = Terms {
            amount_minor: Some(5),
            channel: Some("wechat".into()),
            time_expire: Some(t),
            qr_code_expire: None,
            lose_notification: true,
        };
        let text = serde_json::to_string(&terms).unwrap();
        assert_eq!(
            text,
            r#"{"amount_minor":5,"channel":"wechat","time_expire":"2026-12-07T10:00:00Z","lose_notification":true}"#
        );
        assert_eq!(serde_json::from_str::<Terms>(&text).unwrap(), terms);
        // What the buyer API has always been sent.
        let old: Terms = serde_json::from_str(r#"{"lose_notification":true}"#).unwrap();
        assert!(old.lose_notification && old.amount_minor.is_none());
        assert_eq!(
            [Pays::Never, Pays::Now, Pays::OnClose].map(Pays::endpoint),
            ["scan", "pay", "pay-on-close"]
        );
    }

    #[test]
    fn one_builder_for_every_buyer() {
        let s = SimState::new();
        // Scan only, then pay, then pay twice.
        let waiting = s.buyer("A").scans(100).send().unwrap();
        assert_eq!(waiting.status, SimTradeStatus::WaitBuyerPay);
        let paid = s.buyer("A").pays().send().unwrap();
        assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
        assert!(matches!(
            s.buyer("A").pays().send(),
            Err(BuyerOpError::Conflict(_))
        ));
        // Scan and pay at once, losing the notification.
        let lost = s
            .buyer("B")
            .scans(200)
            .pays()
            .loses_notification()
            .send()
            .unwrap();
        assert!(lost.notification_lost && lost.paid_at.is_some());
        // The race armed on a new trade.
        let armed = s.buyer("C").scans(300).pays_on_close().send().unwrap();
        assert!(armed.pay_on_close && armed.paid_at.is_none());
        // Paying what was never scanned, or doing nothing.
        assert_eq!(
            s.buyer("D").pays().send(),
            Err(BuyerOpError::NotFound("D".into()))
        );
        assert!(matches!(
            s.buyer("D").send(),
            Err(BuyerOpError::BadRequest(_))
        ));
        // An expiry applies to a trade being created.
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(matches!(
            s.buyer("A").expiring_at(later).pays().send(),
            Err(BuyerOpError::BadRequest(_))
        ));
        let expiring = s.buyer("E").scans(1).expiring_at(later).send().unwrap();
        assert_eq!(expiring.time_expire, Some(later));
    }
}
