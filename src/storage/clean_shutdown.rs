//! The per-partition clean-shutdown marker: a small file that lets the next
//! open trust the last segment without scanning it.
//!
//! # Contract
//! [`PartitionLog::close`](super::PartitionLog::close) writes it last, only
//! when everything before succeeded: every batch written and fdatasync'ed,
//! the active segment sealed (truncated to its size, index files written
//! and synced), the producer snapshot at the log end written, the directory
//! synced. It is written to a temporary file, fdatasync'ed, renamed into
//! place and the directory synced, so it is either absent or whole.
//!
//! At open ([`recovery`](super::recovery)) the marker is read and removed
//! (directory synced) before anything else, so it never outlives the open
//! it was written for: a crash at any later point leads to a full recovery.
//! A marker that is missing, does not decode, or disagrees with the files
//! (last segment, its size, its index files, the producer snapshot, the
//! last batches) is ignored, with the reason logged, and the partition is
//! recovered by the full scan.
//!
//! # Binary layout (big-endian, 50 bytes)
//!
//! | bytes | field |
//! |------:|-------|
//! | 4 | magic `SLCS` |
//! | 2 | format version (1) |
//! | 8 | base offset of the last segment |
//! | 8 | logical size of the last segment in bytes (its file length) |
//! | 8 | log end offset (next offset to assign) |
//! | 8 | max timestamp of the last segment, -1 if it is empty |
//! | 8 | base offset of the batch holding that timestamp, -1 if empty |
//! | 4 | CRC32C of everything before |

/// Why a marker was refused (the caller logs it and runs full recovery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clean-shutdown marker: {0}")]
pub struct MarkerError(String);

/// File name of the marker in a partition directory.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const MAGIC: &[u8; 4] = b"SLCS";
const VERSION: u16 = 1;
/// Size of an encoded marker.
pub const MARKER_LEN: usize = 4 + 2 + 8 * 5 + 4;

/// What a clean close leaves for the next open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanShutdown {
    /// Base offset of the last (active) segment.
    pub segment_base: i64,
    /// Its logical size: the file was truncated to exactly this.
    pub segment_bytes: u64,
    /// The log end offset; every offset below it is durable.
    pub log_end: i64,
    /// The last segment's max batch timestamp and the base offset of the
    /// batch holding it; None when the segment is empty.
    pub max_timestamp: Option<(i64, i64)>,
}

impl CleanShutdown {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.segment_base >= 0 && self.log_end >= self.segment_base);
        assert_eq!(
            self.segment_bytes == 0,
            self.max_timestamp.is_none(),
            "an empty segment has no max timestamp and a non-empty one has one"
        );
        let (ts, ts_offset) = self.max_timestamp.unwrap_or((-1, -1));
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.segment_base.to_be_bytes());
        out.extend_from_slice(&self.segment_bytes.to_be_bytes());
        out.extend_from_slice(&self.log_end.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&ts_offset.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(out.len(), MARKER_LEN);
        out
    }

    /// Parse a marker; any damage (length, CRC, magic, version, fields out
    /// of range) is an error saying what.
    pub fn decode(buf: &[u8]) -> Result<CleanShutdown, MarkerError> {
        let bad = MarkerError;
        if buf.len() != MARKER_LEN {
            return Err(bad(format!("{} bytes, expected {MARKER_LEN}", buf.len())));
        }
        let (body, crc) = buf.split_at(MARKER_LEN - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("CRC mismatch".into()));
        }
        if &body[..4] != MAGIC {
            return Err(bad("bad magic".into()));
        }
        let version = u16::from_be_bytes(body[4..6].try_into().expect("2 bytes"));
        if version != VERSION {
            return Err(bad(format!("unknown version {version}")));
        }
        let field = |i: usize| {
            let at = 6 + 8 * i;
            i64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"))
        };
        let (segment_base, segment_bytes, log_end, ts, ts_offset) =
            (field(0), field(1), field(2), field(3), field(4));
        if segment_base < 0 || segment_bytes < 0 || log_end < segment_base {
            return Err(bad(format!(
                "segment {segment_base} of {segment_bytes} bytes ending at {log_end}"
            )));
        }
        let max_timestamp = match (segment_bytes, ts_offset) {
            (0, -1) if ts == -1 && log_end == segment_base => None,
            (n, o) if n > 0 && o >= segment_base && o < log_end => Some((ts, o)),
            _ => {
                return Err(bad(format!(
                    "max timestamp {ts} at {ts_offset} does not fit segment {segment_base}..{log_end} of {segment_bytes} bytes"
                )));
            }
        };
        Ok(CleanShutdown {
            segment_base,
            segment_bytes: segment_bytes as u64,
            log_end,
            max_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CleanShutdown {
        CleanShutdown {
            segment_base: 4096,
            segment_bytes: 123_456,
            log_end: 5000,
            max_timestamp: Some((1_700_000_000_000, 4990)),
        }
    }

    #[test]
    fn round_trip() {
        for m in [
            sample(),
            CleanShutdown {
                segment_base: 0,
                segment_bytes: 0,
                log_end: 0,
                max_timestamp: None,
            },
        ] {
            assert_eq!(CleanShutdown::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncated_prefix_and_flipped_byte_fails() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(CleanShutdown::decode(&b[..n]).is_err(), "prefix {n}");
        }
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(CleanShutdown::decode(&d).is_err(), "flipped byte {i}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(CleanShutdown::decode(&longer).is_err());
    }

    #[test]
    fn golden_bytes() {
        let m = CleanShutdown {
            segment_base: 1,
            segment_bytes: 2,
            log_end: 3,
            max_timestamp: Some((4, 1)),
        };
        let b = m.encode();
        let mut expect = b"SLCS\x00\x01".to_vec();
        for v in [1i64, 2, 3, 4, 1] {
            expect.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc32c::crc32c(&expect);
        expect.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(b, expect);
        assert_eq!(b.len(), MARKER_LEN);
    }

    #[test]
    fn fields_out_of_range_fail() {
        // A well-formed CRC over nonsense fields is still refused.
        let forge = |fields: [i64; 5]| {
            let mut b = b"SLCS\x00\x01".to_vec();
            for v in fields {
                b.extend_from_slice(&v.to_be_bytes());
            }
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_be_bytes());
            CleanShutdown::decode(&b)
        };
        assert!(forge([10, 5, 9, 1, 10]).is_err()); // log end below base
        assert!(forge([0, 5, 9, 1, 9]).is_err()); // max timestamp offset at the end
        assert!(forge([0, 0, 3, -1, -1]).is_err()); // empty segment with offsets
        assert!(forge([0, -5, 3, 1, 0]).is_err()); // negative size
        assert!(forge([0, 5, 3, 1, 0]).is_ok());
    }
}
