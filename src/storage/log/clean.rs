//! The log cleaner on one partition: what is cleanable, one pass, and the segment swap that
//! a crash cannot leave half done. The rules on each batch are `storage::cleaner`.
//!
//! # A pass
//! Under the admin lock (no retention or DeleteRecords meanwhile):
//! 1. The cleanable section: the sealed segments (written, the next one on disk) below the
//!    high watermark and the last stable offset, and whose records are all older than
//!    `min.compaction.lag.ms`. Its dirty part starts at the checkpoint (the end of the
//!    last pass).
//! 2. The offset map of the dirty part, until the map is full (the map's end).
//! 3. The segments from the first to the one holding the map's end are fsynced (they may
//!    still be behind the shard journal), then the checkpoint's *replay floor* moves to the
//!    map's end, durably: the journal's replay skips batches below it, which both the old
//!    and the cleaned segments hold.
//! 4. They are rewritten in groups of consecutive segments whose sizes add up to at most
//!    `segment.bytes` (and span fewer than 2^32 offsets): each group becomes one segment
//!    named by the group's first base, holding the group's offsets up to the next group.
//! 5. The checkpoint's *clean end* moves to the map's end: the next pass's dirty part starts
//!    there.
//!
//! # The swap of one group, base B, ending at E
//! 1. `B.log.cleaned`, `B.index.cleaned`, `B.timeindex.cleaned` are written and fsynced, the
//!    directory synced.
//! 2. **Commit point:** `cleaner-swap` (`B E`) is written durably (temporary file, rename,
//!    directory sync).
//! 3. In memory, the group's segments are replaced by the new one at once (readers holding a
//!    file of the old ones read on from it: the files stay open).
//! 4. On disk ([`finish_swap`]): every segment with a base in (B, E) is removed, index files
//!    first; each `B.*.cleaned` is renamed over `B.*`; the directory is synced; the
//!    `cleaner-swap` file is removed and the directory synced.
//!
//! A crash before step 2 leaves the old segments and stray `.cleaned` files, which the next
//! open removes. A crash after it leaves `cleaner-swap`, and the next open finishes step 4
//! before it reads any segment (every rename and removal of it can be repeated). So the
//! directory holds the old segments or the cleaned one, never both and never neither.

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::*;
use crate::storage::batch::BatchHeader;
use crate::storage::cleaner::{self, CleanStats, OffsetMap, Outcome, Rules, TxnTracker};
use crate::storage::error::{IoContext, StorageError};
use crate::storage::index::Indexer;
use crate::storage::io::{Env, SegmentFile};
use crate::storage::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, ScanStop, Scanner, Segment, SegmentIndex, TIME_INDEX_SUFFIX,
    parse_segment_file_name, segment_file_name, segment_path,
};

/// The cleaner's checkpoint: offsets below were cleaned by a finished pass (decimal).
pub const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// A swap past its commit point: `<first base> <end>` (decimal).
pub const SWAP_FILE: &str = "cleaner-swap";
/// Suffix of the files a pass writes before its swap.
const CLEANED_SUFFIX: &str = ".cleaned";

/// How much of a log a pass could clean now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cleanable {
    /// The checkpoint: where the dirty part starts.
    pub first_dirty: i64,
    /// First offset a pass may not clean: the end of the last cleanable segment.
    pub end: i64,
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
    /// dirty / (clean + dirty).
    pub ratio: f64,
    /// The oldest dirty segment is older than `max.compaction.lag.ms`: clean it whatever the
    /// ratio.
    pub overdue: bool,
}

/// A bound on the cleaner's disk bandwidth (Kafka's `log.cleaner.io.max.bytes.per.second`),
/// shared by the passes of one shard; 0: none.
pub struct CleanerThrottle {
    bytes_per_sec: u64,
    window_start: Cell<Option<Instant>>,
    window_bytes: Cell<u64>,
}

