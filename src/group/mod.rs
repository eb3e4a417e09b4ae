//! The group coordinator: consumer groups (the classic rebalance protocol)
//! and their committed offsets.
//!
//! # Ownership
//! Group `g` lives in partition `fnv1a(g) % P` of the internal topic
//! `__consumer_offsets` (P partitions, `offsets_topic_partitions` when the
//! topic was created; the catalog's count is used afterwards), and is
//! coordinated by the shard that owns that partition
//! ([`TopicPartition::owner`]). Every handler forwards its group work there
//! with `invoke_on`, so the group's state has a single owner and its offset
//! writes are local appends.
//!
//! # Durability
//! - Committed offsets are records in `__consumer_offsets` (Kafka's layout,
//!   see [`records`]). An OffsetCommit is answered after its records are
//!   durable (`wait_durable`), then the in-memory map is updated. DeleteGroups
//!   and OffsetDelete write tombstones the same way.
//! - Order: a group's writes are appended in the order they reached the
//!   coordinator ([`write_order`]), and the map keeps, per key, the value of
//!   the record with the highest log offset, so the last commit sent wins.
//! - At startup each shard replays its partitions of the topic from log start
//!   to high watermark ([`GroupCoordinator::load`]) before the broker listens.
//! - Membership (members, generation, assignments) is in memory only: after
//!   a restart members get UNKNOWN_MEMBER_ID and rejoin. A group with only
//!   offsets is an Empty group.
//!
//! # Time
//! Each shard runs one ticker ([`spawn_ticker`], every `GROUP_TICK_MS`) that
//! expires sessions and completes rebalances whose deadline passed; work per
//! tick is bounded by the groups on the shard (`GROUPS_PER_SHARD_MAX`).
//!
//! # Modules
//! - [`state`]: one group and the rebalance state machine (synchronous).
//! - [`records`]: the key/value codec of `__consumer_offsets`.
//! - [`write_order`]: the order of one group's offset writes (commits
//!   shared and pipelined, tombstones and compaction exclusive).

pub mod records;
pub mod state;
pub mod write_order;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::ResponseError;
use kafka_protocol::records::RecordBatchDecoder;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::constants::{
    GROUP_TICK_MS, GROUPS_PER_SHARD_MAX, OFFSETS_BATCH_BYTES_MAX, OFFSETS_PER_GROUP_MAX,
    OFFSETS_TOPIC, OFFSETS_TOPIC_MESSAGE_BYTES_MAX,
};
use crate::runtime;
use crate::runtime::SystemClock;
use crate::shard::{Shard, ShardError};
use crate::storage::io::Clock;
use crate::storage::{PartitionLog, StorageError};
use crate::types::{Offset, ShardId, TopicPartition};

use self::records::{OffsetKey, OffsetValue, RecordKey};
use self::state::{
    CommittedOffset, Group, GroupSettings, GroupState, JoinOutcome, JoinRequest, MemberSummary,
    Reply, SyncOutcome, SyncRequest,
};
use self::write_order::Mode;

/// At startup, before any shard runs: add `__consumer_offsets` to the
/// catalog if missing (`offsets_topic_partitions` partitions, compacted,
/// `offsets_topic_segment_bytes` segments, a batch limit that fits the
/// largest commit batch) and persist the catalog.
pub fn ensure_offsets_topic(
    catalog: &mut crate::cluster::catalog::Catalog,
    config: &Config,
) -> Result<(), crate::cluster::catalog::CatalogError> {
    if !add_offsets_topic(catalog, config, Vec::new()) {
        return Ok(());
    }
    catalog.save(&config.data_dir)?;
    info!(
        partitions = config.offsets_topic_partitions,
        "created internal topic {OFFSETS_TOPIC}"
    );
    Ok(())
}

/// Add `__consumer_offsets` to `catalog` unless it is there; true if it was added.
/// `replicas`: each partition's replicas in a cluster (a Raft group each), empty on a
/// one-node broker (local partitions).
pub fn add_offsets_topic(
    catalog: &mut crate::cluster::catalog::Catalog,
    config: &Config,
    replicas: Vec<Vec<i32>>,
) -> bool {
    if catalog.get(OFFSETS_TOPIC).is_some() {
        return false;
    }
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    // Kafka's offsets.topic.segment.bytes: small enough segments for the
    // log cleaner to compact the topic soon (`shard::cleaner`).
    configs.insert(
        "segment.bytes".to_string(),
        config.offsets_topic_segment_bytes.to_string(),
    );
    configs.insert(
        "max.message.bytes".to_string(),
        OFFSETS_TOPIC_MESSAGE_BYTES_MAX.to_string(),
    );
    catalog.insert(crate::cluster::catalog::TopicMeta {
        name: OFFSETS_TOPIC.to_string(),
        id: uuid::Uuid::new_v4(),
        partitions: config.offsets_topic_partitions,
        configs,
        replicas,
    });
    true
}

/// The `__consumer_offsets` partition of `group_id` among `partitions`
/// (FNV-1a, stable across restarts and builds).
pub fn offsets_partition(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions as u64) as i32
}

/// The `__consumer_offsets` partition holding `group_id`, or None if the
/// topic does not exist (deleted by a client).
pub fn offsets_tp(shard: &Shard, group_id: &str) -> Option<TopicPartition> {
    let partitions = shard.catalog().get(OFFSETS_TOPIC)?.partitions;
    Some(TopicPartition::new(
        OFFSETS_TOPIC,
        offsets_partition(group_id, partitions),
    ))
}

/// The shard coordinating `group_id`.
pub fn coordinator_of(shard: &Shard, group_id: &str) -> Option<ShardId> {
    offsets_tp(shard, group_id).map(|tp| shard.owner_of(&tp))
}

/// Run `f` on the shard coordinating `group_id` and return its result here, if that shard
/// coordinates the group now ([`GroupCoordinator::coordinating`], checked on that shard just
/// before `f` runs). `Ok(Err(e))`: COORDINATOR_NOT_AVAILABLE (no `__consumer_offsets`),
/// NOT_COORDINATOR (another broker leads the group's partition) or
/// COORDINATOR_LOAD_IN_PROGRESS (this broker just became its leader and is reading it).
pub async fn on_coordinator<T, F, Fut>(
    shard: &Shard,
    group_id: &str,
    f: F,
) -> Result<Result<T, ResponseError>, ShardError>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let Some(target) = coordinator_of(shard, group_id) else {
        return Ok(Err(ResponseError::CoordinatorNotAvailable));
    };
    let gid = group_id.to_string();
    shard
        .invoke_on(target, move |s| async move {
            match s.groups.coordinating(&s, &gid) {
                Ok(_) => Ok(f(s).await),
                Err(e) => Err(e),
            }
        })
        .await
}

