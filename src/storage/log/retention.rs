//! Retention and DeleteRecords: moving the log start, removing the oldest segments.

use std::io;
use std::rc::Rc;

use tracing::{debug, warn};

use super::*;
use crate::constants;
use crate::storage::error::{IoContext, StorageError};
use crate::storage::io::Env;
use crate::storage::segment::{
    INDEX_SUFFIX, Segment, SegmentIndex, TIME_INDEX_SUFFIX, segment_path,
};
use crate::types::Offset;

impl PartitionLog {
    /// One retention pass (run periodically by the owning shard): delete the
    /// oldest sealed segments whose max timestamp is older than
    /// `retention_ms` before `now_ms`, or while the partition without them
    /// is still at least `retention_bytes`, plus sealed segments wholly
    /// below the log start (left by DeleteRecords). Never the active
    /// segment, never a segment the flusher has not sealed yet. Returns the
    /// number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let _admin = self.admin_lock.lock().await;
        let count = self.retention_count(now_ms);
        self.remove_oldest_segments(count).await?;
        Ok(count)
    }

    /// Where a retention pass would move the start of the segments to (the base of the first
    /// segment it keeps), if it would remove any: for a replicated log, whose Raft base must
    /// move first ([`PartitionLog::remove_segments_below`] then removes them).
    pub fn retention_target(&self, now_ms: i64) -> Option<Offset> {
        let count = self.retention_count(now_ms);
        (count > 0).then(|| Offset(self.state.borrow().segments[count].base_offset))
    }

    /// The first segment's base offset (the oldest batch still on disk; the log start may be
    /// further, inside that segment).
    pub fn first_segment_base(&self) -> Offset {
        let st = self.state.borrow();
        Offset(st.segments.first().map_or(st.log_start, |s| s.base_offset))
    }

    /// The base of the last segment at or below `offset` (where a log whose start is `offset`
    /// could begin on disk).
    pub fn segment_base_at(&self, offset: Offset) -> Offset {
        let st = self.state.borrow();
        let i = st
            .segments
            .partition_point(|s| s.base_offset <= offset.0)
            .saturating_sub(1);
        Offset(st.segments.get(i).map_or(st.log_start, |s| s.base_offset))
    }

    /// Remove the sealed segments wholly below `offset` (a replicated log, once its Raft base
    /// is at or past `offset`). Returns the number removed.
    pub async fn remove_segments_below(&self, offset: Offset) -> Result<usize, StorageError> {
        let _admin = self.admin_lock.lock().await;
        {
            let st = self.state.borrow();
            if st.closing || self.closed.get() || st.failed.is_some() {
                return Ok(0);
            }
        }
        let count = self.count_below(offset.0);
        self.remove_oldest_segments(count).await?;
        Ok(count)
    }

    /// How many of the oldest segments lie wholly below `offset` and can go: sealed, with the
    /// next one on disk.
    fn count_below(&self, offset: i64) -> usize {
        let st = self.state.borrow();
        let sealed_count = st.segments.len() - 1;
        st.segments[..sealed_count]
            .iter()
            .enumerate()
            .take_while(|(i, seg)| {
                matches!(seg.index, SegmentIndex::Sealed { .. })
                    && st.segments[i + 1].on_disk
                    && st.segments[i + 1].base_offset <= offset
            })
            .count()
    }

    /// Move the log start offset to `offset` without removing segments (a replicated log
    /// applying a committed DeleteRecords: the segments go once the Raft base moves past
    /// them). Persisted (`log-start-offset`) before it takes effect; never past the log end,
    /// never back. Returns the log start.
    pub async fn move_log_start(&self, offset: Offset) -> Result<Offset, StorageError> {
        let _admin = self.admin_lock.lock().await;
        let target = {
            let st = self.state.borrow();
            if st.closing || self.closed.get() {
                return Err(StorageError::Closed);
            }
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            offset.0.min(st.log_end)
        };
        if target > self.state.borrow().log_start {
            write_log_start_file(&self.env, &self.dir, target).await?;
            let mut st = self.state.borrow_mut();
            st.log_start = st.log_start.max(target);
        }
        Ok(self.log_start_offset())
    }

    /// How many of the oldest segments a retention pass removes now.
    fn retention_count(&self, now_ms: i64) -> usize {
        let cfg = self.cfg();
        {
            let st = self.state.borrow();
            if st.closing || self.closed.get() || st.failed.is_some() {
                return 0;
            }
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            let mut n = 0;
            // Segments whose batches carry no timestamp (-1: Raft's control batches) have no
            // age of their own: they go with the next segment that is old enough, and stay
            // with the next one that is not. (count, bytes) of those waiting.
            let mut undated = (0usize, 0u64);
            let sealed_count = st.segments.len() - 1;
            for (i, seg) in st.segments[..sealed_count].iter().enumerate() {
                if !matches!(seg.index, SegmentIndex::Sealed { .. }) || !st.segments[i + 1].on_disk
                {
                    break;
                }
                let below_start = st.segments[i + 1].base_offset <= st.log_start;
                let time = seg
                    .visible_max_timestamp
                    .map(|(t, _)| t)
                    .filter(|t| *t >= 0);
                let too_old = cfg.retention_ms >= 0
                    && time.is_some_and(|t| now_ms.saturating_sub(t) > cfg.retention_ms);
                let too_big = cfg.retention_bytes >= 0
                    && total - undated.1 - seg.size >= cfg.retention_bytes as u64;
                if below_start || (cfg.retention_enabled && (too_old || too_big)) {
                    total -= undated.1 + seg.size;
                    n += undated.0 + 1;
                    undated = (0, 0);
                } else if cfg.retention_enabled && cfg.retention_ms >= 0 && time.is_none() {
                    undated = (undated.0 + 1, undated.1 + seg.size);
                } else {
                    break;
                }
            }
            n
        }
    }

    /// DeleteRecords: move the log start offset to `offset` (-1: the high
    /// watermark) and delete the sealed segments wholly below it. A start
    /// inside a segment is persisted (`log-start-offset`, durable before it
    /// takes effect) so it survives a restart. Returns the new log start
    /// (the low watermark). `offset` above the high watermark is
    /// `OffsetOutOfRange`; below the current start changes nothing.
    pub async fn delete_records(&self, offset: i64) -> Result<Offset, StorageError> {
        let _admin = self.admin_lock.lock().await;
        let (hw, log_start) = {
            let st = self.state.borrow();
            if st.closing || self.closed.get() {
                return Err(StorageError::Closed);
            }
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            (st.high_watermark, st.log_start)
        };
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                high_watermark: hw,
            });
        }
        if target > log_start {
            write_log_start_file(&self.env, &self.dir, target).await?;
            let mut st = self.state.borrow_mut();
            st.log_start = st.log_start.max(target);
        }
        let count = self.count_below(self.log_start_offset().0);
        self.remove_oldest_segments(count).await?;
        Ok(self.log_start_offset())
    }

    /// Remove the `count` oldest segments (all sealed, never the active
    /// one): drop them from the state and move the log start to the next
    /// segment's base first, so no reader is sent to them, then delete their
    /// files, index files first and the `.log` last, oldest segment first:
    /// after a crash in the middle the first remaining `.log` is still the
    /// log start (recovery rebuilds a missing index). Caller holds
    /// `admin_lock`.
    pub(super) async fn remove_oldest_segments(&self, count: usize) -> Result<(), StorageError> {
        if count == 0 {
            return Ok(());
        }
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            assert!(
                count < st.segments.len(),
                "the active segment is never removed"
            );
            let new_start = st.segments[count].base_offset;
            let removed: Vec<Segment> = st.segments.drain(..count).collect();
            assert!(
                removed
                    .iter()
                    .all(|s| matches!(s.index, SegmentIndex::Sealed { .. }))
            );
            st.log_start = st.log_start.max(new_start);
            removed
        };
        for seg in removed {
            let base = seg.base_offset;
            debug!(dir = %self.dir.display(), base, "deleting segment (retention)");
            if let Some(f) = seg.file.filter(|f| Rc::strong_count(f) == 1)
                && let Err(e) = f.close().await
            {
                warn!(dir = %self.dir.display(), error = %e, "closing a deleted segment failed");
            }
            drop(seg.index);
            for suffix in [
                INDEX_SUFFIX,
                TIME_INDEX_SUFFIX,
                crate::storage::segment::LOG_SUFFIX,
            ] {
                remove_if_exists(&self.env, &segment_path(&self.dir, base, suffix)).await?;
            }
        }
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }
}

