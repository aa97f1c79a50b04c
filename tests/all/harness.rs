//! The test harness itself: an environment dropped without `cleanup` (a failed test)
//! still removes its schema and its queues.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use crate::common::TestEnv;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use order_closer::{broker, db};
use secrecy::ExposeSecret;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_environment_dropped_without_cleanup_removes_its_schema_and_queues() {
    let env = TestEnv::new(&[]).await;
    let schema = env.schema.clone();
    let queue = env.topology.close_queue();
    let amqp_url = env.settings.broker.url.expose_secret().to_owned();
    drop(env);

    let mut admin = db::connect(&crate::common::base_database_url())
        .await
        .unwrap();
    let left: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind::<diesel::sql_types::Text, _>(&schema)
    .get_result(&mut admin)
    .await
    .unwrap();
    assert_eq!(left.n, 0, "schema {schema} is still there");

    let connection = broker::connect(&amqp_url, "test harness").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await;
    assert!(declared.is_err(), "queue {queue} is still there");
}