impl CleanerThrottle {
    pub fn new(bytes_per_sec: u64) -> Self {
        CleanerThrottle {
            bytes_per_sec,
            window_start: Cell::new(None),
            window_bytes: Cell::new(0),
        }
    }

    /// Account for `bytes` read or written, sleeping on `env`'s clock while the rate since
    /// the window began (a window lasts a second) is above the bound.
    async fn charge(&self, env: &Env, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let now = env.clock.now();
        let start = match self.window_start.get() {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => s,
            _ => {
                self.window_start.set(Some(now));
                self.window_bytes.set(0);
                now
            }
        };
        self.window_bytes.set(self.window_bytes.get() + bytes);
        let due =
            Duration::from_secs_f64(self.window_bytes.get() as f64 / self.bytes_per_sec as f64);
        let elapsed = now.duration_since(start);
        if due > elapsed {
            env.clock.sleep(due - elapsed).await;
        }
    }
}

/// What the cleaner did to one log since it was opened (metrics, `sluice topic describe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanerStatus {
    pub passes: u64,
    /// Bytes of log read and written by its passes.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    /// Wall-clock time of the last pass's end, -1: none yet.
    pub last_pass_ms: i64,
    /// How long the last pass took.
    pub last_pass_duration_ms: u64,
    /// Passes that failed (the log is left as it was).
    pub failures: u64,
}

impl Default for CleanerStatus {
    fn default() -> Self {
        CleanerStatus {
            passes: 0,
            bytes_read: 0,
            bytes_written: 0,
            records_removed: 0,
            last_pass_ms: -1,
            last_pass_duration_ms: 0,
            failures: 0,
        }
    }
}

/// One segment of a pass, as it was when the pass began.
struct Source {
    base: i64,
    next_offset: i64,
    size: u64,
    file: SegmentFile,
}

/// A cleaned group, written and synced, not swapped in yet.
struct Cleaned {
    base: i64,
    end: i64,
    size: u64,
    file: SegmentFile,
    max_timestamp: Option<(i64, i64)>,
}

impl PartitionLog {
    /// The cleaner's checkpoint (offsets below were cleaned).
    pub fn cleaner_checkpoint(&self) -> Offset {
        Offset(self.state.borrow().clean_end)
    }

    /// A replicated log: the cleaner takes nothing at or past `offset` (the Raft base; the
    /// entries after it are Raft's, numbered batch by batch, and must stay as they are).
    pub fn set_clean_limit(&self, offset: Offset) {
        self.state.borrow_mut().clean_limit = offset.0;
    }

    /// What the cleaner did here since the log was opened.
    pub fn cleaner_status(&self) -> CleanerStatus {
        self.cleaner.get()
    }

    /// What a cleaning pass could take now; None if the log is not compacted, is closing or
    /// failed, or has nothing dirty.
    pub fn cleanable(&self, now_ms: i64) -> Option<Cleanable> {
        let cfg = self.cfg();
        if !cfg.compact || self.closed.get() {
            return None;
        }
        let mut st = self.state.borrow_mut();
        if st.closing || st.failed.is_some() {
            return None;
        }
        let hw = st.high_watermark;
        let limit = st
            .producers
            .last_stable_offset(hw)
            .min(hw)
            .min(st.clean_limit);
        let young = now_ms.saturating_sub(cfg.min_compaction_lag_ms.max(0));
        let sealed = st.segments.len() - 1;
        let mut end = None;
        for (i, seg) in st.segments[..sealed].iter().enumerate() {
            let ok = matches!(seg.index, SegmentIndex::Sealed { .. })
                && st.segments[i + 1].on_disk
                && seg.next_offset <= limit
                && (cfg.min_compaction_lag_ms <= 0
                    || seg.visible_max_timestamp.is_none_or(|(t, _)| t <= young));
            if !ok {
                break;
            }
            end = Some(seg.next_offset);
        }
        let end = end?;
        let first_dirty = st.clean_end.max(st.segments[0].base_offset);
        if first_dirty >= end {
            return None;
        }
        let (mut clean_bytes, mut dirty_bytes) = (0u64, 0u64);
        let mut overdue = false;
        for seg in st.segments.iter().take_while(|s| s.next_offset <= end) {
            if seg.next_offset <= first_dirty {
                clean_bytes += seg.size;
            } else {
                if dirty_bytes == 0
                    && let Some((t, _)) = seg.visible_max_timestamp
                {
                    overdue = now_ms.saturating_sub(t) > cfg.max_compaction_lag_ms;
                }
                dirty_bytes += seg.size;
            }
        }
        let total = clean_bytes + dirty_bytes;
        Some(Cleanable {
            first_dirty,
            end,
            clean_bytes,
            dirty_bytes,
            ratio: if total == 0 {
                0.0
            } else {
                dirty_bytes as f64 / total as f64
            },
            overdue,
        })
    }