/// The log start offset DeleteRecords persisted, if any. The file holds the
/// offset in decimal; it is replaced atomically (temporary file + rename),
/// so a damaged one is a broken invariant reported as corruption.
pub(super) async fn read_log_start_file(
    env: &Env,
    dir: &std::path::Path,
) -> Result<Option<i64>, StorageError> {
    let path = dir.join(constants::LOG_START_OFFSET_FILE);
    match env.disk.read(&path).await {
        Ok(bytes) => match String::from_utf8_lossy(&bytes).trim().parse::<i64>() {
            Ok(v) if v >= 0 => Ok(Some(v)),
            _ => Err(StorageError::CorruptBatch(format!(
                "{} does not hold an offset: {:?}",
                path.display(),
                String::from_utf8_lossy(&bytes)
            ))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("reading the log start offset", e)),
    }
}

/// Persist `offset` as the log start: write a temporary file durably,
/// rename it over `log-start-offset`, sync the directory, read it back.
pub(super) async fn write_log_start_file(
    env: &Env,
    dir: &std::path::Path,
    offset: i64,
) -> Result<(), StorageError> {
    let path = dir.join(constants::LOG_START_OFFSET_FILE);
    env.replace_file_durable(&path, format!("{offset}\n").as_bytes())
        .await
        .ctx(|| format!("replacing {}", path.display()))?;
    // Paired check: the file reads back as the offset written.
    assert_eq!(read_log_start_file(env, dir).await?, Some(offset));
    Ok(())
}
