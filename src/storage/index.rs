//! Sparse offset index and time index of one segment.
//!
//! Both are arrays of fixed-size big-endian entries, identical in memory
//! (active segment, a growing `Vec<u8>`) and on disk (`<base>.index`,
//! `<base>.timeindex` of sealed segments, read through memmap2), so one set
//! of lookup functions serves both.
//!
//! - Offset index entry (8 bytes): relative offset u32 (batch base offset −
//!   segment base), position u32 (byte position of that batch in the
//!   segment). Both strictly increasing. One entry per
//!   `index_interval_bytes` of log; a lookup finds the last batch start at or
//!   before an offset, and the reader scans batch headers from there.
//! - Time index entry (12 bytes): timestamp i64, relative offset u32 of the
//!   batch that raised the segment's max timestamp to that value.
//!   Timestamps strictly increasing. Sparse like the offset index; when a
//!   segment is sealed, a last entry with the segment's max timestamp is
//!   added, so the last entry of a sealed segment's time index is its max.

use super::batch::BatchHeader;

pub const OFFSET_ENTRY_LEN: usize = 8;
pub const TIME_ENTRY_LEN: usize = 12;

/// Bytes of an index: owned and growing (active segment) or a read-only map
/// of a sealed segment's index file.
pub enum IndexBytes {
    Memory(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl IndexBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IndexBytes::Memory(v) => v,
            IndexBytes::Mapped(m) => m,
        }
    }
}

pub fn offset_entry_count(buf: &[u8]) -> usize {
    buf.len() / OFFSET_ENTRY_LEN
}

pub fn offset_entry(buf: &[u8], i: usize) -> (u32, u32) {
    let e = &buf[i * OFFSET_ENTRY_LEN..(i + 1) * OFFSET_ENTRY_LEN];
    (
        u32::from_be_bytes(e[0..4].try_into().expect("4")),
        u32::from_be_bytes(e[4..8].try_into().expect("4")),
    )
}

pub fn push_offset_entry(buf: &mut Vec<u8>, rel: u32, pos: u32) {
    buf.extend_from_slice(&rel.to_be_bytes());
    buf.extend_from_slice(&pos.to_be_bytes());
}

/// The last entry whose relative offset is <= `rel`, if any.
pub fn lookup_offset(buf: &[u8], rel: u64) -> Option<(u32, u32)> {
    let n = offset_entry_count(buf);
    // Number of entries with relative offset <= rel (partition point).
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if u64::from(offset_entry(buf, mid).0) <= rel {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        None
    } else {
        Some(offset_entry(buf, lo - 1))
    }
}

pub fn time_entry_count(buf: &[u8]) -> usize {
    buf.len() / TIME_ENTRY_LEN
}

pub fn time_entry(buf: &[u8], i: usize) -> (i64, u32) {
    let e = &buf[i * TIME_ENTRY_LEN..(i + 1) * TIME_ENTRY_LEN];
    (
        i64::from_be_bytes(e[0..8].try_into().expect("8")),
        u32::from_be_bytes(e[8..12].try_into().expect("4")),
    )
}

pub fn push_time_entry(buf: &mut Vec<u8>, ts: i64, rel: u32) {
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&rel.to_be_bytes());
}

