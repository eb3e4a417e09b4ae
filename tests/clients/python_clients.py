"""Round trips through Sluice with the Python clients.

confluent-kafka (bundles a current librdkafka) and kafka-python (pure
Python) each produce keyed messages with acks=all to their own topic and read
them back with manually assigned partitions; the admin client creates and
deletes topics. Exits non-zero with a message on the first failure.

Usage: python3 python_clients.py BOOTSTRAP
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

DEADLINE_S = 60
N = 2000
PARTITIONS = 4


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def confluent_round_trip(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "py-confluent"
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1,
                                            config={"retention.ms": "3600000"})])
    futures[topic].result(timeout=30)
    md = admin.list_topics(timeout=10)
    if len(md.topics[topic].partitions) != PARTITIONS:
        fail(f"metadata shows {len(md.topics[topic].partitions)} partitions")

    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 30000})
    for i in range(N):
        p.produce(topic, key=f"k{i % 50}".encode(), value=f"v{i}".encode(),
                  headers=[("h", str(i).encode())], on_delivery=on_delivery)
        p.poll(0)
    if p.flush(30) != 0:
        fail("confluent producer did not flush")
    if errors or len(delivered) != N:
        fail(f"confluent delivered {len(delivered)} of {N}, errors {errors[:3]}")

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "py-assign-only",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = {}
    start = time.time()
    while len(seen) < N and time.time() - start < DEADLINE_S:
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            fail(f"consumer error {msg.error()}")
        seen[(msg.partition(), msg.offset())] = (msg.key(), msg.value())
        if dict(msg.headers() or [])["h"] != msg.value()[1:]:
            fail(f"header mismatch at {msg.partition()}/{msg.offset()}")
    c.close()
    if seen != delivered:
        fail(f"confluent consumed {len(seen)} of {N} or contents differ")

    futures = admin.delete_topics([topic])
    futures[topic].result(timeout=30)
    if topic in admin.list_topics(timeout=10).topics:
        fail("deleted topic still listed")
    print("confluent-kafka round trip ok")


def kafka_python_round_trip(bootstrap):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    topic = "py-kafka-python"
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [prod.send(topic, key=f"k{i % 50}".encode(), value=f"v{i}".encode()) for i in range(N)]
    prod.flush(timeout=30)
    offsets = {}
    for f in futures:
        md = f.get(timeout=30)
        offsets[(md.partition, md.offset)] = True
    prod.close()
    if len(offsets) != N:
        fail(f"kafka-python got {len(offsets)} distinct offsets for {N} messages")

    cons = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         consumer_timeout_ms=5000)
    parts = [KTP(topic, p) for p in cons.partitions_for_topic(topic)]
    cons.assign(parts)
    cons.seek_to_beginning(*parts)
    values = set()
    start = time.time()
    for msg in cons:
        values.add(msg.value)
        if len(values) == N or time.time() - start > DEADLINE_S:
            break
    cons.close()
    if values != {f"v{i}".encode() for i in range(N)}:
        fail(f"kafka-python consumed {len(values)} distinct values of {N}")
    print("kafka-python round trip ok")


def main():
    bootstrap = sys.argv[1]
    confluent_round_trip(bootstrap)
    kafka_python_round_trip(bootstrap)


if __name__ == "__main__":
    main()
