//! TLS against real servers: a throwaway CA, a Postgres cluster that accepts only TLS on
//! TCP, and a RabbitMQ node whose only listener is TLS and which requires a client
//! certificate, both on spare ports of this machine. Every `sslmode` does what libpq
//! does, `amqps://` takes a private CA and a client certificate, the worker binary runs
//! an order end to end over both, and a wrong CA, a wrong host name and plain text each
//! fail with an error that names the cause and never the password.
//!
//! Serial (it starts servers): run by the README's test command in its own step.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::path::Path;
use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use order_closer::broker::{self, tls::AmqpTls};
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::config::Settings;
use order_closer::db::{self, orders};
use order_closer::order::OrderStatus;
use order_closer::sim::{self};

use crate::common::certs::Pki;
use crate::common::pg_node::PgNode;
use crate::common::rabbit_node::RabbitNode;

const PASSWORD: &str = "SeCrEt-pw";

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

/// Whether the connection `url` opens is encrypted, or the error text.
async fn encrypted(url: &str) -> Result<bool, String> {
    let mut conn = db::connect(url).await.map_err(|e| e.to_string())?;
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

fn refused(result: Result<bool, String>, why: &[&str]) -> String {
    let err = result.expect_err("the connection should have been refused");
    for w in why {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
    assert!(!err.contains(PASSWORD), "the password shows in: {err}");
    err
}

fn path_query(path: &Path) -> String {
    path.display().to_string().replace('/', "%2F")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_tls_to_postgres_and_rabbitmq() {
    let dir = std::env::temp_dir().join(format!("oc-tls-{}", std::process::id()));
    let pki = Pki::generate(&dir, &["localhost"]);
    let pg = PgNode::start_tls(&pki.server_cert_pem, &pki.server_key_pem);
    let rabbit = RabbitNode::start_tls(&pki.ca, &pki.server_cert, &pki.server_key);

    postgres_modes(&pg, &pki).await;
    rabbitmq_options(&rabbit, &pki).await;
    worker_over_tls(&pg, &rabbit, &pki, &dir).await;

    drop(rabbit);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn postgres_modes(pg: &PgNode, pki: &Pki) {
    let ca = path_query(&pki.ca);
    let other = path_query(&pki.other_ca);
    let url = |host: &str, query: &str| pg.url(host, "postgres", query);

    // What libpq does: `prefer` (the default) and `require` encrypt without checking the
    // certificate; `verify-full` checks the chain and the name.
    assert_eq!(encrypted(&url("localhost", "")).await, Ok(true));
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=allow")).await,
        Ok(true)
    );
    let full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(encrypted(&url("localhost", &full)).await, Ok(true));
    // verify-ca checks the chain only: the certificate names localhost, not 127.0.0.1.
    let chain = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert_eq!(encrypted(&url("127.0.0.1", &chain)).await, Ok(true));

    // Plain text to a server that takes TLS only.
    let err = refused(
        encrypted(&url("localhost", "sslmode=disable")).await,
        &["no encryption", "sslmode=disable"],
    );
    eprintln!("plain text: {err}");
    // A CA that did not sign the server's certificate.
    let err = refused(
        encrypted(&url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ))
        .await,
        &["invalid peer certificate", "UnknownIssuer"],
    );
    eprintln!("wrong CA: {err}");
    // `require` with a CA file checks the chain, as in libpq.
    refused(
        encrypted(&url(
            "localhost",
            &format!("sslmode=require&sslrootcert={other}"),
        ))
        .await,
        &["invalid peer certificate"],
    );
    // A host name the certificate does not name.
    let err = refused(
        encrypted(&url("127.0.0.1", &full)).await,
        &["invalid peer certificate", "127.0.0.1"],
    );
    eprintln!("wrong name: {err}");
    // A CA file that is not there.
    refused(
        encrypted(&url(
            "localhost",
            "sslmode=verify-full&sslrootcert=%2Fno%2Fsuch%2Fca.pem",
        ))
        .await,
        &["/no/such/ca.pem"],
    );

    // ORDER_CLOSER_DB_TLS_CA gives the CA; migrations create the database over TLS (the
    // maintenance connection keeps the URL's TLS options).
    let settings = settings_of(&[
        (
            "DATABASE_URL",
            pg.url("localhost", "oc_tls", "sslmode=verify-full"),
        ),
        ("ORDER_CLOSER_DB_TLS_CA", pki.ca.display().to_string()),
    ])
    .expect("settings");
    let database_url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();
    let applied = db::migrate(&database_url).await.expect("migrate over TLS");
    assert!(applied > 0);
    assert_eq!(encrypted(&database_url).await, Ok(true));
}

async fn rabbitmq_options(rabbit: &RabbitNode, pki: &Pki) {
    let url = |host: &str| format!("amqps://guest:{PASSWORD}@{host}:{}/%2f", rabbit.port);
    let full = AmqpTls::load(Some(&pki.ca), Some(&pki.client_cert), Some(&pki.client_key))
        .expect("TLS files");
    let good = format!("amqps://guest:guest@localhost:{}/%2f", rabbit.port);
    let connection = broker::connect_with(&good, &full, "tls test")
        .await
        .expect("amqps with the CA and a client certificate");
    assert!(connection.status().connected());
    let _ = connection.close(200, "done".into()).await;

    let fails = |result: Result<lapin::Connection, broker::BrokerError>, what: &str| {
        let err = result.map(|_| ()).expect_err(what).to_string();
        assert!(
            !err.contains(PASSWORD),
            "{what}: the password shows in {err}"
        );
        eprintln!("{what}: {err}");
        err
    };
    // A CA that did not sign the server's certificate.
    let other = AmqpTls::load(
        Some(&pki.other_ca),
        Some(&pki.client_cert),
        Some(&pki.client_key),
    )
    .unwrap();
    let err = fails(
        broker::connect_with(&url("localhost"), &other, "tls test").await,
        "wrong CA",
    );
    assert!(err.contains("certificate"), "{err}");
    // A host name the certificate does not name.
    let err = fails(
        broker::connect_with(&url("127.0.0.1"), &full, "tls test").await,
        "wrong name",
    );
    assert!(err.contains("certificate"), "{err}");
    // No client certificate: the server requires one.
    let ca_only = AmqpTls::load(Some(&pki.ca), None, None).unwrap();
    fails(
        broker::connect_with(&url("localhost"), &ca_only, "tls test").await,
        "no client certificate",
    );
    // Plain AMQP to the TLS listener.
    let plain = format!("amqp://guest:{PASSWORD}@localhost:{}/%2f", rabbit.port);
    let err = fails(broker::connect(&plain, "tls test").await, "plain text");
    assert!(err.contains("use an amqps:// URL"), "{err}");

    // Half a client identity, or TLS files with a plain URL, are configuration errors.
    assert!(AmqpTls::load(None, Some(&pki.client_cert), None).is_err());
    let err = settings_of(&[
        ("AMQP_URL", plain.clone()),
        ("ORDER_CLOSER_AMQP_TLS_CA", pki.ca.display().to_string()),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("amqps://"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    let err = settings_of(&[
        (
            "ORDER_CLOSER_AMQP_TLS_KEY",
            pki.client_cert.display().to_string(),
        ),
        (
            "ORDER_CLOSER_AMQP_TLS_CERT",
            pki.client_cert.display().to_string(),
        ),
        ("AMQP_URL", url("localhost")),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("ORDER_CLOSER_AMQP_TLS_KEY"), "{err}");
}

/// The worker binary decides an order with both connections over verified TLS; with the
/// wrong CA it stops at start-up naming the cause.
async fn worker_over_tls(pg: &PgNode, rabbit: &RabbitNode, pki: &Pki, dir: &Path) {
    let _ = dir;
    let running = sim::start_local().await.expect("simulator");
    let mut vars: Vec<(String, String)> = vec![
        (
            "DATABASE_URL".into(),
            pg.url("localhost", "oc_tls", "sslmode=verify-full"),
        ),
        (
            "ORDER_CLOSER_DB_TLS_CA".into(),
            pki.ca.display().to_string(),
        ),
        (
            "AMQP_URL".into(),
            format!("amqps://guest:guest@localhost:{}/%2f", rabbit.port),
        ),
        (
            "ORDER_CLOSER_AMQP_TLS_CA".into(),
            pki.ca.display().to_string(),
        ),
        (
            "ORDER_CLOSER_AMQP_TLS_CERT".into(),
            pki.client_cert.display().to_string(),
        ),
        (
            "ORDER_CLOSER_AMQP_TLS_KEY".into(),
            pki.client_key.display().to_string(),
        ),
        ("ORDER_CLOSER_QUEUE_PREFIX".into(), "tls".into()),
        ("ORDER_CLOSER_HTTP_LISTEN".into(), "off".into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    vars.extend(running.client_vars());
    let pairs: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let settings = settings_of(&pairs).expect("settings");

    // With the wrong CA the worker stops at once and says why.
    let mut wrong = vars.clone();
    wrong[1].1 = pki.other_ca.display().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        crate::common::run_binary(crate::BIN, &wrong, &["worker"]),
    )
    .await
    .expect("the worker with a wrong CA stops by itself");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot use the database"), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .arg("worker")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the worker");

    let closer = Closer::connect(&settings, order_closer::gateway::rules::CHANNELS)
        .await
        .expect("closer over TLS");
    let created = closer
        .create_order(NewOrder::new(
            "alipay",
            "tls-order-1",
            1_00,
            Due::After(Duration::from_secs(1)),
        ))
        .await
        .expect("create over TLS");
    assert_eq!(created.order.status(), OrderStatus::New);
    let pool = db::pool(
        secrecy::ExposeSecret::expose_secret(&settings.database.url),
        2,
    )
    .expect("pool");
    let decided = crate::common::eventually(Duration::from_secs(90), || {
        let pool = pool.clone();
        async move {
            let mut conn = db::conn(&pool).await.ok()?;
            let order = orders::find_by_out_trade_no(&mut conn, "tls-order-1")
                .await
                .ok()??;
            (order.status() != OrderStatus::New).then_some(order)
        }
    })
    .await
    .expect("the worker decided the order over TLS");
    // The buyer never paid: the simulator has no trade, the order closes.
    assert_eq!(decided.status(), OrderStatus::Closed);

    let _ = worker.start_kill();
    let _ = worker.wait().await;
    closer.shutdown().await;
    running.shutdown().await;
}

/// Settings from exactly these variables.
fn settings_of(pairs: &[(&str, String)]) -> Result<Settings, order_closer::config::ConfigError> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Settings::from_lookup(move |k| map.get(k).cloned())
}
