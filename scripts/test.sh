#!/usr/bin/env bash
# The whole test suite (the README's test command):
#   services -> rustfmt check -> clippy (warnings are errors) -> the lean library alone ->
#   tests (parallel; the integration tests are the binary `all`) ->
#   the broker tests on classic queues -> the serial tests (the binary `serial`: they
#   restart a broker or kill processes) -> the chaos run (the binary `chaos`) on classic
#   and on quorum queues -> the three-node cluster runs -> doc tests.
# DATABASE_URL / AMQP_URL default to the local services started by scripts/services.sh;
# set SKIP_SERVICES=1 to use your own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/order_closer_test}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\ntest.sh: FAILED at step: %s\n' "$CURRENT" >&2
}
CURRENT="start"
trap fail ERR

CURRENT="services"
step "services (scripts/services.sh)"
scripts/services.sh

# Create the test database when it is missing (the tests use their own schemas in it).
if [[ "${SKIP_SERVICES:-0}" != "1" ]] && command -v psql >/dev/null 2>&1; then
    db_name="${DATABASE_URL##*/}"
    db_name="${db_name%%\?*}"
    admin_url="${DATABASE_URL%/*}/postgres"
    if [[ "$db_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] &&
        [[ -z "$(psql "$admin_url" -XtAc "select 1 from pg_database where datname = '$db_name'")" ]]; then
        echo "test.sh: creating database $db_name"
        psql "$admin_url" -Xqc "create database \"$db_name\""
    fi
fi

# promtool checks the alerting rules (tests/alerts.rs): Debian's prometheus package,
# installed without starting its service.
if ! command -v promtool >/dev/null 2>&1 && [[ "${SKIP_SERVICES:-0}" != "1" ]]; then
    CURRENT="install promtool (Debian package prometheus)"
    step "$CURRENT"
    scripts/services.sh --install-promtool
fi

# Components a minimal toolchain may lack.
if command -v rustup >/dev/null 2>&1; then
    missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if ((${#missing[@]})); then
        CURRENT="rustup component add ${missing[*]}"
        step "$CURRENT"
        rustup component add "${missing[@]}"
    fi
fi

CURRENT="cargo fmt --all -- --check"
step "$CURRENT"
cargo fmt --all -- --check

CURRENT="cargo clippy --workspace --all-targets -- -D warnings"
step "$CURRENT"
cargo clippy --workspace --all-targets -- -D warnings

# Every crate of the workspace on its own, with only the features it declares: a
# dependency or a feature that a crate uses without declaring cannot hide behind another
# crate of the same build.
for crate in $(sed -n 's/^name = "\(.*\)"$/\1/p' crates/*/Cargo.toml); do
    CURRENT="cargo clippy -p $crate --all-targets -- -D warnings"
    step "$CURRENT"
    cargo clippy -p "$crate" --all-targets -- -D warnings
done

# The shop's library alone: it builds, lints clean and pulls none of the worker's, the
# simulator's or the CLI's dependencies.
CURRENT="cargo clippy --lib --example create_order --no-default-features -- -D warnings"
step "$CURRENT (the lean library)"
cargo clippy --lib --example create_order --no-default-features -- -D warnings
# The features in between: the engine without the CLI, and the deployable binary (`cli`:
# no simulator, no benchmark, no test kit). Each must build and lint clean with its
# tests, so that no code (a test module, a dependency) leans on a feature it does not
# declare.
for features in worker cli; do
    CURRENT="cargo clippy --all-targets --no-default-features --features $features -- -D warnings"
    step "$CURRENT"
    cargo clippy --all-targets --no-default-features --features "$features" -- -D warnings
done

# `refuse_in_tree WHAT "CARGO TREE ARGS" CRATE...`: fails when the normal dependency tree
# of WHAT (a build named by its `cargo tree` arguments) holds any of the crates; prints
# how many crates the tree has.
refuse_in_tree() {
    local what="$1" args="$2"
    shift 2
    CURRENT="cargo tree -e normal $args (none of: $*)"
    step "$CURRENT"
    local tree
    # shellcheck disable=SC2086
    tree="$(cargo tree -e normal $args --prefix none)"
    for crate in "$@"; do
        if grep -q "^$crate v" <<<"$tree"; then
            echo "test.sh: $what depends on $crate" >&2
            return 1
        fi
    done
    echo "$what: $(sed 's/ (\*)//' <<<"$tree" | sort -u | wc -l) crates"
}

# The deployable binary carries none of the tooling's crates.
refuse_in_tree "the deployable binary" "--no-default-features --features cli" \
    order-closer-sim order-closer-testkit order-closer-bench plotters

# The shop's library, as the root package without its features and as the core crate:
# none of the server side's crates.
for lean in "--no-default-features" "-p order-closer-core"; do
    refuse_in_tree "the lean library ($lean)" "$lean" \
        axum hyper reqwest clap indicatif plotters zip prometheus-client tracing-subscriber
done

# The engine knows gateways only through the port: no gateway's crate in its tree.
refuse_in_tree "the engine" "-p order-closer-engine" \
    order-closer-alipay order-closer-wechat order-closer-sim

CURRENT="cargo test --workspace --all-targets -- --skip serial_"
step "$CURRENT (parallel)"
cargo test --workspace --all-targets -- --skip serial_

CURRENT="TEST_QUEUE_TYPE=classic cargo test --test all -- decisions_e2e:: delivery_e2e:: janitor_e2e::"
step "$CURRENT (the broker tests again on classic queues)"
TEST_QUEUE_TYPE=classic cargo test --test all -- decisions_e2e:: delivery_e2e:: janitor_e2e::

CURRENT="cargo test --test serial -- --test-threads=1"
step "$CURRENT (serial)"
cargo test --test serial -- --test-threads=1

# The chaos run restarts a broker (a throwaway node of its own) and kills workers: alone,
# with its figures printed, on classic and on quorum queues.
CURRENT="TEST_QUEUE_TYPE=classic cargo test --test chaos -- --nocapture serial_chaos_run"
step "$CURRENT (chaos run, a few minutes)"
TEST_QUEUE_TYPE=classic cargo test --test chaos -- --nocapture serial_chaos_run

CURRENT="TEST_QUEUE_TYPE=quorum cargo test --test chaos -- --nocapture serial_chaos_run"
step "$CURRENT (chaos run on quorum queues, a few minutes)"
TEST_QUEUE_TYPE=quorum cargo test --test chaos -- --nocapture serial_chaos_run

# Scale-out: a three-node RabbitMQ cluster of the test's own (quorum queues), three worker
# processes given every address; a node killed and the others restarted, then Postgres (a
# server of the test's own) restarted.
CURRENT="cargo test --test chaos -- --nocapture serial_cluster"
step "$CURRENT (three-node cluster runs, a few minutes)"
cargo test --test chaos -- --nocapture serial_cluster

CURRENT="cargo test --workspace --doc"
step "$CURRENT"
cargo test --workspace --doc

# Every intra-doc link resolves (a link to a private item, a renamed one).
CURRENT="RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps"
step "$CURRENT"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

trap - ERR
printf '\ntest.sh: ALL CHECKS PASSED (fmt, clippy, tests, classic-queue tests, serial tests, chaos runs, doc tests, doc links)\n'
