//! Storage: per-partition append-only logs made of segment files.
//!
//! # On-disk format
//!
//! On disk, per partition directory `<data>/<topic>-<partition>/`:
//! - `<base offset, 20 digits>.log`: record batches exactly as received from
//!   producers, with the base offset (bytes 0..8) rewritten. Written with
//!   glommio direct I/O; the active segment is preallocated, so bytes after
//!   the last valid batch are zero.
//! - `<base>.index`: sparse offset index, entries (relative offset u32 BE,
//!   position u32 BE), one per `index_interval_bytes` of log.
//! - `<base>.timeindex`: time index, entries (timestamp i64 BE, relative
//!   offset u32 BE), appended when a batch raises the segment's max timestamp
//!   and at least `index_interval_bytes` of log passed since the previous
//!   entry (the first raise always gets one); sealing adds a final entry with
//!   the segment's max timestamp, so a sealed segment's last entry is its max.
//!   Index files of sealed segments are read through memmap2; the active
//!   segment's index lives in memory and is written when the segment is sealed
//!   (and rebuilt by the recovery scan after a crash).
//! - `<offset>.snapshot`: idempotent-producer state covering the batches
//!   below `offset`, written when a segment is sealed and at close
//!   ([`producer_state`]).
//! - `clean-shutdown`: written last by a clean close and removed by the
//!   next open before it accepts appends; lets that open trust the last
//!   segment without scanning it ([`clean_shutdown`]).
//! - `log-start-offset`: the log start offset in decimal, written (temporary
//!   file, fdatasync, rename, directory sync) when DeleteRecords moves the
//!   start inside a segment. Without it, the log start is the first
//!   segment's base. Retention (a periodic pass per shard, see
//!   [`PartitionLog::enforce_retention`]) and DeleteRecords delete whole
//!   sealed segments only, never the active one.
//!
//! Contract of [`PartitionLog`]: owned by exactly one shard (it is `!Send`),
//! all methods are called from that shard only.
//!
//! # Modules
//! - [`batch`]: zero-copy view and validation of a RecordBatch header.
//! - [`index`]: sparse offset and time indexes (same bytes in memory and on disk).
//! - [`segment`]: segment file names, per-segment state, the batch scanner.
//! - [`recovery`]: opening a directory after a clean shutdown or a crash.
//! - [`clean_shutdown`]: the marker a clean close leaves for the next open.
//! - [`log`]: [`PartitionLog`], the write path (group commit), reads, close.
//! - [`producer_state`]: idempotent producers' epochs and last batches per
//!   partition, and its snapshot files (`<offset>.snapshot`).
//! - [`error`]: [`StorageError`] and its Kafka error codes.

pub mod batch;
pub mod clean_shutdown;
pub mod cleaner;
pub mod error;
pub mod group_sync;
pub mod index;
pub mod io;
pub mod journal;
pub mod leader_epoch;
pub mod log;
pub mod producer_state;
pub mod recovery;
pub mod segment;
pub mod sim;

#[cfg(test)]
mod clean_sim_test;
#[cfg(test)]
mod sim_test;
#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use log::{
    AppendInfo, Chunks, FetchChunks, FetchData, FlushPolicy, LogConfig, OpenedFrom, PartitionLog,
    ProducerInfo,
};
