//! A producer task: generates messages on schedule (or as fast as buffers
//! allow), accumulates them into one record batch per partition (closed at
//! `batch_size` or after `linger`), and pipelines Produce requests, up to
//! `max_in_flight` per broker connection, as the Java client does.
//!
//! Latency per message: from its intended send time (corrected) and from
//! its creation (uncorrected) to the arrival of the Produce response.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::client::{self, Connection};
use crate::latency::{LatencyPair, Schedule, sample};
use crate::payload::{KeyChooser, PayloadSource, Tracking};
use crate::shared::{PartitionRef, Shared};
use crate::workload::{Acks, Workload};

/// Per-record overhead counted toward `batch_size` (varint lengths,
/// attributes, deltas), as an estimate.
const RECORD_OVERHEAD_BYTES: usize = 16;
/// At max rate, messages generated between two looks at the socket.
const MAX_RATE_CHUNK: usize = 256;

/// What a producer reports at the end.
#[derive(Debug, Default)]
pub struct ProducerResult {
    pub id: u32,
    /// Latencies of measured messages.
    pub publish: LatencyPair,
    /// Messages created, total.
    pub sent: u64,
    /// Bitset of acknowledged sequence numbers.
    pub acked: Vec<u64>,
    pub acked_count: u64,
    /// Measured window: messages created in it and acknowledged, and bytes.
    pub measured_acked: u64,
    pub measured_acked_bytes: u64,
    pub errors: u64,
}

/// Bookkeeping for one message, kept until its response.
#[derive(Debug, Clone, Copy)]
struct Meta {
    sequence: u64,
    intended_us: u64,
    created_us: u64,
    bytes: u32,
}

#[derive(Debug, Default)]
struct Batch {
    records: Vec<Record>,
    metas: Vec<Meta>,
    bytes: usize,
    first_created_us: u64,
}

struct InFlight {
    correlation_id: i32,
    version: i16,
    batches: Vec<(usize, Batch)>,
    sent_us: u64,
}

struct BrokerLink {
    writer: OwnedWriteHalf,
    version: i16,
    next_correlation_id: i32,
    in_flight: VecDeque<InFlight>,
}

/// A producer's connections, opened before the run's clock starts.
pub struct Links {
    links: HashMap<i32, BrokerLink>,
    responses: mpsc::UnboundedReceiver<(i32, Result<Bytes>)>,
}

pub struct Producer {
    id: u32,
    shared: Arc<Shared>,
    workload: Workload,
    partitions: Arc<Vec<PartitionRef>>,
    /// (topic, partition) -> index into `partitions`.
    index: Arc<HashMap<(String, i32), usize>>,
    payloads: Arc<PayloadSource>,
    schedule: Schedule,
    keys: KeyChooser,
    /// Queue of batches per partition (the last one is open).
    accumulators: Vec<VecDeque<Batch>>,
    /// The partitions whose queue is not empty, each once: what the send loop and the
    /// deadline look at, so a loop turn costs what is buffered, not the partition count
    /// (scanning 1,024 partitions per message made the generator the bottleneck).
    nonempty: Vec<usize>,
    buffered_bytes: usize,
    links: HashMap<i32, BrokerLink>,
    responses: mpsc::UnboundedReceiver<(i32, Result<Bytes>)>,
    result: ProducerResult,
    sequence: u64,
    buf: BytesMut,
}

