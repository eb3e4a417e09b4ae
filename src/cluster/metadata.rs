//! The cluster's metadata log (KRaft's idea): a Raft group of every seed broker, over a
//! partition `__cluster_metadata-0` on the shard that owns it, whose records are catalog
//! changes. Every broker applies the committed records in log order to its copy of the
//! catalog (topics, their replica assignments, configs, the registered brokers), so every
//! broker answers Metadata from its own applied copy, and a change is acknowledged only once
//! it is committed and applied.
//!
//! A record is a whole catalog proposed *on top of* a version (`base_version`): it is applied
//! only if the applied catalog is still at that version, else it is refused (another change
//! came first) and its proposer answers NOT_CONTROLLER so the client retries on the new state.
//! Applying is therefore a deterministic function of the log: every broker, replaying the same
//! committed records from the same start, ends with the same catalog.
//!
//! Proposals: the metadata group's leader proposes its own records; a follower forwards its
//! record to the leader as a Raft `MsgPropose` message (the leader wraps it into a batch and
//! proposes it; the follower learns the outcome by applying the log). The proposer waits,
//! bounded, for its record to be applied.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use kafka_protocol::records::RecordBatchDecoder;
use raft::eraftpb::{Entry, Message, MessageType};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::catalog::{BrokerInfo, Catalog};
use crate::constants::METADATA_COMMIT_TIMEOUT_MS;
use crate::replication::Acks;
use crate::replication::driver::Driver;
use crate::replication::wire::GroupMessage;
use crate::runtime;
use crate::shard::{Shard, ShardError};
use crate::storage::PartitionLog;
use crate::storage::batch::{ATTR_CONTROL, BatchIter};
use crate::types::{Offset, ShardId, TopicPartition};

/// The metadata log's topic name (its partition 0 is the log).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// Its topic id on the broker-to-broker wire (fixed: every broker knows it before any
/// catalog exists).
pub const METADATA_TOPIC_ID: Uuid = Uuid::from_u128(0x5c1c_e000_0000_4000_8000_00c1_a57e_0001);

/// The metadata log's partition.
pub fn metadata_tp() -> TopicPartition {
    TopicPartition::new(METADATA_TOPIC.to_string(), 0)
}

/// The shard that runs the metadata replica and applies the log: the partition's owner, as
/// for any partition (the shard journal's replay relies on it).
pub fn metadata_shard(shards: usize) -> ShardId {
    metadata_tp().owner(shards)
}

/// Why a metadata change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("another metadata change came first: retry")]
    Conflict,
    #[error("the metadata change was not committed within {0} ms (no quorum?)")]
    Timeout(u64),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("cannot encode the metadata record: {0}")]
    Encode(String),
}

impl MetadataError {
    /// The Kafka error an admin request gets: both are retriable for clients.
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            MetadataError::Conflict => ResponseError::NotController,
            MetadataError::Timeout(_) => ResponseError::RequestTimedOut,
            _ => ResponseError::UnknownServerError,
        }
    }
}

/// One record of the metadata log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaRecord {
    /// The proposer's id for this proposal (its waiter).
    pub proposal: Uuid,
    /// The broker that proposed it.
    pub from: i32,
    /// Applied only if the applied catalog's version is this one.
    pub base_version: u64,
    /// The catalog it becomes (its version is set to `base_version + 1` when applied).
    pub catalog: Catalog,
}

/// The metadata shard's waiters: proposals of this broker waiting to be applied, by id. The
/// value says whether the record was applied (true) or refused as stale.
#[derive(Default)]
pub struct MetaState {
    waiters: RefCell<HashMap<Uuid, oneshot::Sender<bool>>>,
}

/// A record as the batch stored in the log (key: the proposal id).
pub fn encode(rec: &MetaRecord) -> Result<Bytes, MetadataError> {
    let value = serde_json::to_vec(rec).map_err(|e| MetadataError::Encode(e.to_string()))?;
    batch_of(rec.proposal, value.into())
}

