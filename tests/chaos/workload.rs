//! The chaos runs' workload: orders drawn from a seed, created by eight concurrent
//! "shops" through the library, and their buyers, who scan and pay at random moments
//! (some during the close), one order in five with two trades at two gateways.
//!
//! A shop meets the same faults as the worker (a restarted database, a broker node gone):
//! like a real shop's backend, it tries a failed call again; a call whose commit was lost
//! with its connection is found done on the next try.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use order_closer::closer::{Closer, CreateError, Due, NewOrder, NewTrade, TradeError};
use order_closer::sim::{BuyerClient, FaultKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::TestEnv;

/// One order in this many has two trades.
pub const TWO_TRADES_EVERY: usize = 5;
/// Steps in the runs' retry schedule (`ORDER_CLOSER_RETRY_STEPS`).
pub const RETRY_STEPS: u32 = 6;
/// Orders made to walk the whole retry schedule and be parked, per gateway.
pub const PARKED_ON_PURPOSE: usize = 10;
/// How long a shop keeps trying a call the database or the broker failed.
const SHOP_PATIENCE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Buyer {
    NeverScans,
    ScansOnly,
    PaysEarly,
    PaysDuringClose,
    PaysAtTheDeadline,
    /// Two trades, one at each gateway (the second at the next gateway), added and scanned
    /// one after the other; each paid as said (`[Pay::Never, Pay::Early]`: the buyer
    /// switched gateway and paid the second).
    TwoTrades([Pay; 2]),
}

/// When the buyer pays one trade of a two-trade order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pay {
    Never,
    /// Once both trades are scanned, before the deadline.
    Early,
    /// Just before the worker's close of that trade lands.
    DuringClose,
    /// Up to 1.5 s after the deadline: before or after the close, as it happens.
    AtTheDeadline,
}

impl Pay {
    fn draw(rng: &mut StdRng) -> Self {
        match rng.random_range(0..10) {
            0..=3 => Self::Never,
            4..=6 => Self::Early,
            7 => Self::DuringClose,
            _ => Self::AtTheDeadline,
        }
    }
}

/// One order of the run and its buyer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The order's gateway (its only trade's, or its first trade's).
    pub channel: &'static str,
    /// The second trade's gateway, for an order with two.
    pub second: &'static str,
    pub no: String,
    pub amount: i64,
    pub deadline: chrono::DateTime<Utc>,
    pub buyer: Buyer,
    /// When within the time to pay the buyer acts, 0..1.
    pub moment: f64,
}

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's orders, drawn from `seed`: deadlines spread over `spread` from 5 s on, the
/// gateways alternating. Some never-scanned orders on every gateway get more failed
/// answers than the retry schedule has attempts, so that the operator's path is walked:
/// returns the plans and how many were so designated.
pub async fn draw(env: &TestEnv, total: usize, spread: Duration, seed: u64) -> (Vec<Plan>, usize) {
    let first_deadline = Utc::now() + chrono::Duration::seconds(5);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plans = Vec::with_capacity(total);
    let channels = env.sim().channels();
    for i in 0..total {
        let offset = Duration::from_millis(rng.random_range(0..=spread.as_millis() as u64));
        let deadline = first_deadline + chrono::Duration::from_std(offset).unwrap();
        let roll: f64 = rng.random();
        let buyer = match roll {
            _ if i % TWO_TRADES_EVERY == TWO_TRADES_EVERY - 1 => {
                Buyer::TwoTrades([Pay::draw(&mut rng), Pay::draw(&mut rng)])
            }
            r if r < 0.10 => Buyer::PaysEarly,
            r if r < 0.20 => Buyer::PaysDuringClose,
            r if r < 0.30 => Buyer::PaysAtTheDeadline,
            r if r < 0.60 => Buyer::ScansOnly,
            _ => Buyer::NeverScans,
        };
        let moment: f64 = rng.random();
        // The orders alternate over every gateway the simulator speaks.
        plans.push(Plan {
            channel: channels[i % channels.len()],
            second: channels[(i + 1) % channels.len()],
            no: env.no(&format!("chaos{i:05}")),
            amount: rng.random_range(100..50_000i64),
            deadline,
            buyer,
            moment,
        });
    }
    // The operator's path is always walked: a few never-scanned orders get more failed
    // answers than the retry schedule has attempts, so they are parked
    // (`attempts_exhausted`) and must be settled by the requeue at the end.
    // On every gateway.
    let designated: Vec<String> = channels
        .iter()
        .flat_map(|channel| {
            plans
                .iter()
                .filter(move |p| p.channel == *channel && p.buyer == Buyer::NeverScans)
                .take(PARKED_ON_PURPOSE)
        })
        .map(|p| p.no.clone())
        .collect();
    let parked_on_purpose = designated.len();
    for no in &designated {
        // Far more failures than attempts, whatever redeliveries after a kill consume.
        env.buyers
            .fail_next(no, FaultKind::Busy20000, (RETRY_STEPS + 1) * 10)
            .await
            .unwrap();
    }
    (plans, parked_on_purpose)
}