    /// One cleaning pass (see the module documentation). `map` is the shard's offset map
    /// (cleared here); returns None if there was nothing to clean.
    pub async fn clean(
        &self,
        map: &mut OffsetMap,
        now_ms: i64,
        throttle: &CleanerThrottle,
    ) -> Result<Option<CleanStats>, StorageError> {
        let started = self.env.clock.now();
        let res = self.clean_locked(map, now_ms, throttle).await;
        let mut s = self.cleaner.get();
        match &res {
            Ok(Some(stats)) => {
                s.passes += 1;
                s.bytes_read += stats.bytes_read;
                s.bytes_written += stats.bytes_written;
                s.records_removed += stats.records_removed;
                s.last_pass_ms = now_ms;
                s.last_pass_duration_ms =
                    self.env.clock.now().duration_since(started).as_millis() as u64;
            }
            Ok(None) => {}
            Err(_) => s.failures += 1,
        }
        self.cleaner.set(s);
        res
    }

    async fn clean_locked(
        &self,
        map: &mut OffsetMap,
        now_ms: i64,
        throttle: &CleanerThrottle,
    ) -> Result<Option<CleanStats>, StorageError> {
        // The admin lock is held only for the short steps that change the log's files (the
        // start, the checkpoint, each swap), never while the pass reads or writes: retention,
        // a replica's Raft compaction and truncations wait for it (a replica's ready round
        // among them). What changed in between is found before each step: a truncation or
        // reset (the log's generation), or another segment list (`swap_in`).
        let (c, sources, generation) = {
            let _admin = self.admin_lock.lock().await;
            let Some(c) = self.cleanable(now_ms) else {
                return Ok(None);
            };
            // An earlier pass that failed after a commit point (a rename or removal failed)
            // left its swap to finish: done first, so a new swap file never replaces an
            // unfinished one.
            recover_swap(&self.env, &self.dir).await?;
            let sources = self.sources_below(c.end).await?;
            (c, sources, self.state.borrow().generation)
        };
        map.clear();
        let cfg = self.cfg();
        // The offset map of the dirty part.
        let producers = self.state.borrow().producers.clone();
        let mut map_end = c.first_dirty;
        'segments: for src in sources.iter().filter(|s| s.next_offset > c.first_dirty) {
            let start = if c.first_dirty > src.base {
                self.state
                    .borrow()
                    .segments
                    .iter()
                    .find(|s| s.base_offset == src.base)
                    .map_or(0, |s| s.lookup_position(c.first_dirty))
            } else {
                0
            };
            let mut sc = Scanner::new(src.file.clone(), start, src.size, CHUNK, true);
            let mut read = 0u64;
            while let Some((_, h, bytes)) = sc.next().await? {
                if h.next_offset() <= c.first_dirty {
                    continue;
                }
                let fits = cleaner::add_to_map(&bytes, &h, &producers, map, DECOMPRESS_LIMIT)
                    .map_err(|e| corrupt(&self.dir, src.base, &h, e))?;
                if !fits {
                    break 'segments;
                }
                map_end = h.next_offset();
                read += bytes.len() as u64;
                // Reads from the page cache complete at once: let the shard's requests run.
                crate::runtime::yield_if_needed().await;
                if read >= CHUNK as u64 {
                    throttle.charge(&self.env, read).await;
                    read = 0;
                }
            }
            scan_ok(&sc, &self.dir, src.base)?;
            throttle.charge(&self.env, read).await;
            map_end = src.next_offset;
        }
        if map_end <= c.first_dirty {
            warn!(dir = %self.dir.display(), keys = map.capacity(),
                "the cleaner's offset map cannot hold one batch of the dirty log: not cleaned");
            return Ok(None);
        }
        // The segments to rewrite: from the first to the one holding map_end - 1.
        let sources: Vec<Source> = sources.into_iter().filter(|s| s.base < map_end).collect();
        for s in &sources {
            s.file
                .fdatasync()
                .await
                .ctx(|| format!("fdatasync of segment {} in {}", s.base, self.dir.display()))?;
        }
        // Before any swap: the journal's replay must not compare what it holds below
        // map_end with segments that may be cleaned from now on.
        {
            let _admin = self.admin_lock.lock().await;
            if !self.unchanged_since(generation, &sources) {
                return Ok(None);
            }
            let clean_end = self.state.borrow().clean_end;
            write_checkpoint(&self.env, &self.dir, clean_end, map_end).await?;
            self.state.borrow_mut().replay_floor = map_end;
        }
        let rules = Rules {
            map,
            map_end,
            now_ms,
            delete_retention_ms: cfg.delete_retention_ms,
            producers: &producers,
            decompress_limit: DECOMPRESS_LIMIT,
        };
        let mut txns = TxnTracker::default();
        let mut stats = CleanStats::default();
        let started = self.env.clock.now();
        let shapes: Vec<(i64, i64, u64)> = sources
            .iter()
            .map(|s| (s.base, s.next_offset, s.size))
            .collect();
        for group in groups(&shapes, cfg.segment_bytes) {
            let end = sources
                .get(group.end)
                .map_or(sources[group.end - 1].next_offset, |s| s.base);
            let group = &sources[group];
            let cleaned = match self
                .clean_group(group, end, &rules, &mut txns, &mut stats, throttle)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    // Before the commit point: the cleaned files are strays, and take space.
                    remove_cleaned(&self.env, &self.dir, group[0].base).await;
                    return Err(e);
                }
            };
            let _admin = self.admin_lock.lock().await;
            if self.state.borrow().generation != generation {
                remove_cleaned(&self.env, &self.dir, cleaned.base).await;
                info!(dir = %self.dir.display(), "the log was cut during a cleaning pass: the pass stops");
                return Ok(None);
            }
            self.swap_in(group, cleaned).await?;
        }
        // Every group is swapped in: the dirty part now starts at map_end. (A crash before
        // this leaves the old checkpoint, and the next pass cleans from there again: every
        // key in the clean part is then at most once.)
        let _admin = self.admin_lock.lock().await;
        if self.state.borrow().generation != generation {
            return Ok(None);
        }
        write_checkpoint(&self.env, &self.dir, map_end, map_end).await?;
        self.state.borrow_mut().clean_end = map_end;
        info!(dir = %self.dir.display(), from = c.first_dirty, to = map_end,
            dirty_ratio = format!("{:.2}", c.ratio), keys = map.len(),
            read_bytes = stats.bytes_read, written_bytes = stats.bytes_written,
            records_removed = stats.records_removed, tombstones_removed = stats.tombstones_removed,
            elapsed_ms = self.env.clock.now().duration_since(started).as_millis() as u64,
            "log cleaner pass");
        Ok(Some(stats))
    }

    /// Whether the log was neither cut nor reset since `generation` and still holds the
    /// pass's `sources` as they were (retention may have removed some meanwhile).
    fn unchanged_since(&self, generation: u64, sources: &[Source]) -> bool {
        let st = self.state.borrow();
        st.generation == generation
            && sources.iter().all(|src| {
                let i = st.segments.partition_point(|s| s.base_offset < src.base);
                st.segments
                    .get(i)
                    .is_some_and(|s| s.base_offset == src.base && s.size == src.size)
            })
    }

    /// The sealed segments below `end`, each with its file open (so a reader never opens one
    /// by its path during a swap).
    async fn sources_below(&self, end: i64) -> Result<Vec<Source>, StorageError> {
        let planned: Vec<(i64, i64, u64, Option<SegmentFile>)> = self
            .state
            .borrow()
            .segments
            .iter()
            .take_while(|s| s.next_offset <= end)
            .map(|s| (s.base_offset, s.next_offset, s.size, s.file.clone()))
            .collect();
        let mut out = Vec::with_capacity(planned.len());
        for (base, next_offset, size, file) in planned {
            let file = self.segment_file(file, base).await?;
            out.push(Source {
                base,
                next_offset,
                size,
                file,
            });
        }
        Ok(out)
    }

    /// Clean `group` (ending at `end`) into `<base>.*.cleaned`, written and synced.
    async fn clean_group(
        &self,
        group: &[Source],
        end: i64,
        rules: &Rules<'_>,
        txns: &mut TxnTracker,
        stats: &mut CleanStats,
        throttle: &CleanerThrottle,
    ) -> Result<Cleaned, StorageError> {
        let base = group[0].base;
        let log_path = cleaned_path(&self.dir, base, LOG_SUFFIX);
        remove_if_exists(&self.env, &log_path).await?;
        let file = self
            .env
            .disk
            .open_rw(&log_path, true)
            .await
            .ctx(|| format!("creating {}", log_path.display()))?;
        let mut out = AlignedWriter::new(file.clone());
        let mut indexer = Indexer::new(base, self.cfg().index_interval_bytes);
        for src in group {
            let mut sc = Scanner::new(src.file.clone(), 0, src.size, CHUNK, true);
            while let Some((_, h, bytes)) = sc.next().await? {
                let outcome = cleaner::clean_batch(&bytes, &h, rules, txns, stats)
                    .map_err(|e| corrupt(&self.dir, src.base, &h, e))?;
                let written: Option<(BatchHeader, &[u8])> = match &outcome {
                    Outcome::Unchanged => Some((h, &bytes)),
                    Outcome::Removed => None,
                    Outcome::Rewritten(b) => Some((BatchHeader::parse(b)?, b)),
                };
                if let Some((wh, wb)) = written {
                    indexer.on_batch(&wh, out.len(), wb.len());
                    if out.push(wb).await? {
                        throttle.charge(&self.env, CHUNK as u64).await;
                    }
                }
                crate::runtime::yield_if_needed().await;
            }
            scan_ok(&sc, &self.dir, src.base)?;
            throttle.charge(&self.env, src.size).await;
        }
        let size = out
            .finish()
            .await
            .ctx(|| format!("writing {}", log_path.display()))?;
        let index_path = cleaned_path(&self.dir, base, INDEX_SUFFIX);
        let time_path = cleaned_path(&self.dir, base, TIME_INDEX_SUFFIX);
        self.env
            .write_file_durable(&index_path, &indexer.offsets)
            .await
            .ctx(|| format!("writing {}", index_path.display()))?;
        self.env
            .write_file_durable(&time_path, &indexer.sealed_times())
            .await
            .ctx(|| format!("writing {}", time_path.display()))?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        debug!(dir = %self.dir.display(), base, end, size, "cleaned a segment group");
        Ok(Cleaned {
            base,
            end,
            size,
            file,
            max_timestamp: indexer.max_timestamp,
        })
    }

    /// Commit the swap of `group` for `cleaned`, replace the segments in memory, then finish
    /// on disk.
    async fn swap_in(&self, group: &[Source], cleaned: Cleaned) -> Result<(), StorageError> {
        // Checked under the admin lock, before the commit point: retention may have removed
        // segments since the pass began.
        let same = {
            let st = self.state.borrow();
            let i = st
                .segments
                .partition_point(|s| s.base_offset < cleaned.base);
            st.segments.len() > i + group.len()
                && group.iter().zip(&st.segments[i..]).all(|(g, s)| {
                    g.base == s.base_offset && g.size == s.size && g.next_offset == s.next_offset
                })
        };
        if !same {
            remove_cleaned(&self.env, &self.dir, cleaned.base).await;
            return Err(StorageError::InvalidRecord(format!(
                "{}: segments changed during a cleaning pass",
                self.dir.display()
            )));
        }
        let swap = self.dir.join(SWAP_FILE);
        self.env
            .replace_file_durable(
                &swap,
                format!("{} {}\n", cleaned.base, cleaned.end).as_bytes(),
            )
            .await
            .ctx(|| format!("writing {}", swap.display()))?;
        let offsets = self
            .env
            .disk
            .map_index(&cleaned_path(&self.dir, cleaned.base, INDEX_SUFFIX))
            .await
            .ctx(|| format!("mapping the cleaned index of {}", cleaned.base))?;
        let times = self
            .env
            .disk
            .map_index(&cleaned_path(&self.dir, cleaned.base, TIME_INDEX_SUFFIX))
            .await
            .ctx(|| format!("mapping the cleaned time index of {}", cleaned.base))?;
        let old: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let i = st
                .segments
                .partition_point(|s| s.base_offset < cleaned.base);
            let seg = Segment {
                base_offset: cleaned.base,
                file: Some(cleaned.file),
                size: cleaned.size,
                visible_size: cleaned.size,
                on_disk: true,
                next_offset: cleaned.end,
                visible_max_timestamp: cleaned.max_timestamp,
                index: SegmentIndex::Sealed { offsets, times },
                created: self.env.clock.now(),
            };
            st.swaps += 1;
            // Readers see the cleaned batches from now on, not cached copies of the old ones.
            let below = cleaned.end.min(st.written_end);
            st.tail.drop_below(below);
            st.segments.splice(i..i + group.len(), [seg]).collect()
        };
        for seg in old {
            if let Some(f) = seg.file.filter(|f| Rc::strong_count(f) <= 2) {
                // The pass's own handle is the other one.
                let _ = f.close().await;
            }
        }
        finish_swap(&self.env, &self.dir, cleaned.base, cleaned.end).await
    }
}