impl Producer {
    /// Open one connection per leader broker of `partitions`.
    pub async fn connect(
        partitions: &[PartitionRef],
        brokers: &HashMap<i32, String>,
    ) -> Result<Links> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut links = HashMap::new();
        let mut leaders: Vec<i32> = partitions.iter().map(|p| p.leader).collect();
        leaders.sort();
        leaders.dedup();
        for leader in leaders {
            let addr = brokers
                .get(&leader)
                .with_context(|| format!("no address for broker {leader}"))?;
            let conn = Connection::connect(addr).await?;
            let version = conn.versions.get(ApiKey::Produce)?;
            let mut reader = conn.reader;
            let tx = tx.clone();
            // The reader forwards raw frames; the producer decodes them,
            // knowing which request each answers (FIFO per connection).
            tokio::spawn(async move {
                loop {
                    let r = client::read_frame(&mut reader).await;
                    let failed = r.is_err();
                    if tx.send((leader, r)).is_err() || failed {
                        break;
                    }
                }
            });
            links.insert(
                leader,
                BrokerLink {
                    writer: conn.writer,
                    version,
                    next_correlation_id: 1,
                    in_flight: VecDeque::new(),
                },
            );
        }
        Ok(Links {
            links,
            responses: rx,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u32,
        shared: Arc<Shared>,
        workload: Workload,
        partitions: Arc<Vec<PartitionRef>>,
        index: Arc<HashMap<(String, i32), usize>>,
        links: Links,
        payloads: Arc<PayloadSource>,
        rate_per_producer: f64,
    ) -> Producer {
        let keys = KeyChooser::new(&workload, partitions.len(), id);
        Producer {
            id,
            schedule: Schedule {
                start_us: shared.start_us,
                rate: rate_per_producer,
                phase: f64::from(id) / f64::from(workload.producers.max(1)),
            },
            shared,
            accumulators: (0..partitions.len()).map(|_| VecDeque::new()).collect(),
            nonempty: Vec::new(),
            workload,
            partitions,
            index,
            payloads,
            keys,
            buffered_bytes: 0,
            links: links.links,
            responses: links.responses,
            result: ProducerResult {
                id,
                ..ProducerResult::default()
            },
            sequence: 0,
            buf: BytesMut::with_capacity(1 << 20),
        }
    }

    fn buffer_full(&self) -> bool {
        self.buffered_bytes >= self.workload.buffer_memory.0 as usize
    }

    /// Create message `self.sequence` intended at `intended_us`.
    fn generate(&mut self, intended_us: u64, now_us: u64) {
        let t = Tracking {
            run_id: self.shared.run_id,
            producer_id: self.id,
            sequence: self.sequence,
            intended_us,
            created_us: now_us.max(intended_us),
        };
        if self.buf.capacity() < 64 << 10 {
            self.buf.reserve(1 << 20);
        }
        let value = self.payloads.make(&t, &mut self.buf);
        let (key, p) = self.keys.next();
        let size = value.len() + key.as_ref().map_or(0, |k| k.len()) + RECORD_OVERHEAD_BYTES;
        let batch_size = self.workload.batch_size.0 as usize;
        let q = &mut self.accumulators[p];
        if q.is_empty() {
            self.nonempty.push(p);
        }
        let open = match q.back() {
            Some(b) => b.bytes + size <= batch_size || b.records.is_empty(),
            None => false,
        };
        if !open {
            q.push_back(Batch::default());
        }
        let b = q.back_mut().expect("pushed");
        let i = b.records.len() as i64;
        if b.records.is_empty() {
            b.first_created_us = t.created_us;
        }
        b.records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            // The encoder starts a new batch whenever offset - sequence
            // changes; sequence = offset - 1 keeps one batch and makes its
            // base sequence -1 (no idempotence).
            sequence: (i - 1) as i32,
            timestamp: (t.created_us / 1000) as i64,
            key,
            value: Some(value),
            headers: IndexMap::new(),
        });
        b.metas.push(Meta {
            sequence: t.sequence,
            intended_us,
            created_us: t.created_us,
            bytes: size as u32,
        });
        b.bytes += size;
        self.buffered_bytes += size;
        self.sequence += 1;
        self.result.sent += 1;
        self.shared.counters.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Is the first batch of partition `p` ready to send?
    fn ready(&self, p: usize, now_us: u64, flush: bool) -> bool {
        let q = &self.accumulators[p];
        match q.front() {
            None => false,
            Some(b) if b.records.is_empty() => false,
            Some(b) => {
                flush
                    || q.len() > 1
                    || b.bytes + RECORD_OVERHEAD_BYTES >= self.workload.batch_size.0 as usize
                    || now_us >= b.first_created_us + self.workload.linger.0.as_micros() as u64
            }
        }
    }

    /// Send one Produce request per broker that has ready batches and a
    /// free in-flight slot.
    async fn send_ready(&mut self, now_us: u64, flush: bool) -> Result<()> {
        let leaders: Vec<i32> = self.links.keys().copied().collect();
        for leader in leaders {
            if self.links[&leader].in_flight.len() >= self.workload.max_in_flight as usize {
                continue;
            }
            let mut ready: Vec<usize> = self
                .nonempty
                .iter()
                .copied()
                .filter(|&p| self.partitions[p].leader == leader && self.ready(p, now_us, flush))
                .collect();
            if ready.is_empty() {
                continue;
            }
            // In partition order, as a scan of all partitions would send them.
            ready.sort_unstable();
            let mut batches = Vec::with_capacity(ready.len());
            for p in ready {
                let b = self.accumulators[p].pop_front().expect("ready");
                self.buffered_bytes -= b.bytes;
                batches.push((p, b));
            }
            let accumulators = &self.accumulators;
            self.nonempty.retain(|&p| !accumulators[p].is_empty());
            self.send_request(leader, batches).await?;
        }
        Ok(())
    }

