//! Opening a partition directory after a clean shutdown or a crash.
//!
//! - Clean-shutdown marker (`clean_shutdown`): read and removed first, the
//!   removal made durable before anything else, so it serves one open only.
//!   If it decodes and agrees with the files (it names the last segment,
//!   whose file has exactly the recorded size; that segment's index files
//!   are valid and end with the recorded max timestamp; the newest producer
//!   snapshot is at the recorded log end; the batches after the last index
//!   entry, at most one index interval plus a batch, check out and end
//!   exactly at the log end), the last segment is opened like a sealed one:
//!   indexes from its files, producer state from the snapshot, no scan and
//!   no replay. Anything else is logged with the reason and the partition
//!   is recovered as below.
//! - Sealed segments (all but the last): their index files are checked
//!   (whole entries, monotonic, inside the log, below the next segment's
//!   base). Missing or damaged ones are rebuilt by scanning the segment,
//!   which also cuts any invalid tail. Sealed segments are otherwise
//!   trusted: a segment is sealed (synced, truncated, indexes written)
//!   before the next segment's file is created.
//! - The last segment is scanned batch by batch (length, magic 2, CRC,
//!   increasing offsets) and cut at the first invalid batch. The cut is
//!   truncated and synced before the file is preallocated again, so no stale
//!   valid-looking bytes remain after the logical end. Its indexes are
//!   rebuilt in memory (its index files, if any, are stale and rewritten
//!   when it is sealed).
//! - Producer state (idempotence): the newest snapshot that decodes is
//!   loaded and the batch headers from its offset to the end are replayed:
//!   sealed segments after it with a header scan, the last segment through
//!   the recovery scan itself (no second read). Without a snapshot, the
//!   whole log is replayed. A snapshot past the recovered end (possible only
//!   if the disk lost synced data) is discarded and the whole log replayed.

use std::path::Path;

use tracing::{debug, info, warn};

use super::batch::BatchHeader;
use super::clean_shutdown::{CLEAN_SHUTDOWN_FILE, CleanShutdown};
use super::error::{IoContext, StorageError};
use super::index::{self, Indexer};
use super::io::{Env, SegmentFile};
use super::log::{LogConfig, OpenedFrom, Recovered};
use super::producer_state::{ProducerStateTable, parse_snapshot_file_name, snapshot_file_name};
use super::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, ScanStop, Scanner, Segment, SegmentIndex, TIME_INDEX_SUFFIX,
    parse_segment_file_name, scan_segment, segment_path,
};
use crate::constants::PRODUCER_SNAPSHOTS_KEPT;

const REPLAY_CHUNK_BYTES: usize = 1 << 20;

