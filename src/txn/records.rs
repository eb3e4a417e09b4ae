//! The records of `__transaction_state`, in Kafka's layout (`TransactionLogKey` and
//! `TransactionLogValue`, version 0), so the topic reads the same as Kafka's to a tool
//! that decodes it.
//!
//! ```text
//! key, version 0:    version i16 | transactional_id string
//! value, version 0:  version i16 | producer_id i64 | producer_epoch i16
//!                    | transaction_timeout_ms i32 | transaction_status i8
//!                    | transaction_partitions nullable array (i32 count) of:
//!                        topic string | partition_ids array (i32 count) of i32
//!                    | transaction_last_update_timestamp_ms i64
//!                    | transaction_start_timestamp_ms i64
//! ```
//!
//! Integers are big-endian, strings `i16 length` + UTF-8. A null value (tombstone) removes
//! the transactional id. Records are written as magic-v2 batches with no producer id
//! (`group::records::encode_batches`).

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

/// The one key and value version written and read.
const VERSION: i16 = 0;

/// Kafka's `TransactionState`, with its status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction open (the producer was initialised, or its last one finished long
    /// ago).
    Empty,
    /// Partitions were added: a transaction is open.
    Ongoing,
    /// EndTxn(commit) is durable: the COMMIT markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing is durable: the ABORT markers are being written.
    PrepareAbort,
    /// Every COMMIT marker is durable.
    CompleteCommit,
    /// Every ABORT marker is durable.
    CompleteAbort,
    /// The transactional id expired.
    Dead,
    /// A producer is being fenced (Kafka's state; Sluice fences through PrepareAbort).
    PrepareEpochFence,
}

impl TxnState {
    pub fn status(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_status(b: i8) -> Option<TxnState> {
        Some(match b {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use (Kafka's).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// One transactional id's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions of the open (or finishing) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the open transaction began; -1 when none is open.
    pub start_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxnRecordError {
    #[error("transaction record truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown transaction record version {0}")]
    Version(i16),
    #[error("unknown transaction status {0}")]
    Status(i8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("string of {0} bytes is too long")]
    TooLong(usize),
    #[error("bad count {0}")]
    Count(i32),
}

fn put_string(out: &mut BytesMut, s: &str) -> Result<(), TxnRecordError> {
    let len = i16::try_from(s.len()).map_err(|_| TxnRecordError::TooLong(s.len()))?;
    out.put_i16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

pub fn encode_key(transactional_id: &str) -> Result<Bytes, TxnRecordError> {
    let mut out = BytesMut::with_capacity(4 + transactional_id.len());
    out.put_i16(VERSION);
    put_string(&mut out, transactional_id)?;
    Ok(out.freeze())
}

pub fn encode_value(m: &TxnMeta) -> Result<Bytes, TxnRecordError> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VERSION);
    out.put_i64(m.producer_id);
    out.put_i16(m.producer_epoch);
    out.put_i32(m.timeout_ms);
    out.put_i8(m.state.status());
    // Partitions grouped by topic (the set is sorted by topic, then partition).
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (t, p) in &m.partitions {
        match topics.last_mut() {
            Some((last, ps)) if *last == t.as_str() => ps.push(*p),
            _ => topics.push((t.as_str(), vec![*p])),
        }
    }
    out.put_i32(topics.len() as i32);
    for (t, ps) in &topics {
        put_string(&mut out, t)?;
        out.put_i32(ps.len() as i32);
        for p in ps {
            out.put_i32(*p);
        }
    }
    out.put_i64(m.last_update_ms);
    out.put_i64(m.start_ms);
    Ok(out.freeze())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TxnRecordError> {
        if self.buf.len() - self.pos < n {
            return Err(TxnRecordError::Truncated(self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn i8(&mut self) -> Result<i8, TxnRecordError> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Result<i16, TxnRecordError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Result<i32, TxnRecordError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Result<i64, TxnRecordError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, TxnRecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Err(TxnRecordError::Count(i32::from(len)));
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| TxnRecordError::Utf8)
    }
    /// An array count that cannot exceed what is left (each item takes at least `min` bytes).
    fn count(&mut self, min: usize) -> Result<usize, TxnRecordError> {
        let n = self.i32()?;
        if n < 0 || n as usize > (self.buf.len() - self.pos) / min {
            return Err(TxnRecordError::Count(n));
        }
        Ok(n as usize)
    }
}

/// The transactional id a key names.
pub fn decode_key(b: &[u8]) -> Result<String, TxnRecordError> {
    let mut r = Reader { buf: b, pos: 0 };
    let v = r.i16()?;
    if v != VERSION {
        return Err(TxnRecordError::Version(v));
    }
    r.string()
}

pub fn decode_value(b: &[u8]) -> Result<TxnMeta, TxnRecordError> {
    let mut r = Reader { buf: b, pos: 0 };
    let v = r.i16()?;
    if v != VERSION {
        return Err(TxnRecordError::Version(v));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = r.i8()?;
    let state = TxnState::from_status(status).ok_or(TxnRecordError::Status(status))?;
    let mut partitions = BTreeSet::new();
    // A null array (-1) is no partitions.
    let n = r.i32()?;
    if n > 0 {
        r.pos -= 4;
        let n = r.count(6)?;
        for _ in 0..n {
            let topic = r.string()?;
            let m = r.count(4)?;
            for _ in 0..m {
                partitions.insert((topic.clone(), r.i32()?));
            }
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnMeta {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let m = TxnMeta {
            producer_id: 42,
            producer_epoch: 7,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 3),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
        };
        let v = encode_value(&m).unwrap();
        assert_eq!(decode_value(&v).unwrap(), m);
        let k = encode_key("tx-1").unwrap();
        assert_eq!(decode_key(&k).unwrap(), "tx-1");
        let empty = TxnMeta {
            partitions: BTreeSet::new(),
            state: TxnState::Empty,
            start_ms: -1,
            ..m
        };
        assert_eq!(decode_value(&encode_value(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn damaged_records_are_errors() {
        let m = TxnMeta {
            producer_id: 1,
            producer_epoch: 0,
            timeout_ms: 1000,
            state: TxnState::Ongoing,
            partitions: [("t".to_string(), 0)].into_iter().collect(),
            last_update_ms: 0,
            start_ms: 0,
        };
        let v = encode_value(&m).unwrap();
        for cut in 0..v.len() {
            assert!(decode_value(&v[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = v.to_vec();
        bad[16] = 99; // the status byte
        assert_eq!(decode_value(&bad), Err(TxnRecordError::Status(99)));
    }
}
