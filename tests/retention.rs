//! Retention and the log start offset, with real clients (rdkafka crate):
//! size- and time-based retention delete whole sealed segments in the
//! background and move the log start (ListOffsets earliest, a consumer
//! reading from the beginning); DeleteRecords moves it inside a segment and
//! the move survives a restart. Topic configs set at creation and changed
//! later are obeyed by open partitions. Every wait is bounded.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, admin_client, assign_consumer, segment_files, watermarks};
use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Longest wait for a retention pass to show its effect.
const RETENTION_WAIT: Duration = Duration::from_secs(30);

/// A broker whose shards run their retention pass every 200 ms. The config
/// file lives in `dir` (kept by the caller).
fn broker_with_fast_retention(dir: &tempfile::TempDir) -> Broker {
    let path: PathBuf = dir.path().join("sluice.toml");
    std::fs::write(&path, "retention_check_interval_ms = 200\n").expect("write config");
    Broker::start_with(BrokerOptions {
        extra_args: vec!["--config".into(), path.display().to_string()],
        ..BrokerOptions::default()
    })
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)))
}

async fn create_with_configs(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin_client(bootstrap);
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(&[t], &admin_options()),
    )
    .await
    .expect("CreateTopics timed out")
    .expect("CreateTopics failed");
    r[0].clone()
        .unwrap_or_else(|(n, e)| panic!("create {n}: {e:?}"));
}

