//! A shard's part in a cluster: the replicas of the replicated partitions it owns (each a Raft
//! group driven by its own task on this shard), its links to the other brokers, and on the
//! metadata shard the metadata replica's waiters.

use crate::replication::prefix::{PrefixChunk, PrefixSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::metadata::{METADATA_TOPIC_ID, MetaState, metadata_tp};
use super::rpc::Links;
use super::seeds::ClusterSpec;
use crate::config::Config;
use crate::constants::REPLICA_INBOX_MAX;
use crate::replication::driver::{Driver, Transport};
use crate::replication::store::RAFT_STATE_FILE;
use crate::replication::wire::GroupMessage;
use crate::replication::{ReplicaConfig, ReplicaError};
use crate::runtime::{self, Task};
use crate::storage::LogConfig;
use crate::storage::io::Env;
use crate::types::TopicPartition;

/// Sends a replica's Raft messages to the brokers of its group, tagged with its partition.
struct ReplicaTransport {
    links: Rc<Links>,
    topic_id: Uuid,
    partition: i32,
}

impl Transport for ReplicaTransport {
    fn send(&self, m: Message) {
        let to = m.to as i32;
        self.links.send(
            to,
            GroupMessage {
                topic_id: self.topic_id,
                partition: self.partition,
                message: m,
            },
        );
    }
}

struct Running {
    driver: Rc<Driver>,
    topic_id: Uuid,
    task: RefCell<Option<Task<Result<(), ReplicaError>>>>,
}

/// Longest a replica's driver gets to finish its round when it is stopped.
const DRIVER_STOP_BOUND: Duration = Duration::from_secs(5);

/// Stop a replica's driver and wait (bounded) for its task to end; a task still in its
/// round after [`DRIVER_STOP_BOUND`] (an I/O that does not complete) is cancelled, so a
/// stop never hangs on one replica.
async fn stop_driver(tp: &TopicPartition, running: &Running) {
    running.driver.stop();
    let task = running.task.borrow_mut().take();
    if let Some(task) = task
        && runtime::timeout(DRIVER_STOP_BOUND, task).await.is_none()
    {
        warn!(partition = %tp, "replica driver did not stop within {DRIVER_STOP_BOUND:?}: cancelled");
    }
}

/// What a shard of a clustered broker holds for replication.
pub struct ClusterShard {
    pub spec: ClusterSpec,
    pub links: Rc<Links>,
    pub meta: MetaState,
    tick: Duration,
    election_ticks: usize,
    /// How often leaders check for a hand-over to their preferred replica (None: never).
    leader_balance: Option<Duration>,
    /// `replica_lag_time_max_ms` in ticks.
    lag_time_max_ticks: u64,
    replicas: RefCell<HashMap<TopicPartition, Rc<Running>>>,
    by_id: RefCell<HashMap<(Uuid, i32), Rc<Running>>>,
    /// Brokers rejoining with a wiped data directory whose dropped votes were logged.
    rejoining_logged: RefCell<std::collections::BTreeSet<i32>>,
    /// Leaders of partitions this shard owns but holds no replica of, as their leaders'
    /// notices tell ([`spawn_leadership_notices`]): by (topic id, partition).
    heard: RefCell<HashMap<(Uuid, i32), Heard>>,
}

/// A leadership notice received: the leader, its epoch (Raft term), and when.
#[derive(Debug, Clone, Copy)]
struct Heard {
    leader: i32,
    epoch: i32,
    at: std::time::Instant,
}

/// How often a leader tells the brokers without a replica of its partition that it leads.
const NOTICE_INTERVAL: Duration = Duration::from_millis(500);
/// A notice older than this is forgotten (its leader stopped telling: gone or deposed).
const NOTICE_TTL: Duration = Duration::from_millis(2500);

/// Whether `m` is a leadership notice: a message of type `MsgUnreachable`, which raft-rs only
/// uses inside a node (never on the wire), from the leader (`from`) with its term (`term`).
/// It is never stepped into a Raft group.
fn is_notice(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgUnreachable
}

/// On every shard of a cluster member: every [`NOTICE_INTERVAL`], each replica this shard
/// leads (the metadata log's aside) sends a leadership notice to every registered broker
/// that holds no replica of its partition, so that broker can name the leader in Metadata
/// and FindCoordinator (with more brokers than replicas). Ends when the shard stops.
pub fn spawn_leadership_notices(shard: Rc<crate::shard::Shard>) {
    runtime::spawn_detached(async move {
        loop {
            runtime::sleep(NOTICE_INTERVAL).await;
            if shard.stopping.get() {
                return;
            }
            let Some(cluster) = shard.cluster() else {
                return;
            };
            let catalog = shard.catalog();
            let me = cluster.spec.node_id;
            for (tp, driver) in cluster.replicas() {
                let replica = driver.replica();
                if tp == metadata_tp() || !replica.is_leader() {
                    continue;
                }
                let Some(meta) = catalog.get(&tp.topic) else {
                    continue;
                };
                let holders = meta.replicas_of(tp.partition);
                for &to in catalog.brokers.keys() {
                    if to == me || holders.contains(&to) {
                        continue;
                    }
                    let mut m = Message::default();
                    m.set_msg_type(MessageType::MsgUnreachable);
                    m.from = me as u64;
                    m.to = to as u64;
                    m.term = replica.term();
                    cluster.links.send(
                        to,
                        GroupMessage {
                            topic_id: meta.id,
                            partition: tp.partition,
                            message: m,
                        },
                    );
                }
            }
        }
    });
}

/// One replica's leadership as this broker sees it.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub tp: TopicPartition,
    /// The leader's broker id, if known.
    pub leader: Option<i32>,
    /// The Raft term: the Kafka leader epoch.
    pub epoch: i32,
    /// On the leader: the replicas caught up with it (Raft's matched index at its last
    /// index, or recently active); elsewhere empty (unknown).
    pub in_sync: Vec<i32>,
}

