//! The Alipay client: its configuration, and the [`Gateway`] it implements with
//! `alipay.trade.query`, `alipay.trade.close` and `alipay.trade.refund`, plus the daily
//! trade bill ([`BillSource`]: [`AlipayClient::bill_download_url`], then
//! [`AlipayClient::download_bill`]). Each method here is a request (`request.rs`), sent
//! and verified (`transport.rs`, `envelope.rs`), read into its answer type (`answer.rs`)
//! and classified (`classify.rs`); this file only ties them together per method.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde_json::json;
use thiserror::Error;

use super::answer::{BillUrlResponse, TradeCloseResponse, TradeQueryResponse, TradeRefundResponse};
use super::classify::{classify_bill_url, classify_close, classify_query, classify_refund};
use super::request::{Method, endpoint_url};
use order_closer_gateway::bill::{Account, Bill};
use order_closer_gateway::http;
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};
use order_closer_gateway::{
    BillFetchError, BillSource, CloseAnswer, Gateway, GatewayError, QueryAnswer, RefundAnswer,
    RefundRequest, TradeRef,
};

/// Default per-request timeout (connect, send and read the whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer body read; anything longer is refused (retryable `body_too_large`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest `out_request_no` (`String(64)`); Alipay documents no alphabet, so only
/// `[0-9A-Za-z_-]` is sent.
pub const MAX_OUT_REQUEST_NO: usize = 64;

/// How to reach and authenticate with Alipay.
#[derive(Debug, Clone)]
pub struct AlipayConfig {
    /// Base URL, for example `https://openapi.alipay.com` or `http://127.0.0.1:PORT`;
    /// requests go to `{base}/gateway.do` (a base already ending in `/gateway.do` is used
    /// as is).
    pub gateway_url: String,
    /// The application id Alipay assigned.
    pub app_id: String,
    /// The application's private key; requests are signed with it.
    pub app_private_key: Arc<RsaPrivateKey>,
    /// Alipay's public key; answers are verified with it.
    pub alipay_public_key: Arc<RsaPublicKey>,
    /// Per-request timeout (connect, send, read the whole answer).
    pub timeout: Duration,
    /// The merchant's partner id (`ALIPAY_SELLER_ID`), which its bills name: a bill is
    /// read only when it names it. None: no bill can be checked, so none is read.
    pub seller_id: Option<String>,
}

impl AlipayConfig {
    /// A configuration with the default timeout ([`DEFAULT_TIMEOUT`]).
    pub fn new(
        gateway_url: impl Into<String>,
        app_id: impl Into<String>,
        app_private_key: Arc<RsaPrivateKey>,
        alipay_public_key: Arc<RsaPublicKey>,
    ) -> Self {
        Self {
            gateway_url: gateway_url.into(),
            app_id: app_id.into(),
            app_private_key,
            alipay_public_key,
            timeout: DEFAULT_TIMEOUT,
            seller_id: None,
        }
    }
}

/// Why an [`AlipayClient`] could not be built from its configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The gateway URL is not an absolute `http`/`https` URL.
    #[error("gateway URL {0:?} is not an absolute http(s) URL")]
    InvalidUrl(String),
    /// The app id is empty.
    #[error("app_id is empty")]
    EmptyAppId,
    /// The timeout is zero.
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (TLS setup, for instance).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// An Alipay client holding one reusable HTTP connection pool. Cheap to share by `Arc`.
#[derive(Debug)]
pub struct AlipayClient {
    pub(crate) config: AlipayConfig,
    pub(crate) endpoint: reqwest::Url,
    pub(crate) http: reqwest::Client,
}

