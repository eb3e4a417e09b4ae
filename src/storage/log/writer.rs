//! The group-commit writer: the flusher task that writes queued batches with direct I/O,
//! fdatasyncs, moves the high watermark, seals segments and writes producer snapshots.

use std::collections::VecDeque;
use std::io;
use std::rc::Weak;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, warn};

use super::*;
use crate::storage::clean_shutdown::{CLEAN_SHUTDOWN_FILE, CleanShutdown};
use crate::storage::error::{IoContext, StorageError};
use crate::storage::index::{self};
use crate::storage::io::SegmentFile;
use crate::storage::journal::{Entry, Journal, Source};
use crate::storage::producer_state::snapshot_file_name;
use crate::storage::recovery;
use crate::storage::segment::{
    INDEX_SUFFIX, Scanner, SegmentIndex, TIME_INDEX_SUFFIX, segment_path,
};

/// Largest single write issued by the flusher.
pub(super) const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// Largest preallocation step of the active segment: fdatasync into a
/// preallocated region costs ~0.3 ms vs ~4 ms when extending the file
/// (GLOMMIO.md §4).
pub(super) const PREALLOCATE_STEP_BYTES: u64 = 16 << 20;
/// Smallest step: what a new, empty partition reserves.
pub(super) const PREALLOCATE_MIN_BYTES: u64 = 64 << 10;

/// How far to preallocate the active segment once `end` bytes of it are
/// written: past `end` by a step as large as what the segment holds, at
/// least [`PREALLOCATE_MIN_BYTES`], at most [`PREALLOCATE_STEP_BYTES`] and
/// the segment size. A new partition reserves 64 KiB, not 16 MiB (a fresh
/// broker's 16 offsets partitions fit on a nearly full disk), and a busy
/// one extends its file about once per 16 MiB.
pub(crate) fn preallocation_target(end: u64, segment_bytes: u64) -> u64 {
    let max = PREALLOCATE_STEP_BYTES.min(align_up(segment_bytes, PREALLOCATE_MIN_BYTES));
    let step = end.clamp(PREALLOCATE_MIN_BYTES, max);
    align_up(end + 1, step)
}

/// Step of zero-filled space ([`PartitionLog::extend_space`]): a partition whose rounds are
/// small pays one 1 MiB zero write per MiB instead of a worker-thread hop per round.
pub(super) const ZERO_FILL_STEP_BYTES: u64 = 1 << 20;

/// What a partition whose rounds average `avg_round` bytes reserves past `end` when it runs
/// out of reserved space: `(target, zero_fill)`. Small rounds get zero-filled space
/// (overwrites run inline on io_uring; the zeros cost one extra write of each byte), large
/// rounds preallocated (unwritten) space, whose extent conversion costs one worker-thread
/// hop per round, small next to the round's bytes.
pub(crate) fn space_plan(end: u64, avg_round: u64, cfg: &LogConfig) -> (u64, bool) {
    let target = preallocation_target(end, cfg.segment_bytes);
    if avg_round < cfg.zero_fill_below as u64 {
        // Steps grow with the segment as preallocation's do (a new partition reserves 64 KiB),
        // up to 1 MiB.
        (target.min(align_up(end + 1, ZERO_FILL_STEP_BYTES)), true)
    } else {
        (target, false)
    }
}

/// A batch queued for the flusher.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) segment_base: i64,
    /// Position of the batch in its segment, assigned at append.
    pub(super) position: u64,
    pub(super) bytes: Bytes,
    pub(super) base_offset: i64,
    pub(super) next_offset: i64,
    pub(super) max_timestamp: i64,
}

/// The flusher's own view of the active segment file.
pub(super) struct Writer {
    pub(super) segment_base: i64,
    pub(super) file: SegmentFile,
    /// Logical bytes written to the file.
    pub(super) written: u64,
    /// Bytes `[align_down(written), written)`: rewritten with the next
    /// write, since direct I/O writes whole aligned blocks.
    pub(super) tail_block: Vec<u8>,
    /// Space is reserved (preallocated or zero-filled) up to here.
    pub(super) preallocated: u64,
    /// Bytes per write round, a moving average (chooses zero-fill or preallocation).
    pub(super) avg_round: u64,
    /// Written but not yet fdatasync'ed.
    pub(super) dirty: bool,
    pub(super) last_sync: Instant,
    /// An fdatasync of this file failed: whatever the error, the log goes offline (no retry
    /// on the same file, the fsyncgate lesson), even for ENOSPC.
    pub(super) sync_failed: bool,
    /// Durable in the journal, not yet written to the segments (oldest first), and their bytes.
    pub(super) behind: Vec<Pending>,
    pub(super) behind_bytes: usize,
}

impl Writer {
    /// The writer of the active segment `recovery` opened.
    pub(super) fn recovered(rec: &mut Recovered, now: Instant) -> Writer {
        let active = rec
            .segments
            .last()
            .expect("recovery yields an active segment");
        Writer {
            segment_base: active.base_offset,
            file: rec.active_file.clone(),
            written: rec.active_written,
            tail_block: std::mem::take(&mut rec.active_tail_block),
            preallocated: rec.active_preallocated,
            avg_round: 0,
            dirty: false,
            last_sync: now,
            sync_failed: false,
            behind: Vec::new(),
            behind_bytes: 0,
        }
    }
}

impl State {
    /// The batches `durable` (in log order, the next ones after the durable end) are durable:
    /// their segments' visible max timestamps, the durable end, the high watermark and the
    /// bytes pending follow.
    fn mark_durable(&mut self, durable: &[Pending]) {
        for p in durable {
            let seg = self.segment_mut(p.segment_base);
            if seg
                .visible_max_timestamp
                .is_none_or(|(t, _)| p.max_timestamp > t)
            {
                seg.visible_max_timestamp = Some((p.max_timestamp, p.base_offset));
            }
        }
        let next = durable
            .last()
            .expect("something became durable")
            .next_offset;
        assert!(
            next > self.durable_end,
            "the durable end only moves forward"
        );
        self.durable_end = next;
        assert!(self.durable_end <= self.log_end);
        self.advance_high_watermark();
        self.pending_bytes -= durable.iter().map(|p| p.bytes.len()).sum::<usize>();
    }
}