pub(super) async fn recover(
    env: &Env,
    dir: &Path,
    cfg: &LogConfig,
) -> Result<Recovered, StorageError> {
    env.disk
        .create_dir_all(dir)
        .await
        .ctx(|| format!("creating {}", dir.display()))?;
    let mut bases: Vec<i64> = env
        .disk
        .list_dir(dir)
        .await
        .ctx(|| format!("listing {}", dir.display()))?
        .iter()
        .filter_map(|name| name.to_str().and_then(parse_segment_file_name))
        .collect();
    bases.sort_unstable();
    let created = bases.is_empty();
    if created {
        let path = segment_path(dir, 0, LOG_SUFFIX);
        let f = env
            .disk
            .open_rw(&path, true)
            .await
            .ctx(|| format!("creating {}", path.display()))?;
        f.close()
            .await
            .ctx(|| format!("closing {}", path.display()))?;
        env.disk
            .sync_dir(dir)
            .await
            .ctx(|| format!("syncing {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            env.disk
                .sync_dir(parent)
                .await
                .ctx(|| format!("syncing {}", parent.display()))?;
        }
        bases.push(0);
    }
    let marker = take_marker(env, dir, created).await?;
    let (from, mut producers) = load_newest_snapshot(env, dir, i64::MAX)
        .await
        .unwrap_or_default();
    let mut segments = Vec::with_capacity(bases.len());
    for w in bases.windows(2) {
        let seg = recover_sealed(env, dir, w[0], w[1], cfg).await?;
        if w[1] > from {
            replay_sealed(env, dir, &seg, from, &mut producers).await?;
        }
        segments.push(seg);
    }
    let last = *bases.last().expect("at least one segment");
    let mut opened = None;
    if let Some(m) = marker {
        match open_active_clean(env, dir, last, &m, from, cfg).await? {
            Ok(parts) => opened = Some(parts),
            Err(why) => info!(dir = %dir.display(), reason = %why,
                "clean-shutdown marker does not match the files: running full recovery"),
        }
    }
    let opened_from = if created {
        OpenedFrom::Created
    } else if opened.is_some() {
        OpenedFrom::CleanShutdown
    } else {
        OpenedFrom::Recovery
    };
    let (active, file, tail_block, preallocated) = match opened {
        Some(parts) => parts,
        None => {
            let mut on_batch = |h: &BatchHeader, bytes: &[u8]| {
                if h.producer_id >= 0 && h.base_offset >= from {
                    producers.replay(h, bytes);
                }
            };
            recover_active(env, dir, last, cfg, &mut on_batch).await?
        }
    };
    let log_end = active.next_offset;
    let written = active.size;
    if from > log_end {
        // Possible only if the disk lost synced data or a truncation was cut short: the
        // newest snapshot at or below the end, and a replay from it (a replay of the whole
        // log would forget the producers of deleted segments).
        let (at, table) = load_newest_snapshot(env, dir, log_end)
            .await
            .unwrap_or_default();
        warn!(dir = %dir.display(), snapshot = from, log_end, replay_from = at,
            "producer state snapshot is past the end of the log: replaying from an older one");
        producers = table;
        for seg in &segments {
            replay_sealed(env, dir, seg, at, &mut producers).await?;
        }
        let start = if at > active.base_offset {
            active.lookup_position(at)
        } else {
            0
        };
        replay(file.clone(), start, written, at, &mut producers).await?;
    }
    segments.push(active);
    producers.remove_expired(env.clock.wall_ms());
    remove_stale_snapshots(env, dir, segments[0].base_offset, log_end).await;
    Ok(Recovered {
        segments,
        log_end,
        active_file: file,
        active_written: written,
        active_tail_block: tail_block,
        active_preallocated: preallocated,
        producers,
        opened_from,
    })
}

/// Read and remove the clean-shutdown marker, durably, before the log can
/// take any append: after this, a crash leads to a full recovery. Returns
/// the marker if one was there and decodes (a damaged one is logged).
/// `created`: the directory had no segment (a new partition: a missing
/// marker is expected and not logged).
async fn take_marker(
    env: &Env,
    dir: &Path,
    created: bool,
) -> Result<Option<CleanShutdown>, StorageError> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    // A temporary file left by a close that crashed before its rename.
    let _ = env
        .disk
        .remove_file(&dir.join(format!("{CLEAN_SHUTDOWN_FILE}.tmp")))
        .await;
    let bytes = match env.disk.read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !created {
                info!(dir = %dir.display(), "no clean-shutdown marker: running full recovery");
            }
            return Ok(None);
        }
        Err(e) => {
            warn!(marker = %path.display(), error = %e,
                "cannot read the clean-shutdown marker: running full recovery");
            Vec::new()
        }
    };
    env.remove_file_durable(&path)
        .await
        .ctx(|| format!("removing {}", path.display()))?;
    assert!(
        env.disk.len(&path).await.is_err(),
        "the clean-shutdown marker must be gone before the log opens"
    );
    if bytes.is_empty() {
        return Ok(None);
    }
    match CleanShutdown::decode(&bytes) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            warn!(marker = %path.display(), error = %e,
                "damaged clean-shutdown marker: running full recovery");
            Ok(None)
        }
    }
}

/// The active segment, its open file, its partial last block and its
/// preallocated size (what [`recover_active`] returns).
type ActiveParts = (Segment, SegmentFile, Vec<u8>, u64);

