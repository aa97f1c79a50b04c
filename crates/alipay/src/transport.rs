//! Sending to Alipay and reading back: one signed call (the form posted, the body read
//! within the timeout and the size cap, its envelope cut and its signature checked, the
//! answer read into its type) and the plain download of a bill archive. Everything the
//! network can do wrong becomes a retryable [`GatewayError`] here, so that the methods of
//! `client.rs` only classify answers.

use std::time::Instant;

use serde_json::Value;

use super::answer::{Answer, VerifiedAnswer, read};
use super::client::{AlipayClient, MAX_BODY_BYTES};
use super::envelope;
use super::request::{Method, response_key, signed_form};
use order_closer_gateway::GatewayError;
use order_closer_gateway::http;

impl AlipayClient {
    /// Calls an Alipay method: signs the common parameters plus `biz_content`, posts
    /// them as a form, checks the answer's signature over the raw `*_response` (or
    /// `error_response`) object, and reads it as `T` (any [`Answer`]; [`Status`] reads
    /// any method's). Does not interpret `code`.
    ///
    /// Every failure here is retryable: `timeout`, `connect`, `http_transport`,
    /// `http_<status>`, `body_too_large`, `unparseable`, `unsigned_answer`,
    /// `bad_signature`, `unclassifiable` (not an answer object); `signing` if the app
    /// key cannot sign (permanent).
    ///
    /// [`Status`]: super::answer::Status
    pub async fn call<T: Answer>(
        &self,
        method: Method,
        biz_content: &Value,
    ) -> Result<VerifiedAnswer<T>, GatewayError> {
        self.call_named(method.name(), biz_content).await
    }

    /// [`AlipayClient::call`] by the method's wire name.
    pub(crate) async fn call_named<T: Answer>(
        &self,
        method: &str,
        biz_content: &Value,
    ) -> Result<VerifiedAnswer<T>, GatewayError> {
        let started = Instant::now();
        let form = signed_form(
            &self.config.app_id,
            &self.config.app_private_key,
            method,
            biz_content,
        )?;
        let body = http::within(self.config.timeout, "the answer", self.exchange(&form)).await?;
        let key = response_key(method);
        let envelope = envelope::verified(&body, &key, &self.config.alipay_public_key)
            .inspect_err(|e| tracing::debug!(method, code = %e.code, "alipay answer refused"))?;
        let answer: T = read(envelope.object)?;
        tracing::debug!(
            method,
            elapsed_ms = started.elapsed().as_millis() as u64,
            response_key = envelope.key,
            code = answer.status().code_str(),
            sub_code = answer.status().sub_code_str(),
            "alipay answered"
        );
        Ok(VerifiedAnswer {
            response_key: envelope.key.to_owned(),
            raw: envelope.object.to_owned(),
            answer,
        })
    }

    /// Posts the form and reads the body (capped), mapping transport failures.
    async fn exchange(&self, form: &[(&'static str, String)]) -> Result<String, GatewayError> {
        let response = self
            .http
            .post(self.endpoint.clone())
            .form(form)
            .send()
            .await
            .map_err(http::transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(http::status_error(status, "the gateway"));
        }
        let body = http::read_capped(response, MAX_BODY_BYTES, || {
            GatewayError::retryable(
                "body_too_large",
                format!("answer body exceeds {MAX_BODY_BYTES} bytes"),
            )
        })
        .await?;
        String::from_utf8(body)
            .map_err(|_| GatewayError::retryable("unparseable", "answer body is not UTF-8"))
    }

    /// Downloads a bill archive from a URL given by [`AlipayClient::bill_download_url`]:
    /// a plain GET (no signature), within the client's timeout, reading at most
    /// [`MAX_BILL_BYTES`](http::MAX_BILL_BYTES). Returns the raw bytes (a zip; read it
    /// with [`parse_zip`](super::bill::parse_zip)).
    ///
    /// Errors: a URL that is not absolute http(s) is permanent `invalid_url`; a non-2xx
    /// status (an expired URL, for one) is retryable `http_<status>` (ask for a new URL);
    /// a larger body is permanent `bill_too_large`; timeouts and transport failures are
    /// retryable (`timeout`, `connect`, `http_transport`).
    pub async fn download_bill(&self, url: &str) -> Result<Vec<u8>, GatewayError> {
        let started = Instant::now();
        let parsed = http::bill_url(url)?;
        let host = parsed.host_str().unwrap_or("").to_owned();
        let bytes = http::download(self.http.get(parsed), self.config.timeout).await?;
        tracing::debug!(
            host,
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "alipay bill downloaded"
        );
        Ok(bytes)
    }
}
