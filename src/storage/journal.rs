//! The shard journal: one sequential file per shard that makes a round of every partition's
//! appends durable with one direct write and one fdatasync.
//!
//! # Why
//! With a segment file per partition, a shard with a thousand partitions receiving a batch
//! each per round writes a thousand small blocks per round (each rewriting the 4 KiB block
//! its last round ended in), and the disk's work per byte produced grows with the partition
//! count. The journal turns a round into one write: a partition with a small queue is
//! offered to the shard's journal writer ([`Journal::offer`]), which takes its batches when
//! the next round starts ([`Source::take`]), together with the entries flushers submitted
//! ([`Journal::submit`], e.g. the first round after a cut); it lays them out one after the
//! other in one aligned buffer, writes it at the end of the current journal file and
//! fdatasyncs it; then every partition of the round is durable, and the writer completes the
//! partitions it took itself ([`Source::done`]).
//! Appends arriving meanwhile ride the next round (group commit across partitions).
//!
//! The partitions' segment files are then written *behind* the journal, without a sync per
//! round: a partition keeps its durable batches in memory (its tail cache holds them) and
//! writes them to its segment once they add up to a useful size, or when the journal asks
//! (below). A journal file can go once every batch it holds is in its segment file and a
//! file-system sync that started after those writes has completed.
//!
//! # Files
//! `<data>/journal/<generation, 10 digits>-<shard, 3 digits>/<first round, 20 digits>-<salt,
//! 8 hex digits>.jnl`.
//! Each broker start is a new generation (the shard count may change between starts, so a
//! generation's streams are read by every shard at the next start). A file is preallocated to
//! [`JournalConfig::file_bytes`] (4 MiB at a time); a round that does not fit starts the next
//! file. When a file
//! is left behind, the journal raises its *flush mark*: every partition holding batches
//! journaled in an older file writes them to its segment, each at its own step
//! ([`pressure_slot`]) of the next file's fill, so the shard's partitions do not all write at
//! once (memory held for deferred writes is bounded by about two journal files per shard).
//! The reclaimer deletes the oldest file once
//! nothing in it is outstanding, after a file-system sync.
//!
//! # Format
//! A round starts at an aligned position:
//! `magic "SLJ1" u32 | round u64 | body length u32 | entry count u32 | CRC32C u32` (24 bytes,
//! big-endian; the CRC covers the file's salt, the round number, lengths and body), then the
//! body, then zeros to the next alignment. Entries: `kind u8 | name length u16 | name |
//! base i64 | next i64 | payload length u32 | payload`. Kinds: batches (the payload is whole record batches
//! `base..next` of the partition directory `name`, as stored), truncate (the partition was
//! cut back to `base`: entries before it at or past `base` are void) and delete (the partition
//! was deleted: every entry before it is void).
//!
//! # Replay
//! Each stream (a generation's shard directory) is read round by round while the magic,
//! round number (consecutive) and CRC hold; files are ordered by their first round. Only the
//! latest run of consecutive rounds counts: an older file left behind a gap was reclaimed in
//! part (its successors were deleted, so it was fully written back). Generations replay in
//! order. The outcome per partition is a [`Replay`]: a contiguous run of batches from `start`
//! to `end`, which `PartitionLog::open` compares with what its segments hold and appends where
//! they differ or end. Safety: a batch is acknowledged only once its round is durable, a
//! round only completes after every earlier round did, and a journal file is deleted only
//! after a sync that covers the segment writes of everything in it; so every acknowledged
//! batch is, after a crash, in a segment (synced) or in a journal round that replays.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use bytes::{Buf, Bytes};
use tracing::{debug, error, info, warn};

use super::group_sync::GroupSync;
use super::io::{Disk, SegmentFile};
use crate::runtime::Notify;

/// Journal file names end with this.
pub const JOURNAL_SUFFIX: &str = ".jnl";
/// The journal's directory under the data directory.
pub const JOURNAL_DIR: &str = "journal";

const MAGIC: u32 = u32::from_be_bytes(*b"SLJ1");
const ROUND_HEADER: usize = 24;
/// Rounds start at multiples of this (a multiple of every file's direct-I/O alignment).
const ROUND_ALIGN: usize = 4096;
const ENTRY_FIXED: usize = 1 + 2 + 8 + 8 + 4;
/// Largest single write the journal writer issues; a larger round is several writes at once.
const WRITE_CHUNK: usize = 1 << 20;
/// A journal file is preallocated this much at a time.
const PREALLOCATE_STEP: u64 = 4 << 20;
/// Reclaimed files kept for reuse, per shard (each `file_bytes` of disk).
const SPARE_FILES: usize = 2;
/// A reclaimed file kept for reuse is renamed to end with this (replay reads only
/// [`JOURNAL_SUFFIX`] files).
const SPARE_SUFFIX: &str = "spare";
/// The write-behind of a file the flush mark left behind is spread over the next file's fill
/// in this many steps: each partition writes behind at its own step (its slot, from its
/// name), not every partition of the shard at once (that burst of writes held the journal's
/// next round, and every produce waiting for it, for about 100 ms at 1,024 partitions).
pub const PRESSURE_SLOTS: usize = 32;

/// The write-behind slot of a partition directory's name.
pub fn pressure_slot(name: &str) -> usize {
    crc32c::crc32c(name.as_bytes()) as usize % PRESSURE_SLOTS
}