/// Open the last segment as a clean close left it, trusting `m` after
/// checking it against the files; `Ok(Err(reason))` if they disagree (the
/// caller then runs [`recover_active`]). `snapshot_at` is the offset of the
/// newest valid producer snapshot (0 if none). Reads the index files and at
/// most one index interval plus one batch of the segment.
async fn open_active_clean(
    env: &Env,
    dir: &Path,
    base: i64,
    m: &CleanShutdown,
    snapshot_at: i64,
    cfg: &LogConfig,
) -> Result<Result<ActiveParts, String>, StorageError> {
    if m.segment_base != base {
        return Ok(Err(format!(
            "marker names segment {} but the last segment is {base}",
            m.segment_base
        )));
    }
    let path = segment_path(dir, base, LOG_SUFFIX);
    let len = env
        .disk
        .len(&path)
        .await
        .ctx(|| format!("stat {}", path.display()))?;
    if len != m.segment_bytes {
        return Ok(Err(format!(
            "segment is {len} bytes, the marker says {}",
            m.segment_bytes
        )));
    }
    if snapshot_at != m.log_end {
        return Ok(Err(format!(
            "newest producer snapshot is at {snapshot_at}, the log end is {}",
            m.log_end
        )));
    }
    let rel_end = (m.log_end - base) as u64;
    let (Ok(offsets), Ok(times)) = (
        env.disk.read(&segment_path(dir, base, INDEX_SUFFIX)).await,
        env.disk
            .read(&segment_path(dir, base, TIME_INDEX_SUFFIX))
            .await,
    ) else {
        return Ok(Err("index files missing".into()));
    };
    if !index::offset_index_is_valid(&offsets, len, rel_end.max(1))
        || !index::time_index_is_valid(&times, rel_end.max(1), len == 0)
    {
        return Ok(Err("index files damaged".into()));
    }
    let n = index::time_entry_count(&times);
    let last_time = (n > 0).then(|| {
        let (ts, rel) = index::time_entry(&times, n - 1);
        (ts, base + i64::from(rel))
    });
    if last_time != m.max_timestamp {
        return Ok(Err(format!(
            "time index ends with {last_time:?}, the marker says {:?}",
            m.max_timestamp
        )));
    }
    let f = env
        .disk
        .open_rw(&path, false)
        .await
        .ctx(|| format!("opening {}", path.display()))?;
    // Trust, but read the few batches after the last index entry: they
    // must be valid and end exactly at the recorded size and log end.
    let (from_offset, from_pos) =
        index::offset_entry_count(&offsets)
            .checked_sub(1)
            .map_or((base, 0), |i| {
                let (rel, pos) = index::offset_entry(&offsets, i);
                (base + i64::from(rel), u64::from(pos))
            });
    let mut sc = Scanner::new(f.clone(), from_pos, len, REPLAY_CHUNK_BYTES, true);
    let mut next = from_offset;
    while let Some((pos, h, _)) = sc.next().await? {
        if (pos == from_pos && h.base_offset != from_offset) || h.base_offset < next {
            return Ok(Err(format!(
                "batch at {pos} has base offset {}, expected {next}",
                h.base_offset
            )));
        }
        next = h.next_offset();
    }
    if sc.stop_reason() != Some(&ScanStop::End) || (len > 0 && next != m.log_end) {
        return Ok(Err(format!(
            "the last batches end at offset {next} ({:?}), the marker says {}",
            sc.stop_reason(),
            m.log_end
        )));
    }
    let (tail_block, preallocated) = prepare_for_appends(&f, &path, len, cfg.segment_bytes).await?;
    debug!(segment = %path.display(), bytes = len, next_offset = m.log_end,
        "opened active segment from the clean-shutdown marker (no scan)");
    let indexer = Indexer::resume(
        base,
        cfg.index_interval_bytes,
        offsets,
        times,
        len,
        m.max_timestamp,
    );
    let seg = Segment {
        base_offset: base,
        file: Some(f.clone()),
        size: len,
        visible_size: len,
        on_disk: true,
        next_offset: m.log_end,
        visible_max_timestamp: m.max_timestamp,
        index: SegmentIndex::Building(indexer),
        created: env.clock.now(),
    };
    Ok(Ok((seg, f, tail_block, preallocated)))
}

/// Snapshot offsets in `dir`, ascending.
pub(super) async fn snapshot_offsets(env: &Env, dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = env
        .disk
        .list_dir(dir)
        .await
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.to_str().and_then(parse_snapshot_file_name))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The newest snapshot that reads back valid (a damaged one is logged and
/// removed: the replay from an older one covers its range).
async fn load_newest_snapshot(
    env: &Env,
    dir: &Path,
    at_most: i64,
) -> Option<(i64, ProducerStateTable)> {
    for offset in snapshot_offsets(env, dir).await.into_iter().rev() {
        if offset > at_most {
            continue;
        }
        let path = dir.join(snapshot_file_name(offset));
        match env
            .disk
            .read(&path)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| ProducerStateTable::decode_snapshot(&b).map_err(|e| e.to_string()))
        {
            Ok((at, table)) if at == offset => return Some((at, table)),
            Ok((at, _)) => warn!(snapshot = %path.display(), at,
                "producer state snapshot names another offset: removing it"),
            Err(e) => warn!(snapshot = %path.display(), error = %e,
                "damaged producer state snapshot: removing it"),
        }
        // Gone, so it never counts among the snapshots kept.
        if let Err(e) = env.disk.remove_file(&path).await {
            warn!(snapshot = %path.display(), error = %e, "cannot remove a damaged snapshot");
        }
    }
    None
}

