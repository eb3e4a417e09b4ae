//! Requests on one connection take effect in the order they were sent, while they are pipelined
//! (Kafka's "requests will be processed in the order they are sent"). Raw requests, written in
//! one burst before any answer is read, on connections accepted by both shards, against
//! partitions and groups owned by both shards:
//!
//! - many OffsetCommits with increasing offsets for the same partitions, then OffsetFetch: the
//!   last offset sent is the one committed;
//! - many non-idempotent Produce requests to the same partitions, then a Fetch: offsets and
//!   records follow the request order;
//! - CreateTopics then Produce to the new topic, without waiting: the Produce sees the topic.
//!
//! Each case runs for several seeds (`SLUICE_ORDER_SEEDS=N` runs more); a failure names its seed
//! and the command that replays it (`SLUICE_ORDER_SEED=S`).

mod common;

use std::io::Write;
use std::net::TcpStream;

use bytes::Bytes;
use common::{Broker, connect_raw, create_topic, encode_request, read_frame};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use sluice::storage::sim::SimRng as Rng;

/// Partitions of the test topics: with 2 shards, both own some.
const PARTITIONS: i32 = 4;
/// Requests written per burst; more than the 16 the broker keeps in flight, so its reader
/// stops and resumes while earlier requests are still waiting for their fsync.
const BURST: usize = 48;
/// Connections per seed: each is accepted by one shard, at the kernel's choice.
const CONNECTIONS: usize = 4;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// The seeds to run: `SLUICE_ORDER_SEED=S` alone, else `SLUICE_ORDER_SEEDS` (default 5) seeds.
fn seeds(case: &str) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SLUICE_ORDER_SEED") {
        return vec![seed.parse().expect("SLUICE_ORDER_SEED is a number")];
    }
    let count: u64 = std::env::var("SLUICE_ORDER_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let base = case
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (0..count).map(|i| base.wrapping_add(i)).collect()
}

/// Run `case` for every seed, naming the seed and its replay command on failure.
fn for_each_seed(case: &str, mut run: impl FnMut(u64)) {
    for seed in seeds(case) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)));
        if let Err(panic) = outcome {
            eprintln!(
                "{case} failed with seed {seed}; replay: SLUICE_ORDER_SEED={seed} \
                 cargo test --release --test request_order {case}"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// Write every request of `batch` (already framed) in one go, then read one response each:
/// the broker has them all before it answers the first.
fn pipeline(stream: &mut TcpStream, batch: &[Vec<u8>]) -> Vec<Bytes> {
    let burst: Vec<u8> = batch.concat();
    stream.write_all(&burst).expect("write burst");
    (0..batch.len())
        .map(|i| Bytes::from(read_frame(stream).unwrap_or_else(|e| panic!("response {i}: {e}"))))
        .collect()
}

/// Decode a response whose request had `correlation` at `version`.
fn decode<R: Request>(mut frame: Bytes, version: i16, correlation: i32) -> R::Response
where
    R::Response: Decodable,
{
    let key = ApiKey::try_from(R::KEY).expect("api key");
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
        .expect("response header");
    assert_eq!(
        header.correlation_id, correlation,
        "responses in request order"
    );
    R::Response::decode(&mut frame, version).expect("response body")
}

/// The shard coordinating `group` on a 2-shard broker with 16 offsets partitions (the same
/// functions the broker uses).
fn coordinator_shard(group: &str) -> usize {
    let p = sluice::group::offsets_partition(group, 16);
    sluice::types::TopicPartition::new("__consumer_offsets", p)
        .owner(2)
        .0
}

/// Two groups coordinated by each shard.
fn groups_on_both_shards(prefix: &str) -> Vec<String> {
    let mut per_shard = [Vec::new(), Vec::new()];
    for i in 0.. {
        let g = format!("{prefix}-{i}");
        let shard = coordinator_shard(&g);
        if per_shard[shard].len() < 2 {
            per_shard[shard].push(g);
        }
        if per_shard.iter().all(|v| v.len() == 2) {
            break;
        }
    }
    per_shard.concat()
}

fn offset_commit(group: &str, topic: &str, partition: i32, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(offset),
                ]),
        ])
}

