//! Several addresses: `AMQP_URL` as a list of broker nodes and `DATABASE_URL` with several
//! hosts. A dead first address is skipped; a connection that goes away is re-established
//! on the next address, by the worker and by the library. (The three-node cluster that
//! loses a node mid-run is `tests/serial/serial_cluster.rs`.)
#![cfg(feature = "tooling")]

use std::net::TcpListener;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use order_closer::broker::{self, BrokerError};
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::db;
use order_closer::db::connect::Options;
use order_closer::order::OrderStatus;
use order_closer_engine::worker::WorkerConfig;

use crate::common::tcp_proxy::TcpProxy;
use crate::common::{TestEnv, amqp_url, eventually};

/// A loopback port nothing listens on (connections are refused at once).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The broker's address, from the tests' `AMQP_URL`.
fn broker_addr() -> std::net::SocketAddr {
    let list = broker::addresses::parse(&amqp_url()).unwrap();
    let host = match list[0].uri.authority.host.as_str() {
        "localhost" => "127.0.0.1",
        other => other,
    }
    .to_owned();
    format!("{host}:{}", list[0].uri.authority.port)
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_broker_address_is_skipped_and_none_answering_names_each() {
    let dead = format!("amqp://guest:SeCrEt1@127.0.0.1:{}/%2f", closed_port());
    let list = format!("{dead}, {}", amqp_url());
    let connection = broker::connect(&list, "test failover").await.unwrap();
    assert!(connection.status().connected());
    let _ = connection.close(200, "done".into()).await;

    let other_dead = format!("amqp://guest:SeCrEt1@127.0.0.1:{}/%2f", closed_port());
    let err = broker::connect(&format!("{dead},{other_dead}"), "test failover")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BrokerError::Unreachable { .. }), "{text}");
    assert!(
        text.contains(&dead[dead.find("127.").unwrap()..dead.len() - 4]),
        "{text}"
    );
    assert!(!text.contains("SeCrEt1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_url_with_several_hosts_skips_a_dead_one_in_both_forms() {
    let env = TestEnv::new(&[]).await;
    let dead = closed_port();
    let url = format!(
        "{}{}target_session_attrs=read-write",
        env.database_url.replacen(
            "127.0.0.1:5432",
            &format!("127.0.0.1:{dead},127.0.0.1:5432"),
            1
        ),
        if env.database_url.contains('?') {
            '&'
        } else {
            '?'
        },
    );
    assert!(
        url.contains(&format!(":{dead},")),
        "the test database is on 127.0.0.1:5432"
    );
    // libpq's keyword/value form of the same.
    let options = Options::read(&env.database_url).unwrap();
    let config = &options.config;
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut kv = format!(
        "host=127.0.0.1,127.0.0.1 port={dead},5432 dbname={} user={} target_session_attrs=read-write",
        quote(config.get_dbname().unwrap()),
        quote(config.get_user().unwrap()),
    );
    if let Some(password) = config.get_password() {
        kv.push_str(&format!(
            " password={}",
            quote(std::str::from_utf8(password).unwrap())
        ));
    }
    if let Some(opts) = config.get_options() {
        kv.push_str(&format!(" options={}", quote(opts)));
    }
    for given in [url, kv] {
        let shown = format!("{:?}", db::connect::Target::parse(&given).unwrap());
        assert!(
            shown.contains(&format!("127.0.0.1:{dead},127.0.0.1:5432/")),
            "{shown}"
        );
        let mut conn = db::connect(&given).await.unwrap();
        // The sandbox's schema is on the search path: the orders table is there.
        let n = diesel::sql_query("SELECT 1 FROM orders LIMIT 1")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_and_the_library_move_to_the_next_address_when_theirs_goes_away() {
    let mut env = TestEnv::new(&[]).await;
    // The first address is a proxy to the broker that the test cuts; the second is the
    // broker itself.
    let proxy = TcpProxy::start(broker_addr(), true).await;
    let list = format!("amqp://guest:guest@{}/%2f,{}", proxy.addr, amqp_url());
    let mut settings = env.settings.clone();
    settings.broker.url = list.into();
    settings.broker.failover = Default::default();
    let closer = Closer::connect(&settings, order_closer::gateway::rules::CHANNELS)
        .await
        .unwrap();
    let mut config = WorkerConfig::from_settings(&settings);
    config.broker.failover = Default::default();
    let decider = env.decider("test-worker-failover");
    let observed = env.run_worker(decider, config);
    eventually(Duration::from_secs(20), || async {
        (observed.metrics.consuming.get() == 1).then_some(())
    })
    .await
    .expect("the worker consumes");

    let order = |no: &str| NewOrder::new("alipay", no, 100, Due::After(Duration::from_secs(1)));
    let before = env.no("before-cut");
    let created = closer.create_order(order(&before)).await.unwrap();
    assert!(created.published, "published through the first address");
    let mut numbers = vec![before];

    // Both the worker and the library were connected through the proxy: cut it.
    proxy.switch_off();
    let after = env.no("after-cut");
    let mut published_after_cut = false;
    for i in 0..40 {
        let no = format!("{after}-{i}");
        let created = closer.create_order(order(&no)).await.unwrap();
        numbers.push(no);
        if created.published {
            published_after_cut = true;
            break;
        }
        // Unpublished schedules stay in the outbox for the relay; the library tries the
        // next address at most once per pause.
        tokio::time::sleep(broker::link::REDIAL_PAUSE / 2).await;
    }
    assert!(
        published_after_cut,
        "the library re-established its connection on the second address"
    );
    // Every order is decided: the worker reconnected to the second address (and its
    // relay published whatever the library left in the outbox).
    for no in &numbers {
        let order = env.settled(no, Duration::from_secs(60)).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{no}");
    }
    // Whatever the library left in the outbox, and every decision's event, is published
    // (by the relay of the worker on the second address; the library's own deletes run
    // in the background).
    closer.shutdown().await;
    let drained = eventually(Duration::from_secs(30), || async {
        (env.outbox_backlog().await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the outbox drained");
    env.cleanup().await;
}
