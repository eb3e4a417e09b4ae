//! The topic catalog: which topics exist, their ids, partition counts and
//! configs.
//!
//! Ownership: shard 0 (the controller) is the only writer. It persists the
//! catalog to `<data>/__cluster/catalog.json` (write to a temporary file,
//! fsync, rename, fsync the directory), then hands every shard a copy. Shards
//! read only their own copy, so the produce and fetch paths never touch shared
//! mutable state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::constants::TOPIC_NAME_LEN_MAX;

/// One topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    /// Topic id (KIP-516), used by Fetch v13+ and Produce v13.
    pub id: Uuid,
    pub partitions: i32,
    /// Topic-level config overrides (`retention.ms`, ...), as strings.
    pub configs: BTreeMap<String, String>,
    /// In a cluster: each partition's replicas (broker ids), a Raft group. Empty: the
    /// partition is local to each broker (a one-node broker's topics, `__consumer_offsets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<i32>>,
}

impl TopicMeta {
    /// Whether the topic's partitions are Raft groups across brokers.
    pub fn is_replicated(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// Partition `p`'s replicas (empty for a local topic).
    pub fn replicas_of(&self, p: i32) -> &[i32] {
        usize::try_from(p)
            .ok()
            .and_then(|p| self.replicas.get(p))
            .map_or(&[], Vec::as_slice)
    }
}

/// A broker of the cluster, as it registered itself in the metadata log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    /// The Kafka listener clients are told about.
    pub host: String,
    pub port: i32,
    /// Its RPC listener, for other brokers.
    pub rpc: String,
    pub shards: usize,
    /// Its data directory's incarnation (`cluster::incarnation`); 0 for a registration from
    /// before incarnations.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub incarnation: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// `rf` replicas for each of partitions `from..to` of topic `name`, spread over `brokers`
/// (sorted ids): partition p's replicas start at a topic-dependent offset plus p, so replicas
/// and (the first replica being the preferred leader) leaders spread evenly.
pub fn assign_replicas(
    name: &str,
    brokers: &[i32],
    rf: usize,
    from: i32,
    to: i32,
) -> Vec<Vec<i32>> {
    let n = brokers.len();
    if n == 0 || rf == 0 {
        return Vec::new();
    }
    let start = crate::types::fnv1a(name.as_bytes()) as usize % n;
    (from..to)
        .map(|p| {
            (0..rf.min(n))
                .map(|i| brokers[(start + p as usize + i) % n])
                .collect()
        })
        .collect()
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// All topics, plus the cluster id.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Catalog {
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Dynamic broker configs set with AlterConfigs (`log.retention.ms`,
    /// ...): defaults for topics without their own override.
    #[serde(default)]
    pub broker_configs: BTreeMap<String, String>,
    /// In a cluster: producer ids below this were handed to a broker as a block (the
    /// metadata log allocates them, so no id is handed out twice cluster-wide).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_producer_id: i64,
    /// In a cluster: the brokers that registered, by id (empty on a one-node broker).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Bumped on every change; a shard ignores an older copy.
    pub version: u64,
    #[serde(skip)]
    by_id: HashMap<Uuid, String>,
    /// The version this copy was taken from by [`Catalog::snapshot`]: a change made to the
    /// copy is proposed to the cluster's metadata log as "on top of that version".
    #[serde(skip)]
    pub based_on: u64,
}

/// Errors loading or saving the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog file {path} is damaged: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Why a topic name is refused (Kafka's rules).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(format!(
            "topic name is longer than {TOPIC_NAME_LEN_MAX} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!("topic name contains illegal character {c:?}"));
    }
    Ok(())
}

impl Catalog {
    pub fn file_path(data_dir: &Path) -> PathBuf {
        data_dir.join("__cluster").join("catalog.json")
    }

