//! Opening a partition directory after a clean shutdown or a crash.
//!
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

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use tracing::{info, warn};

use super::error::{IoContext, StorageError};
use super::index::{self, IndexBytes};
use super::log::{LogConfig, Recovered};
use super::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, ScanStop, Segment, SegmentIndex, TIME_INDEX_SUFFIX,
    parse_segment_file_name, scan_segment, segment_path,
};
use crate::runtime::file::{self, SegmentFile};

pub(super) async fn recover(
    dir: &Path,
    cfg: &LogConfig,
    preallocate_step: u64,
) -> Result<Recovered, StorageError> {
    file::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_file_name))
        .collect();
    bases.sort_unstable();
    if bases.is_empty() {
        let path = segment_path(dir, 0, LOG_SUFFIX);
        let f = SegmentFile::open_rw(&path, true)
            .await
            .ctx(|| format!("creating {}", path.display()))?;
        f.close()
            .await
            .ctx(|| format!("closing {}", path.display()))?;
        file::sync_dir(dir)
            .await
            .ctx(|| format!("syncing {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            file::sync_dir(parent)
                .await
                .ctx(|| format!("syncing {}", parent.display()))?;
        }
        bases.push(0);
    }
    let mut segments = Vec::with_capacity(bases.len());
    for w in bases.windows(2) {
        segments.push(recover_sealed(dir, w[0], w[1], cfg).await?);
    }
    let last = *bases.last().expect("at least one segment");
    let (active, file, tail_block, preallocated) =
        recover_active(dir, last, cfg, preallocate_step).await?;
    let log_end = active.next_offset;
    let written = active.size;
    segments.push(active);
    Ok(Recovered {
        segments,
        log_end,
        active_file: file,
        active_written: written,
        active_tail_block: tail_block,
        active_preallocated: preallocated,
    })
}

async fn recover_sealed(
    dir: &Path,
    base: i64,
    next_base: i64,
    cfg: &LogConfig,
) -> Result<Segment, StorageError> {
    let log_path = segment_path(dir, base, LOG_SUFFIX);
    let index_path = segment_path(dir, base, INDEX_SUFFIX);
    let time_path = segment_path(dir, base, TIME_INDEX_SUFFIX);
    let mut log_len = std::fs::metadata(&log_path)
        .ctx(|| format!("stat {}", log_path.display()))?
        .len();
    let rel_end = (next_base - base) as u64;
    let offsets = IndexBytes::map_file(&index_path).ok();
    let times = IndexBytes::map_file(&time_path).ok();
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
        let f = Rc::new(
            SegmentFile::open_rw(&log_path, false)
                .await
                .ctx(|| format!("opening {}", log_path.display()))?,
        );
        let res = scan_segment(f.clone(), base, log_len, cfg.index_interval_bytes).await?;
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
        if res.next_offset != next_base {
            warn!(segment = %log_path.display(), end = res.next_offset, next_base,
                "sealed segment does not end where the next one starts");
        }
        drop(f);
        file::write_file_durable(&index_path, &res.indexer.offsets)
            .await
            .ctx(|| format!("writing {}", index_path.display()))?;
        file::write_file_durable(&time_path, &res.indexer.sealed_times())
            .await
            .ctx(|| format!("writing {}", time_path.display()))?;
        file::sync_dir(dir)
            .await
            .ctx(|| format!("syncing {}", dir.display()))?;
        let o = IndexBytes::map_file(&index_path)
            .ctx(|| format!("mapping {}", index_path.display()))?;
        let t =
            IndexBytes::map_file(&time_path).ctx(|| format!("mapping {}", time_path.display()))?;
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
        next_offset: next_base,
        visible_max_timestamp,
        index: SegmentIndex::Sealed { offsets, times },
        created: Instant::now(),
    })
}

/// Returns the active segment, its open file, the bytes of its partial last
/// block, and how far it is preallocated.
async fn recover_active(
    dir: &Path,
    base: i64,
    cfg: &LogConfig,
    preallocate_step: u64,
) -> Result<(Segment, Rc<SegmentFile>, Vec<u8>, u64), StorageError> {
    let path = segment_path(dir, base, LOG_SUFFIX);
    let f = Rc::new(
        SegmentFile::open_rw(&path, false)
            .await
            .ctx(|| format!("opening {}", path.display()))?,
    );
    let len = f
        .file_size()
        .await
        .ctx(|| format!("stat {}", path.display()))?;
    let res = scan_segment(f.clone(), base, len, cfg.index_interval_bytes).await?;
    match &res.stop {
        ScanStop::Invalid(why) => warn!(
            segment = %path.display(),
            position = res.end,
            cut_bytes = len - res.end,
            next_offset = res.next_offset,
            reason = %why,
            "torn or corrupt tail after the last valid batch: truncating"
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
    let align = f.alignment();
    let block_start = res.end - res.end % align;
    let tail_block = if block_start < res.end {
        let b = f
            .read_at(block_start, (res.end - block_start) as usize)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert_eq!(
            b.len() as u64,
            res.end - block_start,
            "short read of the last block"
        );
        b.to_vec()
    } else {
        Vec::new()
    };
    let preallocated = (res.end / preallocate_step + 1) * preallocate_step;
    f.pre_allocate(preallocated)
        .await
        .ctx(|| format!("preallocating {}", path.display()))?;
    let seg = Segment {
        base_offset: base,
        file: Some(f.clone()),
        size: res.end,
        visible_size: res.end,
        next_offset: res.next_offset,
        visible_max_timestamp: res.indexer.max_timestamp,
        index: SegmentIndex::Building(res.indexer),
        created: Instant::now(),
    };
    Ok((seg, f, tail_block, preallocated))
}
