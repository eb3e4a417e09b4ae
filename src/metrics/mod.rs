//! Broker metrics: recorded per shard without locks, merged and encoded on
//! scrape.
//!
//! # Recording
//! Each shard thread keeps its own [`ShardMetrics`] in a `thread_local!`:
//! plain `Cell<u64>` counters and fixed-bucket histograms, pre-sized (one
//! slot per Kafka API key, one per peer shard once [`init`] ran), so the hot
//! path is a few non-atomic adds: no lock, no atomic, no allocation. The
//! recording functions below are the only way in; they are cheap enough for
//! every request (see `benches/storage.rs`, `metrics_record`).
//!
//! # Scrape
//! Shard 0 serves `GET /metrics` on `metrics_listen` ([`http`]). It asks
//! every shard (`Shard::invoke_on_all`) for a [`ShardSnapshot`]: a plain
//! `Send` copy of its counters plus what it owns (partition sizes and high
//! watermarks, committed offsets of the groups it coordinates). The
//! snapshots are merged, consumer-group lag is joined across shards
//! (partition high watermark on its owner minus the committed offset on the
//! group's coordinator), and the result is encoded with the
//! `prometheus-client` crate as OpenMetrics text ([`exposition`]).
//!
//! Ownership: the thread-local belongs to the thread that records; only
//! that thread reads it (to take its snapshot).

pub mod exposition;
pub mod http;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::shard::Shard;

/// Slots for per-API counters, indexed by Kafka API key (0..=92 in
/// kafka-protocol 0.18). A key outside is not recorded.
pub const API_KEY_SLOTS: usize = 128;

/// Upper bounds of the latency buckets, in nanoseconds: 50 µs to 10 s in a
/// 1-2.5-5 series (plus +Inf).
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the size buckets, in bytes: 64 B to 64 MiB, powers of 4
/// (plus +Inf).
pub const SIZE_BOUNDS_BYTES: &[u64] = &[
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// Bucket slots of a [`Histogram`] (bounds plus the +Inf bucket fit).
pub const HISTOGRAM_BUCKETS_MAX: usize = 20;

const _: () = assert!(LATENCY_BOUNDS_NS.len() < HISTOGRAM_BUCKETS_MAX);
const _: () = assert!(SIZE_BOUNDS_BYTES.len() < HISTOGRAM_BUCKETS_MAX);

/// A fixed-bucket histogram of `u64` observations for one thread.
///
/// `counts[i]` counts observations `v` with `bounds[i-1] < v <= bounds[i]`
/// (not cumulative); `counts[bounds.len()]` is the +Inf bucket.
pub struct Histogram {
    bounds: &'static [u64],
    counts: [Cell<u64>; HISTOGRAM_BUCKETS_MAX],
    sum: Cell<u64>,
    count: Cell<u64>,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() < HISTOGRAM_BUCKETS_MAX);
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| Cell::new(0)),
            sum: Cell::new(0),
            count: Cell::new(0),
        }
    }

    /// Count one observation.
    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        bump(&self.counts[i], 1);
        bump(&self.sum, v);
        bump(&self.count, 1);
    }

    /// A copy for the scrape.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts[..=self.bounds.len()]
                .iter()
                .map(Cell::get)
                .collect(),
            sum: self.sum.get(),
            count: self.count.get(),
        }
    }
}

#[inline]
fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// A histogram's values at one moment; `counts` has `bounds.len() + 1`
/// entries, not cumulative, the last one +Inf.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    pub counts: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Default for HistogramSnapshot {
    /// Empty, with the latency buckets.
    fn default() -> Self {
        HistogramSnapshot {
            bounds: LATENCY_BOUNDS_NS,
            counts: vec![0; LATENCY_BOUNDS_NS.len() + 1],
            sum: 0,
            count: 0,
        }
    }
}

/// Cross-shard traffic towards (or from) one peer shard.
#[derive(Default)]
struct PeerCounters {
    /// Jobs this shard sent to the peer (`invoke_on`).
    sent: Cell<u64>,
    /// Jobs this shard received from the peer and started (`serve_peer`).
    received: Cell<u64>,
    /// Jobs sent to the peer whose reply this shard still awaits: the depth
    /// of its queue of work at that peer (a caller that stops waiting, e.g.
    /// a finished long-poll, stops counting its job).
    outstanding: Cell<u64>,
}

