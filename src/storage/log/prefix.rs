//! A compacted prefix taken from another replica: a replica of a compacted partition seeded
//! by a Raft snapshot holds nothing below the snapshot's base, while its leader holds the
//! compacted log there (the latest record of every key, which the cleaner keeps for ever).
//! The replica copies those batches, byte for byte and at their offsets (with the gaps
//! compaction left), into segment files beside its empty log, then takes them in at once:
//!
//! 1. [`PartitionLog::prefix_writer`] on a log that is empty (as `reset_to_empty` leaves
//!    it); stray prefix files of an earlier attempt go first.
//! 2. [`PrefixWriter::push`] the batches in offset order: each is CRC-checked and written to
//!    `<base>.log.prefix` files of at most `segment.bytes` (direct I/O); a file is fdatasynced
//!    when it is full.
//! 3. [`PartitionLog::adopt_prefix`]: the last file is fdatasynced, then the flusher (under
//!    the admin lock, nothing queued) renames every file to its segment name, syncs the
//!    directory, writes the log start, journals a cut at the log's end (the reset journaled
//!    one below the prefix, which a replay would otherwise apply to it), and rebuilds the
//!    log's state from the disk with the recovery code (which builds the prefix segments'
//!    indexes and the producer state).
//!
//! Crash safety is the caller's flag (the replica's `installing` in `raft-state`): until the
//! prefix is adopted, a restart empties the log again and the copy starts over; prefix files
//! a crash left are removed at open (`clean::recover_swap`).

use std::path::PathBuf;

use tracing::debug;

use super::clean::AlignedWriter;
use super::*;
use crate::storage::batch;
use crate::storage::error::{IoContext, StorageError};
use crate::storage::io::Env;
use crate::storage::journal::Entry;
use crate::storage::segment::{LOG_SUFFIX, segment_file_name, segment_path};

/// The suffix of a prefix segment file not yet taken in.
pub const PREFIX_SUFFIX: &str = ".prefix";

fn prefix_path(dir: &std::path::Path, base: i64) -> PathBuf {
    dir.join(format!(
        "{}{PREFIX_SUFFIX}",
        segment_file_name(base, LOG_SUFFIX)
    ))
}

/// Writes a prefix's batches into segment files (see the module documentation).
pub struct PrefixWriter {
    env: Env,
    dir: PathBuf,
    /// The log's end: every batch of the prefix lies below it.
    end: i64,
    segment_bytes: u64,
    /// The next batch begins at or past this offset.
    next: i64,
    /// The file being written: its base and writer.
    current: Option<(i64, AlignedWriter)>,
    /// Files written and fdatasynced, by base.
    done: Vec<i64>,
    bytes: u64,
}

impl PrefixWriter {
    /// The offset the next batch may begin at (after the last one taken).
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// Whether every offset below the log's end is covered (the prefix is complete).
    pub fn is_complete(&self) -> bool {
        self.next >= self.end
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Skip to `offset` (the source's log start moved past what was asked): batches below
    /// it are no longer taken.
    pub fn skip_to(&mut self, offset: i64) {
        self.next = self.next.max(offset);
    }

    /// Take the whole batches at the start of `records` (a partial batch at the end is left,
    /// as a Fetch response may end with one): those below the next offset are skipped, those
    /// at or past the log's end end the prefix. Returns how many were taken. A batch that
    /// fails its CRC check is an error.
    pub async fn push(&mut self, records: &[u8]) -> Result<usize, StorageError> {
        let mut taken = 0;
        let mut pos = 0;
        while records.len() - pos >= batch::HEADER_LEN {
            let rest = &records[pos..];
            match batch::batch_size(rest) {
                Ok(size) if size <= rest.len() => {}
                _ => break,
            }
            let (h, size) = batch::validate_batch(rest)?;
            pos += size;
            if h.base_offset >= self.end {
                self.next = self.end;
                break;
            }
            if h.base_offset < self.next && h.next_offset() <= self.next {
                continue;
            }
            if h.next_offset() > self.end {
                return Err(StorageError::NotContiguous {
                    expected: self.end,
                    got: h.next_offset(),
                });
            }
            self.write(&h, &rest[..size]).await?;
            self.next = h.next_offset();
            taken += 1;
        }
        Ok(taken)
    }

    async fn write(&mut self, h: &batch::BatchHeader, bytes: &[u8]) -> Result<(), StorageError> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, w)| w.len() + bytes.len() as u64 > self.segment_bytes);
        if full {
            self.finish_file().await?;
        }
        if self.current.is_none() {
            let base = h.base_offset;
            let path = prefix_path(&self.dir, base);
            let file = self
                .env
                .disk
                .open_rw(&path, true)
                .await
                .ctx(|| format!("creating {}", path.display()))?;
            file.truncate(0)
                .await
                .ctx(|| format!("truncating {}", path.display()))?;
            self.current = Some((base, AlignedWriter::new(file)));
        }
        let (_, w) = self.current.as_mut().expect("a file is open");
        w.push(bytes).await?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Write, cut and fdatasync the file being written.
    async fn finish_file(&mut self) -> Result<(), StorageError> {
        if let Some((base, w)) = self.current.take() {
            w.finish()
                .await
                .ctx(|| format!("writing {}", prefix_path(&self.dir, base).display()))?;
            self.done.push(base);
        }
        Ok(())
    }
}

