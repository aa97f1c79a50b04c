//! What a refund sends, decided from the gateway's signed answer about the trade at the
//! moment it is sent.
//!
//! - The amount is what the gateway says was paid for the trade: never what a bill row or
//!   a notification claimed, nor what an earlier version stored (a bill row saying 5.00
//!   for a 1.00 order once became a refund of 5.00 that the gateway refused for ever).
//! - The refund number is derived from the gateway's trade number ([`refund_number`]):
//!   WeChat Pay scopes `out_refund_no` per merchant and Alipay `out_request_no` per trade,
//!   and a trade number is unique per merchant at its gateway, so the number is unique
//!   wherever the gateway needs it, across deployments sharing one merchant account
//!   (`RF-<order id>` was not), and the same however often, by whichever deployment, the
//!   refund of that trade is sent: the gateway then answers the refund it made before.
//!
//! The worker's send and every dry run (`reconcile anomalies --refund --dry-run`, the
//! replay of a parked refund) decide through [`plan`], so a dry run says what the real run
//! sends. Pure code, no I/O.

use thiserror::Error;

use order_closer_core::money::format_minor;
use order_closer_gateway::{GatewayError, TradeState};

/// Longest refund number: Alipay's `out_request_no` and WeChat Pay's `out_refund_no` both
/// take at most 64 characters.
pub const MAX_REFUND_NUMBER: usize = 64;

/// A refund number is `RF-` and the gateway's trade number...
const PREFIX: &str = "RF-";
/// ...or, for a trade number too long or with characters a gateway may refuse, `RFH-` and
/// a digest of it (the two forms differ at their third character, so they never meet).
const HASHED_PREFIX: &str = "RFH-";
/// Bytes of the SHA-256 digest kept in a hashed number (160 bits: 40 hex characters).
const HASHED_BYTES: usize = 20;

/// The refund number of the whole payment of the trade the gateway numbers `trade_no`:
/// `RF-<trade_no>` when that fits every gateway's limits (at most [`MAX_REFUND_NUMBER`]
/// characters of `[0-9A-Za-z_-]`, within WeChat Pay's `[0-9A-Za-z_-|*@]`), else
/// `RFH-<40 hex digits of its SHA-256>`. None for an empty trade number (there is nothing
/// to derive a unique number from).
pub fn refund_number(trade_no: &str) -> Option<String> {
    if trade_no.is_empty() {
        return None;
    }
    let plain = trade_no.len() <= MAX_REFUND_NUMBER - PREFIX.len()
        && trade_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return Some(format!("{PREFIX}{trade_no}"));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, trade_no.as_bytes());
    let hex: String = digest.as_ref()[..HASHED_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("{HASHED_PREFIX}{hex}"))
}

/// A refund ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRefund {
    /// How much to give back (the whole payment), in minor units.
    pub amount_minor: i64,
    /// The refund number (`out_request_no`, `out_refund_no`).
    pub out_request_no: String,
    /// Why these.
    pub basis: Basis,
}

/// Where a planned refund's amount and number come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The gateway reports the trade paid, under this trade number: its whole payment is
    /// given back.
    Paid {
        /// The gateway's trade number.
        trade_no: String,
    },
    /// The gateway reports no payment now (a full refund closes the trade), but this
    /// refund was sent before: it is sent again unchanged, and the gateway answers the
    /// refund it made then (an answer lost to a timeout), or refuses.
    SentBefore {
        /// What the gateway reports, as it was classified.
        state: String,
    },
}

impl PlannedRefund {
    /// One line for the audit trail: how much, under which number, and why.
    pub fn describe(&self) -> String {
        let why = match &self.basis {
            Basis::Paid { trade_no } => {
                format!("the gateway reports it paid for trade {trade_no}")
            }
            Basis::SentBefore { state } => format!(
                "sent before; the gateway reports the trade {state} now, so the same request is sent again"
            ),
        };
        format!(
            "{} (request {}; {why})",
            format_minor(self.amount_minor),
            self.out_request_no
        )
    }

    /// What the gateway reports paid now, when it does.
    pub fn paid_minor(&self) -> Option<i64> {
        matches!(self.basis, Basis::Paid { .. }).then_some(self.amount_minor)
    }
}

