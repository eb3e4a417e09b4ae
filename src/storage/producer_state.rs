//! Idempotent-producer state of one partition: for every producer id seen,
//! its epoch and the metadata of its last five batches, as Kafka keeps them
//! (`ProducerStateManager`). Used by `PartitionLog::append` to answer a
//! retried batch with its original offsets, and to refuse sequence gaps and
//! fenced (older) epochs.
//!
//! # When it changes
//! [`ProducerStateTable::check`] and [`ProducerStateTable::update`] run in
//! the synchronous part of `append`, with offset assignment: the table
//! describes every batch *assigned* an offset, written or still queued, so a
//! retry of a queued batch is a duplicate too. If the log fails, it stops
//! accepting anything, so the table's view of unwritten batches is never
//! used again; reopening rebuilds it from what is on disk.
//!
//! # Snapshots
//! `<offset, 20 digits>.snapshot` in the partition directory holds the table
//! for every batch below `offset`. One is taken when a segment rolls (the
//! table at that instant covers exactly the batches below the new segment's
//! base) and written by the flusher once the old segment is sealed, and one
//! at close for the log end. At open, the newest valid snapshot at or below
//! the log end is loaded and the batch headers from its offset to the end
//! are replayed (never the records). Binary layout, big-endian:
//!
//! | bytes | field |
//! |------:|-------|
//! | 4 | magic `SLPS` |
//! | 2 | format version (1) |
//! | 8 | offset: the table covers batches below it |
//! | 4 | producer count N |
//! | N × entry | producer id i64, epoch i16, last timestamp i64, batch count u8 (1..=5), then per batch: first seq i32, last seq i32, base offset i64, last offset delta i32 |
//! | 4 | CRC32C of everything before |

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::batch::BatchHeader;
use super::error::StorageError;
use crate::constants::{PRODUCER_BATCHES_KEPT, PRODUCER_ID_EXPIRATION_MS};

/// Suffix of snapshot files (`<offset>.snapshot`).
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 4] = b"SLPS";
const SNAPSHOT_VERSION: u16 = 1;
const SNAPSHOT_HEADER_LEN: usize = 4 + 2 + 8 + 4;
const ENTRY_HEADER_LEN: usize = 8 + 2 + 8 + 1;
const BATCH_META_LEN: usize = 4 + 4 + 8 + 4;

/// One batch of a producer, as remembered for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset_delta: i32,
}

impl BatchMeta {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// One producer's state in one partition.
#[derive(Debug, Clone)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Max timestamp of the producer's last batch (for expiry and
    /// DescribeProducers).
    pub last_timestamp: i64,
    /// Ring of the last `len` batches, oldest at `start`. A fixed array: no
    /// allocation per batch.
    batches: [BatchMeta; PRODUCER_BATCHES_KEPT],
    start: u8,
    len: u8,
}

/// Equal if the logical content is (not the ring's layout).
impl PartialEq for ProducerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.last_timestamp == other.last_timestamp
            && self.batches().eq(other.batches())
    }
}

impl Eq for ProducerEntry {}

impl ProducerEntry {
    fn new(epoch: i16) -> Self {
        ProducerEntry {
            epoch,
            last_timestamp: -1,
            batches: [BatchMeta::default(); PRODUCER_BATCHES_KEPT],
            start: 0,
            len: 0,
        }
    }

    /// The remembered batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &BatchMeta> {
        (0..self.len as usize)
            .map(move |i| &self.batches[(self.start as usize + i) % PRODUCER_BATCHES_KEPT])
    }

    pub fn last_batch(&self) -> Option<&BatchMeta> {
        (self.len > 0).then(|| {
            &self.batches[(self.start as usize + self.len as usize - 1) % PRODUCER_BATCHES_KEPT]
        })
    }

    /// Last sequence number written, -1 if none.
    pub fn last_seq(&self) -> i32 {
        self.last_batch().map_or(-1, |b| b.last_seq)
    }

    fn push(&mut self, b: BatchMeta) {
        if self.len as usize == PRODUCER_BATCHES_KEPT {
            self.start = ((self.start as usize + 1) % PRODUCER_BATCHES_KEPT) as u8;
            self.len -= 1;
        }
        let at = (self.start as usize + self.len as usize) % PRODUCER_BATCHES_KEPT;
        self.batches[at] = b;
        self.len += 1;
    }

    fn clear_batches(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

/// What `append` must do with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it (then call [`ProducerStateTable::update`]).
    Append,
    /// A retry of a batch already assigned offsets: answer with these, do
    /// not append.
    Duplicate(BatchMeta),
}

