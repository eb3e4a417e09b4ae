//! Controller operations: topic creation and deletion, partition growth,
//! topic and broker config changes. They run on shard 0
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
    /// Manual replica assignments, one per partition from 0 (empty: none); with them,
    /// `partitions` and `replication_factor` are -1.
    pub assignments: Vec<Vec<i32>>,
}

/// Check manual replica assignments (CreateTopics, CreatePartitions) as Kafka does: each
/// names distinct registered brokers, all the same number of them (`rf` if given).
fn check_assignments(
    assignments: &[Vec<i32>],
    brokers: &[i32],
    rf: Option<usize>,
) -> Result<(), (i16, String)> {
    let bad = |m: String| Err(error(ResponseError::InvalidReplicaAssignment, m));
    let want = rf.or_else(|| assignments.first().map(Vec::len));
    for (i, a) in assignments.iter().enumerate() {
        if a.is_empty() {
            return bad(format!(
                "The manual replica assignment of partition {i} is empty."
            ));
        }
        if Some(a.len()) != want {
            return bad(format!(
                "Inconsistent replication factor between partitions: partition {i} has {} replicas, expected {}.",
                a.len(),
                want.unwrap_or(0)
            ));
        }
        let mut seen = a.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != a.len() {
            return bad(format!(
                "The manual replica assignment of partition {i} names a broker twice: {a:?}."
            ));
        }
        if let Some(b) = a.iter().find(|b| !brokers.contains(b)) {
            return bad(format!(
                "The manual replica assignment of partition {i} names broker {b}, which is not registered (brokers: {brokers:?})."
            ));
        }
    }
    Ok(())
}

/// A CreatePartitions request for one topic.
#[derive(Debug, Clone)]
pub struct PartitionsSpec {
    pub name: String,
    /// The partition count wanted.
    pub count: i32,
    /// Manual replica assignments of the new partitions, in order.
    pub assignments: Option<Vec<Vec<i32>>>,
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
        "min.cleanable.dirty.ratio"
            if !value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) =>
        {
            Err(format!(
                "Invalid value {value} for configuration {name}: a number in [0, 1]"
            ))
        }
        "delete.retention.ms" | "min.compaction.lag.ms" | "max.compaction.lag.ms"
            if value.parse::<i64>().unwrap_or(-1) < 0 =>
        {
            Err(format!(
                "Invalid value {value} for configuration {name}: at least 0"
            ))
        }
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

/// Topic configs Sluice obeys, with the dynamic broker config that sets
/// their default (Kafka's names). Other topic configs in [`TOPIC_CONFIGS`]
/// are accepted and stored but have no effect.
/// `cleanup.policy=compact` (alone or with `delete`) hands the topic to the log cleaner
/// (`shard::cleaner`), with `min.cleanable.dirty.ratio`, `delete.retention.ms`,
/// `min.compaction.lag.ms` and `max.compaction.lag.ms`.
pub const OBEYED_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
];

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// A topic override (DYNAMIC_TOPIC_CONFIG).
    Topic = 1,
    /// A dynamic broker config set with AlterConfigs (DYNAMIC_BROKER_CONFIG).
    DynamicBroker = 2,
    /// The broker's static configuration (STATIC_BROKER_CONFIG).
    StaticBroker = 4,
    /// Built-in default (DEFAULT_CONFIG).
    Default = 5,
}

