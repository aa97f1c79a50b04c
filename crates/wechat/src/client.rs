//! The WeChat Pay API v3 HTTP client: signs every request with the merchant's key,
//! verifies every answer with the WeChat Pay key its `Wechatpay-Serial` names, and
//! implements [`Gateway`] (query by `out_trade_no`, close, refund) and [`BillSource`]
//! (the trade bill: apply, then a signed download whose answer is not signed, checked
//! by its SHA-1 instead).
//!
//! An error answer (4xx/5xx) may come unsigned (the SDKs check signatures on 2xx only, and
//! WeChat does not sign an answer to a request it could not authenticate); it is believed
//! as an error, except when it says something about the trade (`ORDER_NOT_EXIST`,
//! `ORDER_CLOSED`): acting on those needs a verified signature, as a success does.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use serde_json::{Value, json};
use thiserror::Error;

use super::bill::parse_bill;
use super::response::{classify_close, classify_query, classify_refund};
use super::sign::{self, SignedBy, WechatKeys};
use order_closer_gateway::bill::{Account, Bill, BillError};
use order_closer_gateway::http::{self, echo};
use order_closer_gateway::json::{self, StrictJsonError};
use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_gateway::{
    BillFetchError, BillSource, CloseAnswer, Gateway, GatewayError, QueryAnswer, RefundAnswer,
    RefundRequest, TradeRef,
};

/// Largest answer body read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest `out_refund_no`: `String(64)` of `[0-9A-Za-z_-|*@]`, unique per merchant.
pub const MAX_OUT_REFUND_NO: usize = 64;

/// Largest bill once decompressed.
pub const MAX_BILL_TEXT_BYTES: u64 = 256 * 1024 * 1024;

/// How to reach and authenticate with WeChat Pay.
#[derive(Debug, Clone)]
pub struct WechatConfig {
    /// Base URL, for example `https://api.mch.weixin.qq.com` or the simulator's.
    pub gateway_url: String,
    /// The merchant id (`mchid`).
    pub mchid: String,
    /// The serial of the merchant's API certificate (`serial_no` in `Authorization`).
    pub merchant_serial: String,
    /// The merchant's private key; requests are signed with it.
    pub merchant_key: Arc<RsaPrivateKey>,
    /// The WeChat Pay keys answers are verified with.
    pub keys: Arc<WechatKeys>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Why a [`WechatClient`] could not be built.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The gateway URL is not an absolute `http`/`https` URL.
    #[error("gateway URL {0:?} is not an absolute http(s) URL")]
    InvalidUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// An answer whose signature was checked (or an error answer that carried none).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// The body as received.
    raw: String,
    /// The body, parsed (`Null` when empty or not JSON).
    value: Value,
    /// Whether a valid signature vouches for it.
    verified: bool,
}

/// A WeChat Pay client with one reusable connection pool. Cheap to share by `Arc`.
#[derive(Debug)]
pub struct WechatClient {
    config: WechatConfig,
    base: reqwest::Url,
    http: reqwest::Client,
}

impl WechatClient {
    /// Validates the configuration and builds the HTTP client.
    pub fn new(config: WechatConfig) -> Result<Self, ConfigError> {
        let base = http::absolute_url(config.gateway_url.trim_end_matches('/'))
            .ok_or_else(|| ConfigError::InvalidUrl(config.gateway_url.clone()))?;
        let http = http::client(config.timeout).map_err(ConfigError::HttpClient)?;
        Ok(Self { config, base, http })
    }

