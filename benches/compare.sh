#!/usr/bin/env bash
# The comparison users can run: the host's limits, then a fixed matrix of workloads with
# sluice-load against Sluice and against any other Kafka-compatible broker given by address,
# in one run, written as one report (a table of ratios) plus the `compare` latency charts.
#
# Usage: benches/compare.sh [--broker NAME=HOST:PORT[@PID]]... [--no-sluice]
#   --broker   another broker to measure (Apache Kafka, Redpanda, ... that you started);
#              with @PID its CPU is read from /proc (broker CPU seconds per GB moved).
#   --no-sluice  do not start Sluice (only the brokers given).
# Environment:
#   QUICK=1      smoke mode (the test suite): 2 s runs, a reduced matrix, small fio files.
#   FULL=1       adds the 10,000-partition point to the sweep.
#   DURATION     measured seconds per workload (default 10s; QUICK: 2s).
#   DATA_DIR     where Sluice's data and fio's files go (default target/compare-data): put it
#                on the file system you want measured.
#   SLUICE       the sluice binary (default target/release/sluice; also deletes each run's
#                topic afterwards, on any broker); SHARDS (default 2);
#   LOAD         the sluice-load binary (default target/release/sluice-load).
#   OUT          report directory (default target/compare-YYYYmmdd-HHMMSS).
# Needs: fio, iperf3, python3 (Debian: apt-get install fio iperf3) and release builds:
#   cargo build --release -p sluice -p sluice-load
#
# Workloads (1 KiB messages, acks=all unless named): produce at max rate on 16 partitions;
# the same with a consumer (CPU per GB for produce + consume, fetches from the tail cache);
# a catch-up read of 16 filled partitions from their start (fetches from disk); a partition
# sweep at max rate (1, 16, 256, 1,024 [, 10,000]); publish latency at 1k, 5k and 20k msgs/s
# (4 partitions) and at half the measured maximum; 10 and 1,000 producer connections at
# 10,000 msgs/s in total.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
load="${LOAD:-$root/target/release/sluice-load}"
sluice="${SLUICE:-$root/target/release/sluice}"
quick="${QUICK:-0}"
if [[ $quick == 1 ]]; then duration="${DURATION:-2s}"; warmup=1s; fio_size=64M; fio_time=3
else duration="${DURATION:-10s}"; warmup=2s; fio_size=1G; fio_time=10; fi
shards="${SHARDS:-2}"
data="${DATA_DIR:-$root/target/compare-data}"
out="${OUT:-$root/target/compare-$(date +%Y%m%d-%H%M%S)}"

brokers=()   # NAME=HOST:PORT[@PID]
start_sluice=1
while (($#)); do
    case $1 in
        --broker) brokers+=("$2"); shift 2 ;;
        --no-sluice) start_sluice=0; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

for tool in fio iperf3 python3 "$load"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || {
        echo "missing $tool (apt-get install fio iperf3; cargo build --release -p sluice -p sluice-load)" >&2
        exit 1
    }
done
mkdir -p "$data" "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$data/fio" "$data/sluice"
}
trap cleanup EXIT

# ---- 1. the host ----
echo "== host: fio on $data, iperf3 on loopback" >&2
mkdir -p "$data/fio"
run_fio() { # name, fio args...
    local name=$1; shift
    timeout 300 fio --name="$name" --directory="$data/fio" --size="$fio_size" --direct=1 \
        --runtime="$fio_time" --time_based --group_reporting --output-format=json "$@" \
        >"$out/fio-$name.json" 2>"$out/fio-$name.err"
    rm -f "$data/fio/$name".*
}
# Sequential O_DIRECT writes (the ceiling without fsync per ack), at queue depth 1 and 4.
run_fio seq-qd1 --rw=write --bs=1M --ioengine=libaio --iodepth=1
run_fio seq-qd4 --rw=write --bs=1M --ioengine=libaio --iodepth=4
# The broker's pattern with fsync per ack: one stream per shard, each write followed by an
# fdatasync, into preallocated space.
run_fio sync-per-shard --rw=write --bs=256k --ioengine=psync --fdatasync=1 --numjobs="$shards" \
    --fallocate=native
# Many files, small writes, fdatasync each (the 1,024-partition pattern with one fsync per file).
run_fio small-sync-16 --rw=write --bs=16k --ioengine=psync --fdatasync=1 --numjobs=16 \
    --fallocate=native
iperf_port=$(free_port)
iperf3 -s -1 -B 127.0.0.1 -p "$iperf_port" >/dev/null 2>&1 &
iperf_pid=$!
sleep 0.5
timeout 60 iperf3 -c 127.0.0.1 -p "$iperf_port" -t "$fio_time" -J >"$out/iperf3.json"
wait "$iperf_pid" 2>/dev/null || true

# ---- 2. the brokers ----
if [[ $start_sluice == 1 ]]; then
    [[ -x $sluice ]] || { echo "missing $sluice: cargo build --release -p sluice" >&2; exit 1; }
    port=$(free_port)
    rm -rf "$data/sluice"
    "$sluice" serve --data-dir "$data/sluice" --listen "127.0.0.1:$port" \
        --advertised-listener "127.0.0.1:$port" --shards "$shards" --metrics-listen '' \
        >"$out/sluice.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    brokers=("sluice=127.0.0.1:$port@$pid" "${brokers[@]}")
