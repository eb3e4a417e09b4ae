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
pub mod prefix;
pub mod replica;
pub mod store;
pub mod wire;

#[cfg(test)]
mod sim_test;

/// The log's bytes from its start to the high watermark (what a consumer can read), for tests.
#[cfg(test)]
pub(crate) async fn committed_log(log: &crate::storage::log::PartitionLog) -> bytes::Bytes {
    committed_log_from(log, log.log_start_offset().0).await
}

/// [`committed_log`] from the batch holding `from` (at least the log start) on.
#[cfg(test)]
pub(crate) async fn committed_log_from(
    log: &crate::storage::log::PartitionLog,
    from: i64,
) -> bytes::Bytes {
    use crate::storage::batch::BatchIter;
    let hw = log.high_watermark().0;
    let mut bytes = Vec::new();
    let mut at = from.max(log.log_start_offset().0);
    while at < hw {
        let data = log
            .read(crate::types::Offset(at), 1 << 16)
            .await
            .unwrap_or_else(|e| panic!("read at {at}: {e}"));
        let mut last = at;
        for item in BatchIter::new(&data.records) {
            last = item.expect("stored batches parse").1.next_offset();
        }
        assert!(last > at, "no progress reading at {at}");
        bytes.extend_from_slice(&data.records);
        at = last;
    }
    bytes.into()
}

pub use replica::{Acks, Replica, ReplicaConfig, ReplicaError};
