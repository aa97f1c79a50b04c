//! Alipay in the simulator: its bill writer (the rest of its wire protocol follows).

pub mod bill;
