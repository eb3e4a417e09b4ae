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
//! | N × entry (v2) | the same, then the first offset of the producer's open transaction i64 (-1: none); the batch count may be 0 |
//! | N × entry (v3) | the same, then the coordinator epoch of the producer's last marker i32 (-1: none) |
//! | v2: 4 + M × 24 | aborted transactions M, each producer id i64, first offset i64, last offset (its ABORT marker) i64 |
//! | 4 | CRC32C of everything before |
//!
//! Version 3 (coordinator epochs) is written; versions 1 and 2 are read.
//!
//! # Transactions
//! A transactional batch of a producer with no open transaction here opens
//! one at its base offset; the producer's COMMIT or ABORT marker (a control
//! batch the transaction coordinator appends) closes it. The table keeps the
//! open transactions by first offset (the last stable offset is the first
//! of them, or the high watermark) and the aborted ones with their span
//! (Kafka's `.txnindex`), which Fetch with read_committed reports. Markers
//! are read from their control record's key ([`super::batch::control_type`]),
//! never any other record.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use super::batch::BatchHeader;
use super::error::StorageError;
use crate::constants::{PRODUCER_BATCHES_KEPT, PRODUCER_ID_EXPIRATION_MS};

/// Suffix of snapshot files (`<offset>.snapshot`).
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 4] = b"SLPS";
const SNAPSHOT_VERSION: u16 = 3;
/// Snapshots written before transactions: no open transaction, no aborted list.
const SNAPSHOT_VERSION_1: u16 = 1;
/// Snapshots written before coordinator epochs: none known (-1).
const SNAPSHOT_VERSION_2: u16 = 2;
const ABORTED_LEN: usize = 8 + 8 + 8;
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
    /// First offset of the producer's open transaction in this partition, -1 if none.
    pub txn_first_offset: i64,
    /// The highest coordinator epoch of the producer's markers here (-1: none): a marker
    /// from an older coordinator is refused (Kafka's TRANSACTION_COORDINATOR_FENCED).
    pub coordinator_epoch: i32,
}

/// Equal if the logical content is (not the ring's layout).
impl PartialEq for ProducerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.last_timestamp == other.last_timestamp
            && self.txn_first_offset == other.txn_first_offset
            && self.coordinator_epoch == other.coordinator_epoch
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
            txn_first_offset: -1,
            coordinator_epoch: -1,
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
    /// Transactions not yet stable, by first offset: (producer id, offset of the marker that
    /// closed it, None while open). A closed one stays until the high watermark passes its
    /// marker ([`ProducerStateTable::last_stable_offset`]).
    unstable: BTreeMap<i64, (i64, Option<i64>)>,
    /// Aborted transactions, in the order of their ABORT markers (so by last offset).
    aborted: Vec<AbortedTxn>,
}

