//! The records inside a batch: the only place Sluice looks past a batch's 61-byte header.
//! Used by the log cleaner (which rewrites batches) and by the key check of compacted
//! topics on append; never by the fetch path.
//!
//! A magic-v2 record is `length varint | attributes i8 | timestampDelta varlong |
//! offsetDelta varint | keyLength varint | key | valueLength varint | value | headers`
//! (varints zigzag-encoded; a length of -1 is null). The records section of a batch is
//! compressed as a whole with the codec in attributes bits 0-2 (1 gzip, 2 snappy, 3 lz4,
//! 4 zstd): the decompressors here are the codecs' own crates (the ones `kafka-protocol`
//! uses), read through a size limit so a small batch cannot expand without bound;
//! compression goes through `kafka-protocol`'s compressors, which write Kafka's framing
//! (xerial blocks for snappy, LZ4 frames).

use std::borrow::Cow;
use std::io::Read;

use bytes::{BufMut, BytesMut};
use kafka_protocol::compression::{self as codec, Compressor};

use crate::storage::batch::{HEADER_LEN, varint, varlong};

/// Attributes bits 0-2.
pub const CODEC_MASK: i16 = 0x07;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("malformed records: {0}")]
    Malformed(String),
    #[error("records decompress to more than {0} bytes")]
    TooLarge(usize),
    #[error("compression codec {0} is not supported")]
    UnknownCodec(i16),
    #[error("{codec} failed: {why}")]
    Codec { codec: &'static str, why: String },
}

fn codec_name(c: i16) -> &'static str {
    match c {
        0 => "none",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown",
    }
}

/// The batch's compression codec (attributes bits 0-2).
pub fn codec_of(attributes: i16) -> i16 {
    attributes & CODEC_MASK
}

/// The records section of `batch` (a whole, validated batch), decompressed; at most
/// `limit` bytes, else [`RecordError::TooLarge`].
pub fn records_section(
    batch: &[u8],
    attributes: i16,
    limit: usize,
) -> Result<Cow<'_, [u8]>, RecordError> {
    let payload = batch
        .get(HEADER_LEN..)
        .ok_or_else(|| RecordError::Malformed("batch shorter than its header".into()))?;
    let c = codec_of(attributes);
    let err = |why: std::io::Error| RecordError::Codec {
        codec: codec_name(c),
        why: why.to_string(),
    };
    let read_limited = |r: &mut dyn Read| -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(err)?;
        if out.len() > limit {
            return Err(RecordError::TooLarge(limit));
        }
        Ok(out)
    };
    match c {
        0 => Ok(Cow::Borrowed(payload)),
        1 => Ok(Cow::Owned(read_limited(
            &mut flate2::read::MultiGzDecoder::new(payload),
        )?)),
        2 => Ok(Cow::Owned(unsnappy(payload, limit)?)),
        3 => {
            let mut d = lz4::Decoder::new(payload).map_err(err)?;
            Ok(Cow::Owned(read_limited(&mut d)?))
        }
        4 => {
            let mut d = zstd::stream::read::Decoder::new(payload).map_err(err)?;
            Ok(Cow::Owned(read_limited(&mut d)?))
        }
        other => Err(RecordError::UnknownCodec(other)),
    }
}

/// Snappy as Kafka's clients write it: xerial's framing (a 16-byte header, then blocks of
/// a u32 length and raw snappy), or one raw snappy block (some clients).
fn unsnappy(payload: &[u8], limit: usize) -> Result<Vec<u8>, RecordError> {
    const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    let err = |why: snap::Error| RecordError::Codec {
        codec: "snappy",
        why: why.to_string(),
    };
    let mut out = Vec::new();
    let block = |raw: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let n = snap::raw::decompress_len(raw).map_err(err)?;
        if out.len() + n > limit {
            return Err(RecordError::TooLarge(limit));
        }
        let at = out.len();
        out.resize(at + n, 0);
        snap::raw::Decoder::new()
            .decompress(raw, &mut out[at..])
            .map_err(err)?;
        Ok(())
    };
    if payload.len() >= 16 && payload.starts_with(XERIAL_MAGIC) {
        let mut pos = 16;
        while pos < payload.len() {
            let len_bytes = payload
                .get(pos..pos + 4)
                .ok_or_else(|| RecordError::Malformed("snappy block length cut short".into()))?;
            let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
            pos += 4;
            let raw = payload
                .get(pos..pos + len)
                .ok_or_else(|| RecordError::Malformed("snappy block cut short".into()))?;
            block(raw, &mut out)?;
            pos += len;
        }
    } else {
        block(payload, &mut out)?;
    }
    Ok(out)
}