/// Why a refund cannot be sent now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotSendable {
    /// The gateway reports no payment and no refund of the trade was sent before.
    #[error(
        "the gateway reports the trade {state} and no refund of it was sent before: nothing was paid, nothing to refund"
    )]
    NothingPaid {
        /// What the gateway reports, as it was classified.
        state: String,
    },
    /// The gateway reports the trade paid and given back already, by a refund that is not
    /// ours (by hand in the merchant portal, or by its risk control).
    #[error(
        "the gateway reports the trade's payment given back already, and no refund of ours was sent: nothing left for us to refund (check at the gateway whether that refund was whole)"
    )]
    GivenBack,
    /// The buyer is paying right now: ask again later.
    #[error("the buyer is paying right now; the refund waits for the payment to settle")]
    BuyerPaying,
    /// The gateway reports the trade paid, but not in a way a refund can be made of.
    #[error("the gateway reports the trade paid {0}: no refund can be derived from that")]
    Unusable(&'static str),
}

impl NotSendable {
    /// The failure code recorded for it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NothingPaid { .. } => "nothing_paid",
            Self::GivenBack => "given_back",
            Self::BuyerPaying => "buyer_paying",
            Self::Unusable(_) => "unusable_payment",
        }
    }

    /// As a gateway failure, for the refund's retry rules: the buyer paying is
    /// transient, the rest needs an operator.
    pub fn as_gateway_error(&self) -> GatewayError {
        match self {
            Self::BuyerPaying => GatewayError::retryable(self.code(), self.to_string()),
            _ => GatewayError::permanent(self.code(), self.to_string()),
        }
    }
}