const CHUNK: usize = constants::CLEANER_IO_CHUNK_BYTES;
const DECOMPRESS_LIMIT: usize = constants::DECOMPRESSED_BATCH_BYTES_MAX;

fn corrupt(dir: &Path, seg: i64, h: &BatchHeader, e: cleaner::RecordError) -> StorageError {
    StorageError::CorruptBatch(format!(
        "{} segment {seg}: batch at offset {}: {e}",
        dir.display(),
        h.base_offset
    ))
}

/// A sealed segment must be read to its end: anything else stops the pass (a cleaned copy
/// would lose what follows).
fn scan_ok(sc: &Scanner, dir: &Path, base: i64) -> Result<(), StorageError> {
    match sc.stop_reason() {
        Some(ScanStop::End) => Ok(()),
        other => Err(StorageError::CorruptBatch(format!(
            "{} segment {base} at position {}: {other:?}",
            dir.display(),
            sc.position()
        ))),
    }
}

/// Consecutive runs of segments `(base, next offset, size)` whose sizes add up to at most
/// `segment_bytes` (at least one segment each) and that span fewer than 2^32 offsets.
fn groups(segments: &[(i64, i64, u64)], segment_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &(_, next_offset, size)) in segments.iter().enumerate() {
        let span = next_offset - segments[start].0;
        if i > start && (bytes + size > segment_bytes || span > i64::from(u32::MAX)) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < segments.len() {
        out.push(start..segments.len());
    }
    out
}

