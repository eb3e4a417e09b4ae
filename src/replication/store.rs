//! The Raft store of one replicated partition: what `raft::Storage` asks of the log, kept in
//! memory beside the partition log, which holds the entries' bytes durably (see [`super::entry`]).
//!
//! - per entry from `first_index` on, its term and the Kafka offset after it (16 bytes);
//! - the entries themselves only from `data_from` on: everything not yet applied, plus recent
//!   applied ones up to a byte budget. A data entry's `data` is the batch itself (the same
//!   `Bytes` the log's tail cache holds: no copy). Raft asks for older entries only to send
//!   them to a lagging follower, and that request may wait: the store answers
//!   `LogTemporarilyUnavailable`, the replica reads the batches from the partition log
//!   ([`RaftStore::take_fetches`], [`RaftStore::fill`]) and hands them to raft-rs, which asks
//!   again and gets them. A follower's catch-up is a read of the log, never a stall of the
//!   leader's appends, and memory holds only the recent entries.
//! - the hard state (term, vote, commit) and the voter configuration, persisted by the replica
//!   in the partition directory's `raft-state` file ([`RaftStateFile`]).
//!
//! Rebuilt at open by reading the partition log from its start: each batch is one entry.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use serde::{Deserialize, Serialize};

/// The replica's durable Raft state besides the log: `raft-state` in the partition directory,
/// JSON, replaced atomically (temporary file, fdatasync, rename, directory sync). Written
/// before a vote or a new term is announced (Raft's stable-storage rule) and when the voter
/// configuration changes; the commit index in it may lag (it is only a lower bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStateFile {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub voters: Vec<u64>,
    #[serde(default)]
    pub learners: Vec<u64>,
    /// The entry before the first one the log keeps (none: index 0, the log is kept from its
    /// start). Written, durably, before the segments below it are removed.
    #[serde(default)]
    pub base: LogBase,
    /// A snapshot of the leader's log (`base`) is being installed: the log is reset to an
    /// empty one at `base.offset`. Set durably before the reset begins and cleared after it,
    /// so a crash in between repeats the reset at open.
    #[serde(default)]
    pub installing: bool,
}

/// The prefix of a replicated log that is no longer stored: the Raft index and term of its
/// last entry and the Kafka offset after it (where the kept log begins), plus the Kafka log
/// start offset as of then (DeleteRecords may have moved it past `offset`, inside a batch).
/// This is also what a Raft snapshot of a partition carries: the partition's data is the log
/// itself, so a follower that needs entries below its leader's base only needs to know where
/// the log continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBase {
    pub index: u64,
    pub term: u64,
    pub offset: i64,
    #[serde(default)]
    pub log_start: i64,
}

impl LogBase {
    const ENCODED: usize = 1 + 8 + 8;
    const VERSION: u8 = 1;

    /// The snapshot's data: version, offset, log start (big-endian); index and term travel in
    /// the snapshot's metadata.
    pub fn encode_data(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::ENCODED);
        v.push(Self::VERSION);
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.log_start.to_be_bytes());
        v
    }

    /// The base a snapshot describes; None if its data is not one.
    pub fn from_snapshot(s: &Snapshot) -> Option<LogBase> {
        let d = &s.data;
        if d.len() != Self::ENCODED || d[0] != Self::VERSION {
            return None;
        }
        let offset = i64::from_be_bytes(d[1..9].try_into().ok()?);
        let log_start = i64::from_be_bytes(d[9..17].try_into().ok()?);
        let meta = s.metadata.as_ref()?;
        // A log start below the offset: the log keeps a compacted prefix below its base.
        (offset >= 0 && log_start >= 0).then_some(LogBase {
            index: meta.index,
            term: meta.term,
            offset,
            log_start,
        })
    }
}

/// The file's name in the partition directory.
pub const RAFT_STATE_FILE: &str = "raft-state";

/// Entries the replica must read from the log for raft-rs: `[low, high)`, at most
/// `max_size` bytes, for `context` (given back through `RawNode::on_entries_fetched`).
#[derive(Debug)]
pub struct Fetch {
    pub low: u64,
    pub high: u64,
    pub max_size: Option<u64>,
    pub context: GetEntriesContext,
}

