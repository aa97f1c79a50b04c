//! The binary's commands, run as a user would: good and bad arguments and configuration.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::process::Output;

use crate::common::TestEnv;

async fn run(env: &[(String, String)], args: &[&str]) -> Output {
    crate::common::run_binary(crate::BIN, env, args).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_create_then_show_and_bad_arguments_are_named() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-cli-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let no = env.no("cli");

    let out = run(&vars, &["migrate"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(
        &vars,
        &[
            "orders",
            "create",
            "--out-trade-no",
            &no,
            "--amount",
            "12.34",
            "--close-after",
            "30s",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("scheduled"),
        "{}",
        text(&out.stdout)
    );
    // The published close message's outbox row is gone before the command exits, so the
    // relay never publishes it a second time (two retry chains per order).
    assert_eq!(env.outbox_backlog().await, 0);

    let out = run(&vars, &["orders", "show", &no, "--format", "json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["order"]["status_text"], "NEW");
    assert_eq!(shown["order"]["amount_minor"], 1234);
    assert_eq!(shown["decisions"].as_array().unwrap().len(), 0);

    // The same order number again is refused by name.
    let out = run(
        &vars,
        &[
            "orders",
            "create",
            "--out-trade-no",
            &no,
            "--amount",
            "1",
            "--close-after",
            "30s",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    for (command, word) in [
        (
            "orders create --out-trade-no X --amount abc --close-after 1s",
            "amount",
        ),
        (
            "orders create --out-trade-no X --amount -1 --close-after 1s",
            "amount",
        ),
        (
            "orders create --out-trade-no X --amount 1 --close-after soon",
            "close-after",
        ),
        (
            "orders create --out-trade-no bad/no --amount 1 --close-after 1s",
            "out_trade_no",
        ),
        ("orders create --out-trade-no X --amount 1", "close-after"),
        ("worker --concurrency 0", "concurrency"),
        ("bench --pending many", "pending"),
        ("bench --pending 20000000", "pending"),
        ("bench --concurrency 0", "concurrency"),
        ("bench --paid-share 2", "paid-share"),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        let out = run(&vars, &args).await;
        assert!(!out.status.success(), "{command} succeeded");
        assert!(
            text(&out.stderr).contains(word),
            "{command}: {}",
            text(&out.stderr)
        );
    }

    let out = run(&vars, &["orders", "show", "NO-SUCH-ORDER"]).await;
    assert_eq!(out.status.code(), Some(2));

    // Configuration errors name the variable.
    let mut bad = vars.clone();
    bad.push(("ORDER_CLOSER_PREFETCH".into(), "lots".into()));
    let out = run(&bad, &["migrate"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ORDER_CLOSER_PREFETCH"),
        "{}",
        text(&out.stderr)
    );
    let mut bad = vars.clone();
    bad.push(("ALIPAY_PUBLIC_KEY".into(), "/nonexistent/alipay.pem".into()));
    let out = run(&bad, &["worker"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ALIPAY_PUBLIC_KEY"),
        "{}",
        text(&out.stderr)
    );

    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

#[tokio::test]
async fn keygen_writes_a_usable_pair_and_refuses_to_overwrite() {
    let dir = std::env::temp_dir().join(format!("oc-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run(&[], &["keygen", "--out", dir.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let private = std::fs::read_to_string(dir.join("app_private.pem")).unwrap();
    let public = std::fs::read_to_string(dir.join("app_public.pem")).unwrap();
    let key = order_closer::gateway::rsa::RsaPrivateKey::parse(&private).unwrap();
    let pubkey = order_closer::gateway::rsa::RsaPublicKey::parse(&public).unwrap();
    let sig = key.sign_base64(b"hello").unwrap();
    assert!(pubkey.verify_base64(b"hello", &sig));
    let out = run(&[], &["keygen", "--out", dir.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--force"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `keygen` reads none of the product's settings and `gateway-sim` only the log format,
/// so variables that stop every other command (each names a part they do not use) do not
/// stop them.
#[tokio::test]
async fn keygen_and_the_simulator_ignore_bad_variables_they_do_not_read() {
    let dir = std::env::temp_dir().join(format!("oc-unrelated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bad: Vec<(String, String)> = [
        ("ORDER_CLOSER_RETRY_STEPS", "zz"),
        ("ORDER_CLOSER_PREFETCH", "lots"),
        ("ORDER_CLOSER_QUEUE_TYPE", "stream"),
        ("ORDER_CLOSER_HTTP_LISTEN", "everywhere"),
        ("DATABASE_URL", "mysql://root@h/db"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // They reach the binary: a command that reads the settings refuses them.
    let out = run(&bad, &["migrate"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid configuration"),
        "{}",
        text(&out.stderr)
    );

    // keygen logs nothing: a bad log format or filter is as unrelated.
    let mut for_keygen = bad.clone();
    for_keygen.push(("ORDER_CLOSER_LOG_FORMAT".into(), "xml".into()));
    for_keygen.push(("RUST_LOG".into(), "info,,=x[y".into()));
    let keys = dir.join("keys");
    let out = run(&for_keygen, &["keygen", "--out", keys.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(keys.join("app_private.pem").exists());
    assert!(keys.join("app_public.pem").exists());

    // The simulator gets past its configuration to its keys folder, and stops there on
    // a key that is not one (so the test needs no server to stop).
    let sim_keys = dir.join("sim-keys");
    std::fs::create_dir_all(sim_keys.join("alipay")).unwrap();
    std::fs::write(sim_keys.join("alipay/sim_private.pem"), "not a key").unwrap();
    let out = run(
        &bad,
        &[
            "gateway-sim",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            sim_keys.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("sim_private.pem"), "{stderr}");
    assert!(!stderr.contains("invalid configuration"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_passes_its_own_check() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-demo-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let out = run(
        &vars,
        &[
            "demo",
            "--orders",
            "40",
            "--min-deadline",
            "1s",
            "--max-deadline",
            "3s",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("CHECK PASSED"), "{stdout}");
    assert!(stdout.contains("lateness p99"), "{stdout}");
    assert!(stdout.contains("payment to PAID p50 / p99"), "{stdout}");
    assert!(stdout.contains("pays, callback delivered"), "{stdout}");
    // The orders spread over every gateway, and each gateway's orders agree.
    for channel in order_closer::gateway::rules::channels() {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(channel))
            .unwrap_or_else(|| panic!("no {channel} row in\n{stdout}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 3, "{row}");
        assert!(cells[1].parse::<u32>().unwrap() > 0, "{row}");
        assert_eq!(cells[1], cells[2], "{row}");
    }
    // A channel that is not a gateway is refused before anything starts.
    let out = run(&vars, &["demo", "--channel", "paypal"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("\"paypal\" is not a gateway"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// Hostile or careless values each fail at once, naming what is wrong, never
/// printing a password, and never reading an endless file.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_values_fail_at_start_up_naming_them() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-cli-bad-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let with = |name: &str, value: &str| {
        let mut v = vars.clone();
        v.retain(|(k, _)| k != name);
        v.push((name.into(), value.into()));
        v
    };
    type Vars = Vec<(String, String)>;
    // A FIFO wherever a file is named (opening one waits for a writer).
    let fifo = dir.join("fifo.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let mut url_from_fifo = with("DATABASE_URL_FILE", fifo);
    url_from_fifo.retain(|(k, _)| k != "DATABASE_URL");
    let bill_from_fifo = format!("reconcile bill --channel alipay --date 2026-11-01 --file {fifo}");
    // 500 extra tiers, each a queue.
    let many_tiers: Vec<String> = (1..=500).map(|i| format!("{}ms", 600 + i)).collect();
    let cases: Vec<(Vars, &str, &str)> = vec![
        (url_from_fifo, "migrate", "a FIFO"),
        (with("ALIPAY_APP_PRIVATE_KEY", fifo), "worker", "a FIFO"),
        (with("ALIPAY_APP_PRIVATE_KEY", fifo), "notify", "a FIFO"),
        (with("WECHAT_PLATFORM_CERTS", fifo), "worker", "a FIFO"),
        (with("ORDER_CLOSER_AMQP_TLS_CA", fifo), "migrate", "a FIFO"),
        (with("ORDER_CLOSER_DB_TLS_CA", fifo), "migrate", "a FIFO"),
        (vars.clone(), bill_from_fifo.as_str(), "a FIFO"),
        (
            with("ORDER_CLOSER_EXTRA_DELAY_TIERS", &many_tiers.join(",")),
            "worker",
            "ORDER_CLOSER_EXTRA_DELAY_TIERS",
        ),
        // The broker's own prefix.
        (
            with("ORDER_CLOSER_QUEUE_PREFIX", "amq.x"),
            "worker",
            "ORDER_CLOSER_QUEUE_PREFIX=\"amq.x\" is invalid: names starting with amq. are reserved",
        ),
        // Passwords holding URL delimiters, never shown in part.
        (
            with(
                "DATABASE_URL",
                "postgres://app:Se/SeCrEt123@127.0.0.1:5432/db",
            ),
            "migrate",
            "DATABASE_URL=\"postgres://***@127.0.0.1:5432/db\"",
        ),
        (
            with(
                "DATABASE_URL",
                "postgres://app:S@SeCrEt123@127.0.0.1:5432/db",
            ),
            "migrate",
            "percent-encode",
        ),
        (
            with(
                "DATABASE_URL",
                "postgres://app:Se#SeCrEt123@127.0.0.1:5432/db",
            ),
            "orders show X",
            "DATABASE_URL",
        ),
        (
            with("AMQP_URL", "amqp://guest:Se?SeCrEt123@127.0.0.1:5672/%2f"),
            "worker",
            "AMQP_URL",
        ),
        (
            with("ALIPAY_GATEWAY_URL", "https://app:Se/SeCrEt123@gw.example"),
            "worker",
            "ALIPAY_GATEWAY_URL",
        ),
        (
            with("WECHAT_GATEWAY_URL", "https://app:S@SeCrEt123@gw.example"),
            "notify",
            "WECHAT_GATEWAY_URL",
        ),
        (
            with("DATABASE_URL", "postgres://"),
            "migrate",
            "DATABASE_URL",
        ),
        (
            with("DATABASE_URL", "postgres://u:SeCrEt123@127.0.0.1:99999/db"),
            "migrate",
            "DATABASE_URL",
        ),
        (
            with("DATABASE_URL", "postgres://u:SeCrEt123@h/db?sslmode=bogus"),
            "migrate",
            "sslmode",
        ),
        (
            with(
                "DATABASE_URL",
                " postgres://postgres:SeCrEt123@127.0.0.1:1/x",
            ),
            "migrate",
            "DATABASE_URL",
        ),
        (
            with("AMQP_URL", "amqp://guest:SeCrEt123@127.0.0.1:99999/%2f"),
            "orders create --out-trade-no X1 --amount 1 --close-after 1m",
            "AMQP_URL",
        ),
        (
            with("AMQP_URL", "amqp://g:g@127.0.0.1:5672/%2f?heartbeat=abc"),
            "worker",
            "AMQP_URL",
        ),
        (
            with("ALIPAY_GATEWAY_URL", "http://"),
            "worker",
            "ALIPAY_GATEWAY_URL",
        ),
        (
            with("ALIPAY_APP_PRIVATE_KEY", "/dev/zero"),
            "worker",
            "not a regular file",
        ),
        (
            with("ORDER_CLOSER_OUTBOX_GRACE", "1000000y"),
            "worker",
            "ORDER_CLOSER_OUTBOX_GRACE",
        ),
        (with("RUST_LOG", "info,,=x[y"), "migrate", "RUST_LOG"),
        (
            with("ALIPAY_APP_PRIVATE_KEY", "/dev/zero"),
            "notify",
            "not a regular file",
        ),
        (vars.clone(), "notify --listen nonsense", "--listen"),
        (
            with("ORDER_CLOSER_HTTP_LISTEN", "off"),
            "notify --listen 192.0.2.1:1",
            "cannot listen on 192.0.2.1:1",
        ),
        (
            vars.clone(),
            "reconcile bill --channel alipay --date 2026-11-01 --file /dev/zero",
            "not a regular file",
        ),
        (
            vars.clone(),
            "reconcile anomalies --kind bogus",
            "paid_after_close",
        ),
        (
            vars.clone(),
            "reconcile bill --date 2026-11-01 --channel nowhere",
            "no bill comes from this channel (channels with a bill: alipay, wechat)",
        ),
        (
            vars.clone(),
            "orders create --out-trade-no X2 --amount 1 --deadline 1000-01-01T00:00:00Z",
            "in the past",
        ),
        (
            vars.clone(),
            "orders create --out-trade-no X3 --amount 92000000000000000 --close-after 1m",
            "amount",
        ),
    ];
    for (vars, command, word) in cases {
        let args: Vec<&str> = command.split(' ').collect();
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), run(&vars, &args))
            .await
            .unwrap_or_else(|_| panic!("{command} did not fail at once"));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{command} succeeded: {stderr}");
        assert!(stderr.contains(word), "{command}: {stderr}");
        assert!(!stderr.contains("SeCrEt123"), "{command}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// Logs written to a pipe carry no colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("oc-colour-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .args(["gateway-sim", "--listen", "127.0.0.1:0", "--keys-dir"])
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = sim.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the simulator logs its start")
        .unwrap()
        .expect("a line");
    sim.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
    assert!(first.contains("listening"), "{first}");
    assert!(!first.contains('\u{1b}'), "colour codes in {first:?}");
}

/// Secrets never reach the output, on start-up errors, on unreachable servers,
/// or from a flag clap would have echoed; and every secret can come from a file.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_print_and_can_come_from_files() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-cli-secrets-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let with = |pairs: &[(&str, &str)]| {
        let mut v = vars.clone();
        for (name, value) in pairs {
            v.retain(|(k, _)| k != name);
            v.push(((*name).into(), (*value).into()));
        }
        v
    };

    // Unreachable servers with a password in the URL.
    let out = run(
        &with(&[(
            "DATABASE_URL",
            "postgres://postgres:SeCrEt123@127.0.0.1:1/x",
        )]),
        &["orders", "show", "X"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        !text(&out.stderr).contains("SeCrEt123"),
        "{}",
        text(&out.stderr)
    );
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .arg("worker")
        .envs(with(&[
            ("AMQP_URL", "amqp://guest:SeCrEt123@127.0.0.1:1/%2f"),
            ("ORDER_CLOSER_HTTP_LISTEN", "off"),
        ]))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = worker.id().unwrap().to_string();
    // Read its log until it says it is reconnecting (however long a loaded machine takes
    // to get there), then stop it and read the rest.
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(worker.stderr.take().unwrap()));
    let mut stderr = String::new();
    let reconnecting = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            stderr.push_str(&line);
            stderr.push('\n');
            if line.contains("reconnecting") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    worker.wait().await.unwrap();
    assert!(reconnecting, "{stderr}");
    assert!(!stderr.contains("SeCrEt123"), "{stderr}");

    // A private key given inline (it starts with '-'): accepted, and when unusable the
    // error does not repeat it.
    // A simulator key file that is not a key: named, never shown.
    let key = "-----BEGIN PRIVATE KEY-----\nU2VDckV0S2V5TWF0ZXJpYWw=\n-----END PRIVATE KEY-----";
    let keys = dir.join("sim-keys");
    std::fs::create_dir_all(keys.join("alipay")).unwrap();
    std::fs::write(keys.join("alipay/sim_private.pem"), key).unwrap();
    let out = run(
        &vars,
        &[
            "gateway-sim",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            keys.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sim_private.pem"), "{stderr}");
    assert!(!stderr.contains("U2VDckV0S2V5TWF0ZXJpYWw"), "{stderr}");

    // A key pasted where a path goes is not repeated in the error.
    let pasted = format!("--file={key}");
    let out = run(
        &vars,
        &[
            "reconcile",
            "bill",
            "--channel",
            "alipay",
            "--date",
            "2026-11-01",
            &pasted,
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(!stderr.contains("U2VDckV0S2V5TWF0ZXJpYWw"), "{stderr}");

    // Secrets from files (`<VAR>_FILE`).
    let url_file = dir.join("database_url");
    std::fs::write(&url_file, format!("{}\n", env.database_url)).unwrap();
    let mut from_file = vars.clone();
    from_file.retain(|(k, _)| k != "DATABASE_URL");
    from_file.push(("DATABASE_URL_FILE".into(), url_file.display().to_string()));
    let out = run(&from_file, &["orders", "show", "NO-SUCH-ORDER"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let both = with(&[("DATABASE_URL_FILE", url_file.to_str().unwrap())]);
    let out = run(&both, &["migrate"]).await;
    assert!(
        text(&out.stderr).contains("not both"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// `orders extend` and `orders cancel`, with their exit codes.
#[tokio::test(flavor = "multi_thread")]
async fn orders_extend_and_cancel_from_the_shell() {
    let mut env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-cli-cancel-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let no = env.no("shell");
    env.create(&no, 990, std::time::Duration::from_secs(3600))
        .await;

    let out = run(&vars, &["orders", "extend", &no, "--by", "10m"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("deadline moved"));
    let out = run(
        &vars,
        &[
            "orders",
            "extend",
            &no,
            "--deadline",
            "2020-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not later"),
        "{}",
        text(&out.stderr)
    );

    // No worker yet: requested, not decided (exit 4).
    let out = run(&vars, &["orders", "cancel", &no, "--wait", "1s"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    env.start_worker(4, 8);
    env.settled(&no, std::time::Duration::from_secs(20)).await;
    let out = run(&vars, &["orders", "cancel", &no]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("CLOSED"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&vars, &["orders", "cancel", "no-such-order"]).await;
    assert_eq!(out.status.code(), Some(2));

    // An operator's refund: the closed order was never paid, so there is nothing to give
    // back; bad requests are named (exit 2).
    let refund = |args: &[&str]| {
        let mut all = vec!["reconcile", "anomalies"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for (args, word) in [
        (refund(&["--refund", &no, "--dry-run"]), "nothing to refund"),
        (refund(&["--refund", "no-such-order"]), "no order"),
        (refund(&["--dry-run"]), "--refund"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&vars, &args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(word),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // The listing: no anomaly, no open refund (exit 0).
    let out = run(&vars, &["reconcile", "anomalies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("refunds not yet succeeded: 0"),
        "{}",
        text(&out.stdout)
    );

    // The buyer scans the QR code shown before the cancel (it had no expiry) and pays
    // the closed order: a dry run says what would be refunded and changes nothing; the
    // refund itself is requested, sent by the worker, and a second request is a no-op.
    env.buyers
        .buyer(&no)
        .scans(990)
        .pays()
        .send()
        .await
        .unwrap();
    let out = run(
        &vars,
        &["reconcile", "anomalies", "--refund", &no, "--dry-run"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("dry run: the gateway reports 9.90 paid")
            && text(&out.stdout).contains("would refund 9.90"),
        "{}",
        text(&out.stdout)
    );
    let trade = || async { env.buyers.trade(&no).await.unwrap().unwrap() };
    assert!(
        trade().await.refunds.is_empty(),
        "a dry run refunds nothing"
    );
    let out = run(&vars, &["reconcile", "anomalies", "--refund", &no]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("refund of 9.90 requested"),
        "{}",
        text(&out.stdout)
    );
    let refunded = crate::common::eventually(std::time::Duration::from_secs(20), || async {
        (trade().await.refunds.len() == 1).then_some(())
    })
    .await;
    assert!(refunded.is_some(), "the worker sent the refund");
    let settled = crate::common::eventually(std::time::Duration::from_secs(20), || async {
        let out = run(&vars, &["reconcile", "anomalies", "--refund", &no]).await;
        text(&out.stdout)
            .contains("was refunded before")
            .then_some(out)
    })
    .await;
    let out = settled.expect("the refund is recorded as succeeded");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(trade().await.refunds.len(), 1, "refunded once");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// A gateway with some of its variables set but not its signing key
/// stops `worker` and `notify` naming the key (it was silently off: its notifications
/// answered 404, its orders parked as `unknown_channel`); the gateways that are on, and
/// those that are off, are logged at start-up.
#[tokio::test(flavor = "multi_thread")]
async fn a_half_configured_gateway_stops_the_process_and_the_gateways_on_are_logged() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-cli-half-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let gateways_line = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.contains("payment gateways"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no gateways line in {stderr}"))
    };

    // Every gateway configured: all on.
    let out = run(&vars, &["reconcile", "overdue", "--dry-run"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = gateways_line(&stderr);
    for channel in order_closer::gateway::rules::channels() {
        assert!(line.contains(&format!("\"{channel}\"")), "{line}");
    }
    assert!(line.contains("off=[]"), "{line}");

    for plugin in order_closer::gateway::ALL {
        let key = plugin.configured_by[0];
        let key_file = format!("{key}_FILE");
        let channel = plugin.rules.channel;

        // Everything but the signing key: refused, naming it.
        let mut half = vars.clone();
        half.retain(|(k, _)| *k != key && *k != key_file);
        for command in ["worker", "notify --listen 127.0.0.1:0"] {
            let args: Vec<&str> = command.split(' ').collect();
            let out = tokio::time::timeout(std::time::Duration::from_secs(60), run(&half, &args))
                .await
                .unwrap_or_else(|_| panic!("{channel}: {command} started"));
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{channel}: {command}: {stderr}");
            assert!(
                stderr.contains(&format!("the {channel} gateway is half-configured"))
                    && stderr.contains(key),
                "{channel}: {command}: {stderr}"
            );
        }

        // None of its variables: off, and said so.
        let mut without = vars.clone();
        without.retain(|(k, _)| !plugin.variables.contains(&k.as_str()));
        let out = run(&without, &["reconcile", "overdue", "--dry-run"]).await;
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{channel}: {stderr}");
        let line = gateways_line(&stderr);
        assert!(line.contains(&format!("off=[\"{channel}\"]")), "{line}");
    }
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// The help names every gateway's simulator and resend
/// schedule, shows no variable's value (`SIM_NOTIFY_URL` may hold a password), and each
/// duration flag's error names that flag, within its bound.
#[tokio::test]
async fn help_and_flag_errors_say_the_right_thing() {
    let out = run(&[], &["--help"]).await;
    let help = text(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("Alipay gateway simulator"), "{help}");
    assert!(
        help.contains("gateway-sim  Run the gateway simulator"),
        "{help}"
    );

    let env = [(
        "SIM_NOTIFY_URL".to_owned(),
        "http://notify:SeCrEt123@127.0.0.1:8081/notify".to_owned(),
    )];
    let out = run(&env, &["gateway-sim", "--help"]).await;
    let help = text(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("SeCrEt123"), "{help}");
    assert!(help.contains("[env: SIM_NOTIFY_URL]"), "{help}");
    for plugin in order_closer::sim::GATEWAYS {
        let steps: Vec<String> = plugin
            .resend_schedule
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        let listed = format!("{}: {}", plugin.channel, steps.join(", "));
        assert!(help.contains(&listed), "{listed} not in {help}");
    }

    for (command, named, not_named) in [
        ("orders cancel X --wait 0s", "--wait", "--close-after"),
        (
            "orders cancel X --wait 100000000y",
            "--wait",
            "--close-after",
        ),
        ("orders cancel X --wait 2h", "at most 1h", "--close-after"),
        ("orders extend X --by 0s", "--by", "--close-after"),
        ("orders extend X --by 100000000y", "--by", "--close-after"),
        (
            "orders create --out-trade-no X --amount 1 --close-after 100000000y",
            "--close-after",
            "--wait",
        ),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        let out = run(&[], &args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains(named), "{command}: {stderr}");
        assert!(!stderr.contains(not_named), "{command}: {stderr}");
    }

    // A key pasted as an argument is never repeated.
    let pem = "-----BEGIN PRIVATE KEY-----\nU2VDckV0S2V5TWF0ZXJpYWw=\n-----END PRIVATE KEY-----";
    let private_key = format!("--private-key={pem}");
    for args in [
        vec!["keygen", pem],
        vec!["keygen", "--out", pem],
        vec!["gateway-sim", private_key.as_str()],
    ] {
        let out = run(&[], &args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("unexpected argument"), "{stderr}");
        assert!(!stderr.contains("U2VDckV0S2V5TWF0ZXJpYWw"), "{stderr}");
        assert!(!stderr.contains("BEGIN PRIVATE KEY"), "{stderr}");
    }
}
