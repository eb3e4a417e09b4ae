//! `__consumer_offsets` stays bounded: with small segments (`--offsets-topic-segment-bytes`),
//! many commits by real clients (rdkafka) make the shard's log cleaner compact the partition
//! like any compacted topic: the partition's size stays a few segments, while every group's
//! latest committed offsets survive, a deleted group stays deleted, and both hold after a
//! graceful restart and after `kill -9`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, admin_client, create_topic, simple_consumer, watermarks};
use rdkafka::Offset;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};

const TOPIC: &str = "compaction-source";
const PARTITIONS: i32 = 4;
const OFFSETS_TOPIC: &str = "__consumer_offsets";
const SEGMENT_BYTES: u64 = 16 * 1024;
/// Commits of the busy group, each of every partition.
const BUSY_COMMITS: i64 = 600;
const WAIT: Duration = Duration::from_secs(30);

fn commit(consumer: &BaseConsumer, offsets: &[(i32, i64)]) {
    common::commit_offsets(consumer, TOPIC, offsets);
}

fn committed(bootstrap: &str, group: &str) -> BTreeMap<i32, Offset> {
    common::committed(bootstrap, group, TOPIC, PARTITIONS)
}

fn groups(bootstrap: &str) -> BTreeSet<String> {
    simple_consumer(bootstrap, "lister")
        .fetch_group_list(None, Duration::from_secs(10))
        .expect("group list")
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .collect()
}

/// `sluice_partition_size_bytes` of `__consumer_offsets` partition 0, from the metrics endpoint.
fn offsets_partition_bytes(broker: &Broker) -> u64 {
    let (status, _, text) = broker.scrape("/metrics");
    assert_eq!(status, 200);
    let series = format!("topic=\"{OFFSETS_TOPIC}\",partition=\"0\"}}");
    text.lines()
        .find(|l| l.starts_with("sluice_partition_size_bytes{") && l.contains(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no size of {OFFSETS_TOPIC}/0 in:\n{text}"))
}

/// Every group's offsets as written, and the deleted group gone.
fn check_offsets(bootstrap: &str, when: &str) {
    let early = committed(bootstrap, "early");
    assert_eq!(early[&0], Offset::Offset(7), "{when}: early p0");
    assert_eq!(early[&1], Offset::Offset(8), "{when}: early p1");
    assert_eq!(early[&2], Offset::Invalid, "{when}: early p2");
    let busy = committed(bootstrap, "busy");
    for p in 0..PARTITIONS {
        assert_eq!(
            busy[&p],
            Offset::Offset(BUSY_COMMITS - 1 + i64::from(p)),
            "{when}: busy p{p}"
        );
    }
    let deleted = committed(bootstrap, "deleted");
    assert!(
        deleted.values().all(|o| *o == Offset::Invalid),
        "{when}: the deleted group's offsets came back: {deleted:?}"
    );
    let listed = groups(bootstrap);
    assert!(
        listed.contains("early") && listed.contains("busy"),
        "{when}: {listed:?}"
    );
    assert!(!listed.contains("deleted"), "{when}: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_topic_is_compacted_and_keeps_the_latest_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "retention_check_interval_ms = 200\nlog_cleaner_backoff_ms = 100\n",
    )
    .expect("config");
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--config".into(),
            config.to_str().unwrap().into(),
            "--offsets-topic-partitions".into(),
            "1".into(),
            "--offsets-topic-segment-bytes".into(),
            SEGMENT_BYTES.to_string(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;

    // Written first, so their records sit in the oldest segment.
    commit(&simple_consumer(&bootstrap, "early"), &[(0, 7), (1, 8)]);
    commit(&simple_consumer(&bootstrap, "deleted"), &[(0, 5), (3, 6)]);
    let admin = admin_client(&bootstrap);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let deleted = admin
        .delete_groups(&["deleted"], &options)
        .await
        .expect("DeleteGroups");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let (_, early_end) = watermarks(&bootstrap, OFFSETS_TOPIC, 0);

    // Then many commits: many segments' worth of records for a handful of live keys.
    tokio::task::block_in_place(|| {
        let busy = simple_consumer(&bootstrap, "busy");
        for i in 0..BUSY_COMMITS {
            let offsets: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, i + i64::from(p))).collect();
            commit(&busy, &offsets);
        }
    });
    let (_, written) = watermarks(&bootstrap, OFFSETS_TOPIC, 0);
    assert!(written >= early_end + BUSY_COMMITS * i64::from(PARTITIONS));

    // The cleaner compacts: the partition shrinks to a few segments; offsets stay as they
    // were (a compacted log has gaps), so the log start does not move.
    let started = Instant::now();
    let bytes = loop {
        let bytes = offsets_partition_bytes(&broker);
        if bytes <= 3 * SEGMENT_BYTES {
            break bytes;
        }
        assert!(
            started.elapsed() < WAIT,
            "not compacted within {WAIT:?}: {bytes} bytes, {written} records written:\n{}",
            broker.last_run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{written} records written; {bytes} bytes left");
    assert!(
        broker.last_run_log().contains("log cleaner pass"),
        "the cleaning is logged"
    );
    tokio::task::block_in_place(|| check_offsets(&bootstrap, "after compaction"));

    // The replay at startup rebuilds the same offsets from the compacted log.
    assert!(broker.stop(), "graceful stop");
    broker.restart();
    tokio::task::block_in_place(|| check_offsets(&bootstrap, "after restart"));

    // Compaction while commits keep coming, then a crash.
    tokio::task::block_in_place(|| {
        let busy = simple_consumer(&bootstrap, "busy");
        for i in 0..BUSY_COMMITS {
            let offsets: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, i + i64::from(p))).collect();
            commit(&busy, &offsets);
        }
        broker.kill9();
    });
    broker.restart();
    tokio::task::block_in_place(|| check_offsets(&bootstrap, "after kill -9"));
}