/// One partition's commit.
#[derive(Debug, Clone)]
pub struct CommitPartition {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// An OffsetCommit, decoded (topics already checked against the catalog).
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation: i32,
    pub topics: Vec<(String, Vec<CommitPartition>)>,
}

/// Per topic, per partition: an error code.
pub type PartitionErrors = Vec<(String, Vec<(i32, i16)>)>;

/// An offset committed inside a transaction, waiting for its marker: (group, (topic,
/// partition), the offset with the log offset of its record).
type PendingOffset = (String, (String, i32), CommittedOffset);

/// A TxnOffsetCommit, decoded (topics already checked against the catalog).
#[derive(Debug, Clone)]
pub struct TxnCommitRequest {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// -1 (and an empty member id) from clients before KIP-447: no membership check.
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub topics: Vec<(String, Vec<CommitPartition>)>,
}

/// One partition's committed offset as OffsetFetch reports it (-1 if none).
#[derive(Debug, Clone)]
pub struct FetchedOffset {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// UNSTABLE_OFFSET_COMMIT when the caller asked for stable offsets and a transaction
    /// holds an undecided commit of this partition (KIP-447), else 0.
    pub error_code: i16,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// GROUP_ID_NOT_FOUND (or NOT_COORDINATOR) for unknown groups.
    pub error: i16,
    pub state: &'static str,
    pub protocol_type: String,
    /// The selected protocol when Stable, else empty.
    pub protocol_data: String,
    pub members: Vec<MemberSummary>,
}

/// The `__consumer_offsets` record (key, value) saying that `group` committed
/// `committed` for `topic`/`partition`.
fn offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    committed: &CommittedOffset,
) -> Result<(Bytes, Option<Bytes>), records::RecordError> {
    let key = records::encode_key(&OffsetKey {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    })?;
    let value = records::encode_value(&OffsetValue {
        offset: committed.offset,
        leader_epoch: committed.leader_epoch,
        metadata: committed.metadata.clone(),
        commit_timestamp_ms: committed.commit_timestamp_ms,
    })?;
    Ok((key, Some(value)))
}

/// A write to `__consumer_offsets` failed: the code OffsetCommit reports
/// (Kafka's mapping of storage errors).
fn commit_error(e: &StorageError) -> i16 {
    match e {
        // Retriable: the client finds the coordinator again and retries.
        StorageError::Io { .. }
        | StorageError::Closed
        | StorageError::DiskFull(_)
        | StorageError::Truncated { .. } => ResponseError::NotCoordinator.code(),
        StorageError::BatchTooLarge { .. } => ResponseError::InvalidCommitOffsetSize.code(),
        _ => ResponseError::UnknownServerError.code(),
    }
}

/// Where this shard stands with a replicated `__consumer_offsets` (or `__transaction_state`)
/// partition whose replica leads: the Raft term (leader epoch) it leads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coordinating {
    /// Reading the partition's log into the groups' offsets: requests for its groups get
    /// COORDINATOR_LOAD_IN_PROGRESS.
    Loading(u64),
    /// Every committed offset of the partition is in memory: its groups are served.
    Serving(u64),
}

impl Coordinating {
    pub(crate) fn term(self) -> u64 {
        match self {
            Coordinating::Loading(t) | Coordinating::Serving(t) => t,
        }
    }
}

/// A replicated write to `__consumer_offsets` failed: the code OffsetCommit reports. All
/// but a storage error are retriable: the client finds the coordinator again and retries.
fn replica_commit_error(e: &crate::replication::ReplicaError) -> i16 {
    use crate::replication::ReplicaError;
    match e {
        ReplicaError::Storage(e) => commit_error(e),
        ReplicaError::Backpressure | ReplicaError::DuplicateInFlight => {
            ResponseError::RequestTimedOut.code()
        }
        _ => ResponseError::NotCoordinator.code(),
    }
}

/// The per-shard coordinator state: the groups this shard owns.
///
/// Contract: used on its own shard only; no `RefCell` borrow is held across
/// an `.await`.
pub struct GroupCoordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// In a cluster: the replicated `__consumer_offsets` partitions this shard coordinates
    /// (its replica leads them), by partition ([`GroupCoordinator::follow_leadership`]).
    leading: RefCell<HashMap<i32, Coordinating>>,
    settings: GroupSettings,
    /// Transactional offset commits (TxnOffsetCommit) whose transaction is not decided yet,
    /// by (`__consumer_offsets` partition, producer id): applied by the COMMIT marker,
    /// dropped by the ABORT marker ([`GroupCoordinator::complete_txn`]).
    pending_txn: RefCell<HashMap<(i32, i64), Vec<PendingOffset>>>,
    /// Time for offset writes (commit timestamps, batch timestamps) and
    /// commit checks (`storage::io::Clock`, the system clock in production).
    clock: Rc<dyn Clock>,
}

impl GroupCoordinator {
    pub fn new(config: &Config) -> Self {
        GroupCoordinator {
            groups: RefCell::new(HashMap::new()),
            leading: RefCell::new(HashMap::new()),
            pending_txn: RefCell::new(HashMap::new()),
            settings: GroupSettings {
                initial_rebalance_delay: Duration::from_millis(
                    config.group_initial_rebalance_delay_ms,
                ),
            },
            clock: Rc::new(SystemClock),
        }
    }

    /// Number of groups on this shard (members or offsets).
    pub fn group_count(&self) -> usize {
        self.groups.borrow().len()
    }

    /// Run `f` on the group, creating it if `create` and there is room.
    /// None: unknown (or no room).
    fn with_group<T>(
        &self,
        group_id: &str,
        create: bool,
        f: impl FnOnce(&mut Group) -> T,
    ) -> Option<T> {
        let mut groups = self.groups.borrow_mut();
        if !groups.contains_key(group_id) {
            if !create || groups.len() >= GROUPS_PER_SHARD_MAX {
                return None;
            }
            groups.insert(group_id.to_string(), Group::new(group_id.to_string()));
        }
        groups.get_mut(group_id).map(f)
    }

