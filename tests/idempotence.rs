//! Idempotent producers: InitProducerId, duplicate detection of retried batches, sequence and
//! epoch checks, DescribeProducers, and exactly-once appends per partition across a graceful
//! restart and a `kill -9` with a real idempotent client (librdkafka, `enable.idempotence=true`).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, BrokerOptions, connect_raw, encode_request, producer_config, read_frame};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId, ResponseHeader, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const PRODUCER_FENCED: i16 = 90;
const INVALID_REQUEST: i16 = 42;

// ---------------------------------------------------------------------------------------------
// Raw protocol
// ---------------------------------------------------------------------------------------------

/// One request/response round trip on `stream`; decodes the response at `version`.
fn round_trip<R: Request>(
    stream: &mut TcpStream,
    request: &R,
    version: i16,
    correlation_id: i32,
) -> R::Response
where
    R::Response: Decodable,
{
    stream
        .write_all(&encode_request(request, version, correlation_id))
        .expect("write request");
    let payload = read_frame(stream).expect("read response");
    let key = ApiKey::try_from(R::KEY).expect("api key");
    let mut buf = Bytes::from(payload);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, correlation_id);
    R::Response::decode(&mut buf, version).expect("response body")
}

/// One idempotent batch of `count` records.
fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, count: i32) -> Bytes {
    let values = (0..count)
        .map(|i| Bytes::from(format!("pid={producer_id} seq={}", sequence + i)))
        .collect();
    common::record_batch((producer_id, epoch, sequence), now_ms(), values)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Produce v9, acks=all, one batch to partition 0: (error code, base offset).
fn produce(stream: &mut TcpStream, topic: &str, batch: Bytes, correlation_id: i32) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch)),
                ]),
        ]);
    let response: ProduceResponse = round_trip(stream, &request, 9, correlation_id);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn init_producer_id(
    stream: &mut TcpStream,
    version: i16,
    transactional_id: Option<&str>,
    current: (i64, i16),
    correlation_id: i32,
) -> InitProducerIdResponse {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_owned()))),
        )
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(current.0))
        .with_producer_epoch(current.1);
    round_trip(stream, &request, version, correlation_id)
}

