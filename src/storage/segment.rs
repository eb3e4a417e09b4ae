//! One segment of a partition log: the `.log` file of batches, its indexes,
//! and a batch scanner over the file.
//!
//! File names are built and parsed by one pair of functions
//! ([`segment_file_name`], [`parse_segment_file_name`]): the base offset in 20
//! digits, as Kafka names them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use super::batch::{self, BatchHeader, LOG_OVERHEAD};
use super::error::{IoContext, StorageError};
use super::index::{self, IndexBytes, Indexer};
use super::io::SegmentFile;

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// `<base offset, 20 digits>.<suffix>`.
pub fn segment_file_name(base_offset: i64, suffix: &str) -> String {
    assert!(base_offset >= 0);
    format!("{base_offset:020}.{suffix}")
}

/// Inverse of [`segment_file_name`] for `.log` files.
pub fn parse_segment_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(segment_file_name(base_offset, suffix))
}

/// The indexes of a segment: being built in memory while the segment is
/// active (and until the flusher has sealed it), or mapped from the index
/// files once sealed.
pub enum SegmentIndex {
    Building(Indexer),
    Sealed {
        offsets: IndexBytes,
        times: IndexBytes,
    },
}

/// In-memory state of one segment. Owned by the `PartitionLog`'s state;
/// the file handle is shared (`Rc`) with the flusher and readers.
pub struct Segment {
    pub base_offset: i64,
    /// Open file, or None for a sealed segment not read since recovery
    /// (opened lazily) or an active segment the flusher has not created yet.
    pub file: Option<SegmentFile>,
    /// Logical size: bytes of all batches assigned to this segment,
    /// including those not yet written.
    pub size: u64,
    /// Bytes of batches below the high watermark (written to the file).
    /// Readers never look past this.
    pub visible_size: u64,
    /// Its file exists (durably: created and its directory synced). A segment appends rolled
    /// into is not until the flusher creates it (behind the journal, that can be a while):
    /// the segments before it are not removed until then, so the directory never loses the
    /// log's end.
    pub on_disk: bool,
    /// Offset after the last batch assigned to this segment.
    pub next_offset: i64,
    /// Largest batch max timestamp among visible batches, with that batch's
    /// base offset.
    pub visible_max_timestamp: Option<(i64, i64)>,
    pub index: SegmentIndex,
    /// When the segment was created or recovered (for `segment_ms`).
    pub created: Instant,
}

impl Segment {
    pub fn offsets_index(&self) -> &[u8] {
        match &self.index {
            SegmentIndex::Building(ix) => &ix.offsets,
            SegmentIndex::Sealed { offsets, .. } => offsets.as_slice(),
        }
    }

    /// Position of the last indexed batch at or before `offset` (0 if none).
    pub fn lookup_position(&self, offset: i64) -> u64 {
        let rel = (offset - self.base_offset).max(0) as u64;
        index::lookup_offset(self.offsets_index(), rel).map_or(0, |(_, pos)| u64::from(pos))
    }

    /// The time index as it would be sealed (includes the final max entry).
    pub fn time_index_snapshot(&self) -> Vec<u8> {
        match &self.index {
            SegmentIndex::Building(ix) => ix.sealed_times(),
            SegmentIndex::Sealed { times, .. } => times.as_slice().to_vec(),
        }
    }
}

/// Why a scan stopped before the end of its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Reached the end of the range exactly.
    End,
    /// A zero length field: the preallocated, never-written tail.
    Zeros,
    /// Anything else (torn or corrupt batch), with a description.
    Invalid(String),
}

/// Reads batches sequentially from a segment file between two positions,
/// with large reads (one `read_at` per `chunk_bytes` or per batch larger
/// than that). With `check_crc`, every batch's CRC is verified (recovery);
/// without, only lengths and magic (read path).
pub struct Scanner {
    file: SegmentFile,
    pos: u64,
    end: u64,
    buf: Bytes,
    buf_pos: u64,
    chunk_bytes: usize,
    check_crc: bool,
    stop: Option<ScanStop>,
}

impl Scanner {
    pub fn new(
        file: SegmentFile,
        start: u64,
        end: u64,
        chunk_bytes: usize,
        check_crc: bool,
    ) -> Self {
        Scanner {
            file,
            pos: start,
            end,
            buf: Bytes::new(),
            buf_pos: start,
            chunk_bytes: chunk_bytes.max(4096),
            check_crc,
            stop: None,
        }
    }

    /// Position after the last batch returned.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Why the scan stopped (after `next` returned `Ok(None)`).
    pub fn stop_reason(&self) -> Option<&ScanStop> {
        self.stop.as_ref()
    }

    fn buffered(&self, from: u64, len: u64) -> Option<&[u8]> {
        if from >= self.buf_pos && from + len <= self.buf_pos + self.buf.len() as u64 {
            let s = (from - self.buf_pos) as usize;
            Some(&self.buf[s..s + len as usize])
        } else {
            None
        }
    }

    async fn fill(&mut self, from: u64, len: usize) -> Result<(), StorageError> {
        let len = (len as u64).min(self.end - from) as usize;
        self.buf = self
            .file
            .read_at(from, len)
            .await
            .ctx(|| format!("reading {} at {from}", self.file.path().display()))?;
        self.buf_pos = from;
        Ok(())
    }

    /// Bytes `[from, from + len)` of the file if they are in the read
    /// buffer (a slice, no copy).
    pub fn slice_buffered(&self, from: u64, len: u64) -> Option<Bytes> {
        self.buffered(from, len)?;
        let s = (from - self.buf_pos) as usize;
        Some(self.buf.slice(s..s + len as usize))
    }