#[test]
fn pipelined_offset_commits_apply_in_order() {
    let broker = Broker::start();
    let topic = "order-commits";
    block_on(create_topic(&broker.bootstrap(), topic, PARTITIONS));
    const COMMIT_V: i16 = 8;
    const FETCH_V: i16 = 7;
    for_each_seed("pipelined_offset_commits_apply_in_order", |seed| {
        let mut rng = Rng::new(seed);
        for c in 0..CONNECTIONS {
            let groups = groups_on_both_shards(&format!("order-{seed}-{c}"));
            let mut stream = connect_raw(broker.addr()).expect("connect");
            // Increasing offsets per (group, partition), requests shuffled across them.
            let mut next = vec![vec![0i64; PARTITIONS as usize]; groups.len()];
            let mut frames = Vec::new();
            let mut correlation = 0;
            for _ in 0..BURST {
                let g = rng.below(groups.len() as u64) as usize;
                let p = rng.below(PARTITIONS as u64) as usize;
                next[g][p] += 1 + rng.below(10) as i64;
                correlation += 1;
                let request = offset_commit(&groups[g], topic, p as i32, next[g][p]);
                frames.push(encode_request(&request, COMMIT_V, correlation));
            }
            // OffsetFetch of every group, in the same burst: each must see every commit.
            for group in &groups {
                correlation += 1;
                let request = OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(group)))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(s(topic)))
                            .with_partition_indexes((0..PARTITIONS).collect()),
                    ]));
                frames.push(encode_request(&request, FETCH_V, correlation));
            }
            let responses = pipeline(&mut stream, &frames);
            for (i, frame) in responses.iter().take(BURST).enumerate() {
                let r = decode::<OffsetCommitRequest>(frame.clone(), COMMIT_V, i as i32 + 1);
                let code = r.topics[0].partitions[0].error_code;
                assert_eq!(
                    code, 0,
                    "seed {seed} connection {c}: commit {i} failed: {code}"
                );
            }
            for (g, frame) in responses[BURST..].iter().enumerate() {
                let r =
                    decode::<OffsetFetchRequest>(frame.clone(), FETCH_V, (BURST + g) as i32 + 1);
                assert_eq!(r.error_code, 0);
                for part in &r.topics[0].partitions {
                    let sent = next[g][part.partition_index as usize];
                    let expected = if sent == 0 { -1 } else { sent };
                    assert_eq!(
                        part.committed_offset,
                        expected,
                        "seed {seed} connection {c}: group {} (shard {}) partition {}: \
                         committed {} but the last commit sent was {expected}",
                        groups[g],
                        coordinator_shard(&groups[g]),
                        part.partition_index,
                        part.committed_offset
                    );
                }
            }
        }
    });
}

/// One non-idempotent batch of `count` records whose values are `tag:index`.
fn batch(tag: u64, first: usize, count: usize) -> Bytes {
    let values = (first..first + count)
        .map(|k| Bytes::from(format!("{tag}:{k}")))
        .collect();
    common::record_batch((-1, -1, -1), 0, values)
}

fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s(topic)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

fn fetch_all(topic: &str, partitions: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(s(topic)))
                .with_partitions(
                    (0..partitions)
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(16 << 20)
                        })
                        .collect(),
                ),
        ])
}

/// The `tag:index` values of the fetched records of one partition, in log order, with their
/// offsets.
fn fetched_values(records: &Option<Bytes>) -> Vec<(i64, String)> {
    let mut bytes = records.clone().unwrap_or_default();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode fetched batches");
        for r in set.records {
            let value = String::from_utf8(r.value.expect("value").to_vec()).expect("utf8");
            out.push((r.offset, value));
        }
    }
    out
}

