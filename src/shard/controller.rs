//! Controller operations: topic creation and deletion. They run on shard 0
//! only (callers use `invoke_on(CONTROLLER, ..)`), one at a time, and change
//! the catalog in this order: validate, persist, then give every shard the new
//! copy and wait until all have opened (or deleted) their partitions. When a
//! CreateTopics answer reaches the client, every shard can serve the topic.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::{info, warn};
use uuid::Uuid;

use super::Shard;
use crate::cluster::catalog::{TopicMeta, validate_topic_name};
use crate::constants::PARTITIONS_PER_TOPIC_MAX;
use crate::types::ShardId;

/// The shard that owns the catalog.
pub const CONTROLLER: ShardId = ShardId(0);

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    /// -1 means the broker default (`num_partitions`).
    pub partitions: i32,
    /// -1 means the broker default (1).
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// The outcome for one topic: its metadata, or a Kafka error code and message.
pub type TopicOutcome = Result<TopicMeta, (i16, String)>;

/// Topic configs Sluice accepts, and whether the value must be an integer.
const TOPIC_CONFIGS: &[(&str, bool)] = &[
    ("cleanup.policy", false),
    ("compression.type", false),
    ("delete.retention.ms", true),
    ("file.delete.delay.ms", true),
    ("flush.messages", true),
    ("flush.ms", true),
    ("index.interval.bytes", true),
    ("local.retention.bytes", true),
    ("local.retention.ms", true),
    ("max.compaction.lag.ms", true),
    ("max.message.bytes", true),
    ("message.downconversion.enable", false),
    ("message.timestamp.after.max.ms", true),
    ("message.timestamp.before.max.ms", true),
    ("message.timestamp.difference.max.ms", true),
    ("message.timestamp.type", false),
    ("min.cleanable.dirty.ratio", false),
    ("min.compaction.lag.ms", true),
    ("min.insync.replicas", true),
    ("preallocate", false),
    ("retention.bytes", true),
    ("retention.ms", true),
    ("segment.bytes", true),
    ("segment.index.bytes", true),
    ("segment.jitter.ms", true),
    ("segment.ms", true),
    ("unclean.leader.election.enable", false),
];

/// Check a topic config; the error is a message for the client.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let Some((_, numeric)) = TOPIC_CONFIGS.iter().find(|(n, _)| *n == name) else {
        return Err(format!("Unknown topic config name: {name}"));
    };
    if *numeric && value.parse::<i64>().is_err() {
        return Err(format!("Invalid value {value} for configuration {name}"));
    }
    match name {
        "segment.bytes" if value.parse::<i64>().unwrap_or(0) < 4096 => Err(format!(
            "Invalid value {value} for configuration {name}: at least 4096"
        )),
        "max.message.bytes" if value.parse::<i64>().unwrap_or(0) < 0 => {
            Err(format!("Invalid value {value} for configuration {name}"))
        }
        "message.timestamp.type" if value != "CreateTime" && value != "LogAppendTime" => Err(
            format!("Invalid value {value} for configuration {name}: CreateTime or LogAppendTime"),
        ),
        "cleanup.policy"
            if !value
                .split(',')
                .all(|p| matches!(p.trim(), "delete" | "compact")) =>
        {
            Err(format!("Invalid value {value} for configuration {name}"))
        }
        _ => Ok(()),
    }
}

fn error(e: ResponseError, msg: impl Into<String>) -> (i16, String) {
    (e.code(), msg.into())
}

