"""Transactions through Sluice with confluent-kafka (librdkafka 2.16) and kafka-python.

Each mode exits non-zero with a message on the first failure and prints "<mode> ok" at the
end. Topics get 4 partitions, so a transaction spans both shards of the test broker.

Usage: python3 transactions.py BOOTSTRAP MODE [ARGS]

Modes:
  commit-abort     committed, aborted and open transactions; read_committed sees exactly the
                   committed ones, only after their commit; read_uncommitted sees everything
  zombie           a second producer with the same transactional id fences the first: its
                   open transaction is aborted and its later writes fail
  timeout          a transaction left open past transaction.timeout.ms is aborted by the
                   coordinator (run against a broker with a short abort interval)
  offsets          consume-transform-produce in a consumer group with
                   send_offsets_to_transaction: committed offsets follow commits only
  kafka-python     kafka-python's transactional producer: commit and abort
  seed TOPIC N     produce N keyed records "in-<i>" to TOPIC (idempotent, acks=all)
  copy IN OUT      the exactly-once copier: consume IN (read_committed, group "eos-copy"),
                   produce "out-<value>" to OUT in transactions with the offsets; exits 0
                   with "copy done" once the group's committed offsets reach IN's end
  verify IN OUT N  OUT read with read_committed holds every input value exactly once, in
                   input order per input partition
  leave-open TOPIC commit "c0".."c9", then leave a transaction of "o0".."o9" open (flushed),
                   print "left open" and sleep (the test kills the broker and this process)
  plain TOPIC NAME N  produce "NAME0".."NAME<N-1>" without a transaction
  init-only ID     initialise a transactional producer with id ID and stop
  many-txns TOPIC N  commit N transactions of one record each (transactional id "txn-many")
  commit-slow TOPIC  produce "p0".."p9" in a transaction, print "committing" and commit (the
                   test's broker holds the markers back and is killed meanwhile)
  expect TOPIC NAME:N...  read_committed holds exactly the named records
"""

import os
import sys
import time
import uuid

from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4
DEADLINE_S = 60
# Replication factor of the topics the script creates (3 against a three-broker cluster).
REPLICATION = int(os.environ.get("SLUICE_TEST_REPLICATION", "1"))


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(1)


