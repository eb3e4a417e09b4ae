"""Transactions per second and commit latency for small transactions, next to the same
records produced without a transaction, in one run against one broker.

For each size (1, 10, 100 records of 1 KiB, acks=all) and each mode it runs for --seconds:

  txn    begin_transaction, produce SIZE records, commit_transaction: one round; the commit
         latency is commit_transaction's (it flushes the records, then EndTxn returns once the
         markers are durable)
  plain  an idempotent producer (acks=all) produces SIZE records, then flush: one round; the
         latency is flush's

and prints rounds per second and the latency percentiles of each, and the ratio of the two.

Usage: tests/clients/.venv/bin/python3 benches/transactions.py BOOTSTRAP [--seconds S]
       [--sizes 1,10,100] [--partitions 4] [--replication 1]

Against a cluster, pass every broker in BOOTSTRAP and --replication 3.

The Python clients are the tests' (tools/test.sh setup installs them).
"""

import argparse
import statistics
import sys
import time
import uuid

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def create_topic(bootstrap, topic, partitions, replication):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                       replication_factor=replication)])
    try:
        fs[topic].result(timeout=30)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def run(producer, topic, size, seconds, payload, txn):
    latencies = []
    rounds = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline or rounds == 0:
        if txn:
            producer.begin_transaction()
        for i in range(size):
            producer.produce(topic, key=str(i).encode(), value=payload)
        t0 = time.perf_counter()
        if txn:
            producer.commit_transaction(30)
        elif producer.flush(30) != 0:
            raise RuntimeError("flush timed out")
        latencies.append(time.perf_counter() - t0)
        rounds += 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rounds_per_s": rounds / elapsed,
        "records_per_s": rounds * size / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bootstrap")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--replication", type=int, default=1,
                    help="replication factor of the topic (3 against a three-broker cluster)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    topic = f"bench-txn-{uuid.uuid4().hex[:8]}"
    create_topic(args.bootstrap, topic, args.partitions, args.replication)
    payload = b"x" * 1024
    common = {"bootstrap.servers": args.bootstrap, "linger.ms": 0, "acks": "all"}
    txn = Producer({**common, "transactional.id": f"bench-{uuid.uuid4().hex[:8]}"})
    txn.init_transactions(30)
    plain = Producer({**common, "enable.idempotence": True})
    print(f"{'size':>5} {'mode':>6} {'rounds/s':>10} {'records/s':>10} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'mean ms':>8}")
    for size in sizes:
        results = {}
        # Alternate so that both modes see the same machine.
        for mode, producer, is_txn in (("plain", plain, False), ("txn", txn, True)):
            r = run(producer, topic, size, args.seconds, payload, is_txn)
            results[mode] = r
            print(f"{size:>5} {mode:>6} {r['rounds_per_s']:>10.1f} {r['records_per_s']:>10.0f} "
                  f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f}", flush=True)
        ratio = results["txn"]["rounds_per_s"] / results["plain"]["rounds_per_s"]
        print(f"{size:>5}  txn/plain rounds per second: {ratio:.2f}", flush=True)
    print("transactions bench ok")


if __name__ == "__main__":
    sys.exit(main())