    /// The URL of `path` (already escaped) with `query` pairs.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<reqwest::Url, GatewayError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                GatewayError::permanent("invalid_url", "the gateway URL cannot take a path")
            })?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// The `Authorization` header of a request: the merchant's signature over its method,
    /// path and query, and body.
    fn authorization(
        &self,
        method: &reqwest::Method,
        url: &reqwest::Url,
        body: &str,
    ) -> Result<String, GatewayError> {
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        sign::authorization(
            &self.config.merchant_key,
            &self.config.mchid,
            &self.config.merchant_serial,
            method.as_str(),
            &path_and_query,
            body,
            Utc::now(),
        )
        .map_err(|e| GatewayError::permanent("signing", e.to_string()))
    }

    /// Signs and sends a request, reads the answer (capped) and checks its signature.
    async fn call(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> Result<Answer, GatewayError> {
        let body_text = body.map(|b| b.to_string()).unwrap_or_default();
        let authorization = self.authorization(&method, &url, &body_text)?;
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(serial) = self.config.keys.accept_serial() {
            request = request.header(sign::HEADER_SERIAL, serial);
        }
        if !body_text.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body_text);
        }
        let exchange = async {
            let response = request.send().await.map_err(http::transport_error)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = http::read_capped(response, MAX_BODY_BYTES, || {
                GatewayError::retryable(
                    "body_too_large",
                    format!("answer body exceeds {MAX_BODY_BYTES} bytes"),
                )
            })
            .await?;
            Ok::<_, GatewayError>((status, headers, bytes))
        };
        let (status, headers, bytes) =
            http::within(self.config.timeout, "the answer", exchange).await?;
        let signed = SignedBy::from_headers(&headers);
        let success = (200..300).contains(&status);
        let verified = match sign::verify(&self.config.keys, signed, &bytes, Utc::now()) {
            Ok(()) => true,
            // An error answer without any signature is taken as an unverified error.
            Err(sign::VerifyError::MissingHeader(_)) if !success && signed.signature.is_none() => {
                false
            }
            Err(e) => {
                return Err(GatewayError::retryable(
                    if e == sign::VerifyError::Probe {
                        "signature_probe"
                    } else {
                        "bad_signature"
                    },
                    format!("answer (HTTP {status}) not believed: {e}"),
                ));
            }
        };
        let raw = String::from_utf8(bytes)
            .map_err(|_| GatewayError::retryable("unparseable", "answer body is not UTF-8"))?;
        // Read strictly: an answer that repeats a key says two things at once.
        let value = if raw.trim().is_empty() {
            Value::Null
        } else {
            match json::parse(raw.as_bytes()) {
                Ok(value) => value,
                Err(e @ StrictJsonError::DuplicateKey(_)) if success => {
                    return Err(GatewayError::retryable(
                        "unparseable",
                        format!("answer not believed: {e}"),
                    ));
                }
                Err(StrictJsonError::Syntax(_)) if success => {
                    return Err(GatewayError::retryable(
                        "unparseable",
                        format!(
                            "answer is not JSON (starts {:?})",
                            echo(&raw.chars().take(60).collect::<String>())
                        ),
                    ));
                }
                // An error answer is read for its code when it can be.
                Err(_) => Value::Null,
            }
        };
        Ok(Answer {
            status,
            raw,
            value,
            verified,
        })
    }
}

/// Refuses to act on an unverified answer that says something about the trade.
fn require_verified<T>(
    answer: &Answer,
    result: Result<T, GatewayError>,
) -> Result<T, GatewayError> {
    match result {
        Ok(_) if !answer.verified => Err(GatewayError::retryable(
            "unsigned_answer",
            format!(
                "an unsigned HTTP {} answer about the trade; not believed",
                answer.status
            ),
        )),
        other => other,
    }
}

#[async_trait]
impl Gateway for WechatClient {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        let url = self.url(
            &[
                "v3",
                "pay",
                "transactions",
                "out-trade-no",
                trade.out_trade_no,
            ],
            &[("mchid", &self.config.mchid)],
        )?;
        let answer = self.call(reqwest::Method::GET, url, None).await?;
        let state = require_verified(
            &answer,
            classify_query(
                answer.status,
                &answer.value,
                trade.out_trade_no,
                &self.config.mchid,
            ),
        )?;
        tracing::debug!(
            out_trade_no = trade.out_trade_no,
            ?state,
            "wechat query classified"
        );
        Ok(QueryAnswer {
            state,
            raw: answer.raw,
        })
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        let url = self.url(
            &[
                "v3",
                "pay",
                "transactions",
                "out-trade-no",
                trade.out_trade_no,
                "close",
            ],
            &[],
        )?;
        let answer = self
            .call(
                reqwest::Method::POST,
                url,
                Some(json!({ "mchid": self.config.mchid })),
            )
            .await?;
        let result = require_verified(&answer, classify_close(answer.status, &answer.value))?;
        tracing::debug!(
            out_trade_no = trade.out_trade_no,
            ?result,
            "wechat close classified"
        );
        Ok(result)
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        request.check_number(MAX_OUT_REFUND_NO, |c| {
            c.is_ascii_alphanumeric() || "_-|*@".contains(c)
        })?;
        let url = self.url(&["v3", "refund", "domestic", "refunds"], &[])?;
        let body = json!({
            "out_trade_no": request.trade.out_trade_no,
            "out_refund_no": request.out_request_no,
            "reason": "paid after the order was closed",
            "amount": {
                "refund": request.amount_minor,
                "total": request.total_minor,
                "currency": request.currency,
            },
        });
        let answer = self.call(reqwest::Method::POST, url, Some(body)).await?;
        let result = require_verified(
            &answer,
            classify_refund(
                answer.status,
                &answer.value,
                answer.raw.clone(),
                request.trade.out_trade_no,
            ),
        );
        tracing::debug!(
            out_trade_no = request.trade.out_trade_no,
            ?result,
            "wechat refund classified"
        );
        result
    }
}