/// Number of time entries with timestamp < `ts`.
pub fn time_entries_below(buf: &[u8], ts: i64) -> usize {
    let (mut lo, mut hi) = (0usize, time_entry_count(buf));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if time_entry(buf, mid).0 < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Check a sealed segment's offset index against its log size: whole
/// entries, strictly increasing offsets and positions, positions inside the
/// log, relative offsets below `rel_end` (next segment base − base).
pub fn offset_index_is_valid(buf: &[u8], log_len: u64, rel_end: u64) -> bool {
    if !buf.len().is_multiple_of(OFFSET_ENTRY_LEN) {
        return false;
    }
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..offset_entry_count(buf) {
        let (rel, pos) = offset_entry(buf, i);
        if u64::from(pos) >= log_len || u64::from(rel) >= rel_end {
            return false;
        }
        if let Some((pr, pp)) = prev
            && (rel <= pr || pos <= pp)
        {
            return false;
        }
        prev = Some((rel, pos));
    }
    true
}

/// Check a sealed segment's time index: whole entries, strictly increasing
/// timestamps, non-decreasing relative offsets below `rel_end`, at least one
/// entry when the segment holds batches.
pub fn time_index_is_valid(buf: &[u8], rel_end: u64, segment_empty: bool) -> bool {
    if !buf.len().is_multiple_of(TIME_ENTRY_LEN) {
        return false;
    }
    if !segment_empty && buf.is_empty() {
        return false;
    }
    let mut prev: Option<(i64, u32)> = None;
    for i in 0..time_entry_count(buf) {
        let (ts, rel) = time_entry(buf, i);
        if u64::from(rel) >= rel_end {
            return false;
        }
        if let Some((pt, pr)) = prev
            && (ts <= pt || rel < pr)
        {
            return false;
        }
        prev = Some((ts, rel));
    }
    true
}

/// Builds a segment's two indexes as batches are appended (or re-scanned by
/// recovery). Owned by the segment while it is active.
pub struct Indexer {
    pub base_offset: i64,
    pub interval_bytes: u32,
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
    /// Log bytes since the last offset index entry.
    bytes_since_offset_entry: u64,
    /// Log bytes since the last time index entry.
    bytes_since_time_entry: u64,
    /// Largest batch max timestamp seen, with the base offset of its batch.
    pub max_timestamp: Option<(i64, i64)>,
}

impl Indexer {
    pub fn new(base_offset: i64, interval_bytes: u32) -> Self {
        Indexer {
            base_offset,
            interval_bytes,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_offset_entry: 0,
            bytes_since_time_entry: 0,
            max_timestamp: None,
        }
    }

    /// Continue building the indexes of a segment sealed by a clean close
    /// and reopened as the active segment: `offsets` and `times` are its
    /// index files (checked valid by the caller), `size` its length,
    /// `max_timestamp` its max with the base offset of that batch. The
    /// next offset entry comes `interval_bytes` after the last one, as if
    /// the segment had never been closed. The sealed time index may end
    /// with the final max entry sealing adds; keeping it is harmless (it is
    /// a true entry) and the next time entry comes after `interval_bytes`
    /// more bytes.
    pub fn resume(
        base_offset: i64,
        interval_bytes: u32,
        offsets: Vec<u8>,
        times: Vec<u8>,
        size: u64,
        max_timestamp: Option<(i64, i64)>,
    ) -> Self {
        let n = offset_entry_count(&offsets);
        let last_indexed = if n == 0 {
            0
        } else {
            u64::from(offset_entry(&offsets, n - 1).1)
        };
        assert!(last_indexed <= size, "index entry past the segment end");
        Indexer {
            base_offset,
            interval_bytes,
            offsets,
            times,
            bytes_since_offset_entry: size - last_indexed,
            bytes_since_time_entry: 0,
            max_timestamp,
        }
    }

    /// Record the batch `h` (already carrying its assigned base offset) at
    /// byte position `pos` of the segment.
    pub fn on_batch(&mut self, h: &BatchHeader, pos: u64, size: usize) {
        let rel = h.base_offset - self.base_offset;
        assert!(
            rel >= 0 && rel <= i64::from(u32::MAX),
            "relative offset {rel} out of range"
        );
        assert!(
            pos <= u64::from(u32::MAX),
            "segment position {pos} out of range"
        );
        let (rel, pos32) = (rel as u32, pos as u32);
        // An entry for the first batch after each interval_bytes of log; the
        // first batch of a segment needs none (lookups fall back to 0).
        if self.bytes_since_offset_entry >= u64::from(self.interval_bytes) {
            push_offset_entry(&mut self.offsets, rel, pos32);
            self.bytes_since_offset_entry = 0;
        }
        self.bytes_since_offset_entry += size as u64;
        let raises = self.max_timestamp.is_none_or(|(t, _)| h.max_timestamp > t);
        if raises {
            self.max_timestamp = Some((h.max_timestamp, h.base_offset));
            if self.times.is_empty()
                || self.bytes_since_time_entry >= u64::from(self.interval_bytes)
            {
                push_time_entry(&mut self.times, h.max_timestamp, rel);
                self.bytes_since_time_entry = 0;
            }
        }
        self.bytes_since_time_entry += size as u64;
    }

    /// The time index as it is sealed: with a final entry for the segment's
    /// max timestamp if the sparse entries do not end with it.
    pub fn sealed_times(&self) -> Vec<u8> {
        let mut t = self.times.clone();
        if let Some((ts, off)) = self.max_timestamp {
            let n = time_entry_count(&t);
            if n == 0 || time_entry(&t, n - 1).0 < ts {
                push_time_entry(&mut t, ts, (off - self.base_offset) as u32);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup() {
        let mut b = Vec::new();
        for (r, p) in [(10u32, 100u32), (20, 200), (30, 300)] {
            push_offset_entry(&mut b, r, p);
        }
        assert_eq!(lookup_offset(&b, 5), None);
        assert_eq!(lookup_offset(&b, 10), Some((10, 100)));
        assert_eq!(lookup_offset(&b, 29), Some((20, 200)));
        assert_eq!(lookup_offset(&b, 1000), Some((30, 300)));
        assert!(offset_index_is_valid(&b, 301, 31));
        assert!(!offset_index_is_valid(&b, 300, 31));
        assert!(!offset_index_is_valid(&b[..7], 1000, 1000));
        let mut bad = b.clone();
        push_offset_entry(&mut bad, 25, 400);
        assert!(!offset_index_is_valid(&bad, 1000, 1000));
    }

    #[test]
    fn time_lookup() {
        let mut b = Vec::new();
        for (t, r) in [(100i64, 0u32), (200, 5), (300, 9)] {
            push_time_entry(&mut b, t, r);
        }
        assert_eq!(time_entries_below(&b, 50), 0);
        assert_eq!(time_entries_below(&b, 100), 0);
        assert_eq!(time_entries_below(&b, 101), 1);
        assert_eq!(time_entries_below(&b, 1000), 3);
        assert!(time_index_is_valid(&b, 10, false));
        assert!(!time_index_is_valid(&b, 9, false));
        assert!(!time_index_is_valid(&[], 9, false));
    }
}
