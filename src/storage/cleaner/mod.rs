//! The log cleaner's rules, on one batch at a time (Kafka's `LogCleaner`): what a
//! compacted partition keeps. The I/O (choosing a partition, reading its segments, writing
//! and swapping the cleaned ones) is `storage::log::clean`; the shard's task that runs it is
//! `shard::cleaner`.
//!
//! A pass has two steps. First the *offset map* of the dirty section: every keyed record of
//! the committed, non-aborted data batches from the first dirty offset on, key -> offset of
//! its latest record, until the map is full ([`add_to_map`]; the map's end is where the pass
//! stops). Then every batch from the log's start to the map's end is rewritten
//! ([`clean_batch`]): a record is kept unless a later record of its key is in the map, and
//! - a record without a key is dropped (a compacted topic refuses them; they can only come
//!   from before the topic was compacted);
//! - a tombstone (null value) is kept until its batch's max timestamp is
//!   `delete.retention.ms` old, then dropped;
//! - the records of an aborted transaction are dropped; a transaction marker is kept until
//!   `delete.retention.ms` after it and while any record of its transaction is kept;
//! - a batch whose records all go is dropped, unless it is its producer's last batch: that
//!   one stays as an empty batch (no records, same offsets and sequence), so the producer's
//!   state survives it, as in Kafka (a transactional one keeps its marker too);
//! - a batch that keeps every record is copied byte for byte; one that loses some is
//!   re-encoded: the same header (base offset, last offset delta, timestamps, producer,
//!   sequence), the kept records as they were, compressed again with the batch's codec.
//!
//! Offsets never change: a cleaned log has gaps.

pub mod map;
pub mod records;

use std::collections::HashMap;

use crate::storage::batch::{self, ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchHeader, HEADER_LEN};
use crate::storage::producer_state::ProducerStateTable;
pub use map::OffsetMap;
pub use records::RecordError;
use records::{RecordIter, codec_of, compress, records_section};

/// What one pass keeps, given its offset map.
pub struct Rules<'a> {
    pub map: &'a OffsetMap,
    /// Records at or past this offset are not in the map: kept as they are.
    pub map_end: i64,
    /// Wall clock now, and `delete.retention.ms`: tombstones and markers whose batch's max
    /// timestamp is older than `now_ms - delete_retention_ms` go.
    pub now_ms: i64,
    pub delete_retention_ms: i64,
    /// The partition's producers: aborted transactions, each producer's last batch.
    pub producers: &'a ProducerStateTable,
    /// Largest records section a batch may decompress to.
    pub decompress_limit: usize,
}

impl Rules<'_> {
    fn expired(&self, h: &BatchHeader) -> bool {
        self.delete_retention_ms >= 0
            && h.max_timestamp.saturating_add(self.delete_retention_ms) < self.now_ms
    }
}

/// Per pass: whether each producer's current transaction has a record kept so far (its
/// marker must stay while one does).
#[derive(Default)]
pub struct TxnTracker {
    kept: HashMap<i64, bool>,
}

/// What became of one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Copied as it is.
    Unchanged,
    /// Left out of the cleaned segment.
    Removed,
    /// These bytes instead.
    Rewritten(Vec<u8>),
}

/// Counts of one pass (logged, and the cleaner's metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanStats {
    pub batches_read: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub keyless_removed: u64,
    pub aborted_removed: u64,
    pub markers_removed: u64,
    pub batches_rewritten: u64,
    pub empty_batches_kept: u64,
}

/// Put the keyed records of `batch` (header `h`) in the map. Control batches and aborted
/// transactions add nothing. `Ok(false)`: the map may not hold them all, nothing was added
/// (the pass ends before this batch).
pub fn add_to_map(
    batch: &[u8],
    h: &BatchHeader,
    producers: &ProducerStateTable,
    map: &mut OffsetMap,
    decompress_limit: usize,
) -> Result<bool, RecordError> {
    if h.attributes & ATTR_CONTROL != 0 {
        return Ok(true);
    }
    if h.attributes & ATTR_TRANSACTIONAL != 0
        && producers.txn_outcome(h.producer_id, h.base_offset) != Some(true)
    {
        return Ok(true);
    }
    if !map.has_room(h.record_count.max(0) as usize) {
        return Ok(false);
    }
    let section = records_section(batch, h.attributes, decompress_limit)?;
    for r in RecordIter::new(&section, h.record_count) {
        let r = r?;
        if let Some(k) = r.key {
            let fits = map.insert(k, h.base_offset + i64::from(r.offset_delta));
            debug_assert!(fits, "room was checked for the whole batch");
        }
    }
    Ok(true)
}