impl AlipayClient {
    /// Validates the configuration and builds the HTTP client (connection reuse, connect
    /// and request timeouts, no redirects).
    pub fn new(config: AlipayConfig) -> Result<Self, ConfigError> {
        if config.app_id.trim().is_empty() {
            return Err(ConfigError::EmptyAppId);
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        let endpoint = endpoint_url(&config.gateway_url)
            .ok_or_else(|| ConfigError::InvalidUrl(config.gateway_url.clone()))?;
        let http = http::client(config.timeout).map_err(ConfigError::HttpClient)?;
        Ok(Self {
            config,
            endpoint,
            http,
        })
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &AlipayConfig {
        &self.config
    }

    /// Asks for the download URL of the trade bill of `date` (China calendar day) with
    /// `alipay.data.dataservice.bill.downloadurl.query` and
    /// `{"bill_type":"trade","bill_date":"yyyy-MM-dd"}`. The URL expires within about
    /// 30 s: download it at once with [`AlipayClient::download_bill`]. Alipay serves only
    /// past days (the previous day from about 09:00).
    ///
    /// The answer is classified by [`classify_bill_url`]; transport, signature and
    /// parsing failures are those of [`AlipayClient::call`].
    pub async fn bill_download_url(&self, date: NaiveDate) -> Result<String, GatewayError> {
        let biz = json!({
            "bill_type": "trade",
            "bill_date": date.format("%Y-%m-%d").to_string(),
        });
        let answer = self
            .call::<BillUrlResponse>(Method::BillDownloadUrl, &biz)
            .await?;
        let url = classify_bill_url(&answer.answer)?;
        tracing::debug!(%date, "alipay bill download URL received");
        Ok(url)
    }
}

#[async_trait]
impl Gateway for AlipayClient {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        let out_trade_no = trade.out_trade_no;
        let answer = self
            .call::<TradeQueryResponse>(
                Method::TradeQuery,
                &json!({ "out_trade_no": out_trade_no }),
            )
            .await?;
        let state = classify_query(out_trade_no, &answer.answer)?;
        tracing::debug!(out_trade_no, ?state, "alipay trade query classified");
        Ok(QueryAnswer {
            state,
            raw: answer.raw,
        })
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        let out_trade_no = trade.out_trade_no;
        let answer = self
            .call::<TradeCloseResponse>(
                Method::TradeClose,
                &json!({ "out_trade_no": out_trade_no }),
            )
            .await?;
        let result = classify_close(out_trade_no, &answer.answer)?;
        tracing::debug!(out_trade_no, ?result, "alipay trade close classified");
        Ok(result)
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        request.check_number(MAX_OUT_REQUEST_NO, |c| {
            c.is_ascii_alphanumeric() || c == '_' || c == '-'
        })?;
        let answer = self
            .call::<TradeRefundResponse>(
                Method::TradeRefund,
                &json!({
                    "out_trade_no": request.trade.out_trade_no,
                    "out_request_no": request.out_request_no,
                    "refund_amount": order_closer_core::money::format_minor(request.amount_minor),
                    "refund_reason": "paid after the order was closed",
                }),
            )
            .await?;
        let result = classify_refund(request, &answer.answer, answer.raw);
        tracing::debug!(
            out_trade_no = request.trade.out_trade_no,
            ?result,
            "alipay trade refund classified"
        );
        result
    }
}

#[async_trait]
impl BillSource for AlipayClient {
    /// `alipay.data.dataservice.bill.downloadurl.query`, then the download (its URL
    /// expires within about 30 s, so it is fetched at once), then the zip.
    async fn daily_bill(&self, date: NaiveDate) -> Result<Bill, BillFetchError> {
        let failed = |source| BillFetchError::Gateway { date, source };
        let url = self.bill_download_url(date).await.map_err(failed)?;
        let bytes = self.download_bill(&url).await.map_err(failed)?;
        Ok(super::bill::parse_zip(
            &bytes,
            &format!("the {date} bill from Alipay"),
        )?)
    }

    fn read_file(&self, bytes: &[u8], name: &str) -> Result<Bill, BillFetchError> {
        Ok(super::bill::parse_zip(bytes, name)?)
    }

    /// A bill's `#账号：[…]` names the partner id (`ALIPAY_SELLER_ID`, `2088…`) followed by
    /// a 4-digit account code (`0156` for the CNY account).
    fn account(&self) -> Result<Account, BillFetchError> {
        match self.config.seller_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Ok(Account {
                id: id.to_owned(),
                configured_by: super::vars::SELLER_ID,
                code_digits: super::bill::ACCOUNT_CODE_DIGITS,
            }),
            _ => Err(BillFetchError::NoAccount {
                variable: super::vars::SELLER_ID,
            }),
        }
    }

    fn max_file_bytes(&self) -> u64 {
        http::MAX_BILL_BYTES as u64
    }

    fn calendar(&self) -> chrono::FixedOffset {
        order_closer_core::time::china()
    }
}

// These tests run the client against the simulator, so they need it.

// These tests run the client against the simulator, so they need it.
#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
