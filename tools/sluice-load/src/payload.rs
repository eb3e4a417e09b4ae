//! Message payloads, keys and partition choice.
//!
//! Every payload starts with a tracking header so consumers can attribute
//! each message to its producer and check exactly-once delivery, and can
//! measure end-to-end latency from the intended send time with microsecond
//! precision (record timestamps only carry milliseconds).
//!
//! Header layout (32 bytes, big-endian):
//!
//! | offset | field        | type |
//! |-------:|--------------|------|
//! |      0 | magic "SLD1" | [u8; 4] |
//! |      4 | run id       | u32 (random per run: other runs' data is ignored) |
//! |      8 | producer id  | u32  |
//! |     12 | sequence     | u64 (per producer, from 0) |
//! |     20 | intended µs  | u64 (unix µs of the intended send time) |
//! |     28 | lag µs       | u32 (created − intended, saturating) |

use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};

use crate::workload::{KeyDistribution, PayloadFill, Workload};

pub const HEADER_LEN: usize = 32;
pub const MAGIC: &[u8; 4] = b"SLD1";

/// What the header of one message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracking {
    pub run_id: u32,
    pub producer_id: u32,
    pub sequence: u64,
    pub intended_us: u64,
    /// Unix µs when the message was actually created (intended + lag).
    pub created_us: u64,
}

impl Tracking {
    pub fn write(&self, out: &mut [u8]) {
        assert!(out.len() >= HEADER_LEN);
        assert!(self.created_us >= self.intended_us);
        let lag = u32::try_from(self.created_us - self.intended_us).unwrap_or(u32::MAX);
        out[0..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&self.run_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.producer_id.to_be_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_be_bytes());
        out[20..28].copy_from_slice(&self.intended_us.to_be_bytes());
        out[28..32].copy_from_slice(&lag.to_be_bytes());
    }

    /// Parse a header; None if the payload is not one of ours.
    pub fn read(payload: &[u8]) -> Option<Tracking> {
        if payload.len() < HEADER_LEN || &payload[0..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8"));
        let intended_us = u64_at(20);
        Some(Tracking {
            run_id: u32_at(4),
            producer_id: u32_at(8),
            sequence: u64_at(12),
            intended_us,
            created_us: intended_us + u64::from(u32_at(28)),
        })
    }
}

/// SplitMix64: small, fast, seedable; good enough for key choice and filler.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The body bytes payloads are cut from: either one filler block that every
/// fixed-size message reuses after its header, or sample lines from a file.
#[derive(Debug, Clone)]
pub enum PayloadSource {
    Fixed { filler: Bytes },
    Samples { lines: Vec<Bytes> },
}

impl PayloadSource {
    pub fn from_workload(w: &Workload) -> Result<PayloadSource> {
        match &w.payload_file {
            Some(p) => Self::from_file(p),
            None => Ok(Self::fixed(
                w.message_size.0 as usize,
                w.payload_fill,
                w.seed,
            )),
        }
    }

    pub fn fixed(size: usize, fill: PayloadFill, seed: u64) -> PayloadSource {
        assert!(size >= HEADER_LEN);
        let mut rng = Rng::new(seed ^ 0xF111);
        let text = b"{\"level\":\"info\",\"service\":\"checkout\",\"msg\":\"order placed\",\"amount\":42} ";
        let filler: Vec<u8> = (0..size)
            .map(|i| match fill {
                PayloadFill::Random => rng.next_u64() as u8,
                PayloadFill::Text => text[i % text.len()],
                PayloadFill::Zeros => 0,
            })
            .collect();
        PayloadSource::Fixed {
            filler: Bytes::from(filler),
        }
    }

    pub fn from_file(path: &Path) -> Result<PayloadSource> {
        let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let lines: Vec<Bytes> = data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut v = l.to_vec();
                v.resize(v.len().max(HEADER_LEN), b' ');
                Bytes::from(v)
            })
            .collect();
        if lines.is_empty() {
            bail!("payload file {} has no lines", path.display());
        }
        Ok(PayloadSource::Samples { lines })
    }

    /// Mean message size in bytes (to convert a byte rate to messages).
    pub fn mean_size(&self) -> f64 {
        match self {
            PayloadSource::Fixed { filler } => filler.len() as f64,
            PayloadSource::Samples { lines } => {
                lines.iter().map(|l| l.len() as f64).sum::<f64>() / lines.len() as f64
            }
        }
    }

    /// Build message number `sequence`'s payload with its header.
    pub fn make(&self, t: &Tracking, buf: &mut BytesMut) -> Bytes {
        let body: &Bytes = match self {
            PayloadSource::Fixed { filler } => filler,
            PayloadSource::Samples { lines } => &lines[(t.sequence % lines.len() as u64) as usize],
        };
        buf.reserve(body.len());
        let start = buf.len();
        buf.put_slice(body);
        t.write(&mut buf[start..start + HEADER_LEN]);
        buf.split().freeze()
    }
}