impl ClusterShard {
    pub fn new(spec: ClusterSpec, config: &Config) -> Rc<ClusterShard> {
        let links = Links::start(&spec);
        Rc::new(ClusterShard {
            spec,
            links,
            meta: MetaState::default(),
            tick: Duration::from_millis(config.raft_tick_ms),
            election_ticks: config.raft_election_ticks,
            leader_balance: (config.leader_balance_interval_ms > 0)
                .then(|| Duration::from_millis(config.leader_balance_interval_ms)),
            lag_time_max_ticks: (config.replica_lag_time_max_ms / config.raft_tick_ms.max(1))
                .max(1),
            replicas: RefCell::new(HashMap::new()),
            by_id: RefCell::new(HashMap::new()),
            rejoining_logged: RefCell::new(std::collections::BTreeSet::new()),
            heard: RefCell::new(HashMap::new()),
        })
    }

    /// A vote message from `broker`, rejoining with a new data directory, was dropped.
    pub fn note_ignored_vote(&self, broker: i32) {
        if self.rejoining_logged.borrow_mut().insert(broker) {
            warn!(
                broker,
                "broker rejoins with a new data directory: its votes are ignored until it has caught up and registered again"
            );
        }
    }

    /// The partitions of this shard's replicas and whether each has caught up with its
    /// leader's commit index (see [`crate::replication::Replica::caught_up`]).
    pub fn caught_up(&self) -> Vec<(TopicPartition, bool)> {
        self.replicas
            .borrow()
            .iter()
            .map(|(tp, r)| (tp.clone(), r.driver.replica().caught_up()))
            .collect()
    }

    /// The running replica of `tp` on this shard.
    pub fn replica(&self, tp: &TopicPartition) -> Option<Rc<Driver>> {
        self.replicas.borrow().get(tp).map(|r| r.driver.clone())
    }

    /// Every replica on this shard, the metadata one included.
    pub fn replicas(&self) -> Vec<(TopicPartition, Rc<Driver>)> {
        self.replicas
            .borrow()
            .iter()
            .map(|(tp, r)| (tp.clone(), r.driver.clone()))
            .collect()
    }

    /// The topic id a running replica was opened with.
    pub fn topic_id_of(&self, tp: &TopicPartition) -> Option<Uuid> {
        self.replicas.borrow().get(tp).map(|r| r.topic_id)
    }

