//! The cleaner's key -> latest offset map, bounded in memory (Kafka's `SkimpyOffsetMap` and
//! `log.cleaner.dedupe.buffer.size`).
//!
//! Keys are not stored: each is reduced to its 128-bit XXH3 hash (as Kafka keeps a 16-byte
//! MD5), so an entry is 32 bytes whatever the key's size. Two keys of one partition colliding
//! in 128 bits is far less likely than a disk error. The table never grows past the number of
//! buckets the memory bound allows: `insert` refuses a new key once it holds its capacity, and
//! the cleaner ends its pass there (the rest of the dirty log is cleaned by a later pass).

use std::collections::HashMap;

/// Bytes one bucket of the table takes: a (u128, i64) entry, 32 bytes aligned, plus the
/// table's control byte.
pub const BUCKET_BYTES: usize = 33;

/// Key hash -> offset of the key's latest record seen.
pub struct OffsetMap {
    map: HashMap<u128, i64>,
    capacity: usize,
}

impl OffsetMap {
    /// A map whose table never takes more than `memory_bytes` (at least 64 keys).
    pub fn with_memory(memory_bytes: usize) -> Self {
        // The table's bucket count is a power of two and holds 7/8 of it in entries.
        let buckets = (memory_bytes / BUCKET_BYTES).max(64);
        let buckets = if buckets.is_power_of_two() {
            buckets
        } else {
            buckets.next_power_of_two() / 2
        };
        OffsetMap {
            map: HashMap::new(),
            capacity: buckets / 8 * 7,
        }
    }

    /// How many keys it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Room for `n` more keys, whatever they are.
    pub fn has_room(&self, n: usize) -> bool {
        self.map.len().saturating_add(n) <= self.capacity
    }

    /// Forget every key (a new pass); the table keeps its memory.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Remember `offset` as `key`'s latest. False (nothing changed) if the key is new and the
    /// map is full.
    pub fn insert(&mut self, key: &[u8], offset: i64) -> bool {
        let h = hash(key);
        if let Some(o) = self.map.get_mut(&h) {
            *o = (*o).max(offset);
            return true;
        }
        if self.map.len() >= self.capacity {
            return false;
        }
        self.map.insert(h, offset);
        true
    }

    /// The latest offset seen for `key`.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.map.get(&hash(key)).copied()
    }

    /// Bytes the table allocated (for the memory bound's check).
    pub fn allocated_bytes(&self) -> usize {
        let buckets = if self.map.capacity() == 0 {
            0
        } else {
            (self.map.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * BUCKET_BYTES
    }
}

fn hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_stays_within_its_memory_and_keeps_the_latest_offset() {
        let bound = 1 << 20;
        let mut m = OffsetMap::with_memory(bound);
        assert!(m.capacity() > 10_000, "{}", m.capacity());
        let mut n = 0u64;
        while m.insert(format!("key-{n}").as_bytes(), n as i64) {
            n += 1;
        }
        assert_eq!(n as usize, m.capacity());
        assert!(
            m.allocated_bytes() <= bound,
            "{} > {bound}",
            m.allocated_bytes()
        );
        // A known key still updates when full; a new one is refused.
        assert!(m.insert(b"key-3", 1_000_000));
        assert_eq!(m.get(b"key-3"), Some(1_000_000));
        assert!(m.insert(b"key-3", 5), "an older offset is not an error");
        assert_eq!(m.get(b"key-3"), Some(1_000_000));
        assert!(!m.insert(b"another", 1));
        assert_eq!(m.get(b"another"), None);
    }
}
