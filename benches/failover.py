#!/usr/bin/env python3
"""Failover time of a three-broker cluster (replication factor 3), measured with a real client.

Starts three brokers (--shards 1 each, own ports and data directories), creates a topic with one
partition and replication factor 3, and runs TRIALS trials: a confluent-kafka producer (acks=all,
linger 0) sends a record every millisecond; the partition's leader is killed with SIGKILL; the
failover time is from the kill to the first acknowledgement of a record sent after it. The
killed broker is then started again and given time to catch up. Prints each trial, a histogram
and the percentiles; every broker is stopped at the end.

Usage: tests/clients/.venv/bin/python benches/failover.py [BIN]
Environment: TRIALS (default 20); RECONNECT_BACKOFF_MAX_MS (the producer's
reconnect.backoff.max.ms, default 1000; librdkafka's own default is 10000); RDKAFKA_DEBUG (librdkafka debug contexts, logged to stderr).
Needs: cargo build --release; tools/test.sh setup (the Python clients).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/sluice")
TRIALS = int(os.environ.get("TRIALS", "20"))
TOPIC = "failover"
BUCKETS_MS = [250, 500, 750, 1000, 1500, 2000, 3000, 5000]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


class Cluster:
    def __init__(self, scratch):
        self.scratch = scratch
        self.kafka = {i: free_port() for i in (1, 2, 3)}
        self.rpc = {i: free_port() for i in (1, 2, 3)}
        self.seeds = ",".join(f"{i}@127.0.0.1:{self.rpc[i]}" for i in (1, 2, 3))
        self.procs = {}
        for i in (1, 2, 3):
            self.start(i)
        for i in (1, 2, 3):
            wait_port(self.kafka[i])

    def start(self, i):
        log = open(os.path.join(self.scratch, f"broker-{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [BIN, "serve", "--data-dir", os.path.join(self.scratch, f"data-{i}"),
             "--listen", f"127.0.0.1:{self.kafka[i]}", "--shards", "1", "--metrics-listen", "",
             "--log-level", "warn", "--node-id", str(i),
             "--rpc-listen", f"127.0.0.1:{self.rpc[i]}", "--seed-servers", self.seeds],
            stdout=log, stderr=log)

    def bootstrap(self):
        return ",".join(f"127.0.0.1:{self.kafka[i]}" for i in (1, 2, 3))

    def kill9(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def create_topic(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for _ in range(50):
        fut = admin.create_topics([NewTopic(TOPIC, 1, 3)], operation_timeout=10)[TOPIC]
        try:
            fut.result()
            return
        except Exception as e:  # the metadata log may not have a leader yet
            if "already exists" in str(e):
                return
            time.sleep(0.3)
    raise RuntimeError("topic not created")


def leader_of(producer):
    for _ in range(100):
        md = producer.list_topics(TOPIC, timeout=5)
        t = md.topics.get(TOPIC)
        if t and t.error is None and 0 in t.partitions and t.partitions[0].leader > 0:
            return t.partitions[0].leader
        time.sleep(0.1)
    raise RuntimeError("no leader")


def main():
    scratch = tempfile.mkdtemp(prefix="sluice-failover-")
    cluster = Cluster(scratch)
    results = []
    try:
        time.sleep(2)  # registration through the metadata log
        create_topic(cluster.bootstrap())
        producer = Producer({
            "bootstrap.servers": cluster.bootstrap(), "acks": "all", "linger.ms": 0,
            "message.timeout.ms": 60000, "retry.backoff.ms": 20,
            "topic.metadata.refresh.interval.ms": 500, "enable.idempotence": False,
            "log_level": 0,
            # librdkafka's reconnect backoff to a broker grows while it is down (to 10 s by
            # default) and is still in force after it is back: without a cap, a trial whose
            # new leader is the broker killed in the trial before waits out that backoff.
            "reconnect.backoff.max.ms": int(os.environ.get("RECONNECT_BACKOFF_MAX_MS", "1000")),
            **({"debug": os.environ["RDKAFKA_DEBUG"], "log_level": 7}
               if os.environ.get("RDKAFKA_DEBUG") else {}),
        })
        acked_after = []

        def delivered(err, msg, sent_at=None):
            if err is None and sent_at is not None:
                acked_after.append((sent_at, time.monotonic()))

        def send_for(seconds, after=None):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                now = time.monotonic()
                stamp = now if after is not None and now >= after else None
                producer.produce(TOPIC, b"x" * 100, partition=0,
                                 on_delivery=lambda e, m, s=stamp: delivered(e, m, s))
                producer.poll(0)
                time.sleep(0.001)
                if after is not None and acked_after:
                    return
        for trial in range(1, TRIALS + 1):
            victim = leader_of(producer)
            send_for(1.0)
            producer.flush(30)
            acked_after.clear()
            cluster.kill9(victim)
            killed = time.monotonic()
            killed_wall = time.time()
            send_for(30.0, after=killed)
            if not acked_after:
                raise RuntimeError(f"trial {trial}: nothing acknowledged within 30 s")
            ms = (min(a for _, a in acked_after) - killed) * 1000
            results.append(ms)
            print(f"trial {trial:2}: killed leader {victim} at {killed_wall:.3f}, next acknowledged "
                  f"produce after {ms:7.1f} ms", flush=True)
            producer.flush(30)
            cluster.start(victim)
            wait_port(cluster.kafka[victim])
            time.sleep(3)  # it catches up from its peers
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results.sort()
    print(f"\n{len(results)} trials, failover time (kill -9 of the leader to the next acknowledged produce):")
    low = 0
    for b in BUCKETS_MS + [float("inf")]:
        n = sum(1 for r in results if low <= r < b)
        label = f"{low:>5}-{b:<5} ms" if b != float("inf") else f"{low:>5}+       ms"
        print(f"  {label} {'#' * n} {n}")
        low = b
    pct = lambda p: results[min(len(results) - 1, int(p * len(results)))]
    print(f"  p50 {pct(0.5):.0f} ms, p90 {pct(0.9):.0f} ms, max {results[-1]:.0f} ms")


if __name__ == "__main__":
    main()
