//! Each shard's log cleaner (Kafka's `LogCleaner` thread, one per core here): a task that
//! compacts the partitions the shard owns whose `cleanup.policy` contains `compact`, one at
//! a time, with the shard's own bounded key map and disk bandwidth. Nothing is shared with
//! other shards.
//!
//! Each round it takes the partition with the highest dirty ratio at or above its
//! `min.cleanable.dirty.ratio` (one past `max.compaction.lag.ms` first) and runs a pass
//! ([`PartitionLog::clean`]); when none qualifies it sleeps `log_cleaner_backoff_ms`. A
//! partition whose pass failed is left alone for [`FAILED_BACKOFF`] (Kafka marks such a log
//! uncleanable). A replicated partition's replica (leader or follower) cleans its own log,
//! below its Raft base only: the entries after it are Raft's, numbered batch by batch (see
//! ARCHITECTURE.md, "Log compaction").

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use super::Shard;
use crate::runtime;
use crate::storage::cleaner::OffsetMap;
use crate::storage::io::Clock;
use crate::storage::log::{Cleanable, CleanerThrottle, PartitionLog};
use crate::types::TopicPartition;

/// How long a partition whose pass failed is left alone.
pub const FAILED_BACKOFF: Duration = Duration::from_secs(300);

/// Whether `c` qualifies for a pass under its log's `min.cleanable.dirty.ratio`.
pub fn qualifies(c: &Cleanable, min_ratio: f64) -> bool {
    c.overdue || (c.dirty_bytes > 0 && c.ratio >= min_ratio)
}

/// The partition to clean next among `candidates` (partition, cleanable, its minimum ratio):
/// an overdue one first, then the highest dirty ratio.
pub fn pick<'a>(
    candidates: impl IntoIterator<Item = (&'a TopicPartition, Cleanable, f64)>,
) -> Option<&'a TopicPartition> {
    candidates
        .into_iter()
        .filter(|(_, c, min)| qualifies(c, *min))
        .max_by(|(_, a, _), (_, b, _)| {
            (a.overdue, a.ratio)
                .partial_cmp(&(b.overdue, b.ratio))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(tp, _, _)| tp)
}

/// The compacted logs this shard owns: its local partitions, and its replicas (leaders and
/// followers alike, each cleaning its own log below its Raft base).
fn compacted_logs(shard: &Shard) -> Vec<(TopicPartition, Rc<PartitionLog>)> {
    let mut logs = shard.owned_partitions();
    if let Some(cluster) = shard.cluster() {
        let metadata = crate::cluster::metadata::metadata_tp();
        logs.extend(
            cluster
                .replicas()
                .into_iter()
                .filter(|(tp, _)| *tp != metadata)
                .map(|(tp, d)| (tp, d.replica().log().clone())),
        );
    }
    logs.retain(|(_, log)| log.cfg().compact);
    logs
}

pub(super) async fn cleaner_task(shard: Weak<Shard>) {
    let (backoff, memory, rate) = {
        let Some(s) = shard.upgrade() else { return };
        (
            Duration::from_millis(s.config.log_cleaner_backoff_ms),
            s.config.log_cleaner_dedupe_buffer_bytes as usize,
            s.config.log_cleaner_io_max_bytes_per_sec,
        )
    };
    // Allocated at the first pass; its table keeps at most `memory` bytes.
    let mut map: Option<OffsetMap> = None;
    let throttle = CleanerThrottle::new(rate);
    let mut failed: HashMap<TopicPartition, Instant> = HashMap::new();
    let mut cleaned = false;
    loop {
        if !cleaned {
            runtime::sleep(backoff).await;
        }
        cleaned = false;
        let Some(shard) = shard.upgrade() else { return };
        if shard.stopping.get() {
            return;
        }
        let now = runtime::SystemClock.wall_ms();
        failed.retain(|_, at| at.elapsed() < FAILED_BACKOFF);
        let logs = compacted_logs(&shard);
        let candidates: Vec<_> = logs
            .iter()
            .filter(|(tp, _)| !failed.contains_key(tp))
            .filter_map(|(tp, log)| {
                let c = log.cleanable(now)?;
                Some((tp, c, log.cfg().min_cleanable_dirty_ratio))
            })
            .collect();
        let Some(tp) = pick(candidates.iter().map(|(tp, c, m)| (*tp, *c, *m))).cloned() else {
            continue;
        };
        drop(candidates);
        let Some(log) = logs.into_iter().find(|(t, _)| *t == tp).map(|(_, l)| l) else {
            continue;
        };
        let map = map.get_or_insert_with(|| OffsetMap::with_memory(memory));
        match log.clean(map, now, &throttle).await {
            Ok(Some(_)) => cleaned = true,
            Ok(None) => {}
            Err(e) => {
                warn!(shard = %shard.id, partition = %tp, error = %e,
                    backoff_s = FAILED_BACKOFF.as_secs(),
                    "log cleaner pass failed: the partition is left as it was");
                failed.insert(tp.clone(), Instant::now());
            }
        }
        runtime::yield_if_needed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ratio: f64, overdue: bool) -> Cleanable {
        Cleanable {
            first_dirty: 0,
            end: 10,
            clean_bytes: 100,
            dirty_bytes: 100,
            ratio,
            overdue,
        }
    }

    #[test]
    fn the_dirtiest_log_above_its_ratio_goes_first_and_overdue_ones_before_it() {
        let (a, b, d) = (
            TopicPartition::new("a", 0),
            TopicPartition::new("b", 0),
            TopicPartition::new("d", 0),
        );
        assert_eq!(
            pick([(&a, c(0.6, false), 0.5), (&b, c(0.8, false), 0.5)]),
            Some(&b)
        );
        assert_eq!(
            pick([(&a, c(0.6, false), 0.5), (&b, c(0.8, false), 0.9)]),
            Some(&a)
        );
        assert_eq!(pick([(&a, c(0.4, false), 0.5)]), None);
        assert_eq!(
            pick([(&a, c(0.9, false), 0.5), (&d, c(0.1, true), 0.5)]),
            Some(&d)
        );
    }
}
