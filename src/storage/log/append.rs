//! The appender: admission (the room queue), validation, offset assignment, segment rolls.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::*;
use crate::storage::batch::{self, BatchHeader};
use crate::storage::error::StorageError;
use crate::storage::index::Indexer;
use crate::storage::producer_state::Verdict;
use crate::storage::segment::{Segment, SegmentIndex};
use crate::types::Offset;

/// Batches of one `append` call that passed validation: the request bytes
/// and each batch's (position, size, header).
pub(super) struct ValidatedBatches {
    pub(super) mode: Mode,
    pub(super) records: Bytes,
    pub(super) batches: Vec<(usize, usize, BatchHeader)>,
    pub(super) idempotent: bool,
    pub(super) origin: Origin,
}

/// Who wrote the batches of a leader's append.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A producer (Produce): control batches refused, producer batches checked by sequence.
    Client,
    /// The broker for a producer (transaction markers, transactional offset commits): no
    /// sequence, only the producer's epoch is checked.
    Coordinator,
    /// The shard journal's replay at open (a follower's append of what this log itself
    /// wrote before a crash): every batch the log took, transactional ones included.
    Journal,
}

/// Who assigns the offsets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// This log (a leader, or a single node): offsets from the log end, producers checked,
    /// the leader epoch stamped.
    Leader,
    /// A leader did (a follower's copy): the batches are stored as they are, at their offsets.
    Follower,
}

/// How long a full disk refuses appends before the next one asks for a probe.
const FULL_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What the synchronous part of `append` did.
pub(super) enum Placement {
    /// Offsets assigned (or the batch refused) at the call.
    Done(Result<AppendInfo, StorageError>),
    /// Waiting for room, in line behind every earlier call.
    Queued(RoomTicket, ValidatedBatches),
}

/// A place in the room queue (FIFO of appends waiting for
/// `pending_bytes_max`); leaving it, granted or dropped, wakes the others.
pub(super) struct RoomTicket {
    pub(super) log: Rc<PartitionLog>,
    pub(super) id: u64,
    /// Bytes this append will queue.
    pub(super) len: usize,
}

impl Drop for RoomTicket {
    fn drop(&mut self) {
        let mut st = self.log.state.borrow_mut();
        st.room_waiters.retain(|w| *w != self.id);
        drop(st);
        self.log.room_notify.notify_all();
    }
}

impl PartitionLog {
    /// Validate every batch in `records` (magic 2, length, CRC, size limit,
    /// record count), then assign offsets and queue the batches for the
    /// flusher, waiting first (FIFO) for room if more than
    /// `pending_bytes_max` bytes are queued. Nothing is appended if any batch
    /// is invalid. The data is durable (and visible) once
    /// `wait_durable(last_offset + 1)` resolves.
    ///
    /// Order: appends take effect in the order `append` is *called*, not the
    /// order the returned futures are polled: the call itself assigns the
    /// offsets when nothing waits for room, or else takes its place in the
    /// room queue, behind every earlier call. This is what keeps the
    /// requests of one connection in order on a partition (see
    /// `server::ordering`).
    ///
    /// A batch with a producer id (idempotent) must come alone, as Kafka
    /// requires of Produce v3+. It is checked against the producer's state:
    /// a duplicate of one of its last five batches is not appended and gets
    /// that batch's offsets; a sequence gap or new epoch not starting at 0
    /// is `OutOfOrderSequence`; an older epoch is `InvalidProducerEpoch`.
    /// A transactional batch opens its producer's transaction here (see
    /// `producer_state`); control batches are refused (`InvalidRecord`): only
    /// the transaction coordinator writes markers ([`PartitionLog::append_marker`]).
    pub fn append(
        self: &Rc<Self>,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        self.append_as(records, Mode::Leader, Origin::Client)
    }

    /// Append batches the broker wrote for a producer (a transactional offset commit to
    /// `__consumer_offsets`): one batch with the producer's id and epoch and no sequence. The
    /// epoch must not be older than the producer's here (`InvalidProducerEpoch`).
    pub fn append_for_producer(
        self: &Rc<Self>,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        self.append_as(records, Mode::Leader, Origin::Coordinator)
    }