/// `records` compressed with codec `c`, in Kafka's framing for it.
pub fn compress(c: i16, records: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut out = BytesMut::with_capacity(records.len() / 2 + 64);
    let fill = |buf: &mut BytesMut| -> anyhow::Result<()> {
        buf.put_slice(records);
        Ok(())
    };
    let res = match c {
        0 => {
            out.put_slice(records);
            Ok(())
        }
        1 => codec::Gzip::compress(&mut out, fill),
        2 => codec::Snappy::compress(&mut out, fill),
        3 => codec::Lz4::compress(&mut out, fill),
        4 => codec::Zstd::compress(&mut out, fill),
        other => return Err(RecordError::UnknownCodec(other)),
    };
    res.map_err(|e| RecordError::Codec {
        codec: codec_name(c),
        why: format!("{e:#}"),
    })?;
    Ok(out.to_vec())
}

/// One record of a batch, as it lies in the (decompressed) records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// The whole record, its length prefix included: copied as is into a rewritten batch
    /// (its deltas are relative to the batch's base offset and timestamp, which a rewrite
    /// keeps).
    pub bytes: &'a [u8],
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    /// None: a null key.
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub value_is_null: bool,
}

/// The records of a records section, in order; stops at the first malformed one (an
/// `Err`) and checks that the section holds `count` records exactly.
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: i32,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    pub fn new(section: &'a [u8], count: i32) -> Self {
        RecordIter {
            buf: section,
            pos: 0,
            left: count,
            failed: false,
        }
    }

    fn fail<T>(&mut self, why: impl Into<String>) -> Option<Result<T, RecordError>> {
        self.failed = true;
        Some(Err(RecordError::Malformed(why.into())))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RawRecord<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left <= 0 {
            if self.pos != self.buf.len() {
                let extra = self.buf.len() - self.pos;
                return self.fail(format!("{extra} bytes after the last record"));
            }
            return None;
        }
        let start = self.pos;
        let Some((len, n)) = varint(&self.buf[start..]) else {
            return self.fail("record length cut short");
        };
        if len < 0 || (len as usize) > self.buf.len() - start - n {
            return self.fail(format!("record length {len} past the section's end"));
        }
        let body_start = start + n;
        let end = body_start + len as usize;
        let body = &self.buf[body_start..end];
        match parse_body(body) {
            Ok((offset_delta, timestamp_delta, key, value_is_null)) => {
                self.pos = end;
                self.left -= 1;
                Some(Ok(RawRecord {
                    bytes: &self.buf[start..end],
                    offset_delta,
                    timestamp_delta,
                    key,
                    value_is_null,
                }))
            }
            Err(why) => self.fail(why),
        }
    }
}

type Body<'a> = (i32, i64, Option<&'a [u8]>, bool);

fn parse_body(b: &[u8]) -> Result<Body<'_>, String> {
    let mut p = 1usize; // attributes
    if b.is_empty() {
        return Err("empty record".into());
    }
    let (ts, n) = varlong(&b[p..]).ok_or("timestamp delta cut short")?;
    p += n;
    let (od, n) = varint(&b[p..]).ok_or("offset delta cut short")?;
    p += n;
    let (klen, n) = varint(&b[p..]).ok_or("key length cut short")?;
    p += n;
    let key = if klen < 0 {
        None
    } else {
        let k = b
            .get(p..p + klen as usize)
            .ok_or("key past the record's end")?;
        p += klen as usize;
        Some(k)
    };
    let (vlen, n) = varint(&b[p..]).ok_or("value length cut short")?;
    p += n;
    if vlen >= 0 && b.len() < p + vlen as usize {
        return Err("value past the record's end".into());
    }
    Ok((od, ts, key, vlen < 0))
}

