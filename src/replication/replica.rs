//! One replica of a replicated partition: a raft-rs `RawNode` over the partition log, on the
//! shard that owns the partition. Sans-IO: the caller (the shard's replication driver, or the
//! simulation) moves time with [`Replica::tick`], hands in the peers' messages with
//! [`Replica::step`], runs [`Replica::process_ready`] after either, and sends what
//! [`Replica::take_messages`] returns.
//!
//! What Kafka sees:
//! - [`Replica::propose`] is a leader's produce: it stamps the batches with their offsets and
//!   the leader epoch (= the Raft term), proposes one entry per batch, and resolves once the
//!   entries are committed: fdatasynced on a majority (acks=all).
//! - the partition log's high watermark is the Kafka offset after the last committed entry.
//! - a replica that is not the leader answers proposals with `NotLeader`, and every proposal
//!   still waiting when its leader loses the term fails the same way (the client retries; the
//!   entry may still commit under the next leader, as in Kafka without idempotence).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use slog::Drain;

use super::entry::{self, EntryError};
use super::store::{LogBase, RAFT_STATE_FILE, RaftStateFile, RaftStore};
use crate::storage::batch::{self, BatchHeader};
use crate::storage::error::StorageError;
use crate::storage::io::Env;
use crate::storage::log::{AppendInfo, LogConfig, PartitionLog};
use crate::storage::producer_state::{ProducerStateTable, Verdict};
use crate::types::Offset;

/// Why a replica refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("too much data not yet committed: retry later")]
    Backpressure,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("raft-state: {0}")]
    State(String),
    #[error(
        "{0}: raft-state is missing but the replica existed before (a wiped or lost disk): \
         it must not vote or count toward a quorum until it rejoins as a learner"
    )]
    StateLost(String),
    #[error("replica failed earlier: {0}")]
    Failed(String),
    #[error("a retry of an idempotent batch that is not committed yet: retry")]
    DuplicateInFlight,
}

impl ReplicaError {
    /// The Kafka error code a produce gets.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            ReplicaError::NotLeader { .. } => 6,  // NOT_LEADER_OR_FOLLOWER
            ReplicaError::Backpressure => 7,      // REQUEST_TIMED_OUT: the client retries
            ReplicaError::DuplicateInFlight => 7, // the retry is answered once it committed
            ReplicaError::Storage(e) => e.kafka_error_code(),
            _ => 56, // KAFKA_STORAGE_ERROR
        }
    }
}

/// The answer to a placed proposal: its commit (or acknowledgement), or why it was not placed.
async fn answered(
    placed: Result<oneshot::Receiver<Result<AppendInfo, ReplicaError>>, ReplicaError>,
) -> Result<AppendInfo, ReplicaError> {
    let rx = placed?;
    rx.await.unwrap_or_else(|_| {
        Err(ReplicaError::Failed(
            "the replica closed before the commit".into(),
        ))
    })
}

/// How many entries behind the commit index a follower may be and still count as in sync.
pub const IN_SYNC_ENTRIES_BEHIND_MAX: u64 = 256;

/// A replica's Raft settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This broker's id in the group (> 0).
    pub id: u64,
    /// The group's voters when the partition is created.
    pub voters: Vec<u64>,
    /// The replica is being created now (the cluster assigned it and no earlier state of it
    /// can exist). Otherwise a missing `raft-state` is `StateLost`: the disk lost what Raft
    /// relies on (term, vote), and starting fresh could vote twice in a term.
    pub new_replica: bool,
    /// Ticks without a leader's word before an election (the timeout is drawn from
    /// `[election_tick, 2 * election_tick)` when `randomized_timeout`).
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Draw the election timeout at random (production). The simulation turns it off (raft-rs
    /// draws from the thread's RNG) and randomizes by when it ticks each replica instead.
    pub randomized_timeout: bool,
    /// Proposals beyond this many uncommitted bytes get `Backpressure`.
    pub max_uncommitted_bytes: u64,
    /// Bytes of entries per append message, and appends in flight per follower.
    pub max_bytes_per_message: u64,
    pub max_inflight_messages: usize,
    /// Bytes of applied entries kept in memory for followers that are a little behind; older
    /// ones are read back from the log when a follower needs them.
    pub applied_bytes_held: usize,
    /// The replica that should lead (the first of the partition's replica list, Kafka's
    /// preferred replica), if any: see [`Replica::balance_leadership`]. A new group's
    /// preferred replica campaigns as soon as it opens.
    pub preferred_leader: Option<u64>,
    /// Ticks a follower may go without having caught up with the leader's log and still be
    /// reported in sync (Kafka's `replica.lag.time.max.ms`, in ticks).
    pub lag_time_max_ticks: u64,
}

impl ReplicaConfig {
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        ReplicaConfig {
            id,
            voters,
            new_replica: false,
            election_tick: 10,
            heartbeat_tick: 2,
            randomized_timeout: true,
            max_uncommitted_bytes: 64 << 20,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            applied_bytes_held: 4 << 20,
            preferred_leader: None,
            lag_time_max_ticks: 1_500,
        }
    }
}

/// When a proposal is acknowledged (Kafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=1: once the leader's own log has the entries (fdatasynced). Not yet committed: a
    /// leader that loses its term before the commit may lose them.
    Leader,
    /// acks=all: once committed, i.e. fdatasynced on a majority.
    All,
}

struct Waiter {
    term: u64,
    /// When the proposal was made: commit latency on `/metrics`.
    placed: std::time::Instant,
    info: AppendInfo,
    tx: oneshot::Sender<Result<AppendInfo, ReplicaError>>,
}

/// A proposal made while [`Replica::process_ready`] was between raft-rs's `ready` and
/// `advance` (raft-rs's synchronous ready cycle allows no new entries there). Its offsets
/// and epoch are assigned at the call, as for any proposal; it is stepped into Raft right
/// after the `advance`, in call order.
struct Deferred {
    term: u64,
    entries: Vec<Entry>,
    bytes: u64,
    /// The Kafka offset after its entries.
    end: i64,
    acks: Acks,
    info: AppendInfo,
    tx: oneshot::Sender<Result<AppendInfo, ReplicaError>>,
}

/// An idempotent batch whose sequence leaves a gap after what this leader holds: refused
/// with `error` only once a quorum confirms the leadership (a Raft read index), since a
/// leader deposed without knowing it lacks what its successor acknowledged.
struct GapCheck {
    term: u64,
    error: StorageError,
    tx: oneshot::Sender<Result<AppendInfo, ReplicaError>>,
}

/// One replica; see the module docs.
pub struct Replica {
    id: u64,
    env: Env,
    dir: PathBuf,
    log: Rc<PartitionLog>,
    store: RaftStore,
    applied_bytes_held: usize,
    max_uncommitted_bytes: u64,
    node: RefCell<RawNode<RaftStore>>,
    /// Proposals waiting for commit, by the index of their last entry.
    waiters: RefCell<BTreeMap<u64, Waiter>>,
    /// acks=1 proposals waiting for the leader's own write, likewise.
    leader_waiters: RefCell<BTreeMap<u64, Waiter>>,
    outbox: RefCell<Vec<Message>>,
    /// Proposals waiting for the current ready cycle to end, in call order.
    deferred: RefCell<Vec<Deferred>>,
    /// How many proposals were deferred so, since the replica opened.
    deferred_total: Cell<u64>,
    /// How many times this replica became its group's leader, since it opened.
    elections_won: Cell<u64>,
    /// Idempotent and transactional batches, and transaction markers, this leader proposed
    /// that its log does not hold yet, per producer (headers with their assigned base
    /// offsets): with the log's producer state, what a new batch of the producer is checked
    /// against.
    proposed_producers: RefCell<HashMap<i64, Vec<BatchHeader>>>,
    /// Transaction markers this leader proposed that its log does not hold yet: (producer
    /// id, base offset, coordinator epoch), for the coordinator-epoch check of later ones.
    proposed_markers: RefCell<Vec<(i64, i64, i32)>>,
    /// Sequence gaps waiting for their read index, by its context.
    gap_checks: RefCell<BTreeMap<u64, GapCheck>>,
    /// Read indexes asked for inside a ready cycle, asked of Raft after its `advance`.
    reads_to_ask: RefCell<Vec<u64>>,
    next_read: Cell<u64>,
    /// The commit index named by the first append this replica took from a leader since it
    /// opened: what it must hold to have caught up (see [`Replica::caught_up`]).
    catch_up_to: Cell<Option<u64>>,
    /// Peers back with a wiped data directory whose progress this leader forgot: (term,
    /// incarnation) of the last reset, per peer.
    rejoined: RefCell<HashMap<u64, (u64, u64)>>,
    /// Peers whose latest messages came with a new data directory not registered yet: their
    /// votes are dropped, so the leadership is not handed to them.
    rejoining_peers: RefCell<std::collections::HashSet<u64>>,
    /// Whether a heartbeat named a commit beyond this replica's log (its leader remembers
    /// entries this replica lost) since it opened: logged once.
    commit_clamped: Cell<bool>,
    /// (term, vote) last written to `raft-state`.
    persisted: Cell<(u64, u64)>,
    busy: Cell<bool>,
    /// Catch-up reads of the log for raft-rs.
    log_reads: Cell<u64>,
    preferred_leader: Option<u64>,
    /// Leadership handed to the preferred replica since the replica opened.
    transfers: Cell<u64>,
    /// Bytes of entries sent in appends.
    bytes_sent: Cell<u64>,
    /// Ticks since the replica opened, and the tick each peer was last heard from.
    ticks: Cell<u64>,
    heard: RefCell<HashMap<u64, u64>>,
    election_tick: u64,
    /// A compaction asked for ([`Replica::request_compaction`]): the segments below the
    /// first offset go, and the Raft base moves to the second; done by the next ready round.
    compact_request: Cell<Option<(i64, i64)>>,
    /// Where a compacted prefix is copied from ([`super::prefix`]).
    prefix_source: RefCell<Option<Rc<dyn super::prefix::PrefixSource>>>,
    /// A snapshot install whose compacted prefix is not copied yet: the ready rounds wait
    /// for it.
    pending_prefix: Cell<Option<LogBase>>,
    /// The driver is stopping: a prefix copy gives up.
    stopping: Cell<bool>,
    /// A failed prefix copy is tried again at this tick, and the backoff of the next one.
    prefix_retry_tick: Cell<u64>,
    prefix_backoff_ticks: Cell<u64>,
    /// Compacted prefixes copied since the replica opened.
    prefixes_copied: Cell<u64>,
    /// Snapshots installed and compactions done since the replica opened.
    snapshots_installed: Cell<u64>,
    compactions: Cell<u64>,
    /// On the leader: the tick each follower last held the leader's whole log (set to the
    /// election's tick for every voter when this replica becomes leader, as Kafka's new
    /// leader starts its ISR members' clocks).
    caught_up_at: RefCell<HashMap<u64, u64>>,
    /// The term `caught_up_at` is for, and the leader's last index at each of the last
    /// `election_tick` ticks, oldest first.
    caught_up_term: Cell<u64>,
    last_at_ticks: RefCell<VecDeque<u64>>,
    lag_time_max_ticks: u64,
    /// Readies whose entries are written and not yet known durable, oldest first (see
    /// [`Replica::process_ready`]).
    persisting: RefCell<VecDeque<Persisting>>,
    /// Called when a write becomes durable (the driver's wake-up), so the ready work that
    /// waited for it runs at once.
    on_durable: RefCell<Option<Rc<dyn Fn()>>>,
    /// The simulation's knob: yield once after writing a ready's entries, as a slow append
    /// would, so proposals arrive inside the ready cycle and take the deferred path.
    yield_after_write: Cell<bool>,
    failed: RefCell<Option<String>>,
}