    /// JoinGroup; waits until the generation forms.
    pub async fn join(&self, group_id: &str, req: JoinRequest) -> JoinOutcome {
        let member_id = req.member_id.clone();
        let now = Instant::now();
        let settings = self.settings.clone();
        // A known member id names a group that must exist.
        let create = req.member_id.is_empty();
        let reply = self.with_group(group_id, create, |g| g.join(req, now, &settings));
        let reply = match reply {
            Some(r) => r,
            None if create => {
                return JoinOutcome::error(ResponseError::CoordinatorNotAvailable, member_id);
            }
            None => return JoinOutcome::error(ResponseError::UnknownMemberId, member_id),
        };
        match reply {
            Reply::Now(o) => o,
            Reply::Later(rx, bound) => match runtime::timeout(bound, rx).await {
                Some(Ok(o)) => o,
                // Replaced by a newer JoinGroup of the same member, or the
                // bound passed: the client retries.
                _ => JoinOutcome::error(ResponseError::RebalanceInProgress, member_id),
            },
        }
    }

    /// SyncGroup; a follower waits for the leader's assignment.
    pub async fn sync(&self, group_id: &str, req: SyncRequest) -> SyncOutcome {
        let now = Instant::now();
        let Some(reply) = self.with_group(group_id, false, |g| g.sync(req, now)) else {
            return SyncOutcome::error(ResponseError::UnknownMemberId);
        };
        match reply {
            Reply::Now(o) => o,
            Reply::Later(rx, bound) => match runtime::timeout(bound, rx).await {
                Some(Ok(o)) => o,
                _ => SyncOutcome::error(ResponseError::RebalanceInProgress),
            },
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let now = Instant::now();
        self.with_group(group_id, false, |g| {
            g.heartbeat(member_id, instance_id, generation, now)
        })
        .unwrap_or(ResponseError::UnknownMemberId.code())
    }

    /// LeaveGroup for each (member id, instance id): error codes, or None if
    /// the group is unknown.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Option<Vec<i16>> {
        let now = Instant::now();
        let settings = self.settings.clone();
        self.with_group(group_id, false, |g| {
            members
                .iter()
                .map(|(m, i)| g.leave(m, i.as_deref(), now, &settings))
                .collect()
        })
    }

