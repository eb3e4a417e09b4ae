//! Keyed batches for the cleaner's tests.

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{Compression, Record, TimestampType};

use crate::storage::batch;

/// (key, value) pairs as one batch at `base`, timestamps `ts`; `producer`: (id, epoch,
/// first sequence, transactional).
pub fn batch(
    base: i64,
    kv: &[(Option<&str>, Option<&str>)],
    compression: Compression,
    ts: i64,
    producer: Option<(i64, i16, i32, bool)>,
) -> Vec<u8> {
    let (pid, epoch, seq, txn) = producer.unwrap_or((-1, -1, -1, false));
    let records: Vec<Record> = kv
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: txn,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: base + i as i64,
            // kafka-protocol splits batches where offset - sequence changes: a producer-less
            // batch's base sequence is set to -1 below.
            sequence: seq.max(0) + i as i32,
            timestamp: ts,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut b = batch::test_util::encode_records_with(&records, compression).to_vec();
    assert_eq!(
        crate::storage::batch::BatchHeader::parse(&b)
            .expect("header")
            .record_count as usize,
        kv.len(),
        "one batch"
    );
    if seq < 0 {
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = batch::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    b
}
