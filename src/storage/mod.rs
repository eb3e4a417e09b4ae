//! Storage: per-partition append-only logs made of segment files.
//!
//! SPEC (being implemented):
//!
//! On disk, per partition directory `<data>/<topic>-<partition>/`:
//! - `<base offset, 20 digits>.log`: record batches exactly as received from
//!   producers, with the base offset (bytes 0..8) rewritten. Written with
//!   glommio direct I/O; the active segment is preallocated, so bytes after
//!   the last valid batch are zero.
//! - `<base>.index`: sparse offset index, entries (relative offset u32 BE,
//!   position u32 BE), one per `index_interval_bytes` of log.
//! - `<base>.timeindex`: time index, entries (timestamp i64 BE, relative
//!   offset u32 BE), appended when a batch raises the segment's max timestamp.
//!   Index files of sealed segments are read through memmap2; the active
//!   segment's index lives in memory and is written when the segment is sealed
//!   (and rebuilt by the recovery scan after a crash).
//!
//! Contract of [`PartitionLog`]: owned by exactly one shard (it is `!Send`),
//! all methods are called from that shard only.
