//! The records of `__consumer_offsets`, in Kafka's own layout, so the topic
//! reads the same as Kafka's to any tool that decodes it.
//!
//! Wire layout (all integers big-endian, strings are `i16 length` + UTF-8):
//!
//! ```text
//! offset commit key, version 0 or 1:  version i16 | group string | topic string | partition i32
//! group metadata key, version 2:      version i16 | group string
//! offset commit value, version 3:     version i16 | offset i64 | leader_epoch i32
//!                                     | metadata string | commit_timestamp i64
//! ```
//!
//! group metadata value, version 3:    version i16 | protocol_type string | generation i32
//!                                     | protocol nullable string | leader nullable string
//!                                     | current_state_timestamp i64 | members array (i32 count) of:
//!                                       member_id string | group_instance_id nullable string
//!                                       | client_id string | client_host string
//!                                       | rebalance_timeout i32 | session_timeout i32
//!                                       | subscription bytes | assignment bytes (i32 length)
//! ```
//!
//! Value versions 0 (offset, metadata, timestamp), 1 (plus expire timestamp)
//! and 2 (offset, metadata, timestamp) are read too; version 3 is written. A
//! record with a null value (tombstone) deletes the key. Records are written
//! as magic-v2 RecordBatches with producer id -1 and no compression.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Key version written for offset commits.
pub const KEY_VERSION_OFFSET: i16 = 1;
/// Key version of group metadata records.
pub const KEY_VERSION_GROUP: i16 = 2;
/// Value version written for group metadata.
pub const GROUP_VALUE_VERSION: i16 = 3;
/// Value version written for offset commits.
pub const VALUE_VERSION: i16 = 3;

/// Why a record could not be decoded or encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record truncated: needed {needed} bytes at {at}, have {have}")]
    Truncated {
        at: usize,
        needed: usize,
        have: usize,
    },
    #[error("unknown offset value version {0}")]
    ValueVersion(i16),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("string of {0} bytes is too long for an i16 length")]
    TooLong(usize),
    #[error("cannot encode record batch: {0}")]
    Encode(String),
}

/// The key of an offset commit: one partition of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when the client did not send one.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// What a key in `__consumer_offsets` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset(OffsetKey),
    /// Group metadata (version 2): the group's generation and members.
    GroupMetadata(String),
    /// A version this broker does not know: skipped.
    Unknown(i16),
}

/// A cursor over a byte slice that reports truncation instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let have = self.bytes.len() - self.at;
        if have < n {
            return Err(RecordError::Truncated {
                at: self.at,
                needed: n,
                have,
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, RecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, RecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A nullable string (a negative length reads as None).
    fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        std::str::from_utf8(b)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| RecordError::Utf8)
    }

    /// Bytes with an i32 length (negative: empty).
    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }

    /// A string; a negative length (null) reads as empty.
    fn string(&mut self) -> Result<String, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(String::new());
        }
        let b = self.take(len as usize)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| RecordError::Utf8)
    }
}

fn put_string(out: &mut BytesMut, s: &str) -> Result<(), RecordError> {
    let len = i16::try_from(s.len()).map_err(|_| RecordError::TooLong(s.len()))?;
    out.put_i16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_nullable_string(out: &mut BytesMut, s: Option<&str>) -> Result<(), RecordError> {
    match s {
        Some(s) => put_string(out, s),
        None => {
            out.put_i16(-1);
            Ok(())
        }
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) -> Result<(), RecordError> {
    let len = i32::try_from(b.len()).map_err(|_| RecordError::TooLong(b.len()))?;
    out.put_i32(len);
    out.put_slice(b);
    Ok(())
}

/// One member as a group metadata record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's generation and members (Kafka's GroupMetadataValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberRecord>,
}

/// Encode a group metadata key (version 2).
pub fn encode_group_key(group: &str) -> Result<Bytes, RecordError> {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(KEY_VERSION_GROUP);
    put_string(&mut out, group)?;
    Ok(out.freeze())
}

/// Encode a group metadata value (version 3).
pub fn encode_group_value(v: &GroupMetadataValue) -> Result<Bytes, RecordError> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &v.protocol_type)?;
    out.put_i32(v.generation);
    put_nullable_string(&mut out, v.protocol.as_deref())?;
    put_nullable_string(&mut out, v.leader.as_deref())?;
    out.put_i64(v.current_state_timestamp_ms);
    out.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_string(&mut out, &m.member_id)?;
        put_nullable_string(&mut out, m.group_instance_id.as_deref())?;
        put_string(&mut out, &m.client_id)?;
        put_string(&mut out, &m.client_host)?;
        out.put_i32(m.rebalance_timeout_ms);
        out.put_i32(m.session_timeout_ms);
        put_bytes(&mut out, &m.subscription)?;
        put_bytes(&mut out, &m.assignment)?;
    }
    Ok(out.freeze())
}

