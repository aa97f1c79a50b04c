//! Issue 21, trades (an order's payment attempts), against PostgreSQL: the migration that
//! turns every order of the previous release into an order with one trade (and its down
//! step), the guard `orders.open_trades` kept by the trigger `trades_count_open` with the
//! CHECK `orders_closed_has_no_open_trade` behind it, the race between a trade being added
//! and a worker closing the order (in both orders, with two connections and a verdict
//! that never depends on timing), and `Closer::add_trade` with the create calls that make
//! a first trade or none.
//!
//! Each test runs in a schema of its own (`DATABASE_URL`, or the local test database),
//! dropped at the end whether the test passed or not.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;
use order_closer_core::closer::{
    Closer, CreateError, Due, EXPIRY_MARGIN, InvalidOrder, NewOrder, NewTrade, TradeError,
};
use order_closer_core::db::schema::{orders, trades as trades_table};
use order_closer_core::db::trades::{self, NewTradeRow, TradeMove};
use order_closer_core::db::{self, DbPool};
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::rules::{Channels, OrderRules};
use order_closer_core::trade::{Trade, TradeStatus};

// ---------------------------------------------------------------------------------------
// The channels: two CNY gateways as the product has, and a third that takes only HKD (so
// that an order's currency can be one some channel takes and another does not).

const ALIPAY: OrderRules = OrderRules {
    channel: "alipay",
    currencies: &["CNY"],
    min_out_trade_no: 1,
    max_out_trade_no: 64,
    out_trade_no_extra_chars: "_-",
    max_amount_minor: 10_000_000_000,
};
const WECHAT: OrderRules = OrderRules {
    channel: "wechat",
    currencies: &["CNY"],
    min_out_trade_no: 6,
    max_out_trade_no: 32,
    out_trade_no_extra_chars: "_-|*@",
    max_amount_minor: 10_000_000_000,
};
const HKPAY: OrderRules = OrderRules {
    channel: "hkpay",
    currencies: &["HKD"],
    min_out_trade_no: 1,
    max_out_trade_no: 32,
    out_trade_no_extra_chars: "-",
    max_amount_minor: 50_000,
};
const CHANNELS: Channels = Channels::new(&[&ALIPAY, &WECHAT, &HKPAY]);

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// A schema per test.

/// The schema a test runs in. Every connection to it carries the schema's name as its
/// `application_name`, so that the clean-up can end whatever a failed test left open.
struct Schema {
    name: String,
    /// The server's URL (no search path).
    base_url: String,
    /// The URL whose connections live in the schema.
    url: String,
}

impl Schema {
    async fn conn(&self) -> AsyncPgConnection {
        db::connect(&self.url)
            .await
            .expect("a connection to the test schema")
    }

    fn pool(&self, size: usize) -> DbPool {
        db::pool(&self.url, size).expect("a pool on the test schema")
    }

    fn closer(&self) -> Closer {
        Closer::without_broker(self.pool(4), CHANNELS)
    }
}

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// Longest a test may run: a hang (a lock never released) fails the test, and the schema
/// is still dropped. Verdicts never depend on it.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn base_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres:postgres@127.0.0.1:5432/order_closer_test".into())
}

