//! Recovery of a damaged tail: after `kill -9`, the last batch of the active segment is either
//! cut in half (a torn write) or has one byte flipped (a CRC mismatch). On restart the broker must
//! drop exactly that batch, keep every batch before it, and append from the dropped batch's base
//! offset.
//!
//! The broker runs without the shard journal (`--journal false`): with it, acknowledged batches
//! may be only in the journal at the kill, and the segment's own recovery is what is tested
//! here (a torn journal round is the simulation's, `storage::sim_test`).

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{
    BATCH_CRC_END, Broker, BrokerOptions, consume_partitions, producer_config, segment_batches,
};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const MESSAGES: i64 = 40;

enum Damage {
    /// Truncate the file in the middle of the last batch.
    CutInHalf,
    /// Flip every bit of one byte inside the CRC-covered part of the last batch.
    FlipByte,
}

fn value(index: i64) -> String {
    format!(
        "torn-tail message {index} {}",
        "z".repeat(index as usize % 30)
    )
}

async fn torn_tail(damage: Damage, topic: &str) {
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--journal".into(), "false".into()],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();

    // One message per request: each delivery is awaited before the next send, and linger 0
    // sends at once, so each produce request carries one batch of one record.
    let producer: FutureProducer = producer_config(&bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for index in 0..MESSAGES {
        let text = value(index);
        let record: FutureRecord<'_, (), str> =
            FutureRecord::to(topic).partition(0).payload(text.as_str());
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("message {index}: {e}"));
        assert_eq!(delivery.offset, index, "offset of message {index}");
    }
    drop(producer);
    broker.kill9();

    let segments = common::segment_files(&broker.partition_dir(topic, 0));
    let (_, active) = segments.last().expect("no segment file").clone();
    let batches = segment_batches(&active);
    assert_eq!(
        batches.len() as i64,
        MESSAGES,
        "one batch per acknowledged message in {}",
        active.display()
    );
    for (index, batch) in batches.iter().enumerate() {
        assert_eq!(
            batch.base_offset, index as i64,
            "base offset of batch {index}"
        );
        assert_eq!(batch.last_offset_delta, 0, "batch {index} holds one record");
    }
    let last = *batches.last().unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active)
        .expect("open active segment");
    match damage {
        Damage::CutInHalf => {
            let cut_at = last.position + last.size / 2;
            file.set_len(cut_at).expect("truncate segment");
        }
        Damage::FlipByte => {
            let at = last.position + BATCH_CRC_END + (last.size - BATCH_CRC_END) / 2;
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, at).expect("read byte");
            byte[0] ^= 0xff;
            file.write_all_at(&byte, at).expect("write byte");
        }
    }
    file.sync_all().expect("sync damaged segment");
    drop(file);

    broker.restart();
    let (low, high) = common::watermarks(&bootstrap, topic, 0);
    assert_eq!(
        (low, high),
        (0, last.base_offset),
        "watermarks after recovering a damaged last batch (base offset {})",
        last.base_offset
    );

    let ranges = BTreeMap::from([(0, (0, last.base_offset))]);
    let consumed = tokio::task::block_in_place(|| {
        consume_partitions(&bootstrap, topic, &ranges, Duration::from_secs(30))
    });
    let messages = &consumed[&0];
    assert_eq!(messages.len() as i64, MESSAGES - 1);
    for (index, message) in messages.iter().enumerate() {
        assert_eq!(message.offset(), index as i64);
        assert_eq!(
            message.payload(),
            Some(value(index as i64).as_bytes()),
            "payload at offset {index}"
        );
    }

    let producer: FutureProducer = producer_config(&bootstrap).create().expect("producer");
    let record: FutureRecord<'_, (), str> = FutureRecord::to(topic)
        .partition(0)
        .payload("after recovery");
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("append after recovery: {e}"));
    assert_eq!(
        delivery.offset, last.base_offset,
        "first append after recovery takes the dropped batch's offset"
    );

    let ranges = BTreeMap::from([(0, (last.base_offset - 1, last.base_offset + 1))]);
    let consumed = tokio::task::block_in_place(|| {
        consume_partitions(&bootstrap, topic, &ranges, Duration::from_secs(30))
    });
    let tail: Vec<Option<&[u8]>> = consumed[&0].iter().map(|m| m.payload()).collect();
    assert_eq!(
        tail,
        vec![
            Some(value(last.base_offset - 1).as_bytes()),
            Some(&b"after recovery"[..])
        ],
        "the log continues cleanly after the recovered end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_batch_cut_in_half_is_dropped() {
    torn_tail(Damage::CutInHalf, "torn-cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_batch_with_flipped_byte_is_dropped() {
    torn_tail(Damage::FlipByte, "torn-flip").await;
}
