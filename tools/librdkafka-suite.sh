#!/usr/bin/env bash
# librdkafka's own integration suite against a Sluice broker.
#
#   tools/librdkafka-suite.sh [--bootstrap HOST:PORT | --broker-bin PATH] [--timeout SECONDS]
#                             [--out DIR] [--quick | --all | NNNN ...]
#
# The suite's source, tests included, ships inside the rdkafka-sys crate the tests already build
# (`librdkafka/` in cargo's registry). This script copies it under the target directory, builds
# librdkafka and its `test-runner` once (`./configure --disable-gssapi --disable-curl`,
# `make libs`, `make -C tests build`; a stamp file skips it afterwards), points `test.conf` at a
# broker, and runs each chosen test on its own:
#
#     TESTS=NNNN TEST_KAFKA_VERSION=3.9.0 ./test-runner -p1 -Q -E -L
#
# (quick mode, no socket-emulation tests, no local-only tests), each bounded by --timeout
# (default 300 s). It prints one line per test (PASSED, FAILED, SKIPPED by the runner, TIMEOUT)
# and writes the table and every test's log to --out (default
# target/librdkafka-suite/results). Exit 0 when no test FAILED or timed out.
#
# Without --bootstrap it starts target/release/sluice (or --broker-bin) itself (2 shards, auto-created topics
# with 4 partitions, as the suite expects of `num.partitions`, a 0 ms initial rebalance delay
# as in the suite's own clusters) on a free port and a temporary data directory, and stops it
# at the end. --quick runs the subset the test command runs (QUICK below); --all every broker
# test the runner knows (0000-0999).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
[[ $target == /* ]] || target=$root/$target

# The subset the README's test command runs (tests/librdkafka_suite.rs): quick, single-broker
# tests of producing, consuming, offsets and groups, including 0030 (offset commit order).
QUICK=(0001 0002 0003 0005 0007 0008 0012 0013 0014 0015 0017 0019 0020 0021 0022 0026 0028
    0030 0031 0034 0036 0038 0039 0040 0041 0042 0044 0046 0047 0048)

bootstrap=""
sluice=""
timeout_s=300
out=""
tests=()
mode=""
while (($#)); do
    case $1 in
        --bootstrap) bootstrap=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --broker-bin) sluice=$2; shift 2 ;;
        --quick) mode=quick; shift ;;
        --all) mode=all; shift ;;
        [0-9][0-9][0-9][0-9]) tests+=("$1"); shift ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }

# --- Source and build ------------------------------------------------------------------------
version=$(awk '/^name = "rdkafka-sys"/ { getline; gsub(/"/, "", $3); print $3 }' "$root/Cargo.lock")
[[ -n $version ]] || { echo "rdkafka-sys is not in Cargo.lock" >&2; exit 1; }
cargo_home=${CARGO_HOME:-$HOME/.cargo}
find_source() { ls -d "$cargo_home"/registry/src/*/"rdkafka-sys-$version"/librdkafka 2>/dev/null | head -n 1; }
source_dir=$(find_source)
if [[ -z $source_dir ]]; then
    (cd "$root" && cargo fetch --quiet)
    source_dir=$(find_source)
fi
[[ -n $source_dir ]] || { echo "librdkafka source of rdkafka-sys $version not found" >&2; exit 1; }

suite=$target/librdkafka-suite
build=$suite/librdkafka-$version
mkdir -p "$suite"
exec 9>"$suite/.build.lock"
flock 9
if [[ ! -f $build/.built ]]; then
    say "building librdkafka $version and its test-runner in $build (once, a few minutes)"
    rm -rf "$build"
    cp -a "$source_dir" "$build"
    (
        cd "$build"
        ./configure --disable-gssapi --disable-curl >"$suite/configure.log" 2>&1
        make -j"$(nproc)" libs >"$suite/make-libs.log" 2>&1
        make -j"$(nproc)" -C tests build >"$suite/make-tests.log" 2>&1
    ) || { echo "librdkafka build failed: see $suite/*.log" >&2; tail -n 30 "$suite"/*.log >&2; exit 1; }
    touch "$build/.built"
fi
flock -u 9
runner_dir=$build/tests

if [[ $mode == quick ]]; then
    tests=("${QUICK[@]}")
elif [[ $mode == all || ${#tests[@]} -eq 0 ]]; then
    mapfile -t tests < <(ls "$runner_dir" | sed -n 's/^\(0[0-9][0-9][0-9]\)-.*\.c\(pp\)\?$/\1/p' | sort -u)
fi

# --- Broker ----------------------------------------------------------------------------------
broker_pid=""
scratch=$(mktemp -d)
cleanup() {
    if [[ -n $broker_pid ]]; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
if [[ -z $bootstrap ]]; then
    if [[ -z $sluice ]]; then
        sluice=$target/release/sluice
        [[ -x $sluice ]] || (cd "$root" && cargo build --release --quiet --bin sluice)
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    bootstrap=127.0.0.1:$port
    "$sluice" serve --data-dir "$scratch/data" --listen "$bootstrap" --advertised-listener "$bootstrap" \
        --shards 2 --num-partitions 4 --group-initial-rebalance-delay-ms 0 --metrics-listen '' \
        >"$scratch/broker.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${bootstrap%:*}/${bootstrap#*:}") 2>/dev/null && break
        sleep 0.1
    done
    say "sluice on $bootstrap (log: $scratch/broker.log, copied to the results)"
fi

out=${out:-$suite/results}
mkdir -p "$out"
conf=$out/test.conf
cat >"$conf" <<EOF
metadata.broker.list=$bootstrap
test.topic.random=true
EOF

# --- Run ---------------------------------------------------------------------------------------
table=$out/results.txt
: >"$table"
passed=0 failed=0 skipped=0
started=$(date +%s)
for t in "${tests[@]}"; do
    log=$out/$t.log
    t0=$(date +%s)
    set +e
    (cd "$runner_dir" && TESTS=$t TEST_KAFKA_VERSION=3.9.0 RDKAFKA_TEST_CONF=$conf \
        LD_LIBRARY_PATH=$build/src:$build/src-cpp \
        timeout --kill-after=10 "$timeout_s" ./test-runner -p1 -Q -E -L) >"$log" 2>&1
    rc=$?
    set -e
    seconds=$(($(date +%s) - t0))
    # The runner's summary table, without colour codes: "| 0030_offset_commit | PASSED | 6.2s |".
    row=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E "^\|[[:space:]]*${t}_" | head -n 1 || true)
    name=$(awk -F'|' '{ gsub(/ /, "", $2); print $2 }' <<<"$row")
    # A runner that aborted prints no table: take the name from its log lines.
    [[ -n $name ]] || name=$(sed -n "s/^.*\[\(${t}_[A-Za-z0-9_]*\) .*/\1/p" "$log" | head -n 1)
    status=$(awk -F'|' '{ gsub(/ /, "", $3); print $3 }' <<<"$row")
    if ((rc == 124 || rc == 137)); then
        result=TIMEOUT
    elif [[ $status == PASSED && $rc -eq 0 ]]; then
        result=PASSED
    elif [[ $status == SKIPPED || ($rc -eq 0 && -z $status) ]]; then
        result=SKIPPED
    else
        result=FAILED
    fi
    reason=""
    if [[ $result == FAILED ]]; then
        reason=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m1 -E "assertion failed|Test assertion|### Test" |
            cut -c1-200 || true)
    fi
    case $result in
        PASSED) passed=$((passed + 1)) ;;
        SKIPPED) skipped=$((skipped + 1)) ;;
        *) failed=$((failed + 1)) ;;
    esac
    printf '%s %-40s %-8s %5ss %s\n' "$t" "${name:-}" "$result" "$seconds" "$reason" | tee -a "$table"
done
[[ -n $broker_pid ]] && cp "$scratch/broker.log" "$out/broker.log"

printf '\n%d passed, %d failed, %d skipped (%ss; logs in %s)\n' \
    "$passed" "$failed" "$skipped" "$(($(date +%s) - started))" "$out" | tee -a "$table"
((failed == 0))
