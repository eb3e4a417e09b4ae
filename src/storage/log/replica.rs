//! What replication needs of a partition log, beside [`PartitionLog::append_replicated`]
//! (a follower's append at the leader's offsets, in `append`):
//! - a high watermark the caller moves (what the replicas have in common), kept apart from the
//!   durable end (what this replica fdatasynced);
//! - truncation back to an offset (a replica dropping the suffix its leader does not have:
//!   batches, indexes, producer state, leader epochs);
//! - the leader-epoch cache (`leader_epoch`): which epoch began where, durable, and the
//!   OffsetsForLeaderEpoch answer.
//!
//! Without a caller-managed high watermark (a single node) nothing here is used and the high
//! watermark is the durable end.

use crate::storage::error::StorageError;
use crate::storage::leader_epoch::EpochEntry;
use crate::types::Offset;

use super::PartitionLog;

impl PartitionLog {
    /// Hand the high watermark to the caller: from now on it is at most `offset` (it never
    /// moves back, and never past the durable end: it follows the durable end up to
    /// `offset`). Consumers read below it; [`PartitionLog::wait_durable`] still waits for the
    /// durable end only.
    pub fn set_high_watermark(&self, offset: Offset) {
        let moved = {
            let mut st = self.state.borrow_mut();
            let target = st
                .hw_target
                .map_or(offset.0, |t| t.max(offset.0))
                .min(st.log_end);
            st.hw_target = Some(target);
            st.advance_high_watermark()
        };
        if moved {
            self.hw_notify.notify_all();
        }
    }

    /// Before the log serves reads: the high watermark comes down to `offset` (what a
    /// replica knows is committed after a restart) and from now on the caller moves it with
    /// [`PartitionLog::set_high_watermark`].
    pub fn hold_high_watermark_at(&self, offset: Offset) {
        let mut st = self.state.borrow_mut();
        let at = offset.0.clamp(st.log_start, st.log_end);
        st.hw_target = Some(at);
        st.high_watermark = st.high_watermark.min(at);
    }