/// Files left behind beyond this many: a warning (a failed partition pins its file).
const FILES_WARN: usize = 8;

const KIND_BATCHES: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_DELETE: u8 = 3;

/// Where a shard's journal lives and how large its files are.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// `<data>/journal`.
    pub root: PathBuf,
    /// This start's generation: one more than any found.
    pub generation: u64,
    pub shard: usize,
    /// Size of a journal file (preallocated).
    pub file_bytes: u64,
    /// Journal appends (else the journal only replays what an earlier start left).
    pub enabled: bool,
}

/// What a partition submits.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Whole batches `base..next` as stored, in one or more parts.
    Batches {
        name: Rc<str>,
        base: i64,
        next: i64,
        parts: Vec<Bytes>,
    },
    /// The partition was cut back to `to`.
    Truncate { name: Rc<str>, to: i64 },
    /// The partition was deleted.
    Delete { name: Rc<str> },
}

impl Entry {
    fn encoded_len(&self) -> usize {
        match self {
            Entry::Batches { name, parts, .. } => {
                ENTRY_FIXED + name.len() + parts.iter().map(Bytes::len).sum::<usize>()
            }
            Entry::Truncate { name, .. } | Entry::Delete { name } => ENTRY_FIXED + name.len(),
        }
    }

    fn encode(&self, out: &mut Out) {
        let (kind, name, base, next, parts): (u8, &str, i64, i64, &[Bytes]) = match self {
            Entry::Batches {
                name,
                base,
                next,
                parts,
            } => (KIND_BATCHES, name, *base, *next, parts),
            Entry::Truncate { name, to } => (KIND_TRUNCATE, name, *to, *to, &[]),
            Entry::Delete { name } => (KIND_DELETE, name, -1, -1, &[]),
        };
        let len: usize = parts.iter().map(Bytes::len).sum();
        out.put(&[kind]);
        out.put(&(name.len() as u16).to_be_bytes());
        out.put(name.as_bytes());
        out.put(&base.to_be_bytes());
        out.put(&next.to_be_bytes());
        out.put(&(len as u32).to_be_bytes());
        for p in parts {
            out.put(p);
        }
    }
}

/// A cursor over a round's DMA buffers (one per [`WRITE_CHUNK`]) that checksums what it copies:
/// entries are copied once, from the request bytes into the buffers the disk reads.
struct Out {
    bufs: Vec<super::io::IoBuffer>,
    pos: usize,
    crc: u32,
}

impl Out {
    fn put(&mut self, mut b: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, b);
        while !b.is_empty() {
            let (i, off) = (self.pos / WRITE_CHUNK, self.pos % WRITE_CHUNK);
            let dst = &mut self.bufs[i].as_mut_slice()[off..];
            let n = dst.len().min(b.len());
            dst[..n].copy_from_slice(&b[..n]);
            self.pos += n;
            b = &b[n..];
        }
    }

    /// Zeros from the cursor to the end of the buffers.
    fn pad(&mut self) {
        while self.pos < self.bufs.len() * WRITE_CHUNK {
            let (i, off) = (self.pos / WRITE_CHUNK, self.pos % WRITE_CHUNK);
            let dst = &mut self.bufs[i].as_mut_slice()[off..];
            if dst.is_empty() {
                break;
            }
            dst.fill(0);
            self.pos += dst.len();
        }
    }
}

/// Filled in by the journal writer once the round holding a submission is durable (or failed).
#[derive(Default)]
pub struct Receipt {
    /// The journal file the entry landed in.
    file: Cell<u64>,
    done: RefCell<Option<Result<(), (io::ErrorKind, String)>>>,
}

/// A partition whose queued batches the journal writer takes itself when a round starts
/// ([`Journal::offer`]), and completes itself when the round is durable: no task of the
/// partition's wakes for a round.
pub trait Source {
    /// The entry for this round, if the partition may journal what it has queued now (else
    /// it leaves the round to its own flusher, and wakes it).
    fn take(&self) -> Option<Entry>;
    /// The round holding the entry last taken is durable in `file`, or failed.
    fn done(&self, result: Result<u64, (io::ErrorKind, String)>);
}

/// Who is told when a submission's round is durable.
enum Waiter {
    Receipt(Rc<Receipt>),
    Source(Rc<dyn Source>),
}

struct Submission {
    entry: Entry,
    waiter: Waiter,
}

struct JFile {
    seq: u64,
    /// Mixed into every round's CRC (and in the file's name): rounds left in a reused file
    /// from before, or forged in record bytes, never check.
    salt: u32,
    path: PathBuf,
    file: SegmentFile,
    /// Next round goes here.
    written: u64,
    /// Preallocated up to here.
    reserved: u64,
    /// Batches entries in this file not yet written to their segments.
    outstanding: usize,
}