/// One shard's metrics; lives in a thread-local of the shard's thread.
pub struct ShardMetrics {
    /// Requests answered (or dropped for acks=0), by API key.
    requests: [Cell<u64>; API_KEY_SLOTS],
    /// From frame read to response encoded, by API key.
    request_latency: Vec<Histogram>,
    /// Connections closed because of bad input (framing, unknown API,
    /// undecodable request) or a failed handler.
    bad_input_closes: Cell<u64>,
    /// Shard journal: rounds written, entries in them, bytes written, files reused.
    journal_rounds: Cell<u64>,
    journal_entries: Cell<u64>,
    journal_bytes: Cell<u64>,
    journal_files_reused: Cell<u64>,
    /// Transactions this shard coordinates: committed, aborted (any reason), aborted by
    /// their timeout, markers written; open now and the oldest one's age (ms), as of the
    /// coordinator's last tick.
    txn_commits: Cell<u64>,
    txn_aborts: Cell<u64>,
    txn_timed_out: Cell<u64>,
    txn_markers: Cell<u64>,
    txn_open: Cell<u64>,
    txn_oldest_ms: Cell<u64>,
    /// Request frame bytes read, length prefix included.
    bytes_in: Cell<u64>,
    /// Response frame bytes written, length prefix included.
    bytes_out: Cell<u64>,
    /// Records bytes per partition in Produce requests.
    produce_partition_bytes: Histogram,
    /// Records bytes returned per partition by Fetch.
    fetch_partition_bytes: Histogram,
    /// Duration of each `fdatasync` of a segment.
    fsync_latency: Histogram,
    /// From a leader's proposal to its commit (fdatasynced on a majority).
    raft_commit_latency: Histogram,
    /// By peer shard index; sized by [`init`], empty before it.
    peers: RefCell<Vec<PeerCounters>>,
}

impl ShardMetrics {
    fn new() -> Self {
        ShardMetrics {
            requests: std::array::from_fn(|_| Cell::new(0)),
            request_latency: (0..API_KEY_SLOTS)
                .map(|_| Histogram::new(LATENCY_BOUNDS_NS))
                .collect(),
            bad_input_closes: Cell::new(0),
            journal_rounds: Cell::new(0),
            journal_entries: Cell::new(0),
            journal_bytes: Cell::new(0),
            journal_files_reused: Cell::new(0),
            txn_commits: Cell::new(0),
            txn_aborts: Cell::new(0),
            txn_timed_out: Cell::new(0),
            txn_markers: Cell::new(0),
            txn_open: Cell::new(0),
            txn_oldest_ms: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            produce_partition_bytes: Histogram::new(SIZE_BOUNDS_BYTES),
            fetch_partition_bytes: Histogram::new(SIZE_BOUNDS_BYTES),
            fsync_latency: Histogram::new(LATENCY_BOUNDS_NS),
            raft_commit_latency: Histogram::new(LATENCY_BOUNDS_NS),
            peers: RefCell::new(Vec::new()),
        }
    }
}

thread_local! {
    static METRICS: ShardMetrics = ShardMetrics::new();
}

/// Size the per-peer counters for `shards` shards. Called once per shard
/// thread at start (`Shard::new`), before any cross-shard traffic.
pub fn init(shards: usize) {
    METRICS.with(|m| {
        let mut peers = m.peers.borrow_mut();
        if peers.len() < shards {
            peers.resize_with(shards, PeerCounters::default);
        }
    });
}

/// Nanoseconds in `d`, saturating.
#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A request of API `api_key` was answered; `started` is when its frame had
/// been read.
#[inline]
pub fn request_done(api_key: i16, started: Instant) {
    let Ok(i) = usize::try_from(api_key) else {
        return;
    };
    if i >= API_KEY_SLOTS {
        return;
    }
    let elapsed = nanos(started.elapsed());
    METRICS.with(|m| {
        bump(&m.requests[i], 1);
        m.request_latency[i].observe(elapsed);
    });
}

/// A connection was closed for bad input or a failed handler.
#[inline]
pub fn bad_input_close() {
    METRICS.with(|m| bump(&m.bad_input_closes, 1));
}

/// The shard journal wrote a round of `entries` entries, `bytes` bytes (padded).
#[inline]
pub fn journal_round(entries: usize, bytes: usize) {
    METRICS.with(|m| {
        bump(&m.journal_rounds, 1);
        bump(&m.journal_entries, entries as u64);
        bump(&m.journal_bytes, bytes as u64);
    });
}

/// The shard journal reused a reclaimed file.
#[inline]
pub fn journal_file_reused() {
    METRICS.with(|m| bump(&m.journal_files_reused, 1));
}

