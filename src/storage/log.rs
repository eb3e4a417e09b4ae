//! `PartitionLog`: one partition's append-only log of segments, with group
//! commit, a tail cache for tailing consumers, and crash recovery.
//!
//! # Ownership and concurrency
//! A `PartitionLog` is owned by exactly one shard and used as
//! `Rc<PartitionLog>` from that shard's tasks only (it is `!Send`). State
//! lives in a `RefCell` that is never borrowed across an `.await`.
//!
//! # Write path
//! `append` validates the batches, waits (FIFO) for room if too many bytes
//! are queued, then synchronously assigns offsets (rewriting each batch's
//! base offset in a copy of the request bytes), updates the in-memory
//! indexes and tail cache, queues the bytes and wakes the partition's
//! flusher task. The flusher takes everything queued, writes it with
//! direct I/O in aligned chunks (rewriting the partial last block each
//! round), then under [`FlushPolicy::Always`] fdatasyncs, and only then
//! moves the high watermark and wakes `wait_durable` and `hw_changed`
//! waiters. Appends arriving during a round go together in the next one
//! (group commit).
//!
//! # Durability
//! Under `FlushPolicy::Always`, every offset below the high watermark has
//! been fdatasync'ed: it survives kill -9 and power loss. Under
//! `FlushPolicy::Interval(d)` the high watermark moves once data is written
//! (in the OS, not necessarily on the device) and fdatasync runs at most
//! every `d`; a crash may lose up to `d` of acknowledged data on power loss
//! (not on process kill: direct I/O writes are in the kernel).
//!
//! # Failure
//! If a write or sync fails, the log stops: queued data is dropped (it was
//! never acknowledged), pending and later calls get `StorageError::Io`, the
//! high watermark stays where it was. Reopening runs recovery.
//!
//! # Idempotent producers
//! A batch with a producer id is checked against the partition's
//! [`ProducerStateTable`] in the synchronous part of `append`, together with
//! offset assignment, so the table covers queued batches too: a retry of a
//! batch not yet durable is a duplicate, answered with the original offsets
//! (the caller's `wait_durable` then waits for the original). Snapshots of
//! the table are written when a segment is sealed and at close; see
//! `producer_state` for the format and `recovery` for the replay.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use tracing::{debug, warn};

use super::batch::{self, BatchHeader};
use super::clean_shutdown::{CLEAN_SHUTDOWN_FILE, CleanShutdown};
use super::error::{IoContext, StorageError};
use super::index::{self, Indexer};
use super::io::{Env, SegmentFile};
use super::producer_state::{ProducerStateTable, Verdict, snapshot_file_name};
use super::recovery;
use super::segment::{
    INDEX_SUFFIX, Scanner, Segment, SegmentIndex, TIME_INDEX_SUFFIX, segment_path,
};
use crate::constants;
use crate::runtime::Notify;
use crate::types::Offset;

/// Largest single write issued by the flusher.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// Largest preallocation step of the active segment: fdatasync into a
/// preallocated region costs ~0.3 ms vs ~4 ms when extending the file
/// (GLOMMIO.md §4).
const PREALLOCATE_STEP_BYTES: u64 = 16 << 20;
/// Smallest step: what a new, empty partition reserves.
const PREALLOCATE_MIN_BYTES: u64 = 64 << 10;

/// How far to preallocate the active segment once `end` bytes of it are
/// written: past `end` by a step as large as what the segment holds, at
/// least [`PREALLOCATE_MIN_BYTES`], at most [`PREALLOCATE_STEP_BYTES`] and
/// the segment size. A new partition reserves 64 KiB, not 16 MiB (a fresh
/// broker's 16 offsets partitions fit on a nearly full disk), and a busy
/// one extends its file about once per 16 MiB.
pub(super) fn preallocation_target(end: u64, segment_bytes: u64) -> u64 {
    let max = PREALLOCATE_STEP_BYTES.min(align_up(segment_bytes, PREALLOCATE_MIN_BYTES));
    let step = end.clamp(PREALLOCATE_MIN_BYTES, max);
    align_up(end + 1, step)
}
/// Smallest read issued for a fetch from a segment.
const READ_CHUNK_MIN_BYTES: usize = 64 << 10;

/// When data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fdatasync before the high watermark moves, so before any consumer
    /// sees the data and before acks=-1 is answered. The default.
    Always,
    /// Write at once and move the high watermark after the write;
    /// fdatasync at most this often.
    Interval(Duration),
}

/// Per-partition log settings. Topic configs may change them while the log
/// is open ([`PartitionLog::update_config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// Roll when the active segment would exceed this. At most `u32::MAX`
    /// (index positions are u32).
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (checked at append;
    /// a recovered segment's age starts when the log is opened).
    pub segment_ms: u64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Largest single batch accepted.
    pub max_message_bytes: usize,
    pub flush: FlushPolicy,
    /// Appended-but-not-yet-written bytes before `append` waits.
    pub pending_bytes_max: usize,
    /// Recent batches kept in memory to serve tailing fetches without I/O.
    pub tail_cache_bytes: usize,
    /// Delete sealed segments whose max timestamp is older than this
    /// (`retention.ms`); -1: keep forever.
    pub retention_ms: i64,
    /// Delete the oldest sealed segments while the partition is larger
    /// than this (`retention.bytes`); -1: no limit.
    pub retention_bytes: i64,
    /// Retention applies (`cleanup.policy` contains `delete`). A
    /// compact-only topic keeps everything: compaction is not implemented.
    pub retention_enabled: bool,
    /// `message.timestamp.type=LogAppendTime`: append rewrites each batch's
    /// timestamp type and max timestamp to the append time.
    pub log_append_time: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: constants::SEGMENT_BYTES_DEFAULT,
            segment_ms: constants::SEGMENT_MS_DEFAULT,
            index_interval_bytes: constants::INDEX_INTERVAL_BYTES,
            max_message_bytes: constants::MESSAGE_BYTES_MAX_DEFAULT,
            flush: FlushPolicy::Always,
            pending_bytes_max: constants::PENDING_WRITE_BYTES_MAX,
            tail_cache_bytes: constants::TAIL_CACHE_BYTES_MAX,
            retention_ms: constants::RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            retention_enabled: true,
            log_append_time: false,
        }
    }
}

/// Offsets assigned by one `append`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub log_start_offset: Offset,
    /// The append time written into the batches under LogAppendTime, else -1.
    pub log_append_time_ms: i64,
}

/// How [`PartitionLog::open`] found the partition's last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedFrom {
    /// A valid clean-shutdown marker: the last segment was opened from its
    /// index files and the producer snapshot at the log end, without a
    /// scan or replay.
    CleanShutdown,
    /// Full recovery: the last segment was scanned batch by batch.
    Recovery,
    /// A new partition: the directory had no segment.
    Created,
}

/// What tests compare of one segment's in-memory state.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentSummary {
    pub base: i64,
    pub size: u64,
    pub next_offset: i64,
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
    pub max_timestamp: Option<(i64, i64)>,
}

