//! Raft entries are Kafka record batches: the mapping between the two.
//!
//! Every Raft entry of a replicated partition is exactly one batch in the partition log, so
//! the log is the Raft log and there is no second copy of the data:
//! - a **data entry** (`EntryNormal` with data) *is* a producer's batch: its `data` is the
//!   batch's bytes with the base offset and the partition leader epoch (= the Raft term)
//!   stamped by the leader when it proposed it. Every replica stores those bytes as they are.
//! - Raft's own entries (the empty entry a new leader appends, configuration changes) are
//!   written as one-record **control batches** (attributes bit 5, producer id -1), the way
//!   KRaft writes its own control records into `__cluster_metadata`: key version 0, type
//!   [`CONTROL_LEADER_CHANGE`] for the empty entry, [`CONTROL_VOTERS`] for a configuration
//!   change (value: the entry type byte, then the change's protobuf bytes). Every client skips
//!   control batches (transaction markers are control batches too), so consumers see only an
//!   offset gap. Each takes one offset, at the end of the entry before it: every replica
//!   derives the same batch from the same entry.
//!
//! The Raft index and the Kafka offset differ (a batch holds many records); the mapping is kept
//! by the replica's Raft store ([`super::store`]) and rebuilt from the log at open.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use raft::eraftpb::{Entry, EntryType};

use crate::storage::batch::{self, BatchHeader};

/// Control record type of the empty entry a Raft leader appends when elected (KRaft's
/// LeaderChange).
pub const CONTROL_LEADER_CHANGE: i16 = 2;
/// Control record type of a Raft configuration change (KRaft's KRaftVoters).
pub const CONTROL_VOTERS: i16 = 6;
/// Control record type of a DeleteRecords on a replicated partition: the value is the new log
/// start offset (i64, big-endian). A Sluice type, far from Kafka's (clients skip control
/// batches of types they do not know). Unlike Raft's own entries it is a data entry: the
/// leader proposes the batch itself, and every replica moves its log start when it applies
/// it.
pub const CONTROL_LOG_START: i16 = 1000;

/// A Raft entry that cannot be a batch of this partition, or a batch that cannot be an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("entry {index}: data is not a record batch: {reason}")]
    NotABatch { index: u64, reason: String },
    #[error("entry {index}: batch at offset {got}, the log continues at {expected}")]
    Misplaced { index: u64, expected: i64, got: i64 },
    #[error("control batch at offset {offset}: {reason}")]
    BadControl { offset: i64, reason: String },
}

/// The Kafka offset after `e`, which begins at `next` (the end of the entry before it).
pub fn entry_end(e: &Entry, next: i64) -> Result<i64, EntryError> {
    if is_data(e) {
        let h = BatchHeader::parse(&e.data).map_err(|err| EntryError::NotABatch {
            index: e.index,
            reason: err.to_string(),
        })?;
        if h.base_offset != next {
            return Err(EntryError::Misplaced {
                index: e.index,
                expected: next,
                got: h.base_offset,
            });
        }
        Ok(h.next_offset())
    } else {
        Ok(next + 1)
    }
}

fn is_data(e: &Entry) -> bool {
    e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty()
}

/// The batch that stores `e` at offset `next` (a data entry's own bytes, no copy, else a
/// control batch), and the offset after it.
pub fn to_batch(e: &Entry, next: i64) -> Result<(Bytes, i64), EntryError> {
    if is_data(e) {
        return Ok((e.data.clone(), entry_end(e, next)?));
    }
    let (kind, value) = match e.get_entry_type() {
        EntryType::EntryNormal => (CONTROL_LEADER_CHANGE, Bytes::new()),
        t => {
            let mut v = BytesMut::with_capacity(1 + e.data.len());
            v.extend_from_slice(&[t as u8]);
            v.extend_from_slice(&e.data);
            (CONTROL_VOTERS, v.freeze())
        }
    };
    control_batch(kind, value, e.term as i32, next).map(|b| (b, next + 1))
}

/// A one-record control batch of type `kind` at offset `at`, stamped with `epoch`.
fn control_batch(kind: i16, value: Bytes, epoch: i32, at: i64) -> Result<Bytes, EntryError> {
    let mut key = BytesMut::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let next = at;
    let record = Record {
        transactional: false,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: epoch,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: next,
        sequence: -1,
        timestamp: -1,
        key: Some(key.freeze()),
        value: Some(value),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|err| EntryError::BadControl {
        offset: next,
        reason: err.to_string(),
    })?;
    Ok(buf.freeze())
}

/// The batch a leader proposes to move the log start to `offset` (its base offset and epoch
/// are stamped when it is placed).
pub fn log_start_batch(offset: i64) -> Result<Bytes, EntryError> {
    control_batch(
        CONTROL_LOG_START,
        Bytes::copy_from_slice(&offset.to_be_bytes()),
        -1,
        0,
    )
}

