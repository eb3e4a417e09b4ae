//! The reader: fetches from the tail cache or the segments, lookups by timestamp.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::*;
use crate::storage::batch::BatchHeader;
use crate::storage::error::{IoContext, StorageError};
use crate::storage::index::{self};
use crate::storage::io::SegmentFile;
use crate::storage::segment::{Scanner, segment_path};
use crate::types::Offset;

/// Smallest read issued for a fetch from a segment.
pub(super) const READ_CHUNK_MIN_BYTES: usize = 64 << 10;

/// How to read from one segment.
pub(super) enum ReadPlan {
    /// No visible bytes.
    Empty,
    /// Read `[start, end)` of `file`; `start` is a batch boundary.
    Read {
        file: SegmentFile,
        start: u64,
        end: u64,
    },
}

impl PartitionLog {
    /// Whole batches starting with the one containing `offset`, below the
    /// high watermark, cut at batch boundaries to at most `max_bytes` except
    /// that the first batch is whole even if larger (KIP-74); batches come
    /// from one segment per call. `offset == HW` gives empty records;
    /// `offset < log start` or `> HW` is `OffsetOutOfRange`. Served from the
    /// tail cache when possible, else with one read from the segment at the
    /// sparse index position (two if the first batch is larger than that
    /// read).
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<FetchData, StorageError> {
        let data = self.read_chunks(offset, max_bytes).await?;
        Ok(FetchData {
            records: data.records.join(),
            high_watermark: data.high_watermark,
            log_start_offset: data.log_start_offset,
        })
    }