impl PartitionLog {
    // ---- flusher side ----

    pub(super) fn fail(&self, e: &StorageError) {
        warn!(dir = %self.dir.display(), error = %e, "partition log failed; it accepts nothing more until reopened");
        let mut st = self.state.borrow_mut();
        let kind = match e {
            StorageError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        st.failed = Some((kind, e.to_string()));
        st.queue.clear();
        st.pending_snapshots.clear();
        st.pending_bytes = 0;
        drop(st);
        self.hw_notify.notify_all();
        self.room_notify.notify_all();
    }

    /// The journal this log's rounds go through: the environment's, when it takes appends and
    /// the flush policy is a sync per round.
    pub(super) fn journal(&self) -> Option<Rc<Journal>> {
        self.env.journal.clone().filter(|j| {
            j.enabled() && self.cfg().flush == FlushPolicy::Always && !self.replaying.get()
        })
    }

    /// Make a round durable: through the journal (then the batches wait behind it for their
    /// segment write), or written to the segments and (under `Always`) synced.
    pub(super) async fn flush_round(
        &self,
        w: &mut Writer,
        batches: Vec<Pending>,
    ) -> Result<(), StorageError> {
        self.write_leader_epochs().await?;
        let bytes: usize = batches.iter().map(|p| p.bytes.len()).sum();
        match self.journal() {
            // Small rounds share the journal's write; a large one is written to its segment
            // directly (one write, no second copy), after what waits behind the journal.
            // After a journaled cut the next round goes through the journal whatever its
            // size: a replay that ends with the cut would cut what the segment holds past it.
            Some(j)
                if bytes < self.cfg().journal_below_bytes
                    || self.state.borrow().journal_after_cut =>
            {
                self.journal_round(&j, w, batches, bytes).await?;
                self.state.borrow_mut().journal_after_cut = false;
                Ok(())
            }
            Some(_) => {
                self.write_all_behind(w).await?;
                self.write_segments(w, &batches, true, &mut 0).await
            }
            None => self.write_segments(w, &batches, true, &mut 0).await,
        }
    }

    /// One round through the journal: submit, wait for its round, then move the durable end
    /// and the high watermark; the batches join those waiting for their segment write, which
    /// happens once enough are waiting (or the journal asks, or the log rolls, cuts or closes).
    async fn journal_round(
        &self,
        j: &Rc<Journal>,
        w: &mut Writer,
        batches: Vec<Pending>,
        bytes: usize,
    ) -> Result<(), StorageError> {
        let next = batches.last().expect("a round has batches").next_offset;
        let file = j
            .record(Entry::Batches {
                name: self.name.clone(),
                base: batches[0].base_offset,
                next,
                parts: batches.iter().map(|p| p.bytes.clone()).collect(),
            })
            .await
            .map_err(|e| StorageError::io(format!("journal round of {}", self.dir.display()), e))?;
        {
            let mut st = self.state.borrow_mut();
            *st.journal_pinned.entry(file).or_default() += 1;
            st.mark_durable(&batches);
            st.behind_segment = batches.last().expect("a round has batches").segment_base;
        }
        self.hw_notify.notify_all();
        self.room_notify.notify_all();
        w.behind_bytes += bytes;
        w.behind.extend(batches);
        // Enough for one good write, or the log rolled: the sealed segment and the new one's
        // file come now (retention and DeleteRecords wait for both).
        let rolled = w
            .behind
            .last()
            .is_some_and(|p| p.segment_base != w.segment_base);
        if w.behind_bytes >= self.cfg().behind_write_bytes || rolled {
            self.write_behind(w).await?;
        }
        Ok(())
    }

    /// Write the batches waiting behind the journal to their segments (no sync: the journal
    /// keeps them durable until a file-system sync covers these writes) and release their
    /// journal files. On a full disk what could not be written stays behind (durable in the
    /// journal), appends are refused until space is found, and this returns false.
    pub(super) async fn write_behind(&self, w: &mut Writer) -> Result<bool, StorageError> {
        if w.behind.is_empty() {
            return Ok(true);
        }
        let batches = std::mem::take(&mut w.behind);
        w.behind_bytes = 0;
        let mut done = 0;
        match self.write_segments(w, &batches, false, &mut done).await {
            Ok(()) => {}
            Err(e) if e.is_disk_full() && !w.sync_failed => {
                w.behind = batches[done..].to_vec();
                w.behind_bytes = w.behind.iter().map(|p| p.bytes.len()).sum();
                warn!(dir = %self.dir.display(), error = %e, waiting = w.behind_bytes,
                    "disk full: batches stay behind the journal (durable there) until space is \
                     freed; appends are refused meanwhile");
                self.state.borrow_mut().full_since = Some(self.env.clock.now());
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        self.release_journal_pins();
        Ok(true)
    }

    /// Nothing of this partition in the journal is needed any more (written to the segments,
    /// or the partition deleted): release the files it pinned.
    pub(super) fn release_journal_pins(&self) {
        let pinned = std::mem::take(&mut self.state.borrow_mut().journal_pinned);
        self.release_pins(pinned);
    }

    /// [`PartitionLog::release_journal_pins`], and those of rounds the journal writer
    /// completed that the flusher has not taken yet: the partition is deleted.
    pub(super) fn release_all_journal_pins(&self) {
        self.release_journal_pins();
        let pinned = std::mem::take(&mut self.state.borrow_mut().journaled_pins);
        self.release_pins(pinned);
    }

    fn release_pins(&self, pinned: std::collections::BTreeMap<u64, usize>) {
        if let Some(j) = &self.env.journal {
            for (file, n) in pinned {
                j.release(file, n);
            }
        }
    }

    /// [`PartitionLog::write_behind`] for a step that needs all of it in the segments.
    pub(super) async fn write_all_behind(&self, w: &mut Writer) -> Result<(), StorageError> {
        if self.write_behind(w).await? {
            Ok(())
        } else {
            Err(StorageError::DiskFull(format!(
                "{}: batches behind the journal cannot be written to the segments",
                self.dir.display()
            )))
        }
    }

    /// Whether the journal asks for the batches behind it (they pin a file it left behind).
    pub(super) fn journal_wants_behind(&self, w: &Writer) -> bool {
        if w.behind.is_empty() {
            return false;
        }
        let (Some(j), Some(oldest)) = (
            &self.env.journal,
            self.state.borrow().journal_pinned.keys().next().copied(),
        ) else {
            return false;
        };
        j.behind_due(oldest, self.slot)
    }

    /// Write `batches` to their segments, rolling segments as they change. With `durable`
    /// (no journal), sync under `Always` and move the high watermark after each segment's
    /// part; without (behind the journal, already durable), only what readers find in files.
    /// `done` counts the batches written so far (a failed call can be resumed from there).
    async fn write_segments(
        &self,
        w: &mut Writer,
        batches: &[Pending],
        durable: bool,
        done: &mut usize,
    ) -> Result<(), StorageError> {
        let mut rest = batches;
        while !rest.is_empty() {
            let base = rest[0].segment_base;
            let n = rest.iter().take_while(|p| p.segment_base == base).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            if base != w.segment_base {
                assert!(base > w.segment_base, "segments only move forward");
                self.seal(w).await?;
                // Taken only once the new segment exists: a step that fails (a full disk) is
                // run again from the seal.
                let snapshot = self.state.borrow().pending_snapshots.front().cloned();
                let (offset, bytes) = snapshot.expect("every roll queues a producer snapshot");
                assert_eq!(offset, base, "producer snapshots follow segment rolls");
                self.write_snapshot(offset, &bytes).await?;
                let behind = std::mem::take(&mut w.behind);
                let behind_bytes = w.behind_bytes;
                *w = self.create_segment(base).await?;
                w.behind = behind;
                w.behind_bytes = behind_bytes;
                self.state.borrow_mut().pending_snapshots.pop_front();
                let first_base = self.state.borrow().segments[0].base_offset;
                recovery::remove_stale_snapshots(&self.env, &self.dir, first_base, offset).await;
            }
            self.write_group(w, group).await?;
            if durable && self.cfg().flush == FlushPolicy::Always {
                self.sync(w).await?;
            }
            let last = group.last().expect("non-empty group");
            let mut st = self.state.borrow_mut();
            st.segment_mut(base).visible_size = w.written;
            if durable {
                // Visible now: move the high watermark.
                st.mark_durable(group);
            }
            st.written_end = last.next_offset;
            let (max, written_end) = (self.cfg().tail_cache_bytes, st.written_end);
            st.tail.trim(max, written_end);
            drop(st);
            *done += group.len();
            if durable {
                self.hw_notify.notify_all();
                self.room_notify.notify_all();
            }
        }
        Ok(())
    }

    pub(super) async fn sync(&self, w: &mut Writer) -> Result<(), StorageError> {
        let started = self.env.clock.now();
        if let Err(e) = self.env.group_sync.sync(&w.file).await {
            w.sync_failed = true;
            return Err(StorageError::io(
                format!("fdatasync {}", w.file.path().display()),
                e,
            ));
        }
        let now = self.env.clock.now();
        crate::metrics::fsync_done(now.saturating_duration_since(started));
        w.dirty = false;
        w.last_sync = now;
        Ok(())
    }

    /// Write the batches of one segment: the kept partial block followed by
    /// the new bytes, in aligned chunks of at most `WRITE_CHUNK_BYTES`.
    pub(super) async fn write_group(
        &self,
        w: &mut Writer,
        group: &[Pending],
    ) -> Result<(), StorageError> {
        let align = w.file.alignment();
        assert!((WRITE_CHUNK_BYTES as u64).is_multiple_of(align));
        let new_bytes: u64 = group.iter().map(|p| p.bytes.len() as u64).sum();
        let mut expect = w.written;
        for p in group {
            assert_eq!(
                p.position, expect,
                "batch position assigned at append must match the write position"
            );
            expect += p.bytes.len() as u64;
        }
        let end = w.written + new_bytes;
        let mut file_pos = align_down(w.written, align);
        assert_eq!(w.tail_block.len() as u64, w.written - file_pos);
        // A cursor over tail_block ++ group bytes.
        let mut parts: VecDeque<&[u8]> = VecDeque::with_capacity(group.len() + 1);
        parts.push_back(&w.tail_block);
        for p in group {
            parts.push_back(&p.bytes);
        }
        let mut new_tail = Vec::new();
        while file_pos < end {
            let chunk = ((end - file_pos) as usize).min(WRITE_CHUNK_BYTES);
            let mut buf = w.file.alloc_buffer(chunk);
            let dst = buf.as_mut_slice();
            let mut filled = 0;
            while filled < chunk {
                let part = parts.front_mut().expect("bytes remain");
                let n = part.len().min(chunk - filled);
                dst[filled..filled + n].copy_from_slice(&part[..n]);
                filled += n;
                *part = &part[n..];
                if part.is_empty() {
                    parts.pop_front();
                }
            }
            let chunk_end = file_pos + chunk as u64;
            if chunk_end == end {
                let keep_from = (align_down(end, align) - file_pos) as usize;
                new_tail = dst[keep_from..chunk].to_vec();
            }
            let write_end = file_pos + buf.len() as u64;
            if write_end > w.preallocated {
                w.preallocated = self
                    .extend_space(&w.file, w.preallocated, w.written, w.avg_round, write_end)
                    .await?;
            }
            w.file
                .write_at(buf, file_pos)
                .await
                .ctx(|| format!("writing {} at {file_pos}", w.file.path().display()))?;
            file_pos = chunk_end;
        }
        w.written = end;
        w.tail_block = new_tail;
        w.dirty = true;
        w.avg_round = (w.avg_round * 7 + new_bytes) / 8;
        Ok(())
    }

    /// Reserve space in the active segment `file` past `end` (see [`space_plan`]); it is
    /// reserved up to `reserved` and written up to `written`. Returns the new reserved end.
    pub(super) async fn extend_space(
        &self,
        file: &SegmentFile,
        reserved: u64,
        written: u64,
        avg_round: u64,
        end: u64,
    ) -> Result<u64, StorageError> {
        let (target, zero) = space_plan(end, avg_round, &self.cfg());
        if zero {
            let target = align_up(target, file.alignment());
            let from = align_up(reserved.max(written), file.alignment());
            if from < target {
                file.zero_fill(from, target)
                    .await
                    .ctx(|| format!("zero-filling {}", file.path().display()))?;
            }
        } else {
            file.pre_allocate(target)
                .await
                .ctx(|| format!("preallocating {}", file.path().display()))?;
        }
        Ok(reserved.max(target))
    }

    /// After a round (its producers released): reserve the next space now, off the ack
    /// path, once less than two rounds' worth (at least a block) is left.
    pub(super) async fn reserve_ahead(&self, w: &mut Writer) -> Result<(), StorageError> {
        let want = (2 * w.avg_round).max(w.file.alignment());
        if w.preallocated.saturating_sub(w.written) < want {
            w.preallocated = self
                .extend_space(
                    &w.file,
                    w.preallocated,
                    w.written,
                    w.avg_round,
                    w.written + want,
                )
                .await?;
        }
        Ok(())
    }

    /// Seal the writer's segment: sync, truncate to its logical size, write
    /// its index files (durable), and switch its in-memory indexes to the
    /// mapped files.
    pub(super) async fn seal(&self, w: &mut Writer) -> Result<(), StorageError> {
        let done = {
            let st = self.state.borrow();
            let i = st
                .segments
                .partition_point(|s| s.base_offset <= w.segment_base);
            // Sealed by an earlier attempt whose next step failed (a full disk), and maybe
            // removed since by retention.
            i == 0
                || st.segments[i - 1].base_offset != w.segment_base
                || matches!(st.segments[i - 1].index, SegmentIndex::Sealed { .. })
        };
        if done {
            return Ok(());
        }
        let path = w.file.path().to_owned();
        self.sync(w).await?;
        w.file
            .truncate(w.written)
            .await
            .ctx(|| format!("truncating {}", path.display()))?;
        self.sync(w).await?;
        let (offsets, times) = {
            let mut st = self.state.borrow_mut();
            let seg = st.segment_mut(w.segment_base);
            assert_eq!(
                seg.size, w.written,
                "sealing a segment with unwritten batches"
            );
            match &seg.index {
                SegmentIndex::Building(ix) => (ix.offsets.clone(), ix.sealed_times()),
                SegmentIndex::Sealed { .. } => return Ok(()),
            }
        };
        let index_path = segment_path(&self.dir, w.segment_base, INDEX_SUFFIX);
        let time_path = segment_path(&self.dir, w.segment_base, TIME_INDEX_SUFFIX);
        self.env
            .write_file_durable(&index_path, &offsets)
            .await
            .ctx(|| format!("writing {}", index_path.display()))?;
        self.env
            .write_file_durable(&time_path, &times)
            .await
            .ctx(|| format!("writing {}", time_path.display()))?;
        let offsets = self
            .env
            .disk
            .map_index(&index_path)
            .await
            .ctx(|| format!("mapping {}", index_path.display()))?;
        let times = self
            .env
            .disk
            .map_index(&time_path)
            .await
            .ctx(|| format!("mapping {}", time_path.display()))?;
        // Check after reading back (paired with the checks at recovery).
        assert!(index::offset_index_is_valid(
            offsets.as_slice(),
            w.written.max(1),
            u64::from(u32::MAX)
        ));
        let mut st = self.state.borrow_mut();
        st.segment_mut(w.segment_base).index = SegmentIndex::Sealed { offsets, times };
        Ok(())
    }

    /// Create the file of a new active segment, preallocate it and make
    /// its directory entry durable.
    pub(super) async fn create_segment(&self, base: i64) -> Result<Writer, StorageError> {
        let path = segment_path(&self.dir, base, crate::storage::segment::LOG_SUFFIX);
        let f = self
            .env
            .disk
            .open_rw(&path, true)
            .await
            .ctx(|| format!("creating {}", path.display()))?;
        let preallocated = preallocation_target(0, self.cfg().segment_bytes);
        f.pre_allocate(preallocated)
            .await
            .ctx(|| format!("preallocating {}", path.display()))?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        {
            let mut st = self.state.borrow_mut();
            let seg = st.segment_mut(base);
            seg.file = Some(f.clone());
            seg.on_disk = true;
        }
        Ok(Writer {
            segment_base: base,
            file: f,
            written: 0,
            tail_block: Vec::new(),
            preallocated,
            avg_round: 0,
            dirty: false,
            last_sync: self.env.clock.now(),
            sync_failed: false,
            behind: Vec::new(),
            behind_bytes: 0,
        })
    }

    /// Final step of close: everything written, synced, active segment sealed.
    pub(super) async fn finish(&self, w: &mut Writer) -> Result<(), StorageError> {
        self.write_all_behind(w).await?;
        self.seal(w).await?;
        // Everything assigned is written: the table covers exactly the log.
        let (log_end, bytes) = {
            let mut st = self.state.borrow_mut();
            // Everything is durable; a replica's high watermark is Raft's commit index
            // (`hw_target`), which may trail what it wrote (entries whose commit it has not
            // heard of yet).
            assert!(
                st.queue.is_empty() && (st.high_watermark == st.log_end || st.hw_target.is_some())
            );
            st.producers.remove_expired(self.env.clock.wall_ms());
            (st.log_end, st.producers.encode_snapshot(st.log_end))
        };
        self.write_snapshot(log_end, &bytes).await?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        let first_base = self.state.borrow().segments[0].base_offset;
        recovery::remove_stale_snapshots(&self.env, &self.dir, first_base, log_end).await;
        // Last: everything the marker vouches for is durable by now.
        let marker = {
            let st = self.state.borrow();
            let seg = st
                .segments
                .last()
                .expect("a log always has an active segment");
            assert_eq!(
                seg.base_offset, w.segment_base,
                "the writer's segment is the last"
            );
            assert_eq!(seg.size, w.written);
            assert_eq!(seg.next_offset, log_end);
            CleanShutdown {
                segment_base: seg.base_offset,
                segment_bytes: seg.size,
                log_end,
                max_timestamp: seg.visible_max_timestamp,
            }
        };
        let path = self.dir.join(CLEAN_SHUTDOWN_FILE);
        let bytes = marker.encode();
        self.env
            .replace_file_durable(&path, &bytes)
            .await
            .ctx(|| format!("writing {}", path.display()))?;
        // Paired check: the marker reads back as written.
        let back = self
            .env
            .disk
            .read(&path)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert_eq!(
            CleanShutdown::decode(&back).ok(),
            Some(marker),
            "clean-shutdown marker {} does not read back",
            path.display()
        );
        debug!(dir = %self.dir.display(), log_end, "wrote the clean-shutdown marker");
        Ok(())
    }

    /// What appends and callers asked of the writer besides data: a probe for space after a
    /// full disk, the leader-epoch checkpoint, a truncation (once everything queued before it
    /// is written).
    async fn serve_requests(&self, w: &mut Writer) -> Result<(), StorageError> {
        let probe = std::mem::take(&mut self.state.borrow_mut().probe_requested);
        if probe {
            self.probe_space(w).await?;
        }
        self.write_leader_epochs().await?;
        let request = {
            let st = self.state.borrow();
            st.truncate_request.filter(|_| st.queue.is_empty())
        };
        if let Some(to) = request {
            let result = self.reset_to(w, to).await;
            self.state.borrow_mut().truncate_request = None;
            self.hw_notify.notify_all();
            result?;
        }
        let reset = self.state.borrow().reset_request;
        if let Some(at) = reset {
            let result = self.reset_empty_at(w, at).await;
            self.state.borrow_mut().reset_request = None;
            self.hw_notify.notify_all();
            result?;
        }
        let prefix = self.state.borrow().prefix_request.clone();
        if let Some((log_start, bases)) = prefix {
            let result = self.take_prefix_in(w, log_start, &bases).await;
            self.state.borrow_mut().prefix_request = None;
            self.hw_notify.notify_all();
            result?;
        }
        Ok(())
    }

    /// Replace the whole log by an empty one that starts at `at` (a replica installing its
    /// leader's snapshot: what it held is either below the leader's log start or not
    /// committed). Everything queued is dropped; then, in an order a crash can interrupt
    /// anywhere (the caller records its intent first and repeats the reset after a crash): a
    /// journaled cut at `at` (a replay brings back nothing), every segment's files removed
    /// oldest first, producer snapshots and the log-start file removed, the new empty
    /// segment created, the directory synced. The in-memory state is rebuilt from the disk by
    /// the recovery code, as after a cut.
    pub(super) async fn reset_empty_at(&self, w: &mut Writer, at: i64) -> Result<(), StorageError> {
        let _admin = self.admin_lock.lock().await;
        self.write_all_behind(w).await?;
        let (bases, old_start) = {
            let mut st = self.state.borrow_mut();
            st.queue.clear();
            st.pending_snapshots.clear();
            st.pending_bytes = 0;
            // Readers stop at once: nothing below `at` is served from now on.
            st.high_watermark = st.high_watermark.min(st.log_start);
            let bases: Vec<i64> = st.segments.iter().map(|s| s.base_offset).collect();
            (bases, st.log_start)
        };
        self.room_notify.notify_all();
        if let Some(j) = self.journal() {
            j.record(Entry::Truncate {
                name: self.name.clone(),
                to: at.min(old_start),
            })
            .await
            .map_err(|e| {
                StorageError::io(format!("journaling the reset of {}", self.dir.display()), e)
            })?;
            self.state.borrow_mut().journal_after_cut = true;
        }
        let remove = |path: std::path::PathBuf| self.remove_if_exists(path);
        for b in bases {
            for suffix in [
                INDEX_SUFFIX,
                TIME_INDEX_SUFFIX,
                crate::storage::segment::LOG_SUFFIX,
            ] {
                remove(segment_path(&self.dir, b, suffix)).await?;
            }
        }
        for o in recovery::snapshot_offsets(&self.env, &self.dir).await {
            remove(self.dir.join(snapshot_file_name(o))).await?;
        }
        remove(self.dir.join(crate::constants::LOG_START_OFFSET_FILE)).await?;
        // What the cleaner did here is gone with the segments.
        remove(self.dir.join(super::clean::CHECKPOINT_FILE)).await?;
        let path = segment_path(&self.dir, at, crate::storage::segment::LOG_SUFFIX);
        let f = self
            .env
            .disk
            .open_rw(&path, true)
            .await
            .ctx(|| format!("creating {}", path.display()))?;
        f.fdatasync()
            .await
            .ctx(|| format!("fdatasync {}", path.display()))?;
        f.close()
            .await
            .ctx(|| format!("closing {}", path.display()))?;
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        // Every append made before fails its wait for durability.
        self.adopt_disk_state(w, at, old_start.min(at), Vec::new(), |st| {
            st.log_start = at;
            st.high_watermark = at;
            st.hw_target = Some(at);
            st.tail.clear();
            st.epochs = Default::default();
            st.epochs_version += 1;
            st.clean_end = 0;
            st.replay_floor = 0;
        })
        .await?;
        debug!(dir = %self.dir.display(), at, "log reset to empty");
        Ok(())
    }

    /// Remove `path`; a file already gone is no error.
    async fn remove_if_exists(&self, path: std::path::PathBuf) -> Result<(), StorageError> {
        match self.env.disk.remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// After a cut or a reset on disk: rebuild the segments, the writer and the producer state
    /// from the disk with the recovery code (the log must end at `end`), record the
    /// truncation at `cut` (appends past it fail their wait for durability), let `adjust` set
    /// the rest of the state, and close the files no longer used (`dropped`: segments taken
    /// out before).
    pub(super) async fn adopt_disk_state(
        &self,
        w: &mut Writer,
        end: i64,
        cut: i64,
        dropped: Vec<SegmentFile>,
        adjust: impl FnOnce(&mut State),
    ) -> Result<(), StorageError> {
        let mut rec = recovery::recover(&self.env, &self.dir, &self.cfg()).await?;
        if rec.log_end != end {
            return Err(StorageError::CorruptBatch(format!(
                "after cutting the log to end at {end}, recovery finds its end at {}",
                rec.log_end
            )));
        }
        let old_writer = std::mem::replace(w, Writer::recovered(&mut rec, self.env.clock.now()));
        let old_segments = {
            let mut st = self.state.borrow_mut();
            let old = std::mem::replace(&mut st.segments, std::mem::take(&mut rec.segments));
            st.log_end = end;
            st.durable_end = end;
            st.written_end = end;
            st.behind_segment = w.segment_base;
            st.producers = std::mem::take(&mut rec.producers);
            st.generation += 1;
            let generation = st.generation;
            st.truncations.push_back((generation, cut));
            if st.truncations.len() > 64 {
                st.truncations.pop_front();
            }
            adjust(&mut st);
            old
        };
        let files = old_segments
            .into_iter()
            .filter_map(|s| s.file)
            .chain(dropped)
            .chain(std::iter::once(old_writer.file));
        for f in files {
            if Rc::strong_count(&f) == 1
                && let Err(e) = f.close().await
            {
                warn!(dir = %self.dir.display(), error = %e, "closing a file after a cut failed");
            }
        }
        self.hw_notify.notify_all();
        self.room_notify.notify_all();
        self.write_leader_epochs().await
    }

    /// After a full disk: try to reserve the next preallocation step of the active segment.
    /// Room found ends the full state; still full restarts its clock.
    async fn probe_space(&self, w: &mut Writer) -> Result<(), StorageError> {
        let target = preallocation_target(w.preallocated.max(w.written), self.cfg().segment_bytes);
        match w.file.pre_allocate(target).await {
            Ok(()) => {
                w.preallocated = target;
                self.state.borrow_mut().full_since = None;
                tracing::info!(dir = %self.dir.display(), "disk has room again: taking writes");
                Ok(())
            }
            Err(e) => {
                let e = StorageError::io(format!("preallocating {}", w.file.path().display()), e);
                if !e.is_disk_full() {
                    return Err(e);
                }
                self.state.borrow_mut().full_since = Some(self.env.clock.now());
                Ok(())
            }
        }
    }

    /// Write the leader-epoch checkpoint if the cache changed since it was last written.
    /// Called before a round's data is written, so a durable batch's epoch is durable too.
    pub(super) async fn write_leader_epochs(&self) -> Result<(), StorageError> {
        let (version, bytes) = {
            let st = self.state.borrow();
            if st.epochs_version == st.epochs_written {
                return Ok(());
            }
            (st.epochs_version, st.epochs.encode())
        };
        let path = self.dir.join(LEADER_EPOCH_FILE);
        self.env
            .replace_file_durable(&path, &bytes)
            .await
            .ctx(|| format!("replacing {}", path.display()))?;
        self.state.borrow_mut().epochs_written = version;
        self.hw_notify.notify_all();
        Ok(())
    }

    /// Cut the log back to `target` (at most the durable end): drop everything queued, remove
    /// the batch holding `target` and all after it (Kafka's truncateTo: the log end becomes
    /// that batch's base), on disk first, then rebuild the in-memory state from the disk with
    /// the recovery code: segments, indexes, producer state. Returns the new log end.
    ///
    /// On disk, in an order a crash can interrupt anywhere: later segments are removed newest
    /// first (index files, then the `.log`), producer snapshots past the cut are removed, the
    /// directory is synced; then the segment holding the cut is truncated and fdatasynced (and
    /// its index files removed, as it becomes the active segment), the directory synced. Whatever a crash leaves is
    /// a prefix of the log that recovery opens as usual.
    pub(super) async fn reset_to(&self, w: &mut Writer, target: i64) -> Result<i64, StorageError> {
        let _admin = self.admin_lock.lock().await;
        // What waits behind the journal goes to the segments first: the cut is found there.
        self.write_all_behind(w).await?;
        let durable_before = self.state.borrow().durable_end;
        let (target, seg_index, file, base, start, end) = {
            let mut st = self.state.borrow_mut();
            st.queue.clear();
            st.pending_snapshots.clear();
            st.pending_bytes = 0;
            let target = target.min(st.durable_end).max(st.log_start);
            // Readers stop short of what is about to go (a truncation below the high
            // watermark), before anything is removed.
            st.high_watermark = st.high_watermark.min(target);
            let mut i = st
                .segments
                .partition_point(|s| s.base_offset <= target)
                .saturating_sub(1);
            // A segment past the writer's was never created (it held only what was queued):
            // the cut is at the end of the writer's, and that one goes with the rest.
            while i > 0 && st.segments[i].base_offset > w.segment_base {
                i -= 1;
            }
            let seg = &st.segments[i];
            (
                target,
                i,
                seg.file.clone(),
                seg.base_offset,
                seg.lookup_position(target),
                seg.visible_size,
            )
        };
        self.room_notify.notify_all();
        // The exact cut: the batch holding `target`, found by scanning from the index.
        let (cut_pos, cut) = if start >= end {
            (end, target)
        } else {
            let file = self.segment_file(file, base).await?;
            let mut sc = Scanner::new(file, start, end, 64 << 10, false);
            let mut found = None;
            while let Some((pos, h, _)) = sc.next().await? {
                if h.next_offset() > target {
                    found = Some((pos, h.base_offset));
                    break;
                }
            }
            found.unwrap_or((end, target))
        };
        let log_start = {
            let mut st = self.state.borrow_mut();
            st.high_watermark = st.high_watermark.min(cut);
            st.log_start
        };
        // Journaled before anything is cut: a replay drops what the journal holds from the
        // cut on (else it would bring back what the cut removed). Nothing from the durable end
        // on is in the journal (a full disk giving back what it could not write).
        if let Some(j) = self.journal().filter(|_| cut < durable_before) {
            j.record(Entry::Truncate {
                name: self.name.clone(),
                to: cut,
            })
            .await
            .map_err(|e| {
                StorageError::io(format!("journaling the cut of {}", self.dir.display()), e)
            })?;
            self.state.borrow_mut().journal_after_cut = true;
        }
        // A cut inside the batch the log start falls in empties the log: it starts at the cut.
        if cut < log_start {
            super::retention::write_log_start_file(&self.env, &self.dir, cut).await?;
        }
        let (removed, cut_was_sealed) = {
            let mut st = self.state.borrow_mut();
            let removed: Vec<(i64, Option<SegmentFile>)> = st
                .segments
                .drain(seg_index + 1..)
                .map(|s| (s.base_offset, s.file))
                .collect();
            let sealed = matches!(st.segments[seg_index].index, SegmentIndex::Sealed { .. });
            (removed, sealed)
        };
        let remove = |path: std::path::PathBuf| self.remove_if_exists(path);
        for (b, _) in removed.iter().rev() {
            for suffix in [
                INDEX_SUFFIX,
                TIME_INDEX_SUFFIX,
                crate::storage::segment::LOG_SUFFIX,
            ] {
                remove(segment_path(&self.dir, *b, suffix)).await?;
            }
        }
        // Snapshots past the cut describe batches that go: removed first, so recovery never
        // prefers one of them to a replay from an older one.
        for at in recovery::snapshot_offsets(&self.env, &self.dir).await {
            if at > cut {
                remove(self.dir.join(snapshot_file_name(at))).await?;
            }
        }
        {
            // Durable before the cut segment shrinks: a crash never leaves a hole.
            self.env
                .disk
                .sync_dir(&self.dir)
                .await
                .ctx(|| format!("syncing {}", self.dir.display()))?;
        }
        let path = segment_path(&self.dir, base, crate::storage::segment::LOG_SUFFIX);
        let f = if w.segment_base == base {
            w.file.clone()
        } else {
            self.env
                .disk
                .open_rw(&path, false)
                .await
                .ctx(|| format!("opening {}", path.display()))?
        };
        f.truncate(cut_pos)
            .await
            .ctx(|| format!("truncating {} to {cut_pos}", path.display()))?;
        f.fdatasync()
            .await
            .ctx(|| format!("fdatasync {}", path.display()))?;
        if w.segment_base != base {
            f.close()
                .await
                .ctx(|| format!("closing {}", path.display()))?;
        }
        if cut_was_sealed {
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                remove(segment_path(&self.dir, base, suffix)).await?;
            }
        }
        self.env
            .disk
            .sync_dir(&self.dir)
            .await
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        let dropped = removed.into_iter().filter_map(|(_, f)| f).collect();
        self.adopt_disk_state(w, cut, cut, dropped, |st| {
            st.log_start = st.log_start.min(cut);
            st.high_watermark = st.high_watermark.min(cut);
            st.hw_target = st.hw_target.map(|t| t.min(cut));
            st.tail.truncate(cut);
            if st.epochs.truncate_from_end(cut) {
                st.epochs_version += 1;
            }
        })
        .await?;
        debug!(dir = %self.dir.display(), cut, "log cut back");
        Ok(cut)
    }

    /// Write a producer-state snapshot file and fdatasync it. Its directory
    /// entry is made durable by the caller's next directory sync; until
    /// then recovery falls back to an older snapshot, which is still there.
    pub(super) async fn write_snapshot(
        &self,
        offset: i64,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let path = self.dir.join(snapshot_file_name(offset));
        self.env
            .write_file_durable(&path, bytes)
            .await
            .ctx(|| format!("writing {}", path.display()))?;
        // Paired check: the file reads back as the table that was written.
        let back = self
            .env
            .disk
            .read(&path)
            .await
            .ctx(|| format!("reading {}", path.display()))?;
        assert!(
            back == bytes,
            "producer snapshot {} does not read back",
            path.display()
        );
        Ok(())
    }
}

/// The partition's flusher: one task per log, holding only a weak
/// reference so a dropped log lets it exit.
///
/// Small rounds under the shard journal are not the flusher's: the log is offered to the
/// journal writer, which takes the queue when its round starts and completes it when the
/// round is durable (`Source`), so no task of the partition wakes per round. The flusher
/// writes those batches behind the journal, runs every round the writer cannot take (large
/// ones, those after a cut, under another flush policy), and every cut, close and request,
/// each only while the writer holds no round of the log (`journal_taken`).
pub(super) async fn flusher(log: Weak<PartitionLog>, mut w: Writer) {
    loop {
        let listener;
        let pressure;
        let mut sleep_for = None;
        let mut round_wait = None;
        {
            let Some(log) = log.upgrade() else { return };
            listener = log.work_notify.listen();
            log.merge_journaled(&mut w);
            // Registered before the check below: a flush mark moving later wakes the wait.
            // Always, under a journal: the journal writer's rounds put batches behind it
            // without waking the flusher.
            pressure = log.env.journal.as_ref().map(|j| j.pressure(log.slot));
            // Hand the queue to the journal writer when it may take it; else the flusher
            // takes it, once the writer holds no round of the log.
            let (batches, closing, own_work) = {
                let mut st = log.state.borrow_mut();
                if !st.journal_offered && log.journal_takes(&st) {
                    st.journal_offered = true;
                    let j = log.env.journal.clone().expect("journal_takes checked it");
                    drop(st);
                    j.offer(log.me.clone());
                    st = log.state.borrow_mut();
                }
                let own_work = (!st.queue.is_empty() && !st.journal_offered)
                    || st.closing
                    || st.probe_requested
                    || st.truncate_request.is_some()
                    || st.reset_request.is_some()
                    || st.prefix_request.is_some()
                    || st.epochs_version != st.epochs_written;
                if own_work && !st.journal_taken.is_empty() {
                    round_wait = Some(log.hw_notify.listen());
                    (Vec::new(), false, false)
                } else {
                    st.flusher_busy = own_work;
                    // Work of its own (a close, a cut, a request) takes the queue back from
                    // the journal writer: an offer it has not taken yet is left stale (its
                    // `take` finds the flusher busy or the queue empty, and declines).
                    let batches = if own_work {
                        st.journal_offered = false;
                        st.journal_retry = false;
                        st.queue.drain(..).collect::<Vec<_>>()
                    } else {
                        Vec::new()
                    };
                    (batches, st.closing, own_work)
                }
            };
            if round_wait.is_none() {
                let had_work = !batches.is_empty();
                let mut result = Ok(());
                if had_work {
                    result = log.flush_round(&mut w, batches).await;
                    if result.is_ok() {
                        result = log.reserve_ahead(&mut w).await;
                    }
                }
                if result.is_ok()
                    && let FlushPolicy::Interval(d) = log.cfg().flush
                    && w.dirty
                {
                    let due = w.last_sync + d;
                    let now = log.env.clock.now();
                    if now >= due {
                        result = log.sync(&mut w).await;
                    } else {
                        sleep_for = Some(log.env.clock.sleep(due - now));
                    }
                }
                // A full disk gives back what it could not write and stays up.
                if let Err(e) = &result
                    && !w.sync_failed
                    && e.is_disk_full()
                {
                    warn!(dir = %log.dir.display(), error = %e,
                        "disk full: giving back the appends not yet written; the partition takes \
                         writes again once space is freed");
                    log.state.borrow_mut().full_since = Some(log.env.clock.now());
                    let to = log.state.borrow().durable_end;
                    result = log.reset_to(&mut w, to).await.map(|_| ());
                }
                if result.is_ok() {
                    log.merge_journaled(&mut w);
                    if log.behind_due(&w) || log.journal_wants_behind(&w) {
                        result = log.write_behind(&mut w).await.map(|_| ());
                    }
                }
                if result.is_ok() && own_work {
                    result = log.serve_requests(&mut w).await;
                }
                log.state.borrow_mut().flusher_busy = false;
                let more = {
                    let st = log.state.borrow();
                    !st.queue.is_empty() && !st.journal_offered
                };
                match result {
                    Err(e) => {
                        log.fail(&e);
                        log.state.borrow_mut().flusher_done = true;
                        log.done_notify.notify_all();
                        return;
                    }
                    Ok(()) if closing && !more => {
                        if let Err(e) = log.finish(&mut w).await {
                            log.fail(&e);
                        }
                        log.state.borrow_mut().flusher_done = true;
                        log.done_notify.notify_all();
                        log.hw_notify.notify_all();
                        return;
                    }
                    Ok(()) => {}
                }
                if had_work || more {
                    continue;
                }
            }
        }
        match (round_wait, sleep_for, pressure) {
            // The journal writer's round of this log is done (or it failed).
            (Some(done), _, _) => {
                futures::future::select(std::pin::pin!(listener), done).await;
            }
            // New work or the next periodic fdatasync, whichever comes first.
            (None, Some(sleep), _) => {
                futures::future::select(std::pin::pin!(listener), sleep).await;
            }
            // New work, or the journal asks for what waits behind it.
            (None, None, Some(pressure)) => {
                futures::future::select(std::pin::pin!(listener), pressure).await;
            }
            (None, None, None) => listener.await,
        }
    }
}

impl PartitionLog {
    /// Whether the journal writer may take the queue now: a small round under the journal,
    /// and nothing of the flusher's own in the way (a round, a cut, a request, a close, a
    /// leader-epoch checkpoint to write first).
    fn journal_takes(&self, st: &State) -> bool {
        !st.queue.is_empty()
            && !st.flusher_busy
            && !st.closing
            && st.failed.is_none()
            && !st.journal_retry
            && st.full_since.is_none()
            && !st.probe_requested
            && !st.journal_after_cut
            && st.truncate_request.is_none()
            && st.reset_request.is_none()
            && st.prefix_request.is_none()
            && st.epochs_version == st.epochs_written
            && self.journal().is_some()
            && st.queue.iter().map(|p| p.bytes.len()).sum::<usize>()
                < self.cfg().journal_below_bytes
    }

    /// After an append: offer the log to the journal writer, or wake the flusher.
    pub(super) fn queued(&self, mut st: std::cell::RefMut<'_, State>) {
        if st.journal_offered {
            return;
        }
        if self.journal_takes(&st) {
            st.journal_offered = true;
            drop(st);
            let j = self.env.journal.clone().expect("journal_takes checked it");
            j.offer(self.me.clone());
        } else {
            drop(st);
            self.work_notify.notify_all();
        }
    }

    /// Move what the journal writer made durable onto the flusher's write-behind list.
    fn merge_journaled(&self, w: &mut Writer) {
        let mut st = self.state.borrow_mut();
        if st.journaled.is_empty() {
            return;
        }
        w.behind.append(&mut st.journaled);
        w.behind_bytes += std::mem::take(&mut st.journaled_bytes);
        for (file, n) in std::mem::take(&mut st.journaled_pins) {
            *st.journal_pinned.entry(file).or_default() += n;
        }
    }

    /// Enough waits behind the journal for one good write, or the log rolled: the sealed
    /// segment and the new one's file come now (retention and DeleteRecords wait for both).
    fn behind_due(&self, w: &Writer) -> bool {
        w.behind_bytes >= self.cfg().behind_write_bytes
            || w.behind
                .last()
                .is_some_and(|p| p.segment_base != w.segment_base)
    }
}

impl Source for PartitionLog {
    fn take(&self) -> Option<Entry> {
        let mut st = self.state.borrow_mut();
        st.journal_offered = false;
        if !self.journal_takes(&st) {
            drop(st);
            self.work_notify.notify_all();
            return None;
        }
        let batches: Vec<Pending> = st.queue.drain(..).collect();
        let entry = Entry::Batches {
            name: self.name.clone(),
            base: batches[0].base_offset,
            next: batches.last().expect("a round has batches").next_offset,
            parts: batches.iter().map(|p| p.bytes.clone()).collect(),
        };
        st.journal_taken.push_back(batches);
        Some(entry)
    }

    fn done(&self, result: Result<u64, (io::ErrorKind, String)>) {
        let mut st = self.state.borrow_mut();
        let Some(batches) = st.journal_taken.pop_front() else {
            return;
        };
        let mut wake_flusher = false;
        // The round counts in its file whatever became of the log: the pin is released when
        // the batches are written behind or the partition is deleted.
        if let Ok(file) = &result {
            *st.journaled_pins.entry(*file).or_default() += 1;
        }
        if st.failed.is_none() {
            match result {
                Ok(_) => {
                    st.mark_durable(&batches);
                    let bytes: usize = batches.iter().map(|p| p.bytes.len()).sum();
                    let mut rolled = false;
                    for p in &batches {
                        rolled |= p.segment_base != st.behind_segment;
                        st.behind_segment = p.segment_base;
                    }
                    st.journaled_bytes += bytes;
                    st.journaled.extend(batches);
                    wake_flusher = rolled || st.journaled_bytes >= self.cfg().behind_write_bytes;
                }
                Err(_) => {
                    // Back at the head of the queue, for the flusher's own round (which
                    // meets the same failure and handles it as it handles its own).
                    for p in batches.into_iter().rev() {
                        st.queue.push_front(p);
                    }
                    st.journal_retry = true;
                    wake_flusher = true;
                }
            }
        }
        drop(st);
        self.hw_notify.notify_all();
        self.room_notify.notify_all();
        if wake_flusher {
            self.work_notify.notify_all();
        }
    }
}
