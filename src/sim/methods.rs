//! The gateway methods the simulator serves, by their wire names (what a fault plan's
//! `methods` filter may name).

/// The methods the simulator implements (and that a [`FaultPlan::methods`] filter may name).
pub const SIM_METHODS: [&str; 4] = [
    "alipay.trade.query",
    "alipay.trade.close",
    REFUND_METHOD,
    BILL_URL_METHOD,
];

/// The refund method.
pub const REFUND_METHOD: &str = "alipay.trade.refund";

/// The method answering a bill download URL.
pub const BILL_URL_METHOD: &str = "alipay.data.dataservice.bill.downloadurl.query";