    async fn send_request(&mut self, leader: i32, batches: Vec<(usize, Batch)>) -> Result<()> {
        let opts = RecordEncodeOptions {
            version: 2,
            compression: self.workload.compression.wire(),
        };
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (p, b) in &batches {
            let part = &self.partitions[*p];
            let mut enc = BytesMut::with_capacity(b.bytes + 128);
            RecordBatchEncoder::encode(&mut enc, &b.records, &opts).context("encode batch")?;
            let data = PartitionProduceData::default()
                .with_index(part.partition)
                .with_records(Some(enc.freeze()));
            match topics.iter_mut().find(|t| t.name == part.topic) {
                Some(t) => t.partition_data.push(data),
                None => topics.push(
                    TopicProduceData::default()
                        .with_name(part.topic.clone())
                        .with_partition_data(vec![data]),
                ),
            }
        }
        let acks = self.workload.acks;
        let req = ProduceRequest::default()
            .with_acks(acks.wire())
            .with_timeout_ms(self.workload.request_timeout.0.as_millis() as i32)
            .with_topic_data(topics);
        let link = self.links.get_mut(&leader).expect("link");
        let cid = link.next_correlation_id;
        link.next_correlation_id = link.next_correlation_id.wrapping_add(1).max(1);
        let frame = client::encode_request(ApiKey::Produce, link.version, cid, &req)?;
        link.writer
            .write_all(&frame)
            .await
            .with_context(|| format!("write Produce to broker {leader}"))?;
        let now = self.shared.clock.now_us();
        if acks == Acks::None {
            // No response will come: the write is the acknowledgement.
            for (_, b) in batches {
                self.complete(b, now, None);
            }
        } else {
            link.in_flight.push_back(InFlight {
                correlation_id: cid,
                version: link.version,
                batches,
                sent_us: now,
            });
        }
        Ok(())
    }