    /// [`PartitionLog::read`] without joining the batches into one buffer: from the tail
    /// cache, the cached batches themselves (no copy).
    pub async fn read_chunks(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchChunks, StorageError> {
        self.read_chunks_from(offset, max_bytes, false, false).await
    }

    /// [`PartitionLog::read_chunks`] for a read_committed consumer: batches below the last
    /// stable offset only (an offset between it and the high watermark reads nothing), with
    /// the aborted transactions that overlap them.
    pub async fn read_chunks_committed(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchChunks, StorageError> {
        self.read_chunks_from(offset, max_bytes, false, true).await
    }

    /// [`PartitionLog::read`] for a replicated log's own use (rebuilding its Raft log, sending
    /// entries to a follower): batches below the log start are read too, as long as their
    /// segment is still there (DeleteRecords moves the log start inside a segment; the
    /// segments go only once Raft no longer needs them).
    pub async fn read_replicated(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchData, StorageError> {
        let data = self
            .read_chunks_from(offset, max_bytes, true, false)
            .await?;
        Ok(FetchData {
            records: data.records.join(),
            high_watermark: data.high_watermark,
            log_start_offset: data.log_start_offset,
        })
    }

    async fn read_chunks_from(
        &self,
        offset: Offset,
        max_bytes: usize,
        below_start: bool,
        committed: bool,
    ) -> Result<FetchChunks, StorageError> {
        let offset = offset.0;
        let (hw, lso, log_start, floor, aborted) = {
            let mut st = self.state.borrow_mut();
            if self.closed.get() || st.closing {
                return Err(StorageError::Closed);
            }
            let floor = if below_start {
                st.segments.first().map_or(st.log_start, |s| s.base_offset)
            } else {
                st.log_start
            };
            let hw = st.high_watermark;
            let lso = st.producers.last_stable_offset(hw).max(st.log_start);
            let aborted = if committed && offset < lso {
                st.producers.aborted_between(offset, lso)
            } else {
                Vec::new()
            };
            (hw, lso, st.log_start, floor, aborted)
        };
        // What this read may return: below the high watermark, or below the last stable
        // offset for read_committed (a batch boundary: a transaction's first batch).
        let upper = if committed { lso } else { hw };
        let out = |records: Chunks| FetchChunks {
            records,
            high_watermark: Offset(hw),
            log_start_offset: Offset(log_start),
            last_stable_offset: Offset(lso),
            aborted: aborted.clone(),
        };
        if offset < floor || offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                high_watermark: hw,
            });
        }
        if offset >= upper {
            return Ok(out(Chunks::default()));
        }
        let hw = upper;
        if let Some(parts) = self.state.borrow().tail.read_parts(offset, hw, max_bytes) {
            return Ok(out(Chunks::from_parts(parts)));
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
                None => return Ok(out(Chunks::default())),
                Some(ReadPlan::Empty) => {}
                Some(ReadPlan::Read { file, start, end }) => {
                    let interval = self.cfg().index_interval_bytes;
                    if let Some(records) =
                        read_batches(file, start, end, offset, hw, max_bytes, interval).await?
                    {
                        return Ok(out(Chunks::one(records)));
                    }
                }
            }
            let next = {
                let st = self.state.borrow();
                st.segments.get(seg_index + 1).map(|s| s.base_offset)
            };
            match next {
                Some(base) if base > at => at = base,
                _ => return Ok(out(Chunks::default())),
            }
        }
    }

    /// How to read `offset` from segment `i`; None past the last segment. Opens a sealed segment's
    /// file on first use.
    pub(super) async fn segment_read_plan(
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
    pub(super) async fn segment_file(
        &self,
        file: Option<SegmentFile>,
        base: i64,
    ) -> Result<SegmentFile, StorageError> {
        if let Some(f) = file {
            return Ok(f);
        }
        let swaps = self.state.borrow().swaps;
        let path = segment_path(&self.dir, base, crate::storage::segment::LOG_SUFFIX);
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
        let i = st.segments.partition_point(|s| s.base_offset < base);
        if st.swaps != swaps || st.segments.get(i).is_none_or(|s| s.base_offset != base) {
            // The log cleaner replaced the segment while it was opened: what the path names
            // now may not be what the caller planned its read on.
            return Err(StorageError::io(
                "opening a segment",
                std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    format!("{} was replaced by the log cleaner", path.display()),
                ),
            ));
        }
        Ok(st.segments[i].file.get_or_insert(f).clone())
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
            if end > start {
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
            // Batches waiting behind the journal are not in the file yet: the tail cache.
            if let Some(found) = self.tail_batch(i, hw, |h| h.max_timestamp >= ts) {
                let (h, bytes) = found?;
                let (offset, t) = find_record(bytes, &h, |t| t >= ts)?;
                return Ok(Some((offset.max(self.log_start_offset()), t)));
            }
        }
        Ok(None)
    }

    /// The first batch of segment `i` that is not in its file yet (it waits behind the
    /// journal, so the tail cache holds it), below `hw`, for which `want` holds.
    fn tail_batch(
        &self,
        i: usize,
        hw: i64,
        want: impl Fn(&BatchHeader) -> bool,
    ) -> Option<Result<(BatchHeader, Bytes), StorageError>> {
        let st = self.state.borrow();
        let seg = st.segments.get(i)?;
        let from = st.written_end.max(seg.base_offset);
        let to = seg.next_offset.min(hw);
        for (base, _, bytes) in st.tail.batches_from(from) {
            if base >= to {
                break;
            }
            if base < from {
                continue;
            }
            match BatchHeader::parse(bytes) {
                Ok(h) if want(&h) => return Some(Ok((h, bytes.clone()))),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
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
        let hw = self.high_watermark().0;
        if let Some(found) = self.tail_batch(i, hw, |h| h.base_offset == batch_base) {
            let (h, bytes) = found?;
            return Ok(Some(find_record(bytes, &h, |t| t == ts)?));
        }
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
}

/// Decode one batch and return the first record whose timestamp satisfies
/// `want`, with that timestamp. Falls back to the batch's base offset and
/// max timestamp (e.g. LogAppendTime batches whose records carry none).
pub(super) fn find_record(
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
pub(super) async fn read_batches(
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
                if let Some(crate::storage::segment::ScanStop::Invalid(why)) = sc.stop_reason() {
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
