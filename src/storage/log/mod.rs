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

mod append;
mod clean;
mod prefix;
mod read;
mod replay;
mod replica;
mod retention;
mod tail;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use super::batch::{self};
use super::error::{IoContext, StorageError};
use super::io::{Env, SegmentFile};
use super::leader_epoch::{LEADER_EPOCH_FILE, LeaderEpochCache};
use super::producer_state::ProducerStateTable;
use super::recovery;
use super::segment::Segment;
use crate::constants;
use crate::runtime::Notify;
use crate::types::Offset;

use retention::read_log_start_file;
use tail::TailCache;
pub(crate) use writer::preallocation_target;
use writer::{Pending, Writer, flusher};

pub use clean::{Cleanable, CleanerStatus, CleanerThrottle};
pub use prefix::PrefixWriter;

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
    /// A partition whose write rounds average fewer bytes zero-fills its space ahead instead
    /// of preallocating it (`writer::space_plan`); 0: always preallocate.
    pub zero_fill_below: usize,
    /// Under a journal: bytes waiting behind it that make the partition write them to its
    /// segment (`writer::journal_round`).
    pub behind_write_bytes: usize,
    /// Under a journal: rounds smaller than this go through it, larger ones straight to the
    /// segment (`writer::flush_round`); 0: none through the journal.
    pub journal_below_bytes: usize,
    /// Delete sealed segments whose max timestamp is older than this
    /// (`retention.ms`); -1: keep forever.
    pub retention_ms: i64,
    /// Delete the oldest sealed segments while the partition is larger
    /// than this (`retention.bytes`); -1: no limit.
    pub retention_bytes: i64,
    /// Retention applies (`cleanup.policy` contains `delete`).
    pub retention_enabled: bool,
    /// The log cleaner compacts this log (`cleanup.policy` contains `compact`), and appends
    /// refuse records without a key.
    pub compact: bool,
    /// `min.cleanable.dirty.ratio`: the cleaner takes the log once the dirty share of its
    /// cleanable bytes is at least this.
    pub min_cleanable_dirty_ratio: f64,
    /// `delete.retention.ms`: how long a tombstone (and a transaction marker) stays after
    /// its batch's max timestamp.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: segments holding a record newer than this stay dirty.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a log whose oldest dirty segment is older than this is
    /// cleaned whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
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
            zero_fill_below: constants::ZERO_FILL_BELOW_BYTES,
            behind_write_bytes: constants::BEHIND_WRITE_BYTES,
            journal_below_bytes: constants::JOURNAL_BELOW_BYTES,
            retention_ms: constants::RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            retention_enabled: true,
            compact: false,
            min_cleanable_dirty_ratio: constants::MIN_CLEANABLE_DIRTY_RATIO_DEFAULT,
            delete_retention_ms: constants::DELETE_RETENTION_MS_DEFAULT,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
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
    /// The log's generation when the offsets were assigned: a truncation in between (a full
    /// disk giving back what it could not write, or `truncate_to`) makes
    /// [`PartitionLog::wait_durable`] fail instead of acknowledging other data at these
    /// offsets.
    pub generation: u64,
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
    /// First offset of the producer's open transaction here, -1 if none.
    pub txn_start_offset: i64,
    /// Coordinator epoch of the producer's last marker here, -1 if none.
    pub coordinator_epoch: i32,
}

/// Result of a read: whole batches, plus the partition's offsets at the
/// time of the read.
#[derive(Debug, Clone)]
pub struct FetchData {
    pub records: Bytes,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
}

/// Whole batches as read, in log order, in one or more buffers: the tail cache hands out the
/// batches it holds without joining them, and a Fetch response sends them to the socket as
/// they are (`server::zero_copy`).
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    pub fn one(b: Bytes) -> Chunks {
        let len = b.len();
        let parts = if len == 0 { Vec::new() } else { vec![b] };
        Chunks { parts, len }
    }

    pub fn from_parts(parts: Vec<Bytes>) -> Chunks {
        let len = parts.iter().map(Bytes::len).sum();
        Chunks { parts, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// One buffer: the part itself if there is one, else a copy of them all.
    pub fn join(self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.into_iter().next().expect("one part"),
            _ => {
                let mut buf = bytes::BytesMut::with_capacity(self.len);
                for p in &self.parts {
                    buf.extend_from_slice(p);
                }
                buf.freeze()
            }
        }
    }
}

