//! A small HTTP client for the simulator's buyer API (`/sim/...`): a buyer's action
//! ([`BuyerClient::buyer`], the builder of `buy.rs`: scan, pay, arm the pay-on-close race,
//! lose the notification), refund, read trades back, steer fault injection (the plan and
//! per-trade `fail-next` one-shots) and override the next bill download. For tests and
//! the demo.
//!
//! A buyer refused by the simulator is [`BuyerError::Rejected`]: 404 for a trade never
//! scanned, 409 for one in the wrong state, or with error `trade_expired` past its expiry
//! (`time_expire`, [`Buyer::expiring_at`]) or its QR code's ([`Buyer::qr_valid_until`]).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use thiserror::Error;

use super::buy::Buyer;
use super::faults::SimMethod;
use super::notifier::{NotifyPlan, NotifyStats};
use super::state::{FailNext, FaultKind, FaultPlan, SimStats, SimTradeView};

/// Why a buyer call failed.
#[derive(Debug, Error)]
pub enum BuyerError {
    /// The base URL is not an absolute http(s) URL.
    #[error("simulator base URL {0:?} is not an absolute http(s) URL")]
    InvalidBaseUrl(String),
    /// The request did not complete (connection refused, timeout...).
    #[error("simulator request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The simulator refused the action (404 unknown trade, 409 wrong state or expired,
    /// 400 bad input).
    #[error("simulator refused ({status}): {error}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The machine-readable kind (`not_found`, `conflict`, `trade_expired`,
        /// `bad_request`).
        error: String,
        /// The explanation.
        message: String,
    },
    /// The answer was not what the buyer API returns.
    #[error("unexpected simulator answer: {0}")]
    Decode(String),
}

/// The buyer API's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// Acts as a buyer against a running simulator.
#[derive(Debug, Clone)]
pub struct BuyerClient {
    base: Url,
    http: reqwest::Client,
    /// The gateway the trades this client creates are at (None: the simulator's first).
    channel: Option<String>,
}

