//! Replication: each partition with replication factor R is a Raft group of R replicas on R
//! brokers, run on the shard that owns the partition (raft-rs, sans-IO, driven by the shard's
//! own executor: no second runtime, nothing shared between shards).
//!
//! - [`entry`]: Raft entries are the Kafka record batches of the partition log (one entry per
//!   batch, Raft's own entries as control batches); the Raft term is the Kafka leader epoch.
//! - [`store`]: what `raft::Storage` reads, beside the log, and the `raft-state` file.
//! - [`replica`]: one replica: propose (a leader's produce), step, tick, persist and apply.
//! - [`driver`]: the task that drives a replica in real time (ticks, inbox, transport).
//! - [`wire`]: the broker-to-broker frame that carries Raft messages, batched per broker pair
//!   and shard.
//!
//! The safety argument is in ARCHITECTURE.md, "Replication". The simulation in `sim_test`
//! runs several replicas in one process over simulated disks and a seeded network.

pub mod driver;
pub mod entry;
pub mod replica;
pub mod store;
pub mod wire;

#[cfg(test)]
mod sim_test;

pub use replica::{Acks, Replica, ReplicaConfig, ReplicaError};