/// Decode a group metadata value of version 0 to 3 (as Kafka writes them: version 0 has no
/// current state timestamp nor rebalance timeout, versions below 3 no instance id).
pub fn decode_group_value(bytes: &[u8]) -> Result<GroupMetadataValue, RecordError> {
    let mut r = Reader::new(bytes);
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(RecordError::ValueVersion(version));
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { Some(r.i32()?) } else { None };
        let session_timeout_ms = r.i32()?;
        members.push(MemberRecord {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            // Version 0 had one timeout: Kafka takes it for both.
            rebalance_timeout_ms: rebalance_timeout_ms.unwrap_or(session_timeout_ms),
            session_timeout_ms,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    Ok(GroupMetadataValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

/// Encode an offset commit key (version 1).
pub fn encode_key(key: &OffsetKey) -> Result<Bytes, RecordError> {
    let mut out = BytesMut::with_capacity(2 + 2 + key.group.len() + 2 + key.topic.len() + 4);
    out.put_i16(KEY_VERSION_OFFSET);
    put_string(&mut out, &key.group)?;
    put_string(&mut out, &key.topic)?;
    out.put_i32(key.partition);
    Ok(out.freeze())
}

/// Decode any key of `__consumer_offsets`.
pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, RecordError> {
    let mut r = Reader::new(bytes);
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset(OffsetKey {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        })),
        KEY_VERSION_GROUP => Ok(RecordKey::GroupMetadata(r.string()?)),
        v => Ok(RecordKey::Unknown(v)),
    }
}

/// Encode an offset commit value (version 3).
pub fn encode_value(value: &OffsetValue) -> Result<Bytes, RecordError> {
    let mut out = BytesMut::with_capacity(2 + 8 + 4 + 2 + value.metadata.len() + 8);
    out.put_i16(VALUE_VERSION);
    out.put_i64(value.offset);
    out.put_i32(value.leader_epoch);
    put_string(&mut out, &value.metadata)?;
    out.put_i64(value.commit_timestamp_ms);
    Ok(out.freeze())
}

/// Decode an offset commit value of version 0 to 3 (later versions: their
/// version-3 prefix; trailing tagged fields are ignored).
pub fn decode_value(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut r = Reader::new(bytes);
    let version = r.i16()?;
    let offset = r.i64()?;
    match version {
        0 | 2 => Ok(OffsetValue {
            offset,
            leader_epoch: -1,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
        }),
        1 => {
            let metadata = r.string()?;
            let commit_timestamp_ms = r.i64()?;
            let _expire_timestamp = r.i64()?;
            Ok(OffsetValue {
                offset,
                leader_epoch: -1,
                metadata,
                commit_timestamp_ms,
            })
        }
        v if v >= 3 => Ok(OffsetValue {
            offset,
            leader_epoch: r.i32()?,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
        }),
        v => Err(RecordError::ValueVersion(v)),
    }
}

/// Bytes a record adds to a batch, roughly (varint overheads rounded up).
fn record_size_estimate(key: &Bytes, value: &Option<Bytes>) -> usize {
    32 + key.len() + value.as_ref().map_or(0, Bytes::len)
}

/// Encode `(key, value)` records (value None = tombstone) as one or more
/// RecordBatches, each at most about `batch_bytes_max`, back to back. The
/// batches are meant for one `PartitionLog::append`, which assigns their
/// offsets; record `i` of the input gets offset `base_offset + i`.
pub fn encode_batches(
    records: &[(Bytes, Option<Bytes>)],
    timestamp_ms: i64,
    batch_bytes_max: usize,
) -> Result<Bytes, RecordError> {
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut out = BytesMut::new();
    let mut start = 0;
    while start < records.len() {
        // Greedy chunk: at least one record, then as many as fit.
        let mut end = start + 1;
        let mut size = record_size_estimate(&records[start].0, &records[start].1);
        while end < records.len() {
            let next = record_size_estimate(&records[end].0, &records[end].1);
            if size + next > batch_bytes_max {
                break;
            }
            size += next;
            end += 1;
        }
        let chunk = as_records(&records[start..end], timestamp_ms, None);
        RecordBatchEncoder::encode(&mut out, chunk.iter(), &options)
            .map_err(|e| RecordError::Encode(e.to_string()))?;
        start = end;
    }
    Ok(out.freeze())
}

/// `(key, value)` records as one batch's records, offsets from 0: a transactional batch of
/// `producer` (id, epoch), or without a producer. The sequence follows the offset less one,
/// so the encoder keeps one batch (it starts a new one whenever offset - sequence changes,
/// GLOMMIO.md §7) with base sequence -1, as for a batch written without a sequence.
fn as_records(
    records: &[(Bytes, Option<Bytes>)],
    timestamp_ms: i64,
    producer: Option<(i64, i16)>,
) -> Vec<Record> {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: timestamp_ms,
            key: Some(key.clone()),
            value: value.clone(),
            headers: Default::default(),
        })
        .collect()
}