#[derive(Debug, Default)]
struct Inner {
    hard: HardState,
    conf: ConfState,
    /// Index and term of the entry before the first one kept (0, 0: none), and the Kafka
    /// offset after it.
    prev_index: u64,
    prev_term: u64,
    prev_end: i64,
    /// The Kafka log start as of the base (at least `prev_end`).
    base_log_start: i64,
    /// A snapshot is being installed (see [`RaftStateFile::installing`]).
    installing: bool,
    /// (term, Kafka offset after the entry) of every entry from `prev_index + 1` on.
    metas: VecDeque<(u64, i64)>,
    /// The entries from `data_from` on.
    recent: VecDeque<Entry>,
    recent_bytes: usize,
    /// Entries read from the log for a waiting request (the index of the first, and them).
    fetched: Option<(u64, Vec<Entry>)>,
    fetches: Vec<Fetch>,
}

impl Inner {
    fn last_index(&self) -> u64 {
        self.prev_index + self.metas.len() as u64
    }

    fn data_from(&self) -> u64 {
        self.last_index() + 1 - self.recent.len() as u64
    }
}

/// Shared by the replica and its `RawNode` (which owns a clone).
#[derive(Debug, Clone, Default)]
pub struct RaftStore(Rc<RefCell<Inner>>);

