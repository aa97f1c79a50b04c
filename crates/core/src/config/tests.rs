//! Reading the settings as a whole: the defaults, an error naming its variable for every
//! invalid value, each variable read by one section only, and no secret ever shown.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;
use crate::broker::topology::QueueType;

fn vars(pairs: &[(&str, &str)]) -> Vars {
    Vars::from_map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    )
}

fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_vars(vars(pairs))
}

/// A section's reader: whether it accepts the variables.
type Reader = fn(&Vars) -> Result<(), ConfigError>;

/// Each section's reader, by name.
fn sections() -> [(&'static str, Reader); 6] {
    [
        ("database", |v| DatabaseSettings::from_vars(v).map(drop)),
        ("broker", |v| BrokerSettings::from_vars(v).map(drop)),
        ("worker", |v| WorkerSettings::from_vars(v).map(drop)),
        ("decisions", |v| DecisionSettings::from_vars(v).map(drop)),
        ("http_listen", |v| http_listen(v).map(drop)),
        ("log_format", |v| LogFormat::from_vars(v).map(drop)),
    ]
}

#[test]
fn defaults_work_without_any_variable() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.database.url.expose_secret(), DEFAULT_DATABASE_URL);
    assert_eq!(s.worker.concurrency, 64);
    assert_eq!(s.broker.topology.close_queue(), "order.close.due");
    assert_eq!(s.broker.topology.queue_type(), QueueType::Quorum);
    assert_eq!(s.worker.janitor.after, Duration::from_secs(120));
    assert_eq!(s.worker.janitor.interval, Duration::from_secs(30));
    assert_eq!(s.decisions.paid_after_close, PaidAfterClose::Hold);
    assert_eq!(s.decisions.quick_retries, QuickRetrySettings::default());
    assert_eq!(s.decisions.quick_retries.attempts, 3);
    assert_eq!(s.decisions.quick_retries.budget, 0.1);
    let refund = settings(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).unwrap();
    assert_eq!(refund.decisions.paid_after_close, PaidAfterClose::Refund);
}

