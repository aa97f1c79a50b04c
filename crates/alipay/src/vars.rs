//! The environment variables Alipay is configured by, by name: what the configuration reads
//! (`config.rs`), what a client names in its errors (`client.rs`), and what the registry and
//! the docs check, from one list.

/// The merchant's partner id: notifications and bills name it.
pub const SELLER_ID: &str = "ALIPAY_SELLER_ID";

/// Every variable Alipay reads.
pub const VARIABLES: &[&str] = &[
    "ALIPAY_GATEWAY_URL",
    "ALIPAY_APP_ID",
    SELLER_ID,
    "ALIPAY_APP_PRIVATE_KEY",
    "ALIPAY_APP_PRIVATE_KEY_FILE",
    "ALIPAY_PUBLIC_KEY",
    "ALIPAY_TIMEOUT",
    "ALIPAY_RATE_LIMIT",
    "ALIPAY_RETRY_STEPS",
];