/// Remove the producer snapshots no longer needed: those past `log_end`, and those below
/// the first segment's base `first_base` but the newest of them. Kept: one per live segment
/// (each roll writes one at the new segment's base, as Kafka does), so a truncation to any
/// offset in the log finds a snapshot at or below it, and the newest one below the first
/// segment, which alone remembers the producers of deleted segments; always at least the
/// `PRODUCER_SNAPSHOTS_KEPT` newest (a fallback if the newest is damaged).
pub(super) async fn remove_stale_snapshots(env: &Env, dir: &Path, first_base: i64, log_end: i64) {
    let offsets: Vec<i64> = snapshot_offsets(env, dir).await;
    let live: Vec<i64> = offsets.iter().copied().filter(|o| *o <= log_end).collect();
    let newest_kept_from = live.len().saturating_sub(PRODUCER_SNAPSHOTS_KEPT);
    let newest_below_first = live.iter().copied().filter(|o| *o < first_base).max();
    for o in offsets {
        let keep = o <= log_end
            && (o >= first_base
                || Some(o) == newest_below_first
                || live
                    .iter()
                    .position(|l| *l == o)
                    .is_some_and(|i| i >= newest_kept_from));
        if !keep {
            let path = dir.join(snapshot_file_name(o));
            if let Err(e) = env.disk.remove_file(&path).await {
                warn!(snapshot = %path.display(), error = %e, "cannot remove an old producer state snapshot");
            }
        }
    }
}

/// Replay the producer batches of a sealed segment from offset `from`.
async fn replay_sealed(
    env: &Env,
    dir: &Path,
    seg: &Segment,
    from: i64,
    producers: &mut ProducerStateTable,
) -> Result<(), StorageError> {
    if seg.size == 0 || seg.next_offset <= from {
        return Ok(());
    }
    let path = segment_path(dir, seg.base_offset, LOG_SUFFIX);
    let f = env
        .disk
        .open_read(&path)
        .await
        .ctx(|| format!("opening {}", path.display()))?;
    let start = if from > seg.base_offset {
        seg.lookup_position(from)
    } else {
        0
    };
    replay(f, start, seg.size, from, producers).await
}

/// Feed the headers of the batches in `[start, end)` of `file` with base
/// offset >= `from` to the producer table. Headers only: the records are
/// never decoded.
async fn replay(
    file: SegmentFile,
    start: u64,
    end: u64,
    from: i64,
    producers: &mut ProducerStateTable,
) -> Result<(), StorageError> {
    let mut sc = Scanner::new(file, start, end, REPLAY_CHUNK_BYTES, false);
    while let Some((_, h, bytes)) = sc.next().await? {
        if h.producer_id >= 0 && h.base_offset >= from {
            producers.replay(&h, &bytes);
        }
    }
    match sc.stop_reason() {
        Some(ScanStop::Invalid(why)) => Err(StorageError::CorruptBatch(format!(
            "replaying producer state from {}: {why}",
            sc.position()
        ))),
        _ => Ok(()),
    }
}