#[test]
fn invalid_values_name_their_variable() {
    // 500 tiers, each a queue.
    let many_tiers: String = (1..=500)
        .map(|i| format!("{}ms", 600 + i))
        .collect::<Vec<_>>()
        .join(",");
    let cases = [
        ("DATABASE_URL", "mysql://x"),
        ("AMQP_URL", "http://x"),
        ("ORDER_CLOSER_QUEUE_PREFIX", "bad prefix!"),
        ("ORDER_CLOSER_QUEUE_TYPE", "stream"),
        ("ORDER_CLOSER_CONCURRENCY", "0"),
        ("ORDER_CLOSER_CONCURRENCY", "lots"),
        ("ORDER_CLOSER_PREFETCH", "70000"),
        ("ORDER_CLOSER_RETRY_STEPS", "3s,soon"),
        ("ORDER_CLOSER_SHUTDOWN_GRACE", "0s"),
        ("ORDER_CLOSER_LOG_FORMAT", "xml"),
        ("ORDER_CLOSER_HTTP_LISTEN", "everywhere"),
        ("ORDER_CLOSER_PAID_AFTER_CLOSE", "give-back"),
        ("ORDER_CLOSER_QUICK_RETRIES", "-1"),
        ("ORDER_CLOSER_QUICK_RETRIES", "11"),
        ("ORDER_CLOSER_QUICK_RETRIES", "a few"),
        ("ORDER_CLOSER_RETRY_BUDGET", "10%"),
        ("ORDER_CLOSER_RETRY_BUDGET", "1.5"),
        ("ORDER_CLOSER_RETRY_BUDGET", "-0.1"),
        ("ORDER_CLOSER_RETRY_BUDGET", "NaN"),
        ("ORDER_CLOSER_RETRY_BUDGET", "inf"),
        ("ORDER_CLOSER_JANITOR_AFTER", "1s"),
        ("ORDER_CLOSER_JANITOR_AFTER", "1000000y"),
        ("ORDER_CLOSER_JANITOR_INTERVAL", "2h"),
        ("ORDER_CLOSER_JANITOR_INTERVAL", "soon"),
        ("ORDER_CLOSER_OUTBOX_GRACE", "1000000y"),
        ("ORDER_CLOSER_OUTBOX_INTERVAL", "1000000y"),
        ("ORDER_CLOSER_SHUTDOWN_GRACE", "1000000y"),
        ("ORDER_CLOSER_RETRY_STEPS", "1s,1000000y"),
        ("ORDER_CLOSER_EXTRA_DELAY_TIERS", "1000000y"),
        ("ORDER_CLOSER_EXTRA_DELAY_TIERS", many_tiers.as_str()),
        ("ORDER_CLOSER_QUEUE_PREFIX", "amq.x"),
        ("ORDER_CLOSER_QUEUE_PREFIX", "amq"),
        ("DATABASE_URL", "postgres://"),
        ("DATABASE_URL", "postgres://u:p@h:99999/db"),
        ("DATABASE_URL", "postgres://u:p@h/db?sslmode=bogus"),
        ("DATABASE_URL", "postgres://u:p@h:5432"),
        ("AMQP_URL", "amqp://g:g@h:99999/%2f"),
        ("AMQP_URL", "amqp://g:g@h/%2f?heartbeat=abc"),
    ];
    for (var, value) in cases {
        let err = settings(&[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(var), "{var}={value}: {err}");
        // Read by one section only: the others, and so a command that needs only them,
        // do not see it.
        let given = vars(&[(var, value)]);
        let refusing: Vec<&str> = sections()
            .into_iter()
            .filter(|(_, read)| read(&given).is_err())
            .map(|(name, _)| name)
            .collect();
        assert_eq!(refusing.len(), 1, "{var}={value}: refused by {refusing:?}");
    }
}

#[test]
fn quick_retries_are_read_from_their_variables() {
    let s = settings(&[
        ("ORDER_CLOSER_QUICK_RETRIES", "0"),
        ("ORDER_CLOSER_RETRY_BUDGET", "0.25"),
    ])
    .unwrap();
    assert_eq!(
        s.decisions.quick_retries,
        QuickRetrySettings {
            attempts: 0,
            budget: 0.25
        }
    );
    let s = settings(&[
        ("ORDER_CLOSER_QUICK_RETRIES", " 10 "),
        ("ORDER_CLOSER_RETRY_BUDGET", "0"),
    ])
    .unwrap();
    assert_eq!(s.decisions.quick_retries.attempts, 10);
    assert_eq!(s.decisions.quick_retries.budget, 0.0);
    assert_eq!(
        settings(&[("ORDER_CLOSER_RETRY_BUDGET", "1")])
            .unwrap()
            .decisions
            .quick_retries
            .budget,
        1.0
    );
    let err = settings(&[("ORDER_CLOSER_RETRY_BUDGET", "10%")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("a share from 0.0 to 1.0"), "{err}");
    let err = settings(&[("ORDER_CLOSER_QUICK_RETRIES", "11")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("from 0 to 10"), "{err}");
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let s = settings(&[
        ("DATABASE_URL", "postgres://u:SeCrEt123@h/db"),
        ("AMQP_URL", "amqp://g:SeCrEt123@h/%2f"),
        ("ALIPAY_APP_PRIVATE_KEY", "U2VDckV0MTIz"),
    ])
    .unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains("SeCrEt123"), "{shown}");
    assert!(!shown.contains("U2VDckV0MTIz"), "{shown}");
}

#[test]
fn a_url_password_never_shows_in_an_error() {
    for (var, value) in [
        (
            "DATABASE_URL",
            " postgres://postgres:SeCrEt123@127.0.0.1:1/x",
        ),
        ("DATABASE_URL", "mysql://root:SeCrEt123@h/db"),
        ("DATABASE_URL", "postgres://postgres:SeCrEt123@h:5432"),
        ("AMQP_URL", "AMQP://guest:SeCrEt123@h/%2f"),
        ("AMQP_URL", "amqp://guest:SeCrEt123@h:99999/%2f"),
        // A password with a URL delimiter in it.
        (
            "DATABASE_URL",
            "postgres://app:Se/SeCrEt123@127.0.0.1:5432/db",
        ),
        (
            "DATABASE_URL",
            "postgres://app:Se?SeCrEt123@127.0.0.1:5432/db",
        ),
        (
            "DATABASE_URL",
            "postgres://app:Se#SeCrEt123@127.0.0.1:5432/db",
        ),
        (
            "DATABASE_URL",
            "postgres://app:S@SeCrEt123@127.0.0.1:5432/db",
        ),
        ("AMQP_URL", "amqp://guest:Se/SeCrEt123@h/%2f"),
        ("AMQP_URL", "amqp://guest:S@SeCrEt123@h/%2f"),
    ] {
        let err = settings(&[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(var), "{err}");
        assert!(!err.contains("SeCrEt123"), "{var}: {err}");
    }
}

#[test]
fn the_database_ca_joins_the_url_and_tls_files_are_checked() {
    let s = settings(&[
        ("DATABASE_URL", "postgres://u:p@h/db?sslmode=verify-full"),
        ("ORDER_CLOSER_DB_TLS_CA", "/etc/ssl/my ca.pem"),
    ])
    .unwrap();
    assert_eq!(
        s.database.url.expose_secret(),
        "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ssl/my%20ca.pem"
    );
    let err = settings(&[
        ("DATABASE_URL", "postgres://u:p@h/db?sslrootcert=a.pem"),
        ("ORDER_CLOSER_DB_TLS_CA", "b.pem"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("ORDER_CLOSER_DB_TLS_CA"), "{err}");
    for (var, why) in [
        ("ORDER_CLOSER_AMQP_TLS_CA", "cannot read"),
        ("ORDER_CLOSER_AMQP_TLS_CERT", "both"),
    ] {
        let err = settings(&[
            ("AMQP_URL", "amqps://u:SeCrEt123@h/%2f"),
            (var, "/no/such/file.pem"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains(why), "{err}");
        assert!(!err.contains("SeCrEt123"), "{err}");
    }
    let err = settings(&[("ORDER_CLOSER_AMQP_TLS_CA", "/etc/hostname")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ORDER_CLOSER_AMQP_TLS_CA"), "{err}");
}