#[derive(Default)]
struct State {
    queue: Vec<Submission>,
    /// Partitions offered for the next round ([`Journal::offer`]).
    offered: Vec<Weak<dyn Source>>,
    /// Oldest first; the last one takes rounds.
    files: VecDeque<JFile>,
    next_round: u64,
    /// Partitions with deferred batches journaled in a file below this write them out.
    flush_below: u64,
    /// How far the current file is filled, in [`PRESSURE_SLOTS`]: a partition whose slot
    /// this reached writes behind what the file before holds.
    fill_slot: usize,
    /// A write or fdatasync failed: nothing more is acknowledged through this journal.
    failed: Option<(io::ErrorKind, String)>,
    writer_running: bool,
    reclaimer_running: bool,
    /// Reclaimed files kept for reuse (renamed to end in `.spare`), each with its size: the
    /// next file is one of these, renamed, when there is one.
    spares: Vec<(PathBuf, SegmentFile, u64)>,
    /// Stats: files reused.
    recycled: u64,
    /// What earlier generations left, per partition directory; None until loaded.
    replay: Option<HashMap<String, Replay>>,
    /// Stats: rounds, entries, bytes written.
    rounds: u64,
    entries: u64,
    bytes: u64,
}

/// The shard's journal. See the module documentation.
pub struct Journal {
    disk: Rc<dyn Disk>,
    group_sync: Rc<GroupSync>,
    cfg: JournalConfig,
    dir: PathBuf,
    st: RefCell<State>,
    /// Receipts completed.
    durable: Notify,
    /// The flush mark moved (every slot's listeners), or the current file's fill reached a
    /// slot: its partitions write behind what the file before holds.
    pressure: Vec<Notify>,
    /// Load once.
    loading: futures::lock::Mutex<()>,
}

/// What replay found for one partition: batches `start..end` (contiguous), or nothing past a
/// cut at `start == end`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    pub start: i64,
    pub end: i64,
    /// `(base, next, bytes)` of each batch, in order, covering `start..end`.
    pub batches: Vec<(i64, i64, Bytes)>,
    /// The last entry was a cut at this offset: whatever the segments hold past it goes too
    /// (at or past `end`: batches the segments hold between `end` and it stay).
    pub cut_to: Option<i64>,
}

impl Replay {
    fn cut(&mut self, to: i64) {
        while self.batches.last().is_some_and(|b| b.1 > to) {
            self.batches.pop();
        }
        self.end = self.batches.last().map_or(self.start.min(to), |b| b.1);
        if self.batches.is_empty() {
            self.start = self.start.min(to);
            self.end = self.start;
        }
    }

    /// Apply one batches entry.
    fn push(&mut self, base: i64, next: i64, batches: Vec<(i64, i64, Bytes)>) {
        if base < self.end {
            self.cut(base);
        }
        if base != self.end {
            // Below the run's start, or a gap: what comes before `base` is in the segment.
            self.start = base;
            self.batches.clear();
        }
        self.batches.extend(batches);
        self.end = next;
        self.cut_to = None;
    }
}

/// Split a batches payload into its batches (length field at bytes 8..12).
fn split_batches(mut payload: Bytes, base: i64, next: i64) -> Option<Vec<(i64, i64, Bytes)>> {
    let mut out = Vec::new();
    let mut at = base;
    while !payload.is_empty() {
        if payload.len() < 61 {
            return None;
        }
        let b_base = i64::from_be_bytes(payload[0..8].try_into().ok()?);
        let len = i32::from_be_bytes(payload[8..12].try_into().ok()?);
        let delta = i32::from_be_bytes(payload[23..27].try_into().ok()?);
        let size = 12usize.checked_add(usize::try_from(len).ok()?)?;
        if size > payload.len() || b_base != at || delta < 0 {
            return None;
        }
        let b_next = b_base + i64::from(delta) + 1;
        out.push((b_base, b_next, payload.split_to(size)));
        at = b_next;
    }
    (at == next).then_some(out)
}

impl Journal {
    pub fn new(disk: Rc<dyn Disk>, group_sync: Rc<GroupSync>, cfg: JournalConfig) -> Rc<Journal> {
        let dir = cfg
            .root
            .join(format!("{:010}-{:03}", cfg.generation, cfg.shard));
        Rc::new(Journal {
            disk,
            group_sync,
            cfg,
            dir,
            st: RefCell::new(State::default()),
            durable: Notify::new(),
            pressure: (0..PRESSURE_SLOTS).map(|_| Notify::new()).collect(),
            loading: futures::lock::Mutex::new(()),
        })
    }

    /// The same journal directory for a restarted process: the next generation, nothing
    /// loaded or written yet.
    pub fn restarted(&self, group_sync: Rc<GroupSync>) -> Rc<Journal> {
        Journal::new(
            self.disk.clone(),
            group_sync,
            JournalConfig {
                generation: self.cfg.generation + 1,
                ..self.cfg.clone()
            },
        )
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Rounds, entries and bytes written so far, and files reused.
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let st = self.st.borrow();
        (st.rounds, st.entries, st.bytes, st.recycled)
    }

    /// Queue `entry` for the next round; await [`Journal::wait`] with the receipt.
    pub fn submit(self: &Rc<Self>, entry: Entry) -> Rc<Receipt> {
        let receipt = Rc::new(Receipt::default());
        let start = {
            let mut st = self.st.borrow_mut();
            st.queue.push(Submission {
                entry,
                waiter: Waiter::Receipt(receipt.clone()),
            });
            !std::mem::replace(&mut st.writer_running, true)
        };
        if start {
            crate::runtime::spawn_detached(writer(Rc::downgrade(self)));
        }
        receipt
    }