impl PartitionLog {
    /// Begin taking a prefix (see the module documentation). The log must be empty: nothing
    /// on disk but its empty active segment.
    pub async fn prefix_writer(&self) -> Result<PrefixWriter, StorageError> {
        let (end, empty) = {
            let st = self.state.borrow();
            let empty = st.segments.len() == 1 && st.segments[0].size == 0;
            (st.log_end, empty && st.queue.is_empty())
        };
        if !empty {
            return Err(StorageError::InvalidRecord(format!(
                "{}: a prefix goes into an empty log only",
                self.dir.display()
            )));
        }
        let names = self
            .env
            .disk
            .list_dir(&self.dir)
            .await
            .ctx(|| format!("listing {}", self.dir.display()))?;
        for n in names {
            if let Some(name) = n.to_str().filter(|n| n.ends_with(PREFIX_SUFFIX)) {
                remove_if_exists(&self.env, &self.dir.join(name)).await?;
            }
        }
        Ok(PrefixWriter {
            env: self.env.clone(),
            dir: self.dir.clone(),
            end,
            segment_bytes: self.cfg().segment_bytes.max(1),
            next: i64::MIN,
            current: None,
            done: Vec::new(),
            bytes: 0,
        })
    }

    /// Take the prefix `w` wrote in, with `log_start` as the log start (see the module
    /// documentation). The log's state is rebuilt from the disk.
    pub async fn adopt_prefix(
        &self,
        mut w: PrefixWriter,
        log_start: Offset,
    ) -> Result<(), StorageError> {
        w.finish_file().await?;
        let bases = std::mem::take(&mut w.done);
        self.flusher_request(
            |st| st.prefix_request = Some((log_start.0, bases)),
            |st| st.prefix_request.is_some(),
        )
        .await
    }

    /// The flusher's part of [`PartitionLog::adopt_prefix`].
    pub(super) async fn take_prefix_in(
        &self,
        w: &mut Writer,
        log_start: i64,
        bases: &[i64],
    ) -> Result<(), StorageError> {
        let _admin = self.admin_lock.lock().await;
        self.write_all_behind(w).await?;
        let end = {
            let st = self.state.borrow();
            if st.segments.len() != 1 || st.segments[0].size != 0 {
                return Err(StorageError::InvalidRecord(format!(
                    "{}: the log took appends while its prefix was copied",
                    self.dir.display()
                )));
            }
            st.log_end
        };
        for &b in bases {
            let from = prefix_path(&self.dir, b);
            let to = segment_path(&self.dir, b, LOG_SUFFIX);
            self.env
                .disk
                .rename(&from, &to)
                .await
                .ctx(|| format!("renaming {}", from.display()))?;
        }
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        retention::write_log_start_file(&self.env, &self.dir, log_start).await?;
        // The reset journaled a cut below the prefix: a replay ending with it would cut the
        // prefix off again. A cut at the end, journaled after it, leaves the prefix alone
        // (until then a crash finds the install unfinished, and it starts over).
        if let Some(j) = self.journal() {
            j.record(Entry::Truncate {
                name: self.name.clone(),
                to: end,
            })
            .await
            .map_err(|e| {
                StorageError::io(
                    format!("journaling the prefix of {}", self.dir.display()),
                    e,
                )
            })?;
            self.state.borrow_mut().journal_after_cut = true;
        }
        self.adopt_disk_state(w, end, end, Vec::new(), |st| {
            st.log_start = log_start;
            st.clean_end = 0;
        })
        .await?;
        debug!(dir = %self.dir.display(), log_start, end, segments = bases.len(), "took a compacted prefix in");
        Ok(())
    }
}
