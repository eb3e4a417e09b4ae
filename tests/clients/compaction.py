"""Compacted topics through Sluice with confluent-kafka (a current librdkafka).

Usage:
  compaction.py BOOTSTRAP create TOPIC DELETE_RETENTION_MS
      create TOPIC (1 partition) with cleanup.policy=compact, 16 KiB segments,
      min.cleanable.dirty.ratio=0.01 and delete.retention.ms as given.
  compaction.py BOOTSTRAP produce TOPIC CODEC ROUNDS KEYS
      ROUNDS rounds of updates of keys k0..k(KEYS-1) (value "r<round>-k<key>-<padding>"),
      then tombstones for every key divisible by 10, then FILLER_ROUNDS more rounds of updates
      of the other keys (so the tombstones end up in sealed segments); compression.type=CODEC,
      acks=all, idempotence on. Prints "PRODUCED <count>".
  compaction.py BOOTSTRAP restore TOPIC ROUNDS KEYS tombstones=kept|gone|any
      a Kafka Streams-style restore: read partition 0 from the beginning to the high
      watermark, building the table (a null value deletes). Checks the table holds exactly
      the latest value of every live key, that offsets increase, and what became of the
      tombstones. Prints "RECORDS <n> GAPS <g> TOMBSTONES <t>".
  compaction.py BOOTSTRAP txn-produce TOPIC ROUNDS KEYS
      ROUNDS transactions updating every key, every third one aborted (values
      "aborted-..."), then FILLER_ROUNDS committed ones.
  compaction.py BOOTSTRAP txn-restore TOPIC ROUNDS KEYS
      read everything with read_uncommitted: no record of an aborted transaction may be
      left once the cleaner has run, and the table is the last committed round.
  compaction.py BOOTSTRAP keyless TOPIC
      produce a record without a key: it must be refused (INVALID_RECORD). Prints "REFUSED".

Exits non-zero with a message on the first failure.
"""

import hashlib
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

DEADLINE_S = 90


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def create(bootstrap, topic, delete_retention_ms):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "16384",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(delete_retention_ms),
    }
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                            config=config)])
    futures[topic].result(timeout=30)
    print("CREATED", flush=True)


FILLER_ROUNDS = 15


def value(rnd, key):
    # 64 hex digits that compress little, so segments fill up in every codec.
    pad = hashlib.sha256(f"{rnd}-{key}".encode()).hexdigest()
    return f"r{rnd}-k{key}-{pad}".encode()


