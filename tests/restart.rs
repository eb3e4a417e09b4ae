//! A graceful restart (SIGTERM) keeps every message and offsets continue where they stopped.
//! Small segments make the data span several segment files, so recovery has to load a segment
//! set, not one file.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Broker, BrokerOptions, consume_all, producer_config, segment_files};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "restart";
const PARTITIONS: i32 = 2;
const SEGMENT_BYTES: u64 = 1024 * 1024;

/// (partition, offset) -> payload of every acknowledged message.
type Acked = BTreeMap<(i32, i64), Vec<u8>>;

fn payload(round: u32, index: u32) -> Vec<u8> {
    let mut bytes = format!("round={round} index={index} ").into_bytes();
    // ~300 bytes per message, varied so batches differ in size.
    bytes.extend((0..(200 + index % 200)).map(|i| b'a' + ((i + index) % 26) as u8));
    bytes
}

/// Produces `count` messages round-robin over the partitions, awaiting all acknowledgements.
async fn produce(bootstrap: &str, round: u32, count: u32) -> Acked {
    // 64 KiB batches: several batches per 1 MiB segment.
    let producer: FutureProducer = producer_config(bootstrap)
        .set("batch.size", "65536")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(count as usize);
    for index in 0..count {
        let value = payload(round, index);
        let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(TOPIC)
            .partition((index % PARTITIONS as u32) as i32)
            .payload(&value);
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("enqueue {round}/{index}: {e}"));
        pending.push((value, delivery));
    }
    let mut acked = Acked::new();
    for (index, (value, delivery)) in pending.into_iter().enumerate() {
        let delivery = tokio::time::timeout(Duration::from_secs(60), delivery)
            .await
            .unwrap_or_else(|_| panic!("delivery {round}/{index} not reported within 60 s"))
            .expect("delivery cancelled")
            .unwrap_or_else(|(e, _)| panic!("message {round}/{index} not acknowledged: {e}"));
        let previous = acked.insert((delivery.partition, delivery.offset), value);
        assert!(
            previous.is_none(),
            "two messages acknowledged at partition {} offset {}",
            delivery.partition,
            delivery.offset
        );
    }
    acked
}

fn read_back(bootstrap: &str) -> Acked {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = tokio::task::block_in_place(|| {
        consume_all(bootstrap, TOPIC, &partitions, Duration::from_secs(60))
    });
    consumed
        .into_values()
        .flatten()
        .map(|m| {
            (
                (m.partition(), m.offset()),
                m.payload().unwrap_or_default().to_vec(),
            )
        })
        .collect()
}

/// Checks that `acked` is exactly the content of the log: same offsets, same payloads.
fn assert_log_equals(acked: &Acked, stored: &Acked, when: &str) {
    assert_eq!(
        stored.len(),
        acked.len(),
        "{when}: number of messages in the log"
    );
    for (place, value) in acked {
        let found = stored
            .get(place)
            .unwrap_or_else(|| panic!("{when}: message at {place:?} missing"));
        assert!(
            found == value,
            "{when}: message at {place:?} differs: {:?} vs acknowledged {:?}",
            String::from_utf8_lossy(&found[..found.len().min(40)]),
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
    }
}

fn next_offsets(acked: &Acked) -> BTreeMap<i32, i64> {
    let mut next: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for &(partition, offset) in acked.keys() {
        let entry = next.get_mut(&partition).expect("known partition");
        *entry = (*entry).max(offset + 1);
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_messages_and_offsets_continue() {
    let mut broker = Broker::start_with(BrokerOptions {
        segment_bytes: Some(SEGMENT_BYTES),
        num_partitions: Some(PARTITIONS as u32),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    assert_eq!(
        common::partition_count(&bootstrap, TOPIC),
        PARTITIONS as usize,
        "auto-created topic must get --num-partitions partitions"
    );

    let mut acked = produce(&bootstrap, 1, 20_000).await;
    let next = next_offsets(&acked);
    assert_eq!(next, BTreeMap::from([(0, 10_000), (1, 10_000)]));
    let before = read_back(&bootstrap);
    assert_log_equals(&acked, &before, "before restart");
    let segments = segment_files(&broker.partition_dir(TOPIC, 0));
    assert!(
        segments.len() >= 2,
        "~3 MB per partition with --segment-bytes {SEGMENT_BYTES} should roll segments, found {segments:?}"
    );

    assert!(broker.stop(), "broker did not exit within 10 s of SIGTERM");
    broker.restart();
    let after = read_back(&bootstrap);
    assert_log_equals(&acked, &after, "after first restart");
    for partition in 0..PARTITIONS {
        let (low, high) = common::watermarks(&bootstrap, TOPIC, partition);
        assert_eq!(
            (low, high),
            (0, next[&partition]),
            "watermarks of partition {partition} after restart"
        );
    }

    // New appends continue exactly at the old end of each partition.
    let more = produce(&bootstrap, 2, 2_000).await;
    for partition in 0..PARTITIONS {
        let offsets: Vec<i64> = more
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|&(_, o)| o)
            .collect();
        let expected: Vec<i64> = (next[&partition]..next[&partition] + 1_000).collect();
        assert_eq!(
            offsets, expected,
            "offsets of new appends to partition {partition} after restart"
        );
    }
    acked.extend(more);

    // A second restart, after appends into the recovered active segment.
    assert!(broker.stop(), "broker did not exit within 10 s of SIGTERM");
    broker.restart();
    let after_second = read_back(&bootstrap);
    assert_log_equals(&acked, &after_second, "after second restart");
}