/// Decides what an order's refund sends, from the gateway's answer about its trade now and
/// what was sent for it before (`(amount_minor, out_request_no)`, from the refund row).
///
/// | the gateway reports | sent before | the refund sends |
/// |---|---|---|
/// | paid, amount A, trade T | any | A under `RF-<T>` (a wrong stored amount, or an old `RF-<order id>`, is replaced) |
/// | anything else | (A, N) | A under N again, to be confirmed or refused |
/// | buyer paying | never | nothing yet (retry) |
/// | paid and given back (a refund not ours) | never | nothing: nothing left for us to refund |
/// | closed, not found, waiting | never | nothing: nothing was paid |
pub fn plan(state: &TradeState, sent: Option<(i64, &str)>) -> Result<PlannedRefund, NotSendable> {
    if let TradeState::Paid {
        trade_no,
        amount_minor,
        ..
    } = state
    {
        if *amount_minor <= 0 {
            return Err(NotSendable::Unusable("with no positive amount"));
        }
        let out_request_no =
            refund_number(trade_no).ok_or(NotSendable::Unusable("without a trade number"))?;
        return Ok(PlannedRefund {
            amount_minor: *amount_minor,
            out_request_no,
            basis: Basis::Paid {
                trade_no: trade_no.clone(),
            },
        });
    }
    let described = format!("{state:?}");
    match (sent, state) {
        (Some((amount_minor, number)), _) => Ok(PlannedRefund {
            amount_minor,
            out_request_no: number.to_owned(),
            basis: Basis::SentBefore { state: described },
        }),
        (None, TradeState::InProgress) => Err(NotSendable::BuyerPaying),
        (None, TradeState::Refunded { .. }) => Err(NotSendable::GivenBack),
        (None, _) => Err(NotSendable::NothingPaid { state: described }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_gateway::FaultClass;

    fn paid(trade_no: &str, amount_minor: i64) -> TradeState {
        TradeState::Paid {
            trade_no: trade_no.into(),
            amount_minor,
            paid_at: None,
        }
    }

    /// Within both gateways' limits: at most 64 characters of `[0-9A-Za-z_-]` (WeChat Pay
    /// also takes `|*@`, Alipay documents no alphabet).
    fn fits_every_gateway(number: &str) -> bool {
        number.len() <= MAX_REFUND_NUMBER
            && number
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    #[test]
    fn the_number_is_the_trade_number_unique_per_merchant_and_deterministic() {
        // An Alipay trade_no and a WeChat transaction_id, as the gateways write them.
        for trade_no in [
            "2026112222001400000000000001",
            "4200001234202611221234567890",
        ] {
            let number = refund_number(trade_no).unwrap();
            assert_eq!(number, format!("RF-{trade_no}"));
            assert!(fits_every_gateway(&number), "{number}");
            assert_eq!(refund_number(trade_no), Some(number), "deterministic");
        }
        // Two trades (two deployments' orders with one order id) never share a number.
        assert_ne!(refund_number("T1"), refund_number("T2"));
    }

    #[test]
    fn a_trade_number_that_would_not_fit_is_hashed_and_an_empty_one_refused() {
        let longest = "9".repeat(MAX_REFUND_NUMBER - PREFIX.len());
        assert_eq!(refund_number(&longest), Some(format!("RF-{longest}")));
        let too_long = "9".repeat(MAX_REFUND_NUMBER);
        for odd in [too_long.as_str(), "a b", "T/1", "交易1", "x|y", "H-1\n"] {
            let number = refund_number(odd).unwrap();
            assert!(number.starts_with("RFH-"), "{odd:?}: {number}");
            assert_eq!(number.len(), 44);
            assert!(fits_every_gateway(&number), "{number}");
            assert_eq!(refund_number(odd), Some(number), "deterministic");
        }
        assert_ne!(refund_number("a b"), refund_number("a  b"));
        // A plain number whose trade number starts with `H` is not a hashed one.
        assert!(refund_number("H-1").unwrap().starts_with("RF-H"));
        assert_eq!(refund_number(""), None);
    }

    #[test]
    fn a_paid_trade_is_refunded_for_the_gateway_s_amount_whatever_was_stored() {
        let expected = PlannedRefund {
            amount_minor: 100,
            out_request_no: "RF-T1".into(),
            basis: Basis::Paid {
                trade_no: "T1".into(),
            },
        };
        // Never sent; sent before by an older version with a bill row's 5.00 under the
        // old number; sent before with the same values.
        for sent in [None, Some((500, "RF-7")), Some((100, "RF-T1"))] {
            assert_eq!(
                plan(&paid("T1", 100), sent),
                Ok(expected.clone()),
                "{sent:?}"
            );
        }
        assert_eq!(expected.paid_minor(), Some(100));
        assert!(expected.describe().contains("1.00 (request RF-T1"));
    }

    #[test]
    fn a_trade_no_longer_paid_gets_the_refund_sent_before_or_nothing() {
        let sent = Some((100, "RF-T1"));
        // Our refund, applied but its answer lost, reads as paid and given back (or, on
        // Alipay, as closed): the same request again is confirmed.
        let given_back = TradeState::Refunded {
            trade_no: "T1".into(),
            amount_minor: 100,
            paid_at: None,
        };
        for state in [
            given_back.clone(),
            TradeState::Closed,
            TradeState::NotFound,
            TradeState::InProgress,
        ] {
            let planned = plan(&state, sent).unwrap();
            assert_eq!(
                (planned.amount_minor, planned.out_request_no.as_str()),
                (100, "RF-T1")
            );
            assert!(matches!(planned.basis, Basis::SentBefore { .. }));
            assert_eq!(planned.paid_minor(), None);
        }
        for state in [
            TradeState::Closed,
            TradeState::NotFound,
            TradeState::WaitingForPayment,
        ] {
            let refused = plan(&state, None).unwrap_err();
            assert_eq!(refused.code(), "nothing_paid");
            assert!(
                refused.to_string().contains("nothing to refund"),
                "{refused}"
            );
            assert_eq!(refused.as_gateway_error().class, FaultClass::Permanent);
        }
        // Given back by a refund that is not ours: nothing left for us.
        let refused = plan(&given_back, None).unwrap_err();
        assert_eq!(refused, NotSendable::GivenBack);
        assert_eq!(refused.as_gateway_error().class, FaultClass::Permanent);
        let paying = plan(&TradeState::InProgress, None).unwrap_err();
        assert_eq!(paying, NotSendable::BuyerPaying);
        assert_eq!(paying.as_gateway_error().class, FaultClass::Retryable);
    }

    #[test]
    fn a_payment_without_amount_or_trade_number_is_not_refunded() {
        for state in [paid("T1", 0), paid("T1", -5), paid("", 100)] {
            let refused = plan(&state, Some((100, "RF-T1"))).unwrap_err();
            assert_eq!(refused.code(), "unusable_payment", "{state:?}");
            assert_eq!(refused.as_gateway_error().class, FaultClass::Permanent);
        }
    }
}