/// Runs `test` in a fresh schema (migrated when `migrate`), then drops the schema, also
/// when the test panicked or hung (the panic is passed on afterwards).
async fn in_schema<F, Fut>(name: &str, migrate: bool, test: F)
where
    F: FnOnce(Schema) -> Fut,
    Fut: Future<Output = ()>,
{
    let base_url = base_url();
    db::ensure_database(&base_url)
        .await
        .expect("the test database");
    let n = SCHEMAS.fetch_add(1, Ordering::SeqCst);
    let name = format!("trades_{name}_{}_{n}", std::process::id());
    db::create_schema(&base_url, &name)
        .await
        .expect("the test schema");
    let url = db::conninfo::with_param(
        &db::with_search_path(&base_url, &name),
        "application_name",
        &name,
    );
    let schema = Schema {
        name: name.clone(),
        base_url: base_url.clone(),
        url,
    };
    let outcome = AssertUnwindSafe(async move {
        if migrate {
            db::migrate(&schema.url).await.expect("migrations");
        }
        tokio::time::timeout(TEST_TIMEOUT, test(schema)).await
    })
    .catch_unwind()
    .await;
    drop_schema(&base_url, &name).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the test did not finish within {TEST_TIMEOUT:?}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Ends the schema's connections (a failed test may have left a transaction open, whose
/// locks would hold the drop up), then drops it.
async fn drop_schema(base_url: &str, schema: &str) {
    match db::connect(base_url).await {
        Ok(mut conn) => {
            let ended = diesel::sql_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind::<Text, _>(schema)
            .execute(&mut conn)
            .await;
            if let Err(e) = ended {
                eprintln!("could not end the connections of {schema}: {e}");
            }
        }
        Err(e) => eprintln!("could not end the connections of {schema}: {e}"),
    }
    if let Err(e) = db::drop_schema(base_url, schema).await {
        eprintln!("could not drop schema {schema}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Reading rows.

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    text: String,
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

async fn text(conn: &mut AsyncPgConnection, sql: &str) -> String {
    diesel::sql_query(sql)
        .get_result::<One>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .text
}

async fn backend_pid(conn: &mut AsyncPgConnection) -> i32 {
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .await
        .unwrap()
        .pid
}

/// The order's status and its count of open trades.
async fn order_state(conn: &mut AsyncPgConnection, id: i64) -> (String, i32) {
    orders::table
        .find(id)
        .select((orders::status, orders::open_trades))
        .first(conn)
        .await
        .unwrap()
}

async fn open_trades(conn: &mut AsyncPgConnection, id: i64) -> i32 {
    order_state(conn, id).await.1
}

/// What the previous release's worker would read of an order: its channel and gateway
/// reference (columns the diesel schema leaves out).
#[derive(QueryableByName, Debug, PartialEq, Eq)]
struct LegacyColumns {
    #[diesel(sql_type = Nullable<Text>)]
    channel: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    gateway_ref: Option<String>,
}

async fn legacy_columns(conn: &mut AsyncPgConnection, id: i64) -> LegacyColumns {
    diesel::sql_query("SELECT channel, gateway_ref FROM orders WHERE id = $1")
        .bind::<BigInt, _>(id)
        .get_result(conn)
        .await
        .unwrap()
}

fn after_hour() -> Due {
    Due::After(HOUR)
}

/// Creates an order without a trade (due in an hour), returning it.
async fn order_without_trade(closer: &Closer, no: &str) -> Order {
    closer
        .create_order(NewOrder::without_trade(no, 1_000, "CNY", after_hour()))
        .await
        .unwrap_or_else(|e| panic!("creating {no}: {e}"))
        .order
}

// ---------------------------------------------------------------------------------------
// Migrations one by one.

const TRADES_MIGRATION: &str = "trades";

enum Migrations {
    /// Every migration before `trades`.
    BeforeTrades,
    /// The `trades` migration: the upgrade from the release before it (the migrations of
    /// later releases add tables of their own, which are not this test's).
    Trades,
    /// The `trades` migration's down step.
    RevertTrades,
}

/// Drives the migration harness as `db::migrate` does (on a blocking thread); the error's
/// text on failure.
async fn migrations(url: &str, step: Migrations) -> Result<Vec<String>, String> {
    use diesel::migration::MigrationSource;
    use diesel_migrations::MigrationHarness;

    let conn = db::connect(url).await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let mut all = MigrationSource::<diesel::pg::Pg>::migrations(&db::MIGRATIONS)
            .map_err(|e| e.to_string())?;
        all.sort_by_key(|m| m.name().to_string());
        match step {
            Migrations::BeforeTrades => {
                // Creates the table of applied migrations, as running the pending ones
                // would.
                harness.applied_migrations().map_err(|e| e.to_string())?;
                let mut ran = Vec::new();
                for m in all
                    .iter()
                    .take_while(|m| !m.name().to_string().ends_with(TRADES_MIGRATION))
                {
                    harness
                        .run_migration(m.as_ref())
                        .map_err(|e| format!("{}: {e}", m.name()))?;
                    ran.push(m.name().to_string());
                }
                Ok(ran)
            }
            Migrations::Trades => {
                let trades = all
                    .iter()
                    .find(|m| m.name().to_string().ends_with(TRADES_MIGRATION))
                    .ok_or("no trades migration")?;
                harness
                    .run_migration(trades.as_ref())
                    .map(|v| vec![v.to_string()])
                    .map_err(|e| e.to_string())
            }
            Migrations::RevertTrades => {
                let trades = all
                    .iter()
                    .find(|m| m.name().to_string().ends_with(TRADES_MIGRATION))
                    .ok_or("no trades migration")?;
                harness
                    .revert_migration(trades.as_ref())
                    .map(|v| vec![v.to_string()])
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await
    .map_err(|e| format!("migration task: {e}"))?
}

/// The schema's shape: every relation, column (type, nullability, default), constraint,
/// index, trigger and function, one per line, sorted.
async fn shape(conn: &mut AsyncPgConnection) -> Vec<String> {
    let lines = text(
        conn,
        "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
         SELECT string_agg(line, E'\\n' ORDER BY line) AS text FROM (
             SELECT format('relation %s %s', c.relname, c.relkind) AS line
             FROM pg_class c, ns WHERE c.relnamespace = ns.oid
             UNION ALL
             SELECT format('column %s.%s %s nullable=%s default=%s', table_name, column_name,
                           data_type, is_nullable, coalesce(column_default, '-'))
             FROM information_schema.columns WHERE table_schema = current_schema()
             UNION ALL
             SELECT format('constraint %s.%s %s', k.conrelid::regclass, k.conname,
                           pg_get_constraintdef(k.oid))
             FROM pg_constraint k, ns WHERE k.connamespace = ns.oid
             UNION ALL
             SELECT format('index %s', indexdef) FROM pg_indexes
             WHERE schemaname = current_schema()
             UNION ALL
             SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass)
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid, ns
             WHERE c.relnamespace = ns.oid AND NOT t.tgisinternal
             UNION ALL
             SELECT format('function %s', p.proname) FROM pg_proc p, ns
             WHERE p.pronamespace = ns.oid
         ) lines",
    )
    .await;
    lines.lines().map(str::to_owned).collect()
}

/// Asserts two shapes are the same, naming the lines that differ.
#[track_caller]
fn assert_same_shape(got: &[String], want: &[String], what: &str) {
    let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == want.len(),
        "{what}: missing {missing:#?}, extra {extra:#?}"
    );
}

/// The rows the previous release wrote: orders (those numbered `OLD-...`), refunds and
/// anomalies, every column, as JSON.
async fn old_rows(conn: &mut AsyncPgConnection) -> String {
    text(
        conn,
        "SELECT concat_ws(E'\\n',
             (SELECT json_agg(o ORDER BY o.id) FROM orders o WHERE o.out_trade_no LIKE 'OLD-%'),
             (SELECT json_agg(r ORDER BY r.id) FROM refunds r),
             (SELECT json_agg(a ORDER BY a.id) FROM anomalies a)) AS text",
    )
    .await
}

// ---------------------------------------------------------------------------------------
// 1. The upgrade.

/// What happened to an order of the previous release after it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Later {
    /// Nothing.
    Nothing,
    /// A `paid_after_close` anomaly and a refund never sent (amount and number NULL).
    AnomalyAndRefundNeverSent,
    /// A refund sent and succeeded, without an anomaly row.
    RefundSent,
}

/// An order as the previous release stored it, and the trade it must become.
#[derive(Debug, Clone)]
struct OldOrder {
    id: i64,
    no: String,
    channel: &'static str,
    status: &'static str,
    gateway_ref: Option<String>,
    gateway_trade_no: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
    close_reason: Option<&'static str>,
    /// Another anomaly about it (kind).
    anomaly: Option<&'static str>,
    later: Later,
    /// The trade it becomes.
    trade_status: TradeStatus,
}

/// Adds an order of the previous release to `all`: created ten minutes after the one
/// before it, due fifteen minutes later, paid or closed as its status says.
fn old_order<'a>(
    all: &'a mut Vec<OldOrder>,
    channel: &'static str,
    what: &str,
    status: &'static str,
    trade_status: TradeStatus,
) -> &'a mut OldOrder {
    let base: DateTime<Utc> = "2026-12-01T08:00:00Z".parse().unwrap();
    let created_at = base + chrono::Duration::minutes(10 * all.len() as i64);
    let deadline = created_at + chrono::Duration::minutes(15);
    let no = format!("OLD-{channel}-{what}");
    let paid = status == "PAID";
    let closed = status == "CLOSED";
    all.push(OldOrder {
        id: 0,
        gateway_trade_no: paid.then(|| format!("GW-{no}")),
        no,
        channel,
        status,
        gateway_ref: None,
        created_at,
        updated_at: created_at + chrono::Duration::minutes(1),
        deadline,
        paid_at: paid.then(|| created_at + chrono::Duration::minutes(5)),
        closed_at: closed.then(|| deadline + chrono::Duration::seconds(2)),
        close_reason: closed.then_some("deadline_closed_by_us"),
        anomaly: None,
        later: Later::Nothing,
        trade_status,
    });
    all.last_mut().expect("just pushed")
}

/// The previous release's orders: each state on both channels, paid after close (with an
/// anomaly and a refund never sent, or a refund sent only), with a gateway reference.
fn old_orders() -> Vec<OldOrder> {
    use TradeStatus::{Closed, Open, Paid};
    let mut all = Vec::new();
    for channel in ["alipay", "wechat"] {
        old_order(&mut all, channel, "new", "NEW", Open);
        old_order(&mut all, channel, "paid", "PAID", Paid);
        old_order(&mut all, channel, "closed", "CLOSED", Closed);
        old_order(&mut all, channel, "late", "CLOSED", Paid).later =
            Later::AnomalyAndRefundNeverSent;
        let refunded = old_order(&mut all, channel, "refunded", "CLOSED", Paid);
        refunded.later = Later::RefundSent;
        refunded.gateway_trade_no = Some(format!("GW-{}", refunded.no));
    }
    old_order(&mut all, "wechat", "ref", "NEW", Open).gateway_ref = Some("pi_3Nwechat".into());
    let paid_ref = old_order(&mut all, "alipay", "ref", "PAID", Paid);
    paid_ref.gateway_ref = Some("pi_3Nalipay".into());
    paid_ref.anomaly = Some("amount_mismatch");
    all
}