    /// Cut the log back so that it ends before `offset` (Kafka's truncateTo): the batch
    /// holding `offset` and everything after it go, on disk and in memory (indexes, tail
    /// cache, producer state rebuilt from the disk, leader epochs that began there); the high
    /// watermark comes down with it. Appends are refused (`Truncated`) from the call until it
    /// is done; appends assigned offsets at or past the cut and not yet durable fail their
    /// [`PartitionLog::wait_durable`]. `offset` at or past the log end changes nothing; below
    /// the log start is `OffsetOutOfRange`. Returns the new log end.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset, StorageError> {
        let generation = {
            let mut st = self.state.borrow_mut();
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            if st.closing || self.closed.get() {
                return Err(StorageError::Closed);
            }
            if offset.0 >= st.log_end {
                return Ok(Offset(st.log_end));
            }
            if offset.0 < st.log_start {
                return Err(StorageError::OffsetOutOfRange {
                    requested: offset.0,
                    log_start: st.log_start,
                    high_watermark: st.high_watermark,
                });
            }
            st.truncate_request = Some(st.truncate_request.map_or(offset.0, |t| t.min(offset.0)));
            st.generation
        };
        self.work_notify.notify_all();
        self.wait_until(|st| {
            if st.truncate_request.is_some() || st.generation == generation {
                return None;
            }
            // Done, or failed: a failure after the request was taken fails the log.
            if let Some(e) = st.failed_error() {
                return Some(Err(e));
            }
            // The cut is the lowest since the call (appends may follow it at once).
            let cut = st
                .truncations
                .iter()
                .filter(|(g, _)| *g > generation)
                .map(|(_, to)| *to)
                .min()
                .unwrap_or(st.log_end);
            Some(Ok(Offset(cut)))
        })
        .await
    }

    /// Replace the log by an empty one starting at `offset` (a replica installing a snapshot
    /// of its leader's log: everything it held goes, on disk and in memory, and the log
    /// continues at `offset`). The high watermark is held at `offset`. Appends are refused
    /// (`Truncated`) until it is done; appends not yet durable fail their
    /// [`PartitionLog::wait_durable`].
    pub async fn reset_to_empty(&self, offset: Offset) -> Result<(), StorageError> {
        self.flusher_request(
            |st| st.reset_request = Some(offset.0),
            |st| st.reset_request.is_some(),
        )
        .await
    }

    /// Hand the flusher a request that rebuilds the log (`ask` sets it in the state) and wait
    /// until it is done (`asked` no longer holds and the generation moved) or failed.
    pub(super) async fn flusher_request(
        &self,
        ask: impl FnOnce(&mut super::State),
        asked: impl Fn(&super::State) -> bool,
    ) -> Result<(), StorageError> {
        let generation = {
            let mut st = self.state.borrow_mut();
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            if st.closing || self.closed.get() {
                return Err(StorageError::Closed);
            }
            ask(&mut st);
            st.generation
        };
        self.work_notify.notify_all();
        self.wait_until(|st| {
            if asked(st) || st.generation == generation {
                return None;
            }
            if let Some(e) = st.failed_error() {
                return Some(Err(e));
            }
            Some(Ok(()))
        })
        .await
    }

    /// Become the leader for `epoch`: batches appended from now on carry it, and the epoch
    /// begins at the current log end in the leader-epoch cache, durable when this returns.
    /// An epoch not newer than the latest one only sets the stamp.
    pub async fn start_leader_epoch(&self, epoch: i32) -> Result<(), StorageError> {
        let version = {
            let mut st = self.state.borrow_mut();
            st.leader_epoch = epoch;
            let log_end = st.log_end;
            if st.epochs.assign(epoch, log_end) {
                st.epochs_version += 1;
            }
            st.epochs_version
        };
        self.work_notify.notify_all();
        self.wait_until(|st| (st.epochs_written >= version).then_some(Ok(())))
            .await
    }

    /// OffsetsForLeaderEpoch: the largest epoch at most `epoch` and the offset it ended at
    /// (the log end for the latest); `(-1, -1)` when unknown (see `leader_epoch`).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, Offset) {
        let st = self.state.borrow();
        let (e, end) = st.epochs.end_offset_for(epoch, st.log_end);
        (e, Offset(end))
    }

    /// Bumped by every truncation (a `truncate_to`, or a full disk giving back what it could
    /// not write); [`AppendInfo::generation`](super::AppendInfo) is the one an append saw.
    pub fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    /// A replicated partition's leader checking an idempotent batch against the producer
    /// state of what its log holds (Append, or Duplicate with the original's offsets), as
    /// [`PartitionLog::append`] does for a local partition.
    pub fn check_producer(
        &self,
        h: &crate::storage::batch::BatchHeader,
    ) -> Result<crate::storage::producer_state::Verdict, StorageError> {
        self.state.borrow().producers.check(h)
    }

    /// A replicated partition's leader checking a transaction marker against the producer
    /// state of what its log holds: its producer epoch and coordinator epoch not older than
    /// the producer's.
    pub fn check_producer_epoch(
        &self,
        h: &crate::storage::batch::BatchHeader,
        coordinator_epoch: i32,
    ) -> Result<(), StorageError> {
        self.state
            .borrow()
            .producers
            .check_marker(h, coordinator_epoch)
    }

    /// The coordinator epoch of `producer_id`'s last marker here (-1: none; DescribeProducers,
    /// and the partition's own abort of a hanging transaction, which must not fence the
    /// coordinator).
    pub fn producer_coordinator_epoch(&self, producer_id: i64) -> i32 {
        self.state
            .borrow()
            .producers
            .get(producer_id)
            .map_or(-1, |e| e.coordinator_epoch)
    }

    /// The leader-epoch cache, oldest first.
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.state.borrow().epochs.entries().to_vec()
    }
}
