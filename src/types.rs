//! Newtypes for the identifiers that are easy to mix up: offsets, shard ids,
//! partition indexes. Each is a thin wrapper so the compiler catches a shard id
//! passed where a partition was meant.

use std::fmt;

/// A Kafka offset: the position of a record in one partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of an executor (and its core-local state) among the broker's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub usize);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// A topic name plus partition index: the unit of ownership and storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The shard that owns this partition when the broker runs `shard_count`
    /// shards. Stable across restarts with the same shard count (FNV-1a, not
    /// the randomly seeded std hasher).
    pub fn owner(&self, shard_count: usize) -> ShardId {
        assert!(shard_count > 0);
        let h = fnv1a(self.topic.as_bytes());
        // Spread consecutive partitions of one topic over consecutive shards.
        let base = (h % shard_count as u64) as usize;
        ShardId((base + self.partition.max(0) as usize) % shard_count)
    }

    /// Directory name of this partition inside the data directory, as Kafka
    /// names it: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Inverse of [`TopicPartition::dir_name`].
    pub fn parse_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition: i32 = partition.parse().ok()?;
        if topic.is_empty() || partition < 0 {
            return None;
        }
        Some(Self::new(topic, partition))
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// FNV-1a of `bytes`: a hash that is the same in every process and release (placement of
/// partitions on shards and of replicas on brokers).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_name_round_trip() {
        let tp = TopicPartition::new("orders-eu", 12);
        assert_eq!(tp.dir_name(), "orders-eu-12");
        assert_eq!(TopicPartition::parse_dir_name(&tp.dir_name()), Some(tp));
        assert_eq!(TopicPartition::parse_dir_name("nodash"), None);
        assert_eq!(TopicPartition::parse_dir_name("t-x"), None);
        assert_eq!(TopicPartition::parse_dir_name("-1"), None);
    }

    #[test]
    fn partitions_spread_over_shards() {
        let owners: Vec<usize> = (0..8)
            .map(|p| TopicPartition::new("t", p).owner(2).0)
            .collect();
        assert_eq!(owners.iter().filter(|s| **s == 0).count(), 4);
    }
}