    /// Append a COMMIT or ABORT marker for `producer_id` (the transaction coordinator's
    /// write): closes the producer's open transaction here. Refused with
    /// `InvalidProducerEpoch` if the producer's epoch here is newer than `producer_epoch`.
    pub fn append_marker(
        self: &Rc<Self>,
        producer_id: i64,
        producer_epoch: i16,
        marker: crate::storage::producer_state::Marker,
        coordinator_epoch: i32,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        let bytes = batch::encode_marker(
            producer_id,
            producer_epoch,
            marker,
            coordinator_epoch,
            self.env.clock.wall_ms(),
        );
        self.append_as(bytes, Mode::Leader, Origin::Coordinator)
    }

    /// [`PartitionLog::append`] or [`PartitionLog::append_replicated`]: place now, then
    /// wait for room if queued.
    fn append_as(
        self: &Rc<Self>,
        records: Bytes,
        mode: Mode,
        origin: Origin,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        let placed = self.place_append(records, mode, origin);
        let log = self.clone();
        async move {
            match placed? {
                Placement::Done(info) => info,
                Placement::Queued(ticket, batches) => {
                    log.wait_for_room(&ticket).await?;
                    let info = log.assign_offsets(batches);
                    drop(ticket); // leaves the room queue, wakes the next in line
                    info
                }
            }
        }
    }

    /// A follower's append: `records` are whole batches with the offsets the leader assigned,
    /// continuing this log exactly (the first batch's base offset is the log end, else
    /// `NotContiguous`). Stored byte for byte: no offset, timestamp or epoch rewrite, no
    /// producer check (the leader made it), several producers' batches in one call. Producer
    /// state and the leader-epoch cache follow the batches. Same order and room rules as
    /// [`PartitionLog::append`].
    pub fn append_replicated(
        self: &Rc<Self>,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        self.append_as(records, Mode::Follower, Origin::Client)
    }