    /// Whether this shard coordinates `group_id` now: Ok with the Raft term of the leadership
    /// it holds (0 for a local partition), else the error a group request gets.
    pub fn coordinating(&self, shard: &Shard, group_id: &str) -> Result<u64, ResponseError> {
        let tp = offsets_tp(shard, group_id).ok_or(ResponseError::CoordinatorNotAvailable)?;
        let Some(driver) = shard.replica(&tp) else {
            return if shard.partition(&tp).is_some() {
                Ok(0)
            } else {
                Err(ResponseError::NotCoordinator)
            };
        };
        let replica = driver.replica();
        let (leader, term) = (replica.is_leader(), replica.term());
        match self.leading.borrow().get(&tp.partition) {
            Some(Coordinating::Serving(t)) if leader && *t == term => Ok(term),
            Some(Coordinating::Loading(t)) if leader && *t == term => {
                Err(ResponseError::CoordinatorLoadInProgress)
            }
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    /// Append `records` to the group's offsets partition and wait until they are durable:
    /// the log offset of the first record. A replicated partition takes them as a proposal
    /// of its Raft leader and answers once they are committed (fdatasynced on a majority),
    /// as an acks=all produce. The append is placed when this is called.
    fn write(
        &self,
        shard: &Shard,
        group_id: &str,
        records: &[(Bytes, Option<Bytes>)],
    ) -> impl std::future::Future<Output = Result<i64, i16>> + use<> {
        let timestamp = self.clock.wall_ms();
        let placed: Result<_, i16> = (|| {
            let tp = offsets_tp(shard, group_id).ok_or(ResponseError::NotCoordinator.code())?;
            let bytes = records::encode_batches(records, timestamp, OFFSETS_BATCH_BYTES_MAX)
                .map_err(|_| ResponseError::InvalidCommitOffsetSize.code())?;
            if let Some(driver) = shard.replica(&tp) {
                return Ok(futures::future::Either::Left(
                    driver.propose(bytes, crate::replication::Acks::All),
                ));
            }
            let log = shard
                .partition(&tp)
                .ok_or(ResponseError::NotCoordinator.code())?;
            let appended = log.append(bytes);
            Ok(futures::future::Either::Right(async move {
                let info = appended.await?;
                log.wait_durable(&info).await?;
                Ok::<_, StorageError>(info)
            }))
        })();
        async move {
            match placed? {
                futures::future::Either::Left(proposed) => proposed
                    .await
                    .map(|info| info.base_offset.get())
                    .map_err(|e| replica_commit_error(&e)),
                futures::future::Either::Right(appended) => appended
                    .await
                    .map(|info| info.base_offset.get())
                    .map_err(|e| commit_error(&e)),
            }
        }
    }

    /// OffsetCommit: validate against the group, write durably, then apply.
    ///
    /// Takes the group's place in line ([`write_order`]) when called, on the
    /// coordinator, so commits take effect in the order they were sent
    /// (jobs from one shard arrive in order); they pipeline, sharing fsyncs.
    pub fn commit(
        shard: Rc<Shard>,
        group_id: String,
        req: CommitRequest,
    ) -> impl std::future::Future<Output = PartitionErrors> + 'static {
        let simple = req.generation < 0;
        let lease = shard.groups.coordinating(&shard, &group_id);
        // Unknown group: only a simple consumer (generation < 0) creates it.
        let ticket = match lease {
            Ok(_) => shard
                .groups
                .with_group(&group_id, simple, |g| g.write_order.enter(Mode::Shared)),
            Err(_) => None,
        };
        async move {
            shard
                .groups
                .commit_in_line(&shard, &group_id, req, lease, ticket)
                .await
        }
    }

    async fn commit_in_line(
        &self,
        shard: &Shard,
        group_id: &str,
        req: CommitRequest,
        lease: Result<u64, ResponseError>,
        ticket: Option<write_order::Ticket>,
    ) -> PartitionErrors {
        let all = |code: i16, topics: &[(String, Vec<CommitPartition>)]| -> PartitionErrors {
            topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (p.partition, code)).collect()))
                .collect()
        };
        let term = match lease {
            Ok(term) => term,
            Err(e) => return all(e.code(), &req.topics),
        };
        let simple = req.generation < 0;
        let Some(ticket) = ticket else {
            let code = if simple {
                ResponseError::CoordinatorNotAvailable.code()
            } else {
                ResponseError::IllegalGeneration.code()
            };
            return all(code, &req.topics);
        };
        // From the grant to the append (in `write`) there is no await: the
        // appends keep the order of the entries.
        let _granted = ticket.granted().await;
        // The leadership may have moved while the commit waited for its turn.
        if self.coordinating(shard, group_id) != Ok(term) {
            return all(ResponseError::NotCoordinator.code(), &req.topics);
        }
        let now = self.clock.now();
        let timestamp = self.clock.wall_ms();
        let check = self.with_group(group_id, simple, |g| {
            let code = g.check_commit(
                &req.member_id,
                req.group_instance_id.as_deref(),
                req.generation,
                now,
            );
            (code, g.offsets.len())
        });
        let (code, mut held) = match check {
            Some(c) => c,
            None => (ResponseError::IllegalGeneration.code(), 0),
        };
        if code != 0 {
            return all(code, &req.topics);
        }
        // Encode; partitions past the per-group bound are refused.
        let mut results: PartitionErrors = Vec::with_capacity(req.topics.len());
        let mut records: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut applied: Vec<((String, i32), CommittedOffset)> = Vec::new();
        {
            let groups = self.groups.borrow();
            let existing = groups.get(group_id).map(|g| &g.offsets);
            for (topic, parts) in &req.topics {
                let mut codes = Vec::with_capacity(parts.len());
                for p in parts {
                    let key_tp = (topic.clone(), p.partition);
                    let known = existing.is_some_and(|o| o.contains_key(&key_tp));
                    if !known && held >= OFFSETS_PER_GROUP_MAX {
                        codes.push((p.partition, ResponseError::InvalidCommitOffsetSize.code()));
                        continue;
                    }
                    let committed = CommittedOffset {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_timestamp_ms: timestamp,
                        log_offset: -1,
                    };
                    match offset_record(group_id, topic, p.partition, &committed) {
                        Ok(record) => {
                            if !known {
                                held += 1;
                            }
                            records.push(record);
                            applied.push((key_tp, committed));
                            codes.push((p.partition, 0));
                        }
                        Err(_) => {
                            codes.push((p.partition, ResponseError::OffsetMetadataTooLarge.code()))
                        }
                    }
                }
                results.push((topic.clone(), codes));
            }
        }
        if records.is_empty() {
            return results;
        }
        match self.write(shard, group_id, &records).await {
            // Committed, but the leadership moved meanwhile: the new leader's load read it
            // from the log (or another broker's did); this shard's map is not the group's.
            Ok(_) if self.coordinating(shard, group_id) != Ok(term) => {}
            Ok(base) => {
                self.with_group(group_id, true, |g| {
                    for (i, (tp, mut c)) in applied.into_iter().enumerate() {
                        c.log_offset = base + i as i64;
                        let newer = g
                            .offsets
                            .get(&tp)
                            .is_none_or(|o| o.log_offset < c.log_offset);
                        if newer {
                            g.offsets.insert(tp, c);
                        }
                    }
                });
            }
            Err(code) => {
                for (_, codes) in results.iter_mut() {
                    for (_, c) in codes.iter_mut().filter(|(_, c)| *c == 0) {
                        *c = code;
                    }
                }
            }
        }
        results
    }

    /// TxnOffsetCommit: write the offsets as a transactional batch of the producer to the
    /// group's `__consumer_offsets` partition and hold them pending until the transaction's
    /// marker lands there. Membership is checked as Kafka does for KIP-447 clients: a member
    /// id, if given, must be a member, and a generation >= 0 must be the group's.
    pub async fn txn_commit(
        shard: Rc<Shard>,
        group_id: &str,
        req: TxnCommitRequest,
    ) -> PartitionErrors {
        let this = &shard.groups;
        let all = |code: i16| -> PartitionErrors {
            req.topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (p.partition, code)).collect()))
                .collect()
        };
        if let Err(e) = this.coordinating(&shard, group_id) {
            return all(e.code());
        }
        let code = {
            let groups = this.groups.borrow();
            match groups.get(group_id) {
                Some(g) if g.state == GroupState::Dead => {
                    ResponseError::CoordinatorNotAvailable.code()
                }
                Some(g) if !req.member_id.is_empty() && !g.has_member(&req.member_id) => {
                    ResponseError::UnknownMemberId.code()
                }
                Some(g) if req.generation >= 0 && req.generation != g.generation => {
                    ResponseError::IllegalGeneration.code()
                }
                None if req.generation >= 0 || !req.member_id.is_empty() => {
                    ResponseError::IllegalGeneration.code()
                }
                _ => 0,
            }
        };
        if code != 0 {
            return all(code);
        }
        let Some(tp) = offsets_tp(&shard, group_id) else {
            return all(ResponseError::NotCoordinator.code());
        };
        let Some(log) = shard.partition(&tp) else {
            return all(ResponseError::NotCoordinator.code());
        };
        let timestamp = this.clock.wall_ms();
        let mut results: PartitionErrors = Vec::with_capacity(req.topics.len());
        let mut records: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut applied: Vec<((String, i32), CommittedOffset)> = Vec::new();
        for (topic, parts) in &req.topics {
            let mut codes = Vec::with_capacity(parts.len());
            for p in parts {
                let committed = CommittedOffset {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: p.metadata.clone(),
                    commit_timestamp_ms: timestamp,
                    log_offset: -1,
                };
                match offset_record(group_id, topic, p.partition, &committed) {
                    Ok(record) => {
                        records.push(record);
                        applied.push(((topic.clone(), p.partition), committed));
                        codes.push((p.partition, 0));
                    }
                    Err(_) => {
                        codes.push((p.partition, ResponseError::OffsetMetadataTooLarge.code()))
                    }
                }
            }
            results.push((topic.clone(), codes));
        }
        if records.is_empty() {
            return results;
        }
        let bytes = match records::encode_txn_batch(
            &records,
            timestamp,
            req.producer_id,
            req.producer_epoch,
        ) {
            Ok(b) => b,
            Err(_) => return all(ResponseError::InvalidCommitOffsetSize.code()),
        };
        // Placed now; the rest runs as its own task, so a cancelled request cannot leave the
        // records in the log without their pending entries. A replicated partition takes
        // them as a proposal of its leader, answered once committed.
        let replica = shard.replica(&tp);
        let term = replica.as_ref().map(|d| d.replica().term());
        let appended = match &replica {
            Some(d) => futures::future::Either::Left(d.propose_for_producer(bytes)),
            None => futures::future::Either::Right(log.append_for_producer(bytes)),
        };
        let (tx, rx) = runtime::oneshot::channel();
        let (pid, partition, group) = (req.producer_id, tp.partition, group_id.to_string());
        let tp_task = tp.clone();
        runtime::spawn_detached(async move {
            let written = async {
                let info = match appended {
                    futures::future::Either::Left(proposed) => {
                        proposed.await.map_err(|e| match e {
                            crate::replication::ReplicaError::Storage(
                                StorageError::InvalidProducerEpoch { .. },
                            ) => ResponseError::ProducerFenced.code(),
                            e => replica_commit_error(&e),
                        })?
                    }
                    futures::future::Either::Right(appended) => {
                        let info = appended.await.map_err(|e| match e {
                            StorageError::InvalidProducerEpoch { .. } => {
                                ResponseError::ProducerFenced.code()
                            }
                            e => commit_error(&e),
                        })?;
                        log.wait_durable(&info)
                            .await
                            .map_err(|e| commit_error(&e))?;
                        info
                    }
                };
                Ok::<_, i16>(info.base_offset.get())
            }
            .await;
            // A replicated partition whose term ended meanwhile: the new term's load reads
            // these offsets from the log, if they committed.
            let same_term = term.is_none_or(|t| {
                shard
                    .replica(&tp_task)
                    .is_some_and(|d| d.replica().is_leader() && d.replica().term() == t)
            });
            let written = if same_term {
                written
            } else {
                Err(ResponseError::NotCoordinator.code())
            };
            if let Ok(base) = &written {
                let offsets: Vec<PendingOffset> = applied
                    .into_iter()
                    .enumerate()
                    .map(|(i, (key_tp, mut c))| {
                        c.log_offset = base + i as i64;
                        (group.clone(), key_tp, c)
                    })
                    .collect();
                // The transaction's marker may already be in the partition (an abort racing
                // this commit, both durable in one round): then it decided these offsets.
                // No await from this check to the registration, and markers apply their
                // pending offsets synchronously too.
                match log.txn_outcome(pid, *base) {
                    None => shard
                        .groups
                        .pending_txn
                        .borrow_mut()
                        .entry((partition, pid))
                        .or_default()
                        .extend(offsets),
                    Some(true) => apply_pending(&mut shard.groups.groups.borrow_mut(), offsets),
                    Some(false) => {}
                }
            }
            let _ = tx.send(written);
        });
        let written = rx
            .await
            .unwrap_or(Err(ResponseError::NotCoordinator.code()));
        match written {
            Ok(_) => {}
            Err(code) => {
                for (_, codes) in results.iter_mut() {
                    for (_, c) in codes.iter_mut().filter(|(_, c)| *c == 0) {
                        *c = code;
                    }
                }
            }
        }
        results
    }

    /// A transaction marker of `producer_id` is durable in `__consumer_offsets` partition
    /// `partition`: its pending offset commits there take effect (commit) or are dropped.
    pub fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let Some(offsets) = self
            .pending_txn
            .borrow_mut()
            .remove(&(partition, producer_id))
        else {
            return;
        };
        if commit {
            apply_pending(&mut self.groups.borrow_mut(), offsets);
        }
    }

    /// Whether `group_id` has offsets committed in a transaction not decided yet for any of
    /// `partitions` (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT).
    pub fn has_pending(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.borrow().values().any(|list| {
            list.iter()
                .any(|(g, (t, p), _)| g == group_id && t == topic && *p == partition)
        })
    }

    /// OffsetFetch: the committed offsets of `topics` (None: every
    /// partition with an offset). Unknown groups and partitions read -1.
    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<FetchedOffset>)> {
        let groups = self.groups.borrow();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        let lookup = |topic: &str, partition: i32| -> FetchedOffset {
            match offsets.and_then(|o| o.get(&(topic.to_string(), partition))) {
                Some(c) => FetchedOffset {
                    partition,
                    offset: c.offset,
                    leader_epoch: c.leader_epoch,
                    metadata: c.metadata.clone(),
                    error_code: 0,
                },
                None => FetchedOffset {
                    partition,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error_code: 0,
                },
            }
        };
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, ps)| {
                    let fetched = ps.into_iter().map(|p| lookup(&t, p)).collect();
                    (t, fetched)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<FetchedOffset>> = BTreeMap::new();
                for (topic, partition) in offsets.into_iter().flat_map(|o| o.keys()) {
                    by_topic
                        .entry(topic.clone())
                        .or_default()
                        .push(lookup(topic, *partition));
                }
                by_topic.into_iter().collect()
            }
        }
    }

    /// Every group on this shard.
    pub fn list(&self) -> Vec<GroupListing> {
        let mut out: Vec<GroupListing> = self
            .groups
            .borrow()
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let groups = self.groups.borrow();
        match groups.get(group_id) {
            Some(g) => GroupDescription {
                error: 0,
                state: g.state.name(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol_data: if g.state == GroupState::Stable {
                    g.protocol_name.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                members: g.member_summaries(),
            },
            None => GroupDescription {
                error: ResponseError::GroupIdNotFound.code(),
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol_data: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// Write tombstones for `keys` of the group (and, with `membership`, for its group
    /// metadata record) and drop them from memory.
    async fn tombstone(
        &self,
        shard: &Shard,
        group_id: &str,
        keys: Vec<(String, i32)>,
        membership: bool,
    ) -> Result<(), i16> {
        if keys.is_empty() && !membership {
            return Ok(());
        }
        let mut records = Vec::with_capacity(keys.len() + 1);
        for (topic, partition) in &keys {
            let key = records::encode_key(&OffsetKey {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
            })
            .map_err(|_| ResponseError::InvalidRequest.code())?;
            records.push((key, None));
        }
        if membership {
            let key = records::encode_group_key(group_id)
                .map_err(|_| ResponseError::InvalidRequest.code())?;
            records.push((key, None));
        }
        let base = self.write(shard, group_id, &records).await?;
        self.with_group(group_id, false, |g| {
            for (i, tp) in keys.iter().enumerate() {
                if g.offsets
                    .get(tp)
                    .is_some_and(|c| c.log_offset < base + i as i64)
                {
                    g.offsets.remove(tp);
                }
            }
        });
        Ok(())
    }

    /// DeleteGroups for one group: the error code.
    pub async fn delete(&self, shard: &Shard, group_id: &str) -> i16 {
        let Some(ticket) =
            self.with_group(group_id, false, |g| g.write_order.enter(Mode::Exclusive))
        else {
            return ResponseError::GroupIdNotFound.code();
        };
        let _granted = ticket.granted().await;
        if let Err(e) = self.coordinating(shard, group_id) {
            return e.code();
        }
        let keys = self.with_group(group_id, false, |g| {
            if g.state == GroupState::Dead {
                Err(ResponseError::GroupIdNotFound.code())
            } else if g.state != GroupState::Empty || g.member_count() > 0 {
                Err(ResponseError::NonEmptyGroup.code())
            } else {
                let recorded = g.membership_record.is_some() || g.membership_recorded.is_some();
                Ok((g.offsets.keys().cloned().collect::<Vec<_>>(), recorded))
            }
        });
        let (keys, membership) = match keys {
            Some(Ok(k)) => k,
            Some(Err(code)) => return code,
            None => return ResponseError::GroupIdNotFound.code(),
        };
        if let Err(code) = self.tombstone(shard, group_id, keys, membership).await {
            return code;
        }
        let mut groups = self.groups.borrow_mut();
        if groups
            .get(group_id)
            .is_some_and(|g| g.state == GroupState::Empty && g.member_count() == 0)
        {
            groups.remove(group_id);
        }
        0
    }

    /// OffsetDelete: per-partition codes, or a group-level error.
    pub async fn delete_offsets(
        &self,
        shard: &Shard,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<PartitionErrors, i16> {
        let Some(ticket) =
            self.with_group(group_id, false, |g| g.write_order.enter(Mode::Exclusive))
        else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        let _granted = ticket.granted().await;
        if let Err(e) = self.coordinating(shard, group_id) {
            return Err(e.code());
        }
        let plan = self.with_group(group_id, false, |g| {
            if g.state == GroupState::Dead {
                return Err(ResponseError::GroupIdNotFound.code());
            }
            let has_members = g.member_count() > 0;
            let consumer = g.protocol_type.as_deref() == Some("consumer");
            if has_members && !consumer {
                return Err(ResponseError::NonEmptyGroup.code());
            }
            let subscribed = if has_members {
                g.subscribed_topics()
            } else {
                Some(Default::default())
            };
            let mut results: PartitionErrors = Vec::new();
            let mut doomed = Vec::new();
            for (topic, parts) in &topics {
                let busy = subscribed.as_ref().is_none_or(|s| s.contains(topic));
                let mut codes = Vec::new();
                for p in parts {
                    if busy {
                        codes.push((*p, ResponseError::GroupSubscribedToTopic.code()));
                    } else {
                        codes.push((*p, 0));
                        if g.offsets.contains_key(&(topic.clone(), *p)) {
                            doomed.push((topic.clone(), *p));
                        }
                    }
                }
                results.push((topic.clone(), codes));
            }
            Ok((results, doomed))
        });
        let (mut results, doomed) = match plan {
            Some(Ok(p)) => p,
            Some(Err(code)) => return Err(code),
            None => return Err(ResponseError::GroupIdNotFound.code()),
        };
        if let Err(code) = self.tombstone(shard, group_id, doomed, false).await {
            for (_, codes) in results.iter_mut() {
                for (_, c) in codes.iter_mut().filter(|(_, c)| *c == 0) {
                    *c = code;
                }
            }
        }
        Ok(results)
    }

    /// Deadlines of every group; forget groups with nothing left.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        for g in groups.values_mut() {
            g.tick(now, &self.settings);
        }
        groups.retain(|_, g| !g.is_disposable());
    }

    /// Answer every parked JoinGroup and SyncGroup (graceful stop).
    pub fn release_waiters(&self) {
        for g in self.groups.borrow_mut().values_mut() {
            g.release_waiters();
        }
    }

    /// Rebuild the committed offsets of the groups this shard coordinates from its local
    /// `__consumer_offsets` partitions (a one-node broker's). Called once at startup, before
    /// the broker listens. Replicated partitions are read when their replica becomes leader
    /// ([`GroupCoordinator::follow_leadership`]). Returns the number of records read.
    pub async fn load(&self, shard: &Shard) -> Result<u64, StorageError> {
        let Some(meta) = shard.catalog().get(OFFSETS_TOPIC).cloned() else {
            return Ok(0);
        };
        let mut count = 0u64;
        let mut loaded = HashMap::new();
        for p in 0..meta.partitions {
            let tp = TopicPartition::new(OFFSETS_TOPIC, p);
            if shard.owner_of(&tp) != shard.id || shard.replica(&tp).is_some() {
                continue;
            }
            let Some(log) = shard.partition(&tp) else {
                continue;
            };
            let mut pending = HashMap::new();
            count += replay_log(&log, &tp, &mut loaded, &mut pending).await?;
            let mut held = self.pending_txn.borrow_mut();
            for (pid, offsets) in pending {
                held.insert((p, pid), offsets);
            }
        }
        loaded.retain(|_, g| !g.is_disposable());
        self.groups.borrow_mut().extend(loaded);
        if count > 0 {
            info!(shard = %shard.id, records = count, groups = self.group_count(), "committed offsets loaded");
        }
        Ok(count)
    }

    /// In a cluster, every tick: follow the leadership of the replicated `__consumer_offsets`
    /// partitions this shard owns. A replica that became leader (a new term) has its
    /// partition's groups read from the log ([`load_partition`]) and served from then on; a
    /// replica that is no longer leader, or leads in a newer term, has its partition's groups
    /// dropped: their members are answered NOT_COORDINATOR and find the new coordinator.
    pub fn follow_leadership(&self, shard: &Rc<Shard>) {
        let Some(partitions) = shard
            .catalog()
            .get(OFFSETS_TOPIC)
            .filter(|m| m.is_replicated())
            .map(|m| m.partitions)
        else {
            return;
        };
        for p in 0..partitions {
            let tp = TopicPartition::new(OFFSETS_TOPIC, p);
            if shard.owner_of(&tp) != shard.id {
                continue;
            }
            let leading = shard.replica(&tp).and_then(|d| {
                let r = d.replica();
                r.is_leader().then(|| r.term())
            });
            let now = self.leading.borrow().get(&p).copied();
            match (leading, now) {
                (Some(term), Some(c)) if c.term() == term => {}
                (Some(term), _) => {
                    self.unload(p, partitions);
                    self.leading
                        .borrow_mut()
                        .insert(p, Coordinating::Loading(term));
                    runtime::spawn_detached(load_partition(shard.clone(), tp, partitions, term));
                }
                (None, Some(c)) => {
                    let groups = self.unload(p, partitions);
                    self.leading.borrow_mut().remove(&p);
                    info!(partition = %tp, epoch = c.term(), groups, "no longer the coordinator of this partition's groups");
                }
                (None, None) => {}
            }
        }
    }

    /// Record in the log the membership of every group whose generation became Stable, or
    /// that became Empty, since its last record ([`Group::membership_to_record`]): one
    /// group metadata record each, in the group's write order. Run by the ticker, so a
    /// membership is recorded within a tick of forming; a coordinator that dies before has
    /// the members rejoin, as without the record.
    pub fn record_memberships(shard: &Rc<Shard>) {
        let now_ms = shard.groups.clock.wall_ms();
        let due: Vec<_> = shard
            .groups
            .groups
            .borrow_mut()
            .iter_mut()
            .filter_map(|(id, g)| {
                g.membership_to_record(now_ms)
                    .map(|v| (id.clone(), v, g.write_order.enter(Mode::Shared)))
            })
            .collect();
        for (group_id, value, ticket) in due {
            let shard = shard.clone();
            runtime::spawn_detached(async move {
                let _granted = ticket.granted().await;
                let encoded = records::encode_group_key(&group_id)
                    .and_then(|k| records::encode_group_value(&value).map(|v| (k, v)));
                let (key, bytes) = match encoded {
                    Ok(kv) => kv,
                    Err(e) => {
                        warn!(group = %group_id, error = %e, "cannot encode the group's membership: not recorded");
                        return;
                    }
                };
                let written = shard
                    .groups
                    .write(&shard, &group_id, &[(key, Some(bytes.clone()))])
                    .await;
                shard.groups.with_group(&group_id, false, |g| match written {
                    Ok(at) => {
                        if g.membership_record.as_ref().is_none_or(|(o, _)| *o < at) {
                            g.membership_record = Some((at, bytes));
                        }
                    }
                    Err(code) => {
                        debug!(group = %group_id, code, "recording the group's membership failed: retrying");
                        g.membership_unrecorded(&value);
                    }
                });
            });
        }
    }

    /// Drop the groups of `__consumer_offsets` partition `p` (members waiting in JoinGroup or
    /// SyncGroup are answered NOT_COORDINATOR). Returns how many there were.
    fn unload(&self, p: i32, partitions: i32) -> usize {
        let mut groups = self.groups.borrow_mut();
        let doomed: Vec<String> = groups
            .keys()
            .filter(|id| offsets_partition(id, partitions) == p)
            .cloned()
            .collect();
        for id in &doomed {
            if let Some(mut g) = groups.remove(id) {
                g.release_waiters();
            }
        }
        // Its undecided transactional offsets too: the next load reads them again.
        self.pending_txn.borrow_mut().retain(|(q, _), _| *q != p);
        doomed.len()
    }
}

/// Read a replicated `__consumer_offsets` partition this shard's replica leads in `term`
/// into the coordinator, once the leader has applied an entry of its own term (then its log
/// holds every commit any earlier leader acknowledged: Raft's leader completeness), and
/// serve its groups, unless the leadership moved meanwhile (the next tick sees it). A read
/// that fails leaves the partition to be read again on the next tick.
async fn load_partition(shard: Rc<Shard>, tp: TopicPartition, partitions: i32, term: u64) {
    let started = Instant::now();
    let still_loading = |shard: &Shard| {
        shard.groups.leading.borrow().get(&tp.partition) == Some(&Coordinating::Loading(term))
            && shard
                .replica(&tp)
                .is_some_and(|d| d.replica().is_leader() && d.replica().term() == term)
    };
    let log = loop {
        if shard.stopping.get() || !still_loading(&shard) {
            return;
        }
        if let Some(d) = shard.replica(&tp)
            && d.replica().leader_ready() == Some(term)
        {
            break d.replica().log().clone();
        }
        runtime::sleep(Duration::from_millis(5)).await;
    };
    let mut loaded = HashMap::new();
    let mut pending = HashMap::new();
    let read = replay_log(&log, &tp, &mut loaded, &mut pending).await;
    if !still_loading(&shard) {
        return;
    }
    // Transactional offsets still undecided at the high watermark: a marker this leader
    // appended since (its own term's entries, which commit unless it loses the term, and
    // then these groups are dropped) decides them now; the others wait for their marker
    // (`complete_txn`). No await from here to the registration.
    for (pid, offsets) in pending {
        let Some(first) = offsets.iter().map(|(_, _, c)| c.log_offset).min() else {
            continue;
        };
        match log.txn_outcome(pid, first) {
            None => {
                shard
                    .groups
                    .pending_txn
                    .borrow_mut()
                    .insert((tp.partition, pid), offsets);
            }
            Some(true) => apply_pending(&mut loaded, offsets),
            Some(false) => {}
        }
    }
    let records = match read {
        Ok(n) => n,
        Err(e) => {
            warn!(partition = %tp, error = %e, "reading committed offsets failed: retrying");
            shard.groups.leading.borrow_mut().remove(&tp.partition);
            return;
        }
    };
    loaded.retain(|_, g| !g.is_disposable());
    let groups = loaded.len();
    {
        let mut map = shard.groups.groups.borrow_mut();
        for (id, g) in loaded {
            debug_assert_eq!(offsets_partition(&id, partitions), tp.partition);
            map.insert(id, g);
        }
    }
    shard
        .groups
        .leading
        .borrow_mut()
        .insert(tp.partition, Coordinating::Serving(term));
    info!(
        partition = %tp,
        epoch = term,
        groups,
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "coordinating this partition's groups"
    );
}

/// Offsets whose transaction committed take effect, each unless a newer record (a higher
/// log offset) of its key is already applied.
fn apply_pending(groups: &mut HashMap<String, Group>, offsets: Vec<PendingOffset>) {
    for (group, tp, c) in offsets {
        let g = groups
            .entry(group.clone())
            .or_insert_with(|| Group::new(group));
        if g.offsets
            .get(&tp)
            .is_none_or(|o| o.log_offset < c.log_offset)
        {
            g.offsets.insert(tp, c);
        }
    }
}

/// A transactional offset commit record read at `log_offset`, as a pending offset.
fn pending_record(log_offset: i64, key: &[u8], value: Option<&[u8]>) -> Option<PendingOffset> {
    let Ok(RecordKey::Offset(k)) = records::decode_key(key) else {
        return None;
    };
    let v = records::decode_value(value?).ok()?;
    Some((
        k.group,
        (k.topic, k.partition),
        CommittedOffset {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata,
            commit_timestamp_ms: v.commit_timestamp_ms,
            log_offset,
        },
    ))
}

/// Apply a group metadata record read at `log_offset` (None: a tombstone) to `groups`.
fn replay_membership(
    groups: &mut HashMap<String, Group>,
    log_offset: i64,
    group: String,
    value: Option<&[u8]>,
) {
    match value {
        None => {
            if let Some(g) = groups.get_mut(&group) {
                g.forget_membership();
            }
        }
        Some(v) => match records::decode_group_value(v) {
            Ok(meta) => {
                let g = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(group));
                g.restore_membership(meta, Instant::now());
                g.membership_record = Some((log_offset, Bytes::copy_from_slice(v)));
            }
            Err(e) => warn!(log_offset, error = %e, "skipping undecodable group metadata"),
        },
    }
}

/// Apply one record of `__consumer_offsets` read at `log_offset` to `groups`.
fn replay_record(
    groups: &mut HashMap<String, Group>,
    log_offset: i64,
    key: &[u8],
    value: Option<&[u8]>,
) {
    let key = match records::decode_key(key) {
        Ok(RecordKey::Offset(k)) => k,
        Ok(RecordKey::GroupMetadata(group)) => {
            replay_membership(groups, log_offset, group, value);
            return;
        }
        Ok(_) => return,
        Err(e) => {
            warn!(log_offset, error = %e, "skipping undecodable offsets key");
            return;
        }
    };
    let tp = (key.topic, key.partition);
    match value {
        None => {
            if let Some(g) = groups.get_mut(&key.group) {
                g.offsets.remove(&tp);
            }
        }
        Some(v) => match records::decode_value(v) {
            Ok(v) => {
                let g = groups
                    .entry(key.group.clone())
                    .or_insert_with(|| Group::new(key.group));
                g.offsets.insert(
                    tp,
                    CommittedOffset {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_timestamp_ms: v.commit_timestamp_ms,
                        log_offset,
                    },
                );
            }
            Err(e) => warn!(log_offset, error = %e, "skipping undecodable offsets value"),
        },
    }
}

/// Read `log` (partition `tp` of `__consumer_offsets`) from its log start to its high
/// watermark into `groups`. Control batches (a Raft leader's own entries) are skipped.
/// Returns the number of records read.
async fn replay_log(
    log: &PartitionLog,
    tp: &TopicPartition,
    groups: &mut HashMap<String, Group>,
    pending: &mut HashMap<i64, Vec<PendingOffset>>,
) -> Result<u64, StorageError> {
    let mut count = 0u64;
    read_records(log, tp, |r| {
        let Some(k) = &r.key else { return };
        if r.control {
            // A transaction marker (a Raft control batch has no producer).
            if r.producer_id >= 0
                && k.len() >= 4
                && let Some(offsets) = pending.remove(&r.producer_id)
                && k[2..4] == [0, 1]
            {
                apply_pending(groups, offsets);
            }
            return;
        }
        count += 1;
        if r.transactional && r.producer_id >= 0 {
            if let Some(o) = pending_record(r.offset, k, r.value.as_deref()) {
                pending.entry(r.producer_id).or_default().push(o);
            }
            return;
        }
        replay_record(groups, r.offset, k, r.value.as_deref());
    })
    .await?;
    Ok(count)
}

/// Every record of an internal topic's partition from its log start to its high watermark,
/// in order, control records included (the coordinators' replay of `__consumer_offsets` and
/// `__transaction_state`). A batch that does not decode is skipped with a warning; reading
/// stops, with a warning, where it makes no progress.
pub(crate) async fn read_records(
    log: &PartitionLog,
    tp: &TopicPartition,
    mut f: impl FnMut(&kafka_protocol::records::Record),
) -> Result<(), StorageError> {
    const READ_BYTES: usize = 1 << 20;
    let mut next = log.log_start_offset().get();
    let end = log.high_watermark().get();
    while next < end {
        let data = log.read(Offset(next), READ_BYTES).await?;
        let before = next;
        let mut buf = data.records;
        // Batch header: baseOffset i64 @0, batchLength i32 @8,
        // lastOffsetDelta i32 @23 (ARCHITECTURE.md).
        while buf.len() >= 61 {
            let base = i64::from_be_bytes(buf[0..8].try_into().unwrap_or([0; 8]));
            let length = i32::from_be_bytes(buf[8..12].try_into().unwrap_or([0; 4]));
            let last_delta = i32::from_be_bytes(buf[23..27].try_into().unwrap_or([0; 4]));
            let size = (length.max(0) as usize).saturating_add(12);
            if length < 49 || size > buf.len() {
                break;
            }
            let mut batch = buf.split_to(size);
            let batch_next = base + i64::from(last_delta.max(0)) + 1;
            if batch_next <= next {
                continue;
            }
            match RecordBatchDecoder::decode(&mut batch) {
                Ok(set) => set
                    .records
                    .iter()
                    .filter(|r| r.offset >= next && r.offset < end)
                    .for_each(&mut f),
                Err(e) => {
                    warn!(partition = %tp, base, error = %e, "skipping undecodable batch")
                }
            }
            batch.advance(batch.remaining());
            next = batch_next;
            runtime::yield_if_needed().await;
        }
        if next == before {
            warn!(partition = %tp, offset = next, "replay made no progress; stopping");
            break;
        }
    }
    Ok(())
}

/// Run the shard's group ticker until the shard stops: deadlines every
/// `GROUP_TICK_MS`; on a graceful stop, parked requests are answered so
/// connections can drain.
pub fn spawn_ticker(shard: Rc<Shard>) {
    runtime::spawn_detached(async move {
        loop {
            runtime::sleep(Duration::from_millis(GROUP_TICK_MS)).await;
            if shard.stopping.get() {
                shard.groups.release_waiters();
            }
            shard.groups.tick(Instant::now());
            shard.groups.follow_leadership(&shard);
            GroupCoordinator::record_memberships(&shard);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(
            offsets_partition("my-group", 16),
            offsets_partition("my-group", 16)
        );
        for g in ["a", "b", "group-1", ""] {
            assert!((0..16).contains(&offsets_partition(g, 16)));
        }
        // FNV-1a of the empty string is the offset basis.
        assert_eq!(
            offsets_partition("", 16),
            (0xcbf2_9ce4_8422_2325u64 % 16) as i32
        );
    }
}
