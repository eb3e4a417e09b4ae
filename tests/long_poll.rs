//! Long-polling Fetch requests whose `min_bytes` is more than the log holds: they wait for new
//! data without spinning (every shard keeps answering other connections while they wait), and a
//! graceful stop answers them at once with what is there instead of holding the stop until their
//! `max_wait_ms`.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, create_topic, encode_request, producer_config, raw_api_versions_v0};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TOPIC: &str = "long-poll";
/// Two partitions: consecutive partitions live on consecutive shards, so every request waits
/// on both shards.
const PARTITIONS: i32 = 2;
const FETCH_VERSION: i16 = 11;
/// More than the log will ever hold here.
const MIN_BYTES: i32 = 1 << 20;
const MAX_WAIT: Duration = Duration::from_secs(8);
/// What each long poll asks for. A one-partition poll whose connection landed on the
/// partition's owner waits entirely on its own shard: the case where a wait that returns at once
/// would starve every other connection of that shard.
const POLLS: &[&[i32]] = &[&[0], &[1], &[0], &[1], &[0, 1], &[0, 1]];
const PROBES: i32 = 8;

fn fetch_request(partitions: &[i32]) -> FetchRequest {
    let partitions = partitions
        .iter()
        .map(|&p| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(MAX_WAIT.as_millis() as i32)
        .with_min_bytes(MIN_BYTES)
        .with_max_bytes(8 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(partitions),
        ])
}

/// One long poll of `partitions` on a connection of its own: how long it took and the records
/// bytes returned.
fn long_poll(
    addr: SocketAddr,
    partitions: &'static [i32],
    correlation_id: i32,
) -> JoinHandle<(Duration, usize)> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut stream = common::connect_raw(addr).expect("connect");
        let started = Instant::now();
        stream
            .write_all(&encode_request(
                &fetch_request(partitions),
                FETCH_VERSION,
                correlation_id,
            ))
            .expect("send fetch");
        let frame = common::read_frame(&mut stream).expect("fetch answered");
        let took = started.elapsed();
        let mut buf = Bytes::from(frame);
        let header = ResponseHeader::decode(
            &mut buf,
            ApiKey::Fetch.response_header_version(FETCH_VERSION),
        )
        .expect("header");
        assert_eq!(header.correlation_id, correlation_id);
        let response = FetchResponse::decode(&mut buf, FETCH_VERSION).expect("fetch response");
        let mut bytes = 0;
        for topic in &response.responses {
            for p in &topic.partitions {
                assert_eq!(p.error_code, 0, "partition {}", p.partition_index);
                assert_eq!(p.high_watermark, 1, "partition {}", p.partition_index);
                assert!(partitions.contains(&p.partition_index));
                bytes += p.records.as_ref().map_or(0, Bytes::len);
            }
        }
        (took, bytes)
    })
}

#[test]
fn long_polls_below_min_bytes_neither_spin_nor_hold_a_stop() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    tokio::runtime::Runtime::new()
        .expect("tokio")
        .block_on(create_topic(&bootstrap, TOPIC, PARTITIONS));
    let producer: BaseProducer = producer_config(&bootstrap).create().expect("producer");
    for p in 0..PARTITIONS {
        producer
            .send(BaseRecord::<(), str>::to(TOPIC).partition(p).payload("one"))
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    // Some data is there, far less than min_bytes: every poll must wait.
    let polls: Vec<_> = POLLS
        .iter()
        .enumerate()
        .map(|(i, partitions)| long_poll(broker.addr(), partitions, 100 + i as i32))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // While they wait, fresh connections (spread over both shards by SO_REUSEPORT) are
    // answered: a waiting fetch must not keep its shard busy.
    for probe in 0..PROBES {
        raw_api_versions_v0(broker.addr(), 1_000 + probe).unwrap_or_else(|e| {
            panic!("probe {probe} not answered while fetches wait: {e}");
        });
    }

    // A graceful stop answers the waiting fetches with what they have and exits at once.
    let exit = broker.terminate(Duration::from_secs(5));
    let (status, took) = exit.unwrap_or_else(|| {
        panic!(
            "broker did not exit within 5 s of SIGTERM with fetches waiting:\n{}",
            broker.logs_text()
        )
    });
    assert!(status.success(), "exit status {status}");
    for poll in polls {
        let (waited, bytes) = poll.join().expect("poll thread");
        assert!(
            bytes > 0,
            "the stop answered with the records that were there"
        );
        assert!(
            waited < MAX_WAIT - Duration::from_secs(2),
            "answered by the stop, not at max_wait: {waited:?}"
        );
    }
    eprintln!("stopped in {took:?} with {} fetches waiting", POLLS.len());
}