/// Clean one batch (header `h`) under `rules`; batches must come in offset order.
pub fn clean_batch(
    batch: &[u8],
    h: &BatchHeader,
    rules: &Rules,
    txns: &mut TxnTracker,
    stats: &mut CleanStats,
) -> Result<Outcome, RecordError> {
    stats.batches_read += 1;
    stats.bytes_read += batch.len() as u64;
    let outcome = clean_batch_inner(batch, h, rules, txns, stats)?;
    stats.bytes_written += match &outcome {
        Outcome::Unchanged => batch.len() as u64,
        Outcome::Removed => 0,
        Outcome::Rewritten(b) => {
            stats.batches_rewritten += 1;
            b.len() as u64
        }
    };
    Ok(outcome)
}

fn clean_batch_inner(
    batch: &[u8],
    h: &BatchHeader,
    rules: &Rules,
    txns: &mut TxnTracker,
    stats: &mut CleanStats,
) -> Result<Outcome, RecordError> {
    if h.attributes & ATTR_CONTROL != 0 {
        if batch::marker_of(batch).is_none() {
            return Ok(Outcome::Unchanged);
        }
        // The transaction ends here: its marker may go once no record of it is kept.
        let kept = txns.kept.remove(&h.producer_id).unwrap_or(false);
        if !kept && rules.expired(h) {
            stats.markers_removed += 1;
            return Ok(Outcome::Removed);
        }
        return Ok(Outcome::Unchanged);
    }
    let transactional = h.attributes & ATTR_TRANSACTIONAL != 0;
    let aborted = if transactional {
        match rules.producers.txn_outcome(h.producer_id, h.base_offset) {
            // Open: never touched (the cleaner stops at the last stable offset).
            None => return Ok(Outcome::Unchanged),
            Some(committed) => !committed,
        }
    } else {
        false
    };
    let section = records_section(batch, h.attributes, rules.decompress_limit)?;
    let expired = rules.expired(h);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut kept_count = 0i32;
    let mut total = 0i32;
    for r in RecordIter::new(&section, h.record_count) {
        let r = r?;
        total += 1;
        let offset = h.base_offset + i64::from(r.offset_delta);
        let keep = if aborted {
            stats.aborted_removed += 1;
            false
        } else {
            match r.key {
                None => {
                    stats.keyless_removed += 1;
                    false
                }
                Some(k) => {
                    let latest =
                        offset >= rules.map_end || rules.map.get(k).is_none_or(|l| l <= offset);
                    if latest && r.value_is_null && expired {
                        stats.tombstones_removed += 1;
                        false
                    } else {
                        latest
                    }
                }
            }
        };
        if keep {
            kept.push(r.bytes);
            kept_count += 1;
        } else {
            stats.records_removed += 1;
        }
    }
    if transactional && kept_count > 0 {
        txns.kept.insert(h.producer_id, true);
    }
    if kept_count == total && total > 0 {
        return Ok(Outcome::Unchanged);
    }
    if kept_count == 0 {
        let last_of_producer = h.producer_id >= 0
            && rules
                .producers
                .get(h.producer_id)
                .and_then(|e| e.last_batch())
                .is_some_and(|b| b.base_offset == h.base_offset);
        if !last_of_producer {
            return Ok(Outcome::Removed);
        }
        // The empty batch that stays is its transaction's too: the marker stays with it (a
        // producer state rebuilt from the log must not see that transaction as open).
        if transactional {
            txns.kept.insert(h.producer_id, true);
        }
        if total == 0 {
            return Ok(Outcome::Unchanged); // already the empty batch
        }
        stats.empty_batches_kept += 1;
        return Ok(Outcome::Rewritten(rebuild(batch, h, 0, &[], true)?));
    }
    let mut body = Vec::with_capacity(kept.iter().map(|r| r.len()).sum());
    for r in kept {
        body.extend_from_slice(r);
    }
    Ok(Outcome::Rewritten(rebuild(
        batch, h, kept_count, &body, false,
    )?))
}

/// `batch`'s header with `records` (uncompressed) as its records, compressed with its
/// codec; `empty`: no records at all, uncompressed (Kafka's empty batch).
fn rebuild(
    batch: &[u8],
    h: &BatchHeader,
    count: i32,
    records: &[u8],
    empty: bool,
) -> Result<Vec<u8>, RecordError> {
    let mut attributes = h.attributes;
    let payload = if empty {
        attributes &= !records::CODEC_MASK;
        Vec::new()
    } else {
        compress(codec_of(h.attributes), records)?
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&payload);
    let len = (out.len() - batch::LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = batch::compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests;