fn cleaned_path(dir: &Path, base: i64, suffix: &str) -> std::path::PathBuf {
    dir.join(format!(
        "{}{CLEANED_SUFFIX}",
        segment_file_name(base, suffix)
    ))
}

/// Remove the `.cleaned` files of the group at `base` (a pass that failed before its commit
/// point). Best effort: the next open removes what is left.
async fn remove_cleaned(env: &Env, dir: &Path, base: i64) {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let _ = env.disk.remove_file(&cleaned_path(dir, base, suffix)).await;
    }
}

/// Step 4 of a swap: remove the segments in (base, end), rename the cleaned files over the
/// segment at `base`, then the swap file. Every step may run again after a crash.
async fn finish_swap(env: &Env, dir: &Path, base: i64, end: i64) -> Result<(), StorageError> {
    let names = env
        .disk
        .list_dir(dir)
        .await
        .ctx(|| format!("listing {}", dir.display()))?;
    let mut doomed: Vec<i64> = names
        .iter()
        .filter_map(|n| n.to_str().and_then(parse_segment_file_name))
        .filter(|b| *b > base && *b < end)
        .collect();
    doomed.sort_unstable();
    for b in doomed {
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
            remove_if_exists(env, &segment_path(dir, b, suffix)).await?;
        }
    }
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
        let from = cleaned_path(dir, base, suffix);
        match env
            .disk
            .rename(&from, &segment_path(dir, base, suffix))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io(
                    "renaming a cleaned segment file",
                    io::Error::new(e.kind(), format!("{}: {e}", from.display())),
                ));
            }
        }
    }
    env.disk
        .sync_dir(dir)
        .await
        .ctx(|| format!("syncing {}", dir.display()))?;
    env.remove_file_durable(&dir.join(SWAP_FILE))
        .await
        .ctx(|| format!("removing the swap file of {}", dir.display()))?;
    Ok(())
}