    /// Size of the next batch if its length field is already buffered
    /// (no I/O). Lets readers stop at what one read returned.
    pub fn peek_buffered(&self) -> Option<(usize, bool)> {
        if self.pos + LOG_OVERHEAD as u64 > self.end {
            return None;
        }
        let lf = self.buffered(self.pos, LOG_OVERHEAD as u64)?;
        let size =
            i32::from_be_bytes(lf[8..12].try_into().expect("4")) as i64 + LOG_OVERHEAD as i64;
        if size < batch::HEADER_LEN as i64 {
            return None;
        }
        let whole = self.buffered(self.pos, size as u64).is_some();
        Some((size as usize, whole))
    }

    /// The next batch: its position, header and bytes (a slice of the read
    /// buffer, no copy). `Ok(None)` at the end of the range or at the first
    /// invalid batch (see [`Scanner::stop_reason`]); `Err` only for I/O.
    pub async fn next(&mut self) -> Result<Option<(u64, BatchHeader, Bytes)>, StorageError> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.pos >= self.end {
            self.stop = Some(ScanStop::End);
            return Ok(None);
        }
        if self.pos + LOG_OVERHEAD as u64 > self.end {
            self.stop = Some(ScanStop::Invalid(format!(
                "{} trailing bytes, too few for a batch",
                self.end - self.pos
            )));
            return Ok(None);
        }
        if self.buffered(self.pos, LOG_OVERHEAD as u64).is_none() {
            self.fill(self.pos, self.chunk_bytes).await?;
        }
        let Some(prefix) = self.buffered(self.pos, LOG_OVERHEAD as u64) else {
            self.stop = Some(ScanStop::Invalid("file shorter than expected".into()));
            return Ok(None);
        };
        let len = i32::from_be_bytes(prefix[8..12].try_into().expect("4"));
        if len == 0 && prefix[..8].iter().all(|b| *b == 0) {
            self.stop = Some(ScanStop::Zeros);
            return Ok(None);
        }
        if len < (batch::HEADER_LEN - LOG_OVERHEAD) as i32 {
            self.stop = Some(ScanStop::Invalid(format!(
                "batch length {len} below header size"
            )));
            return Ok(None);
        }
        let size = len as u64 + LOG_OVERHEAD as u64;
        if self.pos + size > self.end {
            self.stop = Some(ScanStop::Invalid(format!(
                "batch of {size} bytes at {} runs past the end ({})",
                self.pos, self.end
            )));
            return Ok(None);
        }
        if self.buffered(self.pos, size).is_none() {
            self.fill(self.pos, self.chunk_bytes.max(size as usize))
                .await?;
        }
        let Some(_) = self.buffered(self.pos, size) else {
            self.stop = Some(ScanStop::Invalid("file shorter than expected".into()));
            return Ok(None);
        };
        let s = (self.pos - self.buf_pos) as usize;
        let bytes = self.buf.slice(s..s + size as usize);
        let checked = if self.check_crc {
            batch::validate_batch(&bytes).map(|(h, _)| h)
        } else {
            BatchHeader::parse(&bytes)
        };
        match checked {
            Ok(h) if h.last_offset_delta >= 0 => {
                let at = self.pos;
                self.pos += size;
                Ok(Some((at, h, bytes)))
            }
            Ok(h) => {
                self.stop = Some(ScanStop::Invalid(format!(
                    "negative lastOffsetDelta {}",
                    h.last_offset_delta
                )));
                Ok(None)
            }
            Err(e) => {
                self.stop = Some(ScanStop::Invalid(e.to_string()));
                Ok(None)
            }
        }
    }
}

/// Result of scanning a whole segment with CRC checks (recovery).
pub struct ScanResult {
    pub indexer: Indexer,
    /// Position after the last valid batch.
    pub end: u64,
    /// Offset after the last valid batch (the segment base if none).
    pub next_offset: i64,
    pub stop: ScanStop,
}

/// Scan `file` from 0 to `file_len`, checking every batch (length, magic,
/// CRC, offsets increasing), and rebuild its indexes. `on_batch` sees the
/// header of every valid batch, in order (recovery replays producer state
/// from it without a second read).
pub async fn scan_segment(
    file: SegmentFile,
    base_offset: i64,
    file_len: u64,
    interval_bytes: u32,
    on_batch: &mut dyn FnMut(&BatchHeader, &[u8]),
) -> Result<ScanResult, StorageError> {
    const RECOVERY_CHUNK_BYTES: usize = 1 << 20;
    let mut sc = Scanner::new(file, 0, file_len, RECOVERY_CHUNK_BYTES, true);
    let mut indexer = Indexer::new(base_offset, interval_bytes);
    let mut next_offset = base_offset;
    while let Some((pos, h, bytes)) = sc.next().await? {
        if h.base_offset < next_offset || h.last_offset() - base_offset > i64::from(u32::MAX) {
            // Offsets must increase: this batch is not part of the log.
            return Ok(ScanResult {
                indexer,
                end: pos,
                next_offset,
                stop: ScanStop::Invalid(format!(
                    "batch at {pos} has base offset {} but {next_offset} was expected",
                    h.base_offset
                )),
            });
        }
        indexer.on_batch(&h, pos, bytes.len());
        on_batch(&h, &bytes);
        next_offset = h.next_offset();
    }
    Ok(ScanResult {
        indexer,
        end: sc.position(),
        next_offset,
        stop: sc.stop_reason().cloned().unwrap_or(ScanStop::End),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(
            segment_file_name(42, LOG_SUFFIX),
            "00000000000000000042.log"
        );
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_segment_file_name("42.log"), None);
    }
}
