//! Zero-copy view of a Kafka magic-v2 RecordBatch header.
//!
//! Wire layout (big-endian, 61 bytes, then the records):
//!
//! | offset | field                | type |
//! |-------:|----------------------|------|
//! |      0 | baseOffset           | i64  |
//! |      8 | batchLength          | i32 (= total size − 12) |
//! |     12 | partitionLeaderEpoch | i32  |
//! |     16 | magic                | i8 (must be 2) |
//! |     17 | crc                  | u32, CRC32C of bytes 21..end |
//! |     21 | attributes           | i16  |
//! |     23 | lastOffsetDelta      | i32  |
//! |     27 | baseTimestamp        | i64  |
//! |     35 | maxTimestamp         | i64  |
//! |     43 | producerId           | i64  |
//! |     51 | producerEpoch        | i16  |
//! |     53 | baseSequence         | i32  |
//! |     57 | recordCount          | i32  |
//!
//! Hot paths never decode records: the CRC does not cover baseOffset or
//! partitionLeaderEpoch, so rewriting the base offset in place keeps the
//! batch valid.

use super::error::StorageError;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before and including batchLength (not counted by batchLength).
pub const LOG_OVERHEAD: usize = 12;
/// The only supported record format.
pub const MAGIC_V2: i8 = 2;
const CRC_START: usize = 21;
/// Attributes bit 4: the batch is part of a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attributes bit 5: a control batch (transaction marker).
pub const ATTR_CONTROL: i16 = 0x20;
/// Attributes bit 3: the batch's timestamps are LogAppendTime.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// The parsed fixed header of one batch. Plain values: parsing copies the
/// 61 header bytes' fields, never the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parse the header at the start of `buf`. Checks only that the 61
    /// bytes are present and the magic is 2; see [`validate_batch`] for the
    /// rest.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, StorageError> {
        if buf.len() > 16 && buf[16] as i8 != MAGIC_V2 {
            return Err(StorageError::UnsupportedMagic(buf[16] as i8));
        }
        if buf.len() < HEADER_LEN {
            return Err(StorageError::CorruptBatch(format!(
                "batch header truncated: {} of {HEADER_LEN} bytes",
                buf.len()
            )));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Total size of the batch in bytes, including the 12-byte prefix.
    /// Only meaningful for a header whose length was validated.
    pub fn size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record (base + lastOffsetDelta).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}

/// Size of the batch starting at `buf` from its length field, checked to be
/// at least a header and at most `buf.len()`. Does not check the CRC.
pub fn batch_size(buf: &[u8]) -> Result<usize, StorageError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(StorageError::CorruptBatch(format!(
            "batch truncated: {} bytes, no length field",
            buf.len()
        )));
    }
    let len = be_i32(buf, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(StorageError::CorruptBatch(format!(
            "batch length {len} below header size"
        )));
    }
    let size = len as usize + LOG_OVERHEAD;
    if size > buf.len() {
        return Err(StorageError::CorruptBatch(format!(
            "batch truncated: length says {size} bytes, {} present",
            buf.len()
        )));
    }
    Ok(size)
}