/// The batch holding one record's JSON `value`, keyed by its proposal id.
fn batch_of(proposal: Uuid, value: Bytes) -> Result<Bytes, MetadataError> {
    let key = Bytes::copy_from_slice(proposal.as_bytes());
    crate::group::records::encode_batches(&[(key, Some(value))], now_ms(), usize::MAX)
        .map_err(|e| MetadataError::Encode(e.to_string()))
}

/// The records of the stored batches `data` (control batches, Raft's own, are skipped; an
/// undecodable record is logged and skipped: it cannot be applied on any broker either).
pub fn decode(data: &Bytes) -> Vec<(i64, MetaRecord)> {
    let mut out = Vec::new();
    for item in BatchIter::new(data) {
        let Ok((pos, h, size)) = item else { break };
        if h.attributes & ATTR_CONTROL != 0 {
            continue;
        }
        let mut b = data.slice(pos..pos + size);
        match RecordBatchDecoder::decode(&mut b) {
            Ok(set) => {
                for r in set.records {
                    match r.value.as_deref().map(serde_json::from_slice::<MetaRecord>) {
                        Some(Ok(rec)) => out.push((r.offset, rec)),
                        Some(Err(e)) => {
                            warn!(offset = r.offset, error = %e, "undecodable metadata record skipped")
                        }
                        None => {}
                    }
                }
            }
            Err(e) => {
                warn!(offset = h.base_offset, error = %e, "undecodable metadata batch skipped")
            }
        }
        b.advance(b.remaining());
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Propose `catalog`, a change made to a [`Catalog::snapshot`] (its `based_on` version), to
/// the metadata log, and return once this broker applied it. Any shard may call it.
pub async fn publish(shard: &Shard, catalog: Catalog) -> Result<(), MetadataError> {
    let target = metadata_shard(shard.count);
    let from = shard.config.node_id;
    let applied = shard
        .invoke_on(target, move |s| async move {
            let rec = MetaRecord {
                proposal: Uuid::new_v4(),
                from,
                base_version: catalog.based_on,
                catalog,
            };
            propose_and_wait(&s, rec).await
        })
        .await??;
    if applied {
        Ok(())
    } else {
        Err(MetadataError::Conflict)
    }
}

/// On the metadata shard: propose `rec` (to the leader) until it is applied or refused, within
/// [`METADATA_COMMIT_TIMEOUT_MS`]. Re-sending the same record is harmless: only its first
/// occurrence in the log can be applied (a copy carries a base version already used).
async fn propose_and_wait(shard: &Rc<Shard>, rec: MetaRecord) -> Result<bool, MetadataError> {
    let Some(cluster) = shard.cluster() else {
        return Err(MetadataError::Shard(ShardError::Unreachable(shard.id)));
    };
    let value: Bytes = serde_json::to_vec(&rec)
        .map_err(|e| MetadataError::Encode(e.to_string()))?
        .into();
    let batch = batch_of(rec.proposal, value.clone())?;
    let (tx, mut rx) = oneshot::channel();
    cluster.meta.waiters.borrow_mut().insert(rec.proposal, tx);
    let deadline = Instant::now() + Duration::from_millis(METADATA_COMMIT_TIMEOUT_MS);
    let outcome = loop {
        if let Some(driver) = cluster.replica(&metadata_tp()) {
            let replica = driver.replica();
            if replica.is_leader() {
                // The outcome comes from applying the log: the proposal's own result is not
                // needed (a lost term just means proposing again).
                let fut = driver.propose(batch.clone(), Acks::All);
                runtime::spawn_detached(async move {
                    let _ = fut.await;
                });
            } else if let Some(leader) = replica.leader() {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgPropose);
                m.from = replica.id();
                m.to = leader;
                m.set_entries(
                    vec![Entry {
                        data: value.clone(),
                        ..Default::default()
                    }]
                    .into(),
                );
                cluster.links.send(
                    leader as i32,
                    GroupMessage {
                        topic_id: METADATA_TOPIC_ID,
                        partition: 0,
                        message: m,
                    },
                );
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(MetadataError::Timeout(METADATA_COMMIT_TIMEOUT_MS));
        }
        // Wait for the outcome; propose again after a while (a new leader, a lost message).
        match runtime::timeout(left.min(Duration::from_millis(1000)), &mut rx).await {
            Some(Ok(applied)) => break Ok(applied),
            Some(Err(_)) => break Err(MetadataError::Timeout(METADATA_COMMIT_TIMEOUT_MS)),
            None => continue,
        }
    };
    cluster.meta.waiters.borrow_mut().remove(&rec.proposal);
    outcome
}

/// At the metadata leader: a follower's forwarded record (a `MsgPropose` whose entries hold
/// the records' JSON). Proposed if it parses; the follower learns the outcome from the log.
pub fn forwarded(driver: &Rc<Driver>, m: Message) {
    if !driver.replica().is_leader() {
        debug!(
            from = m.from,
            "forwarded metadata proposal reached a non-leader: dropped"
        );
        return;
    }
    for e in m.entries.iter() {
        let rec = match serde_json::from_slice::<MetaRecord>(&e.data) {
            Ok(rec) => rec,
            Err(err) => {
                warn!(from = m.from, error = %err, "forwarded metadata record does not parse: dropped");
                continue;
            }
        };
        // Checked, then stored as the follower sent it (no second serialization).
        match batch_of(rec.proposal, e.data.clone()) {
            Ok(batch) => {
                let fut = driver.propose(batch, Acks::All);
                runtime::spawn_detached(async move {
                    let _ = fut.await;
                });
            }
            Err(err) => warn!(error = %err, "cannot re-encode a forwarded metadata record"),
        }
    }
}

/// On the metadata shard: apply the committed metadata log, from its start, to the catalog of
/// every shard of this broker, for as long as the broker runs. Records already reflected in
/// the catalog this broker started from (its `catalog.json`, written after each apply) are
/// refused by the version check, as they were the first time.
pub fn spawn_applier(shard: Rc<Shard>, log: Rc<PartitionLog>) {
    runtime::spawn_detached(async move {
        let mut at = log.log_start_offset().get();
        loop {
            if shard.stopping.get() {
                return;
            }
            let changed = log.hw_changed();
            let hw = log.high_watermark().get();
            if at >= hw {
                runtime::timeout(Duration::from_millis(500), changed).await;
                continue;
            }
            let data = match log.read(Offset(at), 1 << 20).await {
                Ok(d) => d.records,
                Err(e) => {
                    warn!(offset = at, error = %e, "cannot read the metadata log; retrying");
                    runtime::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut next = at;
            for item in BatchIter::new(&data) {
                let Ok((_, h, _)) = item else { break };
                if h.base_offset >= hw {
                    break;
                }
                next = h.next_offset();
            }
            if next == at {
                runtime::sleep(Duration::from_millis(50)).await;
                continue;
            }
            for (offset, rec) in decode(&data) {
                if offset < at || offset >= next {
                    continue;
                }
                apply(&shard, offset, rec).await;
            }
            at = next;
        }
    });
}

/// The catalog a committed record makes of `current`: its catalog at the next version if it
/// was proposed on top of `current`'s version, else None (another change came first, and the
/// record is refused). A function of the two only, so every broker applying the same log
/// from the same start reaches the same catalog.
pub fn next_catalog(current: &Catalog, rec: &MetaRecord) -> Option<Catalog> {
    (rec.base_version == current.version).then(|| {
        let mut next = rec.catalog.snapshot();
        next.version = rec.base_version + 1;
        next.based_on = 0;
        next
    })
}

/// Apply one committed record on this broker.
async fn apply(shard: &Rc<Shard>, offset: i64, rec: MetaRecord) {
    let current = shard.catalog();
    let next = next_catalog(&current, &rec);
    let accepted = next.is_some();
    if let Some(next) = next {
        if let Err(e) = next.save(&shard.config.data_dir) {
            // The catalog file is a cache of the applied log: without it a restart replays
            // from an older version, which gives the same result.
            warn!(error = %e, "cannot save the applied catalog");
        }
        let next = Arc::new(next);
        let applied = shard
            .invoke_on_all(move |s| {
                let c = next.clone();
                async move { s.apply_catalog(c).await.map_err(|e| e.to_string()) }
            })
            .await;
        match applied {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    warn!(error = %e, "a shard could not open or delete partitions of the new catalog");
                }
            }
            Err(e) => warn!(error = %e, "cannot hand the new catalog to every shard"),
        }
        debug!(
            offset,
            version = rec.base_version + 1,
            from = rec.from,
            "applied metadata record"
        );
    } else {
        debug!(
            offset,
            base = rec.base_version,
            current = current.version,
            from = rec.from,
            "metadata record refused: another change came first"
        );
    }
    if let Some(cluster) = shard.cluster()
        && let Some(tx) = cluster.meta.waiters.borrow_mut().remove(&rec.proposal)
    {
        let _ = tx.send(accepted);
    }
}

/// On the metadata shard: register this broker (its Kafka listener, RPC address, shards) in
/// the metadata log, with the cluster id if the log has none yet, and create the replicated
/// `__consumer_offsets` once enough brokers registered ([`offsets_topic_replicas`]).
/// Retries until the applied catalog shows the registration, then re-checks now and then (a
/// changed listener after a restart is registered again).
pub fn spawn_registration(shard: Rc<Shard>, me: BrokerInfo) {
    runtime::spawn_detached(async move {
        let mut announced = false;
        let mut catching_up = false;
        let mut caught_up_told = false;
        loop {
            if shard.stopping.get() {
                return;
            }
            let current = shard.catalog();
            let prior = current.brokers.get(&me.id);
            // Back with a wiped data directory: peers ignore this broker's votes until it
            // registers its new incarnation, which it does only once it holds again what
            // its leaders had committed (`cluster::incarnation`).
            if prior.is_some_and(|b| super::incarnation::rejoining(b.incarnation, me.incarnation)) {
                let pending = not_caught_up(&shard, &current, me.id).await;
                if !pending.is_empty() {
                    if !catching_up {
                        warn!(
                            broker = me.id,
                            replicas = pending.len(),
                            "rejoining with a new data directory: not voting until every replica has caught up with its leader"
                        );
                        catching_up = true;
                    }
                    debug!(pending = ?pending, "replicas still catching up");
                    runtime::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                if !caught_up_told {
                    info!(
                        broker = me.id,
                        "every replica caught up: registering the new data directory"
                    );
                    caught_up_told = true;
                }
            }
            let registered = prior == Some(&me) && !current.cluster_id.is_empty();
            let offsets_replicas = internal_topic_replicas(
                &shard,
                &current,
                crate::constants::OFFSETS_TOPIC,
                shard.config.offsets_topic_partitions,
            );
            if registered && offsets_replicas.is_none() {
                if !announced {
                    info!(
                        broker = me.id,
                        brokers = current.brokers.len(),
                        "registered in the cluster metadata"
                    );
                    announced = true;
                }
                runtime::sleep(Duration::from_millis(
                    if current.get(crate::constants::OFFSETS_TOPIC).is_some() {
                        2000
                    } else {
                        250
                    },
                ))
                .await;
                continue;
            }
            let mut next = current.snapshot();
            if next.cluster_id.is_empty() {
                next.cluster_id = Uuid::new_v4().simple().to_string();
            }
            if let Some(replicas) = offsets_replicas {
                crate::group::add_offsets_topic(&mut next, &shard.config, replicas);
            }
            next.brokers.insert(me.id, me.clone());
            match publish(&shard, next).await {
                Ok(()) => {}
                Err(e) => {
                    debug!(error = %e, "broker registration not applied yet; retrying");
                    runtime::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
}

/// In a cluster: create `__transaction_state` in the metadata log, in the background (Kafka
/// creates it on first use too: the first FindCoordinator for a transactional id, which
/// answers COORDINATOR_NOT_AVAILABLE meanwhile and the client asks again). One attempt in
/// flight per shard; a concurrent one from another broker is refused by the metadata log.
pub fn create_txn_topic_soon(shard: &Rc<Shard>) {
    if shard.txns.creating_topic.replace(true) {
        return;
    }
    let shard = shard.clone();
    runtime::spawn_detached(async move {
        let current = shard.catalog();
        if let Some(replicas) = internal_topic_replicas(
            &shard,
            &current,
            crate::constants::TXN_TOPIC,
            shard.config.transaction_state_partitions,
        ) {
            let mut next = current.snapshot();
            if crate::txn::add_txn_topic(&mut next, &shard.config, replicas) {
                match publish(&shard, next).await {
                    Ok(()) => info!(
                        partitions = shard.config.transaction_state_partitions,
                        "created internal topic {}",
                        crate::constants::TXN_TOPIC
                    ),
                    Err(e) => {
                        debug!(error = %e, "creating the transaction state topic: retried on the next request")
                    }
                }
            }
        }
        shard.txns.creating_topic.set(false);
    });
}

/// The replica lists of an internal topic (`__consumer_offsets`, `__transaction_state`) of
/// `partitions` partitions if it is time to create it: it is missing and
/// `offsets_topic_replication_factor` brokers (at most the seed servers) have registered.
/// Each partition gets that many replicas, spread as any topic's. Every registered broker
/// proposes it; the metadata log applies the first and refuses the rest (their base version
/// is stale), so the topic is created once.
fn internal_topic_replicas(
    shard: &Shard,
    catalog: &Catalog,
    topic: &str,
    partitions: i32,
) -> Option<Vec<Vec<i32>>> {
    if catalog.get(topic).is_some() || catalog.cluster_id.is_empty() {
        return None;
    }
    let seeds = shard.cluster()?.spec.seeds.len();
    let rf = usize::try_from(shard.config.offsets_topic_replication_factor)
        .unwrap_or(1)
        .clamp(1, seeds.max(1));
    let brokers: Vec<i32> = catalog.brokers.keys().copied().collect();
    if brokers.len() < rf {
        return None;
    }
    Some(crate::cluster::catalog::assign_replicas(
        topic, &brokers, rf, 0, partitions,
    ))
}

/// The replicas `broker` holds per `catalog` (the metadata one included) that have not
/// caught up with their leader, or are not open yet, on any shard of this broker.
async fn not_caught_up(shard: &Rc<Shard>, catalog: &Catalog, broker: i32) -> Vec<String> {
    let reports = shard
        .invoke_on_all(|s| async move { s.cluster().map(|c| c.caught_up()).unwrap_or_default() })
        .await
        .unwrap_or_default();
    let state: std::collections::HashMap<TopicPartition, bool> =
        reports.into_iter().flatten().collect();
    let mut wanted = vec![metadata_tp()];
    for meta in catalog.topics.values() {
        for (p, replicas) in meta.replicas.iter().enumerate() {
            if replicas.contains(&broker) {
                wanted.push(TopicPartition::new(meta.name.clone(), p as i32));
            }
        }
    }
    wanted
        .into_iter()
        .filter(|tp| state.get(tp) != Some(&true))
        .map(|tp| tp.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let mut catalog = Catalog::default();
        catalog.cluster_id = "c".into();
        catalog.brokers.insert(
            2,
            BrokerInfo {
                id: 2,
                host: "127.0.0.1".into(),
                port: 9092,
                rpc: "127.0.0.1:9093".into(),
                shards: 2,
                incarnation: 9,
            },
        );
        let rec = MetaRecord {
            proposal: Uuid::new_v4(),
            from: 2,
            base_version: 7,
            catalog,
        };
        let batch = encode(&rec).unwrap();
        let back = decode(&batch);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.proposal, rec.proposal);
        assert_eq!(back[0].1.base_version, 7);
        assert_eq!(back[0].1.catalog.brokers, rec.catalog.brokers);
    }

    #[test]
    fn the_metadata_partition_has_a_fixed_identity() {
        assert_eq!(metadata_tp().dir_name(), "__cluster_metadata-0");
        assert_eq!(metadata_shard(1), ShardId(0));
        assert_eq!(metadata_shard(4), metadata_tp().owner(4));
    }
}