/// At open, before any segment is read: finish a swap past its commit point, remove the
/// files of one that did not reach it, and the prefix files of an unfinished snapshot
/// install (`prefix`; the install starts again).
pub(in crate::storage) async fn recover_swap(env: &Env, dir: &Path) -> Result<(), StorageError> {
    let swap = dir.join(SWAP_FILE);
    match env.disk.read(&swap).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut parts = text.split_whitespace().map(str::parse::<i64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(base)), Some(Ok(end))) if base >= 0 && end > base => {
                    info!(dir = %dir.display(), base, end, "finishing a log cleaner swap a crash interrupted");
                    finish_swap(env, dir, base, end).await?;
                }
                _ => {
                    return Err(StorageError::CorruptBatch(format!(
                        "{} does not hold a swap: {text:?}",
                        swap.display()
                    )));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("reading the cleaner's swap file", e)),
    }
    let names = match env.disk.list_dir(dir).await {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("listing a partition directory", e)),
    };
    for n in names {
        if let Some(name) = n.to_str().filter(|n| n.ends_with(CLEANED_SUFFIX)) {
            info!(dir = %dir.display(), file = name, "removing a log cleaner file a crash left before its swap");
            remove_if_exists(env, &dir.join(name)).await?;
        }
        if let Some(name) = n
            .to_str()
            .filter(|n| n.ends_with(super::prefix::PREFIX_SUFFIX))
        {
            info!(dir = %dir.display(), file = name, "removing a prefix file of an unfinished snapshot install");
            remove_if_exists(env, &dir.join(name)).await?;
        }
    }
    Ok(())
}

