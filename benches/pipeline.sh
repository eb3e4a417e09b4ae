#!/usr/bin/env bash
# Pipelined requests on one connection, side by side for several broker binaries in one run:
# produce throughput (sluice-load, 1 producer, 16 requests in flight, acks=all, 1 KiB messages,
# 16 partitions) and OffsetCommit rate (sluice-load commits, 16 in flight). Each binary gets a
# fresh broker (2 shards, its own data dir and port); the binaries take turns ROUNDS times so
# that the machine's noise spreads over all of them.
#
# Usage: benches/pipeline.sh BIN [BIN ...]   e.g. benches/pipeline.sh /tmp/sluice-before target/release/sluice
# Environment: DURATION (default 10s), ROUNDS (default 2), IN_FLIGHT (default 16).
# Needs: cargo build --release -p sluice-load; python3 (free ports).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
load="$root/target/release/sluice-load"
duration="${DURATION:-10s}"
rounds="${ROUNDS:-2}"
in_flight="${IN_FLIGHT:-16}"
(($#)) || { sed -n '2,12p' "$0"; exit 2; }
[[ -x $load ]] || { echo "missing $load: cargo build --release -p sluice-load" >&2; exit 1; }

scratch=$(mktemp -d)
# Reports, tool output and broker logs stay here; the data directories go.
results="$root/target/pipeline-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
pid=""
cleanup() {
    [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$scratch"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '%-40s %5s %14s %12s %14s\n' binary round "produce msg/s" "produce MB/s" "commits/s"
for round in $(seq 1 "$rounds"); do
    for bin in "$@"; do
        port=$(free_port)
        data="$scratch/data-$round-$(basename "$bin")-$port"
        "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" --advertised-listener "127.0.0.1:$port" \
            --shards 2 --metrics-listen '' >"$results/broker-$round-$port.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        out="$results/run-$round-$port"
        "$load" run -b "127.0.0.1:$port" --producers 1 --consumers 0 --partitions 16 \
            --message-size 1KiB --acks all --max-in-flight "$in_flight" --rate 0 \
            --warmup 2s --duration "$duration" --output "$out" >"$out.txt" 2>&1
        read -r msgs mbs < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))["produce"]
print(round(p["msgs_per_s"]), round(p["mb_per_s"], 1))' "$out/report.json" 2>/dev/null || echo "? ?")
        # The tool exits non-zero when the committed offsets do not read back as the last ones
        # sent (a broker that reorders pipelined commits): reported, not fatal.
        commits=$("$load" commits -b "127.0.0.1:$port" --in-flight "$in_flight" --duration "$duration" \
            2>"$out.commits.err" | tee "$out.commits.txt" | sed -n 's/.*: \([0-9]*\) commits\/s.*/\1/p') || true
        if grep -q "OUT OF ORDER" "$out.commits.txt"; then commits="$commits (read back OUT OF ORDER)"; fi
        [[ -n $commits ]] || commits="failed: $(head -n 1 "$out.commits.err" | cut -c1-80)"
        printf '%-40s %5s %14s %12s %s\n' "$bin" "$round" "$msgs" "$mbs" "$commits"
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || echo "broker exited with $? (log: $results/broker-$round-$port.log)" >&2
        pid=""
        rm -rf "$data"
    done
done