impl BuyerClient {
    /// A client for the simulator at `base_url` (for example `http://127.0.0.1:4000`).
    pub fn new(base_url: impl Into<String>) -> Result<Self, BuyerError> {
        let text = base_url.into();
        let base = Url::parse(&text).map_err(|_| BuyerError::InvalidBaseUrl(text.clone()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(BuyerError::InvalidBaseUrl(text));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        Ok(Self {
            base,
            http,
            channel: None,
        })
    }

    /// The same client, creating its trades at `channel`'s gateway.
    pub fn at(&self, channel: &str) -> Self {
        Self {
            channel: Some(channel.to_owned()),
            ..self.clone()
        }
    }

    /// `{base}/sim/<segments...>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, BuyerError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| BuyerError::InvalidBaseUrl(self.base.to_string()))?
            .pop_if_empty()
            .push("sim")
            .extend(segments);
        Ok(url)
    }

    /// Reads a JSON answer, turning an error status into [`BuyerError::Rejected`].
    async fn read<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, BuyerError> {
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            let (error, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.error, body.message),
                Err(_) => (
                    "http".to_owned(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            return Err(BuyerError::Rejected {
                status: status.as_u16(),
                error,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| BuyerError::Decode(e.to_string()))
    }

    /// `{method} {base}/sim/<segments...>` with `body` as JSON; the answer decoded.
    async fn send_json<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: &T,
    ) -> Result<R, BuyerError> {
        let body = serde_json::to_string(body).map_err(|e| BuyerError::Decode(e.to_string()))?;
        let response = self
            .http
            .request(method, self.url(segments)?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        Self::read(response).await
    }

    /// The buyer of `out_trade_no`, acting through the buyer API: a trade it scans is at
    /// this client's gateway (see [`BuyerClient::at`]) unless [`Buyer::at`] names another.
    pub fn buyer(&self, out_trade_no: &str) -> Buyer<&BuyerClient> {
        let buyer = Buyer::new(self, out_trade_no);
        match &self.channel {
            Some(channel) => buyer.at(channel),
            None => buyer,
        }
    }

    /// Refunds `amount_minor` of a paid trade (refund number `RF{trade_no}{k}`, time now).
    /// More than is left to refund, or a trade not `TRADE_SUCCESS`, is
    /// [`BuyerError::Rejected`] with status 409; the refund that leaves nothing makes the
    /// trade `TRADE_CLOSED`.
    pub async fn refund(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
    ) -> Result<SimTradeView, BuyerError> {
        let mut body = json!({ "amount_minor": amount_minor });
        if let Some(channel) = &self.channel {
            body["channel"] = json!(channel);
        }
        self.send_json(
            reqwest::Method::POST,
            &["trades", out_trade_no, "refund"],
            &body,
        )
        .await
    }

    /// Makes the next bill download serve `bytes` instead of the bill (to test malformed
    /// bills end to end); the URL must still be valid.
    pub async fn override_bill(&self, bytes: impl Into<Vec<u8>>) -> Result<(), BuyerError> {
        let url = self.url(&["bill-override"])?;
        let response = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.into())
            .send()
            .await?;
        Self::read::<serde_json::Value>(response).await.map(|_| ())
    }

    /// Clears a bill override set by [`BuyerClient::override_bill`].
    pub async fn clear_bill_override(&self) -> Result<(), BuyerError> {
        let url = self.url(&["bill-override"])?;
        Self::read::<serde_json::Value>(self.http.delete(url).send().await?)
            .await
            .map(|_| ())
    }

    /// The trade as the simulator holds it, or `None` if it was never scanned.
    pub async fn trade(&self, out_trade_no: &str) -> Result<Option<SimTradeView>, BuyerError> {
        let url = self.url(&["trades", out_trade_no])?;
        let response = self.http.get(url).send().await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::read(response).await.map(Some)
    }

    /// The simulator's request counters.
    pub async fn stats(&self) -> Result<SimStats, BuyerError> {
        let url = self.url(&["stats"])?;
        Self::read(self.http.get(url).send().await?).await
    }

    /// The simulator's current fault plan.
    pub async fn faults(&self) -> Result<FaultPlan, BuyerError> {
        let url = self.url(&["faults"])?;
        Self::read(self.http.get(url).send().await?).await
    }

    /// Replaces the simulator's fault plan; returns the plan installed. An invalid plan is
    /// [`BuyerError::Rejected`] with status 400, error `invalid_fault_plan` and a message
    /// naming the field, and leaves the current plan in place.
    pub async fn set_faults(&self, plan: &FaultPlan) -> Result<FaultPlan, BuyerError> {
        self.send_json(reqwest::Method::PUT, &["faults"], plan)
            .await
    }

    /// Replaces the notification plan (where notifications go, their faults); returns
    /// the plan installed. An invalid plan is [`BuyerError::Rejected`] with status 400.
    pub async fn set_notify(&self, plan: &NotifyPlan) -> Result<NotifyPlan, BuyerError> {
        self.send_json(reqwest::Method::PUT, &["notify"], plan)
            .await
    }

    /// What the notifier did so far.
    pub async fn notify_stats(&self) -> Result<NotifyStats, BuyerError> {
        #[derive(serde::Deserialize)]
        struct Status {
            stats: NotifyStats,
        }
        let url = self.url(&["notify"])?;
        let status: Status = Self::read(self.http.get(url).send().await?).await?;
        Ok(status.stats)
    }

    /// Clears the fault plan and every pending `fail-next`: answers are normal again.
    pub async fn clear_faults(&self) -> Result<(), BuyerError> {
        let url = self.url(&["faults"])?;
        Self::read::<FaultPlan>(self.http.delete(url).send().await?)
            .await
            .map(|_| ())
    }

    /// Makes exactly the next `count` gateway answers about `out_trade_no` (queries and
    /// closes alike, whatever the plan says) fail with `kind`; `count` 0 cancels. The
    /// trade need not exist yet.
    pub async fn fail_next(
        &self,
        out_trade_no: &str,
        kind: FaultKind,
        count: u32,
    ) -> Result<FailNext, BuyerError> {
        self.fail_next_on(out_trade_no, None, kind, count).await
    }

    /// [`BuyerClient::fail_next`] for the requests of `method` only (`None`: any): a
    /// refund's call fails, not the query before it.
    pub async fn fail_next_on(
        &self,
        out_trade_no: &str,
        method: Option<SimMethod>,
        kind: FaultKind,
        count: u32,
    ) -> Result<FailNext, BuyerError> {
        self.send_json(
            reqwest::Method::POST,
            &["trades", out_trade_no, "fail-next"],
            &json!({ "kind": kind, "count": count, "method": method }),
        )
        .await
    }

    /// The variables that configure a client to reach and trust the simulator (each
    /// gateway's URL, ids and keys).
    pub async fn client_vars(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, BuyerError> {
        let url = self.url(&["client-vars"])?;
        let response = self.http.get(url).send().await?;
        Self::read(response).await
    }
}

impl Buyer<&BuyerClient> {
    /// Sends the action to the buyer API: `POST /sim/trades/{no}/scan` (only scanning),
    /// `/pay` or `/pay-on-close`, the terms as the JSON body. The trade as it is afterwards.
    pub async fn send(self) -> Result<SimTradeView, BuyerError> {
        let path = ["trades", &self.out_trade_no, self.pays.endpoint()];
        self.target
            .send_json(reqwest::Method::POST, &path, &self.terms)
            .await
    }
}
