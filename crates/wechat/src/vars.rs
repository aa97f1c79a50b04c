//! The environment variables WeChat Pay is configured by, by name: what the configuration reads
//! (`config.rs`), what a client names in its errors (`client.rs`), and what the registry and
//! the docs check, from one list.

/// The merchant id: requests, notifications and bills name it.
pub const MCH_ID: &str = "WECHAT_MCH_ID";

/// Every variable WeChat Pay reads.
pub const VARIABLES: &[&str] = &[
    "WECHAT_GATEWAY_URL",
    MCH_ID,
    "WECHAT_MCH_SERIAL",
    "WECHAT_MCH_PRIVATE_KEY",
    "WECHAT_MCH_PRIVATE_KEY_FILE",
    "WECHAT_PUBLIC_KEY",
    "WECHAT_PUBLIC_KEY_ID",
    "WECHAT_PLATFORM_CERTS",
    "WECHAT_API_V3_KEY",
    "WECHAT_API_V3_KEY_FILE",
    "WECHAT_TIMEOUT",
    "WECHAT_RATE_LIMIT",
    "WECHAT_RETRY_STEPS",
];
