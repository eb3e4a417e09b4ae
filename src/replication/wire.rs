//! The broker-to-broker frame: Raft messages between two brokers' shards, batched, on the RPC
//! listener (never the Kafka port). Big-endian, like Kafka's wire format:
//!
//! ```text
//! frame    := length u32        bytes after this field, at most RPC_FRAME_BYTES_MAX
//!             crc u32           CRC32C of everything after this field
//!             version u8        2
//!             from u32          sending broker id
//!             incarnation u64   the sender's data directory (see `cluster::incarnation`)
//!             to u32            receiving broker id
//!             shard u16         the receiving shard (the one that owns the partitions)
//!             count u16         messages in the frame, at least 1
//!             message * count
//! message  := topic_id [16]     the partition's topic id (UUID bytes)
//!             partition i32
//!             length u32
//!             raft [length]     the raft-rs `eraftpb::Message`, protobuf-encoded
//! ```
//!
//! A message of type `MsgUnreachable` (which raft-rs never sends) is a leadership notice:
//! `from` leads the partition in term `term` (`cluster::node::spawn_leadership_notices`).
//!
//! A frame is checked whole (length, CRC, version, counts, every message's length) before
//! anything in it is used; a bad frame is an error for the connection, which the receiver
//! closes with the error logged. Version 1 frames (no `incarnation`, from brokers before it
//! existed) are read with incarnation 0, unknown.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use uuid::Uuid;

/// Largest frame accepted (`length` field), and the size a sender batches up to.
pub const RPC_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most messages in one frame.
pub const RPC_MESSAGES_PER_FRAME_MAX: usize = 4096;
const VERSION: u8 = 2;
const HEAD: usize = 4 + 4 + 1 + 4 + 8 + 4 + 2 + 2;
/// A version 1 frame's header (no incarnation).
const HEAD_V1: usize = HEAD - 8;
const MESSAGE_HEAD: usize = 16 + 4 + 4;

/// Where a frame goes and comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub from: u32,
    /// The sender's incarnation (0: unknown).
    pub incarnation: u64,
    pub to: u32,
    pub shard: u16,
}

/// One Raft message for one partition's group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessage {
    pub topic_id: Uuid,
    pub partition: i32,
    pub message: Message,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {RPC_FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("frame CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("frame version {0} is not supported")]
    Version(u8),
    #[error("frame holds {0} messages (1..={RPC_MESSAGES_PER_FRAME_MAX})")]
    Count(usize),
    #[error("{0} bytes after the last message")]
    Trailing(usize),
    #[error("raft message {index}: {reason}")]
    Message { index: usize, reason: String },
}

/// Batches messages for one route into frames of at most [`RPC_FRAME_BYTES_MAX`] bytes and
/// [`RPC_MESSAGES_PER_FRAME_MAX`] messages.
pub struct FrameBuilder {
    route: Route,
    body: BytesMut,
    count: usize,
    max_bytes: usize,
}

impl FrameBuilder {
    pub fn new(route: Route) -> Self {
        Self::with_limit(route, RPC_FRAME_BYTES_MAX)
    }

    /// A builder whose frames stay under `max_bytes` (at most the limit).
    pub fn with_limit(route: Route, max_bytes: usize) -> Self {
        FrameBuilder {
            route,
            body: BytesMut::new(),
            count: 0,
            max_bytes: max_bytes.min(RPC_FRAME_BYTES_MAX),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add `m`; returns the frame it completed, if the frame was full. A message too large for
    /// any frame is an error.
    pub fn push(&mut self, m: &GroupMessage) -> Result<Option<Bytes>, WireError> {
        let raft = m.message.write_to_bytes().map_err(|e| WireError::Message {
            index: self.count,
            reason: e.to_string(),
        })?;
        let size = MESSAGE_HEAD + raft.len();
        if HEAD - 4 + size > self.max_bytes {
            return Err(WireError::TooLarge(HEAD + size));
        }
        let done = if self.count == RPC_MESSAGES_PER_FRAME_MAX
            || HEAD - 4 + self.body.len() + size > self.max_bytes
        {
            self.finish()
        } else {
            None
        };
        self.body.put_slice(m.topic_id.as_bytes());
        self.body.put_i32(m.partition);
        self.body.put_u32(raft.len() as u32);
        self.body.put_slice(&raft);
        self.count += 1;
        Ok(done)
    }

    /// The frame of the messages pushed since the last one, if any.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let mut rest = BytesMut::with_capacity(HEAD - 8 + self.body.len());
        rest.put_u8(VERSION);
        rest.put_u32(self.route.from);
        rest.put_u64(self.route.incarnation);
        rest.put_u32(self.route.to);
        rest.put_u16(self.route.shard);
        rest.put_u16(self.count as u16);
        rest.put_slice(&self.body);
        let mut frame = BytesMut::with_capacity(8 + rest.len());
        frame.put_u32((4 + rest.len()) as u32);
        frame.put_u32(crc32c::crc32c(&rest));
        frame.put_slice(&rest);
        self.body.clear();
        self.count = 0;
        Some(frame.freeze())
    }
}

/// How many bytes the frame at the start of `buf` takes, once its length field is there
/// (`None`: fewer than 4 bytes). Lets a reader size its next read and refuse an oversized
/// frame before buffering it.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > RPC_FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(len));
    }
    Ok(Some(4 + len))
}