/// One config as reported: name, value, source.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// The broker-level default of an obeyed topic config (broker name), from
/// the dynamic broker configs or the static configuration.
pub fn broker_config_value(
    config: &crate::config::Config,
    catalog: &crate::cluster::catalog::Catalog,
    broker_key: &str,
) -> Option<ConfigEntry> {
    if let Some(v) = catalog.broker_configs.get(broker_key) {
        return Some(ConfigEntry {
            name: broker_key.to_string(),
            value: v.clone(),
            source: ConfigSource::DynamicBroker,
        });
    }
    // A static setting equal to the built-in default is reported as the
    // default (as Kafka does for settings absent from server.properties).
    let defaults = crate::config::Config::default();
    let pick = |value: String, default: String| {
        let source = if value == default {
            ConfigSource::Default
        } else {
            ConfigSource::StaticBroker
        };
        (value, source)
    };
    let (value, source) = match broker_key {
        "log.cleanup.policy" => ("delete".to_string(), ConfigSource::Default),
        "message.max.bytes" => pick(
            config.max_message_bytes.to_string(),
            defaults.max_message_bytes.to_string(),
        ),
        "log.message.timestamp.type" => ("CreateTime".to_string(), ConfigSource::Default),
        "log.retention.bytes" => pick(
            config.retention_bytes.to_string(),
            defaults.retention_bytes.to_string(),
        ),
        "log.retention.ms" => pick(
            config.retention_ms.to_string(),
            defaults.retention_ms.to_string(),
        ),
        "log.segment.bytes" => pick(
            config.segment_bytes.to_string(),
            defaults.segment_bytes.to_string(),
        ),
        "log.roll.ms" => pick(
            config.segment_ms.to_string(),
            defaults.segment_ms.to_string(),
        ),
        "log.cleaner.delete.retention.ms" => (
            crate::constants::DELETE_RETENTION_MS_DEFAULT.to_string(),
            ConfigSource::Default,
        ),
        "log.cleaner.max.compaction.lag.ms" => (i64::MAX.to_string(), ConfigSource::Default),
        "log.cleaner.min.cleanable.ratio" => (
            crate::constants::MIN_CLEANABLE_DIRTY_RATIO_DEFAULT.to_string(),
            ConfigSource::Default,
        ),
        "log.cleaner.min.compaction.lag.ms" => ("0".to_string(), ConfigSource::Default),
        _ => return None,
    };
    Some(ConfigEntry {
        name: broker_key.to_string(),
        value,
        source,
    })
}

/// A topic's effective obeyed configs (override, else broker default), then
/// its other stored overrides. With `synonyms`, each entry is followed by
/// the values it overrides (topic, broker), as DescribeConfigs reports them.
pub fn topic_config_entries(
    config: &crate::config::Config,
    catalog: &crate::cluster::catalog::Catalog,
    meta: &TopicMeta,
) -> Vec<(ConfigEntry, Vec<ConfigEntry>)> {
    let mut out = Vec::new();
    for (topic_key, broker_key) in OBEYED_TOPIC_CONFIGS {
        let broker = broker_config_value(config, catalog, broker_key).expect("known broker key");
        let mut synonyms = Vec::new();
        let entry = match meta.configs.get(*topic_key) {
            Some(v) => {
                let e = ConfigEntry {
                    name: topic_key.to_string(),
                    value: v.clone(),
                    source: ConfigSource::Topic,
                };
                synonyms.push(e.clone());
                e
            }
            None => ConfigEntry {
                name: topic_key.to_string(),
                value: broker.value.clone(),
                source: broker.source,
            },
        };
        synonyms.push(broker);
        out.push((entry, synonyms));
    }
    for (k, v) in &meta.configs {
        if OBEYED_TOPIC_CONFIGS.iter().any(|(t, _)| t == k) {
            continue;
        }
        let e = ConfigEntry {
            name: k.clone(),
            value: v.clone(),
            source: ConfigSource::Topic,
        };
        out.push((e.clone(), vec![e]));
    }
    out
}

/// The effective value of an obeyed topic config.
pub fn topic_config_value(
    config: &crate::config::Config,
    catalog: &crate::cluster::catalog::Catalog,
    meta: &TopicMeta,
    topic_key: &str,
) -> Option<String> {
    if let Some(v) = meta.configs.get(topic_key) {
        return Some(v.clone());
    }
    let (_, broker_key) = OBEYED_TOPIC_CONFIGS.iter().find(|(t, _)| *t == topic_key)?;
    broker_config_value(config, catalog, broker_key).map(|e| e.value)
}

/// Check a dynamic broker config: one of the broker names in
/// [`OBEYED_TOPIC_CONFIGS`], with a value valid for its topic config.
pub fn validate_broker_config(name: &str, value: &str) -> Result<(), String> {
    let Some((topic_key, _)) = OBEYED_TOPIC_CONFIGS.iter().find(|(_, b)| *b == name) else {
        return Err(format!(
            "Broker config {name} cannot be changed dynamically on Sluice"
        ));
    };
    validate_topic_config(topic_key, value)
}

/// One config operation (IncrementalAlterConfigs; AlterConfigs is a
/// `replace` of the whole set with `Set`s).
#[derive(Debug, Clone)]
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Add an item to a list config (`cleanup.policy`).
    Append(String, String),
    /// Remove an item from a list config.
    Subtract(String, String),
}