def produce(bootstrap, topic, codec, rounds, keys):
    errors = []
    acked = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)
        else:
            acked[0] += 1

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "compression.type": codec, "linger.ms": 2, "message.timeout.ms": 60000,
                  # Many small batches (a table's updates as they come), not one huge one.
                  "batch.num.messages": 20})
    sent = 0

    def send(key, val):
        nonlocal sent
        while True:
            try:
                p.produce(topic, key=f"k{key}".encode(), value=val, partition=0,
                          on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        sent += 1
        p.poll(0)

    for rnd in range(rounds):
        for key in range(keys):
            send(key, value(rnd, key))
    for key in range(0, keys, 10):
        send(key, None)
    # More rounds of the live keys: the tombstones end up in sealed segments (the active
    # segment is never cleaned).
    for rnd in range(rounds, rounds + FILLER_ROUNDS):
        for key in range(keys):
            if key % 10 != 0:
                send(key, value(rnd, key))
    if p.flush(60) != 0:
        fail("the producer did not flush")
    if errors:
        fail(f"{len(errors)} deliveries failed, first: {errors[0]}")
    if acked[0] != sent:
        fail(f"{acked[0]} of {sent} acknowledged")
    print(f"PRODUCED {sent}", flush=True)


def restore(bootstrap, topic, rounds, keys, tombstones):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "restore",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    table = {}
    nulls = set()
    records = 0
    gaps = 0
    last = None
    deadline = time.time() + DEADLINE_S
    done = high == 0
    while not done:
        if time.time() > deadline:
            fail(f"restore did not reach the high watermark {high} (at {last})")
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                done = msg.offset() >= high
                continue
            fail(f"consume: {msg.error()}")
        off = msg.offset()
        if last is None and off > low:
            gaps += 1  # the records before the first one kept were removed
        if last is not None:
            if off <= last:
                fail(f"offset {off} after {last}")
            if off > last + 1:
                gaps += 1
        last = off
        records += 1
        key = msg.key().decode()
        if msg.value() is None:
            table.pop(key, None)
            nulls.add(key)
        else:
            table[key] = msg.value()
            nulls.discard(key)
        if off + 1 >= high:
            done = True
    c.close()
    expected = {f"k{k}": value(rounds + FILLER_ROUNDS - 1, k) for k in range(keys) if k % 10 != 0}
    if table != expected:
        missing = sorted(set(expected) - set(table))
        extra = sorted(set(table) - set(expected))
        wrong = sorted(k for k in expected if k in table and table[k] != expected[k])
        fail(f"the table differs: missing {missing[:5]}, extra {extra[:5]}, wrong {wrong[:5]}")
    deleted = {f"k{k}" for k in range(0, keys, 10)}
    if tombstones == "kept" and nulls != deleted:
        fail(f"tombstones within delete.retention.ms are gone: {sorted(deleted - nulls)[:5]}")
    if tombstones == "gone" and nulls:
        fail(f"tombstones past delete.retention.ms are still there: {sorted(nulls)[:5]}")
    print(f"RECORDS {records} GAPS {gaps} TOMBSTONES {len(nulls)}", flush=True)


def txn_produce(bootstrap, topic, rounds, keys):
    """ROUNDS transactions, each an update of every key; every third one writes values
    "aborted-..." and aborts. Then FILLER_ROUNDS committed transactions of updates."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-txn",
                  "linger.ms": 2, "batch.num.messages": 20, "message.timeout.ms": 60000})
    p.init_transactions(30)
    total = rounds + FILLER_ROUNDS
    for rnd in range(total):
        abort = rnd < rounds and rnd % 3 == 2
        p.begin_transaction()
        for key in range(keys):
            val = b"aborted-" + value(rnd, key) if abort else value(rnd, key)
            while True:
                try:
                    p.produce(topic, key=f"k{key}".encode(), value=val, partition=0)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        if abort:
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
    print(f"TRANSACTIONS {total}", flush=True)


def txn_restore(bootstrap, topic, rounds, keys):
    """Read everything with read_uncommitted: once cleaned, no record of an aborted
    transaction is left, and the table is the last committed round."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "txn-restore",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_uncommitted"})
    _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    table = {}
    aborted = 0
    deadline = time.time() + DEADLINE_S
    while True:
        if time.time() > deadline:
            fail(f"txn restore did not reach the high watermark {high}")
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                if msg.offset() >= high:
                    break
                continue
            fail(f"consume: {msg.error()}")
        if msg.value().startswith(b"aborted-"):
            aborted += 1
        table[msg.key().decode()] = msg.value()
    c.close()
    last = rounds + FILLER_ROUNDS - 1
    expected = {f"k{k}": value(last, k) for k in range(keys)}
    if table != expected:
        fail("the table is not the last committed round")
    if aborted:
        fail(f"{aborted} records of aborted transactions are left after cleaning")
    print(f"ABORTED {aborted}", flush=True)


def keyless(bootstrap, topic):
    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 10000,
                  "retries": 0})
    p.produce(topic, value=b"no key", partition=0,
              on_delivery=lambda err, _m: errors.append(err))
    p.flush(15)
    if not errors or errors[0] is None:
        fail("a record without a key was accepted on a compacted topic")
    if errors[0].code() != KafkaError.INVALID_RECORD:
        fail(f"refused with {errors[0]}, not INVALID_RECORD")
    print("REFUSED", flush=True)


def main():
    bootstrap, cmd = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if cmd == "create":
        create(bootstrap, args[0], int(args[1]))
    elif cmd == "produce":
        produce(bootstrap, args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "restore":
        restore(bootstrap, args[0], int(args[1]), int(args[2]), args[3].split("=", 1)[1])
    elif cmd == "txn-produce":
        txn_produce(bootstrap, args[0], int(args[1]), int(args[2]))
    elif cmd == "txn-restore":
        txn_restore(bootstrap, args[0], int(args[1]), int(args[2]))
    elif cmd == "keyless":
        keyless(bootstrap, args[0])
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
