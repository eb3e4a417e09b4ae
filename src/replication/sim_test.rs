//! Deterministic simulation of one replicated partition: three replicas in one process, each on
//! its own simulated disk (`storage::sim`), over a seeded network that drops, delays, duplicates
//! and reorders messages and cuts one replica off, with crashes that lose every unsynced write.
//!
//! Checked, for every seed:
//! - at most one leader per term, over the whole run;
//! - after healing everything, the replicas converge: the same commit, high watermark and
//!   byte-identical logs below it;
//! - every acknowledged proposal is in that log exactly once, at the offsets it was
//!   acknowledged with, with the bytes it was proposed with (but for the base offset and
//!   epoch, which the leader stamps);
//! - leader epochs never go down along the log;
//! - a running replica's high watermark (what consumers may read) never goes back;
//! - idempotent producers (a third of the proposals, from three producers that retry a batch
//!   until it is acknowledged, and now and then send an acknowledged batch again): a batch is
//!   stored once, every acknowledgement of it names the same offsets, and each producer's
//!   sequences follow one another in the log;
//! - transactions: the first of those producers writes transactional batches, and the leader
//!   now and then proposes a COMMIT or ABORT marker for it (as WriteTxnMarkers does): every
//!   replica reports the same last stable offset and aborted transactions, and those of a
//!   replay of the agreed log (Kafka's rules, `ProducerStateTable`) when no prefix was
//!   deleted.
//!
//! The log's prefix goes too: the leader moves the log start now and then (DeleteRecords, a
//! Raft entry every replica applies) and replicas compact their Raft log below it or below a
//! segment base (retention), so a replica that was cut off or down catches up from a snapshot.
//! The checks then hold from the highest log start of the replicas on.
//!
//! Some proposals are made while the leader is inside its ready cycle (between raft-rs's
//! `ready` and `advance`, waiting for its fdatasync), as a produce arriving then is: they take
//! the replica's deferred path.
//!
//! `SLUICE_RAFT_SIM_SEEDS=N` runs N seeds (a soak); `SLUICE_RAFT_SIM_SEED=S` replays one. A
//! failing seed prints the command that replays it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::Message;

use super::prefix::{PrefixChunk, PrefixSource};
use super::replica::{Replica, ReplicaConfig};
use super::wire;
use crate::cluster::catalog::Catalog;
use crate::cluster::metadata::{self, MetaRecord};
use crate::storage::batch::{
    self,
    test_util::{encode_batch, encode_idempotent, encode_transactional},
};
use crate::storage::io::{Env, ManualClock, SyncScope};
use crate::storage::log::LogConfig;
use crate::storage::producer_state::{Marker, ProducerStateTable};
use crate::storage::sim::{Faults, SimDisk, SimRng};
use crate::types::Offset;

const NODES: u64 = 3;
const STEPS: u64 = 1_500;
const QUICK_SEEDS: u64 = 40;

fn log_cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 512,
        tail_cache_bytes: 2048,
        pending_bytes_max: 16384,
        ..LogConfig::default()
    }
}

/// Odd seeds keep no applied entry in memory: every catch-up reads the log. `new`: the first
/// open, which creates the replica.
fn replica_cfg(seed: u64, id: u64, new: bool) -> ReplicaConfig {
    ReplicaConfig {
        new_replica: new,
        randomized_timeout: false,
        applied_bytes_held: if seed % 2 == 1 { 0 } else { 2048 },
        max_bytes_per_message: 4096,
        max_inflight_messages: 8,
        ..ReplicaConfig::new(id, (1..=NODES).collect())
    }
}

struct Node {
    id: u64,
    disk: SimDisk,
    env: Env,
    replica: Option<Rc<Replica>>,
    /// Steps until a crashed node restarts.
    down_for: u64,
    /// The highest high watermark this incarnation showed consumers.
    hw: i64,
    /// Metadata seeds: where this node's applier is in its committed log, and the catalog it
    /// applied so far (replayed from the start after a restart, as a broker does).
    meta: (i64, Catalog),
}

struct InFlight {
    from: u64,
    to: u64,
    /// First step it may be delivered at.
    at: u64,
    /// The message as the broker-to-broker frame carries it (`wire`).
    frame: Bytes,
}

/// An acknowledged proposal: where it landed, and what was proposed.
#[derive(Debug, Clone)]
struct Acked {
    base: i64,
    last: i64,
    records: Bytes,
    /// (producer id, base sequence) of an idempotent batch.
    producer: Option<(i64, i32)>,
}

/// An idempotent producer: one batch in flight at a time, retried until acknowledged.
#[derive(Default)]
struct Producer {
    next_seq: Rc<Cell<i32>>,
    in_flight: Rc<Cell<bool>>,
    /// A batch that failed, to send again: (base sequence, records).
    retry: Rc<RefCell<Option<(i32, Bytes)>>>,
    /// The last acknowledged batch, sent again now and then (a late retry).
    last_acked: Rc<RefCell<Option<(i32, Bytes)>>>,
}

const PRODUCERS: i64 = 3;
/// The producer whose batches are transactional.
const TXN_PRODUCER: i64 = 0;
/// The simulated wall clock's start (ms since the epoch).
const CLOCK_START_MS: i64 = 1_700_000_000_000;

