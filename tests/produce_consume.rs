//! End-to-end produce and consume through real clients: rdkafka (librdkafka 2.12, built by the
//! crate) for volume and content checks, and Debian's kcat (librdkafka 2.0.2) for compatibility
//! with an older client.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, consume_all, create_topic, producer_config, run_with_timeout};
use rdkafka::Message;
use rdkafka::Timestamp;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

const TOPIC: &str = "produce-consume";
const PARTITIONS: i32 = 8;
const MESSAGES: usize = 100_000;
const KEYS: usize = 1_000;
/// Timestamps are explicit and distinct: 2023-11-14T22:13:20Z plus the message index in ms.
const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;

/// What message `index` must look like when read back.
struct Expected {
    key: String,
    sequence: usize,
    value: String,
    header_index: String,
    header_key: String,
    timestamp_ms: i64,
}

fn expected(index: usize) -> Expected {
    let key_number = index % KEYS;
    let sequence = index / KEYS;
    let key = format!("key-{key_number}");
    Expected {
        value: format!(
            "{key}|seq={sequence}|index={index}|{}",
            "v".repeat(index % 97)
        ),
        header_index: index.to_string(),
        header_key: format!("h-{key}"),
        timestamp_ms: TIMESTAMP_BASE_MS + index as i64,
        key,
        sequence,
    }
}

fn parse_index(value: &str) -> usize {
    let field = value
        .split('|')
        .nth(2)
        .unwrap_or_else(|| panic!("value without index field: {value:?}"));
    field
        .strip_prefix("index=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad index field in {value:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_round_trip_in_order() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    assert_eq!(
        common::partition_count(&bootstrap, TOPIC),
        PARTITIONS as usize,
        "partition count after CreateTopics"
    );

    let producer: FutureProducer = producer_config(&bootstrap)
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");

    let produce_started = Instant::now();
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(MESSAGES);
    for index in 0..MESSAGES {
        let e = expected(index);
        let mut queue_full_waits = 0u32;
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "index",
                    value: Some(e.header_index.as_bytes()),
                })
                .insert(Header {
                    key: "key-copy",
                    value: Some(e.header_key.as_bytes()),
                });
            let record = FutureRecord::to(TOPIC)
                .key(e.key.as_bytes())
                .payload(e.value.as_bytes())
                .timestamp(e.timestamp_ms)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    queue_full_waits += 1;
                    assert!(
                        queue_full_waits < 3_000,
                        "producer queue stayed full for 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => panic!("enqueue message {index}: {error}"),
            }
        }
    }

    // Every message must be acknowledged; remember where each one went.
    let mut placement: Vec<(i32, i64)> = Vec::with_capacity(MESSAGES);
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(60), delivery)
            .await
            .unwrap_or_else(|_| panic!("delivery of message {index} not reported within 60 s"))
            .expect("delivery future cancelled");
        match result {
            Ok(delivery) => placement.push((delivery.partition, delivery.offset)),
            Err((error, _)) => panic!("message {index} not acknowledged: {error}"),
        }
    }
    let produce_elapsed = produce_started.elapsed();
    eprintln!("produced {MESSAGES} messages (acks=all) in {produce_elapsed:?}");

    // Acknowledged offsets: each (partition, offset) once, and per partition 0..n without gaps.
    let mut acked_per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &(partition, offset) in &placement {
        acked_per_partition
            .entry(partition)
            .or_default()
            .push(offset);
    }
    for (partition, offsets) in acked_per_partition.iter_mut() {
        offsets.sort_unstable();
        for (expected_offset, &offset) in offsets.iter().enumerate() {
            assert_eq!(
                offset, expected_offset as i64,
                "acknowledged offsets of partition {partition} have a gap or duplicate"
            );
        }
    }

    let consume_started = Instant::now();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = tokio::task::block_in_place(|| {
        consume_all(&bootstrap, TOPIC, &partitions, Duration::from_secs(120))
    });
    eprintln!(
        "consumed {} messages in {:?}",
        consumed.values().map(Vec::len).sum::<usize>(),
        consume_started.elapsed()
    );

    let mut seen = vec![false; MESSAGES];
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut last_sequence_of_key: HashMap<String, usize> = HashMap::new();
    let mut total = 0usize;
    for (&partition, messages) in &consumed {
        for (position, message) in messages.iter().enumerate() {
            total += 1;
            assert_eq!(
                message.offset(),
                position as i64,
                "partition {partition}: offsets must start at 0 and have no gaps"
            );
            let value = std::str::from_utf8(message.payload().expect("payload")).expect("utf8");
            let index = parse_index(value);
            assert!(index < MESSAGES, "index {index} out of range");
            assert!(!seen[index], "message {index} read twice");
            seen[index] = true;
            let e = expected(index);
            assert_eq!(value, e.value, "value of message {index}");
            assert_eq!(
                message.key(),
                Some(e.key.as_bytes()),
                "key of message {index}"
            );
            assert_eq!(
                message.timestamp(),
                Timestamp::CreateTime(e.timestamp_ms),
                "timestamp of message {index}"
            );
            let headers = message.headers().expect("headers present");
            assert_eq!(headers.count(), 2, "header count of message {index}");
            let first = headers.get(0);
            let second = headers.get(1);
            assert_eq!(
                (first.key, first.value),
                ("index", Some(e.header_index.as_bytes())),
                "first header of message {index}"
            );
            assert_eq!(
                (second.key, second.value),
                ("key-copy", Some(e.header_key.as_bytes())),
                "second header of message {index}"
            );
            assert_eq!(
                placement[index],
                (partition, message.offset()),
                "message {index} read at a different place than acknowledged"
            );
            let key_partition = *partition_of_key.entry(e.key.clone()).or_insert(partition);
            assert_eq!(key_partition, partition, "key {} in two partitions", e.key);
            if let Some(&last) = last_sequence_of_key.get(&e.key) {
                assert!(
                    e.sequence > last,
                    "key {}: sequence {} after {last}",
                    e.key,
                    e.sequence
                );
            }
            last_sequence_of_key.insert(e.key.clone(), e.sequence);
        }
    }
    assert_eq!(total, MESSAGES, "messages read back");
    assert!(seen.iter().all(|&s| s), "some messages were not read back");
    assert_eq!(partition_of_key.len(), KEYS);
    assert!(
        consumed.values().filter(|m| !m.is_empty()).count() > 1,
        "all keys landed in one partition: the partitioner or metadata is off"
    );
}

