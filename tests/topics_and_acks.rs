//! The smaller parts of the contract: CreateTopics and DeleteTopics through an AdminClient, the
//! three acks modes, ListOffsets by timestamp, and Fetch past the end of a partition.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Broker, assign_consumer, consume_partitions, create_topic, partition_count, producer_config,
    raw_offset_for_leader_epoch, topic_names, try_create_topic, try_delete_topic, watermarks,
};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

async fn produce_one(producer: &FutureProducer, topic: &str, partition: i32, text: &str) -> i64 {
    let record: FutureRecord<'_, (), str> =
        FutureRecord::to(topic).partition(partition).payload(text);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"))
        .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_topics() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();

    create_topic(&bootstrap, "admin-a", 3).await;
    assert_eq!(partition_count(&bootstrap, "admin-a"), 3);
    match try_create_topic(&bootstrap, "admin-a", 5).await {
        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
        other => panic!(
            "CreateTopics of an existing topic: expected TOPIC_ALREADY_EXISTS, got {other:?}"
        ),
    }
    assert_eq!(
        partition_count(&bootstrap, "admin-a"),
        3,
        "a rejected CreateTopics must not change the topic"
    );

    let producer: FutureProducer = producer_config(&bootstrap).create().expect("producer");
    for partition in 0..3 {
        assert_eq!(
            produce_one(&producer, "admin-a", partition, "first").await,
            0
        );
        assert_eq!(
            produce_one(&producer, "admin-a", partition, "second").await,
            1
        );
    }
    drop(producer);

    try_delete_topic(&bootstrap, "admin-a")
        .await
        .unwrap_or_else(|(name, code)| panic!("DeleteTopics {name}: {code:?}"));
    assert!(
        !topic_names(&bootstrap).contains(&"admin-a".to_owned()),
        "deleted topic still listed in Metadata"
    );
    match try_delete_topic(&bootstrap, "admin-never-created").await {
        Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
        other => panic!(
            "DeleteTopics of an unknown topic: expected UNKNOWN_TOPIC_OR_PARTITION, got {other:?}"
        ),
    }

    // Recreated under the same name, the topic starts empty.
    create_topic(&bootstrap, "admin-a", 1).await;
    assert_eq!(partition_count(&bootstrap, "admin-a"), 1);
    assert_eq!(watermarks(&bootstrap, "admin-a", 0), (0, 0));
    let producer: FutureProducer = producer_config(&bootstrap).create().expect("producer");
    assert_eq!(
        produce_one(&producer, "admin-a", 0, "reborn").await,
        0,
        "first offset of a recreated topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_one_and_all_are_stored() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    const PER_MODE: usize = 1_000;
    let topic = "acks-modes";
    let mut expected: Vec<String> = Vec::new();
    for acks in ["0", "1", "all"] {
        let producer: FutureProducer = producer_config(&bootstrap)
            .set("acks", acks)
            .create()
            .expect("producer");
        let mut pending = Vec::new();
        for index in 0..PER_MODE {
            let text = format!("acks={acks} index={index}");
            let record: FutureRecord<'_, (), str> =
                FutureRecord::to(topic).partition(0).payload(text.as_str());
            pending.push(
                producer
                    .send_result(record)
                    .unwrap_or_else(|(e, _)| panic!("enqueue acks={acks}: {e}")),
            );
            expected.push(text);
        }
        for (index, delivery) in pending.into_iter().enumerate() {
            let delivery = tokio::time::timeout(Duration::from_secs(60), delivery)
                .await
                .expect("delivery report within 60 s")
                .expect("delivery cancelled")
                .unwrap_or_else(|(e, _)| panic!("acks={acks} message {index}: {e}"));
            if acks != "0" {
                // With acks=0 there is no response, so no offset to check.
                let offset_expected = (expected.len() - PER_MODE + index) as i64;
                assert_eq!(
                    delivery.offset, offset_expected,
                    "acks={acks}: offset of message {index}"
                );
            }
        }
    }
    // acks=0 has no response to wait for: the broker may still be appending. Wait (bounded)
    // until the high watermark covers everything.
    let total = expected.len() as i64;
    let started = Instant::now();
    let mut high = 0;
    for _ in 0..100 {
        high = watermarks(&bootstrap, topic, 0).1;
        if high >= total || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(high, total, "high watermark after acks=0, 1 and all");
    let ranges = BTreeMap::from([(0, (0, total))]);
    let consumed = tokio::task::block_in_place(|| {
        consume_partitions(&bootstrap, topic, &ranges, Duration::from_secs(30))
    });
    let got: Vec<String> = consumed[&0]
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(got, expected, "messages read back in produce order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp_and_fetch_out_of_range() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = "by-time";
    const BASE_MS: i64 = 1_600_000_000_000;
    // One record per batch (each send awaited, linger 0), timestamps 0, 10, 20, ... ms apart.
    let producer: FutureProducer = producer_config(&bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for index in 0..20i64 {
        let text = format!("t{index}");
        let record: FutureRecord<'_, (), str> = FutureRecord::to(topic)
            .partition(0)
            .payload(text.as_str())
            .timestamp(BASE_MS + index * 10);
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {index}: {e}"));
        assert_eq!(delivery.offset, index);
    }

    // OffsetForLeaderEpoch on a one-node broker: epoch 0 all along, ending at the log end;
    // a current epoch ahead of the broker's is UNKNOWN_LEADER_EPOCH; an unknown partition
    // UNKNOWN_TOPIC_OR_PARTITION.
    assert_eq!(
        raw_offset_for_leader_epoch(broker.addr(), topic, 0, 0, 0),
        (0, 0, 20)
    );
    assert_eq!(
        raw_offset_for_leader_epoch(broker.addr(), topic, 0, 3, 0).0,
        75
    );
    assert_eq!(
        raw_offset_for_leader_epoch(broker.addr(), topic, 9, -1, 0).0,
        3
    );

    let consumer = assign_consumer(&bootstrap, "by-time");
    // (target timestamp, first offset whose timestamp is >= target; -1: none, i.e. the end)
    let cases = [
        (BASE_MS - 1_000, 0),
        (BASE_MS, 0),
        (BASE_MS + 55, 6),
        (BASE_MS + 190, 19),
        (BASE_MS + 191, -1),
    ];
    for (timestamp, offset_expected) in cases {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(topic, 0, Offset::Offset(timestamp))
            .expect("add partition");
        let answer = consumer
            .offsets_for_times(query, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("ListOffsets for timestamp {timestamp}: {e}"));
        let element = answer
            .find_partition(topic, 0)
            .expect("partition in answer");
        assert!(
            element.error().is_ok(),
            "ListOffsets timestamp {timestamp}: {:?}",
            element.error()
        );
        let offset = match element.offset() {
            Offset::Offset(o) => o,
            Offset::End => -1,
            other => panic!("ListOffsets timestamp {timestamp}: offset {other:?}"),
        };
        assert_eq!(
            offset,
            offset_expected,
            "ListOffsets: first offset with timestamp >= {} ms after the first record",
            timestamp - BASE_MS
        );
    }

    // Fetch from beyond the end with auto.offset.reset=error: the consumer must get
    // OFFSET_OUT_OF_RANGE, not silence and not data.
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(1_000))
        .expect("add partition");
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut outcome = None;
    for _ in 0..100 {
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => panic!(
                "fetch at offset 1000 of a 20-record partition returned offset {}",
                message.offset()
            ),
            Some(Err(error)) => {
                outcome = Some(error);
                break;
            }
        }
    }
    let outcome = outcome.expect("no error within 15 s for a fetch past the end");
    // librdkafka turns OFFSET_OUT_OF_RANGE with auto.offset.reset=error into the local
    // AutoOffsetReset error ("No offset to automatically reset to"); it raises that only when
    // the broker reported the offset out of range, since the start offset here is absolute.
    assert!(
        matches!(
            outcome,
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
            )
        ),
        "fetch past the end: expected OFFSET_OUT_OF_RANGE, got {outcome:?}"
    );
    let _ = consumer.unassign();
}
