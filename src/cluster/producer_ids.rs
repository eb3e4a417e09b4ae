//! Producer ids for idempotent producers (InitProducerId), unique across
//! restarts.
//!
//! Ownership: only the controller (shard 0) allocates; other shards ask it
//! with `invoke_on(CONTROLLER, ..)` (InitProducerId is rare: once per
//! producer session). Ids are handed out from blocks of
//! `PRODUCER_ID_BLOCK_SIZE`: before the first id of a block is used, the
//! start of the *next* block is persisted to
//! `<data>/__cluster/producer_ids.json` (write a temporary file, fsync,
//! rename, fsync the directory). After a restart, allocation resumes at the
//! persisted value, so an id is never handed out twice; at most one block of
//! ids is skipped per restart.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::constants::PRODUCER_ID_BLOCK_SIZE;

/// Errors loading or persisting the producer id block.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdsError {
    #[error("producer id file I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("producer id file {path} is damaged: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("producer ids exhausted")]
    Exhausted,
}

/// The persisted state: every id below `next_block_start` may have been
/// handed out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Persisted {
    next_block_start: i64,
}

/// The controller's allocator. `!Sync`: lives on shard 0 only.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    /// Next id to hand out.
    next: Cell<i64>,
    /// End (exclusive) of the block persisted as used; `next == block_end`
    /// means a new block must be persisted first.
    block_end: Cell<i64>,
}

impl ProducerIds {
    pub fn file_path(data_dir: &Path) -> PathBuf {
        data_dir.join("__cluster").join("producer_ids.json")
    }

    /// Load the persisted block start (0 if there is no file yet).
    /// Blocking: runs once on the controller.
    pub fn load(data_dir: &Path) -> Result<ProducerIds, ProducerIdsError> {
        let path = Self::file_path(data_dir);
        let start = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted =
                    serde_json::from_slice(&bytes).map_err(|source| ProducerIdsError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                p.next_block_start
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(ProducerIdsError::Io { path, source }),
        };
        assert!(start >= 0, "negative producer id block start");
        Ok(ProducerIds {
            path,
            next: Cell::new(start),
            block_end: Cell::new(start),
        })
    }

    /// A producer id never handed out before, here or before a restart.
    /// Persists a new block (blocking fsyncs, once per
    /// `PRODUCER_ID_BLOCK_SIZE` ids) before using its first id.
    pub fn allocate(&self) -> Result<i64, ProducerIdsError> {
        let next = self.next.get();
        if next == self.block_end.get() {
            let end = next
                .checked_add(PRODUCER_ID_BLOCK_SIZE)
                .ok_or(ProducerIdsError::Exhausted)?;
            self.persist(end)?;
            self.block_end.set(end);
        }
        assert!(self.next.get() < self.block_end.get());
        self.next.set(next + 1);
        Ok(next)
    }

    /// Was `id` possibly handed out (by this or an earlier run)?
    pub fn is_issued(&self, id: i64) -> bool {
        id >= 0 && id < self.next.get()
    }

    fn persist(&self, next_block_start: i64) -> Result<(), ProducerIdsError> {
        let path = &self.path;
        let io = |source| ProducerIdsError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&Persisted { next_block_start }).expect("serializes");
        crate::runtime::file::replace_file_durable_blocking(path, &bytes).map_err(io)?;
        // Paired check: what is on disk is what was meant.
        let back: Persisted =
            serde_json::from_slice(&std::fs::read(path).map_err(io)?).map_err(|source| {
                ProducerIdsError::Parse {
                    path: path.clone(),
                    source,
                }
            })?;
        assert_eq!(back.next_block_start, next_block_start);
        Ok(())
    }
}

/// What InitProducerId hands out for a producer without a transactional id.
/// `current` is the (id, epoch) the request carries (KIP-360, v3+), if any.
/// Returns (producer id, epoch) or a Kafka error code.
pub fn init_producer_id(ids: &ProducerIds, current: Option<(i64, i16)>) -> Result<(i64, i16), i16> {
    const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    const UNKNOWN_SERVER_ERROR: i16 = -1;
    let fresh = || {
        ids.allocate().map(|id| (id, 0)).map_err(|e| {
            tracing::warn!(error = %e, "cannot allocate a producer id");
            UNKNOWN_SERVER_ERROR
        })
    };
    match current {
        None => fresh(),
        Some((id, _)) if !ids.is_issued(id) => Err(INVALID_PRODUCER_ID_MAPPING),
        // Epoch exhausted: a new id, as Kafka does.
        Some((_, epoch)) if epoch >= i16::MAX - 1 => fresh(),
        Some((id, epoch)) => Ok((id, epoch + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::load(dir.path()).unwrap();
        let first: Vec<i64> = (0..1500).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first, (0..1500).collect::<Vec<_>>());
        drop(ids);
        let ids = ProducerIds::load(dir.path()).unwrap();
        // Blocks [0, 1000) and [1000, 2000) were reserved: resume at 2000.
        assert_eq!(ids.allocate().unwrap(), 2000);
        assert!(ids.is_issued(1499) && ids.is_issued(2000) && !ids.is_issued(2001));
    }

    #[test]
    fn epochs_bump_and_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::load(dir.path()).unwrap();
        assert_eq!(init_producer_id(&ids, None), Ok((0, 0)));
        assert_eq!(init_producer_id(&ids, Some((0, 0))), Ok((0, 1)));
        assert_eq!(init_producer_id(&ids, Some((0, 7))), Ok((0, 8)));
        assert_eq!(init_producer_id(&ids, Some((0, i16::MAX - 1))), Ok((1, 0)));
        assert_eq!(init_producer_id(&ids, Some((99, 0))), Err(49));
    }

    #[test]
    fn damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = ProducerIds::file_path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"next_block").unwrap();
        assert!(matches!(
            ProducerIds::load(dir.path()),
            Err(ProducerIdsError::Parse { .. })
        ));
    }
}