/// Decode one whole frame (exactly `frame`'s bytes).
pub fn decode(frame: &[u8]) -> Result<(Route, Vec<GroupMessage>), WireError> {
    let total = frame_len(frame)?.ok_or(WireError::Truncated("length"))?;
    if frame.len() < total {
        return Err(WireError::Truncated("frame shorter than its length"));
    }
    if frame.len() > total {
        return Err(WireError::Trailing(frame.len() - total));
    }
    if total < HEAD_V1 {
        return Err(WireError::Truncated("header"));
    }
    let stored = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let computed = crc32c::crc32c(&frame[8..]);
    if stored != computed {
        return Err(WireError::Crc { stored, computed });
    }
    let mut b = &frame[8..];
    let version = b.get_u8();
    let head = match version {
        VERSION => HEAD,
        1 => HEAD_V1,
        v => return Err(WireError::Version(v)),
    };
    if total < head {
        return Err(WireError::Truncated("header"));
    }
    let from = b.get_u32();
    let route = Route {
        from,
        incarnation: if version == 1 { 0 } else { b.get_u64() },
        to: b.get_u32(),
        shard: b.get_u16(),
    };
    let count = b.get_u16() as usize;
    if count == 0 || count > RPC_MESSAGES_PER_FRAME_MAX {
        return Err(WireError::Count(count));
    }
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        if b.remaining() < MESSAGE_HEAD {
            return Err(WireError::Truncated("message header"));
        }
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let partition = b.get_i32();
        let len = b.get_u32() as usize;
        if b.remaining() < len {
            return Err(WireError::Truncated("message"));
        }
        let message = Message::parse_from_bytes(&b[..len]).map_err(|e| WireError::Message {
            index,
            reason: e.to_string(),
        })?;
        b.advance(len);
        out.push(GroupMessage {
            topic_id: Uuid::from_bytes(id),
            partition,
            message,
        });
    }
    if b.has_remaining() {
        return Err(WireError::Trailing(b.remaining()));
    }
    Ok((route, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    const ROUTE: Route = Route {
        from: 1,
        incarnation: 0x0102_0304_0506_0708,
        to: 3,
        shard: 2,
    };

    fn append(partition: i32, data: &'static [u8]) -> GroupMessage {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 3;
        m.term = 7;
        m.index = 41;
        m.log_term = 6;
        m.commit = 40;
        m.set_entries(
            vec![Entry {
                term: 7,
                index: 42,
                data: Bytes::from_static(data),
                ..Default::default()
            }]
            .into(),
        );
        GroupMessage {
            topic_id: Uuid::from_bytes([0x11; 16]),
            partition,
            message: m,
        }
    }

    fn heartbeat() -> GroupMessage {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 3;
        m.term = 7;
        GroupMessage {
            topic_id: Uuid::from_bytes([0x22; 16]),
            partition: 0,
            message: m,
        }
    }

    fn one_frame(ms: &[GroupMessage]) -> Bytes {
        let mut b = FrameBuilder::new(ROUTE);
        for m in ms {
            assert!(b.push(m).unwrap().is_none());
        }
        b.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let ms = vec![append(5, b"batch bytes"), heartbeat(), append(6, b"")];
        let f = one_frame(&ms);
        assert_eq!(frame_len(&f).unwrap(), Some(f.len()));
        let (route, got) = decode(&f).unwrap();
        assert_eq!(route, ROUTE);
        assert_eq!(got, ms);
    }

    #[test]
    fn every_truncated_prefix_fails() {
        let f = one_frame(&[append(5, b"batch bytes"), heartbeat()]);
        for n in 0..f.len() {
            assert!(decode(&f[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut longer = f.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Trailing(1)));
    }

    #[test]
    fn damage_is_caught() {
        let f = one_frame(&[heartbeat()]);
        for i in 4..f.len() {
            let mut d = f.to_vec();
            d[i] ^= 0x40;
            assert!(decode(&d).is_err(), "flipped byte {i} decoded");
        }
        let mut huge = f.to_vec();
        huge[..4].copy_from_slice(&(RPC_FRAME_BYTES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(frame_len(&huge), Err(WireError::TooLarge(_))));
    }

    /// The layout in the module docs, byte by byte.
    #[test]
    fn golden_bytes() {
        let f = one_frame(&[heartbeat()]);
        // The heartbeat's protobuf: msg_type (field 1) = 8, to (2) = 3, from (3) = 1,
        // term (4) = 7.
        let raft: &[u8] = &[0x08, 0x08, 0x10, 0x03, 0x18, 0x01, 0x20, 0x07];
        let mut rest = vec![2u8]; // version
        rest.extend_from_slice(&[0, 0, 0, 1]); // from
        rest.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // incarnation
        rest.extend_from_slice(&[0, 0, 0, 3, 0, 2, 0, 1]); // to, shard, count
        rest.extend_from_slice(&[0x22; 16]);
        rest.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, raft.len() as u8]);
        rest.extend_from_slice(raft);
        let mut want = ((4 + rest.len()) as u32).to_be_bytes().to_vec();
        want.extend_from_slice(&crc32c::crc32c(&rest).to_be_bytes());
        want.extend_from_slice(&rest);
        assert_eq!(&f[..], &want[..]);
        assert_eq!(f.len(), 61);
        // A version 1 frame: the same without the incarnation, read as incarnation 0.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&rest[1..5]);
        v1.extend_from_slice(&rest[13..]);
        let mut old = ((4 + v1.len()) as u32).to_be_bytes().to_vec();
        old.extend_from_slice(&crc32c::crc32c(&v1).to_be_bytes());
        old.extend_from_slice(&v1);
        let (route, ms) = decode(&old).unwrap();
        assert_eq!(
            route,
            Route {
                incarnation: 0,
                ..ROUTE
            }
        );
        assert_eq!(ms, vec![heartbeat()]);
    }

    #[test]
    fn frames_are_cut_at_the_limit() {
        let big: &'static [u8] = Box::leak(vec![7u8; 300].into_boxed_slice());
        let mut b = FrameBuilder::with_limit(ROUTE, 1000);
        let mut frames = Vec::new();
        for p in 0..10 {
            if let Some(f) = b.push(&append(p, big)).unwrap() {
                frames.push(f);
            }
        }
        frames.extend(b.finish());
        let mut seen = Vec::new();
        for f in &frames {
            assert!(f.len() <= 1000 + 4);
            let (_, ms) = decode(f).unwrap();
            seen.extend(ms.into_iter().map(|m| m.partition));
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let huge: &'static [u8] = Box::leak(vec![1u8; 2000].into_boxed_slice());
        assert!(matches!(
            b.push(&append(0, huge)),
            Err(WireError::TooLarge(_))
        ));
    }
}