async fn recover_sealed(
    env: &Env,
    dir: &Path,
    base: i64,
    next_base: i64,
    cfg: &LogConfig,
) -> Result<Segment, StorageError> {
    let log_path = segment_path(dir, base, LOG_SUFFIX);
    let index_path = segment_path(dir, base, INDEX_SUFFIX);
    let time_path = segment_path(dir, base, TIME_INDEX_SUFFIX);
    let mut log_len = env
        .disk
        .len(&log_path)
        .await
        .ctx(|| format!("stat {}", log_path.display()))?;
    let rel_end = (next_base - base) as u64;
    let offsets = env.disk.map_index(&index_path).await.ok();
    let times = env.disk.map_index(&time_path).await.ok();
    let valid = match (&offsets, &times) {
        (Some(o), Some(t)) => {
            index::offset_index_is_valid(o.as_slice(), log_len, rel_end)
                && index::time_index_is_valid(t.as_slice(), rel_end, log_len == 0)
        }
        _ => false,
    };
    let (offsets, times) = if valid {
        (offsets.expect("valid"), times.expect("valid"))
    } else {
        drop((offsets, times));
        warn!(segment = %log_path.display(), "index files missing or damaged: rebuilding them");
        let f = env
            .disk
            .open_rw(&log_path, false)
            .await
            .ctx(|| format!("opening {}", log_path.display()))?;
        let res = scan_segment(
            f.clone(),
            base,
            log_len,
            cfg.index_interval_bytes,
            &mut |_, _| {},
        )
        .await?;
        if res.end < log_len {
            warn!(segment = %log_path.display(), cut_bytes = log_len - res.end, position = res.end,
                reason = ?res.stop, "sealed segment has an invalid tail: truncating");
            f.truncate(res.end)
                .await
                .ctx(|| format!("truncating {}", log_path.display()))?;
            f.fdatasync()
                .await
                .ctx(|| format!("fdatasync {}", log_path.display()))?;
            log_len = res.end;
        }
        // A cleaned segment may end before the next one starts (compaction leaves gaps).
        if res.next_offset > next_base {
            warn!(segment = %log_path.display(), end = res.next_offset, next_base,
                "sealed segment does not end where the next one starts");
        }
        drop(f);
        env.write_file_durable(&index_path, &res.indexer.offsets)
            .await
            .ctx(|| format!("writing {}", index_path.display()))?;
        env.write_file_durable(&time_path, &res.indexer.sealed_times())
            .await
            .ctx(|| format!("writing {}", time_path.display()))?;
        env.disk
            .sync_dir(dir)
            .await
            .ctx(|| format!("syncing {}", dir.display()))?;
        let o = env
            .disk
            .map_index(&index_path)
            .await
            .ctx(|| format!("mapping {}", index_path.display()))?;
        let t = env
            .disk
            .map_index(&time_path)
            .await
            .ctx(|| format!("mapping {}", time_path.display()))?;
        // Paired check: what was written reads back valid.
        assert!(index::offset_index_is_valid(
            o.as_slice(),
            log_len,
            u64::from(u32::MAX)
        ));
        assert!(index::time_index_is_valid(
            t.as_slice(),
            u64::from(u32::MAX),
            log_len == 0
        ));
        (o, t)
    };
    let n = index::time_entry_count(times.as_slice());
    let visible_max_timestamp = (n > 0).then(|| {
        let (ts, rel) = index::time_entry(times.as_slice(), n - 1);
        (ts, base + i64::from(rel))
    });
    Ok(Segment {
        base_offset: base,
        file: None,
        size: log_len,
        visible_size: log_len,
        on_disk: true,
        next_offset: next_base,
        visible_max_timestamp,
        index: SegmentIndex::Sealed { offsets, times },
        created: env.clock.now(),
    })
}

/// Returns the active segment, its open file, the bytes of its partial last
/// block, and how far it is preallocated.
async fn recover_active(
    env: &Env,
    dir: &Path,
    base: i64,
    cfg: &LogConfig,
    on_batch: &mut dyn FnMut(&BatchHeader, &[u8]),
) -> Result<ActiveParts, StorageError> {
    let path = segment_path(dir, base, LOG_SUFFIX);
    let f = env
        .disk
        .open_rw(&path, false)
        .await
        .ctx(|| format!("opening {}", path.display()))?;
    let len = f.size().await.ctx(|| format!("stat {}", path.display()))?;
    let res = scan_segment(f.clone(), base, len, cfg.index_interval_bytes, on_batch).await?;
    match &res.stop {
        ScanStop::Invalid(why) => warn!(
            segment = %path.display(),
            position = res.end,
            cut_bytes = len - res.end,
            next_offset = res.next_offset,
            reason = %why,
            "torn or corrupt tail after the last valid batch: truncating"
        ),
        // An empty segment (a new partition) has nothing to report.
        ScanStop::Zeros | ScanStop::End if res.end == 0 => debug!(
            segment = %path.display(),
            next_offset = res.next_offset,
            "recovered empty active segment"
        ),
        ScanStop::Zeros | ScanStop::End => info!(
            segment = %path.display(),
            bytes = res.end,
            next_offset = res.next_offset,
            "recovered active segment"
        ),
    }
    if len > res.end {
        f.truncate(res.end)
            .await
            .ctx(|| format!("truncating {}", path.display()))?;
        f.fdatasync()
            .await
            .ctx(|| format!("fdatasync {}", path.display()))?;
    }
    let (tail_block, preallocated) =
        prepare_for_appends(&f, &path, res.end, cfg.segment_bytes).await?;
    let seg = Segment {
        base_offset: base,
        file: Some(f.clone()),
        size: res.end,
        visible_size: res.end,
        on_disk: true,
        next_offset: res.next_offset,
        visible_max_timestamp: res.indexer.max_timestamp,
        index: SegmentIndex::Building(res.indexer),
        created: env.clock.now(),
    };
    Ok((seg, f, tail_block, preallocated))
}