    /// Open (or create) this broker's replica of `tp`, a Raft group of `voters`, and start
    /// driving it. A partition directory that exists without its `raft-state` is refused
    /// ([`ReplicaError::StateLost`]): the replica existed and lost what Raft relies on.
    pub async fn open_replica(
        &self,
        data_dir: &std::path::Path,
        tp: &TopicPartition,
        topic_id: Uuid,
        voters: Vec<u64>,
        preferred_leader: Option<u64>,
        log_cfg: LogConfig,
    ) -> Result<(), ReplicaError> {
        if self.replicas.borrow().contains_key(tp) {
            return Ok(());
        }
        let dir = data_dir.join(tp.dir_name());
        let new_replica = !dir.join(RAFT_STATE_FILE).exists() && std::fs::read_dir(&dir).is_err();
        let mut cfg = ReplicaConfig::new(self.spec.node_id as u64, voters);
        cfg.new_replica = new_replica;
        cfg.preferred_leader = preferred_leader;
        cfg.election_tick = self.election_ticks;
        cfg.heartbeat_tick = (self.election_ticks / 5).max(1);
        cfg.lag_time_max_ticks = self.lag_time_max_ticks;
        let replica =
            crate::replication::Replica::open(Env::production(), dir, log_cfg, &cfg).await?;
        let driver = Driver::new(replica, REPLICA_INBOX_MAX);
        let transport = Rc::new(ReplicaTransport {
            links: self.links.clone(),
            topic_id,
            partition: tp.partition,
        });
        let name = tp.to_string();
        let run = driver
            .clone()
            .run(transport, self.tick, self.leader_balance);
        let task = runtime::spawn(async move {
            let out = run.await;
            if let Err(e) = &out {
                error!(partition = %name, error = %e, "replica failed: it takes part in nothing more until the broker restarts");
            }
            out
        });
        let running = Rc::new(Running {
            driver,
            topic_id,
            task: RefCell::new(Some(task)),
        });
        self.replicas
            .borrow_mut()
            .insert(tp.clone(), running.clone());
        self.by_id
            .borrow_mut()
            .insert((topic_id, tp.partition), running);
        info!(partition = %tp, new = new_replica, "replica opened");
        Ok(())
    }

    /// Stop driving `tp`'s replica and close it; with `delete`, remove its files too.
    pub async fn remove_replica(&self, tp: &TopicPartition, delete: bool) {
        let Some(running) = self.replicas.borrow_mut().remove(tp) else {
            return;
        };
        self.by_id
            .borrow_mut()
            .remove(&(running.topic_id, tp.partition));
        stop_driver(tp, &running).await;
        let replica = running.driver.replica().clone();
        if delete {
            if let Err(e) = replica.log().delete().await {
                warn!(partition = %tp, error = %e, "cannot delete the replica's files");
            }
            info!(partition = %tp, "replica deleted");
        } else if let Err(e) = replica.close().await {
            warn!(partition = %tp, error = %e, "replica close failed");
        }
    }

    /// Close every replica (a clean stop). Returns (closed, failed).
    pub async fn close_all(&self) -> (usize, usize) {
        let tps: Vec<TopicPartition> = self.replicas.borrow().keys().cloned().collect();
        let mut counts = (0, 0);
        for tp in tps {
            let running = self.replicas.borrow().get(&tp).cloned();
            let Some(running) = running else { continue };
            stop_driver(&tp, &running).await;
            match running.driver.replica().close().await {
                Ok(()) => counts.0 += 1,
                Err(e) => {
                    counts.1 += 1;
                    warn!(partition = %tp, error = %e, "replica close failed");
                }
            }
            self.replicas.borrow_mut().remove(&tp);
        }
        self.by_id.borrow_mut().clear();
        self.links.stop();
        counts
    }

