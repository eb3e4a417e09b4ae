"""Round trips through Sluice with the Python clients.

confluent-kafka (bundles a current librdkafka) and kafka-python (pure
Python) each produce keyed messages with acks=all to their own topic and read
them back with manually assigned partitions; the admin client creates and
deletes topics. Exits non-zero with a message on the first failure.

Usage: python3 python_clients.py BOOTSTRAP [admin]
       python3 python_clients.py BOOTSTRAP produce-acked TOPIC COUNT TAG

produce-acked: confluent-kafka produces COUNT records "TAG-i" to partition 0 of TOPIC with
acks=all and idempotence, a record every few milliseconds (the cluster test kills the
partition's leader meanwhile), and prints "ACK <partition> <offset> <value>" for each one
acknowledged and "FAILED <n>" at the end.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
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


def source_of(entry):
    """A ConfigEntry's source as an int (an enum or an int, by version)."""
    return int(getattr(entry.source, "value", entry.source))


def confluent_admin(bootstrap):
    """AdminClient: create with configs, describe/alter/incremental-alter
    configs, create partitions, delete records, describe cluster, delete."""
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       ConfigSource, NewPartitions, ResourceType)

    TOPIC_SOURCE = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "py-admin"
    fs = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                       config={"retention.ms": "3600000",
                                               "cleanup.policy": "delete"})])
    fs[topic].result(timeout=30)

    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    if configs["retention.ms"].value != "3600000":
        fail(f"retention.ms is {configs['retention.ms'].value}")
    if source_of(configs["retention.ms"]) != TOPIC_SOURCE:
        fail(f"retention.ms source {configs['retention.ms'].source}")
    if source_of(configs["segment.bytes"]) == TOPIC_SOURCE:
        fail("segment.bytes reported as a topic override")
    if "max.message.bytes" not in configs or "message.timestamp.type" not in configs:
        fail(f"obeyed configs missing: {sorted(configs)}")

    # AlterConfigs replaces the whole set: retention.ms goes back to default.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "1048576"})
    admin.alter_configs([res])[res].result(timeout=30)
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    if configs["retention.bytes"].value != "1048576":
        fail(f"retention.bytes is {configs['retention.bytes'].value}")
    if source_of(configs["retention.ms"]) == TOPIC_SOURCE:
        fail("retention.ms still overridden after AlterConfigs")

    # Incremental: SET one, DELETE another, APPEND to a list.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    admin.incremental_alter_configs([res])[res].result(timeout=30)
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    if configs["segment.ms"].value != "3600000":
        fail(f"segment.ms is {configs['segment.ms'].value}")
    if source_of(configs["retention.bytes"]) == TOPIC_SOURCE:
        fail("retention.bytes still overridden after DELETE")
    if set(configs["cleanup.policy"].value.split(",")) != {"delete", "compact"}:
        fail(f"cleanup.policy is {configs['cleanup.policy'].value}")

    # An invalid value is refused.
    bad = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([bad])[bad].result(timeout=30)
        fail("invalid retention.ms accepted")
    except KafkaException:
        pass

    # Broker configs: described, and a dynamic one can be set.
    broker = ConfigResource(ResourceType.BROKER, "0")
    bconf = admin.describe_configs([broker])[broker].result(timeout=30)
    if "log.retention.ms" not in bconf:
        fail(f"broker configs lack log.retention.ms: {sorted(bconf)}")

    # CreatePartitions: grow, then refuse a non-increase.
    admin.create_partitions([NewPartitions(topic, 4)])[topic].result(timeout=30)
    if len(admin.list_topics(topic, timeout=10).topics[topic].partitions) != 4:
        fail("partitions not grown to 4")
    try:
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
        fail("shrinking partitions accepted")
    except KafkaException as e:
        if e.args[0].code() != KafkaError.INVALID_PARTITIONS:
            fail(f"shrink error {e}")

    # Produce to the new partition 3 (keyed: the topic is compacted now), then DeleteRecords
    # up to offset 5.
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 30000})
    failed = []
    for i in range(10):
        p.produce(topic, partition=3, key=f"k{i}".encode(), value=f"v{i}".encode(),
                  on_delivery=lambda err, _m: err and failed.append(err))
    if p.flush(30) != 0 or failed:
        fail(f"producer did not flush: {failed[:1]}")
    fs = admin.delete_records([TopicPartition(topic, 3, 5)])
    for tp, f in fs.items():
        r = f.result(timeout=30)
        if r.low_watermark != 5:
            fail(f"low watermark after DeleteRecords {r.low_watermark}")
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "py-admin-check",
                  "enable.auto.commit": False})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 3), timeout=10)
    c.close()
    if (low, high) != (5, 10):
        fail(f"watermarks after DeleteRecords {(low, high)}")

    cluster = admin.describe_cluster().result(timeout=30)
    if len(cluster.nodes) != 1 or cluster.controller is None or not cluster.cluster_id:
        fail(f"describe_cluster: {cluster}")

    # Groups: commit offsets as a group with no members, then list,
    # describe and delete it.
    group = "py-admin-group"
    gc = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    gc.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    gc.close()
    listed = admin.list_consumer_groups().result(timeout=30)
    if group not in {g.group_id for g in listed.valid}:
        fail(f"group {group} not listed: {listed.valid}")
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    if described.members:
        fail(f"group should have no members: {described}")
    admin.delete_consumer_groups([group])[group].result(timeout=30)
    listed = admin.list_consumer_groups().result(timeout=30)
    if group in {g.group_id for g in listed.valid}:
        fail("deleted group still listed")

    admin.delete_topics([topic])[topic].result(timeout=30)
    if topic in admin.list_topics(timeout=10).topics:
        fail("deleted topic still listed")
    print("confluent-kafka admin ok")


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


def produce_acked(bootstrap, topic, count, tag):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 60000,
        # A broker killed and restarted is retried within a second, not librdkafka's 10 s.
        "reconnect.backoff.max.ms": 1000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(str(err))
        else:
            print(f"ACK {msg.partition()} {msg.offset()} {msg.value().decode()}", flush=True)

    for i in range(count):
        p.produce(topic, value=f"{tag}-{i}".encode(), partition=0, on_delivery=on_delivery)
        p.poll(0)
        time.sleep(0.005)
    left = p.flush(90)
    print(f"FAILED {len(failed) + left} {failed[:3]}", flush=True)


def main():
    bootstrap = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "produce-acked":
        produce_acked(bootstrap, sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    if len(sys.argv) > 2 and sys.argv[2] == "admin":
        confluent_admin(bootstrap)
        return
    confluent_round_trip(bootstrap)
    kafka_python_round_trip(bootstrap)


if __name__ == "__main__":
    main()