/// Resource types of DescribeConfigs / AlterConfigs.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// A change to one resource's configs.
#[derive(Debug, Clone)]
pub struct ConfigAlteration {
    pub resource_type: i8,
    pub resource_name: String,
    /// AlterConfigs semantics: configs not named are reset to defaults.
    pub replace: bool,
    pub ops: Vec<ConfigOp>,
}

/// Apply `ops` to `current`. APPEND and SUBTRACT on a config not set
/// start from its default (`default_of`), as Kafka does.
fn apply_ops(
    current: &BTreeMap<String, String>,
    replace: bool,
    ops: &[ConfigOp],
    default_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut out = if replace {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for op in ops {
        match op {
            ConfigOp::Set(k, v) => {
                out.insert(k.clone(), v.clone());
            }
            ConfigOp::Delete(k) => {
                out.remove(k);
            }
            ConfigOp::Append(k, v) => {
                let mut items: Vec<String> = out
                    .get(k)
                    .cloned()
                    .or_else(|| default_of(k))
                    .map(|s| {
                        s.split(',')
                            .map(|x| x.trim().to_string())
                            .filter(|x| !x.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                for item in v.split(',').map(str::trim) {
                    if !item.is_empty() && !items.iter().any(|x| x == item) {
                        items.push(item.to_string());
                    }
                }
                out.insert(k.clone(), items.join(","));
            }
            ConfigOp::Subtract(k, v) => {
                if let Some(cur) = out.get(k).cloned().or_else(|| default_of(k)) {
                    let drop: Vec<&str> = v.split(',').map(str::trim).collect();
                    let items: Vec<&str> = cur
                        .split(',')
                        .map(str::trim)
                        .filter(|x| !drop.contains(x))
                        .collect();
                    let joined = items.join(",");
                    out.insert(k.clone(), joined);
                }
            }
        }
    }
    out
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
        let manual = !spec.assignments.is_empty();
        if manual && (spec.partitions != -1 || spec.replication_factor != -1) {
            return Err(error(
                ResponseError::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.",
            ));
        }
        let catalog = self.catalog();
        // A one-node broker is a cluster of one; in a cluster, the brokers that registered.
        let brokers: Vec<i32> = if self.is_cluster() {
            catalog.brokers.keys().copied().collect()
        } else {
            vec![self.config.node_id]
        };
        check_assignments(&spec.assignments, &brokers, None)?;
        let partitions = if manual {
            spec.assignments.len() as i32
        } else if spec.partitions == -1 {
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
        let rf = match spec.replication_factor {
            _ if manual => spec.assignments[0].len() as i16,
            -1 if self.config.default_replication_factor > 0 => {
                self.config.default_replication_factor
            }
            -1 => brokers.len().min(3) as i16,
            n => n,
        };
        if rf < 1 || rf as usize > brokers.len() {
            return Err(error(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor {rf} is larger than the number of brokers ({}).",
                    brokers.len()
                ),
            ));
        }
        for (k, v) in &spec.configs {
            validate_topic_config(k, v).map_err(|m| error(ResponseError::InvalidConfig, m))?;
        }
        let replicas = if !self.is_cluster() {
            Vec::new()
        } else if manual {
            spec.assignments.clone()
        } else {
            crate::cluster::catalog::assign_replicas(
                &spec.name,
                &brokers,
                rf as usize,
                0,
                partitions,
            )
        };
        Ok(TopicMeta {
            name: spec.name.clone(),
            id: Uuid::new_v4(),
            partitions,
            configs: spec.configs.clone(),
            replicas,
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
            warn!(error = %e.1, "topic creation failed");
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(error(e.0, e.1.clone()));
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
                warn!(error = %e.1, "topic deletion failed");
                for r in results.iter_mut().filter(|r| r.2 == 0) {
                    r.2 = e.0.code();
                }
            } else {
                for r in results.iter().filter(|r| r.2 == 0) {
                    info!(topic = %r.0, "deleted topic");
                }
            }
        }
        results
    }

    /// Change topic or broker configs (controller only): validate every
    /// resource, then persist and publish the changed ones together. With
    /// `validate_only`, checks and reports without changing anything.
    /// Outcome per alteration, in order: Ok, or a Kafka error code and
    /// message.
    pub async fn alter_configs(
        &self,
        alterations: Vec<ConfigAlteration>,
        validate_only: bool,
    ) -> Vec<Result<(), (i16, String)>> {
        assert_eq!(self.id, CONTROLLER, "alter_configs runs on the controller");
        let _guard = self.controller_lock.lock().await;
        let mut catalog = self.catalog().snapshot();
        let mut outcomes = Vec::with_capacity(alterations.len());
        let mut changed = 0;
        for alt in &alterations {
            let outcome = match alt.resource_type {
                RESOURCE_TOPIC => match catalog.get(&alt.resource_name) {
                    None => Err(error(
                        ResponseError::UnknownTopicOrPartition,
                        format!("Topic {} does not exist", alt.resource_name),
                    )),
                    Some(meta) => {
                        let new = apply_ops(&meta.configs, alt.replace, &alt.ops, |k| {
                            let (_, b) = OBEYED_TOPIC_CONFIGS.iter().find(|(t, _)| *t == k)?;
                            broker_config_value(&self.config, &catalog, b).map(|e| e.value)
                        });
                        new.iter()
                            .try_for_each(|(k, v)| validate_topic_config(k, v))
                            .map_err(|m| error(ResponseError::InvalidConfig, m))
                            .map(|()| new)
                    }
                }
                .map(|new| {
                    if !validate_only
                        && catalog.get(&alt.resource_name).map(|m| &m.configs) != Some(&new)
                    {
                        catalog.set_topic_configs(&alt.resource_name, new);
                        changed += 1;
                    }
                }),
                RESOURCE_BROKER => {
                    let name_ok = alt.resource_name.is_empty()
                        || alt.resource_name == self.config.node_id.to_string();
                    if !name_ok {
                        Err(error(
                            ResponseError::InvalidRequest,
                            format!("Unknown broker {}", alt.resource_name),
                        ))
                    } else {
                        let new = apply_ops(&catalog.broker_configs, alt.replace, &alt.ops, |k| {
                            broker_config_value(&self.config, &catalog, k).map(|e| e.value)
                        });
                        new.iter()
                            .try_for_each(|(k, v)| validate_broker_config(k, v))
                            .map_err(|m| error(ResponseError::InvalidConfig, m))
                            .map(|()| {
                                if !validate_only && catalog.broker_configs != new {
                                    catalog.set_broker_configs(new);
                                    changed += 1;
                                }
                            })
                    }
                }
                t => Err(error(
                    ResponseError::InvalidRequest,
                    format!("Unsupported resource type {t}"),
                )),
            };
            outcomes.push(outcome);
        }
        if changed == 0 {
            return outcomes;
        }
        if let Err(e) = self.publish_catalog(catalog).await {
            warn!(error = %e.1, "config change failed");
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(error(e.0, e.1.clone()));
            }
            return outcomes;
        }
        for (alt, o) in alterations.iter().zip(&outcomes) {
            if o.is_ok() {
                info!(resource = %alt.resource_name, kind = alt.resource_type, "configs changed");
            }
        }
        outcomes
    }

    /// Grow topics to the given partition counts (controller only). A count
    /// not above the current one is INVALID_PARTITIONS. Answered once every
    /// shard has opened the new partitions.
    pub async fn create_partitions(
        &self,
        requests: Vec<PartitionsSpec>,
        validate_only: bool,
    ) -> Vec<Result<(), (i16, String)>> {
        assert_eq!(
            self.id, CONTROLLER,
            "create_partitions runs on the controller"
        );
        let _guard = self.controller_lock.lock().await;
        let mut catalog = self.catalog().snapshot();
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut changed = 0;
        let brokers: Vec<i32> = if self.is_cluster() {
            catalog.brokers.keys().copied().collect()
        } else {
            vec![self.config.node_id]
        };
        for PartitionsSpec {
            name,
            count,
            assignments,
        } in &requests
        {
            let outcome = if requests.iter().filter(|r| &r.name == name).count() > 1 {
                Err(error(
                    ResponseError::InvalidRequest,
                    format!("Duplicate topic name {name} in request"),
                ))
            } else {
                match catalog.get(name).map(|m| m.partitions) {
                    None => Err(error(
                        ResponseError::UnknownTopicOrPartition,
                        format!("Topic {name} does not exist"),
                    )),
                    Some(current) if *count == current => Err(error(
                        ResponseError::InvalidPartitions,
                        format!("Topic already has {current} partitions."),
                    )),
                    Some(current) if *count < current => Err(error(
                        ResponseError::InvalidPartitions,
                        format!(
                            "Topic currently has {current} partitions, which is higher than the requested {count}."
                        ),
                    )),
                    Some(_) if *count > PARTITIONS_PER_TOPIC_MAX => Err(error(
                        ResponseError::InvalidPartitions,
                        format!("Number of partitions must be at most {PARTITIONS_PER_TOPIC_MAX}."),
                    )),
                    Some(current) => {
                        let rf = catalog
                            .get(name)
                            .and_then(|m| m.replicas.first().map(Vec::len))
                            .unwrap_or(1);
                        let checked = match assignments {
                            Some(a) if a.len() as i32 != count - current => Err(error(
                                ResponseError::InvalidReplicaAssignment,
                                format!(
                                    "Increasing the number of partitions by {} but {} assignments provided.",
                                    count - current,
                                    a.len()
                                ),
                            )),
                            Some(a) => check_assignments(a, &brokers, Some(rf)),
                            None => Ok(()),
                        };
                        if checked.is_ok() && !validate_only {
                            // A local topic (one-node broker) keeps no replica lists.
                            catalog.set_partitions(name, *count, assignments.clone());
                            changed += 1;
                        }
                        checked
                    }
                }
            };
            outcomes.push(outcome);
        }
        if changed == 0 {
            return outcomes;
        }
        if let Err(e) = self.publish_catalog(catalog).await {
            warn!(error = %e.1, "partition creation failed");
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(error(e.0, e.1.clone()));
            }
            return outcomes;
        }
        for (r, o) in requests.iter().zip(&outcomes) {
            if o.is_ok() {
                info!(topic = %r.name, partitions = r.count, "added partitions");
            }
        }
        outcomes
    }

    /// Persist `catalog` and make every shard adopt it. In a cluster: propose it to the
    /// metadata log (applied only if no other change came first, see
    /// `cluster::metadata`) and return once this broker applied it.
    async fn publish_catalog(
        &self,
        catalog: crate::cluster::catalog::Catalog,
    ) -> Result<(), (ResponseError, String)> {
        if self.is_cluster() {
            return crate::cluster::metadata::publish(self, catalog)
                .await
                .map_err(|e| (e.kafka_error(), e.to_string()));
        }
        let storage = |e: String| (ResponseError::KafkaStorageError, e);
        catalog
            .save(&self.config.data_dir)
            .map_err(|e| storage(e.to_string()))?;
        let catalog = Arc::new(catalog);
        let results = self
            .invoke_on_all(move |shard| {
                let c = catalog.clone();
                async move { shard.apply_catalog(c).await.map_err(|e| e.to_string()) }
            })
            .await
            .map_err(|e| storage(e.to_string()))?;
        results
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map_err(storage)?;
        Ok(())
    }
}

impl Shard {
    /// InitProducerId without a transactional id in a cluster (controller only): ids come
    /// from blocks this broker claims in the metadata log (`Catalog::next_producer_id`), so
    /// no id is handed out twice across the cluster; a restart claims a new block. An id a
    /// producer presents (KIP-360) is known if the cluster has handed it out.
    pub async fn init_producer_id_in_cluster(
        &self,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        use crate::constants::PRODUCER_ID_BLOCK_SIZE;
        const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
        match current {
            Some((id, _)) if id < 0 || id >= self.catalog().next_producer_id => {
                return Err(INVALID_PRODUCER_ID_MAPPING);
            }
            Some((id, epoch)) if epoch < i16::MAX - 1 => return Ok((id, epoch + 1)),
            _ => {}
        }
        let _guard = self.controller_lock.lock().await;
        let (next, end) = self.cluster_producer_ids.get();
        if next < end {
            self.cluster_producer_ids.set((next + 1, end));
            return Ok((next, 0));
        }
        for _ in 0..crate::constants::METADATA_CONFLICT_RETRIES {
            let mut catalog = self.catalog().snapshot();
            let start = catalog.next_producer_id;
            let Some(end) = start.checked_add(PRODUCER_ID_BLOCK_SIZE) else {
                return Err(ResponseError::UnknownServerError.code());
            };
            catalog.next_producer_id = end;
            match crate::cluster::metadata::publish(self, catalog).await {
                Ok(()) => {
                    info!(start, end, "claimed a producer id block");
                    self.cluster_producer_ids.set((start + 1, end));
                    return Ok((start, 0));
                }
                Err(crate::cluster::metadata::MetadataError::Conflict) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot claim a producer id block");
                    return Err(e.kafka_error().code());
                }
            }
        }
        Err(ResponseError::NotController.code())
    }

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
