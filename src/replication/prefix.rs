//! The compacted prefix of a replicated partition.
//!
//! A compacted partition's Raft base moves like any other's (Raft forgets the entries below
//! it), but the segments below the base stay: they are the compacted log, the latest record
//! of every key, which the log cleaner rewrites in place (below the base only). So its
//! [`LogBase`] has a log start below its offset, and a snapshot sent to a follower says so.
//! A follower installing such a snapshot empties its log at the base as for any snapshot,
//! then copies `[log start, base)` from the partition's leader through a [`PrefixSource`]
//! (the leader's Kafka listener: Fetch), byte for byte at the leader's offsets, and takes it
//! in at once ([`crate::storage::log::PrefixWriter`]). Only then is the install finished in
//! `raft-state`: until it is, the replica takes part in nothing (its ready rounds wait; a
//! failed copy is tried again after a backoff), and a restart empties the log and copies
//! again. The snapshot itself is acknowledged at once: Raft's part of it, the base, is
//! durable, and a replica with its prefix pending never votes, campaigns or acknowledges
//! entries, so it can neither lead without the prefix nor count toward a commit meanwhile.

use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use tracing::{info, warn};

use super::replica::{Replica, ReplicaError};
use super::store::LogBase;
use crate::storage::error::StorageError;
use crate::types::Offset;

/// How long one fetch of a prefix's chunk may take.
pub const PREFIX_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest backoff, in ticks, before a failed copy is tried again.
const RETRY_BACKOFF_TICKS_MAX: u64 = 256;

/// What a prefix source answered for one fetch.
#[derive(Debug, Clone, Default)]
pub struct PrefixChunk {
    /// The source's log start: batches below it are gone there (retention or DeleteRecords).
    pub log_start: i64,
    /// Whole batches from the one holding the offset asked for (a partial batch may end it).
    pub records: Bytes,
}

/// Where a replica copies a compacted prefix from.
pub trait PrefixSource {
    /// The partition's batches from `from` on, read from its leader (`leader`: Raft's hint,
    /// None when this replica knows none), at most about a fetch's worth.
    fn fetch(
        &self,
        leader: Option<u64>,
        from: i64,
    ) -> LocalBoxFuture<'static, Result<PrefixChunk, String>>;
}

/// Why one copy failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Replica {
    /// Whether `base` names a compacted prefix below it that this replica must copy.
    pub(super) fn has_prefix(base: &LogBase) -> bool {
        base.log_start < base.offset
    }

    /// Copy the compacted prefix below `base` (the log is empty at `base.offset`) and finish
    /// the install in `raft-state`: true once done. A copy that failed for a reason that may
    /// pass (the leader unreachable or changing, bad bytes on the way) leaves the install
    /// pending, tried again after a backoff in ticks; a failure of this replica's disk is an
    /// error.
    pub(super) async fn install_prefix(&self, base: LogBase) -> Result<bool, ReplicaError> {
        match self.copy_prefix(&base).await {
            Ok(bytes) => {
                info!(dir = %self.dir().display(), base = base.offset, log_start = self.log().log_start_offset().get(), bytes, "copied the compacted prefix from the leader");
            }
            Err(CopyError::Storage(e)) if !e.is_retriable_copy() => return Err(e.into()),
            Err(e) => {
                let ticks = self.back_off_prefix(RETRY_BACKOFF_TICKS_MAX);
                warn!(dir = %self.dir().display(), base = base.offset, error = %e, retry_ticks = ticks, "copying the compacted prefix failed: trying again");
                return Ok(false);
            }
        }
        self.set_pending_prefix(None);
        self.finish_install().await?;
        self.count_prefix_copied();
        Ok(true)
    }

    /// One copy of the prefix below `base`; the bytes copied.
    async fn copy_prefix(&self, base: &LogBase) -> Result<u64, CopyError> {
        let source = self
            .prefix_source()
            .ok_or_else(|| CopyError::Source("no prefix source".into()))?;
        let log = self.log().clone();
        if log.log_end_offset().0 != base.offset || log.size_bytes() > 0 {
            // An earlier copy's half (taken in at once, or not at all: this is a prefix
            // adopted but not recorded as such, or a log that moved on; never entries past
            // the base, which wait for the copy).
            log.reset_to_empty(Offset(base.offset)).await?;
        }
        let mut w = log.prefix_writer().await?;
        w.skip_to(base.log_start);
        let mut log_start = base.log_start;
        while !w.is_complete() {
            if self.is_stopping() {
                return Err(CopyError::Source("the replica is stopping".into()));
            }
            let from = w.next_offset();
            let chunk =
                crate::runtime::timeout(PREFIX_FETCH_TIMEOUT, source.fetch(self.leader(), from))
                    .await
                    .ok_or_else(|| {
                        CopyError::Source(format!("no answer within {PREFIX_FETCH_TIMEOUT:?}"))
                    })?
                    .map_err(CopyError::Source)?;
            if chunk.log_start > from {
                log_start = log_start.max(chunk.log_start);
                w.skip_to(chunk.log_start);
                continue;
            }
            if w.push(&chunk.records).await? == 0 && !w.is_complete() {
                return Err(CopyError::Source(format!(
                    "the leader returned no batch at or past offset {from} ({} bytes)",
                    chunk.records.len()
                )));
            }
        }
        let bytes = w.bytes();
        log.adopt_prefix(w, Offset(log_start.min(base.offset)))
            .await?;
        log.set_clean_limit(Offset(base.offset));
        Ok(bytes)
    }
}

impl StorageError {
    /// A copy failing with this is tried again (bad bytes from the network, the leader's
    /// log changing underneath); other errors (the disk) fail the replica.
    fn is_retriable_copy(&self) -> bool {
        matches!(
            self,
            StorageError::CorruptBatch(_) | StorageError::NotContiguous { .. }
        )
    }
}
