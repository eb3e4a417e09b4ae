#!/usr/bin/env bash
# The log cleaner on this host, in one run on one broker (--shards 1, so every topic shares
# the cleaner's core):
#   1. fill a keyed topic `table` (cleanup.policy=delete for now: no cleaning) with
#      FILL_SECONDS of 1 KiB updates of KEYS keys at the maximum rate;
#   2. measure acks=all produce latency to another topic `other` at RATE msgs/s, the cleaner
#      idle;
#   3. switch `table` to cleanup.policy=compact (the cleaner starts on its whole dirty log)
#      and measure `other` again the same way while it works;
#   4. wait for the cleaner to finish; report its throughput (MB/s of dirty log read, from
#      its `log cleaner pass` log lines), the partition's size before and after, the broker's
#      memory (VmHWM) and CPU seconds, and the two latency runs side by side.
#
# Usage: benches/compaction.sh [BIN]   (default: target/release/sluice)
# Environment: FILL_SECONDS (20), KEYS (100000), RATE (5000), DURATION (15s),
#   IO_BOUND (log_cleaner_io_max_bytes_per_sec, default 104857600; 0: none),
#   DEDUPE (log_cleaner_dedupe_buffer_bytes, default 33554432).
# Needs: cargo build --release --workspace.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/sluice}"
load="$root/target/release/sluice-load"
fill="${FILL_SECONDS:-20}"
keys="${KEYS:-100000}"
rate="${RATE:-5000}"
duration="${DURATION:-15s}"
io_bound="${IO_BOUND:-104857600}"
dedupe="${DEDUPE:-33554432}"
[[ -x $bin ]] || { echo "missing $bin: cargo build --release" >&2; exit 1; }
[[ -x $load ]] || { echo "missing $load: cargo build --release -p sluice-load" >&2; exit 1; }

scratch=$(mktemp -d)
results="$root/target/compaction-bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
pid=""
cleanup() {
    [[ -n $pid ]] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    rm -rf "$scratch"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
metrics=$(free_port)
cat > "$scratch/sluice.toml" <<EOF
log_cleaner_backoff_ms = 200
log_cleaner_io_max_bytes_per_sec = $io_bound
log_cleaner_dedupe_buffer_bytes = $dedupe
EOF
"$bin" serve --config "$scratch/sluice.toml" --data-dir "$scratch/data" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" --shards 1 \
    > "$results/broker.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
bootstrap="127.0.0.1:$port"
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
size() {
    curl -s "http://127.0.0.1:$metrics/metrics" |
        awk -v t="topic=\"$1\"" '/^sluice_partition_size_bytes\{/ && index($0, t) { print $NF }'
}

"$bin" topic --bootstrap-server "$bootstrap" create table -p 1 \
    -c cleanup.policy=delete -c segment.bytes=67108864 -c retention.ms=-1 > /dev/null
echo "filling table: ${fill}s of 1 KiB updates of $keys keys"
"$load" run -b "$bootstrap" -o "$results/fill" --topic table --partitions 1 --message-size 1KiB \
    --producers 1 --consumers 0 --acks all --rate 0 --keys random --key-count "$keys" \
    --warmup 0s --duration "${fill}s" > "$results/fill.txt" 2>&1
before=$(size table)
echo "table holds $before bytes"

measure() {
    "$load" run -b "$bootstrap" -o "$results/$1" --name "$1" --topic other --partitions 1 \
        --message-size 1KiB --producers 1 --consumers 0 --acks all --rate "$rate" \
        --warmup 2s --duration "$duration" > "$results/$1.txt" 2>&1
    printf '%-16s %s\n' "$1" "$(grep -E '^publish ' "$results/$1.txt" | head -n 1 | tr -s ' ')"
}

echo "publish columns: p50 p75 p95 p99 p99.9 p99.99 max mean (ms); results in $results"
measure cleaner-idle
t0=$(ticks)
"$bin" topic --bootstrap-server "$bootstrap" alter-config table --set cleanup.policy=compact \
    > /dev/null
measure cleaner-busy
for _ in $(seq 1 600); do
    ratio=$(curl -s "http://127.0.0.1:$metrics/metrics" |
        awk '/^sluice_log_cleaner_dirty_bytes\{/ && /topic="table"/ { print $NF }')
    [[ ${ratio:-1} == 0 ]] && break
    sleep 1
done
t1=$(ticks)
after=$(size table)
grep 'log cleaner pass' "$results/broker.log" | sed 's/\x1b\[[0-9;]*m//g' > "$results/passes.txt" || true
awk '{
    for (i = 1; i <= NF; i++) {
        split($i, kv, "=");
        if (kv[1] == "read_bytes") r += kv[2];
        if (kv[1] == "written_bytes") w += kv[2];
        if (kv[1] == "elapsed_ms") ms += kv[2];
    }
} END {
    if (ms > 0) printf "cleaner: %d passes, %.1f MB read, %.1f MB written in %.1f s: %.1f MB/s of dirty log\n", NR, r / 1e6, w / 1e6, ms / 1000, r / 1e3 / ms
}' "$results/passes.txt"
echo "table: $before bytes before, $after after"
echo "broker: VmHWM $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status"), CPU $(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }') s from the switch to the end of cleaning"
