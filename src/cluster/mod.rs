//! Cluster-wide metadata and the broker's part in a cluster: the topic catalog, producer ids,
//! the seeds a cluster starts from, the metadata log (a Raft group of every broker), the
//! broker-to-broker links, and each shard's replicas.
pub mod catalog;
pub mod incarnation;
pub mod metadata;
pub mod node;
pub mod producer_ids;
pub mod remote;
pub mod rpc;
pub mod seeds;