/// Writes the orders (and their anomalies and refunds) as the previous release did.
async fn seed_old_release(conn: &mut AsyncPgConnection, old: &mut [OldOrder]) {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    for o in old.iter_mut() {
        o.id = diesel::sql_query(
            "INSERT INTO orders (out_trade_no, channel, amount_minor, currency, status, deadline,
                                 created_at, updated_at, paid_at, closed_at, gateway_trade_no,
                                 close_reason, gateway_ref)
             VALUES ($1, $2, 1234, 'CNY', $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING id",
        )
        .bind::<Text, _>(&o.no)
        .bind::<Text, _>(o.channel)
        .bind::<Text, _>(o.status)
        .bind::<Timestamptz, _>(o.deadline)
        .bind::<Timestamptz, _>(o.created_at)
        .bind::<Timestamptz, _>(o.updated_at)
        .bind::<Nullable<Timestamptz>, _>(o.paid_at)
        .bind::<Nullable<Timestamptz>, _>(o.closed_at)
        .bind::<Nullable<Text>, _>(o.gateway_trade_no.as_deref())
        .bind::<Nullable<Text>, _>(o.close_reason)
        .bind::<Nullable<Text>, _>(o.gateway_ref.as_deref())
        .get_result::<Id>(conn)
        .await
        .unwrap_or_else(|e| panic!("seeding {}: {e}", o.no))
        .id;
        let kinds = match o.later {
            Later::AnomalyAndRefundNeverSent => vec!["paid_after_close"],
            _ => vec![],
        };
        for kind in kinds.into_iter().chain(o.anomaly) {
            diesel::sql_query(
                "INSERT INTO anomalies (order_id, out_trade_no, kind, detail)
                 VALUES ($1, $2, $3, 'the previous release')",
            )
            .bind::<BigInt, _>(o.id)
            .bind::<Text, _>(&o.no)
            .bind::<Text, _>(kind)
            .execute(conn)
            .await
            .unwrap();
        }
        match o.later {
            Later::Nothing => {}
            // Migration 6's shape: never sent, so neither amount nor number yet.
            Later::AnomalyAndRefundNeverSent => {
                diesel::sql_query(
                    "INSERT INTO refunds (order_id, out_trade_no, status, attempts, requested_by)
                     VALUES ($1, $2, 'requested', 0, 'reconcile')",
                )
                .bind::<BigInt, _>(o.id)
                .bind::<Text, _>(&o.no)
                .execute(conn)
                .await
                .unwrap();
            }
            Later::RefundSent => {
                diesel::sql_query(
                    "INSERT INTO refunds (order_id, out_trade_no, out_request_no, amount_minor,
                                          status, attempts, requested_by, sent_at)
                     VALUES ($1, $2, 'RF-' || $3, 1234, 'succeeded', 1, 'operator', $4)",
                )
                .bind::<BigInt, _>(o.id)
                .bind::<Text, _>(&o.no)
                .bind::<Text, _>(o.gateway_trade_no.as_deref().unwrap_or_default())
                .bind::<Timestamptz, _>(o.updated_at)
                .execute(conn)
                .await
                .unwrap();
            }
        }
    }
    // An anomaly about no order of ours (a notification for an unknown number).
    diesel::sql_query(
        "INSERT INTO anomalies (order_id, out_trade_no, kind, detail)
         VALUES (NULL, 'GHOST-1', 'unknown_order', 'the previous release')",
    )
    .execute(conn)
    .await
    .unwrap();
}

/// Every order of the previous release has become one trade, carrying what it had.
async fn check_upgraded(conn: &mut AsyncPgConnection, old: &[OldOrder]) {
    #[derive(QueryableByName)]
    struct Upgraded {
        #[diesel(sql_type = Integer)]
        open_trades: i32,
        #[diesel(sql_type = Nullable<BigInt>)]
        paid_trade_id: Option<i64>,
        #[diesel(sql_type = Text)]
        status: String,
    }
    for o in old {
        let found = trades::for_order(conn, o.id).await.unwrap();
        assert_eq!(found.len(), 1, "{}: one trade per order: {found:?}", o.no);
        let t = &found[0];
        let expected = Trade {
            id: t.id,
            order_id: o.id,
            channel: o.channel.to_owned(),
            out_trade_no: o.no.clone(),
            gateway_ref: o.gateway_ref.clone(),
            status: o.trade_status,
            gateway_trade_no: o.gateway_trade_no.clone(),
            paid_minor: None,
            paid_at: o.paid_at,
            closed_at: o.closed_at,
            close_reason: o.close_reason.map(str::to_owned),
            created_at: o.created_at,
            updated_at: o.updated_at,
        };
        assert_eq!(t, &expected, "{}", o.no);
        let row: Upgraded = diesel::sql_query(
            "SELECT open_trades, paid_trade_id, status FROM orders WHERE id = $1",
        )
        .bind::<BigInt, _>(o.id)
        .get_result(conn)
        .await
        .unwrap();
        assert_eq!(row.status, o.status, "{}: the order's status is kept", o.no);
        let open = i32::from(o.trade_status == TradeStatus::Open);
        assert_eq!(row.open_trades, open, "{}: open_trades", o.no);
        let paid_by = (o.status == "PAID").then_some(t.id);
        assert_eq!(row.paid_trade_id, paid_by, "{}: paid_trade_id", o.no);
        let legacy = legacy_columns(conn, o.id).await;
        assert_eq!(
            legacy,
            LegacyColumns {
                channel: Some(o.channel.to_owned()),
                gateway_ref: o.gateway_ref.clone(),
            },
            "{}: the previous release's columns stay for its workers",
            o.no
        );
    }

    // Refunds are keyed by their order's trade, and kept as they were.
    #[derive(QueryableByName, Debug, PartialEq, Eq)]
    struct RefundRow {
        #[diesel(sql_type = Text)]
        out_trade_no: String,
        #[diesel(sql_type = Bool)]
        own_trade: bool,
        #[diesel(sql_type = Nullable<BigInt>)]
        amount_minor: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        out_request_no: Option<String>,
    }
    let refunds: Vec<RefundRow> = diesel::sql_query(
        "SELECT r.out_trade_no, t.order_id = r.order_id AND t.out_trade_no = r.out_trade_no
                AS own_trade, r.amount_minor, r.out_request_no
         FROM refunds r JOIN trades t ON t.id = r.trade_id ORDER BY r.id",
    )
    .load(conn)
    .await
    .unwrap();
    let mut expected_refunds = Vec::new();
    for o in old {
        match o.later {
            Later::Nothing => {}
            Later::AnomalyAndRefundNeverSent => expected_refunds.push(RefundRow {
                out_trade_no: o.no.clone(),
                own_trade: true,
                amount_minor: None,
                out_request_no: None,
            }),
            Later::RefundSent => expected_refunds.push(RefundRow {
                out_trade_no: o.no.clone(),
                own_trade: true,
                amount_minor: Some(1234),
                out_request_no: Some(format!("RF-GW-{}", o.no)),
            }),
        }
    }
    assert_eq!(refunds, expected_refunds);
    assert_eq!(
        count(conn, "SELECT count(*) AS n FROM refunds").await,
        refunds.len() as i64
    );

    // Anomalies name their order's trade; one about no order names none.
    #[derive(QueryableByName, Debug, PartialEq, Eq)]
    struct AnomalyRow {
        #[diesel(sql_type = Text)]
        out_trade_no: String,
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = Nullable<Bool>)]
        own_trade: Option<bool>,
    }
    let anomalies: Vec<AnomalyRow> = diesel::sql_query(
        "SELECT a.out_trade_no, a.kind,
                (SELECT t.order_id = a.order_id FROM trades t WHERE t.id = a.trade_id) AS own_trade
         FROM anomalies a ORDER BY a.id",
    )
    .load(conn)
    .await
    .unwrap();
    let mut expected_anomalies = Vec::new();
    for o in old {
        let late = (o.later == Later::AnomalyAndRefundNeverSent).then_some("paid_after_close");
        for kind in late.into_iter().chain(o.anomaly) {
            expected_anomalies.push(AnomalyRow {
                out_trade_no: o.no.clone(),
                kind: kind.to_owned(),
                own_trade: Some(true),
            });
        }
    }
    expected_anomalies.push(AnomalyRow {
        out_trade_no: "GHOST-1".into(),
        kind: "unknown_order".into(),
        own_trade: None,
    });
    assert_eq!(anomalies, expected_anomalies);
}