/// A batch to propose, and (producer id, base sequence) if it is idempotent.
type Proposal = (Bytes, Option<(i64, i32)>);

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    acked: u64,
    terms: u64,
    crashes: u64,
    log_reads: u64,
    /// Proposals that took the replica's deferred path (made inside a ready cycle).
    deferred: u64,
    /// Distinct idempotent batches acknowledged.
    idempotent: u64,
    /// Transaction markers committed, and aborted transactions the check compared.
    markers: u64,
    aborted_txns: u64,
    /// Snapshots installed, and compactions of a replica's own log.
    snapshots: u64,
    compactions: u64,
    /// Compacted prefixes copied from a leader (prefix seeds).
    prefixes: u64,
    /// Metadata seeds: records applied, and refused (another change came first).
    meta_applied: u64,
    meta_refused: u64,
}

struct Sim {
    seed: u64,
    rng: SimRng,
    clock: Rc<ManualClock>,
    nodes: Vec<Node>,
    net: Vec<InFlight>,
    isolated: Option<u64>,
    step: u64,
    drop_p: f64,
    dup_p: f64,
    acked: Rc<RefCell<Vec<Acked>>>,
    leaders: BTreeMap<u64, u64>,
    next_payload: i64,
    crashes: u64,
    log_reads: u64,
    producers: Vec<Producer>,
    /// Proposals made inside a leader's ready cycle.
    deferred_proposals: u64,
    /// Snapshots, compactions and prefix copies of replicas since crashed.
    snapshots: u64,
    compactions: u64,
    prefixes: u64,
    /// A quarter of the seeds keep a compacted prefix: a replica's Raft base moves up to its
    /// high watermark's segment while its segments below stay (as a compacted topic's do), so
    /// a replica behind a base copies that prefix from the leader ([`SimPrefixSource`]).
    prefix: bool,
    /// The running replicas by node (the prefix source reads the leader's log), and the node
    /// cut off, as the prefix source sees them.
    running: Rc<RefCell<Vec<Option<Rc<Replica>>>>>,
    cut: Rc<Cell<Option<u64>>>,
    /// A quarter of the seeds run the metadata group instead: every proposal is a catalog
    /// change (a producer-id block) made on top of a random node's applied catalog, as a
    /// broker forwards it to the leader; nodes apply the committed log with the brokers'
    /// rule ([`metadata::next_catalog`]). The log is never trimmed there.
    metadata: bool,
    /// Refusals an idempotent producer that retries in order must never get (a sequence gap,
    /// a stale epoch): (producer id, sequence, error).
    refused: Rc<RefCell<Vec<(i64, i32, String)>>>,
    /// Transaction markers acknowledged (committed).
    markers: Rc<Cell<u64>>,
}

/// One message in a frame of its own, as a broker would send it.
fn frame_of(msg: Message) -> Bytes {
    let mut b = wire::FrameBuilder::new(wire::Route {
        from: msg.from as u32,
        incarnation: 1,
        to: msg.to as u32,
        shard: 0,
    });
    let m = wire::GroupMessage {
        topic_id: uuid::Uuid::nil(),
        partition: 0,
        message: msg,
    };
    assert!(b.push(&m).expect("encode").is_none());
    b.finish().expect("a frame")
}

/// A prefix seed's [`PrefixSource`]: the hinted leader's log, read below its high watermark
/// as a Fetch reads it; unreachable while either side is cut off, and failing now and then
/// (a lost connection).
struct SimPrefixSource {
    me: u64,
    running: Rc<RefCell<Vec<Option<Rc<Replica>>>>>,
    cut: Rc<Cell<Option<u64>>>,
    rng: RefCell<SimRng>,
}