/// A transaction completed (its markers are durable): committed or aborted.
pub fn txn_completed(committed: bool) {
    METRICS.with(|m| {
        if committed {
            bump(&m.txn_commits, 1)
        } else {
            bump(&m.txn_aborts, 1)
        }
    });
}

/// The coordinator aborted a transaction open longer than its timeout.
pub fn txn_timed_out() {
    METRICS.with(|m| bump(&m.txn_timed_out, 1));
}

/// `n` transaction markers were written.
pub fn txn_markers(n: u64) {
    METRICS.with(|m| bump(&m.txn_markers, n));
}

/// Transactions open on this shard's coordinator and the oldest one's age in ms.
pub fn txn_open((open, oldest_ms): (usize, i64)) {
    METRICS.with(|m| {
        m.txn_open.set(open as u64);
        m.txn_oldest_ms.set(oldest_ms.max(0) as u64);
    });
}

/// A request frame of `bytes` (length prefix included) was read.
#[inline]
pub fn bytes_in(bytes: usize) {
    METRICS.with(|m| bump(&m.bytes_in, bytes as u64));
}

/// A response frame of `bytes` (length prefix included) was written.
#[inline]
pub fn bytes_out(bytes: usize) {
    METRICS.with(|m| bump(&m.bytes_out, bytes as u64));
}

/// A Produce request carried `bytes` of records for one partition.
#[inline]
pub fn produce_partition_bytes(bytes: usize) {
    METRICS.with(|m| m.produce_partition_bytes.observe(bytes as u64));
}

/// A Fetch response returned `bytes` of records for one partition.
#[inline]
pub fn fetch_partition_bytes(bytes: usize) {
    METRICS.with(|m| m.fetch_partition_bytes.observe(bytes as u64));
}

/// A leader's proposal was committed `d` after it was made.
#[inline]
pub fn raft_commit_done(d: Duration) {
    METRICS.with(|m| m.raft_commit_latency.observe(nanos(d)));
}

/// One `fdatasync` took `d`.
#[inline]
pub fn fsync_done(d: Duration) {
    METRICS.with(|m| m.fsync_latency.observe(nanos(d)));
}

/// A job was sent to shard `target`; it stays outstanding until the
/// returned guard is dropped (reply received, or the send failed).
#[inline]
pub fn cross_shard_sent(target: usize) -> Outstanding {
    METRICS.with(|m| {
        if let Some(p) = m.peers.borrow().get(target) {
            bump(&p.sent, 1);
            bump(&p.outstanding, 1);
        }
    });
    Outstanding { target }
}

/// A job from shard `source` was received and started.
#[inline]
pub fn cross_shard_received(source: usize) {
    METRICS.with(|m| {
        if let Some(p) = m.peers.borrow().get(source) {
            bump(&p.received, 1);
        }
    });
}

/// Counts one job in the outstanding gauge of its target while it lives.
pub struct Outstanding {
    target: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        // `try_with`: a task holding a guard may be dropped while the
        // thread's locals are torn down at exit.
        let _ = METRICS.try_with(|m| {
            if let Some(p) = m.peers.borrow().get(self.target) {
                assert!(p.outstanding.get() > 0, "outstanding jobs never go below 0");
                p.outstanding.set(p.outstanding.get() - 1);
            }
        });
    }
}

/// One partition as its owner sees it.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    /// The log cleaner's state, for a compacted partition.
    pub cleaner: Option<CleanerSnapshot>,
}

/// The log cleaner's state of one compacted partition.
#[derive(Debug, Clone, Copy)]
pub struct CleanerSnapshot {
    /// Dirty share of the cleanable bytes (0 when nothing is cleanable).
    pub dirty_ratio: f64,
    /// Cleanable bytes past the checkpoint: the cleaner's backlog here.
    pub dirty_bytes: u64,
    /// Offsets below were cleaned.
    pub checkpoint: i64,
    pub status: crate::storage::log::CleanerStatus,
}

impl CleanerSnapshot {
    pub fn of(log: &crate::storage::PartitionLog) -> Option<Self> {
        if !log.cfg().compact {
            return None;
        }
        use crate::storage::io::Clock;
        let c = log.cleanable(crate::runtime::SystemClock.wall_ms());
        Some(CleanerSnapshot {
            dirty_ratio: c.map_or(0.0, |c| c.ratio),
            dirty_bytes: c.map_or(0, |c| c.dirty_bytes),
            checkpoint: log.cleaner_checkpoint().get(),
            status: log.cleaner_status(),
        })
    }
}