impl WechatClient {
    /// Applies for the trade bill of `date`: `{hash_type, hash_value, download_url}`, or
    /// `None` when WeChat has no bill for that day (`NO_STATEMENT_EXIST`: no trades).
    /// `STATEMENT_CREATING` is retryable (WeChat makes the bill after 10:00 the next day).
    async fn bill_url(&self, date: NaiveDate) -> Result<Option<(String, String)>, GatewayError> {
        let day = date.format("%Y-%m-%d").to_string();
        let url = self.url(
            &["v3", "bill", "tradebill"],
            &[
                ("bill_date", &day),
                ("bill_type", "ALL"),
                ("tar_type", "GZIP"),
            ],
        )?;
        let answer = self.call(reqwest::Method::GET, url, None).await?;
        let text = |name: &str| answer.value.get(name).and_then(Value::as_str).unwrap_or("");
        if answer.status != 200 {
            let code = text("code");
            let detail = format!(
                "HTTP {} {}: {}",
                answer.status,
                echo(code),
                echo(text("message"))
            );
            return match code {
                // No bill because no trades: believed only when signed (an empty bill
                // would report every payment of the day as missing).
                "NO_STATEMENT_EXIST" if answer.verified => Ok(None),
                "FREQUENCY_LIMITED" => Err(GatewayError::throttled(code, detail)),
                "STATEMENT_CREATING" | "SYSTEM_ERROR" => Err(GatewayError::retryable(code, detail)),
                "PARAM_ERROR" | "INVALID_REQUEST" | "SIGN_ERROR" | "NO_AUTH" => {
                    Err(GatewayError::permanent(code, detail))
                }
                _ => Err(GatewayError::retryable("unclassifiable", detail)),
            };
        }
        if !answer.verified {
            return Err(GatewayError::retryable(
                "unsigned_answer",
                "an unsigned bill answer",
            ));
        }
        if !text("hash_type").eq_ignore_ascii_case("SHA1") || text("hash_value").is_empty() {
            return Err(GatewayError::retryable(
                "unclassifiable",
                format!(
                    "the bill answer names no SHA1 digest ({:?})",
                    echo(&answer.raw)
                ),
            ));
        }
        Ok(Some((
            text("download_url").to_owned(),
            text("hash_value").to_owned(),
        )))
    }

    /// Downloads the bill (a signed GET; the answer is not signed) and gunzips it.
    async fn download(&self, download_url: &str) -> Result<Vec<u8>, GatewayError> {
        let url = http::bill_url(download_url)?;
        let authorization = self.authorization(&reqwest::Method::GET, &url, "")?;
        let request = self
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, authorization);
        http::download(request, self.config.timeout).await
    }
}

/// Gunzips a bill, at most [`MAX_BILL_TEXT_BYTES`] of it. Every member of a multi-member
/// gzip file is read (the text is their concatenation, as `gunzip` gives it), and bytes
/// after the last member that are not another member are refused: a cut bill would
/// report every payment after the cut as missing.
pub fn gunzip(bytes: &[u8], file: &str) -> Result<Vec<u8>, BillError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_BILL_TEXT_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| BillError::NotArchive {
            file: file.to_owned(),
            reason: format!("not gzip: {e}"),
        })?;
    if out.len() as u64 > MAX_BILL_TEXT_BYTES {
        return Err(BillError::TooLarge {
            file: file.to_owned(),
            limit: MAX_BILL_TEXT_BYTES,
        });
    }
    Ok(out)
}

/// Checks the SHA-1 WeChat gave for the (decompressed) bill.
pub fn check_digest(text: &[u8], expected: &str, file: &str) -> Result<(), BillError> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, text);
    let actual: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(BillError::Digest {
            file: file.to_owned(),
            algorithm: "SHA1".into(),
            expected: echo(expected),
            actual,
        })
    }
}

#[async_trait]
impl BillSource for WechatClient {
    /// Applies for the bill, downloads it at once (its URL lives 30 s to 5 min), gunzips
    /// it, checks its SHA-1 and reads it. No bill for the day (a signed
    /// `NO_STATEMENT_EXIST`: no trades) is an empty bill. An empty bill states neither its
    /// day nor its merchant (WeChat Pay writes both only in rows): the signed answer to
    /// our request for that day, as our merchant, vouches for them ([`Bill::vouch`]).
    async fn daily_bill(&self, date: NaiveDate) -> Result<Bill, BillFetchError> {
        let failed = |source| BillFetchError::Gateway { date, source };
        let file = format!("the {date} bill from WeChat Pay");
        let mut bill = match self.bill_url(date).await.map_err(failed)? {
            None => Bill {
                file,
                offset: order_closer_core::time::china(),
                account: None,
                period: None,
                rows: Vec::new(),
            },
            Some((url, hash)) => {
                let bytes = self.download(&url).await.map_err(failed)?;
                let text = gunzip(&bytes, &file)?;
                check_digest(&text, &hash, &file)?;
                parse_bill(&text, &file)?
            }
        };
        bill.vouch(&self.config.mchid, date);
        Ok(bill)
    }

    /// A bill downloaded by hand: gzip or plain CSV (its digest cannot be checked).
    fn read_file(&self, bytes: &[u8], name: &str) -> Result<Bill, BillFetchError> {
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            gunzip(bytes, name)?
        } else {
            bytes.to_vec()
        };
        Ok(parse_bill(&text, name)?)
    }

    /// A bill's `商户号` cells name the merchant id (`WECHAT_MCH_ID`) alone.
    fn account(&self) -> Result<Account, BillFetchError> {
        Ok(Account {
            id: self.config.mchid.clone(),
            configured_by: super::vars::MCH_ID,
            code_digits: 0,
        })
    }

    fn max_file_bytes(&self) -> u64 {
        MAX_BILL_TEXT_BYTES
    }

    fn calendar(&self) -> chrono::FixedOffset {
        order_closer_core::time::china()
    }
}