    /// A peer's Raft message for one of this shard's replicas. A proposal forwarded to the
    /// metadata leader is proposed there; forwarded proposals for data partitions are refused
    /// (only a leader stamps offsets on a produce).
    pub fn deliver(&self, gm: GroupMessage, rejoining: Option<u64>) {
        if is_notice(&gm.message) {
            self.note_leader(gm.topic_id, gm.partition, &gm.message);
            return;
        }
        let running = self
            .by_id
            .borrow()
            .get(&(gm.topic_id, gm.partition))
            .cloned();
        let Some(running) = running else {
            debug!(topic_id = %gm.topic_id, partition = gm.partition, "raft message for a replica not open here: dropped");
            return;
        };
        // From a broker back with a wiped data directory (its new incarnation): a leader
        // forgets what it had acknowledged before.
        match rejoining {
            Some(incarnation) => running
                .driver
                .replica()
                .forget_rejoining_peer(gm.message.from, incarnation),
            None => running.driver.replica().peer_registered(gm.message.from),
        }
        if gm.message.get_msg_type() == MessageType::MsgPropose {
            if gm.topic_id == METADATA_TOPIC_ID {
                super::metadata::forwarded(&running.driver, gm.message);
            } else {
                warn!(topic_id = %gm.topic_id, from = gm.message.from, "forwarded proposal for a data partition refused");
            }
            return;
        }
        running.driver.deliver(gm.message);
    }

    /// Leadership of every replica on this shard.
    pub fn leadership(&self) -> Vec<Leadership> {
        self.replicas
            .borrow()
            .iter()
            .map(|(tp, r)| {
                let replica = r.driver.replica();
                Leadership {
                    tp: tp.clone(),
                    // A leader this shard cannot reach (its connection failed: the broker
                    // is likely gone) is not named: Metadata then waits briefly for the
                    // election and names the new leader, rather than sending clients to a
                    // dead broker, where their reconnect backoff grows with every try.
                    leader: replica
                        .leader()
                        .map(|l| l as i32)
                        .filter(|&l| self.nameable(l)),
                    epoch: replica.term() as i32,
                    in_sync: replica.in_sync().into_iter().map(|id| id as i32).collect(),
                }
            })
            .collect()
    }

    /// `tp`'s leader and epoch as [`ClusterShard::leadership`] reports them: from this
    /// shard's replica of it, else from a recent leadership notice (`topic_id` names the
    /// topic), if the leader is one this shard can reach.
    pub fn leader_of(&self, tp: &TopicPartition, topic_id: Uuid) -> Option<(i32, i32)> {
        let (leader, epoch) = match self.replica(tp) {
            Some(driver) => {
                let replica = driver.replica();
                (replica.leader()? as i32, replica.term() as i32)
            }
            None => {
                let h = self.fresh_notice(topic_id, tp.partition)?;
                (h.leader, h.epoch)
            }
        };
        self.nameable(leader).then_some((leader, epoch))
    }

    /// Whether broker `id` may be named as a leader: this broker, or one this shard's RPC
    /// link can reach.
    fn nameable(&self, id: i32) -> bool {
        id == self.spec.node_id || self.links.reachable(id)
    }

    /// A leadership notice for a partition: kept if it is at least as new (epoch) as the
    /// one held or that one is stale. Notices for partitions with a replica here are
    /// ignored (the replica knows better).
    fn note_leader(&self, topic_id: Uuid, partition: i32, m: &Message) {
        if self.by_id.borrow().contains_key(&(topic_id, partition)) {
            return;
        }
        let now = std::time::Instant::now();
        let notice = Heard {
            leader: m.from as i32,
            epoch: m.term as i32,
            at: now,
        };
        let mut heard = self.heard.borrow_mut();
        // Stale notices (readers skip them) go when a new partition is heard of, so the map
        // holds no more than the partitions with a live leader plus one; a refresh costs
        // one lookup.
        if !heard.contains_key(&(topic_id, partition)) {
            heard.retain(|_, h| now.duration_since(h.at) < NOTICE_TTL);
        }
        let keep = heard
            .get(&(topic_id, partition))
            .is_none_or(|h| notice.epoch >= h.epoch);
        if keep {
            heard.insert((topic_id, partition), notice);
        }
    }

