//! Metadata (key 3), versions 0-13: brokers (just this one), the controller,
//! and topics with their partitions. Unknown topics are created when the
//! request allows it (v4+) and `auto_create_topics` is on, with
//! `num_partitions` partitions. This broker leads every partition, with
//! leader epoch 0 and itself as the only replica.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use uuid::Uuid;

use super::{HandlerError, RequestContext, str_bytes};
use crate::cluster::catalog::{TopicMeta, validate_topic_name};
use crate::shard::controller::{CONTROLLER, TopicSpec};

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

    let node = config.node_id;
    let catalog = shard.catalog();
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => catalog
            .topics
            .values()
            .map(|m| topic_entry(m, node))
            .collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => catalog.get(n),
                    None => catalog.name_of(&id).and_then(|n| catalog.get(n)),
                };
                match found {
                    Some(meta) => topic_entry(meta, node),
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

/// A topic's metadata: a single broker, `node`, leads every partition.
fn topic_entry(meta: &TopicMeta, node: i32) -> MetadataResponseTopic {
    let partitions = (0..meta.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(node))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(node)])
                .with_isr_nodes(vec![BrokerId(node)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(meta.name.clone()))))
        .with_topic_id(meta.id)
        .with_is_internal(meta.name.starts_with("__"))
        .with_partitions(partitions)
}
