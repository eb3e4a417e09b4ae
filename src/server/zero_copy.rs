//! Responses as a list of buffers: the record bytes of a Fetch response go to the socket from
//! the buffers they are stored in (the tail cache's batches, a segment read), never copied into
//! the response.
//!
//! kafka-protocol encodes a whole message into one `BufMut`, records included. To keep its
//! encoder (every version's layout, tagged fields, compact lengths) and still not copy the
//! records, the Fetch handler gives each partition a *placeholder* as its records: a `Bytes`
//! of the records' exact length that points into a per-shard address range reserved for
//! placeholders ([`placeholder`]). Nothing is ever stored there (an anonymous mapping that is
//! never written, so it costs no memory). [`FrameBuf`], the buffer the response is encoded
//! into, recognises a placeholder by its address when the encoder writes it, and puts the
//! placeholder's real buffers into the frame's parts instead of copying bytes. The writer then
//! sends the parts with one vectored send (`runtime::write_parts`).
//!
//! A placeholder whose buffers are missing when it is encoded (which would mean a bug) fails the
//! encoding, and the connection is closed with a logged reason: zeros are never sent as records.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};

/// Size of each shard's placeholder range. A response's placeholders must fit in it at once;
/// records larger than a quarter of it are copied instead.
const REGION_BYTES: usize = 1 << 30;
/// Records below this are copied into the frame: a part of its own costs more than the copy.
pub const SPLICE_MIN_BYTES: usize = 4096;

struct Region {
    base: &'static [u8],
    next: Cell<usize>,
    /// Placeholders not encoded yet, by start offset in the region: (length, buffers).
    live: RefCell<BTreeMap<usize, (usize, Vec<Bytes>)>>,
}

thread_local! {
    static REGION: Option<Region> = Region::reserve();
}

impl Region {
    fn reserve() -> Option<Region> {
        // Mapped once per shard thread and kept for the life of the process; never written,
        // so never backed by memory.
        let map = memmap2::MmapOptions::new()
            .len(REGION_BYTES)
            .map_anon()
            .ok()?;
        let map: &'static memmap2::MmapMut = Box::leak(Box::new(map));
        Some(Region {
            base: &map[..],
            next: Cell::new(0),
            live: RefCell::new(BTreeMap::new()),
        })
    }

    fn contains(&self, p: *const u8) -> Option<usize> {
        let start = self.base.as_ptr() as usize;
        let p = p as usize;
        (p >= start && p < start + self.base.len()).then(|| p - start)
    }
}

/// The records of one partition for a response: `parts` themselves when they are worth
/// sending as they are (a placeholder for them), else one buffer (copied if several).
pub fn placeholder(parts: Vec<Bytes>) -> Bytes {
    let len: usize = parts.iter().map(Bytes::len).sum();
    if !(SPLICE_MIN_BYTES..=REGION_BYTES / 4).contains(&len) {
        return crate::storage::Chunks::from_parts(parts).join();
    }
    REGION.with(|r| {
        let Some(r) = r else {
            return crate::storage::Chunks::from_parts(parts).join();
        };
        let mut at = r.next.get();
        if at + len > REGION_BYTES {
            at = 0;
        }
        r.next.set(at + len);
        let mut live = r.live.borrow_mut();
        // Anything still registered in this range is from a response that was dropped
        // unencoded (its connection closed): forget it.
        let stale: Vec<usize> = live
            .range(..at + len)
            .filter(|(start, (l, _))| **start + *l > at)
            .map(|(start, _)| *start)
            .collect();
        for s in stale {
            live.remove(&s);
        }
        live.insert(at, (len, parts));
        Bytes::from_static(&r.base[at..at + len])
    })
}

/// A response frame in parts, written in order.
#[derive(Debug, Default)]
pub struct Frame {
    pub parts: Vec<Bytes>,
}