/// Make the active segment ready for the flusher, whose logical end is
/// `end`: read the partial last block (direct-I/O writes rewrite it whole)
/// and preallocate past the end. Returns that block and the preallocated
/// size.
async fn prepare_for_appends(
    f: &SegmentFile,
    path: &Path,
    end: u64,
    segment_bytes: u64,
) -> Result<(Vec<u8>, u64), StorageError> {
    let align = f.alignment();
    let block_start = end - end % align;
    let tail_block = if block_start < end {
        let b = f
            .read_at(block_start, (end - block_start) as usize)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert_eq!(
            b.len() as u64,
            end - block_start,
            "short read of the last block"
        );
        b.to_vec()
    } else {
        Vec::new()
    };
    let preallocated = super::log::preallocation_target(end, segment_bytes);
    match f.pre_allocate(preallocated).await {
        Ok(()) => Ok((tail_block, preallocated)),
        Err(e) => {
            let e = StorageError::io(format!("preallocating {}", path.display()), e);
            if !e.is_disk_full() {
                return Err(e);
            }
            // A full disk does not keep the partition from opening: it serves reads, and its
            // first append finds the disk full (and takes writes again once there is room).
            warn!(segment = %path.display(), "disk full: opening without preallocated space");
            let size = f
                .size()
                .await
                .ctx(|| format!("reading the size of {}", path.display()))?;
            Ok((tail_block, size))
        }
    }
}

/// Fuzz harness (`sluice::fuzzing::segment_recovery`): recover a partition whose only segment
/// holds `data`, on the simulated disk, and check what recovery must guarantee for any bytes:
/// it succeeds, and the log it leaves is the longest valid prefix of batches, back to back from
/// offset 0, with nothing but zeros after it in the file (so no stale byte can read as a
/// batch later). Panics on a violation (that is the fuzzer's finding).
pub fn fuzz_segment(data: &[u8]) {
    use super::io::{Clock, Disk, ManualClock};
    use super::sim::{Faults, SimDisk};
    use std::rc::Rc;
    let disk = SimDisk::new(0, Faults::default());
    let env = Env::new(
        Rc::new(disk.clone()),
        Rc::new(ManualClock::new(0)) as Rc<dyn Clock>,
        crate::storage::io::SyncScope::default(),
    );
    let dir = Path::new("/fuzz/t-0");
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 512,
        ..LogConfig::default()
    };
    futures::executor::block_on(async {
        disk.create_dir_all(dir).await.expect("mkdir");
        let path = segment_path(dir, 0, LOG_SUFFIX);
        let f = disk.open_rw(&path, true).await.expect("create");
        if !data.is_empty() {
            let mut buf = f.alloc_buffer(data.len());
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            f.write_at(buf, 0).await.expect("write");
        }
        f.truncate(data.len() as u64).await.expect("truncate");
        f.fdatasync().await.expect("sync");
        disk.sync_dir(dir).await.expect("sync dir");
        drop(f);
        let rec = recover(&env, dir, &cfg)
            .await
            .unwrap_or_else(|e| panic!("recovery failed on {} bytes: {e}", data.len()));
        // The kept prefix: valid batches back to back from offset 0 (base offsets as found:
        // recovery does not renumber, the scanner only checks lengths, magic and CRCs).
        let mut pos = 0usize;
        let mut batches = 0usize;
        while (pos as u64) < rec.active_written {
            let (h, size) = super::batch::validate_batch(&data[pos..])
                .unwrap_or_else(|e| panic!("recovery kept an invalid batch at {pos}: {e}"));
            assert_eq!(size, h.size());
            pos += size;
            batches += 1;
        }
        assert_eq!(
            pos as u64, rec.active_written,
            "kept bytes end inside a batch"
        );
        let file = disk.read(&path).await.expect("read back");
        assert!(
            file.len() as u64 >= rec.active_written
                && file[..rec.active_written as usize] == data[..rec.active_written as usize],
            "recovery changed the kept batches"
        );
        assert!(
            file[rec.active_written as usize..].iter().all(|b| *b == 0),
            "stale bytes after the recovered end"
        );
        assert!(batches > 0 || rec.log_end == 0);
    });
}