#[test]
fn raw_duplicates_gaps_and_fencing() {
    const TOPIC: &str = "idem-raw";
    let broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(1),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    assert_eq!(common::partition_count(&bootstrap, TOPIC), 1);
    let mut stream = connect_raw(broker.addr()).expect("connect");

    // Two fresh producers get distinct ids, epoch 0 (v0 and v4 requests).
    let other = init_producer_id(&mut stream, 0, None, (-1, -1), 1);
    let first = init_producer_id(&mut stream, 4, None, (-1, -1), 2);
    assert_eq!((other.error_code, first.error_code), (0, 0));
    assert_eq!(first.producer_epoch, 0);
    assert_ne!(first.producer_id, other.producer_id);
    let pid = first.producer_id.0;
    assert!(pid >= 0);

    // The same batch twice: one append, the same base offset both times.
    let batch = idempotent_batch(pid, 0, 0, 3);
    assert_eq!(produce(&mut stream, TOPIC, batch.clone(), 3), (0, 0));
    assert_eq!(produce(&mut stream, TOPIC, batch, 4), (0, 0));
    assert_eq!(common::watermarks(&bootstrap, TOPIC, 0), (0, 3));
    assert_eq!(
        produce(&mut stream, TOPIC, idempotent_batch(pid, 0, 3, 2), 5),
        (0, 3)
    );
    // A gap in the sequence.
    let (code, _) = produce(&mut stream, TOPIC, idempotent_batch(pid, 0, 9, 1), 6);
    assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER);

    // KIP-360: the same producer id with the next epoch; the new epoch starts at 0 and
    // fences the old one.
    let bumped = init_producer_id(&mut stream, 4, None, (pid, 0), 7);
    assert_eq!(bumped.error_code, 0);
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (pid, 1));
    let (code, _) = produce(&mut stream, TOPIC, idempotent_batch(pid, 1, 5, 1), 8);
    assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(
        produce(&mut stream, TOPIC, idempotent_batch(pid, 1, 0, 1), 9),
        (0, 5)
    );
    let (code, _) = produce(&mut stream, TOPIC, idempotent_batch(pid, 0, 5, 1), 10);
    assert_eq!(code, INVALID_PRODUCER_EPOCH);
    assert_eq!(common::watermarks(&bootstrap, TOPIC, 0), (0, 6));

    // DescribeProducers lists the producer with its current epoch and last sequence.
    let request = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_indexes(vec![0, 7]),
    ]);
    let described: DescribeProducersResponse = round_trip(&mut stream, &request, 0, 11);
    let partitions = &described.topics[0].partitions;
    assert_eq!(partitions[0].error_code, 0);
    let state = &partitions[0].active_producers;
    assert_eq!(state.len(), 1);
    assert_eq!(
        (
            state[0].producer_id.0,
            state[0].producer_epoch,
            state[0].last_sequence
        ),
        (pid, 1, 0)
    );
    assert_eq!(partitions[1].error_code, 3, "unknown partition");

    // A transactional id gets its own producer id from its coordinator; initialising it
    // again bumps the epoch; holding a stale (id, epoch) is fenced.
    let txn = init_producer_id(&mut stream, 4, Some("tx-1"), (-1, -1), 12);
    assert_eq!(txn.error_code, 0);
    assert!(txn.producer_id.0 >= 0 && txn.producer_id.0 != pid);
    assert_eq!(txn.producer_epoch, 0);
    let again = init_producer_id(&mut stream, 4, Some("tx-1"), (-1, -1), 13);
    assert_eq!(again.error_code, 0);
    assert_eq!(
        (again.producer_id.0, again.producer_epoch),
        (txn.producer_id.0, 1)
    );
    let stale = init_producer_id(&mut stream, 4, Some("tx-1"), (txn.producer_id.0, 0), 14);
    assert_eq!(stale.error_code, PRODUCER_FENCED);
    let empty = init_producer_id(&mut stream, 4, Some(""), (-1, -1), 15);
    assert_eq!(empty.error_code, INVALID_REQUEST);
}

#[test]
fn producer_ids_stay_unique_across_restarts() {
    let mut broker = Broker::start();
    let mut ids = Vec::new();
    for round in 0..3 {
        let mut stream = connect_raw(broker.addr()).expect("connect");
        for i in 0..3 {
            let r = init_producer_id(&mut stream, 3, None, (-1, -1), round * 10 + i);
            assert_eq!(r.error_code, 0);
            ids.push(r.producer_id.0);
        }
        drop(stream);
        if round == 0 {
            broker.kill9();
        } else {
            broker.stop();
        }
        broker.restart();
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "producer ids reused: {ids:?}");
}

// ---------------------------------------------------------------------------------------------
// librdkafka idempotent producer across a restart and a kill -9
// ---------------------------------------------------------------------------------------------

const TOPIC: &str = "idem-load";
const PARTITIONS: i32 = 3;
const MESSAGES: u64 = 30_000;
const IN_FLIGHT: usize = 2_000;
const LOAD_TIMEOUT: Duration = Duration::from_secs(150);

fn value(sequence: u64) -> Vec<u8> {
    format!("seq={sequence:08} {}", "x".repeat((sequence % 64) as usize)).into_bytes()
}

fn parse_sequence(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload).expect("utf-8 payload");
    text[4..12].parse().expect("sequence in payload")
}