/// A ready whose entries were handed to the log: raft-rs hears it is persisted
/// (`on_persist_ready`), and the messages that had to wait for that go out, once the log says
/// its last entry is durable.
struct Persisting {
    number: u64,
    /// The last Raft index it wrote.
    last_index: u64,
    /// Set by the task waiting for durability; None while it waits (or nothing to wait
    /// for: `Some(Ok)` from the start).
    done: Rc<RefCell<Option<Result<(), StorageError>>>>,
    /// The append whose durability is waited for.
    append: Option<AppendInfo>,
    messages: Vec<Message>,
}

fn logger(name: &str) -> slog::Logger {
    slog::Logger::root(
        slog_stdlog::StdLog.fuse(),
        slog::o!("partition" => name.to_string()),
    )
}

fn parse_pb<M: protobuf::Message>(data: &[u8]) -> Result<M, ReplicaError> {
    M::parse_from_bytes(data).map_err(|e| ReplicaError::Raft(e.to_string()))
}

fn raft_err(e: raft::Error) -> ReplicaError {
    ReplicaError::Raft(e.to_string())
}

impl Replica {
    /// Open the partition log in `dir` (created if absent) and its Raft state, rebuild the Raft
    /// store from the log, and start as a follower. The high watermark is held at what the
    /// replica knew was committed (it rises once a leader says more is).
    pub async fn open(
        env: Env,
        dir: PathBuf,
        log_cfg: LogConfig,
        cfg: &ReplicaConfig,
    ) -> Result<Rc<Replica>, ReplicaError> {
        env.disk
            .create_dir_all(&dir)
            .await
            .map_err(|e| StorageError::io("creating the partition directory", e))?;
        let state_path = dir.join(RAFT_STATE_FILE);
        let state = match env
            .read_if_exists(&state_path)
            .await
            .map_err(|e| StorageError::io("reading raft-state", e))?
        {
            Some(b) => serde_json::from_slice::<RaftStateFile>(&b)
                .map_err(|e| ReplicaError::State(format!("{}: {e}", state_path.display())))?,
            None if !cfg.new_replica => {
                return Err(ReplicaError::StateLost(dir.display().to_string()));
            }
            None => {
                // Durable before the replica takes part in anything: a replica that ever
                // voted or acknowledged has this file.
                let fresh = RaftStateFile {
                    voters: cfg.voters.clone(),
                    ..Default::default()
                };
                write_state(&env, &state_path, &fresh).await?;
                fresh
            }
        };
        let log = PartitionLog::open_in(env.clone(), dir.clone(), log_cfg).await?;
        // The cleaner never takes Raft's entries (moved to the base below).
        log.set_clean_limit(Offset(0));
        // Without a base, index 1 is the first batch on disk (the log start may be inside it).
        let store = RaftStore::new(&state, log.first_segment_base().0);
        let base = store.base();
        let mut pending_prefix = None;
        if base.index > 0 {
            // The log begins after the base: finish what a crash interrupted (an install, or
            // a compaction that persisted its base and had not removed the segments below).
            let lost =
                log.log_end_offset().0 < base.offset || log.first_segment_base().0 > base.offset;
            if state.installing || lost {
                if lost && !state.installing {
                    tracing::warn!(dir = %dir.display(), base = base.offset, log_end = log.log_end_offset().get(), "the log does not reach its Raft base: starting empty there");
                }
                if Replica::has_prefix(&base) && !state.installing {
                    // Durable before the reset: a stop or crash before the copy is done
                    // must find the install unfinished.
                    store.reinstalling();
                    write_state(&env, &state_path, &store.state_file()).await?;
                }
                log.reset_to_empty(Offset(base.offset)).await?;
                if Replica::has_prefix(&base) {
                    // A compacted prefix to copy from the leader first (`prefix`): the
                    // install stays unfinished until it is in.
                    pending_prefix = Some(base);
                } else {
                    store.installed();
                    write_state(&env, &state_path, &store.state_file()).await?;
                }
            }
            if pending_prefix.is_none() {
                log.move_log_start(Offset(base.log_start.min(log.log_end_offset().0)))
                    .await?;
            }
            // A compacted log keeps its segments below the base (its prefix) but those below
            // its log start.
            let keep_from = if Replica::has_prefix(&base) {
                log.segment_base_at(log.log_start_offset()).0
            } else {
                base.offset
            };
            log.remove_segments_below(Offset(keep_from.min(base.offset)))
                .await?;
        }
        log.set_clean_limit(Offset(base.offset));
        // Every batch of the log after the base is an entry; what was applied is let go below.
        rebuild(&log, &store).await?;
        // `raft-state` may name a commit beyond what the log kept: it is written while
        // entries still wait for their fdatasync, and a crash loses those. What the log kept
        // up to that commit is committed (it came from the leader that named the commit, and
        // cuts are durable before anything after them is written); raft-rs refuses a commit
        // outside [base, last index].
        let committed = state.commit.clamp(store.base().index, store.last_index());
        let mut hs = store.hard_state();
        hs.commit = committed;
        store.set_hard_state(hs);
        store.release_applied(committed, cfg.applied_bytes_held);
        let hw = store.end_of(committed).unwrap_or(log.log_start_offset().0);
        log.hold_high_watermark_at(Offset(hw));

        let min_election = cfg.election_tick;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            min_election_tick: min_election,
            max_election_tick: if cfg.randomized_timeout {
                2 * min_election
            } else {
                min_election + 1
            },
            applied: committed,
            max_size_per_msg: cfg.max_bytes_per_message,
            max_inflight_msgs: cfg.max_inflight_messages,
            max_uncommitted_size: cfg.max_uncommitted_bytes,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate().map_err(raft_err)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut node = RawNode::new(&raft_cfg, store.clone(), &logger(&name)).map_err(raft_err)?;
        // A new group elects its preferred replica first, rather than whichever times out
        // first (if its peers are not listening yet, the usual election follows).
        if cfg.new_replica && cfg.preferred_leader == Some(cfg.id) && cfg.voters.len() > 1 {
            node.campaign().map_err(raft_err)?;
        }
        Ok(Rc::new(Replica {
            id: cfg.id,
            env,
            dir,
            log,
            store,
            applied_bytes_held: cfg.applied_bytes_held,
            max_uncommitted_bytes: cfg.max_uncommitted_bytes,
            node: RefCell::new(node),
            waiters: RefCell::new(BTreeMap::new()),
            leader_waiters: RefCell::new(BTreeMap::new()),
            outbox: RefCell::new(Vec::new()),
            deferred: RefCell::new(Vec::new()),
            deferred_total: Cell::new(0),
            elections_won: Cell::new(0),
            proposed_producers: RefCell::new(HashMap::new()),
            proposed_markers: RefCell::new(Vec::new()),
            gap_checks: RefCell::new(BTreeMap::new()),
            reads_to_ask: RefCell::new(Vec::new()),
            next_read: Cell::new(0),
            catch_up_to: Cell::new(None),
            rejoined: RefCell::new(HashMap::new()),
            rejoining_peers: RefCell::new(std::collections::HashSet::new()),
            commit_clamped: Cell::new(false),
            persisted: Cell::new((state.term, state.vote)),
            busy: Cell::new(false),
            log_reads: Cell::new(0),
            preferred_leader: cfg.preferred_leader,
            transfers: Cell::new(0),
            bytes_sent: Cell::new(0),
            ticks: Cell::new(0),
            heard: RefCell::new(HashMap::new()),
            election_tick: cfg.election_tick as u64,
            compact_request: Cell::new(None),
            prefix_source: RefCell::new(None),
            pending_prefix: Cell::new(pending_prefix),
            stopping: Cell::new(false),
            prefix_retry_tick: Cell::new(0),
            prefix_backoff_ticks: Cell::new(1),
            prefixes_copied: Cell::new(0),
            snapshots_installed: Cell::new(0),
            compactions: Cell::new(0),
            caught_up_at: RefCell::new(HashMap::new()),
            caught_up_term: Cell::new(0),
            last_at_ticks: RefCell::new(VecDeque::new()),
            lag_time_max_ticks: cfg.lag_time_max_ticks,
            persisting: RefCell::new(VecDeque::new()),
            on_durable: RefCell::new(None),
            yield_after_write: Cell::new(false),
            failed: RefCell::new(None),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn log(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    pub fn is_leader(&self) -> bool {
        self.node.borrow().raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.node.borrow().raft.term
    }

    /// On a leader that has applied an entry of its own term (the empty entry Raft appends
    /// on election, or later): its term. From then on its log holds every entry any earlier
    /// leader committed, and they are below the high watermark, so state rebuilt from the log
    /// (the group coordinator's offsets) misses nothing acknowledged. None elsewhere.
    pub fn leader_ready(&self) -> Option<u64> {
        let n = self.node.borrow();
        if n.raft.state != StateRole::Leader {
            return None;
        }
        let applied = n.raft.raft_log.applied;
        (n.raft.raft_log.term(applied).ok() == Some(n.raft.term)).then_some(n.raft.term)
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        let id = self.node.borrow().raft.leader_id;
        (id != raft::INVALID_ID).then_some(id)
    }

    /// On the leader: the replicas in sync with it as Kafka reports them (Metadata's ISR):
    /// itself, and every follower that held the leader's whole log within the last
    /// `lag_time_max_ticks` (`replica.lag.time.max.ms`). Elsewhere: empty (a follower does
    /// not know).
    pub fn in_sync(&self) -> Vec<u64> {
        let n = self.node.borrow();
        if n.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let now = self.ticks.get();
        let caught_up = self.caught_up_at.borrow();
        let mut ids: Vec<u64> = n
            .raft
            .prs()
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| {
                *id == self.id
                    || caught_up
                        .get(id)
                        .is_some_and(|&t| now.saturating_sub(t) <= self.lag_time_max_ticks)
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// On the leader: the replicas in sync with it right now: itself, and every follower
    /// heard from within the election timeout whose log matches the leader's to within
    /// [`IN_SYNC_ENTRIES_BEHIND_MAX`] entries of the commit index. What `min.insync.replicas`
    /// is checked against: stricter than [`Replica::in_sync`], so an acks=all write is not
    /// taken with fewer live copies than asked for while a dead follower is still reported.
    /// Elsewhere: empty.
    pub fn in_sync_now(&self) -> Vec<u64> {
        let n = self.node.borrow();
        if n.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let committed = n.raft.raft_log.committed;
        let mut ids: Vec<u64> = n
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| {
                **id == self.id
                    || (p.recent_active && p.matched + IN_SYNC_ENTRIES_BEHIND_MAX >= committed)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Index of the last committed entry, and of the last entry.
    pub fn commit_and_last_index(&self) -> (u64, u64) {
        let n = self.node.borrow();
        (n.raft.raft_log.committed, n.raft.raft_log.last_index())
    }

    /// Index of the last applied entry (the high watermark is the offset after it).
    pub fn applied_index(&self) -> u64 {
        self.node.borrow().raft.raft_log.applied
    }

    /// How many times entries were read back from the log for a lagging follower.
    pub fn log_reads(&self) -> u64 {
        self.log_reads.get()
    }

    /// On the leader: hand the leadership to the preferred replica if it is another one, is
    /// in the voter set, is not rejoining with a wiped data directory (its votes would be
    /// dropped), was heard from within the last election timeout (counted here:
    /// raft-rs's `recent_active` is reset every election timeout, so a check in step with
    /// that reset would never see it) and holds the whole log
    /// (Raft's leadership transfer: the leader stops taking proposals, which get NotLeader,
    /// and tells the preferred replica to campaign at once; if it does not win within an
    /// election timeout the leader carries on). Returns whether a transfer began.
    pub fn balance_leadership(&self) -> bool {
        let Some(preferred) = self.preferred_leader else {
            return false;
        };
        let mut n = self.node.borrow_mut();
        if n.raft.state != StateRole::Leader
            || preferred == self.id
            || n.raft.lead_transferee.is_some()
            || self.rejoining_peers.borrow().contains(&preferred)
        {
            return false;
        }
        let last = n.raft.raft_log.last_index();
        let ready = n
            .raft
            .prs()
            .get(preferred)
            .is_some_and(|p| p.matched == last)
            && self.store.is_voter(preferred)
            && self
                .heard
                .borrow()
                .get(&preferred)
                .is_some_and(|&t| self.ticks.get().saturating_sub(t) < self.election_tick);
        if !ready {
            return false;
        }
        tracing::info!(dir = %self.dir.display(), to = preferred, term = n.raft.term, "handing the leadership to the preferred replica");
        n.transfer_leader(preferred);
        self.transfers.set(self.transfers.get() + 1);
        true
    }

    /// Leadership transfers to the preferred replica this replica began as leader.
    pub fn leadership_transfers(&self) -> u64 {
        self.transfers.get()
    }

    /// How many times this replica became its group's leader since it opened.
    pub fn elections_won(&self) -> u64 {
        self.elections_won.get()
    }

    /// On the leader: entries of its log the slowest follower does not have yet (0
    /// elsewhere).
    pub fn follower_lag(&self) -> u64 {
        let n = self.node.borrow();
        if n.raft.state != StateRole::Leader {
            return 0;
        }
        let last = n.raft.raft_log.last_index();
        n.raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, p)| last.saturating_sub(p.matched))
            .max()
            .unwrap_or(0)
    }

    /// How many proposals arrived inside a ready cycle and were deferred to its end.
    pub fn deferred_proposals(&self) -> u64 {
        self.deferred_total.get()
    }

    /// Whether Raft has work for [`Replica::process_ready`].
    pub fn has_ready(&self) -> bool {
        if self.pending_prefix.get().is_some() {
            // Nothing else runs until the compacted prefix is in.
            return self.prefix_due();
        }
        self.node.borrow().has_ready()
            || self.store.fetches_pending()
            || self.compact_request.get().is_some()
            || self
                .persisting
                .borrow()
                .front()
                .is_some_and(|p| p.done.borrow().is_some())
    }

    /// The simulation's knob (see the field).
    #[cfg(test)]
    pub fn set_yield_after_write(&self, on: bool) {
        self.yield_after_write.set(on);
    }

    /// What to call when a write becomes durable (see [`Replica::process_ready`]).
    pub fn set_on_durable(&self, f: Option<Rc<dyn Fn()>>) {
        *self.on_durable.borrow_mut() = f;
    }

    /// Ask for the log to begin at `remove_below` on disk (a segment base: retention, or the
    /// segments below a moved log start) and for the Raft base to move to `base_to` (at
    /// least `remove_below`; further on a compacted log, whose segments below the base stay
    /// as its compacted prefix): the next ready round moves the Raft base, as far toward
    /// `base_to` as the applied entries allow, then removes the segments below both (see
    /// [`Replica::compact`]).
    pub fn request_compaction(&self, remove_below: Offset, base_to: Offset) {
        let base = self.store.base().offset;
        let base_to = base_to.0.max(remove_below.0);
        if base_to > base || self.log.first_segment_base().0 < remove_below.0.min(base) {
            self.compact_request.set(Some(
                self.compact_request
                    .get()
                    .map_or((remove_below.0, base_to), |(r, b)| {
                        (r.max(remove_below.0), b.max(base_to))
                    }),
            ));
        }
    }

    /// Where a compacted prefix is copied from when a snapshot needs one.
    pub fn set_prefix_source(&self, source: Option<Rc<dyn super::prefix::PrefixSource>>) {
        *self.prefix_source.borrow_mut() = source;
    }

    pub(super) fn prefix_source(&self) -> Option<Rc<dyn super::prefix::PrefixSource>> {
        self.prefix_source.borrow().clone()
    }

    pub(super) fn set_pending_prefix(&self, base: Option<LogBase>) {
        self.pending_prefix.set(base);
    }

    /// Whether a copy of the pending compacted prefix is due: a leader is known (the source)
    /// and the backoff after a failed copy is over.
    fn prefix_due(&self) -> bool {
        self.leader().is_some() && self.ticks.get() >= self.prefix_retry_tick.get()
    }

    /// After a failed prefix copy: the next one after a backoff (doubling, at most
    /// `max_ticks`).
    pub(super) fn back_off_prefix(&self, max_ticks: u64) -> u64 {
        let b = self.prefix_backoff_ticks.get();
        self.prefix_retry_tick.set(self.ticks.get() + b);
        self.prefix_backoff_ticks.set((b * 2).min(max_ticks));
        b
    }

    /// A snapshot install waits for its compacted prefix (the replica takes part in nothing
    /// until it is copied).
    pub fn prefix_pending(&self) -> bool {
        self.pending_prefix.get().is_some()
    }

    /// Compacted prefixes copied from a leader since the replica opened.
    pub fn prefixes_copied(&self) -> u64 {
        self.prefixes_copied.get()
    }

    pub(super) fn count_prefix_copied(&self) {
        self.prefixes_copied.set(self.prefixes_copied.get() + 1);
    }

    /// The driver is stopping: a prefix copy in progress gives up.
    pub fn stop_installing(&self) {
        self.stopping.set(true);
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// The partition directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The last step of a snapshot install: `raft-state` without the `installing` flag.
    pub(super) async fn finish_install(&self) -> Result<(), ReplicaError> {
        self.store.installed();
        self.write_state().await
    }

    /// The Raft base: the entry before the first one the log keeps.
    pub fn base(&self) -> LogBase {
        self.store.base()
    }

    /// Snapshots installed, and compactions of its own log done, since the replica opened.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (self.snapshots_installed.get(), self.compactions.get())
    }

    /// One tick of the election and heartbeat clocks.
    pub fn tick(&self) {
        let now = self.ticks.get() + 1;
        self.ticks.set(now);
        let mut node = self.node.borrow_mut();
        node.tick();
        if node.raft.state == StateRole::Leader {
            let last = node.raft.raft_log.last_index();
            let mut caught_up = self.caught_up_at.borrow_mut();
            // A new term: every voter starts in sync.
            let mut lasts = self.last_at_ticks.borrow_mut();
            if self.caught_up_term.replace(node.raft.term) != node.raft.term {
                caught_up.clear();
                for (id, _) in node.raft.prs().iter() {
                    caught_up.insert(*id, now);
                }
                lasts.clear();
            }
            // Caught up: holding what the leader had an election timeout ago (under a
            // steady load a follower is always behind the very last entry by its round trip
            // and fdatasync), as Kafka counts a fetch that reached the leader's end as of
            // the follower's previous fetch. A follower not heard from (down, cut off) does
            // not count even if idle.
            lasts.push_back(last);
            while lasts.len() as u64 > self.election_tick.max(1) {
                lasts.pop_front();
            }
            let target = lasts.front().copied().unwrap_or(last);
            let heard = self.heard.borrow();
            for (id, p) in node.raft.prs().iter() {
                let alive = *id == self.id
                    || heard
                        .get(id)
                        .is_some_and(|&t| now.saturating_sub(t) < self.election_tick);
                if alive && p.matched >= target {
                    caught_up.insert(*id, now);
                }
            }
        }
    }

    /// Hand in a peer's message. A message for an unknown peer or a stale one is dropped, as
    /// the network may do.
    pub fn step(&self, mut m: Message) {
        self.heard.borrow_mut().insert(m.from, self.ticks.get());
        let append = (m.get_msg_type() == MessageType::MsgAppend
            && self.catch_up_to.get().is_none())
        .then_some((m.from, m.term, m.commit));
        let mut node = self.node.borrow_mut();
        // A leader that still counts what this replica held before its disk was wiped sends
        // a heartbeat commit beyond this log (raft-rs would panic: it assumes stable
        // storage). Its commit index is not taken: the appends that re-replicate the log
        // carry it, checked by log matching.
        if m.get_msg_type() == MessageType::MsgHeartbeat
            && m.commit > node.raft.raft_log.last_index()
        {
            if !self.commit_clamped.replace(true) {
                tracing::warn!(dir = %self.dir.display(), commit = m.commit, last_index = node.raft.raft_log.last_index(), "the leader names a commit beyond this log (this replica lost its data): catching up from its appends");
            }
            m.commit = node.raft.raft_log.committed;
        }
        if let Err(e) = node.step(m) {
            tracing::debug!(dir = %self.dir.display(), "raft message dropped: {e}");
            return;
        }
        // Only a current leader's word counts (a deposed one's commit index may be behind).
        if let Some((from, term, commit)) = append
            && node.raft.leader_id == from
            && node.raft.term == term
        {
            self.catch_up_to.set(Some(commit));
        }
    }

    /// On the leader: `peer` is back with a wiped data directory (`incarnation` is its new
    /// one). Raft's progress for it (what it acknowledged before) is forgotten, once per term
    /// and incarnation: it no longer counts toward commits, and the leader probes it from the
    /// start of the log (a stale match would make the leader ignore its rejections forever).
    pub fn forget_rejoining_peer(&self, peer: u64, incarnation: u64) {
        self.rejoining_peers.borrow_mut().insert(peer);
        let mut node = self.node.borrow_mut();
        if node.raft.state != StateRole::Leader || peer == self.id {
            return;
        }
        let key = (node.raft.term, incarnation);
        if self.rejoined.borrow().get(&peer) == Some(&key) {
            return;
        }
        self.rejoined.borrow_mut().insert(peer, key);
        if let Some(pr) = node.raft.mut_prs().get_mut(peer) {
            tracing::info!(dir = %self.dir.display(), peer, matched = pr.matched, "forgetting a rejoining replica's progress: re-replicating it from the start");
            pr.matched = 0;
            pr.become_probe();
            pr.next_idx = 1;
        }
    }

    /// A message from `peer` came with its registered data directory: it votes again, and the
    /// leadership may be handed to it.
    pub fn peer_registered(&self, peer: u64) {
        let mut set = self.rejoining_peers.borrow_mut();
        if !set.is_empty() {
            set.remove(&peer);
        }
    }

    /// Whether this replica holds (fdatasynced) everything its leader had committed when it
    /// first heard from it after opening; a leader has. A broker back with a wiped data
    /// directory votes again only once every replica it holds has caught up so.
    pub fn caught_up(&self) -> bool {
        let n = self.node.borrow();
        if n.raft.state == StateRole::Leader {
            return true;
        }
        self.catch_up_to
            .get()
            .is_some_and(|t| n.raft.raft_log.committed >= t && n.raft.raft_log.persisted >= t)
    }

    /// Messages to send to peers (each has `to`), in order.
    pub fn take_messages(&self) -> Vec<Message> {
        let out = std::mem::take(&mut *self.outbox.borrow_mut());
        // A snapshot is a few bytes (where the log continues), sent like any message: the
        // leader goes back to probing at once. If it was lost, the follower rejects the next
        // append and the leader sends it again.
        for m in out
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            self.node
                .borrow_mut()
                .report_snapshot(m.to, raft::SnapshotStatus::Finish);
        }
        let bytes: usize = out
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgAppend)
            .flat_map(|m| m.get_entries())
            .map(|e| e.data.len())
            .sum();
        self.bytes_sent.set(self.bytes_sent.get() + bytes as u64);
        out
    }

    /// Bytes of entries this replica sent to followers in appends (re-sends included).
    pub fn bytes_replicated(&self) -> u64 {
        self.bytes_sent.get()
    }

    /// On the leader: per follower, the entries of the leader's log it does not have yet.
    pub fn follower_lags(&self) -> Vec<(u64, u64)> {
        let n = self.node.borrow();
        if n.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let last = n.raft.raft_log.last_index();
        n.raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, p)| (*id, last.saturating_sub(p.matched)))
            .collect()
    }

    /// Propose `records` (whole batches, as a Produce carries them) as this partition's
    /// leader. The call assigns the offsets; the returned future resolves once the entries are
    /// committed. Order: proposals take effect in the order of the calls.
    pub fn propose(
        &self,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        self.propose_with(records, Acks::All)
    }

    /// [`Replica::propose`], acknowledged as `acks` says.
    pub fn propose_with(
        &self,
        records: Bytes,
        acks: Acks,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let placed = self.place(records, acks);
        answered(placed)
    }

    /// On the leader: propose moving the partition's log start to `offset` (DeleteRecords), as
    /// a control batch in the log ([`entry::log_start_batch`]) that every replica applies
    /// once committed ([`PartitionLog::move_log_start`]); the segments below go with the next
    /// compaction. Resolves once committed and applied here. `offset` must be at most the
    /// high watermark (the caller checks).
    pub fn propose_log_start(
        &self,
        offset: Offset,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let placed = entry::log_start_batch(offset.0)
            .map_err(ReplicaError::from)
            .and_then(|b| self.place_as(b, Acks::All, true));
        answered(placed)
    }

    /// On the leader: propose a transaction marker (COMMIT or ABORT) of `producer_id` at
    /// `producer_epoch`, as the transaction coordinator asks through WriteTxnMarkers. Every
    /// replica's producer state closes the producer's open transaction when it appends it;
    /// the last stable offset passes it once committed. Resolves once committed. An epoch
    /// older than the producer's here is `InvalidProducerEpoch`.
    pub fn propose_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: crate::storage::producer_state::Marker,
        coordinator_epoch: i32,
        timestamp_ms: i64,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let bytes = batch::encode_marker(
            producer_id,
            producer_epoch,
            marker,
            coordinator_epoch,
            timestamp_ms,
        );
        let placed = self.place_as(bytes, Acks::All, true);
        answered(placed)
    }

    /// On the leader: propose one batch the broker writes for a producer (a transactional
    /// offset commit to `__consumer_offsets`): producer id and epoch, no sequence; only the
    /// epoch is checked. Resolves once committed.
    pub fn propose_for_producer(
        &self,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let placed = self.place_as(records, Acks::All, true);
        answered(placed)
    }

    fn place(
        &self,
        records: Bytes,
        acks: Acks,
    ) -> Result<oneshot::Receiver<Result<AppendInfo, ReplicaError>>, ReplicaError> {
        self.place_as(records, acks, false)
    }

    /// `internal`: the replica's own control batch (clients may not send control batches).
    fn place_as(
        &self,
        records: Bytes,
        acks: Acks,
        internal: bool,
    ) -> Result<oneshot::Receiver<Result<AppendInfo, ReplicaError>>, ReplicaError> {
        if let Some(why) = self.failed.borrow().clone() {
            return Err(ReplicaError::Failed(why));
        }
        let mut node = self.node.borrow_mut();
        if node.raft.state != StateRole::Leader {
            let id = node.raft.leader_id;
            return Err(ReplicaError::NotLeader {
                leader: (id != raft::INVALID_ID && id != self.id).then_some(id),
            });
        }
        let batches = batch::validate_all_for_append(&records, self.log.cfg().max_message_bytes)?;
        if !internal
            && batches
                .iter()
                .any(|(_, _, h)| h.attributes & batch::ATTR_CONTROL != 0)
        {
            return Err(StorageError::InvalidRecord(
                "a producer may not write control batches".into(),
            )
            .into());
        }
        if !internal && self.log.cfg().compact {
            // A compacted topic refuses records without a key, as Kafka does.
            crate::storage::cleaner::records::check_keys_all(&records, &batches)?;
        }
        if batches
            .iter()
            .any(|(_, _, h)| h.attributes & batch::ATTR_TRANSACTIONAL != 0 && h.producer_id < 0)
        {
            return Err(StorageError::InvalidRecord(
                "a transactional batch without a producer id".into(),
            )
            .into());
        }
        let term = node.raft.term;
        let base = self.next_offset_of(&node)?;
        let Some(first_header) = batches.first().map(|b| b.2) else {
            return Err(StorageError::InvalidRecord("empty record set".into()).into());
        };
        // A batch the broker writes for a producer (a transaction marker through
        // WriteTxnMarkers, a transactional offset commit): no sequence, only its epoch is
        // checked; noted like a producer batch until the log holds it, so a fenced
        // producer's batch proposed behind it is refused.
        let marker = internal && first_header.producer_id >= 0;
        if marker && (batches.len() > 1 || first_header.base_sequence >= 0) {
            return Err(StorageError::InvalidRecord(
                "a coordinator batch is one batch with a producer id and no sequence".into(),
            )
            .into());
        }
        let idempotent = !marker && batches.iter().any(|(_, _, h)| h.producer_id >= 0);
        // A transaction marker's coordinator epoch (None: another coordinator batch).
        let marker_epoch = if marker {
            let (pos, size, _) = batches[0];
            batch::marker_of(&records[pos..pos + size]).map(|(_, e)| e)
        } else {
            None
        };
        if marker {
            self.check_marker_epoch(&node, &first_header, marker_epoch)?;
        }
        if idempotent {
            if batches.len() > 1 {
                return Err(StorageError::InvalidRecord(
                    "an idempotent produce must carry exactly one record batch per partition"
                        .into(),
                )
                .into());
            }
            match self.check_producer(&node, &first_header) {
                Ok(None) => {}
                Ok(Some(dup)) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(Ok(dup));
                    return Ok(rx);
                }
                Err(ReplicaError::Storage(error @ StorageError::OutOfOrderSequence { .. })) => {
                    return Ok(self.confirm_gap(&mut node, error));
                }
                Err(e) => return Err(e),
            }
        }
        // The leader's one copy: offsets and epoch are stamped into its own buffer.
        let mut buf = BytesMut::from(&records[..]);
        let mut next = base;
        let mut entries = Vec::with_capacity(batches.len());
        for (_, size, h) in batches {
            let mut b = buf.split_to(size);
            batch::set_base_offset(&mut b, next);
            batch::set_partition_leader_epoch(&mut b, term as i32);
            next += i64::from(h.record_count);
            entries.push(Entry {
                data: b.freeze(),
                ..Default::default()
            });
        }
        let info = AppendInfo {
            base_offset: Offset(base),
            last_offset: Offset(next - 1),
            log_start_offset: self.log.log_start_offset(),
            log_append_time_ms: -1,
            generation: 0,
        };
        let (tx, rx) = oneshot::channel();
        if self.busy.get() || !self.deferred.borrow().is_empty() {
            let bytes = records.len() as u64;
            let mut deferred = self.deferred.borrow_mut();
            let held: u64 = deferred.iter().map(|d| d.bytes).sum();
            if held + bytes > self.max_uncommitted_bytes {
                return Err(ReplicaError::Backpressure);
            }
            deferred.push(Deferred {
                term,
                entries,
                bytes,
                end: next,
                acks,
                info,
                tx,
            });
            drop(deferred);
            self.deferred_total.set(self.deferred_total.get() + 1);
            if idempotent || marker {
                self.note_proposed(&first_header, base);
            }
            if let Some(ce) = marker_epoch {
                self.proposed_markers
                    .borrow_mut()
                    .push((first_header.producer_id, base, ce));
            }
            return Ok(rx);
        }
        let index = self.step_proposal(&mut node, entries)?;
        if idempotent || marker {
            self.note_proposed(&first_header, base);
        }
        if let Some(ce) = marker_epoch {
            self.proposed_markers
                .borrow_mut()
                .push((first_header.producer_id, base, ce));
        }
        self.wait_for(
            index,
            acks,
            Waiter {
                term,
                placed: std::time::Instant::now(),
                info,
                tx,
            },
        );
        Ok(rx)
    }

    /// Check an idempotent batch as Kafka's leader does, against what this leader proposed
    /// and its log does not hold yet, then the log's producer state. `Ok(Some(info))`: a retry
    /// of a committed batch, answered with the original's offsets; a retry of one not
    /// committed yet is refused with a retriable error (the client retries, and the retry
    /// finds it committed).
    fn check_producer(
        &self,
        node: &RawNode<RaftStore>,
        h: &BatchHeader,
    ) -> Result<Option<AppendInfo>, ReplicaError> {
        // Not in the log yet: a previous leader's entries this replica has not persisted (a
        // new leader may hold some; terms only grow along the log, so they come first and the
        // scan stops at this term's), then what this leader proposed (deferred ones
        // included), in log order.
        let term = node.raft.term;
        let mut pending: Vec<BatchHeader> = node
            .raft
            .raft_log
            .unstable
            .entries
            .iter()
            .take_while(|e| e.term < term)
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .filter_map(|e| BatchHeader::parse(&e.data).ok())
            .filter(|b| b.producer_id == h.producer_id)
            .collect();
        if let Some(p) = self.proposed_producers.borrow().get(&h.producer_id) {
            // A marker (or another coordinator batch) proposed with a newer epoch fenced
            // this producer's epoch.
            if let Some(current) = p
                .iter()
                .filter(|b| b.base_sequence < 0)
                .map(|b| b.producer_epoch)
                .max()
                .filter(|e| *e > h.producer_epoch)
            {
                return Err(StorageError::InvalidProducerEpoch {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    current,
                }
                .into());
            }
            pending.extend(p.iter().filter(|b| b.base_sequence >= 0).copied());
        }
        if !pending.is_empty() {
            let mut t = ProducerStateTable::default();
            for p in &pending {
                t.update(p);
            }
            match t.check(h) {
                Ok(Verdict::Append) => return Ok(None),
                Ok(Verdict::Duplicate(_)) => return Err(ReplicaError::DuplicateInFlight),
                // An older batch may be in the log already: the log decides below.
                Err(e) => {
                    if let Ok(Verdict::Duplicate(d)) = self.log.check_producer(h) {
                        return self.committed_duplicate(d);
                    }
                    return Err(e.into());
                }
            }
        }
        match self.log.check_producer(h)? {
            Verdict::Append => Ok(None),
            Verdict::Duplicate(d) => self.committed_duplicate(d),
        }
    }

    /// A marker's epoch may not be older than the producer's: in the log, or in what this
    /// leader proposed and its log does not hold yet.
    fn check_marker_epoch(
        &self,
        node: &RawNode<RaftStore>,
        h: &BatchHeader,
        coordinator_epoch: Option<i32>,
    ) -> Result<(), ReplicaError> {
        self.log
            .check_producer_epoch(h, coordinator_epoch.unwrap_or(i32::MAX))?;
        // Not in the log yet: a previous leader's entries this replica has not persisted, then
        // what this leader proposed.
        let term = node.raft.term;
        let mut epochs: Vec<(i16, Option<i32>)> = node
            .raft
            .raft_log
            .unstable
            .entries
            .iter()
            .take_while(|e| e.term < term)
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .filter_map(|e| {
                let b = BatchHeader::parse(&e.data).ok()?;
                (b.producer_id == h.producer_id)
                    .then(|| (b.producer_epoch, batch::marker_of(&e.data).map(|m| m.1)))
            })
            .collect();
        if let Some(p) = self.proposed_producers.borrow().get(&h.producer_id) {
            epochs.extend(p.iter().map(|b| (b.producer_epoch, None)));
        }
        epochs.extend(
            self.proposed_markers
                .borrow()
                .iter()
                .filter(|(pid, _, _)| *pid == h.producer_id)
                .map(|(_, _, ce)| (h.producer_epoch, Some(*ce))),
        );
        if let Some(current) = epochs
            .iter()
            .map(|(e, _)| *e)
            .max()
            .filter(|e| *e > h.producer_epoch)
        {
            return Err(StorageError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current,
            }
            .into());
        }
        if let Some(ce) = coordinator_epoch
            && let Some(current) = epochs
                .iter()
                .filter_map(|(_, c)| *c)
                .max()
                .filter(|c| *c > ce)
        {
            return Err(StorageError::CoordinatorFenced {
                producer_id: h.producer_id,
                coordinator_epoch: ce,
                current,
            }
            .into());
        }
        Ok(())
    }