    /// Account for a batch: acknowledged (error None) or failed.
    fn complete(&mut self, b: Batch, done_us: u64, error: Option<String>) {
        let n = b.metas.len() as u64;
        if let Some(e) = error {
            self.result.errors += n;
            self.shared
                .counters
                .produce_errors
                .fetch_add(n, Ordering::Relaxed);
            self.shared.count_error(&e, n);
            return;
        }
        let measure_start = self.shared.measure_start_us;
        let mut bytes = 0u64;
        let mut live = (self.workload.acks != Acks::None)
            .then(|| self.shared.interval.lock().expect("not poisoned"));
        for m in &b.metas {
            let word = (m.sequence / 64) as usize;
            if self.result.acked.len() <= word {
                self.result.acked.resize(word + 1 + word / 2, 0);
            }
            self.result.acked[word] |= 1 << (m.sequence % 64);
            bytes += u64::from(m.bytes);
            if m.intended_us >= measure_start {
                self.result.measured_acked += 1;
                self.result.measured_acked_bytes += u64::from(m.bytes);
                if let Some(live) = live.as_mut() {
                    let s = sample(m.intended_us, m.created_us, done_us);
                    self.result.publish.record(s);
                    live.publish.record(s);
                }
            }
        }
        drop(live);
        self.result.acked_count += n;
        let c = &self.shared.counters;
        c.acked.fetch_add(n, Ordering::Relaxed);
        c.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn handle_response(&mut self, leader: i32, frame: Result<Bytes>) -> Result<()> {
        let done = self.shared.clock.now_us();
        let link = self.links.get_mut(&leader).expect("link");
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let lost: Vec<InFlight> = link.in_flight.drain(..).collect();
                for f in lost {
                    for (_, b) in f.batches {
                        self.complete(b, done, Some("connection lost".into()));
                    }
                }
                bail!("producer {}: connection to broker {leader}: {e:#}", self.id);
            }
        };
        let Some(inflight) = link.in_flight.pop_front() else {
            bail!("response from broker {leader} with no request in flight");
        };
        let resp: ProduceResponse = client::decode_response(
            ApiKey::Produce,
            inflight.version,
            inflight.correlation_id,
            frame,
        )?;
        let mut codes: HashMap<usize, i16> = HashMap::new();
        for t in &resp.responses {
            for p in &t.partition_responses {
                if let Some(&i) = self.index.get(&(t.name.0.to_string(), p.index)) {
                    codes.insert(i, p.error_code);
                }
            }
        }
        for (p, b) in inflight.batches {
            match codes.get(&p) {
                Some(0) => self.complete(b, done, None),
                Some(code) => self.complete(b, done, Some(format!("produce error {code}"))),
                None => self.complete(b, done, Some("partition missing in response".into())),
            }
        }
        Ok(())
    }

    /// Fail every request older than the request timeout.
    fn expire(&mut self, now_us: u64) {
        let timeout = self.workload.request_timeout.0.as_micros() as u64;
        let leaders: Vec<i32> = self.links.keys().copied().collect();
        for leader in leaders {
            let link = self.links.get_mut(&leader).expect("link");
            if link
                .in_flight
                .front()
                .is_some_and(|f| now_us > f.sent_us + timeout)
            {
                // Responses come in order: the connection is unusable.
                let lost: Vec<InFlight> = link.in_flight.drain(..).collect();
                self.links.remove(&leader);
                for f in lost {
                    for (_, b) in f.batches {
                        self.complete(b, now_us, Some("request timed out".into()));
                    }
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.links.values().map(|l| l.in_flight.len()).sum()
    }

    /// Earliest time something is due: the next scheduled message, a linger
    /// deadline, a request timeout, or the end of production.
    fn next_due(&self, producing: bool) -> u64 {
        let mut due = u64::MAX;
        if producing {
            due = due.min(self.shared.end_us);
            if !self.buffer_full()
                && let Some(t) = self.schedule.intended_us(self.sequence)
            {
                due = due.min(t);
            }
        }
        let linger = self.workload.linger.0.as_micros() as u64;
        let max_in_flight = self.workload.max_in_flight as usize;
        for &p in &self.nonempty {
            let q = &self.accumulators[p];
            // A batch that cannot go out until a response frees a slot is
            // not due: the response wakes us (else this loop would spin).
            let blocked = self
                .links
                .get(&self.partitions[p].leader)
                .is_none_or(|l| l.in_flight.len() >= max_in_flight);
            if let Some(b) = q.front()
                && !b.records.is_empty()
                && !blocked
            {
                due = due.min(b.first_created_us + linger);
            }
        }
        let timeout = self.workload.request_timeout.0.as_micros() as u64;
        for l in self.links.values() {
            if let Some(f) = l.in_flight.front() {
                due = due.min(f.sent_us + timeout + 1);
            }
        }
        due
    }

    pub async fn run(mut self) -> Result<ProducerResult> {
        let slot = self.shared.pacer_slots[self.id as usize].clone();
        let end = self.shared.end_us;
        loop {
            let now = self.shared.clock.now_us();
            let producing = now < end && !self.links.is_empty();
            if producing {
                if self.schedule.rate > 0.0 {
                    while !self.buffer_full() {
                        let Some(t) = self.schedule.intended_us(self.sequence) else {
                            break;
                        };
                        if t > now || t >= end {
                            break;
                        }
                        self.generate(t, now);
                    }
                } else {
                    for _ in 0..MAX_RATE_CHUNK {
                        if self.buffer_full() {
                            break;
                        }
                        let now = self.shared.clock.now_us();
                        self.generate(now, now);
                    }
                }
            }
            let now = self.shared.clock.now_us();
            self.send_ready(now, !producing).await?;
            while let Ok((leader, frame)) = self.responses.try_recv() {
                self.handle_response(leader, frame)?;
            }
            self.expire(now);
            let pending = !self.nonempty.is_empty();
            if !producing && !pending && self.in_flight() == 0 {
                break;
            }
            if !producing && self.links.is_empty() {
                // Every connection timed out: fail what is left.
                for p in std::mem::take(&mut self.nonempty) {
                    while let Some(b) = self.accumulators[p].pop_front() {
                        self.complete(b, now, Some("no connection".into()));
                    }
                }
                break;
            }
            // At max rate keep generating while there is room, yielding so
            // the reader tasks and consumers get to run.
            let in_flight_full = self
                .links
                .values()
                .all(|l| l.in_flight.len() >= self.workload.max_in_flight as usize);
            if producing && self.schedule.rate == 0.0 && !self.buffer_full() && !in_flight_full {
                tokio::task::yield_now().await;
                continue;
            }
            let due = self.next_due(producing);
            if due <= self.shared.clock.now_us() {
                continue;
            }
            if due != u64::MAX {
                self.shared.wake_at(self.id as usize, due);
            }
            tokio::select! {
                r = self.responses.recv() => {
                    if let Some((leader, frame)) = r {
                        self.handle_response(leader, frame)?;
                    }
                }
                _ = slot.notify.notified() => {}
            }
        }
        Ok(self.result)
    }
}