impl PrefixSource for SimPrefixSource {
    fn fetch(
        &self,
        leader: Option<u64>,
        from: i64,
    ) -> futures::future::LocalBoxFuture<'static, Result<PrefixChunk, String>> {
        let unreachable = leader
            .is_none_or(|l| self.cut.get().is_some_and(|c| c == l || c == self.me))
            || self.rng.borrow_mut().chance(0.1);
        let source = leader.and_then(|l| self.running.borrow()[(l - 1) as usize].clone());
        Box::pin(async move {
            if unreachable {
                return Err("unreachable".into());
            }
            let r = source.ok_or("the leader is down")?;
            let log = r.log().clone();
            let data = log
                .read(Offset(from.max(log.log_start_offset().0)), 1024)
                .await
                .map_err(|e| e.to_string())?;
            Ok(PrefixChunk {
                log_start: data.log_start_offset.0,
                records: data.records,
            })
        })
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/data/orders-0")
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let clock = Rc::new(ManualClock::new(CLOCK_START_MS));
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let disk = SimDisk::new(seed.wrapping_mul(31).wrapping_add(id), Faults::default());
            let env = Env::new(Rc::new(disk.clone()), clock.clone(), SyncScope::default());
            let replica =
                Replica::open(env.clone(), dir(), log_cfg(), &replica_cfg(seed, id, true))
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: open node {id}: {e}"));
            replica.set_yield_after_write(seed % 3 != 2);
            nodes.push(Node {
                id,
                disk,
                env,
                replica: Some(replica),
                down_for: 0,
                hw: 0,
                meta: (0, Catalog::default()),
            });
        }
        let mut rng = SimRng::new(seed);
        let drop_p = [0.0, 0.02, 0.1][rng.below(3) as usize];
        let dup_p = [0.0, 0.02, 0.05][rng.below(3) as usize];
        let sim = Sim {
            seed,
            rng,
            clock,
            nodes,
            net: Vec::new(),
            isolated: None,
            step: 0,
            drop_p,
            dup_p,
            acked: Rc::default(),
            leaders: BTreeMap::new(),
            next_payload: 0,
            crashes: 0,
            log_reads: 0,
            producers: (0..PRODUCERS).map(|_| Producer::default()).collect(),
            deferred_proposals: 0,
            snapshots: 0,
            compactions: 0,
            prefixes: 0,
            prefix: seed % 4 == 1,
            running: Rc::new(RefCell::new(vec![None; NODES as usize])),
            cut: Rc::default(),
            metadata: seed % 4 == 3,
            refused: Rc::default(),
            markers: Rc::default(),
        };
        for i in 0..sim.nodes.len() {
            let r = sim.nodes[i].replica.clone().expect("up");
            sim.register(i, &r);
        }
        sim
    }

    /// A replica (re)opened on node `i`: the prefix source knows it, and a prefix seed's
    /// replica copies from the others.
    fn register(&self, i: usize, r: &Rc<Replica>) {
        self.running.borrow_mut()[i] = Some(r.clone());
        if self.prefix {
            r.set_prefix_source(Some(Rc::new(SimPrefixSource {
                me: self.nodes[i].id,
                running: self.running.clone(),
                cut: self.cut.clone(),
                rng: RefCell::new(SimRng::new(
                    self.seed.wrapping_mul(7).wrapping_add(i as u64),
                )),
            })));
        }
    }

    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].replica.is_some())
            .collect()
    }

    fn cut_off(&self, a: u64, b: u64) -> bool {
        self.isolated.is_some_and(|i| i == a || i == b)
    }

    /// Run every up replica's ready work and put its messages on the network.
    async fn settle(&mut self) {
        for i in self.up() {
            let r = self.nodes[i].replica.clone().expect("up");
            // Now and then a produce arrives while the leader is inside its ready cycle.
            let during = if r.is_leader() && r.has_ready() && self.rng.chance(0.3) {
                self.next_proposal()
            } else {
                None
            };
            let ready = match during {
                Some(p) => {
                    // The proposal's future (not awaited here) is handed to `track`.
                    let mut proposed = None;
                    // Polled after `process_ready` first suspends (its write, or the
                    // simulation's yield after it).
                    let (ready, ()) = futures::join!(r.process_ready(), async {
                        proposed = Some(r.propose(p.0.clone()));
                    });
                    let fut = proposed.expect("proposed");
                    self.track(fut, p);
                    ready
                }
                None => r.process_ready().await,
            };
            if let Err(e) = ready {
                panic!("seed {}: node {}: {e}", self.seed, self.nodes[i].id);
            }
            if self.metadata {
                self.apply_metadata(i).await;
            }
            for msg in r.take_messages() {
                let (from, to) = (msg.from, msg.to);
                if self.cut_off(from, to) || self.rng.chance(self.drop_p) {
                    continue;
                }
                let frame = frame_of(msg);
                let copies = if self.rng.chance(self.dup_p) { 2 } else { 1 };
                for _ in 0..copies {
                    let at = self.step + self.rng.below(6);
                    self.net.push(InFlight {
                        from,
                        to,
                        at,
                        frame: frame.clone(),
                    });
                }
            }
            // What consumers see never goes back while the replica runs.
            let hw = r.log().high_watermark().0;
            assert!(
                hw >= self.nodes[i].hw,
                "seed {}: node {}'s high watermark went back from {} to {hw}",
                self.seed,
                self.nodes[i].id,
                self.nodes[i].hw
            );
            self.nodes[i].hw = hw;
            if r.is_leader() {
                let term = r.term();
                let id = self.nodes[i].id;
                let first = *self.leaders.entry(term).or_insert(id);
                assert_eq!(
                    first, id,
                    "seed {}: two leaders in term {term}: {first} and {id}",
                    self.seed
                );
            }
        }
    }

    /// Deliver one message that is due, chosen at random (the network reorders).
    fn deliver_one(&mut self) {
        let due: Vec<usize> = (0..self.net.len())
            .filter(|&i| self.net[i].at <= self.step)
            .collect();
        if due.is_empty() {
            return;
        }
        let m = self
            .net
            .swap_remove(due[self.rng.below(due.len() as u64) as usize]);
        if self.cut_off(m.from, m.to) {
            return;
        }
        if let Some(r) = &self.nodes[(m.to - 1) as usize].replica {
            let (route, mut ms) = wire::decode(&m.frame).expect("frames decode");
            assert_eq!((route.from, route.to), (m.from as u32, m.to as u32));
            r.step(ms.pop().expect("one message").message);
        }
    }

    fn propose(&mut self) {
        let Some(r) = self
            .up()
            .into_iter()
            .filter_map(|i| self.nodes[i].replica.clone())
            .find(|r| r.is_leader())
        else {
            return;
        };
        // Now and then the transactional producer's transaction ends: a COMMIT or ABORT
        // marker from the leader (a marker with nothing open closes nothing).
        if !self.metadata && self.rng.chance(0.04) {
            self.next_payload += 1;
            let marker = if self.rng.chance(0.5) {
                Marker::Commit
            } else {
                Marker::Abort
            };
            let fut = r.propose_marker(TXN_PRODUCER, 0, marker, 0, CLOCK_START_MS);
            let (markers, refused) = (self.markers.clone(), self.refused.clone());
            crate::runtime::spawn_detached(async move {
                match fut.await {
                    Ok(_) => markers.set(markers.get() + 1),
                    Err(e) if e.kafka_error_code() == 47 => {
                        refused
                            .borrow_mut()
                            .push((TXN_PRODUCER, -1, format!("marker: {e}")))
                    }
                    Err(_) => {}
                }
            });
            return;
        }
        let Some(p) = self.next_proposal() else {
            return;
        };
        let fut = r.propose(p.0.clone());
        self.track(fut, p);
    }

    /// The next batch to propose: a plain one, or one of an idempotent producer (its retry,
    /// a late copy of its last acknowledged batch, or its next batch). None when the chosen
    /// producer has a batch in flight.
    fn next_proposal(&mut self) -> Option<Proposal> {
        let count = 1 + self.rng.below(4) as usize;
        self.next_payload += 1;
        // Unique timestamps tell every new batch apart; retries keep their bytes.
        let ts = self.next_payload * 100;
        if self.metadata {
            return Some((self.metadata_proposal(ts), None));
        }
        if !self.rng.chance(0.33) {
            return Some((encode_batch(0, count, ts, 24), None));
        }
        let pid = self.rng.below(PRODUCERS as u64) as i64;
        let late = self.rng.chance(0.1);
        let prod = &self.producers[pid as usize];
        if prod.in_flight.get() {
            return None;
        }
        let (seq, records) = match prod.retry.borrow_mut().take() {
            Some(r) => r,
            None if late && prod.last_acked.borrow().is_some() => {
                prod.last_acked.borrow().clone().expect("checked")
            }
            None => {
                let seq = prod.next_seq.get();
                // Timestamps near the simulated clock: producer state expires by batch age.
                let encode = if pid == TXN_PRODUCER {
                    encode_transactional
                } else {
                    encode_idempotent
                };
                (seq, encode(pid, 0, seq, count, CLOCK_START_MS + ts))
            }
        };
        prod.in_flight.set(true);
        Some((records, Some((pid, seq))))
    }

    /// Record the proposal's acknowledgement when it comes; an idempotent producer retries a
    /// failed batch and moves on after an acknowledged one.
    fn track(
        &self,
        fut: impl std::future::Future<
            Output = Result<crate::storage::log::AppendInfo, super::ReplicaError>,
        > + 'static,
        (records, producer): Proposal,
    ) {
        let acked = self.acked.clone();
        let refused = self.refused.clone();
        let prod = producer.map(|(pid, _)| {
            let p = &self.producers[pid as usize];
            (
                p.next_seq.clone(),
                p.in_flight.clone(),
                p.retry.clone(),
                p.last_acked.clone(),
            )
        });
        crate::runtime::spawn_detached(async move {
            let out = fut.await;
            if let (Some((_, seq)), Some((next_seq, in_flight, retry, last_acked))) =
                (producer, &prod)
            {
                in_flight.set(false);
                match &out {
                    Ok(info) => {
                        let count = (info.last_offset.0 - info.base_offset.0 + 1) as i32;
                        if seq == next_seq.get() {
                            next_seq.set(seq + count);
                        }
                        *last_acked.borrow_mut() = Some((seq, records.clone()));
                    }
                    Err(e) => {
                        if matches!(e.kafka_error_code(), 45 | 47) {
                            let pid = producer.map_or(-1, |p| p.0);
                            refused.borrow_mut().push((pid, seq, e.to_string()));
                        }
                        *retry.borrow_mut() = Some((seq, records.clone()));
                    }
                }
            }
            if let Ok(info) = out {
                acked.borrow_mut().push(Acked {
                    base: info.base_offset.0,
                    last: info.last_offset.0,
                    records,
                    producer,
                });
            }
        });
    }

    /// A metadata record made on a random running node's applied catalog: the next
    /// producer-id block (the brokers' `Catalog::next_producer_id` change), as its batch
    /// (the brokers' record layout; the timestamp tells proposals apart).
    fn metadata_proposal(&mut self, ts: i64) -> Bytes {
        let up = self.up();
        let i = up[self.rng.below(up.len() as u64) as usize];
        let base = &self.nodes[i].meta.1;
        let mut next = base.snapshot();
        next.next_producer_id = base.next_producer_id + 1_000;
        let rec = MetaRecord {
            proposal: uuid::Uuid::from_u128((u128::from(self.seed) << 64) | ts as u128),
            from: self.nodes[i].id as i32,
            base_version: base.version,
            catalog: next,
        };
        let value = serde_json::to_vec(&rec).expect("a record encodes");
        let key = Bytes::copy_from_slice(rec.proposal.as_bytes());
        crate::group::records::encode_batches(&[(key, Some(value.into()))], ts, usize::MAX)
            .expect("a record batch")
    }

    /// Node `i` applies what its log committed since its last step, as a broker's applier.
    async fn apply_metadata(&mut self, i: usize) {
        let Some(r) = self.nodes[i].replica.clone() else {
            return;
        };
        let log = r.log();
        let hw = log.high_watermark().0;
        while self.nodes[i].meta.0 < hw {
            let at = self.nodes[i].meta.0;
            let data = log
                .read(crate::types::Offset(at), 1 << 20)
                .await
                .unwrap_or_else(|e| panic!("seed {}: read the metadata log: {e}", self.seed))
                .records;
            let mut next = at;
            for item in batch::BatchIter::new(&data) {
                let (_, h, _) = item.expect("stored batches parse");
                if h.base_offset >= hw {
                    break;
                }
                next = h.next_offset();
            }
            if next == at {
                break;
            }
            let node = &mut self.nodes[i];
            for (offset, rec) in metadata::decode(&data) {
                if offset >= at
                    && offset < next
                    && let Some(c) = metadata::next_catalog(&node.meta.1, &rec)
                {
                    node.meta.1 = c;
                }
            }
            node.meta.0 = next;
        }
    }

    /// The leader moves the log start somewhere between its start and its high watermark
    /// (DeleteRecords); the outcome is not awaited (a lost leadership fails it).
    fn delete_records(&mut self) {
        if self.metadata {
            return; // the metadata log is never trimmed
        }
        let Some(r) = self
            .up()
            .into_iter()
            .filter_map(|i| self.nodes[i].replica.clone())
            .find(|r| r.is_leader())
        else {
            return;
        };
        let log = r.log();
        let (start, hw) = (log.log_start_offset().0, log.high_watermark().0);
        if hw <= start {
            return;
        }
        let to = start + self.rng.below((hw - start) as u64 / 2 + 1) as i64;
        let fut = r.propose_log_start(crate::types::Offset(to));
        crate::runtime::spawn_detached(async move {
            let _ = fut.await;
        });
    }

    /// A replica compacts its Raft log: below its log start's segment (what the retention pass
    /// asks), or, now and then, below its last segment (retention by size or time, which
    /// moves this replica's log start on its own).
    fn compact(&mut self) {
        if self.metadata {
            return;
        }
        let up = self.up();
        let i = up[self.rng.below(up.len() as u64) as usize];
        let r = self.nodes[i].replica.clone().expect("up");
        let log = r.log();
        let at = if self.rng.chance(0.2) {
            log.high_watermark()
        } else {
            log.log_start_offset()
        };
        let at = log.segment_base_at(at);
        if self.prefix {
            // A compacted log: its sealed segments stay below the base.
            let keep = log.segment_base_at(log.log_start_offset());
            r.request_compaction(keep, log.segment_base_at(log.high_watermark()));
        } else {
            r.request_compaction(at, at);
        }
    }

    fn crash(&mut self) {
        let up = self.up();
        if up.len() < self.nodes.len() {
            return; // one down at a time: the others keep a majority
        }
        let i = up[self.rng.below(up.len() as u64) as usize];
        let node = &mut self.nodes[i];
        node.disk.crash();
        self.running.borrow_mut()[i] = None;
        if let Some(r) = node.replica.take() {
            self.log_reads += r.log_reads();
            self.deferred_proposals += r.deferred_proposals();
            let (s, c) = r.snapshot_counts();
            self.snapshots += s;
            self.compactions += c;
            self.prefixes += r.prefixes_copied();
        }
        node.down_for = 20 + self.rng.below(200);
        self.crashes += 1;
    }

    async fn restart_due(&mut self, all: bool) {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.replica.is_some() {
                continue;
            }
            node.down_for = node.down_for.saturating_sub(1);
            if node.down_for > 0 && !all {
                continue;
            }
            node.env = node.env.restarted();
            let r = Replica::open(
                node.env.clone(),
                dir(),
                log_cfg(),
                &replica_cfg(self.seed, node.id, false),
            )
            .await
            .unwrap_or_else(|e| panic!("seed {}: reopen node {}: {e}", self.seed, node.id));
            r.set_yield_after_write(self.seed % 3 != 2);
            node.hw = r.log().high_watermark().0;
            node.meta = (0, Catalog::default());
            node.replica = Some(r.clone());
            self.register(i, &r);
        }
    }

    async fn run(&mut self) {
        while self.step < STEPS {
            self.step += 1;
            match self.rng.below(100) {
                0..=44 => self.deliver_one(),
                45..=69 => {
                    let up = self.up();
                    let i = up[self.rng.below(up.len() as u64) as usize];
                    self.nodes[i].replica.as_ref().expect("up").tick();
                }
                70..=84 => self.propose(),
                85 => self.delete_records(),
                86 => self.compact(),
                87..=89 => {
                    self.isolated = match self.isolated {
                        Some(_) => None,
                        None => Some(1 + self.rng.below(NODES)),
                    };
                    self.cut.set(self.isolated);
                }
                90..=91 => self.crash(),
                _ => self
                    .clock
                    .advance(Duration::from_millis(self.rng.below(50))),
            }
            self.restart_due(false).await;
            self.settle().await;
            // Let the proposals' tasks record their acknowledgements.
            futures_lite::future::yield_now().await;
        }
    }

    /// Heal everything and run until the replicas agree on one leader and on everything being
    /// committed.
    async fn converge(&mut self) {
        self.isolated = None;
        self.cut.set(None);
        self.drop_p = 0.0;
        self.dup_p = 0.0;
        self.restart_due(true).await;
        for _ in 0..20_000 {
            self.step += 1;
            while self.net.iter().any(|m| m.at <= self.step) {
                self.deliver_one();
            }
            for n in &self.nodes {
                n.replica.as_ref().expect("up").tick();
            }
            self.settle().await;
            futures_lite::future::yield_now().await;
            let rs: Vec<Rc<Replica>> = self
                .nodes
                .iter()
                .map(|n| n.replica.clone().expect("up"))
                .collect();
            let Some(leader) = rs.iter().find(|r| r.is_leader()) else {
                continue;
            };
            let (lc, ll) = leader.commit_and_last_index();
            let agreed = lc == ll
                && rs.iter().all(|r| {
                    r.commit_and_last_index() == (lc, ll)
                        && r.applied_index() == lc
                        && r.leader() == Some(leader.id())
                });
            if agreed {
                return;
            }
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let r = n.replica.as_ref().expect("up");
                format!(
                    "node {}: term {} leader {:?} leading {} (commit, last) {:?}",
                    n.id,
                    r.term(),
                    r.leader(),
                    r.is_leader(),
                    r.commit_and_last_index()
                )
            })
            .collect();
        panic!(
            "seed {}: the replicas did not converge: {states:?}, {} messages in flight, {} acked",
            self.seed,
            self.net.len(),
            self.acked.borrow().len()
        );
    }

    /// The checks of the module docs.
    async fn check(&self) -> Stats {
        let seed = self.seed;
        // Replicas may start at different offsets (retention is each replica's own): they
        // are compared from the highest log start on.
        let from = self
            .nodes
            .iter()
            .map(|n| n.replica.as_ref().expect("up").log().log_start_offset().0)
            .max()
            .expect("nodes");
        let mut logs = Vec::new();
        for n in &self.nodes {
            let log = n.replica.as_ref().expect("up").log();
            let hw = log.high_watermark().0;
            logs.push((n.id, hw, super::committed_log_from(log, from).await));
        }
        let (_, hw0, ref log0) = logs[0];
        for (id, hw, log) in &logs[1..] {
            assert_eq!(*hw, hw0, "seed {seed}: node {id} high watermark");
            assert!(
                *log == log0,
                "seed {seed}: node {id}'s log differs from node 1's below the high watermark"
            );
        }
        let mut by_base = BTreeMap::new();
        let mut epoch = 0;
        for item in batch::BatchIter::new(log0) {
            let (pos, h, size) = item.expect("stored batches parse");
            assert!(
                h.partition_leader_epoch >= epoch,
                "seed {seed}: epoch went down at offset {}",
                h.base_offset
            );
            epoch = h.partition_leader_epoch;
            by_base.insert(h.base_offset, log0.slice(pos..pos + size));
        }
        let acked = self.acked.borrow().clone();
        let mut timestamps = BTreeSet::new();
        assert!(
            self.refused.borrow().is_empty(),
            "seed {seed}: an in-order idempotent producer was refused: {:?}",
            self.refused.borrow()
        );
        // Every acknowledgement of one idempotent batch names the same offsets.
        let mut idempotent: BTreeMap<(i64, i32), (i64, i64)> = BTreeMap::new();
        for a in acked.iter() {
            if let Some(key) = a.producer {
                let first = *idempotent.entry(key).or_insert((a.base, a.last));
                assert_eq!(
                    first,
                    (a.base, a.last),
                    "seed {seed}: producer {} sequence {} acknowledged at two places",
                    key.0,
                    key.1
                );
            }
        }
        let mut counted = BTreeSet::new();
        for a in acked.iter() {
            if a.producer.is_some() && !counted.insert(a.producer) {
                continue; // a retry acknowledged with the original's offsets, checked above
            }
            if a.last < from {
                continue; // deleted (DeleteRecords, retention)
            }
            let stored = by_base.get(&a.base).unwrap_or_else(|| {
                panic!(
                    "seed {seed}: acknowledged batch at {} is not in the log (high watermark {hw0})",
                    a.base
                )
            });
            let h = batch::BatchHeader::parse(stored).expect("parse");
            assert_eq!(
                h.last_offset(),
                a.last,
                "seed {seed}: offsets at {}",
                a.base
            );
            // Everything past the epoch is the producer's bytes (the CRC covers them).
            assert_eq!(
                stored[16..],
                a.records[16..],
                "seed {seed}: acknowledged batch at {} has other bytes",
                a.base
            );
            assert!(
                timestamps.insert(h.base_timestamp),
                "seed {seed}: a proposal acknowledged twice"
            );
        }
        // Each proposal is in the log at most once; an idempotent producer's sequences
        // follow one another.
        let mut seen: BTreeMap<i64, (i64, i32)> = BTreeMap::new();
        let mut next_seq: BTreeMap<i64, i32> = BTreeMap::new();
        for b in by_base.values() {
            let h = batch::BatchHeader::parse(b).expect("parse");
            if h.attributes & batch::ATTR_CONTROL == 0
                && let Some((at, epoch)) =
                    seen.insert(h.base_timestamp, (h.base_offset, h.partition_leader_epoch))
            {
                panic!(
                    "seed {seed}: a proposal stored twice (producer {}, sequence {}): at {at} \
                     (epoch {epoch}) and at {} (epoch {})",
                    h.producer_id, h.base_sequence, h.base_offset, h.partition_leader_epoch
                );
            }
            if h.producer_id >= 0 && h.attributes & batch::ATTR_CONTROL == 0 {
                // The first batch kept may follow deleted ones.
                let want = next_seq.entry(h.producer_id).or_insert(if from > 0 {
                    h.base_sequence
                } else {
                    0
                });
                assert_eq!(
                    h.base_sequence, *want,
                    "seed {seed}: producer {}'s sequence at offset {}",
                    h.producer_id, h.base_offset
                );
                *want = h.base_sequence + h.last_offset_delta + 1;
            }
        }
        // Transactions, against a replay of the agreed log from `from` with Kafka's rules
        // (`ProducerStateTable`): every replica lists the same aborted transactions that have
        // records at or past `from` (each from its first record there: a replica whose log
        // begins later, by a snapshot or its own retention, knows a transaction from the first
        // of its batches it holds), and its last stable offset is at most the replay's (it
        // never exposes a record of an open transaction), the same when nothing was deleted.
        let mut model = ProducerStateTable::default();
        for b in by_base.values() {
            let h = batch::BatchHeader::parse(b).expect("parse");
            model.replay(&h, b);
        }
        let model_lso = model.last_stable_offset(hw0).max(from);
        // (producer, its first record at or past `first`, marker), None without such a record.
        let normalize = |pid: i64, first: i64, last: i64| {
            by_base
                .range(first.max(from)..last)
                .find(|(_, b)| {
                    batch::BatchHeader::parse(b).is_ok_and(|h| {
                        h.producer_id == pid && h.attributes & batch::ATTR_CONTROL == 0
                    })
                })
                .map(|(at, _)| (pid, *at, last))
        };
        let model_aborted: Vec<(i64, i64, i64)> = model
            .aborted_between(from, model_lso)
            .iter()
            .filter_map(|a| normalize(a.producer_id, a.first_offset, a.last_offset))
            .collect();
        for n in &self.nodes {
            let log = n.replica.as_ref().expect("up").log();
            let lso = log.last_stable_offset().0.max(from);
            let read = log
                .read_chunks_committed(Offset(from), 1)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: node {} read_committed: {e}", n.id));
            let aborted: Vec<(i64, i64, i64)> = read
                .aborted
                .iter()
                .filter(|a| a.last_offset < lso)
                .filter_map(|a| normalize(a.producer_id, a.first_offset, a.last_offset))
                .collect();
            assert!(
                lso <= model_lso && (from > 0 || lso == model_lso),
                "seed {seed}: node {} last stable offset {lso}, a replay of the agreed log \
                 {model_lso} (compared from offset {from})",
                n.id
            );
            let model_below: Vec<_> = model_aborted
                .iter()
                .filter(|a| a.2 < lso)
                .copied()
                .collect();
            assert_eq!(
                aborted, model_below,
                "seed {seed}: node {}'s aborted transactions differ from a replay of the agreed \
                 log (compared from offset {from})",
                n.id
            );
        }
        let aborted_txns = model_aborted.len() as u64;
        // Metadata: replaying the agreed log with the brokers' rule, every applied record
        // follows the one before (so no producer-id block is handed out twice), every node's
        // applier reached the same catalog, and each proposal is in the log once.
        let (mut meta_applied, mut meta_refused) = (0, 0);
        if self.metadata {
            let mut catalog = Catalog::default();
            let mut proposals = BTreeSet::new();
            for (offset, rec) in metadata::decode(log0) {
                assert!(
                    proposals.insert(rec.proposal),
                    "seed {seed}: metadata proposal stored twice (offset {offset})"
                );
                match metadata::next_catalog(&catalog, &rec) {
                    Some(next) => {
                        assert_eq!(
                            next.next_producer_id,
                            catalog.next_producer_id + 1_000,
                            "seed {seed}: the record at {offset} does not follow the catalog \
                             it was applied to: a producer-id block handed out twice"
                        );
                        catalog = next;
                        meta_applied += 1;
                    }
                    None => meta_refused += 1,
                }
            }
            for n in &self.nodes {
                assert_eq!(
                    (n.meta.1.version, n.meta.1.next_producer_id),
                    (catalog.version, catalog.next_producer_id),
                    "seed {seed}: node {}'s applied catalog",
                    n.id
                );
            }
        }
        let live = || self.nodes.iter().filter_map(|n| n.replica.as_ref());
        let counts = live().map(|r| r.snapshot_counts());
        let (snapshots, compactions) = counts.fold((self.snapshots, self.compactions), |a, c| {
            (a.0 + c.0, a.1 + c.1)
        });
        let prefixes = self.prefixes + live().map(|r| r.prefixes_copied()).sum::<u64>();
        Stats {
            prefixes,
            meta_applied,
            meta_refused,
            snapshots,
            compactions,
            deferred: self.deferred_proposals + live().map(|r| r.deferred_proposals()).sum::<u64>(),
            idempotent: idempotent.len() as u64,
            markers: self.markers.get(),
            aborted_txns,
            acked: acked.len() as u64,
            terms: self.leaders.len() as u64,
            crashes: self.crashes,
            log_reads: self.log_reads
                + self
                    .nodes
                    .iter()
                    .filter_map(|n| n.replica.as_ref())
                    .map(|r| r.log_reads())
                    .sum::<u64>(),
        }
    }
}