    fn committed_duplicate(
        &self,
        d: crate::storage::producer_state::BatchMeta,
    ) -> Result<Option<AppendInfo>, ReplicaError> {
        if d.last_offset() >= self.log.high_watermark().get() {
            return Err(ReplicaError::DuplicateInFlight);
        }
        Ok(Some(AppendInfo {
            base_offset: Offset(d.base_offset),
            last_offset: Offset(d.last_offset()),
            log_start_offset: self.log.log_start_offset(),
            log_append_time_ms: -1,
            generation: 0,
        }))
    }

    /// A sequence gap: refused once a quorum confirms this leader (see [`GapCheck`]); if the
    /// leadership goes first, the producer gets `NotLeader` and retries with the new leader.
    fn confirm_gap(
        &self,
        node: &mut RawNode<RaftStore>,
        error: StorageError,
    ) -> oneshot::Receiver<Result<AppendInfo, ReplicaError>> {
        let (tx, rx) = oneshot::channel();
        let ctx = self.next_read.get();
        self.next_read.set(ctx + 1);
        let term = node.raft.term;
        self.gap_checks
            .borrow_mut()
            .insert(ctx, GapCheck { term, error, tx });
        if self.busy.get() {
            self.reads_to_ask.borrow_mut().push(ctx);
        } else {
            node.read_index(ctx.to_be_bytes().to_vec());
        }
        rx
    }

