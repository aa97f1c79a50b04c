#!/usr/bin/env bash
# Before/after figures of a hot-path change, measured in one run:
#
#   scripts/bench-compare.sh BEFORE AFTER [ROUNDS] [-- extra bench flags]
#
# BEFORE and AFTER are git revisions (built in release mode in throw-away worktrees under
# $BENCH_COMPARE_DIR, by default ~/.cache/order-closer-compare: outside the repository,
# since a revision's package inside this workspace's tree would be taken for a member of
# it) or paths to order-closer binaries. Each round runs
# `order-closer bench` with BEFORE, then with AFTER (interleaved, so that drift on a
# shared machine hits both alike), skipping the ceilings, the classic run and the
# pending run unless the extra flags say otherwise. Prints the median of each figure
# for both and the ratio AFTER / BEFORE. Needs python3 for reading the JSON results.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    echo "usage: $0 BEFORE AFTER [ROUNDS] [-- bench flags...]" >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
before="$1"
after="$2"
shift 2
rounds=3
if [[ $# -gt 0 && "$1" != "--" ]]; then
    rounds="$1"
    shift
fi
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || usage
if [[ $# -gt 0 ]]; then
    [[ "$1" == "--" ]] || usage
    shift
fi
extra=("$@")

command -v python3 >/dev/null 2>&1 || {
    echo "bench-compare: python3 is needed to read the results" >&2
    exit 1
}
scripts/services.sh

compare_root="${BENCH_COMPARE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/order-closer-compare}"

# A binary for a revision or a path.
binary() {
    local what="$1"
    if [[ -x "$what" && -f "$what" ]]; then
        echo "$what"
        return
    fi
    local rev
    rev="$(git rev-parse --verify --short "$what^{commit}")" || {
        echo "bench-compare: $what is neither a binary nor a git revision" >&2
        exit 1
    }
    local tree="$compare_root/$rev"
    if [[ ! -x "$tree/target/release/order-closer" ]]; then
        echo "bench-compare: building $what ($rev) in $tree" >&2
        rm -rf "$tree"
        git worktree add --force --detach "$tree" "$rev" >/dev/null
        (cd "$tree" && cargo build --release --quiet) >&2 || {
            echo "bench-compare: building $what failed" >&2
            exit 1
        }
    fi
    echo "$tree/target/release/order-closer"
}

before_bin="$(binary "$before")"
after_bin="$(binary "$after")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The flags a binary knows (an older one may lack --pending or --scale-out).
flags_for() {
    local flags=(--skip ceilings --skip classic)
    local help
    help="$("$1" bench --help 2>/dev/null || true)"
    if grep -q -- '--pending' <<<"$help"; then
        flags+=(--pending 0)
    fi
    # The scale-out run measures worker counts, not a change: left out where known.
    if grep -q -- '--scale-out' <<<"$help"; then
        flags+=(--skip scale-out)
    fi
    echo "${flags[@]}"
}
read -r -a before_flags <<<"$(flags_for "$before_bin")"
read -r -a after_flags <<<"$(flags_for "$after_bin")"

for ((i = 1; i <= rounds; i++)); do
    for side in before after; do
        bin="$before_bin"
        flags=("${before_flags[@]}")
        if [[ $side == after ]]; then
            bin="$after_bin"
            flags=("${after_flags[@]}")
        fi
        echo "bench-compare: round $i/$rounds, $side" >&2
        "$bin" bench "${flags[@]}" "${extra[@]}" --out "$out/$side-$i.json" --chart "$out/$side-$i.png" \
            >"$out/$side-$i.log" 2>&1 || {
            echo "bench-compare: the $side run failed:" >&2
            tail -20 "$out/$side-$i.log" >&2
            exit 1
        }
    done
done

python3 - "$out" "$rounds" "$before" "$after" <<'EOF'
import json, os, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
before, after = (os.path.basename(a.rstrip("/")) for a in sys.argv[3:5])
figures = [
    ("pipeline decisions/s", ("pipeline", "decisions_per_second")),
    ("pipeline lateness p50 ms", ("pipeline", "lateness_ms", "p50")),
    ("pipeline lateness p99 ms", ("pipeline", "lateness_ms", "p99")),
    ("worker CPU ms/decision", ("pipeline", "worker_cpu_ms_per_decision")),
    ("  deciding only", ("pipeline", "worker_cpu_ms_per_decision_after_deadline")),
    ("worker peak RSS MiB", ("pipeline", "worker_peak_rss_mib")),
    ("create_order/s", ("create", "create_order_per_second")),
    ("raw INSERT/s", ("create", "raw_insert_per_second")),
    ("create_order / raw insert", ("create", "ratio")),
    ("sustained p99 ms", ("sustained", "lateness_ms", "p99")),
    ("notifications/s to commit", ("notifications", "notifications_per_second")),
    ("payment to PAID p50 ms", ("notifications", "payment_to_paid_ms", "p50")),
    ("payment to PAID p99 ms", ("notifications", "payment_to_paid_ms", "p99")),
]

def get(report, path):
    for key in path:
        if not isinstance(report, dict) or report.get(key) is None:
            return None
        report = report[key]
    return report

runs = {
    side: [json.load(open(f"{out}/{side}-{i}.json")) for i in range(1, rounds + 1)]
    for side in ("before", "after")
}
print(f"\n{'median of ' + str(rounds) + ' interleaved runs':<34} {before[:14]:>14} {after[:14]:>14} {'after/before':>13}")
for name, path in figures:
    values = {s: [v for v in (get(r, path) for r in runs[s]) if v is not None] for s in runs}
    if not values["before"] or not values["after"]:
        continue
    b, a = statistics.median(values["before"]), statistics.median(values["after"])
    ratio = f"{a / b:.2f}x" if b else "-"
    print(f"{name:<34} {b:>14.3f} {a:>14.3f} {ratio:>13}")
EOF