/// CRC32C of a whole batch's checked region (bytes 21..end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Validate the batch at the start of `buf` for storage: magic 2, length
/// within `buf`, CRC. Returns the header and the batch size. Record-level
/// checks (count, size limit) are the caller's, see [`validate_for_append`].
pub fn validate_batch(buf: &[u8]) -> Result<(BatchHeader, usize), StorageError> {
    if buf.len() > 16 && buf[16] as i8 != MAGIC_V2 {
        return Err(StorageError::UnsupportedMagic(buf[16] as i8));
    }
    let size = batch_size(buf)?;
    let header = BatchHeader::parse(&buf[..size])?;
    let crc = compute_crc(&buf[..size]);
    if crc != header.crc {
        return Err(StorageError::CorruptBatch(format!(
            "CRC mismatch: stored {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    Ok((header, size))
}

/// Everything append checks on one producer batch: [`validate_batch`],
/// the size limit, and a sane record count.
pub fn validate_for_append(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<(BatchHeader, usize), StorageError> {
    if buf.len() >= LOG_OVERHEAD {
        let len = be_i32(buf, 8);
        if len >= 0 && (len as usize).saturating_add(LOG_OVERHEAD) > max_batch_bytes {
            return Err(StorageError::BatchTooLarge {
                size: len as usize + LOG_OVERHEAD,
                max: max_batch_bytes,
            });
        }
    }
    let (header, size) = validate_batch(buf)?;
    if header.record_count <= 0 {
        return Err(StorageError::InvalidRecord(format!(
            "record count {}",
            header.record_count
        )));
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(StorageError::InvalidRecord(format!(
            "lastOffsetDelta {} does not match record count {}",
            header.last_offset_delta, header.record_count
        )));
    }
    Ok((header, size))
}

/// [`validate_for_append`] on every batch of a Produce partition's `records` (at least one):
/// `(start position, size, header)` of each, in order.
pub fn validate_all_for_append(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(usize, usize, BatchHeader)>, StorageError> {
    if records.is_empty() {
        return Err(StorageError::InvalidRecord("empty records".into()));
    }
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let (h, size) = validate_for_append(&records[pos..], max_batch_bytes)?;
        batches.push((pos, size, h));
        pos += size;
    }
    Ok(batches)
}

/// Iterate over the batches of a byte blob (for example a Produce
/// partition's `records`, or bytes read from a segment), yielding
/// `(start position, header, size)`. Each item is checked with
/// [`batch_size`] and [`BatchHeader::parse`] but not CRC-checked; iteration
/// stops after the first error.
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Position after the last batch returned.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader, usize), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let r =
            batch_size(rest).and_then(|size| BatchHeader::parse(&rest[..size]).map(|h| (h, size)));
        match r {
            Ok((h, size)) => {
                let at = self.pos;
                self.pos += size;
                Some(Ok((at, h, size)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Mark a whole batch as LogAppendTime with `time_ms` as its max timestamp
/// and recompute its CRC (both fields are covered by it).
pub fn set_log_append_time(batch: &mut [u8], time_ms: i64) {
    assert!(batch.len() >= HEADER_LEN, "a batch has a full header");
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | ATTR_LOG_APPEND_TIME;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&time_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Overwrite the base offset (bytes 0..8) in place. The CRC does not cover
/// it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    assert!(batch.len() >= HEADER_LEN);
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrite the partition leader epoch (bytes 12..16) in place. Not covered by the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert!(batch.len() >= HEADER_LEN);
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// A zigzag varint (Kafka's `varint`, record fields), and the bytes it took; None if cut
/// short or longer than 5 bytes.
pub fn varint(b: &[u8]) -> Option<(i32, usize)> {
    let (v, n) = unsigned_varint(b, 5)?;
    let v = v as u32;
    Some((((v >> 1) as i32) ^ -((v & 1) as i32), n))
}

/// A zigzag varlong (Kafka's `varlong`); None if cut short or longer than 10 bytes.
pub fn varlong(b: &[u8]) -> Option<(i64, usize)> {
    let (v, n) = unsigned_varint(b, 10)?;
    Some((((v >> 1) as i64) ^ -((v & 1) as i64), n))
}

fn unsigned_varint(b: &[u8], max: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().take(max).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The marker a control batch carries: its first record's key is `version i16 | type i16`
/// (0 ABORT, 1 COMMIT). None for any other batch, a compressed one, or a key that is not a
/// marker's (a Raft control batch, `replication::entry`). Reads the record's few leading
/// fields only: control batches are never compressed.
pub fn control_type(batch: &[u8]) -> Option<super::producer_state::Marker> {
    marker_of(batch).map(|(m, _)| m)
}

/// A transaction marker batch's type and coordinator epoch (from its control record's key
/// and value); None for any other batch. A marker whose value is missing or short counts
/// with coordinator epoch -1.
pub fn marker_of(batch: &[u8]) -> Option<(super::producer_state::Marker, i32)> {
    use super::producer_state::Marker;
    if batch.len() < HEADER_LEN {
        return None;
    }
    let attributes = be_i16(batch, 21);
    if attributes & ATTR_CONTROL == 0 || attributes & 0x07 != 0 {
        return None;
    }
    // Record: length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
    // keyLength varint, key.
    let mut at = HEADER_LEN;
    let (_, n) = varlong(batch.get(at..)?)?;
    at += n + 1;
    let (_, n) = varlong(batch.get(at..)?)?;
    at += n;
    let (_, n) = varlong(batch.get(at..)?)?;
    at += n;
    let (key_len, n) = varlong(batch.get(at..)?)?;
    at += n;
    if key_len < 4 || batch.len() < at + 4 {
        return None;
    }
    let marker = match be_i16(batch, at + 2) {
        0 => Marker::Abort,
        1 => Marker::Commit,
        _ => return None,
    };
    // valueLength varint, value: version i16, coordinator epoch i32.
    at += key_len as usize;
    let coordinator_epoch = match batch.get(at..).and_then(varlong) {
        Some((value_len, n)) if value_len >= 6 && batch.len() >= at + n + 6 => {
            i32::from_be_bytes(batch[at + n + 2..at + n + 6].try_into().expect("4 bytes"))
        }
        _ => -1,
    };
    Some((marker, coordinator_epoch))
}

/// A transaction marker batch (Kafka's `EndTransactionMarker`): one control record, key
/// `version 0 | type`, value `version 0 | coordinator epoch i32`, transactional, no
/// sequence, base offset 0 (the log assigns it).
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: super::producer_state::Marker,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> bytes::Bytes {
    use bytes::BufMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let mut key = bytes::BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(match marker {
        super::producer_state::Marker::Abort => 0,
        super::producer_state::Marker::Commit => 1,
    });
    let mut value = bytes::BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut out = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a marker batch always encodes");
    out.freeze()
}

#[cfg(test)]
mod marker_tests {
    use super::*;
    use crate::storage::producer_state::Marker;

    #[test]
    fn markers_encode_as_control_batches_and_read_back() {
        for m in [Marker::Commit, Marker::Abort] {
            let b = encode_marker(7, 3, m, 0, 1_000);
            let (h, size) = validate_for_append(&b, 1 << 20).unwrap();
            assert_eq!(size, b.len());
            assert_eq!(h.attributes & (ATTR_CONTROL | ATTR_TRANSACTIONAL), 0x30);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (7, 3, -1)
            );
            assert_eq!(control_type(&b), Some(m));
            assert_eq!(marker_of(&b), Some((m, 0)));
            let fenced = encode_marker(7, 3, m, 12, 1_000);
            assert_eq!(marker_of(&fenced), Some((m, 12)));
        }
        // Not a marker: a data batch, a cut one.
        let data = test_util::encode_batch(0, 1, 0, 10);
        assert_eq!(control_type(&data), None);
        let b = encode_marker(7, 3, Marker::Commit, 0, 1_000);
        assert_eq!(control_type(&b[..HEADER_LEN + 2]), None);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// Encode one batch of `count` records with offsets `base..` and
    /// timestamps `ts0 + i`, values `value_len` bytes.
    pub fn encode_batch(base: i64, count: usize, ts0: i64, value_len: usize) -> Bytes {
        encode_batch_ts(
            base,
            &(0..count as i64).map(|i| ts0 + i).collect::<Vec<_>>(),
            value_len,
        )
    }

    /// Encode `records` as uncompressed v2 batches.
    fn encode_records(records: &[Record]) -> Bytes {
        encode_records_with(records, Compression::None)
    }

    /// Encode `records` as v2 batches compressed with `compression`.
    pub fn encode_records_with(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    /// Encode one idempotent batch: producer `pid`, `epoch`, base sequence
    /// `seq`, `count` records (sequences must not wrap inside the batch:
    /// the encoder would split it), timestamps `ts0 + i`.
    pub fn encode_idempotent(pid: i64, epoch: i16, seq: i32, count: usize, ts0: i64) -> Bytes {
        encode_producer_batch(pid, epoch, seq, count, ts0, false)
    }

    /// [`encode_idempotent`] as part of a transaction (attribute bit 4).
    pub fn encode_transactional(pid: i64, epoch: i16, seq: i32, count: usize, ts0: i64) -> Bytes {
        encode_producer_batch(pid, epoch, seq, count, ts0, true)
    }

    fn encode_producer_batch(
        pid: i64,
        epoch: i16,
        seq: i32,
        count: usize,
        ts0: i64,
        transactional: bool,
    ) -> Bytes {
        let tag = if transactional { 't' } else { 'p' };
        let records: Vec<Record> = (0..count as i64)
            .map(|i| Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: seq + i as i32,
                timestamp: ts0 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!(
                    "{tag}{pid} e{epoch} s{}",
                    seq + i as i32
                ))),
                headers: Default::default(),
            })
            .collect();
        encode_records(&records)
    }

    /// Encode one batch with one record per timestamp in `ts`.
    pub fn encode_batch_ts(base: i64, ts: &[i64], value_len: usize) -> Bytes {
        let records: Vec<Record> = ts
            .iter()
            .enumerate()
            .map(|(i, t)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                // The encoder starts a new batch whenever offset - sequence
                // changes (GLOMMIO.md §7): keep them in step.
                sequence: (base + i as i64) as i32,
                timestamp: *t,
                key: Some(Bytes::from(format!("k{}", base + i as i64))),
                value: Some(Bytes::from(vec![b'v'; value_len])),
                headers: Default::default(),
            })
            .collect();
        encode_records(&records)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::encode_batch;
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn round_trip_with_kafka_protocol() {
        let b = encode_batch(0, 5, 1_000, 10);
        let (h, size) = validate_for_append(&b, 1 << 20).unwrap();
        assert_eq!(size, b.len());
        assert_eq!(h.magic, 2);
        assert_eq!(h.record_count, 5);
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_004);
        let mut m = b.to_vec();
        set_base_offset(&mut m, 123_456);
        let (h2, _) = validate_batch(&m).unwrap();
        assert_eq!(h2.base_offset, 123_456);
        assert_eq!(h2.last_offset(), 123_460);
        let mut bytes = bytes::Bytes::from(m);
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let offs: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offs, vec![123_456, 123_457, 123_458, 123_459, 123_460]);
    }

    #[test]
    fn every_truncated_prefix_is_an_error() {
        let b = encode_batch(0, 3, 1, 20);
        for n in 0..b.len() {
            assert!(validate_batch(&b[..n]).is_err(), "prefix {n} accepted");
            let mut it = BatchIter::new(&b[..n]);
            if n > 0 {
                assert!(it.next().unwrap().is_err(), "iter prefix {n} accepted");
            }
        }
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let b = encode_batch(0, 3, 1, 20);
        for i in 21..b.len() {
            let mut m = b.to_vec();
            m[i] ^= 0x40;
            assert!(validate_batch(&m).is_err(), "flip at {i} accepted");
        }
        // Bytes outside the CRC (base offset, leader epoch) may change.
        let mut m = b.to_vec();
        m[13] ^= 1;
        assert!(validate_batch(&m).is_ok());
    }

    #[test]
    fn bad_magic_and_limits() {
        let b = encode_batch(0, 3, 1, 20);
        let mut m = b.to_vec();
        m[16] = 1;
        assert!(matches!(
            validate_batch(&m),
            Err(StorageError::UnsupportedMagic(1))
        ));
        assert!(matches!(
            validate_for_append(&b, 50),
            Err(StorageError::BatchTooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn iterates_several_batches() {
        let mut blob = encode_batch(0, 2, 1, 5).to_vec();
        blob.extend_from_slice(&encode_batch(2, 3, 1, 5));
        let items: Vec<_> = BatchIter::new(&blob).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].0, items[0].2);
        assert_eq!(items[1].1.record_count, 3);
    }

    #[test]
    fn golden_header_bytes() {
        // A header built by hand, field by field.
        let mut g = Vec::new();
        g.extend_from_slice(&7i64.to_be_bytes()); // baseOffset
        g.extend_from_slice(&49i32.to_be_bytes()); // batchLength: header only
        g.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch
        g.push(2); // magic
        g.extend_from_slice(&[0, 0, 0, 0]); // crc, filled below
        g.extend_from_slice(&0i16.to_be_bytes()); // attributes
        g.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
        g.extend_from_slice(&100i64.to_be_bytes()); // baseTimestamp
        g.extend_from_slice(&200i64.to_be_bytes()); // maxTimestamp
        g.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        g.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        g.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        g.extend_from_slice(&1i32.to_be_bytes()); // recordCount
        assert_eq!(g.len(), HEADER_LEN);
        let crc = compute_crc(&g);
        g[17..21].copy_from_slice(&crc.to_be_bytes());
        // CRC32C of bytes 21..61, computed independently (bitwise Python
        // implementation of the Castagnoli polynomial).
        assert_eq!(crc, 0xd46c_5403);
        let golden: [u8; 21] = [
            0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 49, 0xff, 0xff, 0xff, 0xff, 2, 0xd4, 0x6c, 0x54, 0x03,
        ];
        assert_eq!(&g[..21], &golden);
        let (h, size) = validate_batch(&g).unwrap();
        assert_eq!(size, 61);
        assert_eq!(
            h,
            BatchHeader {
                base_offset: 7,
                batch_length: 49,
                partition_leader_epoch: -1,
                magic: 2,
                crc,
                attributes: 0,
                last_offset_delta: 0,
                base_timestamp: 100,
                max_timestamp: 200,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                record_count: 1,
            }
        );
    }
}