    /// Answer the gap checks a quorum confirmed.
    fn confirmed_reads(&self, states: Vec<raft::ReadState>) {
        let mut checks = self.gap_checks.borrow_mut();
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(c) = checks.remove(&u64::from_be_bytes(ctx)) {
                let _ = c.tx.send(Err(c.error.into()));
            }
        }
    }

    /// Remember an idempotent batch proposed at `base` until the log holds it.
    fn note_proposed(&self, h: &BatchHeader, base: i64) {
        self.proposed_producers
            .borrow_mut()
            .entry(h.producer_id)
            .or_default()
            .push(BatchHeader {
                base_offset: base,
                ..*h
            });
    }

    /// Forget proposed batches the log now holds (below `log_end`), or, with `from`, the
    /// ones at or above it (proposals that failed).
    fn forget_proposed(&self, keep: impl Fn(i64) -> bool) {
        self.proposed_markers
            .borrow_mut()
            .retain(|(_, base, _)| keep(*base));
        let mut proposed = self.proposed_producers.borrow_mut();
        for v in proposed.values_mut() {
            v.retain(|h| keep(h.base_offset));
        }
        proposed.retain(|_, v| !v.is_empty());
    }

    fn wait_for(&self, index: u64, acks: Acks, w: Waiter) {
        let waiters = match acks {
            Acks::All => &self.waiters,
            Acks::Leader => &self.leader_waiters,
        };
        waiters.borrow_mut().insert(index, w);
    }

    /// Step one proposal's entries into Raft (the leader's append); returns the index of its
    /// last entry.
    fn step_proposal(
        &self,
        node: &mut RawNode<RaftStore>,
        entries: Vec<Entry>,
    ) -> Result<u64, ReplicaError> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        m.set_entries(entries.into());
        node.step(m).map_err(|e| match e {
            raft::Error::ProposalDropped if node.raft.state == StateRole::Leader => {
                ReplicaError::Backpressure
            }
            raft::Error::ProposalDropped => ReplicaError::NotLeader { leader: None },
            e => raft_err(e),
        })?;
        Ok(node.raft.raft_log.last_index())
    }

    /// Step the proposals deferred during a ready cycle, in call order. Their offsets follow
    /// one another, so once one cannot be stepped (leadership lost, the term changed, too much
    /// uncommitted) every later one fails the same way.
    fn step_deferred(&self) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        let mut node = self.node.borrow_mut();
        for ctx in std::mem::take(&mut *self.reads_to_ask.borrow_mut()) {
            node.read_index(ctx.to_be_bytes().to_vec());
        }
        let mut failed: Option<ReplicaError> = None;
        for d in deferred {
            if let Some(e) = &failed {
                let again = match e {
                    ReplicaError::Backpressure => ReplicaError::Backpressure,
                    _ => ReplicaError::NotLeader { leader: None },
                };
                let _ = d.tx.send(Err(again));
                continue;
            }
            if node.raft.state != StateRole::Leader || node.raft.term != d.term {
                let from = d.info.base_offset.get();
                self.forget_proposed(|b| b < from);
                let id = node.raft.leader_id;
                let _ = d.tx.send(Err(ReplicaError::NotLeader {
                    leader: (id != raft::INVALID_ID && id != self.id).then_some(id),
                }));
                failed = Some(ReplicaError::NotLeader { leader: None });
                continue;
            }
            match self.step_proposal(&mut node, d.entries) {
                Ok(index) => self.wait_for(
                    index,
                    d.acks,
                    Waiter {
                        term: d.term,
                        placed: std::time::Instant::now(),
                        info: d.info,
                        tx: d.tx,
                    },
                ),
                Err(e) => {
                    let from = d.info.base_offset.get();
                    self.forget_proposed(|b| b < from);
                    let again = match &e {
                        ReplicaError::Backpressure => ReplicaError::Backpressure,
                        _ => ReplicaError::NotLeader { leader: None },
                    };
                    let _ = d.tx.send(Err(e));
                    failed = Some(again);
                }
            }
        }
    }

    /// The Kafka offset after the last entry of Raft's log, persisted or not.
    fn next_offset_of(&self, node: &RawNode<RaftStore>) -> Result<i64, ReplicaError> {
        let unstable = &node.raft.raft_log.unstable;
        let mut next = self
            .store
            .end_of(unstable.offset.saturating_sub(1))
            .ok_or_else(|| ReplicaError::Raft("unstable entries beyond the store".into()))?;
        for e in &unstable.entries {
            next = entry::entry_end(e, next)?;
        }
        if let Some(d) = self.deferred.borrow().last() {
            next = d.end;
        }
        Ok(next)
    }

    /// Persist, apply and send what Raft has ready, until it has nothing more. One caller at a
    /// time (a second call while one runs returns at once: the first one loops). A failure
    /// fails the replica: every proposal waiting gets the error and the replica takes part in
    /// nothing more until it is reopened.
    pub async fn process_ready(&self) -> Result<(), ReplicaError> {
        if let Some(why) = self.failed.borrow().clone() {
            return Err(ReplicaError::Failed(why));
        }
        if self.busy.replace(true) {
            return Ok(());
        }
        let r = match self.pending_prefix.get() {
            // An install waiting for its compacted prefix: nothing else until it is in (the
            // driver still steps messages meanwhile: what they bring waits in raft-rs).
            Some(_) if !self.prefix_due() => Ok(()),
            Some(base) => match self.install_prefix(base).await {
                Ok(true) => self.ready_loop().await,
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            },
            None => self.ready_loop().await,
        };
        self.busy.set(false);
        if let Err(e) = &r {
            tracing::error!(dir = %self.dir.display(), "replica failed: {e}");
            *self.failed.borrow_mut() = Some(e.to_string());
            for waiters in [&self.waiters, &self.leader_waiters] {
                for (_, w) in std::mem::take(&mut *waiters.borrow_mut()) {
                    let _ = w.tx.send(Err(ReplicaError::Failed(e.to_string())));
                }
            }
            for d in std::mem::take(&mut *self.deferred.borrow_mut()) {
                let _ = d.tx.send(Err(ReplicaError::Failed(e.to_string())));
            }
            for (_, c) in std::mem::take(&mut *self.gap_checks.borrow_mut()) {
                let _ = c.tx.send(Err(ReplicaError::Failed(e.to_string())));
            }
            self.persisting.borrow_mut().clear();
        }
        r
    }

    async fn ready_loop(&self) -> Result<(), ReplicaError> {
        loop {
            self.compact().await?;
            self.serve_fetches().await?;
            self.finish_persisted()?;
            let mut rd = {
                let mut node = self.node.borrow_mut();
                if !node.has_ready() {
                    if self.store.fetches_pending() {
                        continue;
                    }
                    break;
                }
                node.ready()
            };
            if rd.ss().is_some_and(|ss| ss.raft_state == StateRole::Leader) {
                self.elections_won.set(self.elections_won.get() + 1);
            }
            self.confirmed_reads(rd.take_read_states());
            // A leader's appends go out before its own write: it and its followers write in
            // parallel (Raft counts its own vote only once its write is durable).
            self.outbox.borrow_mut().extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                // Everything written before is settled first: the install replaces the log.
                self.settle_persisting().await?;
                let snap = rd.snapshot().clone();
                let with_entries = !rd.entries().is_empty() || !rd.committed_entries().is_empty();
                self.install_snapshot(&snap, with_entries).await?;
            }
            let committed = rd.take_committed_entries();
            let applied_to = committed.last().map(|e| e.index);
            self.apply(committed).await?;
            let written = if rd.entries().is_empty() {
                None
            } else {
                let entries = rd.entries().clone();
                let info = self.write_entries(&entries).await?;
                if self.yield_after_write.get() {
                    crate::runtime::yield_now().await;
                }
                Some(info)
            };
            if let Some(hs) = rd.hs() {
                self.store.set_hard_state(hs.clone());
                if (hs.term, hs.vote) != self.persisted.get() {
                    // Stable storage: a vote or a term is durable before anyone hears of it.
                    self.write_state().await?;
                    self.persisted.set((hs.term, hs.vote));
                }
            }
            let number = rd.number();
            let messages = rd.take_persisted_messages();
            let snapshot_index = rd.snapshot().get_metadata().index;
            self.node.borrow_mut().advance_append_async(rd);
            let done = Rc::new(RefCell::new(None));
            match written {
                Some(info) => {
                    let log = self.log.clone();
                    let slot = done.clone();
                    let wake = self.on_durable.borrow().clone();
                    crate::runtime::spawn_detached(async move {
                        let r = log.wait_durable(&info).await;
                        *slot.borrow_mut() = Some(r);
                        if let Some(wake) = wake {
                            wake();
                        }
                    });
                }
                None => *done.borrow_mut() = Some(Ok(())),
            }
            self.persisting.borrow_mut().push_back(Persisting {
                number,
                last_index: self.store.last_index(),
                done,
                append: written,
                messages,
            });
            if snapshot_index > 0 {
                self.settle_persisting().await?;
            }
            self.finish_persisted()?;
            // An installed snapshot counts as applied up to its index.
            if let Some(index) = applied_to.max((snapshot_index > 0).then_some(snapshot_index)) {
                self.node.borrow_mut().advance_apply_to(index);
            }
            let applied = self.node.borrow().raft.raft_log.applied;
            self.store.release_applied(applied, self.applied_bytes_held);
            self.fail_stale_waiters();
            self.step_deferred();
        }
        Ok(())
    }

    /// Hand raft-rs the readies whose writes are durable, oldest first, stopping at the first
    /// still waiting: it counts them as persisted (`on_persist_ready`; a leader's own vote for
    /// its entries), the messages that waited for them go out (a follower's append responses,
    /// votes), and acks=1 proposals they complete are answered. A write cut off by a later
    /// truncation (its entries were replaced) is not an error: the later ready covers it.
    fn finish_persisted(&self) -> Result<(), ReplicaError> {
        loop {
            let p = {
                let mut q = self.persisting.borrow_mut();
                if !q.front().is_some_and(|p| p.done.borrow().is_some()) {
                    return Ok(());
                }
                q.pop_front().expect("checked")
            };
            match p.done.borrow_mut().take().expect("checked") {
                Ok(()) | Err(StorageError::Truncated { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.node.borrow_mut().on_persist_ready(p.number);
            self.outbox.borrow_mut().extend(p.messages);
            self.resolve(&self.leader_waiters, p.last_index, false);
        }
    }

    /// Wait until every write handed to the log is durable (or cut off), and hand them to
    /// raft-rs.
    async fn settle_persisting(&self) -> Result<(), ReplicaError> {
        loop {
            self.finish_persisted()?;
            let waiting = self
                .persisting
                .borrow()
                .front()
                .map(|p| (p.done.clone(), p.append));
            let Some((done, append)) = waiting else {
                return Ok(());
            };
            if done.borrow().is_none() {
                let r = match append {
                    Some(info) => self.log.wait_durable(&info).await,
                    None => Ok(()),
                };
                done.borrow_mut().get_or_insert(r);
            }
        }
    }

    /// Read the entries raft-rs asked for and the store no longer holds from the log, and hand
    /// them over (raft-rs then sends the appends that waited for them).
    async fn serve_fetches(&self) -> Result<(), ReplicaError> {
        for f in self.store.take_fetches() {
            if f.low <= self.store.base().index {
                // Compacted since it was asked for: raft-rs asks again, hears that, and sends
                // a snapshot.
                self.node.borrow_mut().on_entries_fetched(f.context);
                continue;
            }
            let start = self
                .store
                .end_of(f.low - 1)
                .ok_or_else(|| ReplicaError::Raft(format!("no entry before {}", f.low)))?;
            let max = f.max_size.unwrap_or(u64::MAX).min(1 << 20) as usize;
            let entries: Vec<Entry> = read_entries(&self.log, start, f.low, max)
                .await?
                .into_iter()
                .take((f.high - f.low) as usize)
                .map(|(e, _)| e)
                .collect();
            if entries.is_empty() {
                return Err(ReplicaError::Raft(format!(
                    "entry {} (offset {start}) is neither held nor readable",
                    f.low
                )));
            }
            self.store.fill(f.low, entries);
            self.log_reads.set(self.log_reads.get() + 1);
            self.node.borrow_mut().on_entries_fetched(f.context);
        }
        Ok(())
    }

    /// Write entries to the log (cutting a conflicting suffix first): they are in the store at
    /// once; returns the last one's append, whose durability the caller waits for.
    async fn write_entries(&self, entries: &[Entry]) -> Result<AppendInfo, ReplicaError> {
        let first = entries[0].index;
        if first <= self.store.last_index() {
            let cut = self
                .store
                .end_of(first - 1)
                .ok_or_else(|| ReplicaError::Raft(format!("no entry before {first}")))?;
            self.store.truncate_from(first);
            self.log.truncate_to(Offset(cut)).await?;
        }
        let mut next = self.store.next_offset();
        let mut pending = Vec::with_capacity(entries.len());
        for e in entries {
            let (b, end) = entry::to_batch(e, next)?;
            pending.push(self.log.append_replicated(b));
            self.store.push(e.clone(), end);
            next = end;
        }
        let mut last = None;
        for p in pending {
            last = Some(p.await?);
        }
        // The log's producer state has these batches now.
        let end = self.log.log_end_offset().get();
        self.forget_proposed(|b| b >= end);
        last.ok_or_else(|| ReplicaError::Raft("no entry written".into()))
    }

    /// Apply committed entries: configuration changes, the high watermark, and the proposals
    /// they complete.
    async fn apply(&self, committed: Vec<Entry>) -> Result<(), ReplicaError> {
        let Some(last) = committed.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in &committed {
            let cs = match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if let Some(start) = entry::log_start_of(e)? {
                        let now = self.log.move_log_start(Offset(start)).await?;
                        tracing::info!(dir = %self.dir.display(), log_start = now.get(), "log start moved (DeleteRecords)");
                    }
                    continue;
                }
                EntryType::EntryConfChange => {
                    let cc: ConfChange = parse_pb(&e.data)?;
                    self.node.borrow_mut().apply_conf_change(&cc)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc: ConfChangeV2 = parse_pb(&e.data)?;
                    self.node.borrow_mut().apply_conf_change(&cc)
                }
            }
            .map_err(raft_err)?;
            self.store.set_conf_state(cs);
            self.write_state().await?;
        }
        let end = self
            .store
            .end_of(last)
            .ok_or_else(|| ReplicaError::Raft(format!("committed entry {last} not stored")))?;
        self.log.set_high_watermark(Offset(end));
        // A snapshot's log start, once the log reaches it (the install began below it).
        let want = self.store.base().log_start;
        if want > self.log.log_start_offset().0 && end >= want {
            self.log.move_log_start(Offset(want)).await?;
        }
        self.resolve(&self.waiters, last, true);
        Ok(())
    }

    /// Install the leader's snapshot: the log continues at its base (Raft's `restore` already
    /// dropped every entry of this replica's log: they are below the leader's base, or not
    /// committed). Crash-safe in three steps: `raft-state` names the new base with
    /// `installing` set (durable), the log is reset to an empty one at the base's offset (and
    /// a compacted prefix below the base is copied from the leader, `prefix`), and
    /// `raft-state` is written again without the flag; a restart in between repeats the reset
    /// (and the copy) ([`Replica::open`]). `with_entries`: the same ready carries entries
    /// after the base.
    async fn install_snapshot(
        &self,
        snap: &raft::eraftpb::Snapshot,
        with_entries: bool,
    ) -> Result<(), ReplicaError> {
        let base = LogBase::from_snapshot(snap)
            .ok_or_else(|| ReplicaError::Raft("a snapshot that is not a log base".into()))?;
        tracing::info!(dir = %self.dir.display(), index = base.index, term = base.term, offset = base.offset, "installing the leader's snapshot: the log continues at its base");
        self.store
            .install(base, snap.get_metadata().get_conf_state().clone());
        self.write_state().await?;
        self.log.set_clean_limit(Offset(base.offset));
        self.log.reset_to_empty(Offset(base.offset)).await?;
        if Replica::has_prefix(&base) {
            // The compacted prefix is copied now, from the leader that sent the snapshot
            // (`prefix`); `raft-state` keeps the install unfinished until it is in.
            self.pending_prefix.set(Some(base));
            self.prefix_retry_tick.set(0);
            self.prefix_backoff_ticks.set(1);
            // Entries in the same ready follow the base: they are written (and acknowledged)
            // only once the prefix is in, so the copy is retried here until it is (or the
            // replica stops). Without any, a failed copy is left to the next rounds, which
            // step messages meanwhile (the leader may change) and take part in nothing else.
            while !self.install_prefix(base).await? && with_entries {
                if self.is_stopping() {
                    return Err(ReplicaError::Failed(
                        "stopped while copying a compacted prefix".into(),
                    ));
                }
                crate::runtime::sleep(std::time::Duration::from_millis(200)).await;
            }
        } else {
            self.finish_install().await?;
        }
        self.proposed_producers.borrow_mut().clear();
        self.proposed_markers.borrow_mut().clear();
        self.snapshots_installed
            .set(self.snapshots_installed.get() + 1);
        Ok(())
    }

    /// Move the Raft base toward the offset [`Replica::request_compaction`] asked for, then
    /// remove the segments below the offset asked for there (a compacted log keeps those
    /// between that offset and its base: its compacted prefix). Only applied entries are compacted, at a segment base
    /// (every segment begins with an entry); a leader also keeps what the followers it heard
    /// from lately still need, so a follower a little behind is sent entries, not a snapshot
    /// (one it has not heard from does not hold the log back). The base is durable in
    /// `raft-state` before any segment goes.
    async fn compact(&self) -> Result<(), ReplicaError> {
        let Some((remove_below, want)) = self.compact_request.take() else {
            return Ok(());
        };
        let keep_from = {
            let n = self.node.borrow();
            let mut upto = n.raft.raft_log.applied;
            if n.raft.state == StateRole::Leader {
                for (id, p) in n.raft.prs().iter() {
                    if *id != self.id && p.recent_active {
                        upto = upto.min(p.matched);
                    }
                }
            }
            upto
        };
        let Some(applied_end) = self.store.end_of(keep_from.max(self.store.base().index)) else {
            return Ok(());
        };
        let to = self.log.segment_base_at(Offset(want.min(applied_end))).0;
        if to <= self.store.base().offset {
            // Segments below the base a removal skipped (one not sealed yet then) go now.
            let below = remove_below.min(self.store.base().offset);
            if self.log.first_segment_base().0 < below {
                self.log.remove_segments_below(Offset(below)).await?;
            }
            return Ok(());
        }
        let Some(index) = self.store.index_ending_at(to) else {
            return Err(ReplicaError::Raft(format!(
                "segment base {to} is not the end of an entry"
            )));
        };
        // A compacted log keeps what lies below its base: the base's log start stays where
        // the log's is (a snapshot then carries that prefix).
        let keep_prefix = remove_below < to;
        self.store
            .compact_to(index, self.log.log_start_offset().0, keep_prefix);
        self.write_state().await?;
        self.log.set_clean_limit(Offset(to));
        let removed = self
            .log
            .remove_segments_below(Offset(remove_below.min(to)))
            .await?;
        self.compactions.set(self.compactions.get() + 1);
        tracing::info!(dir = %self.dir.display(), index, offset = to, segments = removed, "Raft log compacted");
        Ok(())
    }

    /// Complete the proposals of `waiters` whose last entry is at most `upto`: acknowledged
    /// if the entry there still has the proposal's term (same index and term: the entry this
    /// leader proposed, by Raft's log matching), else `NotLeader`. `committed`: the entries
    /// are committed (the time since each proposal goes to the commit-latency histogram).
    fn resolve(&self, waiters: &RefCell<BTreeMap<u64, Waiter>>, upto: u64, committed: bool) {
        let done = {
            let mut w = waiters.borrow_mut();
            let rest = w.split_off(&(upto + 1));
            std::mem::replace(&mut *w, rest)
        };
        for (index, w) in done {
            let r = if raft::Storage::term(&self.store, index).ok() == Some(w.term) {
                if committed {
                    crate::metrics::raft_commit_done(w.placed.elapsed());
                }
                Ok(w.info)
            } else {
                Err(ReplicaError::NotLeader {
                    leader: self.leader(),
                })
            };
            let _ = w.tx.send(r);
        }
    }

    /// Proposals of a term this replica no longer leads fail: their fate is the next leader's.
    fn fail_stale_waiters(&self) {
        let (leading, term) = {
            let n = self.node.borrow();
            (n.raft.state == StateRole::Leader, n.raft.term)
        };
        if !leading {
            self.proposed_producers.borrow_mut().clear();
            self.proposed_markers.borrow_mut().clear();
            self.proposed_markers.borrow_mut().clear();
        }
        let leader = self.leader();
        {
            let mut checks = self.gap_checks.borrow_mut();
            let stale: Vec<u64> = checks
                .iter()
                .filter(|(_, c)| !leading || c.term != term)
                .map(|(ctx, _)| *ctx)
                .collect();
            for ctx in stale {
                if let Some(c) = checks.remove(&ctx) {
                    let _ = c.tx.send(Err(ReplicaError::NotLeader { leader }));
                }
            }
        }
        for waiters in [&self.waiters, &self.leader_waiters] {
            let mut waiters = waiters.borrow_mut();
            let stale: Vec<u64> = waiters
                .iter()
                .filter(|(_, w)| !leading || w.term != term)
                .map(|(i, _)| *i)
                .collect();
            for i in stale {
                if let Some(w) = waiters.remove(&i) {
                    let _ = w.tx.send(Err(ReplicaError::NotLeader { leader }));
                }
            }
        }
    }

    async fn write_state(&self) -> Result<(), ReplicaError> {
        write_state(
            &self.env,
            &self.dir.join(RAFT_STATE_FILE),
            &self.store.state_file(),
        )
        .await
    }

    /// Close the log; proposals still waiting fail.
    pub async fn close(&self) -> Result<(), ReplicaError> {
        for waiters in [&self.waiters, &self.leader_waiters] {
            for (_, w) in std::mem::take(&mut *waiters.borrow_mut()) {
                let _ = w.tx.send(Err(ReplicaError::Failed("closed".into())));
            }
        }
        for (_, c) in std::mem::take(&mut *self.gap_checks.borrow_mut()) {
            let _ = c.tx.send(Err(ReplicaError::Failed("closed".into())));
        }
        if self.failed.borrow().is_none() {
            self.write_state().await?;
        }
        self.log.close().await?;
        Ok(())
    }
}