/// [`check_keys`] on every batch of a produce (`(position, size, header)` as
/// `batch::validate_all_for_append` gives them): a compacted topic's append and proposal.
pub fn check_keys_all(
    records: &[u8],
    batches: &[(usize, usize, crate::storage::batch::BatchHeader)],
) -> Result<(), crate::storage::StorageError> {
    for (pos, size, h) in batches {
        check_keys(
            &records[*pos..*pos + *size],
            h.attributes,
            h.record_count,
            crate::constants::DECOMPRESSED_BATCH_BYTES_MAX,
        )
        .map_err(crate::storage::StorageError::InvalidRecord)?;
    }
    Ok(())
}

/// Whether every record of a data batch has a key (a compacted topic refuses records
/// without one, as Kafka does). Control batches are not looked at.
pub fn check_keys(batch: &[u8], attributes: i16, count: i32, limit: usize) -> Result<(), String> {
    if attributes & crate::storage::batch::ATTR_CONTROL != 0 {
        return Ok(());
    }
    let section = records_section(batch, attributes, limit).map_err(|e| e.to_string())?;
    for r in RecordIter::new(&section, count) {
        let r = r.map_err(|e| e.to_string())?;
        if r.key.is_none() {
            return Err("Compacted topic cannot accept message without key".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::cleaner::test_util::batch;
    use kafka_protocol::records::Compression;

    #[test]
    fn varints_decode_as_kafka_encodes_them() {
        assert_eq!(varint(&[0x00]), Some((0, 1)));
        assert_eq!(varint(&[0x01]), Some((-1, 1)));
        assert_eq!(varint(&[0x02]), Some((1, 1)));
        assert_eq!(varint(&[0xac, 0x02]), Some((150, 2)));
        assert_eq!(varint(&[0x80]), None);
        assert_eq!(varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
        assert_eq!(varlong(&[0x03]), Some((-2, 1)));
    }

    #[test]
    fn every_codec_round_trips_and_keys_are_seen() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let kv = [(Some("a"), Some("1")), (None, Some("2")), (Some("b"), None)];
            let b = batch(10, &kv, c, 1_000, None);
            let h = crate::storage::batch::BatchHeader::parse(&b).expect("header");
            let section = records_section(&b, h.attributes, 1 << 20).expect("decompress");
            let recs: Vec<_> = RecordIter::new(&section, h.record_count)
                .collect::<Result<_, _>>()
                .expect("records");
            assert_eq!(recs.len(), 3, "{c:?}");
            assert_eq!(recs[0].key, Some(&b"a"[..]));
            assert_eq!(recs[1].key, None);
            assert!(recs[2].value_is_null && !recs[0].value_is_null);
            assert_eq!(
                recs.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
                [0, 1, 2]
            );
            // Compressing the section again and decompressing gives it back.
            let again = compress(codec_of(h.attributes), &section).expect("compress");
            let mut rebuilt = b[..HEADER_LEN].to_vec();
            rebuilt.extend_from_slice(&again);
            assert_eq!(
                records_section(&rebuilt, h.attributes, 1 << 20)
                    .expect("again")
                    .as_ref(),
                section.as_ref()
            );
            assert!(check_keys(&b, h.attributes, h.record_count, 1 << 20).is_err());
            let keyed = batch(0, &[(Some("k"), Some("v"))], c, 1_000, None);
            let hk = crate::storage::batch::BatchHeader::parse(&keyed).expect("header");
            assert!(check_keys(&keyed, hk.attributes, 1, 1 << 20).is_ok());
            if c != Compression::None {
                // A limit below the decompressed size is refused, not allocated.
                assert_eq!(
                    records_section(&b, h.attributes, 4).map(|_| ()),
                    Err(RecordError::TooLarge(4)),
                    "{c:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_sections_are_errors_not_panics() {
        let b = batch(0, &[(Some("a"), Some("1"))], Compression::None, 1_000, None);
        let section = &b[HEADER_LEN..];
        for cut in 0..section.len() {
            let r: Result<Vec<_>, _> = RecordIter::new(&section[..cut], 1).collect();
            assert!(r.is_err(), "cut at {cut}");
        }
        let r: Result<Vec<_>, _> = RecordIter::new(section, 2).collect();
        assert!(r.is_err());
        let r: Result<Vec<_>, _> = RecordIter::new(section, 0).collect();
        assert!(r.is_err());
    }
}