/// The checkpoint: (clean end, replay floor), (0, 0) if there is none. The clean end is
/// where the dirty part starts (a checkpoint that does not read only costs a pass cleaning
/// again); the replay floor is at or past it: the journal's replay skips batches below it,
/// whose segments were fsynced before any swap could change them.
pub(super) async fn read_checkpoint(env: &Env, dir: &Path) -> Result<(i64, i64), StorageError> {
    let path = dir.join(CHECKPOINT_FILE);
    match env.disk.read(&path).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let v: Vec<i64> = text
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            match v[..] {
                [clean, floor] if clean >= 0 && floor >= clean => Ok((clean, floor)),
                _ => Err(StorageError::CorruptBatch(format!(
                    "{} does not hold a checkpoint: {text:?}",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(StorageError::io("reading the cleaner's checkpoint", e)),
    }
}

async fn write_checkpoint(
    env: &Env,
    dir: &Path,
    clean_end: i64,
    replay_floor: i64,
) -> Result<(), StorageError> {
    let path = dir.join(CHECKPOINT_FILE);
    env.replace_file_durable(&path, format!("{clean_end} {replay_floor}\n").as_bytes())
        .await
        .ctx(|| format!("replacing {}", path.display()))
}

/// Writes a stream of bytes to a new file with aligned direct I/O: whole aligned blocks as
/// they fill up, the last partial block padded with zeros, then the file cut to its length
/// and fsynced.
pub(super) struct AlignedWriter {
    file: SegmentFile,
    pending: Vec<u8>,
    /// File position of `pending[0]` (aligned).
    at: u64,
}

impl AlignedWriter {
    pub(super) fn new(file: SegmentFile) -> Self {
        AlignedWriter {
            file,
            pending: Vec::with_capacity(CHUNK * 2),
            at: 0,
        }
    }

    /// Bytes pushed so far.
    pub(super) fn len(&self) -> u64 {
        self.at + self.pending.len() as u64
    }

    /// Append `bytes`; true if a chunk went to the file.
    pub(super) async fn push(&mut self, bytes: &[u8]) -> Result<bool, StorageError> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() < CHUNK {
            return Ok(false);
        }
        let align = self.file.alignment() as usize;
        let n = self.pending.len() / align * align;
        self.write(n)
            .await
            .ctx(|| format!("writing {}", self.file.path().display()))?;
        Ok(true)
    }

    async fn write(&mut self, n: usize) -> io::Result<()> {
        let align = self.file.alignment() as usize;
        let len = n.div_ceil(align) * align;
        let mut buf = self.file.alloc_buffer(len);
        let slice = buf.as_mut_slice();
        slice[..n].copy_from_slice(&self.pending[..n]);
        slice[n..len].fill(0);
        self.file.write_at(buf, self.at).await?;
        self.pending.drain(..n);
        self.at += n as u64;
        Ok(())
    }

    /// Write what is left, cut the file to its length, fsync it; returns the length.
    pub(super) async fn finish(mut self) -> io::Result<u64> {
        let total = self.len();
        if !self.pending.is_empty() {
            let n = self.pending.len();
            let align = self.file.alignment() as usize;
            let whole = n / align * align;
            if whole > 0 {
                self.write(whole).await?;
            }
            if !self.pending.is_empty() {
                let rest = self.pending.len();
                self.write(rest).await?;
            }
        }
        self.file.truncate(total).await?;
        self.file.fdatasync().await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fill_up_to_the_segment_size() {
        let shapes = [
            (0, 10, 400),
            (10, 20, 400),
            (20, 30, 400),
            (30, 40, 900),
            (40, 50, 100),
        ];
        assert_eq!(groups(&shapes, 1000), [0..2, 2..3, 3..5]);
        assert_eq!(groups(&shapes, 100), [0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(groups(&[], 100).is_empty());
        let wide = [(0, 1 << 31, 10), (1 << 31, (1 << 32) + 5, 10)];
        assert_eq!(groups(&wide, 1000), [0..1, 1..2]);
    }
}