/// One producer's state in a partition, for DescribeProducers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
}

/// Result of a read: whole batches, plus the partition's offsets at the
/// time of the read.
#[derive(Debug, Clone)]
pub struct FetchData {
    pub records: Bytes,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
}

/// A batch queued for the flusher.
struct Pending {
    segment_base: i64,
    /// Position of the batch in its segment, assigned at append.
    position: u64,
    bytes: Bytes,
    base_offset: i64,
    next_offset: i64,
    max_timestamp: i64,
}

/// How to read from one segment.
enum ReadPlan {
    /// No visible bytes.
    Empty,
    /// Read `[start, end)` of `file`; `start` is a batch boundary.
    Read {
        file: SegmentFile,
        start: u64,
        end: u64,
    },
}

/// A recent batch kept for tailing readers.
struct CachedBatch {
    base_offset: i64,
    next_offset: i64,
    bytes: Bytes,
}

struct State {
    /// Sorted by base offset; the last one is active (receives appends).
    segments: Vec<Segment>,
    log_end: i64,
    high_watermark: i64,
    log_start: i64,
    queue: VecDeque<Pending>,
    /// Bytes appended and not yet written (queued or being written).
    pending_bytes: usize,
    tail: VecDeque<CachedBatch>,
    tail_bytes: usize,
    /// Set when a write or sync failed: the log accepts nothing more.
    failed: Option<(io::ErrorKind, String)>,
    /// close() was called: no more appends.
    closing: bool,
    /// The flusher finished (after close or failure).
    flusher_done: bool,
    /// FIFO of appends waiting for room.
    room_waiters: VecDeque<u64>,
    next_waiter_id: u64,
    /// Idempotent producers, as of every batch assigned an offset.
    producers: ProducerStateTable,
    /// Snapshots taken at segment rolls, (offset, file bytes), oldest
    /// first: the flusher writes each once the segment before it is sealed.
    pending_snapshots: VecDeque<(i64, Vec<u8>)>,
}

impl State {
    fn failed_error(&self) -> Option<StorageError> {
        self.failed.as_ref().map(|(kind, msg)| {
            StorageError::io(
                "partition log failed earlier",
                io::Error::new(*kind, msg.clone()),
            )
        })
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn segment_mut(&mut self, base: i64) -> &mut Segment {
        let i = self.segments.partition_point(|s| s.base_offset <= base);
        assert!(
            i > 0 && self.segments[i - 1].base_offset == base,
            "no segment {base}"
        );
        &mut self.segments[i - 1]
    }
}

/// Batches of one `append` call that passed validation: the request bytes
/// and each batch's (position, size, header).
struct ValidatedBatches {
    records: Bytes,
    batches: Vec<(usize, usize, BatchHeader)>,
    idempotent: bool,
}

/// What the synchronous part of `append` did.
enum Placement {
    /// Offsets assigned (or the batch refused) at the call.
    Done(Result<AppendInfo, StorageError>),
    /// Waiting for room, in line behind every earlier call.
    Queued(RoomTicket, ValidatedBatches),
}

/// A place in the room queue (FIFO of appends waiting for
/// `pending_bytes_max`); leaving it, granted or dropped, wakes the others.
struct RoomTicket {
    log: Rc<PartitionLog>,
    id: u64,
    /// Bytes this append will queue.
    len: usize,
}

impl Drop for RoomTicket {
    fn drop(&mut self) {
        let mut st = self.log.state.borrow_mut();
        st.room_waiters.retain(|w| *w != self.id);
        drop(st);
        self.log.room_notify.notify_all();
    }
}

/// One partition's log. See the module documentation for the contracts.
pub struct PartitionLog {
    /// The disk and clock it runs on (`storage::io`).
    env: Env,
    dir: PathBuf,
    /// Current settings; replaced by `update_config` (read, never borrowed).
    cfg: Cell<LogConfig>,
    state: RefCell<State>,
    /// The high watermark moved, or the log failed or closed.
    hw_notify: Notify,
    /// Work for the flusher.
    work_notify: Notify,
    /// Pending bytes were released or a room waiter left.
    room_notify: Notify,
    /// The flusher exited.
    done_notify: Notify,
    closed: Cell<bool>,
    /// Whether open trusted a clean-shutdown marker or recovered.
    opened_from: OpenedFrom,
    /// Serialises log start moves and segment removal (retention,
    /// DeleteRecords).
    admin_lock: futures::lock::Mutex<()>,
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Wake the flusher so it sees the log is gone and exits.
        self.work_notify.notify_all();
    }
}

/// The flusher's own view of the active segment file.
struct Writer {
    segment_base: i64,
    file: SegmentFile,
    /// Logical bytes written to the file.
    written: u64,
    /// Bytes `[align_down(written), written)`: rewritten with the next
    /// write, since direct I/O writes whole aligned blocks.
    tail_block: Vec<u8>,
    /// The file is preallocated up to here.
    preallocated: u64,
    /// Written but not yet fdatasync'ed.
    dirty: bool,
    last_sync: Instant,
}