fn run_seed(seed: u64) -> Stats {
    crate::runtime::block_on_test(move || async move {
        let mut sim = Sim::new(seed).await;
        sim.run().await;
        sim.converge().await;
        sim.check().await
    })
}

#[test]
fn replicas_agree_and_keep_every_acknowledged_write() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_RAFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SLUICE_RAFT_SIM_SEED")],
        Err(_) => {
            let n = std::env::var("SLUICE_RAFT_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(QUICK_SEEDS);
            (0..n).collect()
        }
    };
    let mut total = Stats::default();
    for seed in seeds {
        let r = std::panic::catch_unwind(|| run_seed(seed));
        match r {
            Ok(s) => {
                total.acked += s.acked;
                total.terms += s.terms;
                total.crashes += s.crashes;
                total.log_reads += s.log_reads;
                total.deferred += s.deferred;
                total.idempotent += s.idempotent;
                total.markers += s.markers;
                total.aborted_txns += s.aborted_txns;
                total.snapshots += s.snapshots;
                total.compactions += s.compactions;
                total.prefixes += s.prefixes;
                total.meta_applied += s.meta_applied;
                total.meta_refused += s.meta_refused;
            }
            Err(_) => panic!(
                "raft simulation failed at seed {seed}; replay it with: \
                 SLUICE_RAFT_SIM_SEED={seed} cargo test --release --lib \
                 replication::sim_test -- --nocapture"
            ),
        }
    }
    eprintln!(
        "raft simulation: {} acknowledged proposals ({} idempotent batches, {} transaction \
         markers, {} aborted transactions compared), {} deferred proposals, {} terms with a leader, {} crashes, {} catch-up reads of a log, {} \
         compactions, {} snapshots installed ({} with a compacted prefix copied), {} metadata \
         records applied and {} refused",
        total.acked,
        total.idempotent,
        total.markers,
        total.aborted_txns,
        total.deferred,
        total.terms,
        total.crashes,
        total.log_reads,
        total.compactions,
        total.snapshots,
        total.prefixes,
        total.meta_applied,
        total.meta_refused
    );
    assert!(
        total.acked > 0,
        "nothing was acknowledged: the run tested nothing"
    );
    assert!(total.crashes > 0 && total.terms > 1 && total.log_reads > 0);
    assert!(
        total.deferred > 0 && total.idempotent > 0,
        "the deferred and idempotent paths were exercised"
    );
    assert!(
        total.markers > 0 && total.aborted_txns > 0,
        "transactions were written, and some aborted"
    );
    assert!(
        total.compactions > 0 && total.snapshots > 0 && total.prefixes > 0,
        "compaction, snapshots and compacted prefixes were exercised"
    );
    assert!(
        total.meta_applied > 0 && total.meta_refused > 0,
        "metadata changes were applied, and conflicting ones refused"
    );
}