    /// Ask the writer to take `source`'s entry ([`Source::take`]) when the next round starts.
    /// The caller offers a partition once until it is taken.
    pub fn offer(self: &Rc<Self>, source: Weak<dyn Source>) {
        let start = {
            let mut st = self.st.borrow_mut();
            st.offered.push(source);
            !std::mem::replace(&mut st.writer_running, true)
        };
        if start {
            crate::runtime::spawn_detached(writer(Rc::downgrade(self)));
        }
    }

    /// [`Journal::submit`] and [`Journal::wait`]: `entry` is durable when this returns, in
    /// the returned file.
    pub async fn record(self: &Rc<Self>, entry: Entry) -> io::Result<u64> {
        let receipt = self.submit(entry);
        self.wait(&receipt).await
    }

    /// Wait until the round holding the receipt's entry is durable; returns its file.
    pub async fn wait(&self, receipt: &Receipt) -> io::Result<u64> {
        loop {
            let listener = self.durable.listen();
            if let Some(r) = receipt.done.borrow().as_ref() {
                return match r {
                    Ok(()) => Ok(receipt.file.get()),
                    Err((k, m)) => Err(io::Error::new(*k, m.clone())),
                };
            }
            listener.await;
        }
    }

    /// Fires when the flush mark moves. Register before checking it.
    pub fn pressure(&self, slot: usize) -> event_listener::EventListener {
        self.pressure[slot % PRESSURE_SLOTS].listen()
    }

    /// Whether a partition in `slot` whose oldest batch not yet in its segments is in
    /// `oldest` writes behind now: it is in a file before the one the flush mark just left
    /// behind, or in that one and the current file's fill has reached the slot.
    pub fn behind_due(&self, oldest: u64, slot: usize) -> bool {
        let st = self.st.borrow();
        // Files are numbered by their first round: the one before the current file is the
        // second to last in the list.
        let previous = st.files.iter().rev().nth(1).map(|f| f.seq);
        oldest < st.flush_below && (Some(oldest) != previous || st.fill_slot >= slot)
    }

    /// `n` batches entries journaled in `file` are written to their segments (or void: the
    /// partition was deleted).
    pub fn release(self: &Rc<Self>, file: u64, n: usize) {
        if let Some(f) = self
            .st
            .borrow_mut()
            .files
            .iter_mut()
            .find(|f| f.seq == file)
        {
            f.outstanding = f.outstanding.saturating_sub(n);
        }
        self.maybe_reclaim();
    }

    /// Start the reclaimer if the oldest file (not the current one) has nothing outstanding.
    fn maybe_reclaim(self: &Rc<Self>) {
        let start = {
            let mut st = self.st.borrow_mut();
            let reclaimable = st.files.len() > 1 && st.files[0].outstanding == 0;
            reclaimable && !std::mem::replace(&mut st.reclaimer_running, true)
        };
        if start {
            crate::runtime::spawn_detached(reclaimer(Rc::downgrade(self)));
        }
    }