/// What recovery hands to the log.
pub(super) struct Recovered {
    pub segments: Vec<Segment>,
    pub log_end: i64,
    pub active_file: SegmentFile,
    pub active_written: u64,
    pub active_tail_block: Vec<u8>,
    pub active_preallocated: u64,
    /// Producer state as of `log_end` (snapshot + replay).
    pub producers: ProducerStateTable,
    pub opened_from: OpenedFrom,
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl PartitionLog {
    /// Open (creating the directory if absent) and recover. After a clean
    /// close (a valid `clean-shutdown` marker that agrees with the files)
    /// the last segment is opened from its index files and the producer
    /// snapshot at the log end, without a scan. Otherwise: scan the last
    /// segment batch by batch (length + CRC), truncate a torn or corrupt
    /// tail (logging a warning with what was cut), rebuild missing or
    /// damaged index files of sealed segments, restore the log end offset.
    /// Either way the marker is removed (durably) before this returns, and
    /// the high watermark starts at the log end offset. Spawns the
    /// partition's flusher task on the current shard.
    ///
    /// Call `crate::runtime::file::warm_iopoll_probe` on this shard first.
    pub async fn open(dir: PathBuf, cfg: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        Self::open_in(Env::production(), dir, cfg).await
    }

    /// [`PartitionLog::open`] on the given disk and clock (the simulation's, in tests).
    pub async fn open_in(
        env: Env,
        dir: PathBuf,
        cfg: LogConfig,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        assert!(
            cfg.segment_bytes > 0 && cfg.segment_bytes <= u64::from(u32::MAX),
            "segment_bytes out of range"
        );
        assert!(
            cfg.index_interval_bytes > 0,
            "index_interval_bytes must be > 0"
        );
        assert!(
            cfg.max_message_bytes >= batch::HEADER_LEN,
            "max_message_bytes too small"
        );
        let rec = recovery::recover(&env, &dir, &cfg).await?;
        // The log start is the first segment's base, or further when
        // DeleteRecords moved it inside that segment (persisted in
        // `log-start-offset`); never past the log end.
        let first_base = rec.segments.first().map_or(0, |s| s.base_offset);
        let log_start = read_log_start_file(&env, &dir)
            .await?
            .unwrap_or(first_base)
            .clamp(first_base, rec.log_end.max(first_base));
        let active_base = rec
            .segments
            .last()
            .expect("recovery yields an active segment")
            .base_offset;
        let writer = Writer {
            segment_base: active_base,
            file: rec.active_file,
            written: rec.active_written,
            tail_block: rec.active_tail_block,
            preallocated: rec.active_preallocated,
            dirty: false,
            last_sync: env.clock.now(),
        };
        let log = Rc::new(PartitionLog {
            env,
            dir,
            cfg: Cell::new(cfg),
            state: RefCell::new(State {
                segments: rec.segments,
                log_end: rec.log_end,
                high_watermark: rec.log_end,
                log_start,
                queue: VecDeque::new(),
                pending_bytes: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
                failed: None,
                closing: false,
                flusher_done: false,
                room_waiters: VecDeque::new(),
                next_waiter_id: 0,
                producers: rec.producers,
                pending_snapshots: VecDeque::new(),
            }),
            hw_notify: Notify::new(),
            work_notify: Notify::new(),
            room_notify: Notify::new(),
            done_notify: Notify::new(),
            closed: Cell::new(false),
            opened_from: rec.opened_from,
            admin_lock: futures::lock::Mutex::new(()),
        });
        crate::runtime::spawn_detached(flusher(Rc::downgrade(&log), writer));
        Ok(log)
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether this open trusted the clean-shutdown marker (no scan) or ran
    /// the full recovery.
    pub fn opened_from(&self) -> OpenedFrom {
        self.opened_from
    }

    /// Per segment: base, size, next offset, offset index, time index as
    /// sealed, visible max timestamp (tests compare the two open paths).
    #[cfg(test)]
    pub(super) fn segment_summaries(&self) -> Vec<SegmentSummary> {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| SegmentSummary {
                base: s.base_offset,
                size: s.size,
                next_offset: s.next_offset,
                offsets: s.offsets_index().to_vec(),
                times: s.time_index_snapshot(),
                max_timestamp: s.visible_max_timestamp,
            })
            .collect()
    }

    /// First offset not yet visible to consumers.
    /// A write or fdatasync failed: the log accepts and acknowledges
    /// nothing more until it is reopened (reads below the high watermark go
    /// on).
    pub fn failed(&self) -> bool {
        self.state.borrow().failed.is_some()
    }

    pub fn high_watermark(&self) -> Offset {
        Offset(self.state.borrow().high_watermark)
    }

    pub fn log_start_offset(&self) -> Offset {
        Offset(self.state.borrow().log_start)
    }

    /// Next offset to assign.
    pub fn log_end_offset(&self) -> Offset {
        Offset(self.state.borrow().log_end)
    }

    /// The current settings.
    pub fn cfg(&self) -> LogConfig {
        self.cfg.get()
    }

    /// Apply changed topic configs to the open log. Segment size and age
    /// apply from the next append's roll check, max.message.bytes and
    /// message.timestamp.type from the next append, retention from the next
    /// retention pass. The flush policy, index interval and memory bounds
    /// are the broker's and stay.
    pub fn update_config(&self, cfg: LogConfig) {
        assert!(
            cfg.segment_bytes > 0 && cfg.segment_bytes <= u64::from(u32::MAX),
            "segment_bytes out of range"
        );
        assert!(
            cfg.max_message_bytes >= batch::HEADER_LEN,
            "max_message_bytes too small"
        );
        let old = self.cfg.get();
        self.cfg.set(LogConfig {
            flush: old.flush,
            index_interval_bytes: old.index_interval_bytes,
            pending_bytes_max: old.pending_bytes_max,
            tail_cache_bytes: old.tail_cache_bytes,
            ..cfg
        });
    }

    /// Bytes of every segment (batches assigned offsets, written or not).
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.iter().map(|s| s.size).sum()
    }

    /// Base offset of the active (last) segment and the bytes of the
    /// segments before it: what [`PartitionLog::delete_records`] at that
    /// base would free once they are sealed.
    pub fn active_segment(&self) -> (Offset, u64) {
        let st = self.state.borrow();
        let (active, older) = st
            .segments
            .split_last()
            .expect("a log always has an active segment");
        (
            Offset(active.base_offset),
            older.iter().map(|s| s.size).sum(),
        )
    }