def create_topic(bootstrap, topic, partitions=PARTITIONS):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                       replication_factor=REPLICATION)])
    try:
        fs[topic].result(timeout=30)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def txn_producer(bootstrap, txn_id, **extra):
    conf = {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 2,
            "message.timeout.ms": 30000}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_all(bootstrap, topic, isolation, partitions=PARTITIONS, idle_s=1.5):
    """Every data record of `topic` (as (partition, offset, key, value)) up to the end the
    isolation level sees, read with assigned partitions."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    eof = set()
    deadline = time.time() + DEADLINE_S
    last = time.time()
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            if len(eof) == partitions and time.time() - last > idle_s:
                break
            continue
        last = time.time()
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                continue
            fail(f"consumer error: {m.error()}")
        eof.discard(m.partition())
        out.append((m.partition(), m.offset(), m.key(), m.value()))
    c.close()
    return out


def values(records):
    return sorted(r[3].decode() for r in records)


def commit_abort(bootstrap):
    topic = "txn-basic"
    create_topic(bootstrap, topic)
    p = txn_producer(bootstrap, "txn-basic-1")
    expected = []
    for name, commit in (("a", True), ("b", False), ("c", True)):
        p.begin_transaction()
        for i in range(40):
            p.produce(topic, key=f"k{i}".encode(), value=f"{name}{i}".encode())
        if commit:
            p.commit_transaction(30)
            expected += [f"{name}{i}" for i in range(40)]
        else:
            p.flush(30)
            p.abort_transaction(30)
    got = values(read_all(bootstrap, topic, "read_committed"))
    if got != sorted(expected):
        fail(f"read_committed saw {len(got)} records, expected {len(expected)}: "
             f"{sorted(set(got) ^ set(expected))[:10]}")
    everything = values(read_all(bootstrap, topic, "read_uncommitted"))
    if len(everything) != 120:
        fail(f"read_uncommitted saw {len(everything)} records, expected 120")

    # An open transaction holds read_committed back at its first offset; its records appear
    # once it commits, and records another producer wrote after it wait with it.
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"d{i}".encode())
    p.flush(30)
    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(8):
        plain.produce(topic, key=f"k{i}".encode(), value=f"plain{i}".encode())
    if plain.flush(30) != 0:
        fail("plain producer did not flush")
    open_view = values(read_all(bootstrap, topic, "read_committed"))
    if any(v.startswith("d") for v in open_view):
        fail("read_committed saw records of an open transaction")
    if len(values(read_all(bootstrap, topic, "read_uncommitted"))) != 138:
        fail("read_uncommitted does not see the open transaction")
    p.commit_transaction(30)
    after = values(read_all(bootstrap, topic, "read_committed"))
    want = sorted(expected + [f"d{i}" for i in range(10)] + [f"plain{i}" for i in range(8)])
    if after != want:
        fail(f"after commit read_committed saw {len(after)} records, expected {len(want)}")
    print("commit-abort ok")


def zombie(bootstrap):
    topic = "txn-zombie"
    create_topic(bootstrap, topic)
    a = txn_producer(bootstrap, "txn-zombie-1")
    a.begin_transaction()
    for i in range(20):
        a.produce(topic, key=f"k{i}".encode(), value=f"zombie{i}".encode())
    a.flush(30)
    # The new instance fences the old one and aborts its open transaction.
    b = txn_producer(bootstrap, "txn-zombie-1")
    b.begin_transaction()
    for i in range(20):
        b.produce(topic, key=f"k{i}".encode(), value=f"new{i}".encode())
    b.commit_transaction(30)
    fenced = False
    try:
        a.produce(topic, key=b"k", value=b"zombie-late")
        a.commit_transaction(30)
    except KafkaException as e:
        err = e.args[0]
        fenced = err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                               KafkaError.INVALID_PRODUCER_EPOCH)
        print(f"zombie refused: {err}")
    if not fenced:
        fail("the fenced producer committed")
    got = values(read_all(bootstrap, topic, "read_committed"))
    if got != sorted(f"new{i}" for i in range(20)):
        fail(f"read_committed after fencing saw {got[:10]}... ({len(got)})")
    print("zombie ok")


def timeout(bootstrap):
    topic = "txn-timeout"
    create_topic(bootstrap, topic)
    p = txn_producer(bootstrap, "txn-timeout-1",
                     **{"transaction.timeout.ms": 2000, "message.timeout.ms": 2000})
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"late{i}".encode())
    p.flush(30)
    # The coordinator aborts it after 2 s (it checks every few hundred ms in this test).
    time.sleep(5)
    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(5):
        plain.produce(topic, key=f"k{i}".encode(), value=f"after{i}".encode())
    if plain.flush(30) != 0:
        fail("plain producer did not flush")
    got = values(read_all(bootstrap, topic, "read_committed"))
    if got != sorted(f"after{i}" for i in range(5)):
        fail(f"read_committed after the timeout saw {got}")
    try:
        p.commit_transaction(30)
        fail("the timed-out transaction committed")
    except KafkaException as e:
        print(f"timed-out commit refused: {e.args[0]}")
    print("timeout ok")


def offsets(bootstrap):
    src, dst, group = "txn-offsets-in", "txn-offsets-out", "txn-offsets-group"
    create_topic(bootstrap, src)
    create_topic(bootstrap, dst)
    seed(bootstrap, src, 200)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.subscribe([src])
    p = txn_producer(bootstrap, "txn-offsets-1")
    seen = 0
    rounds = 0
    deadline = time.time() + DEADLINE_S
    while seen < 200 and time.time() < deadline:
        msgs = c.consume(50, 1.0)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        rounds += 1
        p.begin_transaction()
        for m in msgs:
            p.produce(dst, key=m.key(), value=b"out-" + m.value())
        p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
        if rounds == 2:
            # Abort one round: its output and its offsets must not stick.
            p.abort_transaction(30)
            committed = c.committed(c.assignment(), 10)
            for tp in committed:
                c.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
            continue
        p.commit_transaction(30)
        seen += len(msgs)
    if seen != 200:
        fail(f"copied {seen} of 200")
    committed = c.committed([TopicPartition(src, i) for i in range(PARTITIONS)], 10)
    if sum(tp.offset for tp in committed) != 200:
        fail(f"committed offsets {[(tp.partition, tp.offset) for tp in committed]}")
    c.close()
    got = values(read_all(bootstrap, dst, "read_committed"))
    if got != sorted(f"out-in-{i}" for i in range(200)):
        fail(f"output holds {len(got)} records ({len(set(got))} distinct), expected 200")
    print("offsets ok")


def kafka_python(bootstrap):
    from kafka import KafkaProducer
    topic = "txn-kafka-python"
    create_topic(bootstrap, topic)
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="txn-kp-1")
    p.init_transactions()
    p.begin_transaction()
    for i in range(10):
        p.send(topic, key=f"k{i}".encode(), value=f"kp-commit{i}".encode())
    p.commit_transaction()
    p.begin_transaction()
    for i in range(10):
        p.send(topic, key=f"k{i}".encode(), value=f"kp-abort{i}".encode())
    p.flush()
    p.abort_transaction()
    p.close()
    got = values(read_all(bootstrap, topic, "read_committed"))
    if got != sorted(f"kp-commit{i}" for i in range(10)):
        fail(f"kafka-python: read_committed saw {got}")
    print("kafka-python ok")


def seed(bootstrap, topic, n):
    create_topic(bootstrap, topic)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=f"key{i % 37}".encode(), value=f"in-{i}".encode())
        p.poll(0)
    if p.flush(60) != 0:
        fail("seeding did not flush")
    print("seed ok")


def copy(bootstrap, src, dst):
    create_topic(bootstrap, dst)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-copy",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                  "socket.timeout.ms": 10000})
    c.subscribe([src])
    p = txn_producer(bootstrap, "eos-copy-1",
                     **{"transaction.timeout.ms": 10000, "message.timeout.ms": 10000})
    ends = None
    deadline = time.time() + 150
    while time.time() < deadline:
        msgs = [m for m in c.consume(100, 0.5) if not m.error()]
        if msgs:
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, key=m.key(), value=b"out-" + m.value())
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            p.commit_transaction(30)
            print(f"committed {len(msgs)}", flush=True)
            continue
        if not c.assignment():
            continue
        if ends is None:
            # One past each partition's last record: the log end may lie past control
            # batches (a replicated partition's leader changes), which no consumer position
            # reaches.
            ends = {i: 0 for i in range(PARTITIONS)}
            for (part, off, _, _) in read_all(bootstrap, src, "read_committed"):
                ends[part] = max(ends[part], off + 1)
        committed = c.committed([TopicPartition(src, i) for i in range(PARTITIONS)], 10)
        if all(tp.offset >= ends[tp.partition] for tp in committed):
            print("copy done", flush=True)
            c.close()
            return
    fail(f"the copier did not finish: assignment {c.assignment()}, ends {ends}, committed "
         f"{c.committed([TopicPartition(src, i) for i in range(PARTITIONS)], 10)}")


def verify(bootstrap, src, dst, n):
    inputs = read_all(bootstrap, src, "read_committed")
    outputs = read_all(bootstrap, dst, "read_committed")
    if len(inputs) != n:
        fail(f"input holds {len(inputs)} records, expected {n}")
    got = [r[3].decode() for r in outputs]
    want = {f"out-{r[3].decode()}" for r in inputs}
    dups = len(got) - len(set(got))
    if dups or set(got) != want:
        fail(f"output holds {len(got)} records, {len(set(got))} distinct, {dups} duplicates; "
             f"missing {sorted(want - set(got))[:5]}, unexpected {sorted(set(got) - want)[:5]}")
    # Order: within an output partition, records from one input partition keep input order.
    in_pos = {f"out-{r[3].decode()}": (r[0], r[1]) for r in inputs}
    last = {}
    for (part, off, _, v) in sorted(outputs):
        src_part, src_off = in_pos[v.decode()]
        k = (part, src_part)
        if k in last and last[k] > src_off:
            fail(f"output partition {part} has input {src_part}'s offset {src_off} after "
                 f"{last[k]}")
        last[k] = src_off
    print(f"verify ok: {len(got)} records exactly once")


def leave_open(bootstrap, topic):
    create_topic(bootstrap, topic)
    p = txn_producer(bootstrap, "txn-left-open",
                     **{"transaction.timeout.ms": 3000, "message.timeout.ms": 3000})
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"c{i}".encode())
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"o{i}".encode())
    p.flush(30)
    print("left open", flush=True)
    time.sleep(600)


def init_only(bootstrap, txn_id):
    txn_producer(bootstrap, txn_id)
    print("init ok")


def many_txns(bootstrap, topic, n):
    create_topic(bootstrap, topic)
    p = txn_producer(bootstrap, "txn-many")
    for i in range(n):
        p.begin_transaction()
        p.produce(topic, key=f"k{i}".encode(), value=f"m{i}".encode())
        p.commit_transaction(30)
    print("many ok")


def commit_slow(bootstrap, topic):
    create_topic(bootstrap, topic)
    p = txn_producer(bootstrap, "txn-commit-slow")
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"p{i}".encode())
    p.flush(30)
    print("committing", flush=True)
    p.commit_transaction(60)
    print("committed", flush=True)


def plain(bootstrap, topic, name, n):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        p.produce(topic, key=f"k{i}".encode(), value=f"{name}{i}".encode())
    if p.flush(30) != 0:
        fail("plain producer did not flush")
    print("plain ok")


def expect(bootstrap, topic, specs):
    want = []
    for spec in specs:
        name, n = spec.split(":")
        want += [f"{name}{i}" for i in range(int(n))]
    got = values(read_all(bootstrap, topic, "read_committed"))
    if got != sorted(want):
        fail(f"read_committed holds {got}, expected {sorted(want)}")
    print("expect ok")


def main():
    bootstrap, mode = sys.argv[1], sys.argv[2]
    if mode == "commit-abort":
        commit_abort(bootstrap)
    elif mode == "zombie":
        zombie(bootstrap)
    elif mode == "timeout":
        timeout(bootstrap)
    elif mode == "offsets":
        offsets(bootstrap)
    elif mode == "kafka-python":
        kafka_python(bootstrap)
    elif mode == "seed":
        seed(bootstrap, sys.argv[3], int(sys.argv[4]))
    elif mode == "copy":
        copy(bootstrap, sys.argv[3], sys.argv[4])
    elif mode == "verify":
        verify(bootstrap, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "leave-open":
        leave_open(bootstrap, sys.argv[3])
    elif mode == "init-only":
        init_only(bootstrap, sys.argv[3])
    elif mode == "many-txns":
        many_txns(bootstrap, sys.argv[3], int(sys.argv[4]))
    elif mode == "commit-slow":
        commit_slow(bootstrap, sys.argv[3])
    elif mode == "plain":
        plain(bootstrap, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "expect":
        expect(bootstrap, sys.argv[3], sys.argv[4:])
    else:
        fail(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