/// Starts eight shops creating the planned orders (through `closer`) and their buyers;
/// the set ends when every buyer is done.
pub fn spawn_shops(
    closer: &Closer,
    buyers: &BuyerClient,
    plans: Arc<Vec<Plan>>,
    refused: &Arc<Refused>,
) -> tokio::task::JoinSet<()> {
    let mut shops = tokio::task::JoinSet::new();
    for shop in 0..8 {
        let refused = Arc::clone(refused);
        // Trades are added until the deadline itself (the run's deadlines are seconds).
        let closer = closer.clone().with_expiry_margin(Duration::ZERO);
        let buyers = buyers.clone();
        let plans = plans.clone();
        shops.spawn(async move {
            let mut buyer_tasks = Vec::new();
            for plan in plans.iter().skip(shop).step_by(8).cloned() {
                let Plan {
                    channel,
                    ref no,
                    amount,
                    deadline,
                    buyer,
                    moment,
                    ..
                } = plan;
                let new = match buyer {
                    Buyer::TwoTrades(_) => {
                        NewOrder::without_trade(no, amount, "CNY", Due::At(deadline))
                    }
                    _ => NewOrder::new(channel, no, amount, Due::At(deadline)),
                };
                create_order(&closer, new).await;
                let closer = closer.clone();
                let refused = Arc::clone(&refused);
                let buyers = buyers.at(channel);
                buyer_tasks.push(tokio::spawn(async move {
                    let no = &plan.no;
                    let until =
                        |at: chrono::DateTime<Utc>| (at - Utc::now()).to_std().unwrap_or_default();
                    let before = until(deadline).mul_f64(moment * 0.8);
                    let scan = || buyers.buyer(no).scans(amount).qr_valid_until(deadline);
                    // A buyer's request may meet the broker restart or a closed trade;
                    // what matters is what the simulator ends up saying.
                    match buyer {
                        Buyer::NeverScans => {}
                        Buyer::ScansOnly => {
                            tokio::time::sleep(before).await;
                            let _ = scan().send().await;
                        }
                        Buyer::PaysEarly => {
                            tokio::time::sleep(before).await;
                            if scan().send().await.is_ok() {
                                let _ = buyers.buyer(no).pays().send().await;
                            }
                        }
                        Buyer::PaysDuringClose => {
                            let _ = scan().send().await;
                            let _ = buyers.buyer(no).pays_on_close().send().await;
                        }
                        Buyer::PaysAtTheDeadline => {
                            let _ = scan().send().await;
                            let jitter = Duration::from_millis((moment * 1500.0) as u64);
                            tokio::time::sleep(until(deadline) + jitter).await;
                            let _ = buyers.buyer(no).pays().send().await;
                        }
                        Buyer::TwoTrades(pays) => {
                            two_trades(&closer, &buyers, &plan, pays, before, &refused).await;
                        }
                    }
                }));
            }
            for t in buyer_tasks {
                let _ = t.await;
            }
        });
    }
    shops
}

