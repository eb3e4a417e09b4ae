//! A consumer: fetches its assigned partitions directly (no consumer
//! group), from the offsets the run recorded with ListOffsets(latest)
//! before producing started, and counts every tracked message, so the run
//! can check that every acknowledged message arrived exactly once.
//!
//! End-to-end latency: from the message's intended send time (corrected)
//! or creation (uncorrected) to the arrival of the Fetch response that
//! carried it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse,
    fetch_request::{FetchPartition, FetchTopic},
};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::AsyncWriteExt;

use crate::client::{self, Connection};
use crate::latency::{LatencyPair, sample};
use crate::payload::Tracking;
use crate::shared::{PartitionRef, Shared};
use crate::workload::ConsumeFrom;

/// Fetch request and per-partition byte limits (the Java consumer's defaults).
const FETCH_MAX_BYTES: i32 = 50 << 20;
const PARTITION_FETCH_MAX_BYTES: i32 = 1 << 20;
/// A fetch that takes longer than its max wait plus this is a failure.
const FETCH_TIMEOUT_SLACK: Duration = Duration::from_secs(30);
/// Back-off after a failed fetch.
const FETCH_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Consecutive failed fetches after which a consumer gives up.
const FETCH_FAILURES_MAX: u32 = 50;

/// Bytes before a batch's records: baseOffset(8) batchLength(4).
const LOG_OVERHEAD: usize = 12;

/// What a consumer reports at the end.
#[derive(Debug, Default)]
pub struct ConsumerResult {
    pub end_to_end: LatencyPair,
    /// Per producer id, bitset of received sequence numbers.
    pub received: HashMap<u32, Vec<u64>>,
    /// Messages received more than once by this consumer.
    pub duplicates: u64,
    pub consumed: u64,
    pub consumed_bytes: u64,
    /// Measured window: messages intended in it, and bytes.
    pub measured_consumed: u64,
    pub measured_consumed_bytes: u64,
    pub fetch_errors: u64,
}

impl ConsumerResult {
    /// Mark (producer, sequence) received; false if it already was.
    pub fn mark(&mut self, producer: u32, sequence: u64) -> bool {
        let bits = self.received.entry(producer).or_default();
        let word = (sequence / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1 + word / 2, 0);
        }
        let bit = 1u64 << (sequence % 64);
        let fresh = bits[word] & bit == 0;
        bits[word] |= bit;
        fresh
    }
}

/// Split a Fetch `records` blob into whole batches; a trailing partial
/// batch (allowed by the protocol when a limit cuts it) is dropped.
pub fn whole_batches(mut data: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= LOG_OVERHEAD {
        let len = i32::from_be_bytes(data[8..12].try_into().expect("4"));
        if len < 0 {
            break;
        }
        let size = LOG_OVERHEAD + len as usize;
        if size > data.len() {
            break;
        }
        out.push(data.split_to(size));
    }
    out
}

/// Offset after the batch (from its header, even if its records are
/// skipped): baseOffset + lastOffsetDelta + 1.
fn batch_next_offset(batch: &[u8]) -> Option<i64> {
    if batch.len() < 27 {
        return None;
    }
    let base = i64::from_be_bytes(batch[0..8].try_into().expect("8"));
    let delta = i32::from_be_bytes(batch[23..27].try_into().expect("4"));
    Some(base + i64::from(delta) + 1)
}

pub struct Consumer {
    shared: Arc<Shared>,
    conn: Connection,
    version: i16,
    /// Assigned partitions and their next offsets.
    partitions: Vec<(PartitionRef, i64)>,
    max_wait_ms: i32,
    /// From the earliest offset: every record read counts (catch-up throughput), whoever
    /// wrote it.
    catch_up: bool,
    result: ConsumerResult,
}

impl Consumer {
    pub fn new(
        shared: Arc<Shared>,
        conn: Connection,
        partitions: Vec<(PartitionRef, i64)>,
        max_wait: Duration,
        from: ConsumeFrom,
    ) -> Result<Consumer> {
        let version = conn.versions.get(ApiKey::Fetch)?;
        Ok(Consumer {
            shared,
            conn,
            version,
            partitions,
            max_wait_ms: max_wait.as_millis() as i32,
            catch_up: from == ConsumeFrom::Earliest,
            result: ConsumerResult::default(),
        })
    }