/// The log start a committed data entry moves the log to, if it is a log start batch.
pub fn log_start_of(e: &Entry) -> Result<Option<i64>, EntryError> {
    if !is_data(e) {
        return Ok(None);
    }
    let h = BatchHeader::parse(&e.data).map_err(|err| EntryError::NotABatch {
        index: e.index,
        reason: err.to_string(),
    })?;
    if h.attributes & batch::ATTR_CONTROL == 0 || h.producer_id >= 0 {
        return Ok(None);
    }
    let (kind, value) = control_record(&e.data, &h)?;
    if kind != CONTROL_LOG_START {
        return Ok(None);
    }
    let v: [u8; 8] = value[..].try_into().map_err(|_| EntryError::BadControl {
        offset: h.base_offset,
        reason: "a log start value is 8 bytes".into(),
    })?;
    Ok(Some(i64::from_be_bytes(v)))
}

/// The type and value of a control batch's record.
fn control_record(b: &Bytes, h: &BatchHeader) -> Result<(i16, Bytes), EntryError> {
    let bad = |reason: String| EntryError::BadControl {
        offset: h.base_offset,
        reason,
    };
    let mut buf = b.clone();
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|err| bad(err.to_string()))?;
    let record = set.records.first().ok_or_else(|| bad("no record".into()))?;
    let key = record.key.as_ref().ok_or_else(|| bad("no key".into()))?;
    if key.len() < 4 {
        return Err(bad("short key".into()));
    }
    Ok((
        i16::from_be_bytes([key[2], key[3]]),
        record.value.clone().unwrap_or_default(),
    ))
}

/// The Raft entry at `index` that the stored batch `b` holds (the inverse of [`to_batch`]).
pub fn from_batch(index: u64, b: Bytes) -> Result<Entry, EntryError> {
    let h = BatchHeader::parse(&b).map_err(|err| EntryError::NotABatch {
        index,
        reason: err.to_string(),
    })?;
    let mut e = Entry {
        index,
        term: h.partition_leader_epoch.max(0) as u64,
        ..Default::default()
    };
    if h.attributes & batch::ATTR_CONTROL == 0 || h.producer_id >= 0 {
        e.data = b;
        return Ok(e);
    }
    let bad = |reason: String| EntryError::BadControl {
        offset: h.base_offset,
        reason,
    };
    let (kind, v) = control_record(&b, &h)?;
    match kind {
        CONTROL_LEADER_CHANGE => {}
        // A data entry: the leader proposed this batch.
        CONTROL_LOG_START => e.data = b,
        CONTROL_VOTERS => {
            let t = match v.first() {
                Some(&t) if t == EntryType::EntryConfChange as u8 => EntryType::EntryConfChange,
                Some(&t) if t == EntryType::EntryConfChangeV2 as u8 => EntryType::EntryConfChangeV2,
                _ => return Err(bad("unknown configuration entry type".into())),
            };
            e.set_entry_type(t);
            e.data = v.slice(1..);
        }
        other => return Err(bad(format!("control type {other} is not a Raft entry"))),
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::test_util::encode_batch;

    fn data_entry(index: u64, term: u64, base: i64, count: usize) -> Entry {
        let mut b = BytesMut::from(&encode_batch(base, count, 1_000, 10)[..]);
        batch::set_partition_leader_epoch(&mut b, term as i32);
        Entry {
            index,
            term,
            data: b.freeze(),
            ..Default::default()
        }
    }

    #[test]
    fn a_data_entry_is_its_batch() {
        let e = data_entry(3, 2, 10, 5);
        assert_eq!(entry_end(&e, 10).unwrap(), 15);
        let (b, end) = to_batch(&e, 10).unwrap();
        assert_eq!(end, 15);
        assert_eq!(b, e.data, "stored as it is");
        let back = from_batch(3, b).unwrap();
        assert_eq!(back, e);
        assert!(matches!(
            entry_end(&e, 11),
            Err(EntryError::Misplaced { expected: 11, .. })
        ));
    }

    #[test]
    fn raft_entries_become_control_batches_and_back() {
        let empty = Entry {
            index: 7,
            term: 4,
            ..Default::default()
        };
        let conf = Entry {
            index: 8,
            term: 4,
            entry_type: EntryType::EntryConfChangeV2,
            data: Bytes::from_static(b"\x0a\x02\x08\x03"),
            ..Default::default()
        };
        for (e, at) in [(empty, 20), (conf, 21)] {
            assert_eq!(entry_end(&e, at).unwrap(), at + 1);
            let (b, end) = to_batch(&e, at).unwrap();
            assert_eq!(end, at + 1);
            let (h, size) = batch::validate_batch(&b).unwrap();
            assert_eq!(size, b.len());
            assert_eq!(h.base_offset, at);
            assert_eq!(h.partition_leader_epoch, 4);
            assert_ne!(h.attributes & batch::ATTR_CONTROL, 0);
            assert_eq!(h.producer_id, -1);
            assert_eq!(from_batch(e.index, b).unwrap(), e);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let e = Entry {
            index: 1,
            term: 1,
            data: Bytes::from_static(b"not a batch"),
            ..Default::default()
        };
        assert!(entry_end(&e, 0).is_err());
        assert!(to_batch(&e, 0).is_err());
        assert!(from_batch(1, Bytes::from_static(b"short")).is_err());
    }
}
