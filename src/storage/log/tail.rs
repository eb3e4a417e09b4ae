//! The tail cache: the most recent batches, kept in memory (the `Bytes` the appender queued for
//! the flusher, so no copy) to serve tailing consumers without I/O. Bounded by
//! `tail_cache_bytes`; the oldest batches leave first.

use std::collections::VecDeque;

use bytes::Bytes;

#[cfg(test)]
use super::Chunks;

/// A recent batch kept for tailing readers.
struct CachedBatch {
    base_offset: i64,
    next_offset: i64,
    bytes: Bytes,
}

/// Contiguous recent batches, oldest first.
#[derive(Default)]
pub(super) struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes: usize,
}

impl TailCache {
    /// Add the batch just assigned `base_offset..next_offset` (the log end).
    pub fn push(&mut self, base_offset: i64, next_offset: i64, bytes: Bytes) {
        debug_assert!(
            self.batches
                .back()
                .is_none_or(|b| b.next_offset == base_offset)
        );
        self.bytes += bytes.len();
        self.batches.push_back(CachedBatch {
            base_offset,
            next_offset,
            bytes,
        });
    }

    /// Drop the oldest batches until at most `max_bytes` remain, but never one past
    /// `written_end`: batches not yet in a segment file are read from here.
    pub fn trim(&mut self, max_bytes: usize, written_end: i64) {
        while self.bytes > max_bytes
            && self
                .batches
                .front()
                .is_some_and(|b| b.next_offset <= written_end)
        {
            let b = self.batches.pop_front().expect("checked");
            self.bytes -= b.bytes.len();
        }
    }

    /// The cached batches from the one holding `offset` on: `(base, next, bytes)`.
    pub fn batches_from(&self, offset: i64) -> impl Iterator<Item = (i64, i64, &Bytes)> {
        let i = self.batches.partition_point(|b| b.next_offset <= offset);
        self.batches
            .range(i..)
            .map(|b| (b.base_offset, b.next_offset, &b.bytes))
    }

    /// Drop the batches wholly below `offset` (the log cleaner replaced them on disk).
    pub fn drop_below(&mut self, offset: i64) {
        while self
            .batches
            .front()
            .is_some_and(|b| b.next_offset <= offset)
        {
            let b = self.batches.pop_front().expect("checked");
            self.bytes -= b.bytes.len();
        }
    }

    /// Drop every batch at or past `offset` (the log was cut back to `offset`).
    pub fn truncate(&mut self, offset: i64) {
        while self.batches.back().is_some_and(|b| b.next_offset > offset) {
            let b = self.batches.pop_back().expect("checked");
            self.bytes -= b.bytes.len();
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Whole batches from the one holding `offset`, below `hw`, at most `max_bytes` except the
    /// first; None if `offset` is older than the cache. `offset < hw` and every offset below
    /// `hw` and from the cache's first batch on is in the cache.
    #[cfg(test)]
    pub fn read(&self, offset: i64, hw: i64, max_bytes: usize) -> Option<Bytes> {
        self.read_parts(offset, hw, max_bytes)
            .map(|parts| Chunks::from_parts(parts).join())
    }

    /// [`TailCache::read`] as the cached batches themselves, not joined.
    pub fn read_parts(&self, offset: i64, hw: i64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let front = self.batches.front()?;
        if offset < front.base_offset {
            return None;
        }
        let i = self.batches.partition_point(|b| b.next_offset <= offset);
        let mut picked: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        for b in self.batches.range(i..) {
            if b.base_offset >= hw {
                break;
            }
            if !picked.is_empty() && total + b.bytes.len() > max_bytes {
                break;
            }
            total += b.bytes.len();
            picked.push(b.bytes.clone());
        }
        assert!(
            !picked.is_empty(),
            "offset {offset} below HW {hw} must be in the tail cache"
        );
        Some(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> TailCache {
        let mut c = TailCache::default();
        c.push(0, 3, Bytes::from_static(b"aaa"));
        c.push(3, 5, Bytes::from_static(b"bb"));
        c.push(5, 9, Bytes::from_static(b"cccc"));
        c
    }

    #[test]
    fn reads_whole_batches_below_the_high_watermark() {
        let c = cache();
        assert_eq!(c.read(4, 9, 100).unwrap(), Bytes::from_static(b"bbcccc"));
        assert_eq!(c.read(4, 5, 100).unwrap(), Bytes::from_static(b"bb"));
        // The first batch is whole even above max_bytes; the next ones only if they fit.
        assert_eq!(c.read(0, 9, 1).unwrap(), Bytes::from_static(b"aaa"));
        assert_eq!(c.read(0, 9, 5).unwrap(), Bytes::from_static(b"aaabb"));
    }

    #[test]
    fn trim_and_truncate_keep_the_cache_contiguous() {
        let mut c = cache();
        c.trim(6, 3);
        assert_eq!(c.bytes, 6, "not past the written end");
        c.trim(6, 9);
        assert!(c.read(0, 9, 100).is_none(), "the oldest batch left");
        assert_eq!(c.read(3, 9, 100).unwrap(), Bytes::from_static(b"bbcccc"));
        c.truncate(5);
        assert_eq!(c.read(3, 5, 100).unwrap(), Bytes::from_static(b"bb"));
        c.truncate(4);
        assert!(c.read(3, 3, 100).is_none() || c.bytes == 0);
        assert_eq!(c.bytes, 0);
        c.push(3, 4, Bytes::from_static(b"d"));
        assert_eq!(c.read(3, 4, 100).unwrap(), Bytes::from_static(b"d"));
    }
}
