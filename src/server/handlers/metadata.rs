//! Metadata (key 3), versions 0-13: brokers, the controller, and topics with
//! their partitions. In a cluster ([`ClusterView`]): every registered broker,
//! the metadata group's leader as controller, and each replicated partition's
//! leader, epoch (the Raft term), replicas and in-sync replicas. On a
//! one-node broker, this broker leads every partition, with leader epoch 0
//! and itself as the only replica. Either way, unknown topics are created
//! when the request allows it (v4+) and `auto_create_topics` is on, with
//! `num_partitions` partitions.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use uuid::Uuid;

use super::{HandlerError, RequestContext, str_bytes};
use crate::cluster::catalog::{TopicMeta, validate_topic_name};
use crate::cluster::metadata::metadata_tp;
use crate::cluster::node::Leadership;
use crate::shard::controller::{CONTROLLER, TopicSpec};
use crate::types::TopicPartition;

/// Whether this broker knows the cluster: always on a one-node broker; in a cluster, once
/// its registration with this data directory's incarnation is in its applied catalog.
pub fn settled(shard: &crate::shard::Shard) -> bool {
    shard.cluster().is_none_or(|c| {
        shard
            .catalog()
            .brokers
            .get(&c.spec.node_id)
            .is_some_and(|b| b.incarnation == c.spec.incarnation)
    })
}

pub async fn handle(
    ctx: &RequestContext,
    req: MetadataRequest,
) -> Result<MetadataResponse, HandlerError> {
    let shard = &ctx.shard;
    let config = &shard.config;
    // v0: an empty list means all topics; v1+: null means all topics.
    let wanted: Option<Vec<(Option<String>, Uuid)>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && ctx.version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };

    // In a cluster, a broker answers Metadata once its own registration (with this data
    // directory's incarnation) is in its applied catalog. Before that (a new broker, or one
    // whose data directory was wiped, still replaying the metadata log) it knows neither
    // the brokers nor the topics, and an answer listing none would make clients forget
    // every broker they knew (librdkafka drops brokers a Metadata answer leaves out): the
    // connection closes instead and the client asks another broker, as with a Kafka broker
    // that has not caught up with the metadata log yet.
    if !settled(shard) {
        return Err(HandlerError::NotReady(
            "not caught up with the cluster metadata yet",
        ));
    }
    // Auto-create what is missing.
    if let Some(wanted) = &wanted {
        let allow = req.allow_auto_topic_creation && config.auto_create_topics;
        let catalog = shard.catalog();
        let missing: Vec<TopicSpec> = wanted
            .iter()
            .filter_map(|(name, _)| name.as_ref())
            .filter(|n| catalog.get(n).is_none() && validate_topic_name(n).is_ok())
            .map(|n| TopicSpec {
                name: n.clone(),
                partitions: -1,
                replication_factor: -1,
                configs: BTreeMap::new(),
                assignments: Vec::new(),
            })
            .collect();
        if allow && !missing.is_empty() {
            // Races with another creator end in TOPIC_ALREADY_EXISTS: fine,
            // the topic exists either way.
            shard
                .invoke_on(CONTROLLER, move |c| async move {
                    c.create_topics(missing, false).await;
                })
                .await?;
        }
    }

    let catalog = shard.catalog();
    let view = if shard.is_cluster() {
        Some(ClusterView::gather(shard, &catalog).await?)
    } else {
        None
    };
    let entry = |m: &TopicMeta| match &view {
        Some(v) => v.topic_entry(m),
        None => topic_entry(m, config.node_id),
    };
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => catalog.topics.values().map(entry).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => catalog.get(n),
                    None => catalog.name_of(&id).and_then(|n| catalog.get(n)),
                };
                match found {
                    Some(meta) => entry(meta),
                    None => {
                        let code = match &name {
                            Some(n) if validate_topic_name(n).is_err() => {
                                ResponseError::InvalidTopicException
                            }
                            Some(_) => ResponseError::UnknownTopicOrPartition,
                            None => ResponseError::UnknownTopicId,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code.code())
                            .with_name(name.map(|n| TopicName(str_bytes(n))))
                            .with_topic_id(id)
                    }
                }
            })
            .collect(),
    };

    if let Some(view) = view {
        return Ok(MetadataResponse::default()
            .with_brokers(view.brokers())
            .with_cluster_id(Some(str_bytes(catalog.cluster_id.clone())))
            .with_controller_id(BrokerId(view.controller))
            .with_topics(topics));
    }
    let (host, port) = config
        .advertised()
        .expect("advertised listener validated at start");
    Ok(MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(config.node_id))
                .with_host(str_bytes(host))
                .with_port(port),
        ])
        .with_cluster_id(Some(str_bytes(catalog.cluster_id.clone())))
        .with_controller_id(BrokerId(config.node_id))
        .with_topics(topics))
}

/// Longest a Metadata request waits for this broker's replicas to learn their leaders.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

/// A cluster member's view for Metadata: the registered brokers (from its applied metadata
/// log), and the leadership of the replicas on this broker (from every shard).
pub struct ClusterView {
    catalog: std::sync::Arc<crate::cluster::catalog::Catalog>,
    leaders: HashMap<TopicPartition, Leadership>,
    /// The metadata group's leader (Kafka's active controller), or -1.
    pub controller: i32,
}