    /// One retention pass (run periodically by the owning shard): delete the
    /// oldest sealed segments whose max timestamp is older than
    /// `retention_ms` before `now_ms`, or while the partition without them
    /// is still at least `retention_bytes`, plus sealed segments wholly
    /// below the log start (left by DeleteRecords). Never the active
    /// segment, never a segment the flusher has not sealed yet. Returns the
    /// number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let _admin = self.admin_lock.lock().await;
        let cfg = self.cfg();
        let count = {
            let st = self.state.borrow();
            if st.closing || self.closed.get() || st.failed.is_some() {
                return Ok(0);
            }
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            let mut n = 0;
            let sealed_count = st.segments.len() - 1;
            for (i, seg) in st.segments[..sealed_count].iter().enumerate() {
                if !matches!(seg.index, SegmentIndex::Sealed { .. }) {
                    break;
                }
                let below_start = st.segments[i + 1].base_offset <= st.log_start;
                let too_old = cfg.retention_ms >= 0
                    && seg
                        .visible_max_timestamp
                        .is_some_and(|(t, _)| now_ms.saturating_sub(t) > cfg.retention_ms);
                let too_big =
                    cfg.retention_bytes >= 0 && total - seg.size >= cfg.retention_bytes as u64;
                if !(below_start || (cfg.retention_enabled && (too_old || too_big))) {
                    break;
                }
                total -= seg.size;
                n += 1;
            }
            n
        };
        self.remove_oldest_segments(count).await?;
        Ok(count)
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
        let count = {
            let st = self.state.borrow();
            let sealed_count = st.segments.len() - 1;
            st.segments[..sealed_count]
                .iter()
                .enumerate()
                .take_while(|(i, seg)| {
                    matches!(seg.index, SegmentIndex::Sealed { .. })
                        && st.segments[i + 1].base_offset <= st.log_start
                })
                .count()
        };
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
    async fn remove_oldest_segments(&self, count: usize) -> Result<(), StorageError> {
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
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, super::segment::LOG_SUFFIX] {
                let path = segment_path(&self.dir, base, suffix);
                match self.env.disk.remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StorageError::io(
                            "removing a segment file",
                            io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                        ));
                    }
                }
            }
        }
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }

    /// The partition's idempotent producers (DescribeProducers), sorted by
    /// producer id. Includes batches assigned offsets but not yet durable.
    pub fn producers(&self) -> Vec<ProducerInfo> {
        let st = self.state.borrow();
        let mut v: Vec<ProducerInfo> = st
            .producers
            .iter()
            .map(|(id, e)| ProducerInfo {
                producer_id: id,
                epoch: e.epoch,
                last_sequence: e.last_seq(),
                last_timestamp: e.last_timestamp,
            })
            .collect();
        v.sort_unstable_by_key(|p| p.producer_id);
        v
    }

    /// A listener that fires the next time the high watermark moves (or the
    /// log fails or closes). Register before checking the condition.
    pub fn hw_changed(&self) -> event_listener::EventListener {
        self.hw_notify.listen()
    }

    /// Validate every batch in `records` (magic 2, length, CRC, size limit,
    /// record count), then assign offsets and queue the batches for the
    /// flusher, waiting first (FIFO) for room if more than
    /// `pending_bytes_max` bytes are queued. Nothing is appended if any batch
    /// is invalid. The data is durable (and visible) once
    /// `wait_durable(last_offset + 1)` resolves.
    ///
    /// Order: appends take effect in the order `append` is *called*, not the
    /// order the returned futures are polled: the call itself assigns the
    /// offsets when nothing waits for room, or else takes its place in the
    /// room queue, behind every earlier call. This is what keeps the
    /// requests of one connection in order on a partition (see
    /// `server::ordering`).
    ///
    /// A batch with a producer id (idempotent) must come alone, as Kafka
    /// requires of Produce v3+. It is checked against the producer's state:
    /// a duplicate of one of its last five batches is not appended and gets
    /// that batch's offsets; a sequence gap or new epoch not starting at 0
    /// is `OutOfOrderSequence`; an older epoch is `InvalidProducerEpoch`.
    /// Transactional and control batches are refused (`Transactional`).
    pub fn append(
        self: &Rc<Self>,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        let placed = self.place_append(records);
        let log = self.clone();
        async move {
            match placed? {
                Placement::Done(info) => info,
                Placement::Queued(ticket, batches) => {
                    log.wait_for_room(&ticket).await?;
                    let info = log.assign_offsets(batches);
                    drop(ticket); // leaves the room queue, wakes the next in line
                    info
                }
            }
        }
    }

    /// The synchronous part of [`PartitionLog::append`]: validate, then
    /// assign now or take a place in the room queue.
    fn place_append(self: &Rc<Self>, records: Bytes) -> Result<Placement, StorageError> {
        if records.is_empty() {
            return Err(StorageError::InvalidRecord("empty records".into()));
        }
        let mut batches: Vec<(usize, usize, BatchHeader)> = Vec::new();
        let mut pos = 0;
        let mut idempotent = false;
        while pos < records.len() {
            let (h, size) =
                batch::validate_for_append(&records[pos..], self.cfg().max_message_bytes)?;
            if h.attributes & (batch::ATTR_TRANSACTIONAL | batch::ATTR_CONTROL) != 0 {
                return Err(StorageError::Transactional);
            }
            idempotent |= h.producer_id >= 0;
            batches.push((pos, size, h));
            pos += size;
        }
        if idempotent && batches.len() > 1 {
            return Err(StorageError::InvalidRecord(
                "an idempotent produce must carry exactly one record batch per partition".into(),
            ));
        }
        let validated = ValidatedBatches {
            records,
            batches,
            idempotent,
        };
        let ticket = {
            let mut st = self.state.borrow_mut();
            let len = validated.records.len();
            if st.room_waiters.is_empty() && self.fits(&st, len) {
                None
            } else {
                let id = st.next_waiter_id;
                st.next_waiter_id += 1;
                st.room_waiters.push_back(id);
                Some(id)
            }
        };
        Ok(match ticket {
            None => Placement::Done(self.assign_offsets(validated)),
            Some(id) => Placement::Queued(
                RoomTicket {
                    log: self.clone(),
                    id,
                    len: validated.records.len(),
                },
                validated,
            ),
        })
    }

    /// Whether `len` more bytes may be queued now. An append always fits
    /// when nothing is pending, so a batch larger than `pending_bytes_max`
    /// cannot wait forever.
    fn fits(&self, st: &State, len: usize) -> bool {
        st.pending_bytes == 0 || st.pending_bytes + len <= self.cfg().pending_bytes_max
    }

    /// Assign offsets to validated batches and queue them: no await, so
    /// offsets follow the order of the calls.
    fn assign_offsets(&self, validated: ValidatedBatches) -> Result<AppendInfo, StorageError> {
        let ValidatedBatches {
            records,
            mut batches,
            idempotent,
        } = validated;
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.failed_error() {
            return Err(e);
        }
        if st.closing {
            return Err(StorageError::Closed);
        }
        if idempotent {
            match st.producers.check(&batches[0].2)? {
                Verdict::Append => {}
                Verdict::Duplicate(dup) => {
                    return Ok(AppendInfo {
                        base_offset: Offset(dup.base_offset),
                        last_offset: Offset(dup.last_offset()),
                        log_start_offset: Offset(st.log_start),
                        log_append_time_ms: -1,
                    });
                }
            }
        }
        let mut copy = BytesMut::from(&records[..]);
        let mut next = st.log_end;
        let log_append_time_ms = if self.cfg().log_append_time {
            self.env.clock.wall_ms()
        } else {
            -1
        };
        for (pos, size, h) in &mut batches {
            let b = &mut copy[*pos..*pos + *size];
            batch::set_base_offset(b, next);
            if log_append_time_ms >= 0 {
                // The one header rewrite besides the base offset: it is
                // covered by the CRC, so the CRC is recomputed.
                batch::set_log_append_time(b, log_append_time_ms);
                h.attributes |= batch::ATTR_LOG_APPEND_TIME;
                h.max_timestamp = log_append_time_ms;
            }
            next += i64::from(h.last_offset_delta) + 1;
        }
        let copy = copy.freeze();
        let first_offset = st.log_end;
        let now = self.env.clock.now();
        for (pos, size, h) in &batches {
            let base_offset = st.log_end;
            let h = BatchHeader { base_offset, ..*h };
            self.maybe_roll(&mut st, *size as u64, h.last_offset_delta, now);
            let bytes = copy.slice(*pos..*pos + *size);
            let seg = st.active();
            let position = seg.size;
            match &mut seg.index {
                SegmentIndex::Building(ix) => ix.on_batch(&h, position, *size),
                SegmentIndex::Sealed { .. } => unreachable!("the active segment is never sealed"),
            }
            seg.size += *size as u64;
            seg.next_offset = h.next_offset();
            let segment_base = seg.base_offset;
            st.queue.push_back(Pending {
                segment_base,
                position,
                bytes: bytes.clone(),
                base_offset,
                next_offset: h.next_offset(),
                max_timestamp: h.max_timestamp,
            });
            st.tail.push_back(CachedBatch {
                base_offset,
                next_offset: h.next_offset(),
                bytes,
            });
            st.tail_bytes += *size;
            st.log_end = h.next_offset();
            if h.producer_id >= 0 {
                st.producers.update(&h);
            }
        }
        assert_eq!(st.log_end, next);
        while st.tail_bytes > self.cfg().tail_cache_bytes {
            let b = st.tail.pop_front().expect("tail bytes > 0");
            st.tail_bytes -= b.bytes.len();
        }
        st.pending_bytes += records.len();
        let info = AppendInfo {
            base_offset: Offset(first_offset),
            last_offset: Offset(st.log_end - 1),
            log_start_offset: Offset(st.log_start),
            log_append_time_ms,
        };
        drop(st);
        self.work_notify.notify_all();
        Ok(info)
    }

    /// Start a new active segment if the batch would overflow the current
    /// one, the current one is too old, or relative offsets would overflow.
    /// The file is created by the flusher when it reaches the first batch.
    fn maybe_roll(&self, st: &mut State, size: u64, last_offset_delta: i32, now: Instant) {
        let log_end = st.log_end;
        let seg = st.active();
        if seg.size == 0 {
            return;
        }
        let too_big = seg.size + size > self.cfg().segment_bytes;
        let too_old =
            now.duration_since(seg.created) >= Duration::from_millis(self.cfg().segment_ms);
        let rel_overflow =
            log_end + i64::from(last_offset_delta) - seg.base_offset > i64::from(i32::MAX);
        if too_big || too_old || rel_overflow {
            debug!(dir = %self.dir.display(), base = log_end, "rolling segment");
            // The table now covers exactly the batches below the new base.
            st.producers.remove_expired(self.env.clock.wall_ms());
            let snapshot = st.producers.encode_snapshot(log_end);
            st.pending_snapshots.push_back((log_end, snapshot));
            st.segments.push(Segment {
                base_offset: log_end,
                file: None,
                size: 0,
                visible_size: 0,
                next_offset: log_end,
                visible_max_timestamp: None,
                index: SegmentIndex::Building(Indexer::new(
                    log_end,
                    self.cfg().index_interval_bytes,
                )),
                created: now,
            });
        }
    }

    /// Wait until `ticket` is first in the room queue and its bytes fit.
    async fn wait_for_room(&self, ticket: &RoomTicket) -> Result<(), StorageError> {
        loop {
            let listener = self.room_notify.listen();
            {
                let st = self.state.borrow();
                if let Some(e) = st.failed_error() {
                    return Err(e);
                }
                if st.closing {
                    return Err(StorageError::Closed);
                }
                if st.room_waiters.front() == Some(&ticket.id) && self.fits(&st, ticket.len) {
                    return Ok(());
                }
            }
            listener.await;
        }
    }

    /// Resolves when the high watermark >= `next_offset` (durable under
    /// `FlushPolicy::Always`, written under `Interval`). Err if the log
    /// failed or was closed first.
    pub async fn wait_durable(&self, next_offset: Offset) -> Result<(), StorageError> {
        loop {
            let listener = self.hw_notify.listen();
            {
                let st = self.state.borrow();
                if st.high_watermark >= next_offset.0 {
                    return Ok(());
                }
                if let Some(e) = st.failed_error() {
                    return Err(e);
                }
                if st.flusher_done || self.closed.get() {
                    return Err(StorageError::Closed);
                }
            }
            listener.await;
        }
    }

    /// Whole batches starting with the one containing `offset`, below the
    /// high watermark, cut at batch boundaries to at most `max_bytes` except
    /// that the first batch is whole even if larger (KIP-74); batches come
    /// from one segment per call. `offset == HW` gives empty records;
    /// `offset < log start` or `> HW` is `OffsetOutOfRange`. Served from the
    /// tail cache when possible, else with one read from the segment at the
    /// sparse index position (two if the first batch is larger than that
    /// read).
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<FetchData, StorageError> {
        let offset = offset.0;
        let (hw, log_start) = {
            let st = self.state.borrow();
            if self.closed.get() || st.closing {
                return Err(StorageError::Closed);
            }
            (st.high_watermark, st.log_start)
        };
        let out = |records: Bytes| FetchData {
            records,
            high_watermark: Offset(hw),
            log_start_offset: Offset(log_start),
        };
        if offset < log_start || offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                high_watermark: hw,
            });
        }
        if offset == hw {
            return Ok(out(Bytes::new()));
        }
        if let Some(records) = self.read_from_tail(offset, hw, max_bytes) {
            return Ok(out(records));
        }
        // From the segments: the one holding `offset`, or the next ones if
        // it ends before (an empty active segment).
        // Segments are found by offset on every step (not by position):
        // retention may remove the oldest ones while this read waits.
        let mut at = offset;
        loop {
            let seg_index = {
                let st = self.state.borrow();
                st.segments
                    .partition_point(|s| s.base_offset <= at)
                    .saturating_sub(1)
            };
            match self.segment_read_plan(seg_index, offset).await? {
                None => return Ok(out(Bytes::new())),
                Some(ReadPlan::Empty) => {}
                Some(ReadPlan::Read { file, start, end }) => {
                    let interval = self.cfg().index_interval_bytes;
                    if let Some(records) =
                        read_batches(file, start, end, offset, hw, max_bytes, interval).await?
                    {
                        return Ok(out(records));
                    }
                }
            }
            let next = {
                let st = self.state.borrow();
                st.segments.get(seg_index + 1).map(|s| s.base_offset)
            };
            match next {
                Some(base) if base > at => at = base,
                _ => return Ok(out(Bytes::new())),
            }
        }
    }

    fn read_from_tail(&self, offset: i64, hw: i64, max_bytes: usize) -> Option<Bytes> {
        let st = self.state.borrow();
        let front = st.tail.front()?;
        if offset < front.base_offset {
            return None;
        }
        let i = st.tail.partition_point(|b| b.next_offset <= offset);
        let mut picked: Vec<&Bytes> = Vec::new();
        let mut total = 0usize;
        for b in st.tail.range(i..) {
            if b.base_offset >= hw {
                break;
            }
            if !picked.is_empty() && total + b.bytes.len() > max_bytes {
                break;
            }
            total += b.bytes.len();
            picked.push(&b.bytes);
        }
        assert!(
            !picked.is_empty(),
            "offset {offset} below HW {hw} must be in the tail cache"
        );
        if picked.len() == 1 {
            return Some(picked[0].clone());
        }
        let mut buf = BytesMut::with_capacity(total);
        for b in picked {
            buf.extend_from_slice(b);
        }
        Some(buf.freeze())
    }

    /// How to read `offset` from segment `i`; None past the last segment. Opens a sealed segment's
    /// file on first use.
    async fn segment_read_plan(
        &self,
        i: usize,
        offset: i64,
    ) -> Result<Option<ReadPlan>, StorageError> {
        let (file, base, start, end) = {
            let st = self.state.borrow();
            let Some(seg) = st.segments.get(i) else {
                return Ok(None);
            };
            (
                seg.file.clone(),
                seg.base_offset,
                seg.lookup_position(offset),
                seg.visible_size,
            )
        };
        if end == 0 {
            // Nothing visible (an active segment the flusher may not have
            // created yet): nothing to read, and maybe no file to open.
            return Ok(Some(ReadPlan::Empty));
        }
        let file = self.segment_file(file, base).await?;
        Ok(Some(ReadPlan::Read { file, start, end }))
    }

    /// The segment's open file, opening it read-only if needed.
    async fn segment_file(
        &self,
        file: Option<SegmentFile>,
        base: i64,
    ) -> Result<SegmentFile, StorageError> {
        if let Some(f) = file {
            return Ok(f);
        }
        let path = segment_path(&self.dir, base, super::segment::LOG_SUFFIX);
        let f = self
            .env
            .disk
            .open_read(&path)
            .await
            .ctx(|| format!("opening {}", path.display()))?;
        let mut st = self.state.borrow_mut();
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let seg = st.segment_mut(base);
        Ok(seg.file.get_or_insert(f).clone())
    }

    /// ListOffsets by timestamp: the earliest offset whose record timestamp
    /// is >= `ts`, with that timestamp; None if no visible record has one.
    /// Uses the time index to find the batch, then decodes that one batch.
    pub async fn offset_for_timestamp(
        &self,
        ts: i64,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        let hw = self.high_watermark().0;
        let count = self.state.borrow().segments.len();
        for i in 0..count {
            // Plan: skip segments whose visible max is below ts; find the
            // scan start from the time index.
            let plan = {
                let st = self.state.borrow();
                let Some(seg) = st.segments.get(i) else { break };
                match seg.visible_max_timestamp {
                    Some((max, _)) if max >= ts => {
                        let times = seg.time_index_snapshot();
                        let k = index::time_entries_below(&times, ts);
                        let start = if k == 0 {
                            0
                        } else {
                            let (_, rel) = index::time_entry(&times, k - 1);
                            seg.lookup_position(seg.base_offset + i64::from(rel))
                        };
                        Some((seg.file.clone(), seg.base_offset, start, seg.visible_size))
                    }
                    _ => None,
                }
            };
            let Some((file, base, start, end)) = plan else {
                continue;
            };
            let file = self.segment_file(file, base).await?;
            let mut sc = Scanner::new(file, start, end, READ_CHUNK_MIN_BYTES, false);
            while let Some((_, h, bytes)) = sc.next().await? {
                if h.base_offset >= hw {
                    break;
                }
                if h.max_timestamp >= ts {
                    let (offset, t) = find_record(bytes, &h, |t| t >= ts)?;
                    // DeleteRecords may have moved the start inside this batch.
                    return Ok(Some((offset.max(self.log_start_offset()), t)));
                }
            }
        }
        Ok(None)
    }

    /// ListOffsets −3: the (offset, timestamp) of the visible record with
    /// the largest timestamp (the first such), None if the log is empty.
    pub async fn max_timestamp(&self) -> Result<Option<(Offset, i64)>, StorageError> {
        let best = {
            let st = self.state.borrow();
            let mut best: Option<(i64, i64, usize)> = None;
            for (i, seg) in st.segments.iter().enumerate() {
                if let Some((ts, off)) = seg.visible_max_timestamp
                    && best.is_none_or(|(bt, _, _)| ts > bt)
                {
                    best = Some((ts, off, i));
                }
            }
            best
        };
        let Some((ts, batch_base, i)) = best else {
            return Ok(None);
        };
        let Some(ReadPlan::Read { file, start, end }) =
            self.segment_read_plan(i, batch_base).await?
        else {
            return Ok(None);
        };
        let mut sc = Scanner::new(file, start, end, READ_CHUNK_MIN_BYTES, false);
        while let Some((_, h, bytes)) = sc.next().await? {
            if h.base_offset == batch_base {
                return Ok(Some(find_record(bytes, &h, |t| t == ts)?));
            }
            if h.base_offset > batch_base {
                break;
            }
        }
        Err(StorageError::CorruptBatch(format!(
            "batch {batch_base} with the max timestamp not found"
        )))
    }

    /// Flush everything, fdatasync, seal the active segment (truncate it to
    /// its size, write its index files), write the producer snapshot at the
    /// log end, and, if all of that succeeded, the clean-shutdown marker
    /// (see `clean_shutdown`); stop the flusher. Later calls get `Closed`.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closing = true;
        self.work_notify.notify_all();
        self.room_notify.notify_all();
        loop {
            let l = self.done_notify.listen();
            if self.state.borrow().flusher_done {
                break;
            }
            l.await;
        }
        self.closed.set(true);
        self.hw_notify.notify_all();
        let (segments, failed) = {
            let mut st = self.state.borrow_mut();
            st.tail.clear();
            st.tail_bytes = 0;
            (std::mem::take(&mut st.segments), st.failed_error())
        };
        for seg in segments {
            // The flusher has exited, so only a concurrent read can still
            // hold a handle; that one is closed when the read drops it.
            if let Some(f) = seg.file.filter(|f| Rc::strong_count(f) == 1)
                && let Err(e) = f.close().await
            {
                warn!(dir = %self.dir.display(), error = %e, "closing a segment file failed");
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Close and remove the partition directory.
    pub async fn delete(&self) -> Result<(), StorageError> {
        if let Err(e) = self.close().await {
            warn!(dir = %self.dir.display(), error = %e, "closing a log being deleted failed");
        }
        self.env
            .disk
            .remove_dir_all(&self.dir)
            .await
            .ctx(|| format!("removing {}", self.dir.display()))?;
        if let Some(parent) = self.dir.parent() {
            self.env
                .disk
                .sync_dir(parent)
                .await
                .ctx(|| format!("syncing {}", parent.display()))?;
        }
        Ok(())
    }

    // ---- flusher side ----

    fn fail(&self, e: &StorageError) {
        warn!(dir = %self.dir.display(), error = %e, "partition log failed; it accepts nothing more until reopened");
        let mut st = self.state.borrow_mut();
        let kind = match e {
            StorageError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        st.failed = Some((kind, e.to_string()));
        st.queue.clear();
        st.pending_snapshots.clear();
        st.pending_bytes = 0;
        drop(st);
        self.hw_notify.notify_all();
        self.room_notify.notify_all();
    }

    /// Write (and under `Always` sync) `batches`, rolling segments as they
    /// change, and move the high watermark after each segment's part.
    async fn flush_round(&self, w: &mut Writer, batches: Vec<Pending>) -> Result<(), StorageError> {
        let mut rest = &batches[..];
        while !rest.is_empty() {
            let base = rest[0].segment_base;
            let n = rest.iter().take_while(|p| p.segment_base == base).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            if base != w.segment_base {
                assert!(base > w.segment_base, "segments only move forward");
                self.seal(w).await?;
                let snapshot = self.state.borrow_mut().pending_snapshots.pop_front();
                let (offset, bytes) = snapshot.expect("every roll queues a producer snapshot");
                assert_eq!(offset, base, "producer snapshots follow segment rolls");
                self.write_snapshot(offset, &bytes).await?;
                *w = self.create_segment(base).await?;
                recovery::remove_stale_snapshots(&self.env, &self.dir, offset).await;
            }
            self.write_group(w, group).await?;
            if self.cfg().flush == FlushPolicy::Always {
                self.sync(w).await?;
            }
            // Visible now: move the high watermark.
            let bytes: usize = group.iter().map(|p| p.bytes.len()).sum();
            let mut st = self.state.borrow_mut();
            let seg = st.segment_mut(base);
            seg.visible_size = w.written;
            for p in group {
                if seg
                    .visible_max_timestamp
                    .is_none_or(|(t, _)| p.max_timestamp > t)
                {
                    seg.visible_max_timestamp = Some((p.max_timestamp, p.base_offset));
                }
            }
            let last = group.last().expect("non-empty group");
            assert!(
                last.next_offset > st.high_watermark,
                "the high watermark only moves forward"
            );
            st.high_watermark = last.next_offset;
            assert!(st.high_watermark <= st.log_end);
            st.pending_bytes -= bytes;
            drop(st);
            self.hw_notify.notify_all();
            self.room_notify.notify_all();
        }
        Ok(())
    }

    async fn sync(&self, w: &mut Writer) -> Result<(), StorageError> {
        let started = self.env.clock.now();
        w.file
            .fdatasync()
            .await
            .ctx(|| format!("fdatasync {}", w.file.path().display()))?;
        let now = self.env.clock.now();
        crate::metrics::fsync_done(now.saturating_duration_since(started));
        w.dirty = false;
        w.last_sync = now;
        Ok(())
    }

    /// Write the batches of one segment: the kept partial block followed by
    /// the new bytes, in aligned chunks of at most `WRITE_CHUNK_BYTES`.
    async fn write_group(&self, w: &mut Writer, group: &[Pending]) -> Result<(), StorageError> {
        let align = w.file.alignment();
        assert!((WRITE_CHUNK_BYTES as u64).is_multiple_of(align));
        let new_bytes: u64 = group.iter().map(|p| p.bytes.len() as u64).sum();
        let mut expect = w.written;
        for p in group {
            assert_eq!(
                p.position, expect,
                "batch position assigned at append must match the write position"
            );
            expect += p.bytes.len() as u64;
        }
        let end = w.written + new_bytes;
        let mut file_pos = align_down(w.written, align);
        assert_eq!(w.tail_block.len() as u64, w.written - file_pos);
        // A cursor over tail_block ++ group bytes.
        let mut parts: VecDeque<&[u8]> = VecDeque::with_capacity(group.len() + 1);
        parts.push_back(&w.tail_block);
        for p in group {
            parts.push_back(&p.bytes);
        }
        let mut new_tail = Vec::new();
        while file_pos < end {
            let chunk = ((end - file_pos) as usize).min(WRITE_CHUNK_BYTES);
            let mut buf = w.file.alloc_buffer(chunk);
            let dst = buf.as_mut_slice();
            let mut filled = 0;
            while filled < chunk {
                let part = parts.front_mut().expect("bytes remain");
                let n = part.len().min(chunk - filled);
                dst[filled..filled + n].copy_from_slice(&part[..n]);
                filled += n;
                *part = &part[n..];
                if part.is_empty() {
                    parts.pop_front();
                }
            }
            let chunk_end = file_pos + chunk as u64;
            if chunk_end == end {
                let keep_from = (align_down(end, align) - file_pos) as usize;
                new_tail = dst[keep_from..chunk].to_vec();
            }
            let write_end = file_pos + buf.len() as u64;
            if write_end > w.preallocated {
                let target = preallocation_target(write_end, self.cfg().segment_bytes);
                w.file
                    .pre_allocate(target)
                    .await
                    .ctx(|| format!("preallocating {}", w.file.path().display()))?;
                w.preallocated = target;
            }
            w.file
                .write_at(buf, file_pos)
                .await
                .ctx(|| format!("writing {} at {file_pos}", w.file.path().display()))?;
            file_pos = chunk_end;
        }
        w.written = end;
        w.tail_block = new_tail;
        w.dirty = true;
        Ok(())
    }

    /// Seal the writer's segment: sync, truncate to its logical size, write
    /// its index files (durable), and switch its in-memory indexes to the
    /// mapped files.
    async fn seal(&self, w: &mut Writer) -> Result<(), StorageError> {
        let path = w.file.path().to_owned();
        self.sync(w).await?;
        w.file
            .truncate(w.written)
            .await
            .ctx(|| format!("truncating {}", path.display()))?;
        self.sync(w).await?;
        let (offsets, times) = {
            let mut st = self.state.borrow_mut();
            let seg = st.segment_mut(w.segment_base);
            assert_eq!(
                seg.size, w.written,
                "sealing a segment with unwritten batches"
            );
            match &seg.index {
                SegmentIndex::Building(ix) => (ix.offsets.clone(), ix.sealed_times()),
                SegmentIndex::Sealed { .. } => return Ok(()),
            }
        };
        let index_path = segment_path(&self.dir, w.segment_base, INDEX_SUFFIX);
        let time_path = segment_path(&self.dir, w.segment_base, TIME_INDEX_SUFFIX);
        self.env
            .write_file_durable(&index_path, &offsets)
            .await
            .ctx(|| format!("writing {}", index_path.display()))?;
        self.env
            .write_file_durable(&time_path, &times)
            .await
            .ctx(|| format!("writing {}", time_path.display()))?;
        let offsets = self
            .env
            .disk
            .map_index(&index_path)
            .await
            .ctx(|| format!("mapping {}", index_path.display()))?;
        let times = self
            .env
            .disk
            .map_index(&time_path)
            .await
            .ctx(|| format!("mapping {}", time_path.display()))?;
        // Check after reading back (paired with the checks at recovery).
        assert!(index::offset_index_is_valid(
            offsets.as_slice(),
            w.written.max(1),
            u64::from(u32::MAX)
        ));
        let mut st = self.state.borrow_mut();
        st.segment_mut(w.segment_base).index = SegmentIndex::Sealed { offsets, times };
        Ok(())
    }

    /// Create the file of a new active segment, preallocate it and make
    /// its directory entry durable.
    async fn create_segment(&self, base: i64) -> Result<Writer, StorageError> {
        let path = segment_path(&self.dir, base, super::segment::LOG_SUFFIX);
        let f = self
            .env
            .disk
            .open_rw(&path, true)
            .await
            .ctx(|| format!("creating {}", path.display()))?;
        let preallocated = preallocation_target(0, self.cfg().segment_bytes);
        f.pre_allocate(preallocated)
            .await
            .ctx(|| format!("preallocating {}", path.display()))?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        self.state.borrow_mut().segment_mut(base).file = Some(f.clone());
        Ok(Writer {
            segment_base: base,
            file: f,
            written: 0,
            tail_block: Vec::new(),
            preallocated,
            dirty: false,
            last_sync: self.env.clock.now(),
        })
    }

    /// Final step of close: everything written, synced, active segment sealed.
    async fn finish(&self, w: &mut Writer) -> Result<(), StorageError> {
        self.seal(w).await?;
        // Everything assigned is written: the table covers exactly the log.
        let (log_end, bytes) = {
            let mut st = self.state.borrow_mut();
            assert!(st.queue.is_empty() && st.high_watermark == st.log_end);
            st.producers.remove_expired(self.env.clock.wall_ms());
            (st.log_end, st.producers.encode_snapshot(st.log_end))
        };
        self.write_snapshot(log_end, &bytes).await?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        recovery::remove_stale_snapshots(&self.env, &self.dir, log_end).await;
        // Last: everything the marker vouches for is durable by now.
        let marker = {
            let st = self.state.borrow();
            let seg = st
                .segments
                .last()
                .expect("a log always has an active segment");
            assert_eq!(
                seg.base_offset, w.segment_base,
                "the writer's segment is the last"
            );
            assert_eq!(seg.size, w.written);
            assert_eq!(seg.next_offset, log_end);
            CleanShutdown {
                segment_base: seg.base_offset,
                segment_bytes: seg.size,
                log_end,
                max_timestamp: seg.visible_max_timestamp,
            }
        };
        let path = self.dir.join(CLEAN_SHUTDOWN_FILE);
        let bytes = marker.encode();
        self.env
            .replace_file_durable(&path, &bytes)
            .await
            .ctx(|| format!("writing {}", path.display()))?;
        // Paired check: the marker reads back as written.
        let back = self
            .env
            .disk
            .read(&path)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert_eq!(
            CleanShutdown::decode(&back).ok(),
            Some(marker),
            "clean-shutdown marker {} does not read back",
            path.display()
        );
        debug!(dir = %self.dir.display(), log_end, "wrote the clean-shutdown marker");
        Ok(())
    }

    /// Write a producer-state snapshot file and fdatasync it. Its directory
    /// entry is made durable by the caller's next directory sync; until
    /// then recovery falls back to an older snapshot, which is still there.
    async fn write_snapshot(&self, offset: i64, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.dir.join(snapshot_file_name(offset));
        self.env
            .write_file_durable(&path, bytes)
            .await
            .ctx(|| format!("writing {}", path.display()))?;
        // Paired check: the file reads back as the table that was written.
        let back = self
            .env
            .disk
            .read(&path)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert!(
            back == bytes,
            "producer snapshot {} does not read back",
            path.display()
        );
        Ok(())
    }
}

/// The partition's flusher: one task per log, holding only a weak
/// reference so a dropped log lets it exit.
async fn flusher(log: Weak<PartitionLog>, mut w: Writer) {
    loop {
        let listener;
        let mut sleep_for = None;
        {
            let Some(log) = log.upgrade() else { return };
            listener = log.work_notify.listen();
            let (batches, closing) = {
                let mut st = log.state.borrow_mut();
                (st.queue.drain(..).collect::<Vec<_>>(), st.closing)
            };
            let had_work = !batches.is_empty();
            let mut result = Ok(());
            if had_work {
                result = log.flush_round(&mut w, batches).await;
            }
            if result.is_ok()
                && let FlushPolicy::Interval(d) = log.cfg().flush
                && w.dirty
            {
                let due = w.last_sync + d;
                let now = log.env.clock.now();
                if now >= due {
                    result = log.sync(&mut w).await;
                } else {
                    sleep_for = Some(due - now);
                }
            }
            let more = !log.state.borrow().queue.is_empty();
            match result {
                Err(e) => {
                    log.fail(&e);
                    log.state.borrow_mut().flusher_done = true;
                    log.done_notify.notify_all();
                    return;
                }
                Ok(()) if closing && !more => {
                    if let Err(e) = log.finish(&mut w).await {
                        log.fail(&e);
                    }
                    log.state.borrow_mut().flusher_done = true;
                    log.done_notify.notify_all();
                    log.hw_notify.notify_all();
                    return;
                }
                Ok(()) => {}
            }
            if had_work || more {
                continue;
            }
        }
        match sleep_for {
            Some(d) => {
                crate::runtime::timeout(d, listener).await;
            }
            None => listener.await,
        }
    }
}

/// Decode one batch and return the first record whose timestamp satisfies
/// `want`, with that timestamp. Falls back to the batch's base offset and
/// max timestamp (e.g. LogAppendTime batches whose records carry none).
fn find_record(
    bytes: Bytes,
    h: &BatchHeader,
    want: impl Fn(i64) -> bool,
) -> Result<(Offset, i64), StorageError> {
    let mut b = bytes;
    let set = RecordBatchDecoder::decode(&mut b).map_err(|e| {
        StorageError::CorruptBatch(format!("decoding batch {}: {e}", h.base_offset))
    })?;
    for r in &set.records {
        if want(r.timestamp) {
            return Ok((Offset(r.offset), r.timestamp));
        }
    }
    Ok((Offset(h.base_offset), h.max_timestamp))
}

/// Read from a segment, starting at `start` (a batch boundary at or before
/// `offset`) and not past `end` (the visible size): skip batches before
/// `offset`, then return whole batches below `hw`, at most `max_bytes`
/// except the first. None if the segment has no batch containing or after
/// `offset`. The result is one slice of one read buffer (batches are
/// contiguous), so there is no copy beyond the read itself.
async fn read_batches(
    file: SegmentFile,
    start: u64,
    end: u64,
    offset: i64,
    hw: i64,
    max_bytes: usize,
    interval_bytes: u32,
) -> Result<Option<Bytes>, StorageError> {
    if start >= end {
        return Ok(None);
    }
    let chunk = (interval_bytes as usize + max_bytes).max(READ_CHUNK_MIN_BYTES);
    let mut sc = Scanner::new(file, start, end, chunk, false);
    // Skip to the batch containing `offset`.
    let first = loop {
        match sc.next().await? {
            None => {
                if let Some(super::segment::ScanStop::Invalid(why)) = sc.stop_reason() {
                    return Err(StorageError::CorruptBatch(format!(
                        "reading offset {offset}: {why}"
                    )));
                }
                return Ok(None);
            }
            Some((pos, h, bytes)) if h.next_offset() > offset => break (h, bytes, pos),
            Some(_) => {}
        }
    };
    let (h, first_bytes, first_pos) = first;
    if h.base_offset >= hw {
        return Ok(None);
    }
    let mut total = first_bytes.len();
    // Extend with following batches already in the same buffer (no more I/O).
    while let Some((size, whole)) = sc.peek_buffered() {
        if !whole || total + size > max_bytes {
            break;
        }
        let Some((_, h, bytes)) = sc.next().await? else {
            break;
        };
        if h.base_offset >= hw {
            break;
        }
        total += bytes.len();
    }
    if total == first_bytes.len() {
        return Ok(Some(first_bytes));
    }
    // Batches are contiguous in the file and all in the scanner's buffer.
    let out = sc
        .slice_buffered(first_pos, total as u64)
        .expect("batches read are buffered");
    Ok(Some(out))
}

/// The log start offset DeleteRecords persisted, if any. The file holds the
/// offset in decimal; it is replaced atomically (temporary file + rename),
/// so a damaged one is a broken invariant reported as corruption.
async fn read_log_start_file(
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
async fn write_log_start_file(
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