fn producer(bootstrap: &str) -> FutureProducer {
    common::producer_config(bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// Produce `n` messages of `size` bytes one at a time (one batch each);
/// returns the offsets.
async fn produce_each(p: &FutureProducer, topic: &str, n: usize, size: usize) -> Vec<i64> {
    let value = vec![b'x'; size];
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("k{i}");
        let record = FutureRecord::to(topic)
            .partition(0)
            .key(&key)
            .payload(&value);
        let delivery = p
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {i}: {e}"));
        offsets.push(delivery.offset);
    }
    offsets
}

/// Wait (bounded) until the low watermark of partition 0 reaches `min`.
fn wait_low_watermark(bootstrap: &str, topic: &str, min: i64) -> (i64, i64) {
    let started = Instant::now();
    loop {
        let (low, high) = watermarks(bootstrap, topic, 0);
        if low >= min {
            return (low, high);
        }
        assert!(
            started.elapsed() < RETENTION_WAIT,
            "low watermark of {topic} still {low} (want >= {min}) after {RETENTION_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first message a consumer reading from the beginning gets.
fn first_offset_from_beginning(bootstrap: &str, topic: &str) -> i64 {
    let consumer = assign_consumer(bootstrap, "retention-first");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            return m.expect("consume from beginning").offset();
        }
    }
    panic!("no message from the beginning of {topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bytes_deletes_old_segments_and_moves_log_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = broker_with_fast_retention(&dir);
    let bootstrap = broker.bootstrap();
    let topic = "ret-bytes";
    create_with_configs(
        &bootstrap,
        topic,
        1,
        &[("segment.bytes", "4096"), ("retention.bytes", "16384")],
    )
    .await;
    let p = producer(&bootstrap);
    // ~150 KiB of 500-byte messages: dozens of 4 KiB segments.
    let offsets = produce_each(&p, topic, 300, 500).await;
    assert_eq!(offsets.last(), Some(&299));

    let (low, high) = wait_low_watermark(&bootstrap, topic, 100);
    assert_eq!(high, 300);
    // What is left fits retention.bytes plus at most one segment.
    let started = Instant::now();
    let part_dir = broker.partition_dir(topic, 0);
    loop {
        let files = segment_files(&part_dir);
        let total: u64 = files
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .take(files.len().saturating_sub(1)) // the active one is preallocated
            .sum();
        if total <= 16384 + 4096 {
            assert_eq!(
                files[0].0,
                watermarks(&bootstrap, topic, 0).0,
                "first segment is the log start"
            );
            break;
        }
        assert!(
            started.elapsed() < RETENTION_WAIT,
            "sealed segments still hold {total} bytes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (low, _) = wait_low_watermark(&bootstrap, topic, low);
    assert_eq!(first_offset_from_beginning(&bootstrap, topic), low);

    // The log start survives a restart.
    drop(p);
    assert!(broker.stop(), "broker did not stop");
    broker.restart();
    let (low_after, high_after) = watermarks(&bootstrap, topic, 0);
    assert!(
        low_after >= low,
        "log start went back from {low} to {low_after}"
    );
    assert_eq!(high_after, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ms_applies_after_alter_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with_fast_retention(&dir);
    let bootstrap = broker.bootstrap();
    let topic = "ret-ms";
    create_with_configs(&bootstrap, topic, 1, &[("segment.bytes", "4096")]).await;
    let p = producer(&bootstrap);
    produce_each(&p, topic, 100, 500).await;
    // Default retention (7 days): nothing goes.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(watermarks(&bootstrap, topic, 0).0, 0);

    // retention.ms=1000 on the open partition, through the controller.
    let admin = admin_client(&bootstrap);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("segment.bytes", "4096")
        .set("retention.ms", "1000");
    let r = admin
        .alter_configs(&[alter], &admin_options())
        .await
        .expect("AlterConfigs");
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let (low, high) = wait_low_watermark(&bootstrap, topic, 80);
    assert_eq!(high, 100);
    // Only the active segment remains.
    let started = Instant::now();
    while segment_files(&broker.partition_dir(topic, 0)).len() > 1 {
        assert!(started.elapsed() < RETENTION_WAIT, "sealed segments remain");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(first_offset_from_beginning(&bootstrap, topic), low);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_log_start_inside_a_segment_and_survives_restart() {
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = "del-records";
    create_with_configs(&bootstrap, topic, 1, &[("segment.bytes", "4096")]).await;
    let p = producer(&bootstrap);
    produce_each(&p, topic, 60, 500).await;
    let admin = admin_client(&bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(37))
        .unwrap();
    let r = admin
        .delete_records(&tpl, &admin_options())
        .await
        .expect("DeleteRecords");
    let e = r.elements_for_topic(topic);
    assert_eq!(e[0].offset(), Offset::Offset(37), "{:?}", e[0].error());
    assert_eq!(watermarks(&bootstrap, topic, 0), (37, 60));
    assert_eq!(first_offset_from_beginning(&bootstrap, topic), 37);
    // Segments wholly below 37 are gone.
    let files = segment_files(&broker.partition_dir(topic, 0));
    assert!(
        files[0].0 <= 37 && files[0].0 > 0,
        "first segment {}",
        files[0].0
    );

    drop(p);
    assert!(broker.stop(), "broker did not stop");
    broker.restart();
    assert_eq!(watermarks(&bootstrap, topic, 0), (37, 60));
    assert_eq!(first_offset_from_beginning(&bootstrap, topic), 37);

    // Above the high watermark: OFFSET_OUT_OF_RANGE.
    let admin = admin_client(&bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(1000))
        .unwrap();
    let r = admin
        .delete_records(&tpl, &admin_options())
        .await
        .expect("DeleteRecords");
    assert!(r.elements_for_topic(topic)[0].error().is_err());
    // -1: up to the high watermark.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End).unwrap();
    let r = admin
        .delete_records(&tpl, &admin_options())
        .await
        .expect("DeleteRecords");
    assert_eq!(r.elements_for_topic(topic)[0].offset(), Offset::Offset(60));
    assert_eq!(watermarks(&bootstrap, topic, 0), (60, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_and_max_message_bytes_are_obeyed() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = "lat";
    create_with_configs(
        &bootstrap,
        topic,
        1,
        &[
            ("message.timestamp.type", "LogAppendTime"),
            ("max.message.bytes", "2000"),
        ],
    )
    .await;
    let p = producer(&bootstrap);
    let before = chrono_now_ms();
    let record = FutureRecord::to(topic)
        .partition(0)
        .key("k")
        .payload("old")
        .timestamp(1_000_000);
    p.send(record, Duration::from_secs(10))
        .await
        .expect("produce");
    let big = vec![b'y'; 5000];
    let record = FutureRecord::to(topic).partition(0).key("k").payload(&big);
    let err = p
        .send(record, Duration::from_secs(10))
        .await
        .expect_err("a batch above max.message.bytes is refused");
    assert!(
        format!("{:?}", err.0).contains("MessageSizeTooLarge"),
        "{:?}",
        err.0
    );

    let consumer = assign_consumer(&bootstrap, "lat");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let ts = loop {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            break m.expect("consume").timestamp();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing consumed"
        );
    };
    match ts {
        Timestamp::LogAppendTime(t) => assert!(t >= before - 1000, "append time {t} < {before}"),
        other => panic!("expected LogAppendTime, got {other:?}"),
    }

    // Raising max.message.bytes on the open partition lets the big batch in.
    let admin = admin_client(&bootstrap);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("message.timestamp.type", "LogAppendTime")
        .set("max.message.bytes", "100000");
    let r = admin
        .alter_configs(&[alter], &admin_options())
        .await
        .unwrap();
    assert!(r[0].is_ok());
    let record = FutureRecord::to(topic).partition(0).key("k").payload(&big);
    p.send(record, Duration::from_secs(10))
        .await
        .expect("big batch accepted after the change");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
