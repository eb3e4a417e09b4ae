//! # Sluice
//!
//! A Kafka-compatible message broker: io_uring, thread-per-core, storage
//! optimized. See ARCHITECTURE.md for the tour.
//!
//! # Layout
//! - [`runtime`]: the only module that knows about glommio: executors, tasks,
//!   timers, sockets, shard-to-shard channels and direct-I/O files.
//! - [`storage`]: per-partition logs of segment files with sparse offset and
//!   time indexes, group commit and crash recovery.
//! - [`group`]: the group coordinator: consumer groups and committed offsets
//!   (stored in the internal topic `__consumer_offsets`).
//! - [`cli`]: the admin commands (`sluice topic ...`, `sluice group ...`) and their small
//!   blocking Kafka client.
//! - [`server`]: connections (framing, pipelining, bad input) and one handler
//!   file per Kafka API.
//! - [`shard`]: the state one core owns, `invoke_on`, the controller.
//! - [`cluster`]: the topic catalog and producer id blocks (written by shard 0).
//! - [`broker`], [`lifecycle`], [`config`]: startup checks, graceful stop,
//!   settings with descriptions and bounds.
//! - [`metrics`]: per-shard counters and histograms (no locks), merged and
//!   served as Prometheus/OpenMetrics text by shard 0 on `metrics_listen`.
//! - [`alloc`]: the allocator guard against hostile array lengths.
//! - [`types`], [`constants`]: newtypes for ids and offsets; every limit.
pub mod alloc;

/// Unit tests run with the broker's allocator (hostile array lengths in the fuzz smoke test
/// reserve address space instead of aborting, as in `sluice serve`).
#[cfg(test)]
#[global_allocator]
static ALLOC: alloc::GuardedAlloc = alloc::GuardedAlloc;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod constants;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod lifecycle;
pub mod metrics;
pub mod replication;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod storage;
pub mod txn;
pub mod types;