/// The previous release's orders become orders with one trade each, losing nothing; the
/// down step gives the previous shape and rows back while every order has exactly one
/// trade, and refuses (changing nothing) when an order has none or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_turns_every_order_into_one_trade_and_the_down_step_undoes_it() {
    in_schema("upgrade", false, |s| async move {
        let before = migrations(&s.url, Migrations::BeforeTrades).await.unwrap();
        assert!(
            before.len() >= 6 && before.iter().all(|m| !m.ends_with(TRADES_MIGRATION)),
            "{before:?}"
        );
        let mut conn = s.conn().await;
        let mut old = old_orders();
        seed_old_release(&mut conn, &mut old).await;
        let old_shape = shape(&mut conn).await;
        let rows_before = old_rows(&mut conn).await;
        drop(conn);

        let ran = migrations(&s.url, Migrations::Trades).await.unwrap();
        assert_eq!(ran.len(), 1, "the trades migration ran: {ran:?}");
        let mut conn = s.conn().await;
        check_upgraded(&mut conn, &old).await;
        let upgraded = shape(&mut conn).await;
        for line in [
            "relation trades r",
            "column orders.open_trades integer nullable=NO default=0",
            "column orders.paid_trade_id bigint nullable=YES",
            // The default stays: a writer of the previous contract that leaves `channel`
            // out still gets its first trade at that gateway.
            "column orders.channel text nullable=YES default='alipay'::text",
            "trigger orders_first_trade on orders",
            "column refunds.trade_id bigint nullable=NO",
            "column anomalies.trade_id bigint nullable=YES",
            "constraint orders.orders_closed_has_no_open_trade CHECK",
            "constraint refunds.refunds_trade_id_key UNIQUE (trade_id)",
            "trigger trades_count_open on trades",
            "function trades_count_open",
        ] {
            assert!(
                upgraded.iter().any(|l| l.starts_with(line)),
                "{line:?} not in {upgraded:#?}"
            );
        }

        // Orders of the new release with exactly one trade: one made in the one-call form,
        // one without a trade that got one.
        let closer = s.closer();
        let one_call = closer
            .create_order(NewOrder::new("alipay", "NEW-ONE-CALL", 500, after_hour()))
            .await
            .unwrap()
            .order;
        let added = order_without_trade(&closer, "NEW-ADDED").await;
        closer
            .add_trade(
                "NEW-ADDED",
                NewTrade::new("wechat", "NEW-ADDED-W").with_gateway_ref("pi_added"),
            )
            .await
            .unwrap();
        drop(closer);
        drop(conn);

        // Down: the previous shape and rows exactly; the new orders keep their gateway in
        // the columns the previous release reads.
        let reverted = migrations(&s.url, Migrations::RevertTrades).await.unwrap();
        assert_eq!(reverted.len(), 1);
        let mut conn = s.conn().await;
        assert_same_shape(&shape(&mut conn).await, &old_shape, "the previous shape");
        assert_eq!(old_rows(&mut conn).await, rows_before, "the previous rows");
        for (id, channel, gateway_ref) in [
            (one_call.id, "alipay", None),
            (added.id, "wechat", Some("pi_added")),
        ] {
            assert_eq!(
                legacy_columns(&mut conn, id).await,
                LegacyColumns {
                    channel: Some(channel.into()),
                    gateway_ref: gateway_ref.map(str::to_owned),
                }
            );
        }
        drop(conn);

        // Up again, as before.
        let ran = migrations(&s.url, Migrations::Trades).await.unwrap();
        assert_eq!(ran.len(), 1);
        let mut conn = s.conn().await;
        check_upgraded(&mut conn, &old).await;
        let upgraded_shape = shape(&mut conn).await;

        // An order without a trade: the down step refuses, and changes nothing.
        let closer = s.closer();
        let bare = order_without_trade(&closer, "NEW-BARE").await;
        let refused = migrations(&s.url, Migrations::RevertTrades)
            .await
            .expect_err("the down step must refuse an order without a trade");
        assert!(refused.contains("no trade or several trades"), "{refused}");
        assert_same_shape(&shape(&mut conn).await, &upgraded_shape, "nothing reverted");
        check_upgraded(&mut conn, &old).await;
        assert_eq!(order_state(&mut conn, bare.id).await, ("NEW".into(), 0));

        // One trade for it: expressible again. A second: refused again.
        closer
            .add_trade("NEW-BARE", NewTrade::new("alipay", "NEW-BARE"))
            .await
            .unwrap();
        closer
            .add_trade("NEW-BARE", NewTrade::new("wechat", "NEW-BARE"))
            .await
            .unwrap();
        let refused = migrations(&s.url, Migrations::RevertTrades)
            .await
            .expect_err("the down step must refuse an order with two trades");
        assert!(refused.contains("no trade or several trades"), "{refused}");
        assert_same_shape(&shape(&mut conn).await, &upgraded_shape, "nothing reverted");
        check_upgraded(&mut conn, &old).await;
        assert_eq!(
            trades::for_order(&mut conn, bare.id).await.unwrap().len(),
            2
        );
        assert_eq!(order_state(&mut conn, bare.id).await, ("NEW".into(), 2));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. The guard.

const GUARDED_CLOSE: &str = "UPDATE orders SET status = 'CLOSED', closed_at = now(),
                                 close_reason = 'deadline_closed_by_us', updated_at = now()
                             WHERE id = $1 AND status = 'NEW' AND open_trades = 0";

async fn guarded_close(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<usize> {
    diesel::sql_query(GUARDED_CLOSE)
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await
}

fn is_check_violation(e: &diesel::result::Error, constraint: &str) -> bool {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::CheckViolation,
            info,
        ) => info.constraint_name() == Some(constraint),
        _ => false,
    }
}

async fn add_row(conn: &mut AsyncPgConnection, order_id: i64, channel: &str, no: &str) -> Trade {
    let row = NewTradeRow {
        channel,
        out_trade_no: no,
        gateway_ref: None,
    };
    trades::insert(conn, order_id, row).await.unwrap()
}

fn paid(no: &str) -> TradeMove {
    TradeMove::Paid {
        gateway_trade_no: format!("GW-{no}"),
        paid_minor: 1_000,
        paid_at: None,
    }
}

const CLOSED_BY_US: TradeMove = TradeMove::Closed {
    reason: "deadline_closed_by_us",
};

/// An order with an open trade cannot be CLOSED: the guarded update matches nothing, and
/// an update without the guard breaks the CHECK. The trigger counts open trades as they
/// are added and as each one moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_an_open_trade_cannot_be_closed_and_the_trigger_counts_them() {
    in_schema("guard", true, |s| async move {
        let closer = s.closer();
        let o = order_without_trade(&closer, "G-1").await;
        let mut conn = s.conn().await;
        assert_eq!(open_trades(&mut conn, o.id).await, 0);

        let t1 = add_row(&mut conn, o.id, "alipay", "G-1").await;
        assert_eq!(t1.status, TradeStatus::Open);
        assert_eq!(open_trades(&mut conn, o.id).await, 1, "insert counts");
        let t2 = add_row(&mut conn, o.id, "wechat", "G-1-wx").await;
        let t3 = add_row(&mut conn, o.id, "alipay", "G-1-b").await;
        assert_eq!(open_trades(&mut conn, o.id).await, 3);

        // The guard: the condition matches nothing; without it, the CHECK refuses.
        assert_eq!(guarded_close(&mut conn, o.id).await.unwrap(), 0);
        let unguarded = diesel::sql_query("UPDATE orders SET status = 'CLOSED' WHERE id = $1")
            .bind::<BigInt, _>(o.id)
            .execute(&mut conn)
            .await
            .expect_err("the CHECK refuses a CLOSED order with open trades");
        assert!(
            is_check_violation(&unguarded, "orders_closed_has_no_open_trade"),
            "{unguarded:?}"
        );
        assert_eq!(order_state(&mut conn, o.id).await, ("NEW".into(), 3));

        // open -> closed
        let moved = trades::apply_moves(&mut conn, &[(t1.id, CLOSED_BY_US)])
            .await
            .unwrap();
        assert_eq!(moved, [t1.id]);
        assert_eq!(open_trades(&mut conn, o.id).await, 2, "open -> closed");
        // open -> paid
        let moved = trades::apply_moves(&mut conn, &[(t2.id, paid("G-1-wx"))])
            .await
            .unwrap();
        assert_eq!(moved, [t2.id]);
        assert_eq!(open_trades(&mut conn, o.id).await, 1, "open -> paid");
        // closed -> paid: it was not open, the count stays.
        let moved = trades::apply_moves(&mut conn, &[(t1.id, paid("G-1"))])
            .await
            .unwrap();
        assert_eq!(moved, [t1.id]);
        assert_eq!(open_trades(&mut conn, o.id).await, 1, "closed -> paid");
        // Moves a trade may not make move nothing, and count nothing.
        let moved = trades::apply_moves(&mut conn, &[(t2.id, CLOSED_BY_US)])
            .await
            .unwrap();
        assert!(moved.is_empty(), "paid -> closed is no move: {moved:?}");
        assert_eq!(open_trades(&mut conn, o.id).await, 1);
        // The last open one closed: the guarded close goes through.
        trades::apply_moves(&mut conn, &[(t3.id, CLOSED_BY_US)])
            .await
            .unwrap();
        assert_eq!(open_trades(&mut conn, o.id).await, 0, "open -> closed");
        assert_eq!(guarded_close(&mut conn, o.id).await.unwrap(), 1);
        assert_eq!(order_state(&mut conn, o.id).await, ("CLOSED".into(), 0));

        // A writer that reopens a trade of a CLOSED order is refused by the CHECK (the
        // trigger's count update breaks it), and a trade never moves to another order.
        let reopened = diesel::sql_query("UPDATE trades SET status = 'open' WHERE id = $1")
            .bind::<BigInt, _>(t3.id)
            .execute(&mut conn)
            .await
            .expect_err("a CLOSED order cannot have an open trade");
        assert!(
            is_check_violation(&reopened, "orders_closed_has_no_open_trade"),
            "{reopened:?}"
        );
        let other = order_without_trade(&closer, "G-2").await;
        let moved_away = diesel::sql_query("UPDATE trades SET order_id = $1 WHERE id = $2")
            .bind::<BigInt, _>(other.id)
            .bind::<BigInt, _>(t3.id)
            .execute(&mut conn)
            .await
            .expect_err("a trade never moves to another order");
        assert!(
            moved_away
                .to_string()
                .contains("never moves to another order"),
            "{moved_away}"
        );

        // The trigger counts whoever writes: several trades inserted by one statement,
        // and several moved by one statement.
        let g3 = order_without_trade(&closer, "G-3").await;
        diesel::sql_query(
            "INSERT INTO trades (order_id, channel, out_trade_no)
             SELECT $1, 'alipay', 'G-3-' || n FROM generate_series(1, 4) n",
        )
        .bind::<BigInt, _>(g3.id)
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(open_trades(&mut conn, g3.id).await, 4);
        let all = trades::for_order(&mut conn, g3.id).await.unwrap();
        let moves: Vec<(i64, TradeMove)> = all
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, t)| {
                (
                    t.id,
                    if i == 0 {
                        paid(&t.out_trade_no)
                    } else {
                        CLOSED_BY_US
                    },
                )
            })
            .collect();
        assert_eq!(
            trades::apply_moves(&mut conn, &moves).await.unwrap().len(),
            3
        );
        assert_eq!(open_trades(&mut conn, g3.id).await, 1);

        // `mark_closed` closes the open trades first, then the order, in one transaction;
        // an order no longer NEW keeps its trades as they are.
        let g4 = order_without_trade(&closer, "G-4").await;
        add_row(&mut conn, g4.id, "alipay", "G-4").await;
        add_row(&mut conn, g4.id, "wechat", "G-4-wx").await;
        conn.batch_execute("BEGIN").await.unwrap();
        let closed = db::orders::mark_closed(&mut conn, g4.id, "deadline_closed_by_us")
            .await
            .unwrap();
        conn.batch_execute("COMMIT").await.unwrap();
        assert!(closed);
        assert_eq!(order_state(&mut conn, g4.id).await, ("CLOSED".into(), 0));
        let g4_trades = trades::for_order(&mut conn, g4.id).await.unwrap();
        assert!(
            g4_trades.iter().all(|t| t.status == TradeStatus::Closed
                && t.close_reason.as_deref() == Some("deadline_closed_by_us")
                && t.closed_at.is_some()),
            "{g4_trades:?}"
        );
        let g5 = order_without_trade(&closer, "G-5").await;
        add_row(&mut conn, g5.id, "alipay", "G-5").await;
        diesel::sql_query("UPDATE orders SET status = 'PAID', paid_at = now() WHERE id = $1")
            .bind::<BigInt, _>(g5.id)
            .execute(&mut conn)
            .await
            .unwrap();
        assert!(
            !db::orders::mark_closed(&mut conn, g5.id, "deadline_closed_by_us")
                .await
                .unwrap()
        );
        assert_eq!(order_state(&mut conn, g5.id).await, ("PAID".into(), 1));
        let g5_trades = trades::for_order(&mut conn, g5.id).await.unwrap();
        assert_eq!(g5_trades[0].status, TradeStatus::Open);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. The race between adding a trade and closing the order.

/// How the worker's side closes the order.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// The guarded CLOSED update, by hand.
    GuardedUpdate,
    /// `db::orders::mark_closed` (its open trades closed, then the order, guarded).
    MarkClosed,
}

