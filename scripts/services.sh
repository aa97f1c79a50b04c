#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) run locally.
#
# - Installs the Debian/Ubuntu packages `postgresql` and `rabbitmq-server` if they are
#   missing (or, if they are missing and a Docker engine is running, starts the
#   `postgres` and `rabbitmq` services of docker/compose.yaml instead).
# - Starts whichever service is not answering, and waits until it is ready.
# - Makes sure postgres://postgres:postgres@127.0.0.1:5432/postgres logs in.
#
# Idempotent; silent when everything already runs; one line per action taken.
# Set SKIP_SERVICES=1 to do nothing (bring your own services).
set -euo pipefail

if [[ "${SKIP_SERVICES:-0}" == "1" ]]; then
    exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_HOST=127.0.0.1
PG_PORT=5432
PG_URL="postgresql://postgres:postgres@${PG_HOST}:${PG_PORT}/postgres"
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
PG_WAIT_SECS="${PG_WAIT_SECS:-60}"
RABBIT_WAIT_SECS="${RABBIT_WAIT_SECS:-120}"

say() { echo "services.sh: $*"; }
die() {
    echo "services.sh: error: $*" >&2
    exit 1
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ "$(id -u)" == "0" ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not available"
    fi
}

# Run a command quietly; show its output only when it fails.
quiet() {
    local out rc=0
    out="$(mktemp)"
    "$@" >"$out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "services.sh: command failed (exit $rc): $*" >&2
        cat "$out" >&2
    fi
    rm -f "$out"
    return "$rc"
}

# Is something accepting TCP connections on host:port?
port_open() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" >/dev/null 2>&1
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "'$*' is missing and apt-get is not available: install it by hand, or set SKIP_SERVICES=1 and point DATABASE_URL/AMQP_URL at your own services"
    if [[ $APT_UPDATED == 0 ]]; then
        say "apt-get update"
        quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

pg_installed() {
    command -v psql >/dev/null 2>&1 &&
        command -v pg_ctlcluster >/dev/null 2>&1 &&
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

rabbit_installed() {
    # /usr/sbin is not on every non-root PATH.
    command -v rabbitmq-server >/dev/null 2>&1 || [[ -x /usr/sbin/rabbitmq-server ]]
}

rabbit_bin() {
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "/usr/sbin/$1"; fi
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

pg_login_ok() {
    psql "$PG_URL" -XqtAc 'select 1' >/dev/null 2>&1
}

# Run psql as the postgres OS user over the local socket (peer authentication).
psql_as_postgres() {
    if [[ "$(id -u)" == "0" ]]; then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- psql -X "$@")
        else
            (cd / && su postgres -s /bin/sh -c "psql -X $(printf '%q ' "$@")")
        fi
    else
        (cd / && as_root -u postgres psql -X "$@")
    fi
}

docker_usable() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

compose_up() {
    local file="$ROOT/docker/compose.yaml"
    if docker compose version >/dev/null 2>&1; then
        say "starting $* with docker compose -f docker/compose.yaml"
        quiet docker compose -f "$file" up -d --wait "$@"
        return
    fi
    command -v docker-compose >/dev/null 2>&1 ||
        die "docker runs but neither 'docker compose' nor 'docker-compose' is available"
    # docker-compose v1 has no --wait: poll the containers' healthchecks.
    say "starting $* with docker-compose -f docker/compose.yaml"
    quiet docker-compose -f "$file" up -d "$@"
    local svc id deadline=$((SECONDS + RABBIT_WAIT_SECS))
    for svc in "$@"; do
        id="$(docker-compose -f "$file" ps -q "$svc")"
        until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null)" == healthy ]]; do
            ((SECONDS < deadline)) || die "docker service $svc is not healthy after ${RABBIT_WAIT_SECS}s"
            sleep 2
        done
    done
}

# `services.sh --install-promtool`: Debian's prometheus package for its promtool (the
# alerting-rule tests), without starting the Prometheus service it carries (it would
# listen on 9090, the worker's default metrics port).
if [[ "${1:-}" == "--install-promtool" ]]; then
    command -v promtool >/dev/null 2>&1 && exit 0
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        trap 'as_root rm -f "$policy"' EXIT
    fi
    apt_install --no-install-recommends prometheus
    exit 0
fi

# ---------------------------------------------------------------------------
# Docker branch: only when the local packages are absent and an engine runs.
# ---------------------------------------------------------------------------
if ! pg_installed && ! rabbit_installed && ! { pg_ready && port_open "$AMQP_HOST" "$AMQP_PORT"; } && docker_usable; then
    compose_up postgres rabbitmq
    exit 0
fi

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
if ! pg_ready; then
    pg_installed || apt_install postgresql

    # A cluster exists after a normal Debian install; create one if it does not.
    if [[ -z "$(ls /etc/postgresql 2>/dev/null || true)" ]]; then
        # shellcheck disable=SC2012 # version directories: plain numbers
        PG_VER="$(ls /usr/lib/postgresql | sort -V | tail -1)"
        say "creating PostgreSQL $PG_VER cluster main"
        quiet as_root pg_createcluster "$PG_VER" main
    fi
    # shellcheck disable=SC2012
    PG_VER="$(ls /etc/postgresql | sort -V | tail -1)"
    say "starting PostgreSQL $PG_VER cluster main"
    # 'start' fails when the cluster already runs but is just not ready yet; the wait
    # below decides.
    quiet as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main start || true

    for ((i = 0; i < PG_WAIT_SECS; i++)); do
        pg_ready && break
        sleep 1
    done
    pg_ready || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT after ${PG_WAIT_SECS}s (see /var/log/postgresql/)"
fi

if ! pg_login_ok; then
    # Fresh Debian: scram on 127.0.0.1 and no password for the postgres role.
    say "setting the password of PostgreSQL role postgres to 'postgres'"
    quiet psql_as_postgres -p "$PG_PORT" -qc "ALTER ROLE postgres PASSWORD 'postgres'"
    pg_login_ok || die "cannot log in with $PG_URL even after setting the password (check pg_hba.conf)"
fi

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------
if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
    rabbit_installed || apt_install rabbitmq-server
    RABBITMQ_SERVER="$(rabbit_bin rabbitmq-server)"
    RABBITMQCTL="$(rabbit_bin rabbitmqctl)"

    # The package may have started it (systemd); only start a node if none answers.
    if ! as_root timeout 30 "$RABBITMQCTL" -q status >/dev/null 2>&1; then
        if as_root timeout 30 "$RABBITMQCTL" -q ping >/dev/null 2>&1; then
            # The Erlang node runs but the rabbit application is stopped (stop_app), or
            # it is still booting (then start_app fails harmlessly; the wait decides).
            say "starting the RabbitMQ application (node up, app stopped)"
            quiet as_root timeout 60 "$RABBITMQCTL" start_app || true
        else
            say "starting RabbitMQ"
            quiet as_root "$RABBITMQ_SERVER" -detached
        fi
    fi
    # `rabbitmqctl await_startup` fails at once while the freshly detached node has not
    # yet registered with epmd, so poll: the node must boot and the port must answer.
    deadline=$((SECONDS + RABBIT_WAIT_SECS))
    until port_open "$AMQP_HOST" "$AMQP_PORT" &&
        as_root timeout 30 "$RABBITMQCTL" -q await_startup >/dev/null 2>&1; do
        ((SECONDS < deadline)) ||
            die "RabbitMQ is not answering on $AMQP_HOST:$AMQP_PORT after ${RABBIT_WAIT_SECS}s (see /var/log/rabbitmq/)"
        sleep 1
    done
fi