/// A simulated disk (of `seed`) holding one replica, created and closed, and its environment.
async fn created_replica(seed: u64) -> (SimDisk, Env) {
    let disk = SimDisk::new(seed, Faults::default());
    let clock = Rc::new(ManualClock::new(1_700_000_000_000));
    let env = Env::new(Rc::new(disk.clone()), clock, SyncScope::default());
    let r = Replica::open(env.clone(), dir(), log_cfg(), &replica_cfg(0, 1, true))
        .await
        .expect("create");
    r.close().await.expect("close");
    (disk, env)
}

/// A replica whose `raft-state` is gone (a wiped disk) is refused, unless it is being created:
/// Raft's votes rely on that file.
#[test]
fn a_replica_that_lost_its_raft_state_is_refused() {
    crate::runtime::block_on_test(|| async {
        let (disk, env) = created_replica(9).await;
        let env = env.restarted();
        let r = Replica::open(env.clone(), dir(), log_cfg(), &replica_cfg(0, 1, false))
            .await
            .expect("reopen with its state");
        r.close().await.expect("close");
        drop(r);
        use crate::storage::io::Disk as _;
        disk.remove_file(&dir().join(super::store::RAFT_STATE_FILE))
            .await
            .expect("wipe raft-state");
        let env = env.restarted();
        match Replica::open(env, dir(), log_cfg(), &replica_cfg(0, 1, false)).await {
            Err(super::ReplicaError::StateLost(_)) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a replica without raft-state opened as a voter"),
        }
    });
}

/// `raft-state` may name a commit beyond the log a crash left (it is written while entries
/// still wait for their fdatasync): the replica opens with the commit clamped to its log,
/// rather than raft-rs refusing the state.
#[test]
fn a_commit_beyond_the_log_is_clamped_at_open() {
    crate::runtime::block_on_test(|| async {
        let (_, env) = created_replica(11).await;
        let state = super::store::RaftStateFile {
            term: 3,
            vote: 2,
            commit: 20,
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        env.replace_file_durable(
            &dir().join(super::store::RAFT_STATE_FILE),
            &serde_json::to_vec(&state).expect("json"),
        )
        .await
        .expect("write raft-state");
        let env = env.restarted();
        let r = Replica::open(env, dir(), log_cfg(), &replica_cfg(0, 1, false))
            .await
            .expect("opens with the commit clamped");
        assert_eq!(r.commit_and_last_index(), (0, 0));
        assert_eq!(r.term(), 3);
        r.close().await.expect("close");
    });
}