/// Kafka's murmur2 (as in the Java client's `Utils.murmur2`), so keyed
/// messages land on the same partitions as with Java clients.
pub fn murmur2(data: &[u8]) -> i32 {
    let length = data.len() as i32;
    let seed: i32 = 0x9747_b28c_u32 as i32;
    let m: i32 = 0x5bd1_e995;
    let r = 24;
    let mut h: i32 = seed ^ length;
    let length4 = data.len() / 4;
    for i in 0..length4 {
        let i4 = i * 4;
        let mut k: i32 = (data[i4] as i32 & 0xff)
            + ((data[i4 + 1] as i32 & 0xff) << 8)
            + ((data[i4 + 2] as i32 & 0xff) << 16)
            + ((data[i4 + 3] as i32 & 0xff) << 24);
        k = k.wrapping_mul(m);
        k ^= ((k as u32) >> r) as i32;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let rem = data.len() % 4;
    let base = data.len() & !3;
    if rem == 3 {
        h ^= (data[base + 2] as i32 & 0xff) << 16;
    }
    if rem >= 2 {
        h ^= (data[base + 1] as i32 & 0xff) << 8;
    }
    if rem >= 1 {
        h ^= data[base] as i32 & 0xff;
        h = h.wrapping_mul(m);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(m);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The Java client's partition for a key: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions
}

/// Chooses each message's key and partition.
pub struct KeyChooser {
    dist: KeyDistribution,
    keys: Vec<Bytes>,
    /// Partition of each key (precomputed murmur2).
    key_partition: Vec<usize>,
    /// Zipf cumulative distribution over key ranks.
    zipf_cdf: Vec<f64>,
    rng: Rng,
    next: u64,
    partitions: usize,
}

impl KeyChooser {
    pub fn new(w: &Workload, partitions: usize, producer_id: u32) -> KeyChooser {
        assert!(partitions > 0);
        let n = if w.keys == KeyDistribution::None {
            0
        } else {
            w.key_count as usize
        };
        let keys: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("key-{i:08}"))).collect();
        let key_partition = keys
            .iter()
            .map(|k| partition_for_key(k, partitions))
            .collect();
        let zipf_cdf = if w.keys == KeyDistribution::Zipf {
            zipf_cdf(n, w.zipf_exponent)
        } else {
            Vec::new()
        };
        KeyChooser {
            dist: w.keys,
            keys,
            key_partition,
            zipf_cdf,
            rng: Rng::new(w.seed.wrapping_add(u64::from(producer_id) * 0x1000_0001)),
            // Stagger producers so unkeyed round-robin spreads from the start.
            next: u64::from(producer_id),
            partitions,
        }
    }

    /// (key, partition index) for the next message.
    pub fn next(&mut self) -> (Option<Bytes>, usize) {
        let i = match self.dist {
            KeyDistribution::None => {
                let p = (self.next % self.partitions as u64) as usize;
                self.next += 1;
                return (None, p);
            }
            KeyDistribution::RoundRobin => {
                let i = (self.next % self.keys.len() as u64) as usize;
                self.next += 1;
                i
            }
            KeyDistribution::Random => self.rng.below(self.keys.len() as u64) as usize,
            KeyDistribution::Zipf => {
                let u = self.rng.next_f64();
                self.zipf_cdf
                    .partition_point(|c| *c < u)
                    .min(self.keys.len() - 1)
            }
        };
        (Some(self.keys[i].clone()), self.key_partition[i])
    }
}

/// Cumulative probabilities of ranks 1..=n under Zipf with exponent `s`.
pub fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects_foreign_data() {
        let t = Tracking {
            run_id: 7,
            producer_id: 3,
            sequence: 123_456_789,
            intended_us: 1_700_000_000_000_000,
            created_us: 1_700_000_000_000_250,
        };
        let src = PayloadSource::fixed(64, PayloadFill::Random, 1);
        let mut buf = BytesMut::new();
        let p = src.make(&t, &mut buf);
        assert_eq!(p.len(), 64);
        assert_eq!(Tracking::read(&p), Some(t));
        assert_eq!(Tracking::read(&p[..31]), None);
        assert_eq!(Tracking::read(&[0u8; 64]), None);
    }

    #[test]
    fn murmur2_matches_java_client() {
        // Values from Kafka's UtilsTest / DefaultPartitionerTest.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn zipf_is_skewed_and_keys_cover_partitions() {
        let w = Workload {
            keys: KeyDistribution::Zipf,
            key_count: 1000,
            ..Workload::default()
        };
        let mut kc = KeyChooser::new(&w, 16, 0);
        let mut hits = [0u32; 16];
        let mut first = 0;
        for _ in 0..100_000 {
            let (k, p) = kc.next();
            if k.as_deref() == Some(b"key-00000000".as_slice()) {
                first += 1;
            }
            hits[p] += 1;
        }
        // Rank 1 of 1000 with s=0.99 has probability ~13%.
        assert!((10_000..17_000).contains(&first), "rank-1 hits {first}");
        assert!(hits.iter().all(|h| *h > 0));
    }
}