    fn request(&self) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (p, offset) in &self.partitions {
            let fp = FetchPartition::default()
                .with_partition(p.partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(*offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(PARTITION_FETCH_MAX_BYTES);
            match topics.iter_mut().find(|t| t.topic == p.topic) {
                Some(t) => t.partitions.push(fp),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(p.topic.clone())
                        .with_partitions(vec![fp]),
                ),
            }
        }
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics)
    }

    async fn fetch_once(&mut self) -> Result<(FetchResponse, u64)> {
        let cid = self.conn.next_correlation_id();
        let frame = client::encode_request(ApiKey::Fetch, self.version, cid, &self.request())?;
        let timeout = Duration::from_millis(self.max_wait_ms as u64) + FETCH_TIMEOUT_SLACK;
        let resp = tokio::time::timeout(timeout, async {
            self.conn.writer.write_all(&frame).await?;
            client::read_frame(&mut self.conn.reader).await
        })
        .await
        .context("fetch timed out")??;
        let received_us = self.shared.clock.now_us();
        let resp = client::decode_response(ApiKey::Fetch, self.version, cid, resp)?;
        Ok((resp, received_us))
    }

    fn absorb(&mut self, resp: FetchResponse, received_us: u64) -> Result<()> {
        if resp.error_code != 0 {
            self.result.fetch_errors += 1;
            self.shared
                .count_error(&format!("fetch error {}", resp.error_code), 1);
            return Ok(());
        }
        let run_id = self.shared.run_id;
        let measure_start = self.shared.measure_start_us;
        let mut consumed = 0u64;
        let mut bytes = 0u64;
        let mut live_samples = Vec::new();
        for t in resp.responses {
            for pd in t.partitions {
                let Some(slot) = self
                    .partitions
                    .iter()
                    .position(|(p, _)| p.topic == t.topic && p.partition == pd.partition_index)
                else {
                    continue;
                };
                if pd.error_code != 0 {
                    self.result.fetch_errors += 1;
                    self.shared
                        .count_error(&format!("fetch partition error {}", pd.error_code), 1);
                    continue;
                }
                let Some(records) = pd.records else { continue };
                let mut next = self.partitions[slot].1;
                for batch in whole_batches(records) {
                    let after = batch_next_offset(&batch);
                    let mut b = batch;
                    let set = RecordBatchDecoder::decode(&mut b).context("decode fetched batch")?;
                    for r in set.records {
                        if r.offset < next || r.control {
                            continue;
                        }
                        let Some(v) = r.value.as_deref() else {
                            continue;
                        };
                        // This run's messages are checked and timed; with a catch-up read,
                        // what was stored before counts too, by when it arrived.
                        let (measured, sample_of) =
                            match Tracking::read(v).filter(|tr| tr.run_id == run_id) {
                                Some(tr) => {
                                    if !self.result.mark(tr.producer_id, tr.sequence) {
                                        self.result.duplicates += 1;
                                    }
                                    (tr.intended_us >= measure_start, Some(tr))
                                }
                                None if self.catch_up => (received_us >= measure_start, None),
                                None => continue,
                            };
                        consumed += 1;
                        bytes += v.len() as u64 + r.key.as_ref().map_or(0, |k| k.len() as u64);
                        if measured {
                            if let Some(tr) = sample_of {
                                let s = sample(tr.intended_us, tr.created_us, received_us);
                                self.result.end_to_end.record(s);
                                live_samples.push(s);
                            }
                            self.result.measured_consumed += 1;
                            self.result.measured_consumed_bytes += v.len() as u64;
                        }
                    }
                    if let Some(a) = after {
                        next = next.max(a);
                    }
                }
                self.partitions[slot].1 = next;
            }
        }
        if !live_samples.is_empty() {
            let mut live = self.shared.interval.lock().expect("not poisoned");
            for s in live_samples {
                live.end_to_end.record(s);
            }
        }
        self.result.consumed += consumed;
        self.result.consumed_bytes += bytes;
        let c = &self.shared.counters;
        c.consumed.fetch_add(consumed, Ordering::Relaxed);
        c.consumed_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub async fn run(mut self) -> Result<ConsumerResult> {
        let mut failures = 0;
        while !self.shared.stop_consumers.load(Ordering::Acquire) {
            match self.fetch_once().await {
                Ok((resp, at)) => {
                    failures = 0;
                    self.absorb(resp, at)?;
                }
                Err(e) => {
                    failures += 1;
                    self.result.fetch_errors += 1;
                    self.shared
                        .counters
                        .fetch_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared.count_error("fetch failed", 1);
                    if failures >= FETCH_FAILURES_MAX {
                        bail!("consumer giving up after {failures} failed fetches: {e:#}");
                    }
                    tokio::time::sleep(FETCH_ERROR_BACKOFF).await;
                    // The connection may be unusable after a timeout.
                    self.conn = Connection::connect(&self.conn.address.clone()).await?;
                }
            }
        }
        Ok(self.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_trailing_batch_is_dropped() {
        let mut blob = Vec::new();
        for len in [49u32, 60] {
            let mut b = vec![0u8; LOG_OVERHEAD + len as usize];
            b[8..12].copy_from_slice(&len.to_be_bytes());
            blob.extend_from_slice(&b);
        }
        let full = blob.len();
        blob.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 7]); // cut
        let batches = whole_batches(Bytes::from(blob));
        assert_eq!(batches.len(), 2);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), full);
    }

    #[test]
    fn bitset_counts_duplicates() {
        let mut r = ConsumerResult::default();
        assert!(r.mark(1, 0));
        assert!(r.mark(1, 1000));
        assert!(!r.mark(1, 1000));
        assert!(r.mark(2, 1000));
    }
}
