//! Which leader epoch began at which offset: Kafka's leader-epoch cache and its checkpoint file
//! (`leader-epoch-checkpoint` in the partition directory), what a replica asks of the leader
//! (OffsetsForLeaderEpoch) to find where its log diverged, and truncates to (KIP-101, KIP-279).
//!
//! File format, as Kafka writes it (text, one entry per line, oldest first):
//! ```text
//! 0                  <- version
//! 2                  <- number of entries
//! 3 0                <- epoch 3 began at offset 0
//! 5 1200             <- epoch 5 began at offset 1200
//! ```
//! The file is replaced atomically (temporary file, fdatasync, rename, directory sync) by the
//! log's writer, before any batch of a new epoch is made durable, so a durable batch's epoch is
//! always in the durable file.
//!
//! Invariant: epochs and start offsets strictly increase along the entries.

/// The checkpoint's file name in a partition directory.
pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
const VERSION: i32 = 0;

/// One entry: `epoch` began at `start_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// A malformed checkpoint file.
#[derive(Debug, thiserror::Error)]
#[error("leader-epoch checkpoint: {0}")]
pub struct CheckpointError(String);

/// The leader epochs of one partition, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest epoch, if any.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Record that `epoch` began at `start_offset` (a new leader at its log end, or a replica
    /// appending the first batch of a newer epoch). An epoch not newer than the latest changes
    /// nothing. Entries that would break the order (a start offset at or past the new one) are
    /// dropped first, as Kafka does. Returns whether the cache changed.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest().is_some_and(|l| l.epoch >= epoch) {
            return false;
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// OffsetsForLeaderEpoch for `requested`: the largest epoch at most `requested` and the
    /// offset where it ended (the start of the next epoch, or `log_end` for the latest). An
    /// epoch below every entry answers with `requested` and the first entry's start; an epoch
    /// above the latest, or an empty cache, answers `(-1, -1)` (UNDEFINED), as Kafka does.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        let Some(latest) = self.latest() else {
            return (-1, -1);
        };
        if requested == latest.epoch {
            return (latest.epoch, log_end);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        if higher == self.entries.len() {
            return (-1, -1);
        }
        let end = self.entries[higher].start_offset;
        match higher.checked_sub(1) {
            None => (requested, end),
            Some(floor) => (self.entries[floor].epoch, end),
        }
    }

    /// The log was cut back to `end`: drop the epochs that began at or after it. Returns
    /// whether the cache changed.
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        self.entries.len() != before
    }

    /// The log start moved to `start`: drop the epochs that ended at or before it and move the
    /// start of the one it falls in to `start`. Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let first_kept = self
            .entries
            .partition_point(|e| e.start_offset <= start)
            .saturating_sub(1);
        let mut changed = false;
        if first_kept > 0 {
            self.entries.drain(..first_kept);
            changed = true;
        }
        if let Some(first) = self.entries.first_mut()
            && first.start_offset < start
        {
            first.start_offset = start;
            changed = true;
        }
        changed
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let text = std::str::from_utf8(bytes).map_err(|e| CheckpointError(e.to_string()))?;
        let mut lines = text.lines();
        let mut number = |what: &str| -> Result<i64, CheckpointError> {
            lines
                .next()
                .ok_or_else(|| CheckpointError(format!("missing {what}")))?
                .trim()
                .parse()
                .map_err(|e| CheckpointError(format!("{what}: {e}")))
        };
        let version = number("version")?;
        if version != i64::from(VERSION) {
            return Err(CheckpointError(format!("unknown version {version}")));
        }
        let count = number("entry count")?;
        let mut cache = LeaderEpochCache::default();
        for i in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| CheckpointError(format!("missing entry {i}")))?;
            let mut parts = line.split_whitespace();
            let mut field = |what: &str| -> Result<i64, CheckpointError> {
                parts
                    .next()
                    .ok_or_else(|| CheckpointError(format!("entry {i}: missing {what}")))?
                    .parse()
                    .map_err(|e| CheckpointError(format!("entry {i} {what}: {e}")))
            };
            let epoch = i32::try_from(field("epoch")?)
                .map_err(|_| CheckpointError(format!("entry {i}: epoch out of range")))?;
            let start_offset = field("start offset")?;
            if cache
                .latest()
                .is_some_and(|l| l.epoch >= epoch || l.start_offset >= start_offset)
                || epoch < 0
                || start_offset < 0
            {
                return Err(CheckpointError(format!(
                    "entry {i} ({epoch} {start_offset}) out of order"
                )));
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for &(e, s) in entries {
            assert!(c.assign(e, s));
        }
        c
    }

    #[test]
    fn assign_keeps_epochs_and_offsets_increasing() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(!c.assign(3, 20), "same epoch again");
        assert!(!c.assign(2, 20), "older epoch");
        // A newer epoch at an offset an entry already starts at replaces it.
        assert!(c.assign(4, 10));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 10
                }
            ]
        );
    }

    #[test]
    fn end_offset_for_answers_like_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 25)]);
        assert_eq!(c.end_offset_for(5, 40), (5, 40), "latest: the log end");
        assert_eq!(c.end_offset_for(3, 40), (3, 25));
        assert_eq!(c.end_offset_for(4, 40), (3, 25), "between: the floor epoch");
        assert_eq!(c.end_offset_for(0, 40), (0, 0), "below the first");
        assert_eq!(c.end_offset_for(6, 40), (-1, -1), "above the latest");
        assert_eq!(LeaderEpochCache::default().end_offset_for(1, 5), (-1, -1));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 10), (5, 25)]);
        assert!(c.truncate_from_end(25));
        assert_eq!(c.latest().unwrap().epoch, 3);
        assert!(!c.truncate_from_end(30));
        assert!(c.truncate_from_start(12));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 12
            }]
        );
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let c = cache(&[(1, 0), (3, 10)]);
        let bytes = c.encode();
        assert_eq!(bytes, b"0\n2\n1 0\n3 10\n");
        assert_eq!(LeaderEpochCache::decode(&bytes).unwrap(), c);
        for bad in [
            &b"1\n0\n"[..],
            b"0\n2\n1 0\n",
            b"0\n2\n3 10\n1 0\n",
            b"0\nx\n",
            b"",
        ] {
            assert!(LeaderEpochCache::decode(bad).is_err(), "{bad:?}");
        }
    }
}