/// Sequence of the last record of a batch: `base + delta`, wrapping from
/// `i32::MAX` to 0 as Kafka's `DefaultRecordBatch.incrementSequence`.
pub fn last_sequence(base_seq: i32, last_offset_delta: i32) -> i32 {
    assert!(base_seq >= 0 && last_offset_delta >= 0);
    if base_seq > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - base_seq) - 1
    } else {
        base_seq + last_offset_delta
    }
}

/// The sequence after `last` (0 after `i32::MAX`, 0 after none = -1).
fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX { 0 } else { last + 1 }
}

/// Does `next` follow `last` (with wrap at `i32::MAX`)?
fn in_sequence(last: i32, next: i32) -> bool {
    next == next_sequence(last)
}

/// All producers of one partition. Owned by the partition's `PartitionLog`
/// (one shard; no locking).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(k, v)| (*k, v))
    }

    /// Kafka's checks for a client batch with `producer_id >= 0`, in
    /// Kafka's order: a duplicate of one of the producer's remembered
    /// batches (same epoch, same first and last sequence) is answered with
    /// its offsets; an older epoch is fenced; a newer epoch must start at
    /// sequence 0; the same epoch must continue the sequence. A producer
    /// this partition has never seen may start at any sequence (Kafka since
    /// KIP-360: its state may have expired). One HashMap lookup, no
    /// allocation.
    pub fn check(&self, h: &BatchHeader) -> Result<Verdict, StorageError> {
        assert!(h.producer_id >= 0);
        if h.producer_epoch < 0 || h.base_sequence < 0 {
            return Err(StorageError::InvalidRecord(format!(
                "idempotent batch of producer {} has epoch {} and base sequence {}",
                h.producer_id, h.producer_epoch, h.base_sequence
            )));
        }
        let Some(e) = self.producers.get(&h.producer_id) else {
            return Ok(Verdict::Append);
        };
        let last_seq = last_sequence(h.base_sequence, h.last_offset_delta);
        if h.producer_epoch == e.epoch
            && let Some(dup) = e
                .batches()
                .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate(*dup));
        }
        if h.producer_epoch < e.epoch {
            return Err(StorageError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: e.epoch,
            });
        }
        if h.producer_epoch > e.epoch {
            if h.base_sequence != 0 {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    sequence: h.base_sequence,
                    expected: 0,
                });
            }
            return Ok(Verdict::Append);
        }
        if !in_sequence(e.last_seq(), h.base_sequence) {
            return Err(StorageError::OutOfOrderSequence {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                sequence: h.base_sequence,
                expected: next_sequence(e.last_seq()),
            });
        }
        Ok(Verdict::Append)
    }

    /// Record a batch that was assigned offsets (`h.base_offset` is its
    /// assigned base), or replay one read from the log. A new epoch forgets
    /// the older epoch's batches. No checks: replay accepts what the log
    /// holds.
    pub fn update(&mut self, h: &BatchHeader) {
        assert!(h.producer_id >= 0);
        let meta = BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence.max(0), h.last_offset_delta),
            base_offset: h.base_offset,
            last_offset_delta: h.last_offset_delta,
        };
        let e = match self.producers.entry(h.producer_id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(ProducerEntry::new(h.producer_epoch)),
        };
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.clear_batches();
        }
        e.push(meta);
        e.last_timestamp = h.max_timestamp;
    }

    /// Forget producers whose last batch is older than
    /// `PRODUCER_ID_EXPIRATION_MS` before `now_ms` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded by the
    /// producers active in the last day.
    pub fn remove_expired(&mut self, now_ms: i64) {
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < PRODUCER_ID_EXPIRATION_MS);
    }

    /// The snapshot file's bytes for a table covering batches below `offset`.
    pub fn encode_snapshot(&self, offset: i64) -> Vec<u8> {
        let body: usize = self
            .producers
            .values()
            .map(|e| ENTRY_HEADER_LEN + e.len as usize * BATCH_META_LEN)
            .sum();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + body + 4);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        // Sorted, so equal tables give equal bytes.
        let mut ids: Vec<i64> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.push(e.len);
            for b in e.batches() {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset_delta.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parse a snapshot file: (offset, table). Any damage (truncation, CRC,
    /// bad magic or counts, batches not in offset order) is an error.
    pub fn decode_snapshot(buf: &[u8]) -> Result<(i64, ProducerStateTable), StorageError> {
        let bad = |why: &str| StorageError::CorruptBatch(format!("producer snapshot: {why}"));
        if buf.len() < SNAPSHOT_HEADER_LEN + 4 {
            return Err(bad("truncated header"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("CRC mismatch"));
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(4)? != SNAPSHOT_MAGIC {
            return Err(bad("bad magic"));
        }
        if r.u16()? != SNAPSHOT_VERSION {
            return Err(bad("unknown version"));
        }
        let offset = r.i64()?;
        let count = r.u32()? as usize;
        if offset < 0 || count > body.len() / ENTRY_HEADER_LEN {
            return Err(bad("bad offset or producer count"));
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = r.i64()?;
            let mut e = ProducerEntry::new(r.i16()?);
            e.last_timestamp = r.i64()?;
            let n = r.take(1)?[0] as usize;
            if id < 0 || n == 0 || n > PRODUCER_BATCHES_KEPT {
                return Err(bad("bad producer entry"));
            }
            for _ in 0..n {
                let b = BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset_delta: r.i32()?,
                };
                if b.last_offset_delta < 0
                    || b.last_offset() >= offset
                    || e.last_batch()
                        .is_some_and(|p| p.last_offset() >= b.base_offset)
                {
                    return Err(bad("batch offsets out of order"));
                }
                e.push(b);
            }
            if producers.insert(id, e).is_some() {
                return Err(bad("producer listed twice"));
            }
        }
        if r.pos != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok((offset, ProducerStateTable { producers }))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.buf.len() - self.pos < n {
            return Err(StorageError::CorruptBatch(
                "producer snapshot: truncated".into(),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, StorageError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i16(&mut self) -> Result<i16, StorageError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i32(&mut self) -> Result<i32, StorageError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Result<i64, StorageError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// `<offset, 20 digits>.snapshot`.
pub fn snapshot_file_name(offset: i64) -> String {
    assert!(offset >= 0);
    format!("{offset:020}.{SNAPSHOT_SUFFIX}")
}

/// Inverse of [`snapshot_file_name`].
pub fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".snapshot")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 49,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_000 + base_offset,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    /// check + update, like append does; returns the verdict.
    fn append(t: &mut ProducerStateTable, h: BatchHeader) -> Result<Verdict, StorageError> {
        let v = t.check(&h)?;
        if v == Verdict::Append {
            t.update(&h);
        }
        Ok(v)
    }

    #[test]
    fn duplicates_of_the_last_five_batches() {
        let mut t = ProducerStateTable::default();
        for i in 0..7 {
            assert_eq!(
                append(&mut t, header(7, 0, i * 2, 2, 100 + i64::from(i) * 2)).unwrap(),
                Verdict::Append
            );
        }
        // Batches 2..=6 are remembered, 0 and 1 are not.
        for i in 2..7 {
            let v = append(&mut t, header(7, 0, i * 2, 2, -1)).unwrap();
            assert_eq!(
                v,
                Verdict::Duplicate(BatchMeta {
                    first_seq: i * 2,
                    last_seq: i * 2 + 1,
                    base_offset: 100 + i64::from(i) * 2,
                    last_offset_delta: 1,
                })
            );
        }
        assert!(matches!(
            append(&mut t, header(7, 0, 0, 2, -1)),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
        // Same first sequence, different length: not a duplicate.
        assert!(matches!(
            append(&mut t, header(7, 0, 12, 1, -1)),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
        assert_eq!(t.get(7).unwrap().last_seq(), 13);
    }

    #[test]
    fn gaps_fencing_and_new_epochs() {
        let mut t = ProducerStateTable::default();
        // An unknown producer may start anywhere (Kafka since KIP-360).
        append(&mut t, header(1, 3, 10, 1, 0)).unwrap();
        let gap = append(&mut t, header(1, 3, 12, 1, 1)).unwrap_err();
        assert_eq!(gap.kafka_error_code(), 45);
        append(&mut t, header(1, 3, 11, 1, 1)).unwrap();
        let old = append(&mut t, header(1, 2, 12, 1, 2)).unwrap_err();
        assert_eq!(old.kafka_error_code(), 47);
        // A newer epoch must start at 0.
        let e = append(&mut t, header(1, 4, 12, 1, 2)).unwrap_err();
        assert_eq!(e.kafka_error_code(), 45);
        append(&mut t, header(1, 4, 0, 3, 2)).unwrap();
        assert_eq!(t.get(1).unwrap().epoch, 4);
        assert_eq!(t.get(1).unwrap().batches().count(), 1);
        // The old epoch is now fenced, even for what was its duplicate.
        assert_eq!(
            append(&mut t, header(1, 3, 11, 1, 9))
                .unwrap_err()
                .kafka_error_code(),
            47
        );
        // Other producers are independent.
        append(&mut t, header(2, 0, 0, 1, 5)).unwrap();
        assert_eq!(t.len(), 2);
        // Bad idempotent fields.
        assert_eq!(
            append(&mut t, header(3, 0, -1, 1, 6))
                .unwrap_err()
                .kafka_error_code(),
            87
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        let mut t = ProducerStateTable::default();
        append(&mut t, header(9, 0, i32::MAX - 2, 2, 0)).unwrap();
        // Covers MAX-2..=MAX-1; the next starts at MAX and wraps to 1.
        append(&mut t, header(9, 0, i32::MAX, 2, 2)).unwrap();
        assert_eq!(t.get(9).unwrap().last_seq(), 0);
        assert!(matches!(
            append(&mut t, header(9, 0, i32::MAX, 2, -1)).unwrap(),
            Verdict::Duplicate(BatchMeta { base_offset: 2, .. })
        ));
        append(&mut t, header(9, 0, 1, 1, 4)).unwrap();
        // And a batch ending exactly at MAX is followed by 0.
        let mut t = ProducerStateTable::default();
        append(&mut t, header(9, 0, i32::MAX - 1, 2, 0)).unwrap();
        append(&mut t, header(9, 0, 0, 1, 2)).unwrap();
        assert!(append(&mut t, header(9, 0, 2, 1, 3)).is_err());
    }

    #[test]
    fn snapshot_round_trip_truncation_and_golden_bytes() {
        let mut t = ProducerStateTable::default();
        for i in 0..8 {
            t.update(&header(5, 1, i, 1, i64::from(i)));
        }
        t.update(&header(6, 0, 0, 3, 8));
        let bytes = t.encode_snapshot(11);
        let (offset, back) = ProducerStateTable::decode_snapshot(&bytes).unwrap();
        assert_eq!(offset, 11);
        assert_eq!(back, t);
        for n in 0..bytes.len() {
            assert!(ProducerStateTable::decode_snapshot(&bytes[..n]).is_err());
        }
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x10;
            assert!(ProducerStateTable::decode_snapshot(&m).is_err(), "flip {i}");
        }
        // A batch at or past the snapshot offset is refused.
        assert!(ProducerStateTable::decode_snapshot(&t.encode_snapshot(10)).is_err());

        let mut one = ProducerStateTable::default();
        one.update(&header(1, 2, 3, 1, 4));
        let golden: Vec<u8> = [
            &b"SLPS"[..],
            &[0, 1],
            &5i64.to_be_bytes(),
            &1u32.to_be_bytes(),
            &1i64.to_be_bytes(),
            &2i16.to_be_bytes(),
            &1004i64.to_be_bytes(),
            &[1],
            &3i32.to_be_bytes(),
            &3i32.to_be_bytes(),
            &4i64.to_be_bytes(),
            &0i32.to_be_bytes(),
        ]
        .concat();
        let mut expected = golden.clone();
        expected.extend_from_slice(&crc32c::crc32c(&golden).to_be_bytes());
        assert_eq!(one.encode_snapshot(5), expected);
    }

    #[test]
    fn expiry() {
        let mut t = ProducerStateTable::default();
        t.update(&header(1, 0, 0, 1, 0)); // max timestamp 1000
        t.remove_expired(1000 + PRODUCER_ID_EXPIRATION_MS - 1);
        assert_eq!(t.len(), 1);
        t.remove_expired(1000 + PRODUCER_ID_EXPIRATION_MS);
        assert!(t.is_empty());
    }

    #[test]
    fn file_names() {
        assert_eq!(snapshot_file_name(42), "00000000000000000042.snapshot");
        assert_eq!(
            parse_snapshot_file_name("00000000000000000042.snapshot"),
            Some(42)
        );
        assert_eq!(parse_snapshot_file_name("00000000000000000042.log"), None);
    }
}