impl PartitionSnapshot {
    fn of(tp: crate::types::TopicPartition, log: &crate::storage::PartitionLog) -> Self {
        PartitionSnapshot {
            cleaner: CleanerSnapshot::of(log),
            size_bytes: log.size_bytes(),
            log_start_offset: log.log_start_offset().get(),
            high_watermark: log.high_watermark().get(),
            log_end_offset: log.log_end_offset().get(),
            topic: tp.topic,
            partition: tp.partition,
        }
    }
}

/// One committed offset, on the shard coordinating the group.
#[derive(Debug, Clone)]
pub struct CommittedSnapshot {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Cross-shard counters of one (shard, peer) pair.
#[derive(Debug, Clone, Default)]
pub struct PeerSnapshot {
    pub peer: usize,
    pub sent: u64,
    pub received: u64,
    pub outstanding: u64,
}

/// A shard's replication in a cluster (all zero on a one-node broker).
#[derive(Debug, Clone, Default)]
pub struct RaftSnapshot {
    /// Replicas on the shard (the metadata log's included), and those leading their group.
    pub replicas: u64,
    pub leaders: u64,
    /// Times the shard's replicas became leader, since they opened.
    pub leader_elections: u64,
    /// Over the groups the shard leads: entries the slowest follower does not have yet.
    pub follower_lag_entries: u64,
    /// Proposals deferred to the end of a ready cycle.
    pub deferred_proposals: u64,
    /// Raft messages sent to other brokers, and dropped (full queue, peer unreachable).
    pub rpc_sent: u64,
    pub rpc_dropped: u64,
    /// The highest Raft term (leader epoch) among the shard's replicas.
    pub term_max: u64,
    /// Bytes of entries the shard's leaders sent to followers.
    pub bytes_replicated: u64,
    /// Leadership hand-overs to preferred replicas.
    pub leadership_transfers: u64,
    /// Snapshots installed (a replica behind its leader's log base), and compactions of a
    /// replica's own Raft log (its base moved past removed segments).
    pub snapshots_installed: u64,
    pub log_compactions: u64,
    /// Per follower broker: over the groups the shard leads, the most entries it lacks.
    pub follower_lag: BTreeMap<u64, u64>,
    /// From a leader's proposal to its commit.
    pub commit_latency: HistogramSnapshot,
}

/// Everything one shard reports on a scrape: a plain `Send` value.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// (API key, requests, latency) for APIs with at least one request.
    pub requests: Vec<(i16, u64, HistogramSnapshot)>,
    pub bad_input_closes: u64,
    pub journal_rounds: u64,
    pub journal_entries: u64,
    pub journal_bytes: u64,
    pub journal_files_reused: u64,
    pub txn_commits: u64,
    pub txn_aborts: u64,
    pub txn_timed_out: u64,
    pub txn_markers: u64,
    pub txn_open: u64,
    pub txn_oldest_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub produce_partition_bytes: HistogramSnapshot,
    pub fetch_partition_bytes: HistogramSnapshot,
    pub fsync_latency: HistogramSnapshot,
    pub peers: Vec<PeerSnapshot>,
    pub connections: usize,
    pub requests_in_flight: usize,
    pub partitions: Vec<PartitionSnapshot>,
    pub committed: Vec<CommittedSnapshot>,
    pub raft: RaftSnapshot,
}

/// This thread's counters, with empty shard-owned parts (see [`snapshot`]).
pub fn local_snapshot(shard: usize) -> ShardSnapshot {
    METRICS.with(|m| ShardSnapshot {
        shard,
        requests: (0..API_KEY_SLOTS)
            .filter(|&i| m.requests[i].get() > 0)
            .map(|i| {
                (
                    i as i16,
                    m.requests[i].get(),
                    m.request_latency[i].snapshot(),
                )
            })
            .collect(),
        bad_input_closes: m.bad_input_closes.get(),
        journal_rounds: m.journal_rounds.get(),
        journal_entries: m.journal_entries.get(),
        journal_bytes: m.journal_bytes.get(),
        journal_files_reused: m.journal_files_reused.get(),
        txn_commits: m.txn_commits.get(),
        txn_aborts: m.txn_aborts.get(),
        txn_timed_out: m.txn_timed_out.get(),
        txn_markers: m.txn_markers.get(),
        txn_open: m.txn_open.get(),
        txn_oldest_ms: m.txn_oldest_ms.get(),
        bytes_in: m.bytes_in.get(),
        bytes_out: m.bytes_out.get(),
        produce_partition_bytes: m.produce_partition_bytes.snapshot(),
        fetch_partition_bytes: m.fetch_partition_bytes.snapshot(),
        fsync_latency: m.fsync_latency.snapshot(),
        peers: m
            .peers
            .borrow()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != shard)
            .map(|(peer, p)| PeerSnapshot {
                peer,
                sent: p.sent.get(),
                received: p.received.get(),
                outstanding: p.outstanding.get(),
            })
            .collect(),
        connections: 0,
        requests_in_flight: 0,
        partitions: Vec::new(),
        committed: Vec::new(),
        raft: RaftSnapshot {
            commit_latency: m.raft_commit_latency.snapshot(),
            ..RaftSnapshot::default()
        },
    })
}