/// Encode offset commit records as one transactional batch of `producer_id` at
/// `producer_epoch`, without a sequence (the broker writes it for the producer:
/// `PartitionLog::append_for_producer`). Record `i` gets offset `base_offset + i`.
pub fn encode_txn_batch(
    records: &[(Bytes, Option<Bytes>)],
    timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<Bytes, RecordError> {
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let chunk = as_records(records, timestamp_ms, Some((producer_id, producer_epoch)));
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(&mut out, chunk.iter(), &options)
        .map_err(|e| RecordError::Encode(e.to_string()))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_metadata_round_trips() {
        let v = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            current_state_timestamp_ms: 1_700_000_000_000,
            members: vec![
                MemberRecord {
                    member_id: "m-1".into(),
                    group_instance_id: Some("static-1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 30_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"assign"),
                },
                MemberRecord {
                    member_id: "m-2".into(),
                    group_instance_id: None,
                    client_id: "c2".into(),
                    client_host: "/127.0.0.2".into(),
                    rebalance_timeout_ms: 60_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        };
        let bytes = encode_group_value(&v).unwrap();
        assert_eq!(decode_group_value(&bytes).unwrap(), v);
        let key = encode_group_key("g").unwrap();
        assert_eq!(
            decode_key(&key).unwrap(),
            RecordKey::GroupMetadata("g".into())
        );
        // Truncated values are errors, not panics.
        for n in 0..bytes.len() {
            assert!(decode_group_value(&bytes[..n]).is_err());
        }
        // An empty group (no members, no protocol).
        let empty = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 8,
            protocol: None,
            leader: None,
            current_state_timestamp_ms: 0,
            members: Vec::new(),
        };
        let b = encode_group_value(&empty).unwrap();
        assert_eq!(decode_group_value(&b).unwrap(), empty);
    }
    use kafka_protocol::records::RecordBatchDecoder;

    fn key() -> OffsetKey {
        OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        }
    }

    fn value() -> OffsetValue {
        OffsetValue {
            offset: 42,
            leader_epoch: 7,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
        }
    }

    #[test]
    fn key_round_trip_and_golden_bytes() {
        let bytes = encode_key(&key()).unwrap();
        assert_eq!(
            &bytes[..],
            &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3],
            "Kafka's key v1 layout"
        );
        assert_eq!(decode_key(&bytes).unwrap(), RecordKey::Offset(key()));
    }

    #[test]
    fn value_round_trip_and_golden_bytes() {
        let bytes = encode_value(&value()).unwrap();
        let mut golden = vec![0, 3];
        golden.extend_from_slice(&42i64.to_be_bytes());
        golden.extend_from_slice(&7i32.to_be_bytes());
        golden.extend_from_slice(&[0, 1, b'm']);
        golden.extend_from_slice(&1000i64.to_be_bytes());
        assert_eq!(&bytes[..], &golden[..]);
        assert_eq!(decode_value(&bytes).unwrap(), value());
    }

    #[test]
    fn every_truncated_prefix_fails() {
        let k = encode_key(&key()).unwrap();
        for n in 0..k.len() {
            assert!(decode_key(&k[..n]).is_err(), "key prefix {n}");
        }
        let v = encode_value(&value()).unwrap();
        for n in 0..v.len() {
            assert!(decode_value(&v[..n]).is_err(), "value prefix {n}");
        }
    }

    #[test]
    fn old_value_versions_decode() {
        let mut v1 = vec![0, 1];
        v1.extend_from_slice(&5i64.to_be_bytes());
        v1.extend_from_slice(&[0, 0]);
        v1.extend_from_slice(&9i64.to_be_bytes());
        v1.extend_from_slice(&10i64.to_be_bytes());
        let d = decode_value(&v1).unwrap();
        assert_eq!(
            (d.offset, d.leader_epoch, d.commit_timestamp_ms),
            (5, -1, 9)
        );
        assert_eq!(
            decode_key(&[0, 2, 0, 1, b'g']).unwrap(),
            RecordKey::GroupMetadata("g".into())
        );
        assert_eq!(
            decode_value(&[0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            RecordError::ValueVersion(-1)
        );
    }

    #[test]
    fn batches_split_and_decode() {
        let records: Vec<(Bytes, Option<Bytes>)> = (0..100)
            .map(|i| {
                let k = OffsetKey {
                    partition: i,
                    ..key()
                };
                let v = if i % 10 == 0 {
                    None
                } else {
                    Some(encode_value(&value()).unwrap())
                };
                (encode_key(&k).unwrap(), v)
            })
            .collect();
        let bytes = encode_batches(&records, 5, 1024).unwrap();
        let mut buf = bytes.clone();
        let sets = RecordBatchDecoder::decode_all(&mut buf).unwrap();
        assert!(sets.len() > 1, "split into several batches");
        let all: Vec<Record> = sets.into_iter().flat_map(|s| s.records).collect();
        assert_eq!(all.len(), 100);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.key.as_ref(), Some(&records[i].0));
            assert_eq!(r.value, records[i].1);
            assert_eq!(r.producer_id, -1);
        }
        // Each batch's base sequence is -1, as for non-idempotent producers.
        assert_eq!(i32::from_be_bytes(bytes[53..57].try_into().unwrap()), -1);
    }
}