impl Frame {
    pub fn one(b: Bytes) -> Frame {
        Frame { parts: vec![b] }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The buffer a response is encoded into: owned bytes, with placeholders' buffers spliced in.
pub struct FrameBuf {
    out: BytesMut,
    parts: Vec<Bytes>,
    /// Bytes already moved into `parts`.
    flushed: usize,
    /// A placeholder without buffers, or a write into bytes already moved: encoding failed.
    broken: Option<&'static str>,
    scratch: Vec<u8>,
}

impl FrameBuf {
    pub fn with_capacity(n: usize) -> FrameBuf {
        FrameBuf {
            out: BytesMut::with_capacity(n),
            parts: Vec::new(),
            flushed: 0,
            broken: None,
            scratch: Vec::new(),
        }
    }

    /// Total length written.
    pub fn len(&self) -> usize {
        self.flushed + self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame with its `i32` length prefix in front, or why encoding failed.
    pub fn finish_framed(self) -> Result<Frame, &'static str> {
        let len = i32::try_from(self.len()).map_err(|_| "a response over 2 GiB")?;
        let mut frame = self.finish()?;
        frame
            .parts
            .insert(0, Bytes::copy_from_slice(&len.to_be_bytes()));
        Ok(frame)
    }

    /// The frame, or why encoding failed.
    pub fn finish(mut self) -> Result<Frame, &'static str> {
        if let Some(why) = self.broken {
            return Err(why);
        }
        if !self.out.is_empty() {
            self.parts.push(self.out.split().freeze());
        }
        Ok(Frame { parts: self.parts })
    }

    fn splice(&mut self, offset_in_region: usize, len: usize) {
        let found = REGION.with(|r| {
            r.as_ref()
                .and_then(|r| r.live.borrow_mut().remove(&offset_in_region))
        });
        match found {
            Some((l, bufs)) if l == len => {
                if !self.out.is_empty() {
                    let owned = self.out.split().freeze();
                    self.flushed += owned.len();
                    self.parts.push(owned);
                }
                self.flushed += len;
                self.parts.extend(bufs);
            }
            _ => self.broken = Some("a records placeholder without its buffers"),
        }
    }
}

// SAFETY: every method delegates to the inner `BytesMut`, which upholds `BufMut`'s contract;
// `put_slice` is overridden only to splice placeholders, writing through `BytesMut` otherwise.
unsafe impl BufMut for FrameBuf {
    fn remaining_mut(&self) -> usize {
        self.out.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which is `out`'s.
        unsafe { self.out.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.out.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let in_region = REGION.with(|r| r.as_ref().and_then(|r| r.contains(src.as_ptr())));
        match in_region {
            Some(offset) if !src.is_empty() => self.splice(offset, src.len()),
            _ => self.out.put_slice(src),
        }
    }
}

impl kafka_protocol::protocol::buf::ByteBufMut for FrameBuf {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        match offset.checked_sub(self.flushed) {
            Some(i) => self.out.resize(i, 0),
            None => self.broken = Some("seek into a spliced range"),
        }
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        match (
            r.start.checked_sub(self.flushed),
            r.end.checked_sub(self.flushed),
        ) {
            (Some(a), Some(b)) if b <= self.out.len() => &mut self.out[a..b],
            _ => {
                self.broken = Some("a gap in a spliced range");
                self.scratch.resize(r.len(), 0);
                &mut self.scratch[..]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::Encodable;

    fn response(records: Vec<Bytes>) -> FetchResponse {
        let parts = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_records(Some(r))
            })
            .collect();
        FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default().with_partitions(parts),
        ])
    }

    /// A response encoded with placeholders sends exactly the bytes the plain encoder writes,
    /// every version, while its large records are parts of their own (not copies).
    #[test]
    fn spliced_fetch_responses_equal_the_plain_encoding() {
        let big: Vec<Bytes> = (0..3)
            .map(|i| Bytes::from(vec![b'a' + i as u8; 10_000 + i * 77]))
            .collect();
        let small = Bytes::from_static(b"tiny records");
        for version in 4..=18 {
            let plain_records = vec![
                Chunks::from_parts(big.clone()).join(),
                small.clone(),
                big[1].clone(),
            ];
            let mut plain = BytesMut::new();
            response(plain_records).encode(&mut plain, version).unwrap();

            let spliced_records = vec![
                placeholder(big.clone()),
                placeholder(vec![small.clone()]),
                placeholder(vec![big[1].clone()]),
            ];
            let mut buf = FrameBuf::with_capacity(64);
            response(spliced_records).encode(&mut buf, version).unwrap();
            let frame = buf.finish().unwrap();
            let joined: Vec<u8> = frame.parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, plain.to_vec(), "v{version}");
            for b in &big {
                assert!(
                    frame.parts.iter().any(|p| p.as_ptr() == b.as_ptr()),
                    "v{version}: a large batch was copied"
                );
            }
        }
    }

    /// A placeholder whose buffers are gone fails the encoding: never zeros as records.
    #[test]
    fn a_placeholder_without_buffers_fails() {
        let p = placeholder(vec![Bytes::from(vec![7u8; 8192])]);
        let mut buf = FrameBuf::with_capacity(64);
        buf.put_slice(&p);
        let mut again = FrameBuf::with_capacity(64);
        again.put_slice(&p);
        assert!(buf.finish().is_ok());
        assert!(
            again.finish().is_err(),
            "the second use has no buffers left"
        );
    }

    use crate::storage::Chunks;
}
