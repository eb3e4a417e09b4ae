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
    /// Bumped on every change; a shard ignores an older copy.
    pub version: u64,
    #[serde(skip)]
    by_id: HashMap<Uuid, String>,
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
        let path = Self::file_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut c: Catalog = serde_json::from_slice(&bytes)
                    .map_err(|source| CatalogError::Parse { path, source })?;
                c.reindex();
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = Catalog {
                    cluster_id: Uuid::new_v4().simple().to_string(),
                    ..Default::default()
                };
                c.save(data_dir)?;
                Ok(c)
            }
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

    /// Grow a topic to `partitions` (the caller has checked it only grows).
    pub fn set_partitions(&mut self, name: &str, partitions: i32) -> bool {
        let Some(meta) = self.topics.get_mut(name) else {
            return false;
        };
        assert!(partitions >= meta.partitions, "partitions only grow");
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
        });
        c.save(dir.path()).unwrap();
        let back = Catalog::load_or_create(dir.path()).unwrap();
        assert_eq!(back.cluster_id, c.cluster_id);
        assert_eq!(back.name_of(&id), Some("t"));
        assert!(back.has_partition("t", 2));
        assert!(!back.has_partition("t", 3));
    }
}