impl Closing {
    /// Closes the order inside the connection's open transaction; whether it did.
    async fn close(self, conn: &mut AsyncPgConnection, id: i64) -> bool {
        match self {
            Self::GuardedUpdate => guarded_close(conn, id).await.unwrap() == 1,
            Self::MarkClosed => db::orders::mark_closed(conn, id, "deadline_closed_by_us")
                .await
                .unwrap(),
        }
    }
}

/// Waits until a connection of this schema waits for a lock `holder` holds, and returns
/// its pid. Bounded: a connection that never waits fails the test (the interleaving under
/// test did not happen), it never decides its verdict.
async fn blocked_by(observer: &mut AsyncPgConnection, schema: &str, holder: i32) -> i32 {
    for _ in 0..6_000 {
        let waiting: Vec<Pid> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name = $1 AND wait_event_type = 'Lock'
               AND $2 = ANY (pg_blocking_pids(pid))",
        )
        .bind::<Text, _>(schema)
        .bind::<Integer, _>(holder)
        .load(observer)
        .await
        .unwrap();
        if let Some(w) = waiting.into_iter().next() {
            return w.pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no connection of {schema} ever waited for a lock held by {holder}");
}

/// (a) A trade is added (the order locked, the trade inserted) and not yet committed when
/// the worker closes the order: the worker's update waits for the order's row, then
/// matches nothing, and the order stays NEW with its open trade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_added_first_makes_the_concurrent_close_match_nothing() {
    in_schema("race_a", true, |s| async move {
        let closer = s.closer();
        let mut observer = db::connect(&s.base_url).await.unwrap();
        for (i, closing) in [Closing::GuardedUpdate, Closing::MarkClosed]
            .into_iter()
            .enumerate()
        {
            let no = format!("RACE-A-{i}");
            let o = order_without_trade(&closer, &no).await;

            let mut a = s.conn().await;
            let a_pid = backend_pid(&mut a).await;
            a.batch_execute("BEGIN").await.unwrap();
            let locked = trades::lock_order(&mut a, &no, 0.0)
                .await
                .unwrap()
                .expect("the order");
            assert_eq!((locked.id, locked.status.as_str()), (o.id, "NEW"));
            assert!(locked.before_margin);
            let trade = add_row(&mut a, o.id, "alipay", &no).await;

            let mut b = s.conn().await;
            let worker = tokio::spawn(async move {
                b.batch_execute("BEGIN").await.unwrap();
                let closed = closing.close(&mut b, o.id).await;
                b.batch_execute("COMMIT").await.unwrap();
                closed
            });
            blocked_by(&mut observer, &s.name, a_pid).await;
            assert!(
                !worker.is_finished(),
                "{closing:?}: the close waits for the trade"
            );

            a.batch_execute("COMMIT").await.unwrap();
            let closed = worker.await.unwrap();
            assert!(!closed, "{closing:?}: the close must match nothing");

            let mut conn = s.conn().await;
            assert_eq!(
                order_state(&mut conn, o.id).await,
                ("NEW".into(), 1),
                "{closing:?}"
            );
            let now = trades::for_order(&mut conn, o.id).await.unwrap();
            assert_eq!(now.len(), 1);
            assert_eq!((now[0].id, now[0].status), (trade.id, TradeStatus::Open));
        }
    })
    .await;
}