    /// Read what earlier generations left (every stream under the root), keeping the entries
    /// of partitions `keep` accepts. Idempotent: a second call does nothing.
    pub async fn load(&self, keep: &dyn Fn(&str) -> bool) -> io::Result<()> {
        let _one = self.loading.lock().await;
        if self.st.borrow().replay.is_some() {
            return Ok(());
        }
        let mut map: HashMap<String, Replay> = HashMap::new();
        let mut streams: Vec<(u64, PathBuf)> = Vec::new();
        match self.disk.list_dir(&self.cfg.root).await {
            Ok(names) => {
                for n in names {
                    let Some(s) = n.to_str() else { continue };
                    let Some((g, _)) = s.split_once('-') else {
                        continue;
                    };
                    let Ok(g) = g.parse::<u64>() else { continue };
                    if g < self.cfg.generation {
                        streams.push((g, self.cfg.root.join(s)));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        streams.sort();
        let mut rounds = 0u64;
        for (_, dir) in &streams {
            for (_, body) in self.read_stream(dir).await? {
                rounds += 1;
                apply_round(&mut map, body, keep, dir);
            }
        }
        if rounds > 0 {
            info!(
                streams = streams.len(),
                rounds,
                partitions = map.len(),
                "journal read for replay"
            );
        }
        self.st.borrow_mut().replay = Some(map);
        Ok(())
    }

    /// What earlier generations left for partition directory `name` (loading everything
    /// first if nothing was loaded yet). Taken: a second call gives None.
    pub async fn take_replay(&self, name: &str) -> io::Result<Option<Replay>> {
        if self.st.borrow().replay.is_none() {
            self.load(&|_| true).await?;
        }
        Ok(self
            .st
            .borrow_mut()
            .replay
            .as_mut()
            .and_then(|m| m.remove(name)))
    }

    /// Once every partition has replayed what concerned it and that is durable: one
    /// file-system sync, then remove the earlier generations' streams.
    pub async fn finish_recovery(&self) -> io::Result<()> {
        let mut old = Vec::new();
        match self.disk.list_dir(&self.cfg.root).await {
            Ok(names) => {
                for n in names {
                    let Some(s) = n.to_str() else { continue };
                    let g = s.split_once('-').and_then(|(g, _)| g.parse::<u64>().ok());
                    if g.is_some_and(|g| g < self.cfg.generation) {
                        old.push(self.cfg.root.join(s));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        self.st.borrow_mut().replay = Some(HashMap::new());
        if old.is_empty() {
            return Ok(());
        }
        // Replayed data written without a sync of its own (a periodic flush policy) is durable
        // after this, so the streams it came from can go.
        let probe = self.cfg.root.join(".sync");
        let f = self.disk.open_rw(&probe, true).await?;
        let synced = self.group_sync.sync(&f).await;
        let _ = f.close().await;
        synced?;
        old.sort();
        for dir in &old {
            self.disk.remove_dir_all(dir).await?;
        }
        self.disk.sync_dir(&self.cfg.root).await?;
        debug!(streams = old.len(), "earlier journal generations removed");
        Ok(())
    }

    /// At a clean stop, once every partition of this shard closed cleanly (everything written
    /// to segments and synced): remove this shard's stream.
    pub async fn remove_own(&self) -> io::Result<()> {
        let files: Vec<SegmentFile> = self
            .st
            .borrow_mut()
            .files
            .drain(..)
            .map(|f| f.file)
            .collect();
        let spares: Vec<SegmentFile> = self
            .st
            .borrow_mut()
            .spares
            .drain(..)
            .map(|(_, f, _)| f)
            .collect();
        for f in files.into_iter().chain(spares) {
            let _ = f.close().await;
        }
        let removed = match self.disk.remove_dir_all(&self.dir).await {
            Ok(()) => self.disk.sync_dir(&self.cfg.root).await,
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// The rounds of one stream that replay, in order: `(round, body)`.
    async fn read_stream(&self, dir: &Path) -> io::Result<Vec<(u64, Bytes)>> {
        let mut files: Vec<Vec<(u64, Bytes)>> = Vec::new();
        for n in self.disk.list_dir(dir).await? {
            let Some(s) = n.to_str() else { continue };
            let Some((first, salt)) = parse_file_name(s) else {
                continue;
            };
            let path = dir.join(s);
            let data = Bytes::from(self.disk.read(&path).await?);
            let rounds = parse_file(data, first, salt, &path);
            if !rounds.is_empty() {
                files.push(rounds);
            }
        }
        files.sort_by_key(|f| f[0].0);
        // The latest run of consecutive rounds.
        let mut run: Vec<(u64, Bytes)> = Vec::new();
        for f in files {
            if run.last().is_some_and(|(r, _)| r + 1 != f[0].0) {
                debug!(dir = %dir.display(), "journal files before a gap were reclaimed: skipped");
                run.clear();
            }
            run.extend(f);
        }
        Ok(run)
    }

    /// One round: lay out `subs`, write it, fdatasync; returns the file it went to.
    async fn write_round(self: &Rc<Self>, subs: &[Submission]) -> io::Result<u64> {
        let body_len: usize = subs.iter().map(|s| s.entry.encoded_len()).sum();
        let padded = (ROUND_HEADER + body_len).div_ceil(ROUND_ALIGN) * ROUND_ALIGN;
        self.ensure_room(padded as u64).await?;
        let (round, file, pos, salt) = {
            let st = self.st.borrow();
            let f = st.files.back().expect("ensure_room made a file");
            (st.next_round, f.file.clone(), f.written, f.salt)
        };
        debug_assert!(ROUND_ALIGN.is_multiple_of(file.alignment() as usize));
        let bufs = (0..padded.div_ceil(WRITE_CHUNK))
            .map(|i| file.alloc_buffer((padded - i * WRITE_CHUNK).min(WRITE_CHUNK)))
            .collect();
        let mut out = Out {
            bufs,
            pos: 0,
            crc: 0,
        };
        out.put(&MAGIC.to_be_bytes());
        out.crc = crc_seed(Some(salt));
        out.put(&round.to_be_bytes());
        out.put(&(body_len as u32).to_be_bytes());
        out.put(&(subs.len() as u32).to_be_bytes());
        // The CRC goes here once the body is in.
        out.pos += 4;
        for s in subs {
            s.entry.encode(&mut out);
        }
        let crc = out.crc;
        out.pad();
        out.bufs[0].as_mut_slice()[20..24].copy_from_slice(&crc.to_be_bytes());
        let writes = out.bufs.into_iter().enumerate().map(|(i, buf)| {
            let file = file.clone();
            async move { file.write_at(buf, pos + (i * WRITE_CHUNK) as u64).await }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        let started = std::time::Instant::now();
        file.fdatasync().await?;
        crate::metrics::fsync_done(started.elapsed());
        let mut st = self.st.borrow_mut();
        st.next_round += 1;
        st.rounds += 1;
        st.entries += subs.len() as u64;
        st.bytes += padded as u64;
        crate::metrics::journal_round(subs.len(), padded);
        let batches = subs
            .iter()
            .filter(|s| matches!(s.entry, Entry::Batches { .. }))
            .count();
        let f = st.files.back_mut().expect("current file");
        f.written = pos + padded as u64;
        f.outstanding += batches;
        let seq = f.seq;
        let fill = ((f.written as u128 * PRESSURE_SLOTS as u128)
            / self.cfg.file_bytes.max(1) as u128)
            .min(PRESSURE_SLOTS as u128 - 1) as usize;
        let reached = st.fill_slot + 1..=fill;
        st.fill_slot = st.fill_slot.max(fill);
        drop(st);
        for slot in reached {
            self.pressure[slot].notify_all();
        }
        Ok(seq)
    }

    /// Make sure the current file can take `len` more bytes: the first file, or the next one
    /// when the current one is full (raising the flush mark).
    async fn ensure_room(&self, len: u64) -> io::Result<()> {
        let need_new = {
            let st = self.st.borrow();
            match st.files.back() {
                None => true,
                Some(f) => f.written > 0 && f.written + len > self.cfg.file_bytes,
            }
        };
        if !need_new {
            // Space ahead in steps: a small disk is not asked for a whole file at once.
            let (file, reserved, written) = {
                let st = self.st.borrow();
                let f = st.files.back().expect("a current file");
                (f.file.clone(), f.reserved, f.written)
            };
            if written + len > reserved {
                let mut target = (written + len).max(reserved + PREALLOCATE_STEP);
                if let Err(e) = file.pre_allocate(target).await {
                    // Nearly full: just what this round needs.
                    if e.kind() != io::ErrorKind::StorageFull {
                        return Err(e);
                    }
                    target = written + len;
                    file.pre_allocate(target).await?;
                }
                self.st
                    .borrow_mut()
                    .files
                    .back_mut()
                    .expect("current")
                    .reserved = target;
            }
            return Ok(());
        }
        let first = self.st.borrow().files.is_empty();
        if first {
            self.disk.create_dir_all(&self.dir).await?;
            self.disk.sync_dir(&self.cfg.root).await?;
            if let Some(parent) = self.cfg.root.parent() {
                self.disk.sync_dir(parent).await?;
            }
        }
        let seq = self.st.borrow().next_round;
        let salt = new_salt();
        let path = self.dir.join(file_name(seq, salt));
        let spare = self.st.borrow_mut().spares.pop();
        let (file, reserved) = match spare {
            // A reclaimed file, reused: its blocks are written, so rounds overwrite them (no
            // extent conversion per write, and an fdatasync with no metadata to commit). What
            // it held was checked with another salt, and is numbered below `seq` (replay takes
            // a file's rounds only from the one its name gives): none of it replays, whatever a
            // crash leaves.
            Some((spare_path, file, size)) => {
                self.disk.rename(&spare_path, &path).await?;
                let mut reserved = size;
                if reserved < len {
                    file.pre_allocate(len).await?;
                    reserved = len;
                }
                self.st.borrow_mut().recycled += 1;
                crate::metrics::journal_file_reused();
                (file, reserved)
            }
            None => {
                let file = self.disk.open_rw(&path, true).await?;
                let reserved = PREALLOCATE_STEP.min(self.cfg.file_bytes).max(len);
                file.pre_allocate(reserved).await?;
                (file, reserved)
            }
        };
        self.disk.sync_dir(&self.dir).await?;
        let count = {
            let mut st = self.st.borrow_mut();
            st.files.push_back(JFile {
                seq,
                salt,
                path,
                file,
                written: 0,
                reserved,
                outstanding: 0,
            });
            st.flush_below = seq;
            st.fill_slot = 0;
            st.files.len()
        };
        if count > FILES_WARN {
            warn!(files = count, dir = %self.dir.display(),
                "journal files pile up: a partition holds back their reclamation");
        }
        for p in &self.pressure {
            p.notify_all();
        }
        Ok(())
    }

    /// Remove the oldest file if nothing in it is outstanding (after a file-system sync that
    /// covers the segment writes that released it). Returns whether it removed one.
    async fn reclaim_one(&self) -> io::Result<bool> {
        let (file, path, seq, size) = {
            let st = self.st.borrow();
            match st.files.front() {
                Some(f) if st.files.len() > 1 && f.outstanding == 0 => (
                    f.file.clone(),
                    f.path.clone(),
                    f.seq,
                    // Its size from what this journal did to it: the real file's size is looked
                    // up by the path it was first opened with, gone once it was reused.
                    f.reserved.max(f.written),
                ),
                _ => return Ok(false),
            }
        };
        self.group_sync.sync(&file).await?;
        // The file leaves the list as soon as its name changes (a stop may have emptied the
        // list meanwhile: then there is nothing to take).
        let take = |st: &mut State| {
            if st.files.front().is_some_and(|f| f.seq == seq) {
                st.files.pop_front()
            } else {
                None
            }
        };
        if self.st.borrow().spares.len() < SPARE_FILES {
            // Kept for reuse under a name replay never reads: its rounds are written back and
            // must never replay again.
            let spare = path.with_extension(SPARE_SUFFIX);
            self.disk.rename(&path, &spare).await?;
            let mut st = self.st.borrow_mut();
            if let Some(f) = take(&mut st) {
                st.spares.push((spare, f.file, size));
            }
        } else {
            self.disk.remove_file(&path).await?;
            let f = take(&mut self.st.borrow_mut());
            if let Some(f) = f {
                let _ = f.file.close().await;
            }
        }
        self.disk.sync_dir(&self.dir).await?;
        Ok(true)
    }
}

/// A journal file's name: its first round and its salt.
fn file_name(seq: u64, salt: u32) -> String {
    format!("{seq:020}-{salt:08x}{JOURNAL_SUFFIX}")
}

/// A journal file name's first round and salt; `<first round>.jnl` (before salts) has none.
fn parse_file_name(name: &str) -> Option<(u64, Option<u32>)> {
    let stem = name.strip_suffix(JOURNAL_SUFFIX)?;
    match stem.split_once('-') {
        Some((seq, salt)) => Some((seq.parse().ok()?, Some(u32::from_str_radix(salt, 16).ok()?))),
        None => Some((stem.parse().ok()?, None)),
    }
}

/// Where a round's CRC starts in a file of `salt` (None: a file named before salts).
fn crc_seed(salt: Option<u32>) -> u32 {
    salt.map_or(0, |salt| crc32c::crc32c(&salt.to_be_bytes()))
}

/// A fresh salt for a journal file (random: unknown to the clients whose record bytes the
/// journal holds).
fn new_salt() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// Parse one journal file's rounds: `(round, body)` while they are valid (their CRC mixes in
/// the file's `salt`) and consecutive, starting with round `first`; both come from the file's
/// name. A reused file still holds its earlier rounds after the ones written since.
fn parse_file(data: Bytes, first: u64, salt: Option<u32>, path: &Path) -> Vec<(u64, Bytes)> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    let mut pos = 0usize;
    while pos + ROUND_HEADER <= data.len() {
        let h = &data[pos..pos + ROUND_HEADER];
        let magic = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            break;
        }
        let round = u64::from_be_bytes(h[4..12].try_into().expect("8 bytes"));
        let body_len = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(h[20..24].try_into().expect("4 bytes"));
        let end = pos + ROUND_HEADER + body_len;
        if end > data.len() {
            debug!(path = %path.display(), round, "journal round torn (short)");
            break;
        }
        let c = crc32c::crc32c_append(crc_seed(salt), &h[4..20]);
        let c = crc32c::crc32c_append(c, &data[pos + ROUND_HEADER..end]);
        let expected = out.last().map_or(first, |(r, _)| r + 1);
        if c != crc || round != expected {
            debug!(path = %path.display(), round, "journal ends (torn or stale round)");
            break;
        }
        out.push((round, data.slice(pos + ROUND_HEADER..end)));
        pos = end.div_ceil(ROUND_ALIGN) * ROUND_ALIGN;
    }
    out
}

/// Apply one round's entries to the replay map.
fn apply_round(
    map: &mut HashMap<String, Replay>,
    mut body: Bytes,
    keep: &dyn Fn(&str) -> bool,
    dir: &Path,
) {
    while body.has_remaining() {
        if body.remaining() < ENTRY_FIXED {
            error!(dir = %dir.display(), "journal round with a short entry: rest ignored");
            return;
        }
        let kind = body.get_u8();
        let name_len = body.get_u16() as usize;
        if body.remaining() < name_len + 20 {
            error!(dir = %dir.display(), "journal entry name past the round: rest ignored");
            return;
        }
        let name = String::from_utf8_lossy(&body.split_to(name_len)).into_owned();
        let base = body.get_i64();
        let next = body.get_i64();
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            error!(dir = %dir.display(), "journal entry payload past the round: rest ignored");
            return;
        }
        let payload = body.split_to(len);
        if !keep(&name) {
            continue;
        }
        match kind {
            KIND_BATCHES => {
                let Some(batches) = split_batches(payload, base, next) else {
                    error!(dir = %dir.display(), partition = %name, base,
                        "journal entry does not hold whole batches: rest of the partition's \
                         journal ignored");
                    continue;
                };
                match map.get_mut(&name) {
                    Some(r) => r.push(base, next, batches),
                    None => {
                        map.insert(
                            name,
                            Replay {
                                start: base,
                                end: next,
                                batches,
                                cut_to: None,
                            },
                        );
                    }
                }
            }
            KIND_TRUNCATE => {
                let r = map.entry(name).or_insert_with(|| Replay {
                    start: base,
                    end: base,
                    ..Replay::default()
                });
                r.cut(base);
                r.cut_to = Some(base);
            }
            KIND_DELETE => {
                map.remove(&name);
            }
            _ => {
                error!(dir = %dir.display(), kind, "unknown journal entry kind: rest ignored");
                return;
            }
        }
    }
}

/// The shard's journal writer: rounds while there are submissions, then it exits (the next
/// submission starts another).
async fn writer(journal: Weak<Journal>) {
    loop {
        // Let the flushers and appends woken in this same turn join the round.
        crate::runtime::yield_now().await;
        let Some(j) = journal.upgrade() else { return };
        let (mut subs, offered) = {
            let mut st = j.st.borrow_mut();
            (
                std::mem::take(&mut st.queue),
                std::mem::take(&mut st.offered),
            )
        };
        // Offered partitions hand over what they queued (each may decline, and then its
        // flusher takes over). Their entries go after the submitted ones: a partition is
        // never both (its flusher submits only while nothing of it is offered or taken).
        for source in offered.iter().filter_map(Weak::upgrade) {
            if let Some(entry) = source.take() {
                subs.push(Submission {
                    entry,
                    waiter: Waiter::Source(source),
                });
            }
        }
        if subs.is_empty() {
            let mut st = j.st.borrow_mut();
            if st.queue.is_empty() && st.offered.is_empty() {
                st.writer_running = false;
                return;
            }
            continue;
        }
        let failed = j.st.borrow().failed.clone();
        let result = match failed {
            Some(f) => Err(f),
            None => j
                .write_round(&subs)
                .await
                .map_err(|e| (e.kind(), e.to_string())),
        };
        if let Err((kind, msg)) = &result {
            // A full disk is not the journal's end (space may come back); any other
            // failure is: nothing written since the last good sync can be trusted.
            if *kind != io::ErrorKind::StorageFull && j.st.borrow().failed.is_none() {
                error!(dir = %j.dir.display(), error = %msg,
                    "journal write failed: its partitions acknowledge nothing more until \
                     restarted");
                j.st.borrow_mut().failed = Some((*kind, msg.clone()));
            }
        }
        for s in &subs {
            match &s.waiter {
                Waiter::Receipt(receipt) => {
                    if let Ok(file) = &result {
                        receipt.file.set(*file);
                    }
                    *receipt.done.borrow_mut() = Some(result.clone().map(|_| ()));
                }
                Waiter::Source(source) => source.done(result.clone()),
            }
        }
        j.durable.notify_all();
        j.maybe_reclaim();
    }
}

/// Removes reclaimable files, oldest first, then exits.
async fn reclaimer(journal: Weak<Journal>) {
    loop {
        let Some(j) = journal.upgrade() else { return };
        match j.reclaim_one().await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => warn!(dir = %j.dir.display(), error = %e,
                "removing a journal file failed: it is kept (and replayed if the broker stops)"),
        }
        j.st.borrow_mut().reclaimer_running = false;
        return;
    }
}

/// The highest generation under `root` (0 if none): a new start uses the next one.
pub fn latest_generation(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let s = n.to_str()?;
            s.split_once('-')?.0.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::test_util::encode_batch;

    /// One round as `write_round` lays it out (header, body, zeros to the alignment) in a
    /// file of `salt` (None: a file named before salts).
    fn round_bytes(round: u64, salt: Option<u32>, body: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&round.to_be_bytes());
        h.extend_from_slice(&(body.len() as u32).to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc_seed(salt), &h[4..20]), body);
        h.extend_from_slice(&crc.to_be_bytes());
        h.extend_from_slice(body);
        h.resize(h.len().div_ceil(ROUND_ALIGN) * ROUND_ALIGN, 0);
        h
    }

    /// A reused file still holds its older rounds: only a run that starts with the round the
    /// file is named for, under the file's salt, counts, and it ends at the first older
    /// (stale) round. A round of the right number under another salt (left from before the
    /// reuse, or forged in record bytes) never checks.
    #[test]
    fn a_reused_file_replays_only_its_new_rounds() {
        let path = Path::new("/j/00000000000000000007-0000abcd.jnl");
        assert_eq!(
            parse_file_name("00000000000000000007-0000abcd.jnl"),
            Some((7, Some(0xabcd)))
        );
        assert_eq!(parse_file_name("00000000000000000007.jnl"), Some((7, None)));
        assert_eq!(parse_file_name("00000000000000000007-0000abcd.spare"), None);
        let (old, new) = (Some(0x1111), Some(0xabcd));
        let stale: Vec<u8> = (3..6).flat_map(|r| round_bytes(r, old, b"old")).collect();
        // Renamed for reuse, nothing new written yet: nothing replays.
        assert!(parse_file(Bytes::from(stale.clone()), 7, new, path).is_empty());
        // Round 7 and 8 written over the first two old rounds; old round 5 follows.
        let mut reused = stale.clone();
        let fresh: Vec<u8> = [round_bytes(7, new, b"new7"), round_bytes(8, new, b"new8")].concat();
        reused[..fresh.len()].copy_from_slice(&fresh);
        let rounds = parse_file(Bytes::from(reused.clone()), 7, new, path);
        let got: Vec<(u64, &[u8])> = rounds.iter().map(|(r, b)| (*r, &b[..])).collect();
        assert_eq!(got, vec![(7, &b"new7"[..]), (8, &b"new8"[..])]);
        // Round 9 under the old salt right after them: the run ends before it.
        let mut forged = reused.clone();
        let nine = round_bytes(9, old, b"forged");
        forged[fresh.len()..fresh.len() + nine.len()].copy_from_slice(&nine);
        assert_eq!(parse_file(Bytes::from(forged), 7, new, path).len(), 2);
        // A file named before salts reads as before.
        let unsalted: Vec<u8> = [round_bytes(7, None, b"a"), round_bytes(8, None, b"b")].concat();
        assert_eq!(parse_file(Bytes::from(unsalted), 7, None, path).len(), 2);
    }

    #[test]
    fn replay_follows_cuts_gaps_and_deletes() {
        let b = |base: i64, n: usize| {
            split_batches(encode_batch(base, n, 0, 10), base, base + n as i64).unwrap()
        };
        let mut r = Replay {
            start: 0,
            end: 3,
            batches: b(0, 3),
            cut_to: None,
        };
        r.push(3, 5, b(3, 2));
        assert_eq!((r.start, r.end, r.batches.len()), (0, 5, 2));
        // A re-append at 3 supersedes what followed.
        r.push(3, 4, b(3, 1));
        assert_eq!((r.start, r.end, r.batches.len()), (0, 4, 2));
        // A cut below the start leaves nothing from the cut on.
        r.cut(0);
        assert_eq!((r.start, r.end, r.batches.len()), (0, 0, 0));
        // A gap: the run restarts (what is before is in the segment).
        r.push(10, 12, b(10, 2));
        assert_eq!((r.start, r.end, r.batches.len()), (10, 12, 1));
        assert!(
            split_batches(encode_batch(0, 2, 0, 10), 0, 3).is_none(),
            "next must match"
        );
        assert!(
            split_batches(encode_batch(1, 2, 0, 10), 0, 3).is_none(),
            "base must match"
        );
    }
}
