#!/usr/bin/env bash
# A three-broker cluster with replication factor 3 against one broker with replication factor
# 1, side by side in one run, on this host: sluice-load (16 partitions, 1 KiB messages,
# acks=all, 2 producers and 1 consumer) at a fixed rate and at the maximum rate, the two
# setups taking turns ROUNDS times so the machine's noise spreads over both. Prints, per run,
# produce throughput, publish latency percentiles and the brokers' CPU seconds (from /proc).
# Every broker runs with --shards 1, its own ports and data directory; all are stopped after.
#
# Usage: benches/cluster.sh [BIN]   (default: target/release/sluice)
# Environment: DURATION (default 10s), ROUNDS (default 2), RATE (default 10000 msgs/s).
# Needs: cargo build --release --workspace.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/sluice}"
load="$root/target/release/sluice-load"
duration="${DURATION:-10s}"
rounds="${ROUNDS:-2}"
rate="${RATE:-10000}"
[[ -x $bin ]] || { echo "missing $bin: cargo build --release" >&2; exit 1; }
[[ -x $load ]] || { echo "missing $load: cargo build --release -p sluice-load" >&2; exit 1; }

scratch=$(mktemp -d)
results="$root/target/cluster-bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_all
    rm -rf "$scratch"
}
trap cleanup EXIT

# CPU seconds (user + system) of the given processes, in clock ticks.
ticks() {
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $port did not open" >&2
    return 1
}

# run LABEL NODES RF RATE: start NODES brokers (a cluster if NODES > 1), run the load, stop.
run() {
    local label=$1 nodes=$2 rf=$3 run_rate=$4 seeds="" i
    local -a kafka rpc
    for i in $(seq 1 "$nodes"); do
        kafka[i]=$(free_port)
        rpc[i]=$(free_port)
        seeds+="${seeds:+,}$i@127.0.0.1:${rpc[i]}"
    done
    for i in $(seq 1 "$nodes"); do
        local -a extra=()
        if ((nodes > 1)); then
            extra=(--node-id "$i" --rpc-listen "127.0.0.1:${rpc[i]}" --seed-servers "$seeds")
        fi
        "$bin" serve --data-dir "$scratch/$label-$i" --listen "127.0.0.1:${kafka[i]}" \
            --shards 1 --metrics-listen '' --log-level warn "${extra[@]}" \
            > "$results/$label-broker-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in $(seq 1 "$nodes"); do wait_port "${kafka[i]}"; done
    sleep 2 # the cluster's brokers register through the metadata log
    local before after out="$results/$label"
    before=$(ticks "${pids[@]}")
    "$load" run -b "127.0.0.1:${kafka[1]}" -o "$out" --name "$label" --partitions 16 \
        --replication-factor "$rf" --message-size 1KiB --producers 2 --consumers 1 \
        --acks all --rate "$run_rate" --warmup 2s --duration "$duration" > "$out.txt" 2>&1
    after=$(ticks "${pids[@]}")
    stop_all
    rm -rf "$scratch"/"$label"-*
    printf '%-28s %s | %s | broker CPU %s s\n' "$label" \
        "$(grep -E '^produce ' "$out.txt" | tr -s ' ')" \
        "$(grep -E '^publish ' "$out.txt" | head -n 1 | tr -s ' ')" \
        "$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }')"
}

echo "publish columns: p50 p75 p95 p99 p99.9 p99.99 max mean (ms); results in $results"
for r in $(seq 1 "$rounds"); do
    run "one-rf1-rate$rate-r$r" 1 1 "$rate"
    run "three-rf3-rate$rate-r$r" 3 3 "$rate"
    run "one-rf1-max-r$r" 1 1 0
    run "three-rf3-max-r$r" 3 3 0
done