/// (b) The worker closes the order (it has no trade) and has not committed yet when the
/// shop adds a trade: `add_trade` waits for the order's row, then finds it CLOSED and
/// refuses, writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_first_makes_the_concurrent_add_trade_refused() {
    in_schema("race_b", true, |s| async move {
        let closer = s.closer();
        let mut observer = db::connect(&s.base_url).await.unwrap();
        // The shop's closer waits for the order's row as long as it takes: one pooled
        // connection, without the pool's lock and statement timeouts, so the verdict
        // never depends on how long the wait was.
        let shop_pool = s.pool(1);
        db::conn(&shop_pool)
            .await
            .unwrap()
            .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
            .await
            .unwrap();
        let shop = Closer::without_broker(shop_pool, CHANNELS);
        for (i, closing) in [Closing::GuardedUpdate, Closing::MarkClosed]
            .into_iter()
            .enumerate()
        {
            let no = format!("RACE-B-{i}");
            let o = order_without_trade(&closer, &no).await;

            let mut b = s.conn().await;
            let b_pid = backend_pid(&mut b).await;
            b.batch_execute("BEGIN").await.unwrap();
            assert!(closing.close(&mut b, o.id).await, "{closing:?}");

            let adding = {
                let shop = shop.clone();
                let no = no.clone();
                tokio::spawn(async move { shop.add_trade(&no, NewTrade::new("alipay", &no)).await })
            };
            blocked_by(&mut observer, &s.name, b_pid).await;
            assert!(
                !adding.is_finished(),
                "{closing:?}: add_trade waits for the close"
            );

            b.batch_execute("COMMIT").await.unwrap();
            let refused = adding.await.unwrap().expect_err("the order is CLOSED");
            assert!(
                matches!(
                    &refused,
                    TradeError::Settled { out_trade_no, status: OrderStatus::Closed }
                        if *out_trade_no == no
                ),
                "{closing:?}: {refused:?}"
            );
            assert_eq!(
                refused.to_string(),
                format!("order {no:?} is CLOSED already: no trade can be added")
            );

            let mut conn = s.conn().await;
            assert_eq!(order_state(&mut conn, o.id).await, ("CLOSED".into(), 0));
            assert!(trades::for_order(&mut conn, o.id).await.unwrap().is_empty());
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. Closer::add_trade and the create calls.

/// The refusal's text, asserting it names `words`.
fn assert_names(error: &TradeError, words: &[&str]) {
    let text = error.to_string();
    for word in words {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }
}

async fn trade_count(conn: &mut AsyncPgConnection) -> i64 {
    trades_table::table.count().get_result(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_trade_adds_an_open_trade_to_a_new_order_and_refuses_what_it_must() {
    in_schema("add_trade", true, |s| async move {
        let closer = s.closer();
        let mut conn = s.conn().await;
        let o = order_without_trade(&closer, "ADD-1").await;

        // Accepted: an open trade, and the expiry to give the gateway.
        let added = closer
            .add_trade("ADD-1", NewTrade::new("alipay", "ADD-1-A"))
            .await
            .unwrap();
        let margin = chrono::Duration::from_std(EXPIRY_MARGIN).unwrap();
        assert_eq!(added.expire_by, o.deadline - margin);
        let t = &added.trade;
        assert_eq!(
            (t.order_id, t.channel.as_str(), t.out_trade_no.as_str(), t.status),
            (o.id, "alipay", "ADD-1-A", TradeStatus::Open)
        );
        assert_eq!(t.gateway_ref, None);
        assert_eq!(
            trades::for_order(&mut conn, o.id).await.unwrap(),
            std::slice::from_ref(t)
        );
        assert_eq!(order_state(&mut conn, o.id).await, ("NEW".into(), 1));
        // Another margin, another expiry; a gateway reference is kept.
        let wider = closer.clone().with_expiry_margin(Duration::from_secs(90));
        let second = wider
            .add_trade(
                "ADD-1",
                NewTrade::new("wechat", "ADD-1-W").with_gateway_ref("pi_add_1"),
            )
            .await
            .unwrap();
        assert_eq!(second.expire_by, o.deadline - chrono::Duration::seconds(90));
        assert_eq!(second.trade.gateway_ref.as_deref(), Some("pi_add_1"));
        assert_eq!(open_trades(&mut conn, o.id).await, 2);

        let written = trade_count(&mut conn).await;
        let other = order_without_trade(&closer, "ADD-2").await;

        // Unknown order.
        let e = closer
            .add_trade("NO-SUCH-ORDER", NewTrade::new("alipay", "X-1"))
            .await
            .unwrap_err();
        assert!(matches!(&e, TradeError::NoOrder(n) if n == "NO-SUCH-ORDER"), "{e:?}");
        assert_names(&e, &["no order", "\"NO-SUCH-ORDER\""]);

        // Unknown channel.
        let e = closer
            .add_trade("ADD-2", NewTrade::new("paypal", "ADD-2"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::Invalid(InvalidOrder::UnknownChannel { channel, .. }) if channel == "paypal"),
            "{e:?}"
        );
        assert_names(&e, &["invalid trade", "unknown channel \"paypal\"", "alipay, wechat, hkpay"]);

        // A number the channel's rules refuse (a space; too short for wechat).
        let e = closer
            .add_trade("ADD-2", NewTrade::new("alipay", "ADD 2"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::Invalid(InvalidOrder::OutTradeNo { channel: "alipay", .. })),
            "{e:?}"
        );
        assert_names(&e, &["out_trade_no \"ADD 2\"", "channel alipay"]);
        let e = closer
            .add_trade("ADD-2", NewTrade::new("wechat", "A2"))
            .await
            .unwrap_err();
        assert_names(&e, &["out_trade_no \"A2\"", "6 to 32", "channel wechat"]);

        // A bad gateway reference.
        let e = closer
            .add_trade("ADD-2", NewTrade::new("alipay", "ADD-2").with_gateway_ref(""))
            .await
            .unwrap_err();
        assert_names(&e, &["gateway_ref"]);

        // The order's currency, which that channel does not take; nor its amount.
        let hkd = closer
            .create_order(NewOrder::without_trade("ADD-HKD", 1_000, "HKD", after_hour()))
            .await
            .unwrap()
            .order;
        let e = closer
            .add_trade("ADD-HKD", NewTrade::new("alipay", "ADD-HKD"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::Invalid(InvalidOrder::Currency { channel: "alipay", .. })),
            "{e:?}"
        );
        assert_names(&e, &["channel alipay takes currency CNY, got \"HKD\""]);
        closer
            .add_trade("ADD-HKD", NewTrade::new("hkpay", "ADD-HKD"))
            .await
            .unwrap();
        assert_eq!(open_trades(&mut conn, hkd.id).await, 1);
        closer
            .create_order(NewOrder::without_trade("ADD-HKD-BIG", 60_000, "HKD", after_hour()))
            .await
            .unwrap();
        let e = closer
            .add_trade("ADD-HKD-BIG", NewTrade::new("hkpay", "ADD-HKD-BIG"))
            .await
            .unwrap_err();
        assert_names(&e, &["single-payment limit", "hkpay"]);

        // A number that channel has already (on another order, or on this one); the same
        // number at the other channel is taken.
        for order_no in ["ADD-2", "ADD-1"] {
            let e = closer
                .add_trade(order_no, NewTrade::new("alipay", "ADD-1-A"))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, TradeError::Duplicate { channel, out_trade_no }
                    if channel == "alipay" && out_trade_no == "ADD-1-A"),
                "{e:?}"
            );
            assert_names(&e, &["channel alipay already has a trade numbered \"ADD-1-A\""]);
        }
        // A gateway reference that channel has already.
        let e = closer
            .add_trade(
                "ADD-2",
                NewTrade::new("wechat", "ADD-2-W").with_gateway_ref("pi_add_1"),
            )
            .await
            .unwrap_err();
        assert!(matches!(&e, TradeError::Duplicate { .. }), "{e:?}");
        assert_names(&e, &["channel wechat already has a trade"]);
        assert_eq!(trade_count(&mut conn).await, written + 1, "refusals write nothing");
        assert_eq!(open_trades(&mut conn, other.id).await, 0);
        let same_number = closer
            .add_trade("ADD-2", NewTrade::new("wechat", "ADD-1-A"))
            .await
            .unwrap();
        assert_eq!(
            (same_number.trade.order_id, same_number.trade.channel.as_str()),
            (other.id, "wechat")
        );
        assert_eq!(open_trades(&mut conn, other.id).await, 1);

        // Settled orders: PAID, CLOSED.
        let paid = order_without_trade(&closer, "ADD-PAID").await;
        diesel::sql_query("UPDATE orders SET status = 'PAID', paid_at = now() WHERE id = $1")
            .bind::<BigInt, _>(paid.id)
            .execute(&mut conn)
            .await
            .unwrap();
        let e = closer
            .add_trade("ADD-PAID", NewTrade::new("alipay", "ADD-PAID"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::Settled { status: OrderStatus::Paid, .. }),
            "{e:?}"
        );
        assert_names(&e, &["\"ADD-PAID\" is PAID already"]);
        let closed = order_without_trade(&closer, "ADD-CLOSED").await;
        assert!(
            db::orders::mark_closed(&mut conn, closed.id, "deadline_no_trade")
                .await
                .unwrap()
        );
        let e = closer
            .add_trade("ADD-CLOSED", NewTrade::new("alipay", "ADD-CLOSED"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::Settled { status: OrderStatus::Closed, .. }),
            "{e:?}"
        );
        assert_names(&e, &["\"ADD-CLOSED\" is CLOSED already"]);

        // Too late: the deadline is within the margin by the database's clock. The same
        // order takes a trade with the usual margin (its deadline is ten minutes away).
        let soon = closer
            .create_order(NewOrder::without_trade(
                "ADD-SOON",
                1_000,
                "CNY",
                Due::After(Duration::from_secs(600)),
            ))
            .await
            .unwrap()
            .order;
        let cautious = closer.clone().with_expiry_margin(HOUR);
        let e = cautious
            .add_trade("ADD-SOON", NewTrade::new("alipay", "ADD-SOON"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TradeError::TooLate { deadline, margin, .. }
                if *deadline == soon.deadline && *margin == HOUR),
            "{e:?}"
        );
        assert_names(&e, &["\"ADD-SOON\" is due at", "more than 3600s before its deadline"]);
        assert_eq!(open_trades(&mut conn, soon.id).await, 0);
        closer
            .add_trade("ADD-SOON", NewTrade::new("alipay", "ADD-SOON"))
            .await
            .unwrap();
        assert_eq!(open_trades(&mut conn, soon.id).await, 1);
    })
    .await;
}

/// The one-call form creates the order with one open trade numbered as the order; an
/// order without a trade has none; a batch does each as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_call_form_creates_one_open_trade_and_without_trade_none() {
    in_schema("create", true, |s| async move {
        let closer = s.closer();
        let mut conn = s.conn().await;

        let one = closer
            .create_order(NewOrder::new("wechat", "ONE-CALL-1", 1_500, after_hour()))
            .await
            .unwrap()
            .order;
        assert_eq!((one.currency.as_str(), one.paid_trade_id), ("CNY", None));
        let found = trades::for_order(&mut conn, one.id).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (
                found[0].channel.as_str(),
                found[0].out_trade_no.as_str(),
                found[0].status,
                found[0].gateway_ref.as_deref()
            ),
            ("wechat", "ONE-CALL-1", TradeStatus::Open, None)
        );
        assert_eq!(order_state(&mut conn, one.id).await, ("NEW".into(), 1));
        assert_eq!(
            legacy_columns(&mut conn, one.id).await,
            LegacyColumns {
                channel: Some("wechat".into()),
                gateway_ref: None
            }
        );

        let bare = closer
            .create_order(NewOrder::without_trade(
                "BARE-1",
                1_500,
                "CNY",
                after_hour(),
            ))
            .await
            .unwrap()
            .order;
        assert!(
            trades::for_order(&mut conn, bare.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(order_state(&mut conn, bare.id).await, ("NEW".into(), 0));
        assert_eq!(
            legacy_columns(&mut conn, bare.id).await,
            LegacyColumns {
                channel: None,
                gateway_ref: None
            }
        );

        // In the shop's own transaction too.
        conn.batch_execute("BEGIN").await.unwrap();
        let pending = closer
            .create_order_in(
                &mut conn,
                &NewOrder::new("alipay", "IN-TX-1", 700, after_hour()).with_gateway_ref("ref-tx"),
            )
            .await
            .unwrap();
        conn.batch_execute("COMMIT").await.unwrap();
        let found = trades::for_order(&mut conn, pending.order.id)
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].gateway_ref.as_deref(), Some("ref-tx"));
        assert_eq!(open_trades(&mut conn, pending.order.id).await, 1);

        // A batch of both forms.
        let batch = [
            NewOrder::new("alipay", "MIX-1", 100, after_hour()),
            NewOrder::without_trade("MIX-2", 200, "CNY", after_hour()),
            NewOrder::new("wechat", "MIX-WX-3", 300, after_hour()).with_gateway_ref("pi_mix_3"),
            NewOrder::without_trade("MIX-4", 400, "HKD", after_hour()),
        ];
        let created = closer.create_orders(&batch).await.unwrap();
        assert_eq!(created.len(), batch.len());
        let expected: [Option<(&str, Option<&str>)>; 4] = [
            Some(("alipay", None)),
            None,
            Some(("wechat", Some("pi_mix_3"))),
            None,
        ];
        for ((c, new), want) in created.iter().zip(&batch).zip(expected) {
            assert_eq!(c.order.out_trade_no, new.out_trade_no);
            let found = trades::for_order(&mut conn, c.order.id).await.unwrap();
            let got: Vec<(&str, &str, TradeStatus, Option<&str>)> = found
                .iter()
                .map(|t| {
                    (
                        t.channel.as_str(),
                        t.out_trade_no.as_str(),
                        t.status,
                        t.gateway_ref.as_deref(),
                    )
                })
                .collect();
            let want: Vec<(&str, &str, TradeStatus, Option<&str>)> = want
                .map(|(channel, gateway_ref)| {
                    (
                        channel,
                        new.out_trade_no.as_str(),
                        TradeStatus::Open,
                        gateway_ref,
                    )
                })
                .into_iter()
                .collect();
            assert_eq!(got, want, "{}", new.out_trade_no);
            let open = i32::from(!want.is_empty());
            assert_eq!(
                order_state(&mut conn, c.order.id).await,
                ("NEW".into(), open)
            );
        }

        // The order number of a one-call order may be used at the other gateway once.
        closer
            .add_trade("ONE-CALL-1", NewTrade::new("alipay", "ONE-CALL-1"))
            .await
            .unwrap();
        assert_eq!(open_trades(&mut conn, one.id).await, 2);
        // A one-call order whose number its channel's trades have already is refused as a
        // duplicate, and nothing of it is written.
        closer
            .add_trade("BARE-1", NewTrade::new("wechat", "TAKEN-NO"))
            .await
            .unwrap();
        let e = closer
            .create_order(NewOrder::new("wechat", "TAKEN-NO", 100, after_hour()))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CreateError::Duplicate(no) if no == "TAKEN-NO"),
            "{e:?}: {e}"
        );
        let e = closer
            .create_orders(&[
                NewOrder::new("alipay", "TAKEN-NO-2", 100, after_hour()),
                NewOrder::new("wechat", "TAKEN-NO", 100, after_hour()),
            ])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CreateError::Duplicate(no) if no == "TAKEN-NO"),
            "{e:?}: {e}"
        );
        assert!(
            db::orders::find_by_out_trade_no(&mut conn, "TAKEN-NO-2")
                .await
                .unwrap()
                .is_none(),
            "a batch is written whole or not at all"
        );
        assert!(
            db::orders::find_by_out_trade_no(&mut conn, "TAKEN-NO")
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}