impl Shard {
    fn check_spec(&self, spec: &TopicSpec) -> Result<TopicMeta, (i16, String)> {
        validate_topic_name(&spec.name)
            .map_err(|m| error(ResponseError::InvalidTopicException, m))?;
        if self.catalog().get(&spec.name).is_some() {
            return Err(error(
                ResponseError::TopicAlreadyExists,
                format!("Topic '{}' already exists.", spec.name),
            ));
        }
        let partitions = if spec.partitions == -1 {
            self.config.num_partitions
        } else {
            spec.partitions
        };
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
            return Err(error(
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}."),
            ));
        }
        if spec.replication_factor != -1 && spec.replication_factor != 1 {
            return Err(error(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor {} is larger than the number of brokers (1).",
                    spec.replication_factor
                ),
            ));
        }
        for (k, v) in &spec.configs {
            validate_topic_config(k, v).map_err(|m| error(ResponseError::InvalidConfig, m))?;
        }
        Ok(TopicMeta {
            name: spec.name.clone(),
            id: Uuid::new_v4(),
            partitions,
            configs: spec.configs.clone(),
        })
    }

    /// Create topics (controller only). With `validate_only`, checks and
    /// reports without creating.
    pub async fn create_topics(
        &self,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        assert_eq!(self.id, CONTROLLER, "create_topics runs on the controller");
        let _guard = self.controller_lock.lock().await;
        let mut catalog = self.catalog().snapshot();
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut created = 0;
        for spec in &specs {
            let outcome = self.check_spec(spec).and_then(|meta| {
                if specs.iter().filter(|s| s.name == spec.name).count() > 1 {
                    return Err(error(
                        ResponseError::InvalidRequest,
                        format!("Duplicate topic name {} in request", spec.name),
                    ));
                }
                Ok(meta)
            });
            if let (Ok(meta), false) = (&outcome, validate_only) {
                catalog.insert(meta.clone());
                created += 1;
            }
            outcomes.push(outcome);
        }
        if created == 0 {
            return outcomes;
        }
        if let Err(e) = self.publish_catalog(catalog).await {
            warn!(error = %e, "topic creation failed");
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(error(ResponseError::KafkaStorageError, e.clone()));
            }
            return outcomes;
        }
        for meta in outcomes.iter().flatten() {
            info!(topic = %meta.name, partitions = meta.partitions, id = %meta.id, "created topic");
        }
        outcomes
    }

    /// Delete topics by name (controller only). Unknown names get
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub async fn delete_topics(&self, names: Vec<String>) -> Vec<(String, Uuid, i16)> {
        assert_eq!(self.id, CONTROLLER, "delete_topics runs on the controller");
        let _guard = self.controller_lock.lock().await;
        let mut catalog = self.catalog().snapshot();
        let mut results = Vec::with_capacity(names.len());
        let mut removed = 0;
        for name in names {
            match catalog.remove(&name) {
                Some(meta) => {
                    removed += 1;
                    results.push((name, meta.id, 0));
                }
                None => results.push((
                    name,
                    Uuid::nil(),
                    ResponseError::UnknownTopicOrPartition.code(),
                )),
            }
        }
        if removed > 0 {
            if let Err(e) = self.publish_catalog(catalog).await {
                warn!(error = %e, "topic deletion failed");
                for r in results.iter_mut().filter(|r| r.2 == 0) {
                    r.2 = ResponseError::KafkaStorageError.code();
                }
            } else {
                for r in results.iter().filter(|r| r.2 == 0) {
                    info!(topic = %r.0, "deleted topic");
                }
            }
        }
        results
    }

    /// Persist `catalog` and make every shard adopt it.
    async fn publish_catalog(
        &self,
        catalog: crate::cluster::catalog::Catalog,
    ) -> Result<(), String> {
        catalog
            .save(&self.config.data_dir)
            .map_err(|e| e.to_string())?;
        let catalog = Arc::new(catalog);
        let results = self
            .invoke_on_all(move |shard| {
                let c = catalog.clone();
                async move { shard.apply_catalog(c).await.map_err(|e| e.to_string()) }
            })
            .await
            .map_err(|e| e.to_string())?;
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
        Ok(())
    }
}

impl Shard {
    /// InitProducerId without a transactional id (controller only): a fresh
    /// producer id with epoch 0, or, given the (id, epoch) a producer holds
    /// (KIP-360), the same id with the next epoch. Err is a Kafka error code.
    /// Synchronous (a block persist blocks for its fsyncs, once per
    /// `PRODUCER_ID_BLOCK_SIZE` ids), so allocations cannot interleave.
    pub fn init_producer_id(&self, current: Option<(i64, i16)>) -> Result<(i64, i16), i16> {
        use crate::cluster::producer_ids::{ProducerIds, init_producer_id};
        assert_eq!(
            self.id, CONTROLLER,
            "producer ids are allocated by the controller"
        );
        let mut ids = self.producer_ids.borrow_mut();
        if ids.is_none() {
            match ProducerIds::load(&self.config.data_dir) {
                Ok(loaded) => *ids = Some(loaded),
                Err(e) => {
                    warn!(error = %e, "cannot load the producer id block");
                    return Err(ResponseError::UnknownServerError.code());
                }
            }
        }
        init_producer_id(ids.as_ref().expect("loaded above"), current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_configs() {
        assert!(validate_topic_config("retention.ms", "1000").is_ok());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("no.such.thing", "1").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("segment.bytes", "100").is_err());
    }
}