fi
((${#brokers[@]})) || { echo "no broker to measure" >&2; exit 2; }

cpu_ticks() { [[ -n $1 ]] && awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# One workload against one broker: NAME BROKER ARGS... -> $out/NAME/BROKER/report.json + cpu.
run_one() {
    local workload=$1 spec=$2; shift 2
    local name=${spec%%=*} rest=${spec#*=}
    local addr=${rest%%@*} pid=""
    [[ $rest == *@* ]] && pid=${rest#*@}
    local dir="$out/$workload/$name"
    mkdir -p "$dir"
    local t0 t1
    t0=$(cpu_ticks "$pid")
    if ! timeout 900 "$load" run -b "$addr" --name "$name $workload" --message-size 1KiB \
        --warmup "${warmup_for:-$warmup}" --duration "$duration" --output "$dir" "$@" \
        >"$dir/load.txt" 2>&1; then
        echo "   $workload on $name failed: $(tail -n 1 "$dir/load.txt")" >&2
    fi
    t1=$(cpu_ticks "$pid")
    echo "$t0 $t1 $(getconf CLK_TCK)" >"$dir/cpu"
    # Each run writes a fresh topic: delete it, so the matrix does not fill the disk (a max-rate
    # minute is tens of GB). `sluice topic` speaks Kafka, so this works against any broker.
    # keep_topic=1: a later workload reads it.
    local topic
    if [[ ${keep_topic:-0} != 1 ]]; then
        for topic in $(python3 -c 'import json,sys
try: print(" ".join(json.load(open(sys.argv[1])).get("topics") or []))
except Exception: pass' "$dir/report.json"); do
            timeout 60 "$sluice" topic delete -b "$addr" "$topic" >/dev/null 2>&1 \
                || echo "   could not delete topic $topic on $name" >&2
        done
    fi
    echo "   $workload on $name done" >&2
}

matrix() { # broker
    local b=$1
    run_one produce-16p "$b" --partitions 16 --producers 2 --consumers 0 --acks all --rate 0
    run_one produce-consume-16p "$b" --partitions 16 --producers 2 --consumers 1 --acks all --rate 0
    # Older data: fill 16 partitions at max rate (the topic is kept), then one consumer reads
    # them from the start while a producer adds 1 msg/s: the fetch path from disk, where
    # produce-consume reads the tail cache. CPU per GB is then nearly all fetch.
    local catchup="compare-catchup-$$-${b%%=*}"
    keep_topic=1 run_one fill-16p "$b" --topic "$catchup" --partitions 16 --producers 2 \
        --consumers 0 --acks 1 --rate 0
    # No warmup: the catch-up read can be over within one (600 MB in under a second here).
    warmup_for=0s run_one fetch-disk-16p "$b" --topic "$catchup" --partitions 16 --producers 1 --consumers 1 \
        --consume-from earliest --acks 1 --rate 1 --drain-timeout 1s
    local sweep=(1 16 256 1024)
    [[ $quick == 1 ]] && sweep=(16 256)
    [[ ${FULL:-0} == 1 ]] && sweep+=(10000)
    for p in "${sweep[@]}"; do
        run_one "partitions-$p" "$b" --partitions "$p" --producers 2 --consumers 0 --acks all --rate 0
    done
    local rates=(1000 5000 20000)
    [[ $quick == 1 ]] && rates=(5000)
    for r in "${rates[@]}"; do
        run_one "latency-$r" "$b" --partitions 4 --producers 1 --consumers 1 --acks all --rate "$r"
    done
    # Half of the maximum this broker reached on 4 partitions.
    run_one max-4p "$b" --partitions 4 --producers 1 --consumers 0 --acks all --rate 0
    local half
    half=$(python3 -c 'import json,sys
try: print(max(1, int(json.load(open(sys.argv[1]))["produce"]["msgs_per_s"] / 2)))
except Exception: print(1000)' "$out/max-4p/${b%%=*}/report.json")
    run_one latency-half-max "$b" --partitions 4 --producers 1 --consumers 1 --acks all --rate "$half"
    if [[ $quick != 1 ]]; then
        run_one connections-10 "$b" --partitions 16 --producers 10 --consumers 0 --acks all --rate 10000
        run_one connections-1000 "$b" --partitions 16 --producers 1000 --consumers 0 --acks all --rate 10000
    fi
}

for b in "${brokers[@]}"; do
    echo "== ${b%%=*} at ${b#*=}" >&2
    matrix "$b"
done

# ---- 3. the report ----
python3 - "$out" "${brokers[@]}" <<'EOF' | tee "$out/report.md"
import glob, json, os, sys
out, brokers = sys.argv[1], [b.split("=")[0] for b in sys.argv[2:]]

def fio(name):
    try:
        j = json.load(open(f"{out}/fio-{name}.json"))["jobs"][0]
        return j["write"]["bw_bytes"] / 1e6
    except Exception:
        return float("nan")

def iperf():
    try:
        return json.load(open(f"{out}/iperf3.json"))["end"]["sum_received"]["bits_per_second"] / 8e6
    except Exception:
        return float("nan")

host = {"seq-qd1": fio("seq-qd1"), "seq-qd4": fio("seq-qd4"),
        "sync": fio("sync-per-shard"), "small-sync": fio("small-sync-16"), "net": iperf()}
print("# Sluice comparison report\n")
print("## Host limits\n")
print("| measure | MB/s |\n|---|---|")
print(f"| fio 1 MiB O_DIRECT sequential write, qd 1 | {host['seq-qd1']:.0f} |")
print(f"| fio 1 MiB O_DIRECT sequential write, qd 4 | {host['seq-qd4']:.0f} |")
print(f"| fio 256 KiB O_DIRECT writes + fdatasync each, one stream per shard | {host['sync']:.0f} |")
print(f"| fio 16 KiB O_DIRECT writes + fdatasync each, 16 files | {host['small-sync']:.0f} |")
print(f"| iperf3 loopback | {host['net']:.0f} |\n")

def load(workload, broker):
    d = f"{out}/{workload}/{broker}"
    try:
        r = json.load(open(f"{d}/report.json"))
    except Exception:
        return None
    t0, t1, hz = (float(x) for x in open(f"{d}/cpu").read().split())
    moved = r["produce"]["bytes"] + (r.get("consume") or {}).get("bytes", 0)
    cpu = (t1 - t0) / hz if t1 > t0 else None
    lat = (r.get("publish_latency") or {}).get("corrected") or {}
    return {"p": r["produce"]["mb_per_s"], "c": (r.get("consume") or {}).get("mb_per_s", 0.0),
            "cpu_gb": cpu / (moved / 1e9) if cpu and moved else None,
            "p50": lat.get("p50_ms"), "p99": lat.get("p99_ms"), "p999": lat.get("p99_9_ms"),
            "ok": r.get("delivery", {}).get("exactly_once")}

workloads = sorted({os.path.basename(os.path.dirname(os.path.dirname(p)))
                    for p in glob.glob(f"{out}/*/*/cpu")},
                   key=lambda w: (w.split("-")[0], int(w.split("-")[-1]) if w.split("-")[-1].isdigit() else 0, w))
f = lambda v, fmt="{:.1f}": "-" if v is None else fmt.format(v)
print("## Workloads\n")
print("produce/consume in MB/s; latency = publish latency corrected for coordinated omission, ms;")
print("CPU = broker CPU seconds per GB produced + consumed (/proc, brokers with a pid);")
print(f"x fio = produce / fio's one-stream-per-shard fdatasync pattern; x {brokers[0]} = produce / {brokers[0]}'s.\n")
print("| workload | broker | produce | consume | p50 | p99 | p99.9 | CPU s/GB | x fio | x " + brokers[0] + " |")
print("|---|---|---|---|---|---|---|---|---|---|")
for w in workloads:
    base = load(w, brokers[0])
    for b in brokers:
        r = load(w, b)
        if r is None:
            print(f"| {w} | {b} | failed | | | | | | | |")
            continue
        vs = r["p"] / base["p"] if base and base["p"] else None
        print(f"| {w} | {b} | {r['p']:.1f} | {r['c']:.1f} | {f(r['p50'], '{:.2f}')} | {f(r['p99'], '{:.2f}')} | "
              f"{f(r['p999'], '{:.2f}')} | {f(r['cpu_gb'], '{:.2f}')} | {r['p'] / host['sync']:.2f} | {f(vs, '{:.2f}')} |")
sweep = {}
for w in workloads:
    if w.startswith("partitions-"):
        for b in brokers:
            r = load(w, b)
            if r:
                sweep.setdefault(b, []).append((int(w.split("-")[1]), r))
print("\n## Partition sweep (relative to the smallest partition count)\n")
print("| broker | partitions | produce MB/s | x first | CPU s/GB | x first |\n|---|---|---|---|---|---|")
for b, rows in sweep.items():
    rows.sort(key=lambda x: x[0])
    p0, c0 = rows[0][1]["p"], rows[0][1]["cpu_gb"]
    for n, r in rows:
        cx = r["cpu_gb"] / c0 if r["cpu_gb"] and c0 else None
        print(f"| {b} | {n} | {r['p']:.1f} | {r['p'] / p0:.2f} | {f(r['cpu_gb'], '{:.2f}')} | {f(cx, '{:.2f}')} |")
EOF
# Latency charts: every latency run of every broker on one chart.
charts=()
for d in "$out"/latency-*/*/; do [[ -f $d/report.json ]] && charts+=("$d"); done
if ((${#charts[@]})); then
    "$load" compare "${charts[@]}" --output "$out/latency" >"$out/latency.txt" 2>&1 \
        || echo "compare failed: $(tail -n 1 "$out/latency.txt")" >&2
fi
echo "report: $out/report.md; charts: $out/latency.svg, $out/latency.png" >&2
