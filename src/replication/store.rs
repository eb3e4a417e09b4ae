//! The Raft store of one replicated partition: what `raft::Storage` asks of the log, kept in
//! memory beside the partition log, which holds the entries' bytes durably (see [`super::entry`]).
//!
//! - `entries`: the Raft entries from `first_index` on, in index order, each with the Kafka
//!   offset after it (`ends`). A data entry's `data` is the batch itself (the same `Bytes` the
//!   log's tail cache holds: no copy).
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
}

/// The file's name in the partition directory.
pub const RAFT_STATE_FILE: &str = "raft-state";

#[derive(Debug, Default)]
struct Inner {
    hard: HardState,
    conf: ConfState,
    /// Index and term of the entry before `entries[0]` (0, 0: none), and the Kafka offset
    /// after it.
    prev_index: u64,
    prev_term: u64,
    prev_end: i64,
    entries: VecDeque<Entry>,
    ends: VecDeque<i64>,
}

impl Inner {
    fn last_index(&self) -> u64 {
        self.prev_index + self.entries.len() as u64
    }
}

/// Shared by the replica and its `RawNode` (which owns a clone).
#[derive(Debug, Clone, Default)]
pub struct RaftStore(Rc<RefCell<Inner>>);

impl RaftStore {
    /// A store whose log begins at Kafka offset `start` (index 1 is the batch there).
    pub fn new(state: &RaftStateFile, start: i64) -> Self {
        let inner = Inner {
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
            prev_end: start,
            ..Default::default()
        };
        RaftStore(Rc::new(RefCell::new(inner)))
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
        s.ends.get((index - s.prev_index - 1) as usize).copied()
    }

    /// The Kafka offset after the last entry.
    pub fn next_offset(&self) -> i64 {
        let s = self.0.borrow();
        s.ends.back().copied().unwrap_or(s.prev_end)
    }

    /// Append `e`, which ends at Kafka offset `end`; its index must follow the last one.
    pub fn push(&self, e: Entry, end: i64) {
        let mut s = self.0.borrow_mut();
        assert_eq!(e.index, s.last_index() + 1, "Raft entries out of order");
        s.entries.push_back(e);
        s.ends.push_back(end);
    }

    /// Drop the entries from `index` on (a follower replacing a suffix its leader lacks).
    pub fn truncate_from(&self, index: u64) {
        let mut s = self.0.borrow_mut();
        let keep = index.saturating_sub(s.prev_index + 1) as usize;
        s.entries.truncate(keep);
        s.ends.truncate(keep);
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.0.borrow_mut().hard = hs;
    }

    pub fn hard_state(&self) -> HardState {
        self.0.borrow().hard.clone()
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.0.borrow_mut().conf = cs;
    }

    pub fn conf_state(&self) -> ConfState {
        self.0.borrow().conf.clone()
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
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let s = self.0.borrow();
        if low <= s.prev_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > s.last_index() + 1 || low > high {
            return Err(unavailable());
        }
        let lo = (low - s.prev_index - 1) as usize;
        let hi = (high - s.prev_index - 1) as usize;
        let mut out: Vec<Entry> = s.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
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
        s.entries
            .get((idx - s.prev_index - 1) as usize)
            .map(|e| e.term)
            .ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().prev_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The log is never compacted below what a follower still needs yet, so Raft never
        // asks for a snapshot (catching a follower up from below the log start is not built).
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