    /// [`PartitionLog::append_replicated`] for the shard journal's replay of this log's own
    /// batches: transactional batches and markers are taken too.
    pub(super) fn append_from_journal(
        self: &Rc<Self>,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, StorageError>> + use<> {
        self.append_as(records, Mode::Follower, Origin::Journal)
    }

    /// The synchronous part of [`PartitionLog::append`]: validate, then
    /// assign now or take a place in the room queue.
    pub(super) fn place_append(
        self: &Rc<Self>,
        records: Bytes,
        mode: Mode,
        origin: Origin,
    ) -> Result<Placement, StorageError> {
        let batches = batch::validate_all_for_append(&records, self.cfg().max_message_bytes)?;
        let mut idempotent = false;
        for (_, _, h) in &batches {
            let transactional = h.attributes & batch::ATTR_TRANSACTIONAL != 0;
            let control = h.attributes & batch::ATTR_CONTROL != 0;
            match mode {
                Mode::Follower => {
                    // Stored as the leader wrote them: Raft's own control batches (no
                    // producer), transactional batches and their markers (a producer id).
                    if transactional && h.producer_id < 0 {
                        return Err(StorageError::InvalidRecord(
                            "a transactional batch without a producer id".into(),
                        ));
                    }
                }
                Mode::Leader => {
                    if control && origin == Origin::Client {
                        return Err(StorageError::InvalidRecord(
                            "a producer may not write control batches".into(),
                        ));
                    }

                    if transactional && h.producer_id < 0 {
                        return Err(StorageError::InvalidRecord(
                            "a transactional batch without a producer id".into(),
                        ));
                    }
                    if origin == Origin::Coordinator && (h.producer_id < 0 || h.base_sequence >= 0)
                    {
                        return Err(StorageError::InvalidRecord(
                            "a coordinator batch has a producer id and no sequence".into(),
                        ));
                    }
                }
            }
            idempotent |= h.producer_id >= 0;
        }
        if mode == Mode::Leader && origin == Origin::Client && self.cfg().compact {
            // The one look inside a batch on produce, for compacted topics only: Kafka refuses
            // records without a key there (INVALID_RECORD).
            crate::storage::cleaner::records::check_keys_all(&records, &batches)?;
        }
        if mode == Mode::Follower {
            for w in batches.windows(2) {
                let (a, b) = (&w[0].2, &w[1].2);
                if b.base_offset != a.next_offset() {
                    return Err(StorageError::NotContiguous {
                        expected: a.next_offset(),
                        got: b.base_offset,
                    });
                }
            }
        } else if idempotent && batches.len() > 1 {
            return Err(StorageError::InvalidRecord(
                "an idempotent produce must carry exactly one record batch per partition".into(),
            ));
        }
        let validated = ValidatedBatches {
            mode,
            records,
            batches,
            idempotent,
            origin,
        };
        let ticket = {
            let mut st = self.state.borrow_mut();
            let len = validated.records.len();
            if st.room_waiters.is_empty() && self.fits(&st, len) {
                None
            } else {
                let id = st.next_waiter_id;
                st.next_waiter_id += 1;
                st.room_waiters.push_back(id);
                Some(id)
            }
        };
        Ok(match ticket {
            None => Placement::Done(self.assign_offsets(validated)),
            Some(id) => Placement::Queued(
                RoomTicket {
                    log: self.clone(),
                    id,
                    len: validated.records.len(),
                },
                validated,
            ),
        })
    }

    /// Whether appends wait for room now (more than `pending_bytes_max` queued): such an
    /// append takes its offsets only when its future is polled in its turn.
    pub fn appends_wait_for_room(&self) -> bool {
        !self.state.borrow().room_waiters.is_empty()
    }

    /// Whether `len` more bytes may be queued now. An append always fits
    /// when nothing is pending, so a batch larger than `pending_bytes_max`
    /// cannot wait forever.
    pub(super) fn fits(&self, st: &State, len: usize) -> bool {
        st.pending_bytes == 0 || st.pending_bytes + len <= self.cfg().pending_bytes_max
    }

    /// Assign offsets to validated batches and queue them: no await, so
    /// offsets follow the order of the calls.
    pub(super) fn assign_offsets(
        &self,
        validated: ValidatedBatches,
    ) -> Result<AppendInfo, StorageError> {
        let ValidatedBatches {
            mode,
            records,
            mut batches,
            idempotent,
            origin,
        } = validated;
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.failed_error() {
            return Err(e);
        }
        if st.closing {
            return Err(StorageError::Closed);
        }
        if st.truncate_request.is_some()
            || st.reset_request.is_some()
            || st.prefix_request.is_some()
        {
            return Err(StorageError::Truncated { offset: st.log_end });
        }
        if let Some(since) = st.full_since {
            // Refused at once (nothing is queued that could not be written); after a while
            // the next append asks the writer to try reserving space again.
            if !st.probe_requested
                && self.env.clock.now().saturating_duration_since(since) >= FULL_PROBE_INTERVAL
            {
                st.probe_requested = true;
                drop(st);
                self.work_notify.notify_all();
            }
            return Err(StorageError::DiskFull(
                "no space left on the device for this partition's log".into(),
            ));
        }
        if mode == Mode::Follower && batches[0].2.base_offset != st.log_end {
            return Err(StorageError::NotContiguous {
                expected: st.log_end,
                got: batches[0].2.base_offset,
            });
        }
        if idempotent && mode == Mode::Leader && origin == Origin::Coordinator {
            let (pos, size, h) = &batches[0];
            match batch::marker_of(&records[*pos..*pos + *size]) {
                Some((_, coordinator_epoch)) => st.producers.check_marker(h, coordinator_epoch)?,
                None => st.producers.check_epoch(h)?,
            }
        } else if idempotent && mode == Mode::Leader {
            match st.producers.check(&batches[0].2)? {
                Verdict::Append => {}
                Verdict::Duplicate(dup) => {
                    return Ok(AppendInfo {
                        base_offset: Offset(dup.base_offset),
                        last_offset: Offset(dup.last_offset()),
                        log_start_offset: Offset(st.log_start),
                        log_append_time_ms: -1,
                        generation: st.generation,
                    });
                }
            }
        }
        let mut next = st.log_end;
        let log_append_time_ms = if self.cfg().log_append_time && mode == Mode::Leader {
            self.env.clock.wall_ms()
        } else {
            -1
        };
        let copy = match mode {
            Mode::Follower => {
                // Stored as the leader wrote them; a newer epoch begins at its first batch.
                for (_, _, h) in &batches {
                    if st.epochs.assign(h.partition_leader_epoch, h.base_offset) {
                        st.epochs_version += 1;
                    }
                }
                next = batches.last().expect("at least one batch").2.next_offset();
                records.clone()
            }
            Mode::Leader => {
                let mut copy = BytesMut::from(&records[..]);
                for (pos, size, h) in &mut batches {
                    let b = &mut copy[*pos..*pos + *size];
                    batch::set_base_offset(b, next);
                    if st.leader_epoch >= 0 {
                        // Not covered by the CRC, like the base offset.
                        batch::set_partition_leader_epoch(b, st.leader_epoch);
                    }
                    if log_append_time_ms >= 0 {
                        // The one header rewrite covered by the CRC, so the CRC is
                        // recomputed.
                        batch::set_log_append_time(b, log_append_time_ms);
                        h.attributes |= batch::ATTR_LOG_APPEND_TIME;
                        h.max_timestamp = log_append_time_ms;
                    }
                    next += i64::from(h.last_offset_delta) + 1;
                }
                copy.freeze()
            }
        };
        let first_offset = st.log_end;
        let now = self.env.clock.now();
        for (pos, size, h) in &batches {
            let base_offset = st.log_end;
            let h = BatchHeader { base_offset, ..*h };
            self.maybe_roll(&mut st, *size as u64, h.last_offset_delta, now);
            let bytes = copy.slice(*pos..*pos + *size);
            let seg = st.active();
            let position = seg.size;
            match &mut seg.index {
                SegmentIndex::Building(ix) => ix.on_batch(&h, position, *size),
                SegmentIndex::Sealed { .. } => unreachable!("the active segment is never sealed"),
            }
            seg.size += *size as u64;
            seg.next_offset = h.next_offset();
            let segment_base = seg.base_offset;
            st.queue.push_back(Pending {
                segment_base,
                position,
                bytes: bytes.clone(),
                base_offset,
                next_offset: h.next_offset(),
                max_timestamp: h.max_timestamp,
            });
            if h.producer_id >= 0 {
                st.producers.replay(&h, &bytes);
            }
            st.tail.push(base_offset, h.next_offset(), bytes);
            st.log_end = h.next_offset();
        }
        assert_eq!(st.log_end, next);
        let written_end = st.written_end;
        st.tail.trim(self.cfg().tail_cache_bytes, written_end);
        st.pending_bytes += records.len();
        let info = AppendInfo {
            base_offset: Offset(first_offset),
            last_offset: Offset(st.log_end - 1),
            log_start_offset: Offset(st.log_start),
            log_append_time_ms,
            generation: st.generation,
        };
        self.queued(st);
        Ok(info)
    }

    /// Start a new active segment if the batch would overflow the current
    /// one, the current one is too old, or relative offsets would overflow.
    /// The file is created by the flusher when it reaches the first batch.
    pub(super) fn maybe_roll(
        &self,
        st: &mut State,
        size: u64,
        last_offset_delta: i32,
        now: Instant,
    ) {
        let log_end = st.log_end;
        let seg = st.active();
        if seg.size == 0 {
            return;
        }
        let too_big = seg.size + size > self.cfg().segment_bytes;
        let too_old =
            now.duration_since(seg.created) >= Duration::from_millis(self.cfg().segment_ms);
        let rel_overflow =
            log_end + i64::from(last_offset_delta) - seg.base_offset > i64::from(i32::MAX);
        if too_big || too_old || rel_overflow {
            debug!(dir = %self.dir.display(), base = log_end, "rolling segment");
            // The table now covers exactly the batches below the new base.
            st.producers.remove_expired(self.env.clock.wall_ms());
            let log_start = st.log_start;
            st.producers.prune_aborted(log_start);
            let snapshot = st.producers.encode_snapshot(log_end);
            st.pending_snapshots.push_back((log_end, snapshot));
            st.segments.push(Segment {
                base_offset: log_end,
                file: None,
                size: 0,
                visible_size: 0,
                on_disk: false,
                next_offset: log_end,
                visible_max_timestamp: None,
                index: SegmentIndex::Building(Indexer::new(
                    log_end,
                    self.cfg().index_interval_bytes,
                )),
                created: now,
            });
        }
    }

    /// Wait until `ticket` is first in the room queue and its bytes fit.
    pub(super) async fn wait_for_room(&self, ticket: &RoomTicket) -> Result<(), StorageError> {
        loop {
            let listener = self.room_notify.listen();
            {
                let st = self.state.borrow();
                if let Some(e) = st.failed_error() {
                    return Err(e);
                }
                if st.closing {
                    return Err(StorageError::Closed);
                }
                if st.room_waiters.front() == Some(&ticket.id) && self.fits(&st, ticket.len) {
                    return Ok(());
                }
            }
            listener.await;
        }
    }
}