/// The snapshot of `shard`, taken on its own thread: its counters, its
/// connections, the partitions it owns and the committed offsets of the
/// groups it coordinates.
pub fn snapshot(shard: &Rc<Shard>) -> ShardSnapshot {
    let mut s = local_snapshot(shard.id.0);
    s.connections = shard.connections.get();
    s.requests_in_flight = shard.in_flight.get();
    s.partitions = shard
        .owned_partitions()
        .into_iter()
        .map(|(tp, log)| PartitionSnapshot::of(tp, &log))
        .collect();
    if let Some(cluster) = shard.cluster() {
        for (tp, driver) in cluster.replicas() {
            let r = driver.replica();
            s.partitions.push(PartitionSnapshot::of(tp, r.log()));
            s.raft.replicas += 1;
            s.raft.leaders += u64::from(r.is_leader());
            s.raft.leader_elections += r.elections_won();
            s.raft.follower_lag_entries += r.follower_lag();
            s.raft.deferred_proposals += r.deferred_proposals();
            s.raft.term_max = s.raft.term_max.max(r.term());
            s.raft.bytes_replicated += r.bytes_replicated();
            s.raft.leadership_transfers += r.leadership_transfers();
            let (installed, compactions) = r.snapshot_counts();
            s.raft.snapshots_installed += installed;
            s.raft.log_compactions += compactions;
            for (peer, lag) in r.follower_lags() {
                let e = s.raft.follower_lag.entry(peer).or_insert(0);
                *e = (*e).max(lag);
            }
        }
        let (dropped, sent) = cluster.links.counts();
        s.raft.rpc_sent = sent;
        s.raft.rpc_dropped = dropped;
    }
    s.partitions
        .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for g in shard.groups.list() {
        for (topic, offsets) in shard.groups.fetch(&g.group_id, None) {
            for o in offsets.into_iter().filter(|o| o.offset >= 0) {
                s.committed.push(CommittedSnapshot {
                    group: g.group_id.clone(),
                    topic: topic.clone(),
                    partition: o.partition,
                    offset: o.offset,
                });
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound_inclusive() {
        let h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, u64::MAX / 4] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 2]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 10 + 11 + 100 + 101 + u64::MAX / 4);
    }

    #[test]
    fn requests_and_peers_are_recorded_on_this_thread() {
        // A fresh thread: its own thread-local.
        std::thread::spawn(|| {
            init(3);
            request_done(0, Instant::now());
            request_done(0, Instant::now());
            request_done(1, Instant::now());
            request_done(-1, Instant::now());
            request_done(API_KEY_SLOTS as i16, Instant::now());
            bytes_in(100);
            bytes_out(50);
            produce_partition_bytes(1000);
            fsync_done(Duration::from_millis(1));
            let guard = cross_shard_sent(2);
            cross_shard_received(1);
            let s = local_snapshot(0);
            let counts: Vec<(i16, u64)> = s.requests.iter().map(|r| (r.0, r.1)).collect();
            assert_eq!(counts, vec![(0, 2), (1, 1)]);
            assert_eq!(s.requests[0].2.count, 2);
            assert_eq!((s.bytes_in, s.bytes_out), (100, 50));
            assert_eq!(s.produce_partition_bytes.count, 1);
            assert_eq!(
                s.fsync_latency.counts[4], 1,
                "1 ms lands in the 1 ms bucket"
            );
            assert_eq!(s.peers.len(), 2, "no entry for the shard itself");
            assert_eq!((s.peers[1].sent, s.peers[1].outstanding), (1, 1));
            assert_eq!(s.peers[0].received, 1);
            drop(guard);
            assert_eq!(local_snapshot(0).peers[1].outstanding, 0);
        })
        .join()
        .unwrap();
    }
}