fn kcat(bootstrap: &str) -> Command {
    let mut command = Command::new("kcat");
    command
        .arg("-b")
        .arg(bootstrap)
        .arg("-X")
        .arg("socket.timeout.ms=10000");
    command
}

/// Debian's kcat links librdkafka 2.0.2, which misreads tagged fields in ApiVersions v3
/// responses; this is the check that Sluice still serves it.
#[test]
fn kcat_produce_consume_and_list() {
    if Command::new("kcat").arg("-V").output().is_err() {
        panic!("kcat is not installed (apt-get install kcat); .ci/run installs it");
    }
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = "kcat-round-trip";
    let lines: Vec<String> = (0..50).map(|i| format!("k{i}:value number {i}")).collect();
    let input = lines.join("\n") + "\n";

    let produced = run_with_timeout(
        kcat(&bootstrap)
            .args(["-X", "message.timeout.ms=20000"])
            .args(["-P", "-t", topic, "-K:"])
            .env("LC_ALL", "C"),
        input.as_bytes(),
        Duration::from_secs(60),
    );
    assert!(
        produced.status.success(),
        "kcat -P failed ({}): {}",
        produced.status,
        String::from_utf8_lossy(&produced.stderr)
    );

    let consumed = run_with_timeout(
        kcat(&bootstrap).args(["-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k=%s\n"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(
        consumed.status.success(),
        "kcat -C failed ({}): {}",
        consumed.status,
        String::from_utf8_lossy(&consumed.stderr)
    );
    let expected: Vec<String> = (0..50).map(|i| format!("k{i}=value number {i}")).collect();
    let got: Vec<String> = String::from_utf8_lossy(&consumed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, expected, "kcat read back different lines");

    let listed = run_with_timeout(
        kcat(&bootstrap).args(["-L", "-t", topic]),
        b"",
        Duration::from_secs(30),
    );
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "kcat -L failed ({}): {}",
        listed.status,
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        listing.contains(&format!("topic \"{topic}\" with 1 partitions")),
        "kcat -L does not list {topic} with 1 partition:\n{listing}"
    );
    assert!(
        listing.contains(&format!("127.0.0.1:{}", broker.port())),
        "kcat -L does not show the advertised listener:\n{listing}"
    );
}