    fn fresh_notice(&self, topic_id: Uuid, partition: i32) -> Option<Heard> {
        self.heard
            .borrow()
            .get(&(topic_id, partition))
            .copied()
            .filter(|h| h.at.elapsed() < NOTICE_TTL)
    }

    /// Leadership of the partitions of `catalog` this shard heard of through notices (it owns
    /// them and holds no replica): the leader (if reachable and heard from recently) and
    /// its epoch; in-sync replicas unknown.
    pub fn heard_leadership(&self, catalog: &super::catalog::Catalog) -> Vec<Leadership> {
        self.heard
            .borrow()
            .iter()
            .filter(|(_, h)| h.at.elapsed() < NOTICE_TTL)
            .filter_map(|((id, p), h)| {
                let name = catalog.name_of(id)?;
                Some(Leadership {
                    tp: TopicPartition::new(name.to_string(), *p),
                    leader: self.nameable(h.leader).then_some(h.leader),
                    epoch: h.epoch,
                    in_sync: Vec::new(),
                })
            })
            .collect()
    }

    /// The metadata group's leader, if this shard runs its replica and knows one.
    pub fn metadata_leader(&self) -> Option<i32> {
        self.replica(&metadata_tp())
            .and_then(|d| d.replica().leader())
            .map(|l| l as i32)
    }
}

/// How much one Fetch of a compacted prefix asks for.
const PREFIX_FETCH_BYTES: i32 = 8 << 20;
/// The Fetch version a replica copies a compacted prefix with (topic names, KIP-227 fields).
const PREFIX_FETCH_VERSION: i16 = 12;

/// A replica's [`PrefixSource`]: the partition's leader, asked with a Fetch (read
/// uncommitted, every batch as stored: data, control batches, markers) on its Kafka listener,
/// as any consumer reads it (see `replication::prefix`).
pub struct LeaderFetch {
    pub shard: std::rc::Weak<crate::shard::Shard>,
    pub tp: TopicPartition,
}

impl PrefixSource for LeaderFetch {
    fn fetch(
        &self,
        leader: Option<u64>,
        from: i64,
    ) -> futures::future::LocalBoxFuture<'static, Result<PrefixChunk, String>> {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
        use kafka_protocol::protocol::StrBytes;

        let addr = leader.and_then(|l| {
            let shard = self.shard.upgrade()?;
            let catalog = shard.catalog();
            let b = catalog.brokers.get(&i32::try_from(l).ok()?)?;
            Some(format!("{}:{}", b.host, b.port))
        });
        let tp = self.tp.clone();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| "no leader known".to_string())?;
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(PREFIX_FETCH_BYTES)
                .with_isolation_level(0)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(tp.partition)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(from)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(PREFIX_FETCH_BYTES),
                        ]),
                ]);
            let response = crate::cluster::remote::call(
                &addr,
                &request,
                PREFIX_FETCH_VERSION,
                "sluice-replica",
                crate::replication::prefix::PREFIX_FETCH_TIMEOUT,
                // The first batch comes whole whatever its size (KIP-74): up to the largest
                // request a broker takes.
                crate::constants::REQUEST_BYTES_MAX_DEFAULT.max(PREFIX_FETCH_BYTES as usize)
                    + (1 << 20),
            )
            .await
            .map_err(|e| format!("Fetch from {addr}: {e}"))?;
            if response.error_code != 0 {
                return Err(format!("Fetch from {addr}: error {}", response.error_code));
            }
            let p = response
                .responses
                .into_iter()
                .flat_map(|t| t.partitions)
                .find(|p| p.partition_index == tp.partition)
                .ok_or_else(|| format!("Fetch from {addr}: the partition is not in the answer"))?;
            match p.error_code {
                0 => Ok(PrefixChunk {
                    log_start: p.log_start_offset,
                    records: p.records.unwrap_or_default(),
                }),
                // OFFSET_OUT_OF_RANGE below the leader's log start: the copy goes on from it.
                1 if p.log_start_offset > from => Ok(PrefixChunk {
                    log_start: p.log_start_offset,
                    records: Default::default(),
                }),
                code => Err(format!("Fetch from {addr} at offset {from}: error {code}")),
            }
        })
    }
}