/// [`FetchData`] with the batches in [`Chunks`].
#[derive(Debug, Clone)]
pub struct FetchChunks {
    pub records: Chunks,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    /// The last stable offset at the time of the read (the high watermark when no
    /// transaction is open).
    pub last_stable_offset: Offset,
    /// For a read_committed read: the aborted transactions overlapping what was read.
    pub aborted: Vec<crate::storage::producer_state::AbortedTxn>,
}

struct State {
    /// Sorted by base offset; the last one is active (receives appends).
    segments: Vec<Segment>,
    log_end: i64,
    /// Offsets below are written, and under `FlushPolicy::Always` fdatasynced (in the
    /// journal or the segment).
    durable_end: i64,
    /// Offsets below are written to segment files; the tail cache keeps every batch past it
    /// (batches behind the journal, not yet in their segment, are read from there).
    written_end: i64,
    /// Journal file -> this partition's batches entries in it not yet in the segment files.
    journal_pinned: std::collections::BTreeMap<u64, usize>,
    /// A cut was journaled and no round since: the next one goes through the journal.
    journal_after_cut: bool,
    /// Offered to the journal writer, which takes the queue itself when its next round
    /// starts (`writer::Source`); the flusher leaves the queue alone meanwhile.
    journal_offered: bool,
    /// Rounds the journal writer took from the queue, not durable yet (oldest first). The
    /// flusher runs no round and no cut of its own while there is one.
    journal_taken: VecDeque<Vec<Pending>>,
    /// Durable in the journal by rounds the writer took, not yet handed to the flusher's
    /// write-behind list (`Writer::behind`), with their bytes and their journal files.
    journaled: Vec<Pending>,
    journaled_bytes: usize,
    journaled_pins: std::collections::BTreeMap<u64, usize>,
    /// The segment of the last batch put behind the journal: a batch of another one means
    /// the log rolled, and the flusher writes behind at once.
    behind_segment: i64,
    /// A round the writer took failed: its batches are back at the head of the queue and the
    /// flusher runs the next round itself (a full disk gives back what is not durable, any
    /// other failure fails the log, as for its own rounds).
    journal_retry: bool,
    /// The flusher is in a round or a cut of its own: the journal writer takes nothing.
    flusher_busy: bool,
    /// First offset not visible to consumers: the durable end, or with a caller-managed high
    /// watermark (replication) the smaller of the caller's and the durable end. Only moves
    /// forward, but for a truncation below it.
    high_watermark: i64,
    /// The caller-managed high watermark ([`PartitionLog::set_high_watermark`]); None: the high
    /// watermark is the durable end.
    hw_target: Option<i64>,
    /// Bumped by every truncation.
    generation: u64,
    /// The last truncations, (generation after it, offset cut to), oldest first.
    truncations: VecDeque<(u64, i64)>,
    /// The disk was full at this time: appends get `DiskFull` until a probe reserves space.
    full_since: Option<Instant>,
    /// An append asked the flusher to try reserving space again.
    probe_requested: bool,
    /// `truncate_to` is waiting for the flusher to cut the log back to this offset.
    truncate_request: Option<i64>,
    /// `reset_to_empty` is waiting for the flusher to replace the log by an empty one
    /// starting at this offset.
    reset_request: Option<i64>,
    /// Which leader epoch began where (`leader_epoch`), and its versions in memory and on disk.
    epochs: LeaderEpochCache,
    epochs_version: u64,
    epochs_written: u64,
    /// The leader epoch stamped into batches appended as leader; -1: none (single node).
    leader_epoch: i32,
    log_start: i64,
    queue: VecDeque<Pending>,
    /// Bytes appended and not yet written (queued or being written).
    pending_bytes: usize,
    tail: TailCache,
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
    /// The log cleaner's checkpoint (`clean::CHECKPOINT_FILE`): offsets below were cleaned.
    clean_end: i64,
    /// The journal's replay skips its batches below this: segments the cleaner fsynced
    /// before it began to swap them (they hold those batches, cleaned or not).
    replay_floor: i64,
    /// Bumped by every segment swap of the cleaner: a reader that opened a segment file by
    /// its path during one does not trust what it opened.
    swaps: u64,
    /// The cleaner takes nothing at or past this offset: a replicated log's Raft base (its
    /// entries are numbered from there), `i64::MAX` for a local log.
    clean_limit: i64,
    /// `adopt_prefix` is waiting for the flusher to take the prefix files in: the log start
    /// and the files' bases.
    prefix_request: Option<(i64, Vec<i64>)>,
}

