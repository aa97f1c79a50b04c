//! `DATABASE_URL` with several hosts and `target_session_attrs=read-write`, through the
//! project's own connect path: the first host answers as a standby does (a server of the
//! test's own with `default_transaction_read_only = on`, which is what tokio-postgres's
//! read-write check reads), so it is skipped for the second, the tests' own server.
//! Without the attribute the first host is taken. Starts a Postgres server: serial.
#![cfg(feature = "tooling")]

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use order_closer::db;
use order_closer::db::connect::Options;
use tokio_postgres::config::Host;

use crate::common::base_database_url;
use crate::common::pg_node::PgNode;

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

/// Whether the connection `url` gives is read-only.
async fn read_only(url: &str) -> bool {
    let mut conn = db::connect(url).await.unwrap();
    let row: Setting =
        diesel::sql_query("SELECT current_setting('transaction_read_only') AS value")
            .get_result(&mut conn)
            .await
            .unwrap();
    row.value == "on"
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_a_standby_listed_first_is_skipped_for_read_write() {
    let standby = tokio::task::spawn_blocking(|| {
        PgNode::start_plain_with("default_transaction_read_only = on\n")
    })
    .await
    .unwrap();
    let ours = Options::read(&base_database_url()).unwrap().config;
    let Some(Host::Tcp(host)) = ours.get_hosts().first().cloned() else {
        panic!("the tests' DATABASE_URL names no TCP host");
    };
    let port = ours.get_ports().first().copied().unwrap_or(5432);
    let user = ours.get_user().unwrap_or("postgres");
    let password = ours
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let hosts = format!("127.0.0.1:{},{host}:{port}", standby.port);
    // Both servers have a `postgres` database.
    let base = format!("postgres://{user}{password}@{hosts}/postgres?sslmode=prefer");
    assert!(
        read_only(&base).await,
        "without the attribute, the first host"
    );
    let read_write = format!("{base}&target_session_attrs=read-write");
    assert!(
        !read_only(&read_write).await,
        "read-write skips the standby"
    );
    let key_value = format!(
        "host=127.0.0.1,{host} port={},{port} user={user} dbname=postgres \
         target_session_attrs=read-write{}",
        standby.port,
        ours.get_password()
            .map(|p| format!(" password='{}'", String::from_utf8_lossy(p)))
            .unwrap_or_default()
    );
    assert!(!read_only(&key_value).await, "the keyword/value form too");
    // Only the standby: refused, naming both the check and the host.
    let only = format!(
        "postgres://{user}@127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port
    );
    let err = db::connect(&only).await.err().expect("no read-write host");
    assert!(err.to_string().contains(&standby.port.to_string()), "{err}");
}
