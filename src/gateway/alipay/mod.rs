//! Alipay, classic OpenAPI (the reference gateway): keys, request signing, answer
//! extraction and classification, and the HTTP client implementing
//! [`Gateway`](crate::gateway::Gateway).

pub mod client;
pub mod keys;
pub mod notify;
pub mod response;
pub mod sign;

pub use client::{
    AlipayClient, AlipayConfig, ConfigError, DEFAULT_TIMEOUT, MAX_BODY_BYTES, VerifiedAnswer,
};
pub use keys::{AppPrivateKey, KeyError, RsaPublicKey};
pub use notify::AlipayNotify;
pub use response::{
    SplitResponse, classify_close, classify_query, classify_refund, extract_sign,
    extract_signed_object, format_china_time, parse_china_time, split_response,
};
pub use sign::{
    Param, notify_signing_content, sign_params, signing_content, verify_notify_params,
    verify_params,
};