    /// Load the catalog, or create an empty one with a fresh cluster id.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, CatalogError> {
        if let Some(c) = Self::load(data_dir)? {
            return Ok(c);
        }
        let c = Catalog {
            cluster_id: Uuid::new_v4().simple().to_string(),
            ..Default::default()
        };
        c.save(data_dir)?;
        Ok(c)
    }

    /// The catalog file if there is one, else an empty catalog at version 0 (a cluster
    /// member's starting point before it applied anything of the metadata log; nothing is
    /// written).
    pub fn load_cached(data_dir: &Path) -> Result<Self, CatalogError> {
        Ok(Self::load(data_dir)?.unwrap_or_default())
    }

    /// The catalog file, or None if there is none.
    fn load(data_dir: &Path) -> Result<Option<Self>, CatalogError> {
        let path = Self::file_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut c: Catalog = serde_json::from_slice(&bytes)
                    .map_err(|source| CatalogError::Parse { path, source })?;
                c.reindex();
                Ok(Some(c))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CatalogError::Io { path, source }),
        }
    }

    /// Persist atomically and durably. Blocking: called only by the
    /// controller for admin operations, never on the data path.
    pub fn save(&self, data_dir: &Path) -> Result<(), CatalogError> {
        let path = Self::file_path(data_dir);
        let bytes = serde_json::to_vec_pretty(self).expect("catalog serializes");
        crate::runtime::file::replace_file_durable_blocking(&path, &bytes).map_err(|source| {
            CatalogError::Io {
                path: path.clone(),
                source,
            }
        })
    }

    fn reindex(&mut self) {
        self.by_id = self
            .topics
            .values()
            .map(|t| (t.id, t.name.clone()))
            .collect();
    }

    pub fn get(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn name_of(&self, id: &Uuid) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// Add a topic (the caller has validated it).
    pub fn insert(&mut self, meta: TopicMeta) {
        self.by_id.insert(meta.id, meta.name.clone());
        self.topics.insert(meta.name.clone(), meta);
        self.version += 1;
    }

    pub fn remove(&mut self, name: &str) -> Option<TopicMeta> {
        let meta = self.topics.remove(name)?;
        self.by_id.remove(&meta.id);
        self.version += 1;
        Some(meta)
    }

    /// Replace a topic's config overrides (the caller has validated them).
    /// Returns false if the topic does not exist.
    pub fn set_topic_configs(&mut self, name: &str, configs: BTreeMap<String, String>) -> bool {
        let Some(meta) = self.topics.get_mut(name) else {
            return false;
        };
        meta.configs = configs;
        self.version += 1;
        true
    }

    /// Grow a topic to `partitions` (the caller has checked it only grows). A replicated
    /// topic's new partitions get `assignments` (checked by the caller), or an even spread;
    /// a local topic ignores them.
    pub fn set_partitions(
        &mut self,
        name: &str,
        partitions: i32,
        assignments: Option<Vec<Vec<i32>>>,
    ) -> bool {
        let Some(meta) = self.topics.get_mut(name) else {
            return false;
        };
        assert!(partitions >= meta.partitions, "partitions only grow");
        if let Some(a) = assignments.filter(|_| meta.is_replicated()) {
            meta.replicas.extend(a);
        } else if meta.is_replicated() {
            let rf = meta.replicas.first().map_or(1, Vec::len);
            let brokers: Vec<i32> = self.brokers.keys().copied().collect();
            let more = assign_replicas(name, &brokers, rf, meta.partitions, partitions);
            meta.replicas.extend(more);
        }
        meta.partitions = partitions;
        self.version += 1;
        true
    }

    /// Replace the dynamic broker configs (validated by the caller).
    pub fn set_broker_configs(&mut self, configs: BTreeMap<String, String>) {
        self.broker_configs = configs;
        self.version += 1;
    }

    /// Does partition `p` of `topic` exist?
    pub fn has_partition(&self, topic: &str, p: i32) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| p >= 0 && p < t.partitions)
    }

    /// A copy that carries its id index (the index is not serialized).
    pub fn snapshot(&self) -> Catalog {
        let mut c = self.clone();
        c.reindex();
        c.based_on = self.version;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders.v1_eu-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load_or_create(dir.path()).unwrap();
        let id = Uuid::new_v4();
        c.insert(TopicMeta {
            name: "t".into(),
            id,
            partitions: 3,
            configs: BTreeMap::new(),
            replicas: Vec::new(),
        });
        c.save(dir.path()).unwrap();
        let back = Catalog::load_or_create(dir.path()).unwrap();
        assert_eq!(back.cluster_id, c.cluster_id);
        assert_eq!(back.name_of(&id), Some("t"));
        assert!(back.has_partition("t", 2));
        assert!(!back.has_partition("t", 3));
    }

    #[test]
    fn replicas_spread_over_brokers() {
        let brokers = [1, 2, 3];
        let a = assign_replicas("orders", &brokers, 3, 0, 6);
        assert_eq!(a.len(), 6);
        let mut leaders = [0; 4];
        for r in &a {
            let mut sorted = r.clone();
            sorted.sort();
            assert_eq!(sorted, vec![1, 2, 3], "three distinct replicas");
            leaders[r[0] as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2], "preferred leaders spread evenly");
        let two = assign_replicas("t", &brokers, 2, 0, 3);
        assert!(two.iter().all(|r| r.len() == 2 && r[0] != r[1]));
        assert!(assign_replicas("t", &[], 3, 0, 3).is_empty());
        // Growing a topic continues the same pattern.
        assert_eq!(
            assign_replicas("orders", &brokers, 3, 4, 6),
            a[4..].to_vec()
        );
    }
}