async fn write_state(
    env: &Env,
    path: &std::path::Path,
    state: &RaftStateFile,
) -> Result<(), ReplicaError> {
    let json = serde_json::to_vec(state).map_err(|e| ReplicaError::State(e.to_string()))?;
    env.replace_file_durable(path, &json)
        .await
        .map_err(|e| StorageError::io("writing raft-state", e).into())
}

/// The entries stored from Kafka offset `offset` on (one read of up to `max_bytes`, whole
/// batches), numbered from `first_index`, each with the offset after it.
async fn read_entries(
    log: &PartitionLog,
    offset: i64,
    first_index: u64,
    max_bytes: usize,
) -> Result<Vec<(Entry, i64)>, ReplicaError> {
    let records = log
        .read_replicated(Offset(offset), max_bytes)
        .await?
        .records;
    let mut out = Vec::new();
    for (index, item) in (first_index..).zip(batch::BatchIter::new(&records)) {
        let (pos, h, size) = item?;
        if index == first_index && h.base_offset != offset {
            return Err(ReplicaError::Raft(format!(
                "entry {index} should begin at offset {offset}, the log has a batch at {}",
                h.base_offset
            )));
        }
        out.push((
            entry::from_batch(index, records.slice(pos..pos + size))?,
            h.next_offset(),
        ));
    }
    Ok(out)
}

/// Every batch of the log after the store's base, as the store's entries.
async fn rebuild(log: &Rc<PartitionLog>, store: &RaftStore) -> Result<(), ReplicaError> {
    let end = log.log_end_offset().0;
    let mut at = store.next_offset();
    while at < end {
        let entries = read_entries(log, at, store.last_index() + 1, 1 << 20).await?;
        if entries.is_empty() {
            break;
        }
        for (e, next) in entries {
            store.push(e, next);
            at = next;
        }
    }
    if at != end {
        return Err(ReplicaError::Raft(format!(
            "rebuilding the Raft log stopped at offset {at}, the log ends at {end}"
        )));
    }
    Ok(())
}