impl RaftStore {
    /// A store whose log begins after `state.base`, or if it has none at Kafka offset `start`
    /// (index 1 is the batch there).
    pub fn new(state: &RaftStateFile, start: i64) -> Self {
        let b = state.base;
        let (prev_index, prev_term, prev_end, base_log_start) = if b.index > 0 {
            (b.index, b.term, b.offset, b.log_start)
        } else {
            (0, 0, start, start)
        };
        let inner = Inner {
            prev_index,
            prev_term,
            prev_end,
            base_log_start,
            installing: state.installing,
            hard: HardState {
                term: state.term,
                vote: state.vote,
                commit: state.commit,
                ..Default::default()
            },
            conf: ConfState {
                voters: state.voters.clone(),
                learners: state.learners.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        RaftStore(Rc::new(RefCell::new(inner)))
    }

    /// The entry before the first one stored.
    pub fn base(&self) -> LogBase {
        let s = self.0.borrow();
        LogBase {
            index: s.prev_index,
            term: s.prev_term,
            offset: s.prev_end,
            log_start: s.base_log_start,
        }
    }

    /// Forget the entries up to `index` (at most the last one; the caller made sure they are
    /// applied and persisted the new base), noting the Kafka log start `log_start`.
    pub fn compact_to(&self, index: u64, log_start: i64, keep_prefix: bool) {
        let mut s = self.0.borrow_mut();
        if index <= s.prev_index {
            s.base_log_start = s.base_log_start.max(log_start);
            return;
        }
        assert!(index <= s.last_index(), "compacting past the last entry");
        let n = (index - s.prev_index) as usize;
        let (term, end) = s.metas[n - 1];
        s.metas.drain(..n);
        while s.recent.front().is_some_and(|e| e.index <= index) {
            let e = s.recent.pop_front().expect("non-empty");
            s.recent_bytes -= e.data.len();
        }
        s.prev_index = index;
        s.prev_term = term;
        s.prev_end = end;
        // A compacted log keeps its segments below the base: its log start stays below it.
        s.base_log_start = if keep_prefix {
            s.base_log_start.max(log_start).min(end)
        } else {
            s.base_log_start.max(log_start).max(end)
        };
        s.fetched = None;
    }

    /// Begin installing a snapshot: the store holds nothing after `base` and its commit index
    /// is at least `base.index`; `installing` is set until [`RaftStore::installed`].
    pub fn install(&self, base: LogBase, conf: ConfState) {
        let mut s = self.0.borrow_mut();
        s.prev_index = base.index;
        s.prev_term = base.term;
        s.prev_end = base.offset;
        // Below the offset: a compacted prefix, copied from the leader (`prefix`).
        s.base_log_start = base.log_start;
        s.metas.clear();
        s.recent.clear();
        s.recent_bytes = 0;
        s.fetched = None;
        s.fetches.clear();
        s.conf = conf;
        s.hard.commit = s.hard.commit.max(base.index);
        s.installing = true;
    }

    /// An install is (again) unfinished: a log found short of its base that still needs its
    /// compacted prefix copied.
    pub fn reinstalling(&self) {
        self.0.borrow_mut().installing = true;
    }

    /// The log was reset to the installed snapshot's base.
    pub fn installed(&self) {
        self.0.borrow_mut().installing = false;
    }
    pub fn last_index(&self) -> u64 {
        self.0.borrow().last_index()
    }

    /// The Kafka offset after entry `index` (the log start for index 0); `None` outside the
    /// store.
    pub fn end_of(&self, index: u64) -> Option<i64> {
        let s = self.0.borrow();
        if index == s.prev_index {
            return Some(s.prev_end);
        }
        if index < s.prev_index || index > s.last_index() {
            return None;
        }
        s.metas
            .get((index - s.prev_index - 1) as usize)
            .map(|m| m.1)
    }

    /// The index of the entry that ends at Kafka offset `offset` (the base's for its offset).
    pub fn index_ending_at(&self, offset: i64) -> Option<u64> {
        let s = self.0.borrow();
        if offset == s.prev_end {
            return Some(s.prev_index);
        }
        let i = s.metas.partition_point(|m| m.1 < offset);
        (s.metas.get(i)?.1 == offset).then_some(s.prev_index + 1 + i as u64)
    }

    /// The Kafka offset after the last entry.
    pub fn next_offset(&self) -> i64 {
        let s = self.0.borrow();
        s.metas.back().map_or(s.prev_end, |m| m.1)
    }

    /// Append `e`, which ends at Kafka offset `end`; its index must follow the last one.
    pub fn push(&self, e: Entry, end: i64) {
        let mut s = self.0.borrow_mut();
        assert_eq!(e.index, s.last_index() + 1, "Raft entries out of order");
        s.metas.push_back((e.term, end));
        s.recent_bytes += e.data.len();
        s.recent.push_back(e);
    }

    /// Drop the entries from `index` on (a follower replacing a suffix its leader lacks).
    pub fn truncate_from(&self, index: u64) {
        let mut s = self.0.borrow_mut();
        let keep_recent = index.saturating_sub(s.data_from()) as usize;
        let keep = index.saturating_sub(s.prev_index + 1) as usize;
        s.metas.truncate(keep);
        while s.recent.len() > keep_recent {
            let e = s.recent.pop_back().expect("non-empty");
            s.recent_bytes -= e.data.len();
        }
        s.fetched = None;
    }

    /// Let go of applied entries (index at most `applied`) beyond `budget` bytes, oldest
    /// first: they stay in the log, and are read from there if a follower needs them.
    pub fn release_applied(&self, applied: u64, budget: usize) {
        let mut s = self.0.borrow_mut();
        while s.recent_bytes > budget && s.recent.front().is_some_and(|e| e.index <= applied) {
            let e = s.recent.pop_front().expect("non-empty");
            s.recent_bytes -= e.data.len();
        }
    }

    /// Bytes of entry data held.
    pub fn held_bytes(&self) -> usize {
        self.0.borrow().recent_bytes
    }

    /// Requests for entries that must be read from the log.
    pub fn take_fetches(&self) -> Vec<Fetch> {
        std::mem::take(&mut self.0.borrow_mut().fetches)
    }

    /// Whether requests for entries wait.
    pub fn fetches_pending(&self) -> bool {
        !self.0.borrow().fetches.is_empty()
    }

    /// Entries read from the log for a request; the next `entries` call from `first` is served
    /// from them.
    pub fn fill(&self, first: u64, entries: Vec<Entry>) {
        self.0.borrow_mut().fetched = Some((first, entries));
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.0.borrow_mut().hard = hs;
    }

    pub fn hard_state(&self) -> HardState {
        self.0.borrow().hard.clone()
    }

    /// Whether `id` is a voter of the applied configuration.
    pub fn is_voter(&self, id: u64) -> bool {
        self.0.borrow().conf.voters.contains(&id)
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.0.borrow_mut().conf = cs;
    }

    /// What `raft-state` should hold now: the commit index no higher than the stored log.
    pub fn state_file(&self) -> RaftStateFile {
        let s = self.0.borrow();
        RaftStateFile {
            term: s.hard.term,
            vote: s.hard.vote,
            commit: s.hard.commit.min(s.last_index()),
            voters: s.conf.voters.clone(),
            learners: s.conf.learners.clone(),
            base: LogBase {
                index: s.prev_index,
                term: s.prev_term,
                offset: s.prev_end,
                log_start: s.base_log_start,
            },
            installing: s.installing,
        }
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(RaftStorageError::Unavailable)
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let s = self.0.borrow();
        Ok(RaftState::new(s.hard.clone(), s.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let mut s = self.0.borrow_mut();
        if low <= s.prev_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > s.last_index() + 1 || low > high {
            return Err(unavailable());
        }
        let data_from = s.data_from();
        let mut out: Vec<Entry> = if low >= data_from {
            let lo = (low - data_from) as usize;
            let hi = (high - data_from) as usize;
            s.recent.range(lo..hi).cloned().collect()
        } else if let Some((first, got)) = s
            .fetched
            .take_if(|(first, got)| *first <= low && low < *first + got.len() as u64)
        {
            let lo = (low - first) as usize;
            let hi = ((high - first) as usize).min(got.len());
            got[lo..hi].to_vec()
        } else if context.can_async() {
            s.fetches.push(Fetch {
                low,
                high,
                max_size,
                context,
            });
            return Err(raft::Error::Store(
                RaftStorageError::LogTemporarilyUnavailable,
            ));
        } else {
            // Raft reads synchronously only what is not applied yet, which is always held.
            return Err(unavailable());
        };
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let s = self.0.borrow();
        if idx == s.prev_index {
            return Ok(s.prev_term);
        }
        if idx < s.prev_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        s.metas
            .get((idx - s.prev_index - 1) as usize)
            .map(|m| m.0)
            .ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().prev_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    /// Asked for when a follower needs entries below the base: the base itself (see
    /// [`LogBase`]), with the voter configuration (which only changes by entries above any
    /// base this store keeps: configuration changes are not made).
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let s = self.0.borrow();
        if s.prev_index == 0 || s.installing {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let base = LogBase {
            index: s.prev_index,
            term: s.prev_term,
            offset: s.prev_end,
            log_start: s.base_log_start,
        };
        let mut snap = Snapshot {
            data: base.encode_data().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = s.prev_index;
        meta.term = s.prev_term;
        meta.set_conf_state(s.conf.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(vec![0u8; len]),
            ..Default::default()
        }
    }

    fn store_of(n: u64) -> RaftStore {
        let s = RaftStore::new(&RaftStateFile::default(), 100);
        for i in 1..=n {
            s.push(entry(i, 1 + i / 4, 10), 100 + 10 * i as i64);
        }
        s
    }

    fn ids(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.index).collect()
    }

    #[test]
    fn offsets_terms_and_truncation() {
        let s = store_of(8);
        assert_eq!(s.end_of(0), Some(100));
        assert_eq!(s.end_of(8), Some(180));
        assert_eq!(s.end_of(9), None);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.term(0).unwrap(), 0);
        s.release_applied(3, 0);
        s.truncate_from(6);
        assert_eq!(s.last_index(), 5);
        assert_eq!(s.next_offset(), 150);
        assert_eq!(s.held_bytes(), 20, "entries 4 and 5 are held");
        s.push(entry(6, 5, 10), 160);
        let got = s
            .entries(4, 7, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(ids(&got), vec![4, 5, 6]);
        assert_eq!(got[2].term, 5);
        // Truncating below what is held empties the held entries.
        s.truncate_from(2);
        assert_eq!((s.last_index(), s.held_bytes()), (1, 0));
    }

    #[test]
    fn released_entries_are_fetched_asynchronously() {
        let s = store_of(6);
        s.release_applied(4, 15);
        // Applied entries go, oldest first, while more than 15 bytes are held: 1..=4 (the
        // unapplied 5 and 6 stay whatever their size).
        assert_eq!(s.held_bytes(), 20);
        assert!(matches!(
            s.entries(2, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Unavailable))
        ));
        assert!(!s.fetches_pending());
        assert!(matches!(
            s.entries(2, 6, None, GetEntriesContext::empty(true)),
            Err(raft::Error::Store(
                RaftStorageError::LogTemporarilyUnavailable
            ))
        ));
        let f = s.take_fetches();
        assert_eq!((f.len(), f[0].low, f[0].high), (1, 2, 6));
        s.fill(2, vec![entry(2, 1, 10), entry(3, 1, 10)]);
        let got = s
            .entries(2, 6, None, GetEntriesContext::empty(true))
            .unwrap();
        assert_eq!(ids(&got), vec![2, 3], "a shorter answer: raft asks again");
        // The fetched entries serve one request only.
        assert!(
            s.entries(2, 6, None, GetEntriesContext::empty(true))
                .is_err()
        );
        assert!(
            s.entries(5, 7, None, GetEntriesContext::empty(false))
                .is_ok()
        );
    }
}
