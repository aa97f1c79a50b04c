//! What every gateway client does the same over HTTP: one pooled client with bounded
//! connect and request times and no redirects, bodies read with a cap, and transport
//! failures classified as retryable with a stable code (`timeout`, `connect`,
//! `http_transport`).

use std::time::Duration;

use super::GatewayError;

/// Longest time spent connecting, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Gateway-supplied text longer than this is shortened in error messages.
const MAX_ECHO: usize = 200;

/// A client for one gateway: connection reuse, connect and request timeouts, no
/// redirects (a redirect from a payment gateway is not followed blindly).
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("order-closer/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A transport failure, classified.
pub fn transport_error(e: reqwest::Error) -> GatewayError {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "http_transport"
    };
    // reqwest names the URL it failed on: never with its password.
    GatewayError::retryable(code, order_closer_core::url_secret::redact(&e.to_string()))
}

/// An answer whose HTTP status is not a success: the retryable `http_<status>`; a 429
/// ("Too Many Requests", whoever sends it: the gateway or a proxy before it) also asks
/// the account's shared quota to slow down ([`GatewayError::throttled`]).
pub fn status_error(status: reqwest::StatusCode, what: &str) -> GatewayError {
    GatewayError::at_status(
        status.as_u16(),
        format!("http_{}", status.as_u16()),
        format!("{what} answered HTTP {status}"),
    )
}

/// Reads a body of at most `max` bytes; a longer one is `too_large()`, whatever its
/// announced length.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
    too_large: impl Fn() -> GatewayError,
) -> Result<Vec<u8>, GatewayError> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Largest bill download read (compressed, as it comes).
pub const MAX_BILL_BYTES: usize = 64 * 1024 * 1024;

/// A bill URL a gateway handed out, checked: one that is not absolute http(s) is the
/// permanent `invalid_url`.
pub fn bill_url(text: &str) -> Result<reqwest::Url, GatewayError> {
    absolute_url(text).ok_or_else(|| {
        GatewayError::permanent(
            "invalid_url",
            format!("bill URL {:?} is not an absolute http(s) URL", echo(text)),
        )
    })
}

/// Sends a download `request` (a bill file) and reads its body, at most
/// [`MAX_BILL_BYTES`], within `timeout`: an answer other than 2xx is a retryable
/// `http_<status>`, a longer body the permanent `bill_too_large`, no answer in time the
/// retryable `timeout`.
pub async fn download(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Vec<u8>, GatewayError> {
    let fetch = async {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, "bill download"));
        }
        read_capped(response, MAX_BILL_BYTES, || {
            GatewayError::permanent(
                "bill_too_large",
                format!("bill download exceeds {MAX_BILL_BYTES} bytes"),
            )
        })
        .await
    };
    within(timeout, "the bill download", fetch).await
}

/// Runs `call` within `timeout`; past it, a retryable `timeout` naming `what`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::retryable(
            "timeout",
            format!("{what} not complete within {timeout:?}"),
        )),
    }
}

/// An absolute `http`/`https` URL with a host, or None.
pub fn absolute_url(text: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// Gateway-supplied text, shortened for an error message, control characters escaped
/// ([`order_closer_core::text::shortened`]): such messages reach the operator's terminal.
pub fn echo(text: &str) -> String {
    order_closer_core::text::shortened(text, MAX_ECHO)
}