/// An aborted transaction of one partition: its records from `first_offset` to its ABORT
/// marker at `last_offset` that carry its producer id are not to be read by read_committed
/// consumers (Kafka's `AbortedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// A transaction marker: the control record of a COMMIT or ABORT batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
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
        if e.last_batch().is_none() {
            // The same epoch with no batch known here: only a transaction marker (or a batch
            // the broker wrote for the producer) of this epoch was seen, e.g. by a replica
            // whose log began after the producer's batches. The next sequence is unknown and,
            // as Kafka does, any is accepted.
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

    /// The check for a batch the broker writes for a producer (a transaction marker, a
    /// transactional offset commit): no sequence, only the epoch, which must not be older
    /// than the producer's here.
    pub fn check_epoch(&self, h: &BatchHeader) -> Result<(), StorageError> {
        match self.producers.get(&h.producer_id) {
            Some(e) if h.producer_epoch < e.epoch => Err(StorageError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: e.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// The check for a transaction marker: [`ProducerStateTable::check_epoch`], and its
    /// coordinator epoch not older than that of the producer's markers here (a coordinator
    /// that lost its partition to a newer one may still be sending markers: one arriving
    /// after the newer coordinator's would close the producer's next transaction).
    pub fn check_marker(
        &self,
        h: &BatchHeader,
        coordinator_epoch: i32,
    ) -> Result<(), StorageError> {
        self.check_epoch(h)?;
        match self.producers.get(&h.producer_id) {
            Some(e) if coordinator_epoch < e.coordinator_epoch => {
                Err(StorageError::CoordinatorFenced {
                    producer_id: h.producer_id,
                    coordinator_epoch,
                    current: e.coordinator_epoch,
                })
            }
            _ => Ok(()),
        }
    }

    /// Follow a batch read from the log (recovery, snapshots' replay): a marker closes its
    /// producer's transaction, any other producer batch is [`ProducerStateTable::update`].
    /// `batch` is the whole batch; only a control batch's one record is read.
    pub fn replay(&mut self, h: &BatchHeader, batch: &[u8]) {
        if h.producer_id < 0 {
            return;
        }
        if h.attributes & super::batch::ATTR_CONTROL != 0 {
            if let Some((marker, coordinator_epoch)) = super::batch::marker_of(batch) {
                self.apply_marker(h, marker);
                if let Some(e) = self.producers.get_mut(&h.producer_id) {
                    e.coordinator_epoch = e.coordinator_epoch.max(coordinator_epoch);
                }
            }
            return;
        }
        self.update(h);
    }

    /// A COMMIT or ABORT marker of `h.producer_id` at `h.base_offset`: its open transaction
    /// here (if any) closes; an aborted one joins the aborted list. A newer epoch replaces the
    /// producer's (the coordinator fenced the old one) and its sequence starts again at 0.
    pub fn apply_marker(&mut self, h: &BatchHeader, marker: Marker) {
        let e = match self.producers.entry(h.producer_id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(ProducerEntry::new(h.producer_epoch)),
        };
        if h.producer_epoch > e.epoch {
            e.epoch = h.producer_epoch;
            e.clear_batches();
        }
        e.last_timestamp = e.last_timestamp.max(h.max_timestamp);
        let first = std::mem::replace(&mut e.txn_first_offset, -1);
        if first < 0 {
            return;
        }
        if let Some(t) = self.unstable.get_mut(&first) {
            t.1 = Some(h.base_offset);
        }
        if marker == Marker::Abort {
            self.aborted.push(AbortedTxn {
                producer_id: h.producer_id,
                first_offset: first,
                last_offset: h.base_offset,
            });
        }
    }

    /// The last stable offset for a high watermark `hw`: the first offset of the oldest
    /// transaction not closed by a marker below `hw`, or `hw`. Forgets closed transactions
    /// the high watermark has passed.
    pub fn last_stable_offset(&mut self, hw: i64) -> i64 {
        while let Some((&first, &(_, marker))) = self.unstable.first_key_value() {
            match marker {
                Some(m) if m < hw => {
                    self.unstable.remove(&first);
                }
                _ => return first.min(hw),
            }
        }
        hw
    }

    /// The aborted transactions overlapping `[from, to)` (Fetch's `aborted_transactions`),
    /// in marker order.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// How `producer_id`'s transaction holding its batch at `offset` ended: None while it is
    /// still open, Some(false) if an ABORT marker closed it, Some(true) if a COMMIT did.
    pub fn txn_outcome(&self, producer_id: i64, offset: i64) -> Option<bool> {
        let open = self
            .producers
            .get(&producer_id)
            .is_some_and(|e| (0..=offset).contains(&e.txn_first_offset));
        if open {
            return None;
        }
        let aborted = self.aborted[self.aborted.partition_point(|a| a.last_offset < offset)..]
            .iter()
            .any(|a| a.producer_id == producer_id && a.first_offset <= offset);
        Some(!aborted)
    }

    /// Forget aborted transactions that end below `log_start` (their records are gone).
    pub fn prune_aborted(&mut self, log_start: i64) {
        let gone = self.aborted.partition_point(|a| a.last_offset < log_start);
        if gone > 0 {
            self.aborted.drain(..gone);
        }
    }

    /// Transactions open here: (producer id, first offset), by first offset.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.unstable
            .iter()
            .filter(|(_, (_, m))| m.is_none())
            .map(|(first, (pid, _))| (*pid, *first))
            .collect()
    }

    /// Record a batch that was assigned offsets (`h.base_offset` is its
    /// assigned base), or replay one read from the log. A new epoch forgets
    /// the older epoch's batches. No checks: replay accepts what the log
    /// holds. A batch without a sequence (written by the broker for the
    /// producer: a transactional offset commit) updates the epoch only. A
    /// transactional batch opens the producer's transaction if none is open.
    pub fn update(&mut self, h: &BatchHeader) {
        assert!(h.producer_id >= 0);
        let transactional = h.attributes & super::batch::ATTR_TRANSACTIONAL != 0;
        if h.base_sequence < 0 {
            let e = match self.producers.entry(h.producer_id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(ProducerEntry::new(h.producer_epoch)),
            };
            if h.producer_epoch > e.epoch {
                e.epoch = h.producer_epoch;
                e.clear_batches();
            }
            e.last_timestamp = e.last_timestamp.max(h.max_timestamp);
            if transactional && e.txn_first_offset < 0 {
                e.txn_first_offset = h.base_offset;
                self.unstable.insert(h.base_offset, (h.producer_id, None));
            }
            return;
        }
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
        if transactional && e.txn_first_offset < 0 {
            e.txn_first_offset = h.base_offset;
            self.unstable.insert(h.base_offset, (h.producer_id, None));
        }
    }

    /// Forget producers whose last batch is older than
    /// `PRODUCER_ID_EXPIRATION_MS` before `now_ms` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded by the
    /// producers active in the last day.
    pub fn remove_expired(&mut self, now_ms: i64) {
        self.producers.retain(|_, e| {
            e.txn_first_offset >= 0
                || now_ms.saturating_sub(e.last_timestamp) < PRODUCER_ID_EXPIRATION_MS
        });
    }

    /// The snapshot file's bytes for a table covering batches below `offset`.
    pub fn encode_snapshot(&self, offset: i64) -> Vec<u8> {
        let body: usize = self
            .producers
            .values()
            .map(|e| ENTRY_HEADER_LEN + e.len as usize * BATCH_META_LEN + 8 + 4)
            .sum::<usize>()
            + 4
            + self.aborted.len() * ABORTED_LEN;
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
            out.extend_from_slice(&e.txn_first_offset.to_be_bytes());
            out.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
        }
        out.extend_from_slice(&(self.aborted.len() as u32).to_be_bytes());
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_be_bytes());
            out.extend_from_slice(&a.first_offset.to_be_bytes());
            out.extend_from_slice(&a.last_offset.to_be_bytes());
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
        let version = r.u16()?;
        if !(SNAPSHOT_VERSION_1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(bad("unknown version"));
        }
        let offset = r.i64()?;
        let count = r.u32()? as usize;
        if offset < 0 || count > body.len() / ENTRY_HEADER_LEN {
            return Err(bad("bad offset or producer count"));
        }
        let mut producers = HashMap::with_capacity(count);
        let mut unstable = BTreeMap::new();
        for _ in 0..count {
            let id = r.i64()?;
            let mut e = ProducerEntry::new(r.i16()?);
            e.last_timestamp = r.i64()?;
            let n = r.take(1)?[0] as usize;
            let none_allowed = version >= SNAPSHOT_VERSION_2;
            if id < 0 || (n == 0 && !none_allowed) || n > PRODUCER_BATCHES_KEPT {
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
            if version >= SNAPSHOT_VERSION_2 {
                e.txn_first_offset = r.i64()?;
                if e.txn_first_offset < -1 || e.txn_first_offset >= offset {
                    return Err(bad("open transaction past the snapshot"));
                }
                if e.txn_first_offset >= 0
                    && unstable.insert(e.txn_first_offset, (id, None)).is_some()
                {
                    return Err(bad("two transactions open at one offset"));
                }
            }
            if version >= SNAPSHOT_VERSION {
                e.coordinator_epoch = r.i32()?;
            }
            if producers.insert(id, e).is_some() {
                return Err(bad("producer listed twice"));
            }
        }
        let mut aborted = Vec::new();
        if version >= SNAPSHOT_VERSION_2 {
            let m = r.u32()? as usize;
            if m > (body.len() - r.pos) / ABORTED_LEN {
                return Err(bad("bad aborted transaction count"));
            }
            aborted.reserve(m);
            for _ in 0..m {
                let a = AbortedTxn {
                    producer_id: r.i64()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                };
                if a.first_offset > a.last_offset
                    || a.last_offset >= offset
                    || aborted
                        .last()
                        .is_some_and(|p: &AbortedTxn| p.last_offset >= a.last_offset)
                {
                    return Err(bad("aborted transactions out of order"));
                }
                aborted.push(a);
            }
        }
        if r.pos != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok((
            offset,
            ProducerStateTable {
                producers,
                unstable,
                aborted,
            },
        ))
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
        let entry: Vec<u8> = [
            &1u32.to_be_bytes()[..],
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
        let with_crc = |body: Vec<u8>| {
            let mut b = body.clone();
            b.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
            b
        };
        // Version 3: no open transaction (-1), no coordinator epoch (-1), no aborted
        // transactions.
        let golden = with_crc(
            [
                &b"SLPS"[..],
                &[0, 3],
                &5i64.to_be_bytes(),
                &entry,
                &(-1i64).to_be_bytes(),
                &(-1i32).to_be_bytes(),
                &0u32.to_be_bytes(),
            ]
            .concat(),
        );
        assert_eq!(one.encode_snapshot(5), golden);
        // Version 2, written before coordinator epochs, still reads.
        let v2 = with_crc(
            [
                &b"SLPS"[..],
                &[0, 2],
                &5i64.to_be_bytes(),
                &entry,
                &(-1i64).to_be_bytes(),
                &0u32.to_be_bytes(),
            ]
            .concat(),
        );
        assert_eq!(
            ProducerStateTable::decode_snapshot(&v2).unwrap(),
            (5, one.clone())
        );
        // Version 1, written before transactions, still reads.
        let v1 = with_crc([&b"SLPS"[..], &[0, 1], &5i64.to_be_bytes(), &entry].concat());
        assert_eq!(
            ProducerStateTable::decode_snapshot(&v1).unwrap(),
            (5, one.clone())
        );
    }

    /// A transactional data batch of `pid` at `base` (sequence `seq`, `count` records).
    fn txn_header(pid: i64, epoch: i16, seq: i32, count: i32, base: i64) -> BatchHeader {
        BatchHeader {
            attributes: crate::storage::batch::ATTR_TRANSACTIONAL,
            ..header(pid, epoch, seq, count, base)
        }
    }

    /// A marker of `pid` at `offset`.
    fn marker_header(pid: i64, epoch: i16, offset: i64) -> BatchHeader {
        BatchHeader {
            attributes: crate::storage::batch::ATTR_TRANSACTIONAL
                | crate::storage::batch::ATTR_CONTROL,
            base_sequence: -1,
            ..header(pid, epoch, 0, 1, offset)
        }
    }

    #[test]
    fn transactions_move_the_last_stable_offset_and_record_aborts() {
        let mut t = ProducerStateTable::default();
        // Producer 1 opens at 0, producer 2 at 2; a plain batch at 4.
        t.update(&txn_header(1, 0, 0, 2, 0));
        t.update(&txn_header(2, 0, 0, 2, 2));
        t.update(&header(3, 0, 0, 1, 4));
        t.update(&txn_header(1, 0, 2, 1, 5));
        assert_eq!(t.last_stable_offset(6), 0);
        assert_eq!(t.open_transactions(), vec![(1, 0), (2, 2)]);
        // Producer 1 commits at 6: stable up to producer 2's first offset once the high
        // watermark passes the marker, not before.
        t.apply_marker(&marker_header(1, 0, 6), Marker::Commit);
        assert_eq!(t.last_stable_offset(6), 0);
        assert_eq!(t.last_stable_offset(7), 2);
        // Producer 2 aborts at 7 with a newer epoch (fenced by its coordinator).
        t.apply_marker(&marker_header(2, 1, 7), Marker::Abort);
        assert_eq!(t.get(2).unwrap().epoch, 1);
        assert_eq!(t.get(2).unwrap().last_seq(), -1);
        assert_eq!(t.last_stable_offset(8), 8);
        assert!(t.open_transactions().is_empty());
        let aborted = AbortedTxn {
            producer_id: 2,
            first_offset: 2,
            last_offset: 7,
        };
        assert_eq!(t.aborted_between(0, 8), vec![aborted]);
        assert_eq!(t.aborted_between(7, 100), vec![aborted]);
        assert!(t.aborted_between(8, 100).is_empty());
        assert!(t.aborted_between(0, 2).is_empty());
        // A second marker closes nothing.
        t.apply_marker(&marker_header(2, 1, 8), Marker::Abort);
        assert_eq!(t.aborted_between(0, 100).len(), 1);
        // The old epoch is fenced for a marker too, the new one is not.
        assert!(t.check_epoch(&marker_header(2, 0, 9)).is_err());
        assert!(t.check_epoch(&marker_header(2, 1, 9)).is_ok());
        // Aborts below the log start are forgotten.
        t.prune_aborted(8);
        assert!(t.aborted_between(0, 100).is_empty());
    }

    #[test]
    fn a_batch_knows_how_its_transaction_ended() {
        let mut t = ProducerStateTable::default();
        t.update(&txn_header(1, 0, 0, 1, 0));
        assert_eq!(t.txn_outcome(1, 0), None);
        t.apply_marker(&marker_header(1, 0, 1), Marker::Abort);
        assert_eq!(t.txn_outcome(1, 0), Some(false));
        t.update(&txn_header(1, 0, 1, 1, 2));
        assert_eq!(t.txn_outcome(1, 2), None);
        assert_eq!(t.txn_outcome(1, 0), Some(false));
        t.apply_marker(&marker_header(1, 0, 3), Marker::Commit);
        assert_eq!(t.txn_outcome(1, 2), Some(true));
        // A transaction opened after the batch's own closed does not reopen it.
        t.update(&txn_header(1, 0, 2, 1, 4));
        assert_eq!(t.txn_outcome(1, 2), Some(true));
        assert_eq!(t.txn_outcome(1, 4), None);
    }

    #[test]
    fn snapshots_keep_open_and_aborted_transactions() {
        let mut t = ProducerStateTable::default();
        t.update(&txn_header(1, 0, 0, 2, 0));
        t.apply_marker(&marker_header(1, 0, 2), Marker::Abort);
        t.update(&txn_header(1, 0, 2, 1, 3));
        t.update(&txn_header(4, 3, 0, 1, 4));
        let bytes = t.encode_snapshot(5);
        let (offset, mut back) = ProducerStateTable::decode_snapshot(&bytes).unwrap();
        assert_eq!(offset, 5);
        assert_eq!(back.open_transactions(), vec![(1, 3), (4, 4)]);
        assert_eq!(back.aborted_between(0, 5), t.aborted_between(0, 5));
        assert_eq!(back.last_stable_offset(5), 3);
        for n in 0..bytes.len() {
            assert!(ProducerStateTable::decode_snapshot(&bytes[..n]).is_err());
        }
        // A producer with an open transaction does not expire.
        back.remove_expired(i64::MAX);
        assert_eq!(back.len(), 2);
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

    /// A marker from an older coordinator (one that lost its `__transaction_state`
    /// partition) is refused once a newer one's marker is here; the coordinator epoch
    /// survives a snapshot.
    #[test]
    fn markers_of_an_older_coordinator_are_fenced() {
        use crate::storage::batch::encode_marker;
        let mut t = ProducerStateTable::default();
        t.update(&txn_header(1, 0, 0, 2, 0));
        let m = encode_marker(1, 0, Marker::Commit, 7, 1_000);
        t.replay(&marker_header(1, 0, 2), &m);
        assert_eq!(t.get(1).unwrap().coordinator_epoch, 7);
        assert!(t.check_marker(&marker_header(1, 0, 3), 7).is_ok());
        assert!(t.check_marker(&marker_header(1, 0, 3), 8).is_ok());
        assert!(matches!(
            t.check_marker(&marker_header(1, 0, 3), 6),
            Err(StorageError::CoordinatorFenced { current: 7, .. })
        ));
        // A producer with no marker yet takes any coordinator epoch.
        assert!(t.check_marker(&marker_header(2, 0, 3), 0).is_ok());
        let (_, back) = ProducerStateTable::decode_snapshot(&t.encode_snapshot(3)).unwrap();
        assert_eq!(back.get(1).unwrap().coordinator_epoch, 7);
        assert!(back.check_marker(&marker_header(1, 0, 3), 6).is_err());
    }

    /// A producer known here only from a marker of its epoch (its batches are below this
    /// log's start) continues at any sequence, as Kafka accepts; a sequence then follows.
    #[test]
    fn a_marker_alone_does_not_fix_the_next_sequence() {
        let mut t = ProducerStateTable::default();
        t.apply_marker(&marker_header(1, 0, 10), Marker::Commit);
        assert_eq!(t.check(&header(1, 0, 6, 1, 11)).unwrap(), Verdict::Append);
        t.update(&header(1, 0, 6, 1, 11));
        assert!(t.check(&header(1, 0, 9, 1, 12)).is_err());
        assert_eq!(t.check(&header(1, 0, 7, 1, 12)).unwrap(), Verdict::Append);
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