impl ClusterView {
    pub async fn gather(
        shard: &crate::shard::Shard,
        catalog: &std::sync::Arc<crate::cluster::catalog::Catalog>,
    ) -> Result<ClusterView, crate::shard::ShardError> {
        // A replica that just started, or whose group is electing, knows no leader for a
        // moment (a heartbeat or an election away). Clients cache a LEADER_NOT_AVAILABLE
        // answer for a while, so wait a little for the answer instead (bounded).
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        let leaders: HashMap<TopicPartition, Leadership> = loop {
            let all = shard
                .invoke_on_all(|s| async move {
                    s.cluster()
                        .map(|c| {
                            let mut known = c.leadership();
                            known.extend(c.heard_leadership(&s.catalog()));
                            known
                        })
                        .unwrap_or_default()
                })
                .await?;
            let leaders: HashMap<TopicPartition, Leadership> = all
                .into_iter()
                .flatten()
                .map(|l| (l.tp.clone(), l))
                .collect();
            let every_partition = catalog
                .topics
                .values()
                .filter(|m| m.is_replicated())
                .all(|m| {
                    (0..m.partitions).all(|p| {
                        leaders
                            .get(&TopicPartition::new(m.name.clone(), p))
                            .is_some_and(|l| l.leader.is_some())
                    })
                });
            if (every_partition && leaders.values().all(|l| l.leader.is_some()))
                || std::time::Instant::now() >= deadline
            {
                break leaders;
            }
            crate::runtime::sleep(std::time::Duration::from_millis(20)).await;
        };
        let controller = leaders
            .get(&metadata_tp())
            .and_then(|l| l.leader)
            .unwrap_or(-1);
        Ok(ClusterView {
            catalog: catalog.clone(),
            leaders,
            controller,
        })
    }

    /// Every registered broker with its advertised Kafka listener.
    pub fn brokers(&self) -> Vec<MetadataResponseBroker> {
        self.catalog
            .brokers
            .values()
            .map(|b| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(str_bytes(b.host.clone()))
                    .with_port(b.port)
            })
            .collect()
    }

    /// A partition's leader and epoch as this broker knows them.
    pub fn leader_of(&self, tp: &TopicPartition) -> Option<(i32, i32)> {
        let l = self.leaders.get(tp)?;
        Some((l.leader?, l.epoch))
    }

    /// A topic's partitions: replicated ones with the leader this broker's replica knows, or
    /// for a partition it holds no replica of, the leader's recent notice
    /// (LEADER_NOT_AVAILABLE when it knows none, e.g. during an election), their replicas and
    /// in-sync replicas; a local topic (a cluster formed before `__consumer_offsets` was
    /// replicated) led by its designated broker.
    fn topic_entry(&self, meta: &TopicMeta) -> MetadataResponseTopic {
        let partitions = (0..meta.partitions)
            .map(|p| {
                let tp = TopicPartition::new(meta.name.clone(), p);
                if !meta.is_replicated() {
                    return single_replica(p, designated_broker(&self.catalog, p));
                }
                let out = MetadataResponsePartition::default().with_partition_index(p);
                let replicas: Vec<BrokerId> =
                    meta.replicas_of(p).iter().map(|&b| BrokerId(b)).collect();
                let local = self.leaders.get(&tp);
                let isr: Vec<BrokerId> = match local {
                    Some(l) if !l.in_sync.is_empty() => {
                        l.in_sync.iter().map(|&b| BrokerId(b)).collect()
                    }
                    _ => replicas.clone(),
                };
                let out = out.with_replica_nodes(replicas).with_isr_nodes(isr);
                match self.leader_of(&tp) {
                    Some((leader, epoch)) => out
                        .with_leader_id(BrokerId(leader))
                        .with_leader_epoch(epoch),
                    None => out
                        .with_error_code(ResponseError::LeaderNotAvailable.code())
                        .with_leader_id(BrokerId(-1))
                        .with_leader_epoch(-1),
                }
            })
            .collect();
        topic_with(meta, partitions)
    }
}

/// The broker that answers for partition `p` of a local (unreplicated) topic in a cluster,
/// such as `__consumer_offsets`: the registered brokers take the partitions in turn. Every
/// broker computes the same answer from its applied catalog, so FindCoordinator sends every
/// member of a group to the same broker.
pub fn designated_broker(catalog: &crate::cluster::catalog::Catalog, p: i32) -> i32 {
    let ids: Vec<i32> = catalog.brokers.keys().copied().collect();
    if ids.is_empty() {
        return -1;
    }
    ids[p.max(0) as usize % ids.len()]
}

/// Partition `p` led by `node`, its only replica, at epoch 0.
fn single_replica(p: i32, node: i32) -> MetadataResponsePartition {
    MetadataResponsePartition::default()
        .with_partition_index(p)
        .with_leader_id(BrokerId(node))
        .with_leader_epoch(0)
        .with_replica_nodes(vec![BrokerId(node)])
        .with_isr_nodes(vec![BrokerId(node)])
}

/// A topic's entry with its partitions.
fn topic_with(
    meta: &TopicMeta,
    partitions: Vec<MetadataResponsePartition>,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(meta.name.clone()))))
        .with_topic_id(meta.id)
        .with_is_internal(meta.name.starts_with("__"))
        .with_partitions(partitions)
}

/// A topic's metadata: a single broker, `node`, leads every partition.
fn topic_entry(meta: &TopicMeta, node: i32) -> MetadataResponseTopic {
    topic_with(
        meta,
        (0..meta.partitions)
            .map(|p| single_replica(p, node))
            .collect(),
    )
}