/// Creates an order, trying again while the database or the broker fails (a commit lost
/// with its connection shows as the order existing on the next try).
async fn create_order(closer: &Closer, new: NewOrder) {
    let give_up = tokio::time::Instant::now() + SHOP_PATIENCE;
    let mut failed_before = false;
    loop {
        match closer.create_order(new.clone()).await {
            Ok(_) => return,
            Err(CreateError::Duplicate(_)) if failed_before => return,
            Err(CreateError::Db(e)) if tokio::time::Instant::now() < give_up => {
                failed_before = true;
                tracing::debug!(error = %e, "create_order failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create order {}: {e}", new.out_trade_no),
        }
    }
}

/// Adds a trade, trying again while the database fails; the instant the trade must
/// expire by (`deadline` for one added by a try whose answer was lost), or why it was
/// refused.
async fn add_trade(
    closer: &Closer,
    no: &str,
    new: NewTrade,
    deadline: DateTime<Utc>,
) -> Result<DateTime<Utc>, TradeError> {
    let give_up = tokio::time::Instant::now() + SHOP_PATIENCE;
    let mut failed_before = false;
    loop {
        match closer.add_trade(no, new.clone()).await {
            Ok(added) => return Ok(added.expire_by),
            Err(TradeError::Duplicate { .. }) if failed_before => {
                // Added by the try whose answer was lost.
                return Ok(deadline);
            }
            Err(TradeError::Db(_)) if tokio::time::Instant::now() < give_up => {
                failed_before = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why the shop could not add trades, and how often.
pub type Refused = std::sync::Mutex<BTreeMap<String, usize>>;

/// The numbers of a two-trade order's trades: the gateways know trades by number alone.
pub fn trade_numbers(no: &str) -> [String; 2] {
    [format!("{no}-1"), format!("{no}-2")]
}

/// The buyer of an order with two trades: the shop adds each trade as the buyer picks its
/// gateway (a trade it cannot add, too late or the order settled, is never offered), the
/// buyer scans its code (valid until the deadline), then pays each as drawn.
async fn two_trades(
    closer: &Closer,
    buyers: &BuyerClient,
    plan: &Plan,
    pays: [Pay; 2],
    before: Duration,
    refused: &Refused,
) {
    let numbers = trade_numbers(&plan.no);
    let mut scanned = [false; 2];
    for (k, channel) in [plan.channel, plan.second].into_iter().enumerate() {
        tokio::time::sleep(before / 2).await;
        let added = match add_trade(
            closer,
            &plan.no,
            NewTrade::new(channel, &numbers[k]),
            plan.deadline,
        )
        .await
        {
            Ok(expire_by) => expire_by,
            Err(e) => {
                let why = match e {
                    TradeError::TooLate { .. } => "too late".to_owned(),
                    TradeError::Settled { status, .. } => format!("order {status}"),
                    other => other.to_string(),
                };
                *refused.lock().unwrap().entry(why).or_default() += 1;
                continue;
            }
        };
        scanned[k] = buyers
            .buyer(&numbers[k])
            .at(channel)
            .scans(plan.amount)
            .qr_valid_until(added)
            .send()
            .await
            .is_ok();
        if scanned[k] && pays[k] == Pay::DuringClose {
            let _ = buyers.buyer(&numbers[k]).pays_on_close().send().await;
        }
    }
    let numbers = &numbers;
    let pay = |when: Pay| async move {
        for k in 0..2 {
            if scanned[k] && pays[k] == when {
                let _ = buyers.buyer(&numbers[k]).pays().send().await;
            }
        }
    };
    pay(Pay::Early).await;
    if pays.contains(&Pay::AtTheDeadline) {
        let jitter = Duration::from_millis((plan.moment * 1500.0) as u64);
        let until = (plan.deadline - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(until + jitter).await;
        pay(Pay::AtTheDeadline).await;
    }
}
