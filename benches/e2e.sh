#!/usr/bin/env bash
# End-to-end benchmark on this host, reported as fractions of the host's limits.
#
# 1. disk: fio sequential O_DIRECT write, 1 MiB blocks, on the data dir's
#    filesystem (the ceiling for produce throughput with durable writes);
# 2. loopback: iperf3 on 127.0.0.1 (the ceiling for bytes over TCP);
# 3. starts a Sluice broker on 127.0.0.1, runs sluice-load at max rate and
#    at a fixed rate, and prints throughput as a fraction of min(disk,
#    loopback) and latency next to the disk's own write latency.
#
# Needs: fio, iperf3, python3 (Debian: apt-get install fio iperf3), and
# release builds: cargo build --release --bin sluice -p sluice-load.
#
# Usage: benches/e2e.sh [DATA_DIR] (default: a temp dir under target/).
# Environment: DURATION (default 20s), RATE (fixed-rate run, default 5000),
# PARTITIONS (default 1), PORT (default: a free port), FIO_SIZE (default 1G).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
sluice="$root/target/release/sluice"
load="$root/target/release/sluice-load"
data="${1:-$root/target/e2e-data}"
duration="${DURATION:-20s}"
rate="${RATE:-5000}"
partitions="${PARTITIONS:-1}"
fio_size="${FIO_SIZE:-1G}"
out="$root/target/e2e-$(date +%Y%m%d-%H%M%S)"

for tool in fio iperf3 python3 "$sluice" "$load"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || {
    echo "missing $tool (apt-get install fio iperf3; cargo build --release --bin sluice -p sluice-load)" >&2
    exit 1
  }
done
mkdir -p "$data" "$out"
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -f "$data/fio.test"
}
trap cleanup EXIT

echo "== disk: fio sequential O_DIRECT write, 1 MiB blocks, $fio_size in $data"
timeout 300 fio --name=seqwrite --filename="$data/fio.test" --rw=write --bs=1M --size="$fio_size" \
  --direct=1 --ioengine=libaio --iodepth=8 --end_fsync=1 --output-format=json >"$out/fio.json"
disk_mbps=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["jobs"][0]["write"]["bw_bytes"]/1e6)' "$out/fio.json")
disk_lat_p50_ms=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["jobs"][0]["write"]["clat_ns"]["percentile"]["50.000000"]/1e6)' "$out/fio.json")
rm -f "$data/fio.test"
echo "disk: $disk_mbps MB/s, 1 MiB write p50 $disk_lat_p50_ms ms"

echo "== loopback: iperf3 -c 127.0.0.1, 5 s"
iperf_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -1 -B 127.0.0.1 -p "$iperf_port" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
timeout 60 iperf3 -c 127.0.0.1 -p "$iperf_port" -t 5 -J >"$out/iperf3.json"
net_mbps=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["end"]["sum_received"]["bits_per_second"]/8e6)' "$out/iperf3.json")
echo "loopback: $net_mbps MB/s"

echo "== broker on 127.0.0.1:$port, data in $data/sluice"
rm -rf "$data/sluice"
mkdir -p "$data/sluice"
"$sluice" serve --listen "127.0.0.1:$port" --shards 2 --data-dir "$data/sluice" >"$out/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

echo "== sluice-load: max rate, 1 KiB, acks=1"
timeout 600 "$load" run -b "127.0.0.1:$port" --name max-rate --rate 0 --message-size 1KiB --acks 1 \
  --partitions "$partitions" --consumers 1 --linger 5ms --batch-size 1MiB \
  --duration "$duration" --warmup 3s --output "$out/max-rate"
echo "== sluice-load: $rate msgs/s, 1 KiB, acks=all"
timeout 600 "$load" run -b "127.0.0.1:$port" --name "fixed-$rate" --rate "$rate" --message-size 1KiB --acks all \
  --partitions "$partitions" --consumers 1 \
  --duration "$duration" --warmup 3s --output "$out/fixed-rate"

python3 - "$out" "$disk_mbps" "$net_mbps" "$disk_lat_p50_ms" <<'EOF'
import json, sys
out, disk, net, disk_lat = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
limit = min(disk, net)
print(f"\n== limits: disk {disk:.0f} MB/s, loopback {net:.0f} MB/s, 1 MiB O_DIRECT write p50 {disk_lat:.3f} ms")
for name in ["max-rate", "fixed-rate"]:
    r = json.load(open(f"{out}/{name}/report.json"))
    p, c = r["produce"], r["consume"]
    print(f"{name:>10}: produce {p['mb_per_s']:.1f} MB/s = {p['mb_per_s']/limit:.1%} of min(disk, loopback); "
          f"consume {c['mb_per_s']:.1f} MB/s = {c['mb_per_s']/net:.1%} of loopback")
    for metric in ["publish_latency", "end_to_end_latency"]:
        l = r.get(metric)
        if l:
            s = l["corrected"]
            print(f"{'':>12}{metric}: p50 {s['p50_ms']:.3f} ms ({s['p50_ms']/disk_lat:.1f}x disk write p50), "
                  f"p99 {s['p99_ms']:.3f} ms, p99.9 {s['p99_9_ms']:.3f} ms, max {s['max_ms']:.3f} ms")
    print(f"{'':>12}delivery exactly once: {r['delivery']['exactly_once']}")
print(f"\nreports in {out}; compare with: target/release/sluice-load compare {out}/max-rate {out}/fixed-rate --output {out}/compare")
EOF