#[test]
fn pipelined_produces_land_in_order() {
    let broker = Broker::start();
    const PRODUCE_V: i16 = 9;
    const FETCH_V: i16 = 12;
    for_each_seed("pipelined_produces_land_in_order", |seed| {
        let mut rng = Rng::new(seed);
        let topic = format!("order-produce-{seed}");
        block_on(create_topic(&broker.bootstrap(), &topic, PARTITIONS));
        // Per partition, the values sent so far, in request order, across connections (each
        // connection's burst is answered before the next starts).
        let mut sent: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
        for c in 0..CONNECTIONS {
            let mut stream = connect_raw(broker.addr()).expect("connect");
            let mut frames = Vec::new();
            let mut partitions = Vec::new();
            for i in 0..BURST {
                let p = rng.below(PARTITIONS as u64) as usize;
                let count = 1 + rng.below(20) as usize;
                let first = sent[p].len();
                let tag = (c * BURST + i) as u64;
                sent[p].extend((first..first + count).map(|k| format!("{tag}:{k}")));
                frames.push(encode_request(
                    &produce(&topic, p as i32, batch(tag, first, count)),
                    PRODUCE_V,
                    i as i32 + 1,
                ));
                partitions.push(p);
            }
            frames.push(encode_request(
                &fetch_all(&topic, PARTITIONS),
                FETCH_V,
                BURST as i32 + 1,
            ));
            let responses = pipeline(&mut stream, &frames);
            let mut last_base = vec![-1i64; PARTITIONS as usize];
            for (i, frame) in responses.iter().take(BURST).enumerate() {
                let r = decode::<ProduceRequest>(frame.clone(), PRODUCE_V, i as i32 + 1);
                let part = &r.responses[0].partition_responses[0];
                assert_eq!(part.error_code, 0, "seed {seed}: produce {i} failed");
                let p = partitions[i];
                assert!(
                    part.base_offset > last_base[p],
                    "seed {seed} connection {c}: produce {i} to partition {p} got base offset \
                     {} after {}",
                    part.base_offset,
                    last_base[p]
                );
                last_base[p] = part.base_offset;
            }
            let fetched =
                decode::<FetchRequest>(responses[BURST].clone(), FETCH_V, BURST as i32 + 1);
            assert_eq!(fetched.error_code, 0);
            for part in &fetched.responses[0].partitions {
                assert_eq!(part.error_code, 0);
                let p = part.partition_index as usize;
                let values: Vec<String> = fetched_values(&part.records)
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(
                    values, sent[p],
                    "seed {seed} connection {c}: partition {p} holds its records out of \
                     request order (or the fetch did not see every earlier produce)"
                );
            }
        }
    });
}

#[test]
fn create_topics_then_produce_without_waiting() {
    let broker = Broker::start();
    const CREATE_V: i16 = 5;
    const PRODUCE_V: i16 = 9;
    const METADATA_V: i16 = 9;
    for_each_seed("create_topics_then_produce_without_waiting", |seed| {
        let mut rng = Rng::new(seed);
        let mut stream = connect_raw(broker.addr()).expect("connect");
        let topic = format!("order-create-{seed}");
        let create = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_num_partitions(PARTITIONS)
                    .with_replication_factor(1),
            ]);
        let mut frames = vec![encode_request(&create, CREATE_V, 1)];
        let produces = 4 + rng.below(8) as usize;
        for i in 0..produces {
            let p = (i % PARTITIONS as usize) as i32;
            frames.push(encode_request(
                &produce(&topic, p, batch(i as u64, 0, 1)),
                PRODUCE_V,
                i as i32 + 2,
            ));
        }
        let metadata = MetadataRequest::default()
            .with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(s(&topic)))),
            ]))
            .with_allow_auto_topic_creation(false);
        frames.push(encode_request(&metadata, METADATA_V, produces as i32 + 2));
        let responses = pipeline(&mut stream, &frames);
        let created = decode::<CreateTopicsRequest>(responses[0].clone(), CREATE_V, 1);
        assert_eq!(
            created.topics[0].error_code, 0,
            "seed {seed}: create failed"
        );
        for i in 0..produces {
            let r = decode::<ProduceRequest>(responses[i + 1].clone(), PRODUCE_V, i as i32 + 2);
            let part = &r.responses[0].partition_responses[0];
            assert_eq!(
                part.error_code, 0,
                "seed {seed}: a Produce sent right after CreateTopics did not see the topic"
            );
        }
        let meta = decode::<MetadataRequest>(
            responses[produces + 1].clone(),
            METADATA_V,
            produces as i32 + 2,
        );
        assert_eq!(meta.topics[0].error_code, 0);
        assert_eq!(meta.topics[0].partitions.len(), PARTITIONS as usize);
    });
}
