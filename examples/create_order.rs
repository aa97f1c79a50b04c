//! Creating an order from a shop's backend, in two ways.
//!
//! Runs against the local services (`scripts/services.sh` starts them):
//!
//! ```sh
//! cargo run --example create_order
//! ```

use secrecy::ExposeSecret;
use std::time::Duration;

use diesel_async::AsyncConnection;
use order_closer::closer::{Closer, CreateError, Due, NewOrder};
use order_closer::config::Settings;
use order_closer::db;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    db::migrate(settings.database.url.expose_secret()).await?;
    let closer = Closer::connect(&settings, order_closer::gateway::rules::CHANNELS).await?;
    let suffix = chrono::Utc::now().timestamp_millis();

    // 1. The simple call: our order row and its close schedule in one transaction,
    //    published after the commit.
    let created = closer
        .create_order(NewOrder::new(
            "alipay",
            format!("EXAMPLE-{suffix}-A"),
            1234,
            Due::After(Duration::from_secs(15 * 60)),
        ))
        .await?;
    println!(
        "created {} due {} (published now: {})",
        created.order.out_trade_no, created.order.deadline, created.published
    );

    // 2. Inside the shop's own transaction: the shop's rows and ours commit together.
    let mut conn = db::connect(settings.database.url.expose_secret()).await?;
    let new = NewOrder::new(
        "alipay",
        format!("EXAMPLE-{suffix}-B"),
        990,
        Due::After(Duration::from_secs(30 * 60)),
    );
    let pending = conn
        .transaction::<_, CreateError, _>(async |tx| {
            // ... the shop inserts its own order rows with `tx` here ...
            closer.create_order_in(tx, &new).await
        })
        .await?;
    let published = closer.publish(&pending).await;
    println!(
        "created {} inside the caller's transaction (published now: {published})",
        pending.order.out_trade_no
    );
    Ok(())
}