/// Sends `MESSAGES` messages, message `n` to partition `n % PARTITIONS`, keeping at most
/// `IN_FLIGHT` unacknowledged; every one must be acknowledged (the client retries through the
/// broker's restarts). Returns the number of delivery failures.
async fn send_all(producer: FutureProducer, acks: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u64 {
    let mut in_flight = FuturesUnordered::new();
    let mut failures = 0;
    let started = Instant::now();
    let mut next = 0u64;
    while (next < MESSAGES || !in_flight.is_empty()) && started.elapsed() < LOAD_TIMEOUT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        while next < MESSAGES && in_flight.len() < IN_FLIGHT {
            let payload = value(next);
            let partition = (next % PARTITIONS as u64) as i32;
            let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(TOPIC)
                .partition(partition)
                .payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(delivery),
                Err((e, _)) => panic!("enqueue {next}: {e}"),
            }
            next += 1;
        }
        if let Ok(Some(result)) =
            tokio::time::timeout(Duration::from_millis(200), in_flight.next()).await
        {
            match result.expect("delivery cancelled") {
                Ok(_) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Err((e, _)) => {
                    eprintln!("delivery failed: {e}");
                    failures += 1;
                }
            }
        }
    }
    assert!(
        in_flight.is_empty(),
        "deliveries still pending after {LOAD_TIMEOUT:?}"
    );
    let _ = producer.flush(Duration::from_secs(10));
    failures
}

/// Waits until `acks` reaches `target`, bounded.
async fn wait_for_acks(acks: &AtomicU64, target: u64) {
    let started = Instant::now();
    while acks.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} acknowledgements within 60 s (waiting for {target})",
            acks.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_survives_restart_and_kill_9_without_duplicates() {
    let mut broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(PARTITIONS as u32),
        // Small segments: producer state is snapshotted at every roll and replayed after.
        segment_bytes: Some(128 * 1024),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    assert_eq!(
        tokio::task::block_in_place(|| common::partition_count(&bootstrap, TOPIC)),
        PARTITIONS as usize
    );
    let producer: FutureProducer = producer_config(&bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Long enough to ride out both restarts: nothing may time out.
        .set("message.timeout.ms", "120000")
        .set("batch.size", "16384")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("idempotent producer");

    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_all(producer, acks.clone(), stop.clone()));

    wait_for_acks(&acks, MESSAGES / 4).await;
    eprintln!(
        "graceful restart after {} acks",
        acks.load(Ordering::Relaxed)
    );
    tokio::task::block_in_place(|| {
        broker.stop();
        broker.restart();
    });
    wait_for_acks(&acks, MESSAGES / 2).await;
    eprintln!("kill -9 after {} acks", acks.load(Ordering::Relaxed));
    tokio::task::block_in_place(|| {
        broker.kill9();
        std::thread::sleep(Duration::from_millis(300));
        broker.restart();
    });

    let failures = match tokio::time::timeout(LOAD_TIMEOUT + Duration::from_secs(30), sender).await
    {
        Ok(result) => result.expect("sender task"),
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            panic!("sender did not finish");
        }
    };
    assert_eq!(failures, 0, "every message must be delivered");
    assert_eq!(acks.load(Ordering::Relaxed), MESSAGES);

    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = tokio::task::block_in_place(|| {
        common::consume_all(&bootstrap, TOPIC, &partitions, Duration::from_secs(60))
    });
    let mut seen: BTreeMap<u64, (i32, i64)> = BTreeMap::new();
    for (partition, messages) in &consumed {
        let mut previous: Option<u64> = None;
        for m in messages {
            let sequence = parse_sequence(m.payload().expect("payload"));
            assert_eq!(
                (sequence % PARTITIONS as u64) as i32,
                *partition,
                "message {sequence} in the wrong partition"
            );
            if let Some(p) = previous {
                assert!(
                    sequence > p,
                    "partition {partition}: {sequence} at offset {} after {p}",
                    m.offset()
                );
            }
            previous = Some(sequence);
            if let Some(first) = seen.insert(sequence, (*partition, m.offset())) {
                panic!(
                    "message {sequence} twice: {first:?} and ({partition}, {})",
                    m.offset()
                );
            }
        }
    }
    let missing: Vec<u64> = (0..MESSAGES)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "messages lost, first ones: {missing:?}");
    assert_eq!(seen.len() as u64, MESSAGES);
}