impl State {
    /// Whether a truncation since `generation` cut the log below `next_offset`.
    fn truncated_below(&self, generation: u64, next_offset: i64) -> bool {
        if generation == self.generation {
            return false;
        }
        if self
            .truncations
            .front()
            .is_none_or(|(g, _)| *g > generation + 1)
        {
            return true; // older than the truncations kept: assume the worst
        }
        self.truncations
            .iter()
            .any(|(g, to)| *g > generation && next_offset > *to)
    }

    /// Move the high watermark as far as the durable end and the caller's target allow.
    fn advance_high_watermark(&mut self) -> bool {
        let hw = self
            .hw_target
            .map_or(self.durable_end, |t| t.min(self.durable_end));
        if hw > self.high_watermark {
            self.high_watermark = hw;
            // Forget transactions the high watermark made stable (their markers are below it).
            self.producers.last_stable_offset(hw);
            true
        } else {
            false
        }
    }

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

/// One partition's log. See the module documentation for the contracts.
pub struct PartitionLog {
    /// Itself, for the journal writer's list of offered partitions.
    me: Weak<PartitionLog>,
    /// The disk and clock it runs on (`storage::io`).
    env: Env,
    dir: PathBuf,
    /// The directory's name: the partition's name in the shard journal.
    name: Rc<str>,
    /// When in a journal file's fill it writes behind what the file before holds
    /// (`journal::pressure_slot`).
    slot: usize,
    /// Replaying the journal at open: rounds go to the segments (synced), not the journal.
    replaying: Cell<bool>,
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
    /// What the log cleaner did here (`clean`).
    cleaner: Cell<CleanerStatus>,
    /// Open transactions as the hanging-transaction check saw them: (producer id, first
    /// offset) -> when it first saw it open ([`PartitionLog::long_open_transactions`]).
    txn_seen: RefCell<HashMap<(i64, i64), Instant>>,
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Wake the flusher so it sees the log is gone and exits.
        self.work_notify.notify_all();
    }
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

/// Remove `path`; one that is not there is no error.
pub(super) async fn remove_if_exists(
    env: &Env,
    path: &std::path::Path,
) -> Result<(), StorageError> {
    match env.disk.remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(
            "removing a file",
            io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        )),
    }
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
        // A log cleaner swap a crash interrupted is finished (or undone) before any segment
        // is read.
        clean::recover_swap(&env, &dir).await?;
        let mut rec = recovery::recover(&env, &dir, &cfg).await?;
        let epochs = read_leader_epochs(&env, &dir, rec.log_end).await?;
        // The log start is the first segment's base, or further when
        // DeleteRecords moved it inside that segment (persisted in
        // `log-start-offset`); never past the log end.
        let first_base = rec.segments.first().map_or(0, |s| s.base_offset);
        let log_start = read_log_start_file(&env, &dir)
            .await?
            .unwrap_or(first_base)
            .clamp(first_base, rec.log_end.max(first_base));
        let (clean_end, replay_floor) = clean::read_checkpoint(&env, &dir).await?;
        let writer = Writer::recovered(&mut rec, env.clock.now());
        let name: Rc<str> = dir
            .file_name()
            .map_or_else(|| dir.to_string_lossy(), |n| n.to_string_lossy())
            .into();
        let active_base = writer.segment_base;
        let log = Rc::new_cyclic(|me| PartitionLog {
            me: me.clone(),
            slot: crate::storage::journal::pressure_slot(&name),
            env,
            dir,
            name,
            replaying: Cell::new(false),
            cfg: Cell::new(cfg),
            state: RefCell::new(State {
                segments: std::mem::take(&mut rec.segments),
                log_end: rec.log_end,
                durable_end: rec.log_end,
                written_end: rec.log_end,
                journal_pinned: Default::default(),
                journal_after_cut: false,
                journal_offered: false,
                journal_taken: VecDeque::new(),
                journaled: Vec::new(),
                journaled_bytes: 0,
                journaled_pins: Default::default(),
                behind_segment: active_base,
                journal_retry: false,
                flusher_busy: false,
                high_watermark: rec.log_end,
                hw_target: None,
                generation: 0,
                truncations: VecDeque::new(),
                full_since: None,
                probe_requested: false,
                truncate_request: None,
                reset_request: None,
                epochs,
                epochs_version: 0,
                epochs_written: 0,
                leader_epoch: -1,
                log_start,
                queue: VecDeque::new(),
                pending_bytes: 0,
                tail: TailCache::default(),
                failed: None,
                closing: false,
                flusher_done: false,
                room_waiters: VecDeque::new(),
                next_waiter_id: 0,
                producers: std::mem::take(&mut rec.producers),
                pending_snapshots: VecDeque::new(),
                clean_end,
                replay_floor,
                clean_limit: i64::MAX,
                prefix_request: None,
                swaps: 0,
            }),
            hw_notify: Notify::new(),
            work_notify: Notify::new(),
            room_notify: Notify::new(),
            done_notify: Notify::new(),
            closed: Cell::new(false),
            opened_from: rec.opened_from,
            admin_lock: futures::lock::Mutex::new(()),
            txn_seen: RefCell::new(HashMap::new()),
            cleaner: Cell::new(CleanerStatus::default()),
        });
        crate::runtime::spawn_detached(flusher(Rc::downgrade(&log), writer));
        if let Some(journal) = log.env.journal.clone() {
            let replay = journal
                .take_replay(&log.name)
                .await
                .ctx(|| format!("reading the journal for {}", log.dir.display()))?;
            // A clean close wrote everything journaled before it to the segments.
            if let Some(r) = replay
                && log.opened_from != OpenedFrom::CleanShutdown
            {
                log.replaying.set(true);
                let replayed = log.replay_journal(r).await;
                log.replaying.set(false);
                replayed?;
                // A log start DeleteRecords moved past what the segments held applies now.
                if let Some(start) = read_log_start_file(&log.env, &log.dir).await? {
                    let mut st = log.state.borrow_mut();
                    st.log_start = st.log_start.max(start.min(st.log_end));
                }
            }
        }
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
    /// Offsets below are in the segment files (tests).
    #[cfg(test)]
    pub(super) fn written_end(&self) -> i64 {
        self.state.borrow().written_end
    }

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

    /// A write or fdatasync failed: the log accepts and acknowledges
    /// nothing more until it is reopened (reads below the high watermark go
    /// on).
    pub fn failed(&self) -> bool {
        self.state.borrow().failed.is_some()
    }

    /// First offset not yet visible to consumers.
    pub fn high_watermark(&self) -> Offset {
        Offset(self.state.borrow().high_watermark)
    }

    /// First offset not yet durable (written and, under `FlushPolicy::Always`, fdatasynced):
    /// what this replica can vouch for after a crash.
    pub fn durable_end_offset(&self) -> Offset {
        Offset(self.state.borrow().durable_end)
    }

    /// Whether the disk was full at the last attempt to write or reserve space: appends get
    /// `DiskFull` (KAFKA_STORAGE_ERROR) until space is found again.
    pub fn disk_full(&self) -> bool {
        self.state.borrow().full_since.is_some()
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

    /// Set the tail cache's bound (the shard shares its budget among its partitions), trimming
    /// the cache at once.
    pub fn set_tail_cache_bytes(&self, bytes: usize) {
        let mut cfg = self.cfg.get();
        cfg.tail_cache_bytes = bytes;
        self.cfg.set(cfg);
        let mut st = self.state.borrow_mut();
        let written_end = st.written_end;
        st.tail.trim(bytes, written_end);
    }

    /// Bytes held by the tail cache.
    pub fn tail_cache_used(&self) -> usize {
        self.state.borrow().tail.bytes()
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
                txn_start_offset: e.txn_first_offset,
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        v.sort_unstable_by_key(|p| p.producer_id);
        v
    }

    /// The last stable offset: the first offset of the oldest transaction still open (or
    /// whose marker is not yet below the high watermark), or the high watermark, and never
    /// below the log start. Consumers reading committed data read below it.
    pub fn last_stable_offset(&self) -> Offset {
        let mut st = self.state.borrow_mut();
        let hw = st.high_watermark;
        // An open transaction whose first records retention or DeleteRecords removed: the
        // log start bounds it, as in Kafka.
        let log_start = st.log_start;
        Offset(st.producers.last_stable_offset(hw).max(log_start))
    }

    /// How `producer_id`'s transaction holding its batch at `offset` ended here: None while
    /// it is open, Some(true) committed, Some(false) aborted (as of the markers appended).
    pub fn txn_outcome(&self, producer_id: i64, offset: i64) -> Option<bool> {
        self.state
            .borrow()
            .producers
            .txn_outcome(producer_id, offset)
    }

    /// Transactions open here for at least `limit` since this check first saw them open
    /// (called by the shard's retention pass; time since open is unknown after a restart,
    /// so it counts from the first check): (producer id, its epoch here, first offset).
    pub fn long_open_transactions(&self, limit: Duration) -> Vec<(i64, i16, i64)> {
        let now = self.env.clock.now();
        let st = self.state.borrow();
        let open = st.producers.open_transactions();
        let mut seen = self.txn_seen.borrow_mut();
        seen.retain(|k, _| open.contains(k));
        open.into_iter()
            .filter(|k| now.saturating_duration_since(*seen.entry(*k).or_insert(now)) >= limit)
            .map(|(pid, first)| {
                let epoch = st.producers.get(pid).map_or(0, |e| e.epoch);
                (pid, epoch, first)
            })
            .collect()
    }

    /// What `producer_id` has written here, to notice a change: its epoch, last batch's base
    /// offset and open transaction's first offset.
    pub fn producer_mark(&self, producer_id: i64) -> Option<(i16, i64, i64)> {
        let st = self.state.borrow();
        let e = st.producers.get(producer_id)?;
        Some((
            e.epoch,
            e.last_batch().map_or(-1, |b| b.base_offset),
            e.txn_first_offset,
        ))
    }

    /// Transactions open in this partition: (producer id, first offset), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.state.borrow().producers.open_transactions()
    }

    /// A listener that fires the next time the high watermark moves (or the
    /// log fails or closes). Register before checking the condition.
    pub fn hw_changed(&self) -> event_listener::EventListener {
        self.hw_notify.listen()
    }

    /// Resolves when the append that returned `info` is durable (fdatasynced under
    /// `FlushPolicy::Always`, written under `Interval`). Err if the log failed or closed
    /// first, or if it was truncated below the append in between (`DiskFull` when a full disk
    /// gave it back, `Truncated` otherwise): the offsets may by then hold other data.
    pub async fn wait_durable(&self, info: &AppendInfo) -> Result<(), StorageError> {
        let next = info.last_offset.0 + 1;
        self.wait_until(|st| {
            if st.truncated_below(info.generation, next) {
                return Some(Err(match st.full_since {
                    Some(_) => StorageError::DiskFull(format!(
                        "offsets {}..{next} were given back unwritten",
                        info.base_offset.0
                    )),
                    None => StorageError::Truncated {
                        offset: info.base_offset.0,
                    },
                }));
            }
            (st.durable_end >= next).then_some(Ok(()))
        })
        .await
    }

    /// Wait (woken by the high-watermark signal) until `check` decides; a log that failed or
    /// closed first ends the wait with its error.
    async fn wait_until<T>(
        &self,
        mut check: impl FnMut(&State) -> Option<Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        // Checked before a listener is taken (most waits are decided already: the round that
        // made the batch durable woke an earlier waiter), and again after it is registered, so
        // a notification in between is not missed.
        let mut listener = None;
        loop {
            {
                let st = self.state.borrow();
                if let Some(result) = check(&st) {
                    return result;
                }
                if let Some(e) = st.failed_error() {
                    return Err(e);
                }
                if st.flusher_done || self.closed.get() {
                    return Err(StorageError::Closed);
                }
            }
            match listener.take() {
                Some(registered) => registered.await,
                None => listener = Some(self.hw_notify.listen()),
            }
        }
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

    /// Close and remove the partition directory. Under a journal, the deletion is journaled
    /// (and durable) first, so a replay never brings the partition's batches back into a
    /// partition of the same name created later.
    pub async fn delete(&self) -> Result<(), StorageError> {
        if let Err(e) = self.close().await {
            warn!(dir = %self.dir.display(), error = %e, "closing a log being deleted failed");
        }
        if let Some(j) = self.journal() {
            j.record(super::journal::Entry::Delete {
                name: self.name.clone(),
            })
            .await
            .ctx(|| format!("journaling the deletion of {}", self.dir.display()))?;
            // Whatever of it the journal still holds is void now.
            self.release_all_journal_pins();
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
}

/// The leader-epoch checkpoint, cut to the recovered log end. Replaced atomically, so a
/// damaged one is a broken invariant reported as corruption.
async fn read_leader_epochs(
    env: &Env,
    dir: &std::path::Path,
    log_end: i64,
) -> Result<LeaderEpochCache, StorageError> {
    let path = dir.join(LEADER_EPOCH_FILE);
    let Some(bytes) = env
        .read_if_exists(&path)
        .await
        .ctx(|| format!("reading {}", path.display()))?
    else {
        return Ok(LeaderEpochCache::default());
    };
    let mut epochs = LeaderEpochCache::decode(&bytes)
        .map_err(|e| StorageError::CorruptBatch(format!("{}: {e}", path.display())))?;
    epochs.truncate_from_end(log_end);
    Ok(epochs)
}
