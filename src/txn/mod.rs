//! The transaction coordinator (Kafka's transaction protocol version 1: KIP-98, KIP-447),
//! on a one-node broker.
//!
//! # Ownership
//! Transactional id `t` lives in partition `fnv1a(t) % P` of the internal topic
//! `__transaction_state` (P partitions, `transaction_state_partitions` when the topic was
//! created) and is coordinated by the shard that owns that partition, as groups are by
//! `__consumer_offsets`. Every handler forwards its work there with `invoke_on`, so a
//! transactional id's state has one owner and its records are local appends.
//!
//! # State machine (Kafka's)
//! ```text
//! Empty / CompleteCommit / CompleteAbort --AddPartitionsToTxn--> Ongoing
//! Ongoing --EndTxn(commit)--> PrepareCommit --markers durable--> CompleteCommit
//! Ongoing --EndTxn(abort), timeout, fencing--> PrepareAbort --markers durable--> CompleteAbort
//! any but Prepare* --InitProducerId--> Empty with the next epoch
//! ```
//! Each transition is a record in `__transaction_state`, durable before it is answered or
//! acted on. Only one transition of a transactional id is in flight at a time (`busy`): a
//! request arriving meanwhile gets CONCURRENT_TRANSACTIONS, which clients retry.
//!
//! # Markers
//! Once PrepareCommit or PrepareAbort is durable the decision is taken: the coordinator
//! appends a COMMIT or ABORT marker to every partition of the transaction (on the shard
//! owning it, `PartitionLog::append_marker`), waits for them to be durable, and only then
//! writes CompleteCommit or CompleteAbort. A marker in `__consumer_offsets` makes the
//! transaction's offset commits visible or drops them (`GroupCoordinator::complete_txn`).
//! EndTxn is answered after the markers are durable, so a read_committed consumer sees a
//! committed transaction once its producer's commit returned. The Complete record is not
//! waited for: lost in a crash, it leaves the transaction prepared, and the restarted
//! coordinator writes its markers again.
//!
//! # Crash safety
//! At start each shard reads its `__transaction_state` partitions ([`TxnCoordinator::load`]);
//! the ticker ([`spawn_ticker`], every `transaction_abort_interval_ms`, and once right after
//! start) writes the markers of every transaction left in PrepareCommit or PrepareAbort
//! (appending a marker twice is harmless: the second closes nothing) and aborts every
//! transaction open longer than its timeout, fencing its producer with a new epoch. A
//! transaction open at a crash is thus aborted after its timeout; one whose PrepareCommit
//! was durable is committed.

pub mod records;
mod remote;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::constants::{OFFSETS_BATCH_BYTES_MAX, OFFSETS_TOPIC, TXN_TOPIC};
use crate::group::Coordinating;
use crate::runtime;
use crate::runtime::SystemClock;
use crate::shard::controller::CONTROLLER;
use crate::shard::{Shard, ShardError};
use crate::storage::io::Clock;
use crate::storage::producer_state::Marker;
use crate::storage::{PartitionLog, StorageError};
use crate::types::{ShardId, TopicPartition};

pub use self::records::{TxnMeta, TxnState};

/// At startup on a one-node broker: add `__transaction_state` to the catalog if missing
/// (compacted, like Kafka's) and persist the catalog.
pub fn ensure_txn_topic(
    catalog: &mut crate::cluster::catalog::Catalog,
    config: &Config,
) -> Result<(), crate::cluster::catalog::CatalogError> {
    if !add_txn_topic(catalog, config, Vec::new()) {
        return Ok(());
    }
    catalog.save(&config.data_dir)?;
    info!(
        partitions = config.transaction_state_partitions,
        "created internal topic {TXN_TOPIC}"
    );
    Ok(())
}

/// Add `__transaction_state` to `catalog` unless it is there; true if it was added.
/// `replicas`: each partition's replicas in a cluster (a Raft group each), empty on a
/// one-node broker (local partitions).
pub fn add_txn_topic(
    catalog: &mut crate::cluster::catalog::Catalog,
    config: &Config,
    replicas: Vec<Vec<i32>>,
) -> bool {
    if catalog.get(TXN_TOPIC).is_some() {
        return false;
    }
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    configs.insert(
        "segment.bytes".to_string(),
        config.offsets_topic_segment_bytes.to_string(),
    );
    catalog.insert(crate::cluster::catalog::TopicMeta {
        name: TXN_TOPIC.to_string(),
        id: uuid::Uuid::new_v4(),
        partitions: config.transaction_state_partitions,
        configs,
        replicas,
    });
    true
}

/// The `__transaction_state` partition holding `transactional_id`, or None if the topic
/// does not exist (a cluster, where transactions are not served yet).
pub fn txn_tp(shard: &Shard, transactional_id: &str) -> Option<TopicPartition> {
    let partitions = shard.catalog().get(TXN_TOPIC)?.partitions;
    Some(TopicPartition::new(
        TXN_TOPIC,
        crate::group::offsets_partition(transactional_id, partitions),
    ))
}

/// Run `f` on the shard coordinating `transactional_id`; COORDINATOR_NOT_AVAILABLE if
/// there is none (no `__transaction_state`).
pub async fn on_coordinator<T, F, Fut>(
    shard: &Shard,
    transactional_id: &str,
    f: F,
) -> Result<Result<T, ResponseError>, ShardError>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let Some(tp) = txn_tp(shard, transactional_id) else {
        return Ok(Err(ResponseError::CoordinatorNotAvailable));
    };
    let target = shard.owner_of(&tp);
    shard
        .invoke_on(target, move |s| async move {
            s.txns.coordinating(&s, &tp)?;
            Ok(f(s).await)
        })
        .await
}

/// The ticker's work on one transactional id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Prepared: write the markers and the Complete state.
    Complete,
    /// Open longer than its timeout: fence and abort.
    Abort,
    /// Idle longer than the expiration: tombstone and forget.
    Expire,
}

/// What a transactional request failed with (a Kafka error).
pub type TxnResult<T> = Result<T, ResponseError>;

/// One transactional id on its coordinator.
struct Entry {
    meta: TxnMeta,
    /// A transition (a record write, the markers) is in flight.
    busy: bool,
    /// The token of the turn in flight (see [`Busy`]).
    turn: u64,
    /// Offset of the id's latest record in its partition (a lower bound while a record
    /// written behind is in flight).
    log_offset: i64,
}

/// A transaction as DescribeTransactions and ListTransactions report it.
#[derive(Debug, Clone)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub meta: TxnMeta,
}

/// The per-shard coordinator: the transactional ids whose `__transaction_state` partition
/// this shard owns. Used on its own shard only; no borrow is held across an await.
pub struct TxnCoordinator {
    txns: RefCell<HashMap<String, Entry>>,
    /// In a cluster: the replicated `__transaction_state` partitions this shard coordinates
    /// (its replica leads them), by partition ([`TxnCoordinator::follow_leadership`]).
    leading: RefCell<HashMap<i32, Coordinating>>,
    /// The last turn token handed out.
    turns: std::cell::Cell<u64>,
    /// In a cluster: this shard is creating `__transaction_state`
    /// (`cluster::metadata::create_txn_topic_soon`).
    pub creating_topic: std::cell::Cell<bool>,
    /// [`TxnCoordinator::load`] finished.
    loaded: std::cell::Cell<bool>,
    max_timeout_ms: i32,
    /// Idle transactional ids are forgotten after this long (`transactional.id.expiration.ms`).
    expiration_ms: i64,
    clock: Rc<dyn Clock>,
}

/// Marks a transactional id busy for the life of the guard. Its token names the turn: an
/// entry dropped and read again meanwhile (its partition's leadership moved away and back)
/// is not released by a guard of the earlier turn.
struct Busy<'a> {
    coordinator: &'a TxnCoordinator,
    id: String,
    token: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.coordinator.txns.borrow_mut().get_mut(&self.id)
            && e.turn == self.token
        {
            e.busy = false;
        }
    }
}

/// A write to `__transaction_state` failed: the code the request gets (retriable, the
/// client finds the coordinator again).
fn write_error(e: &StorageError) -> ResponseError {
    warn!(error = %e, "writing a transaction record failed");
    match e {
        StorageError::BatchTooLarge { .. } => ResponseError::InvalidRequest,
        _ => ResponseError::NotCoordinator,
    }
}

impl TxnCoordinator {
    pub fn new(config: &Config) -> Self {
        TxnCoordinator {
            txns: RefCell::new(HashMap::new()),
            leading: RefCell::new(HashMap::new()),
            turns: std::cell::Cell::new(0),
            creating_topic: std::cell::Cell::new(false),
            loaded: std::cell::Cell::new(false),
            max_timeout_ms: config.transaction_max_timeout_ms,
            expiration_ms: i64::try_from(config.transactional_id_expiration_ms).unwrap_or(i64::MAX),
            clock: Rc::new(SystemClock),
        }
    }

    /// Transactional ids this shard coordinates.
    pub fn len(&self) -> usize {
        self.txns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.borrow().is_empty()
    }

    /// Take the transactional id's turn: None if a transition of it is in flight.
    fn take_turn(&self, id: &str) -> Option<Busy<'_>> {
        let mut txns = self.txns.borrow_mut();
        let e = txns.get_mut(id)?;
        if e.busy {
            return None;
        }
        let token = self.next_turn();
        e.busy = true;
        e.turn = token;
        Some(Busy {
            coordinator: self,
            id: id.to_string(),
            token,
        })
    }

    fn next_turn(&self) -> u64 {
        let t = self.turns.get() + 1;
        self.turns.set(t);
        t
    }

    fn meta(&self, id: &str) -> Option<TxnMeta> {
        self.txns.borrow().get(id).map(|e| e.meta.clone())
    }

    /// Append `meta` as `id`'s state to its `__transaction_state` partition: the returned
    /// future resolves once the record is durable. The append takes its place in the log
    /// when this is called, so a later record of the id follows it.
    /// `None`: a tombstone (the id expired). In a cluster the record is a proposal of the
    /// partition's Raft leader, resolved once committed (a majority fdatasynced it).
    fn append_state(
        &self,
        shard: &Shard,
        id: &str,
        meta: Option<&TxnMeta>,
    ) -> TxnResult<impl std::future::Future<Output = TxnResult<i64>> + use<>> {
        let tp = txn_tp(shard, id).ok_or(ResponseError::NotCoordinator)?;
        let key = records::encode_key(id).map_err(|_| ResponseError::InvalidRequest)?;
        let value = meta
            .map(records::encode_value)
            .transpose()
            .map_err(|_| ResponseError::InvalidRequest)?;
        let bytes = crate::group::records::encode_batches(
            &[(key, value)],
            self.clock.wall_ms(),
            OFFSETS_BATCH_BYTES_MAX,
        )
        .map_err(|_| ResponseError::InvalidRequest)?;
        if let Some(d) = shard.replica(&tp) {
            let proposed = d.propose(bytes, crate::replication::Acks::All);
            return Ok(futures::future::Either::Left(async move {
                let info = proposed.await.map_err(|e| {
                    warn!(error = %e, "proposing a transaction record failed");
                    match e {
                        crate::replication::ReplicaError::Storage(
                            StorageError::BatchTooLarge { .. },
                        ) => ResponseError::InvalidRequest,
                        _ => ResponseError::NotCoordinator,
                    }
                })?;
                Ok(info.base_offset.get())
            }));
        }
        let log = shard.partition(&tp).ok_or(ResponseError::NotCoordinator)?;
        let appended = log.append(bytes);
        Ok(futures::future::Either::Right(async move {
            let info = appended.await.map_err(|e| write_error(&e))?;
            log.wait_durable(&info).await.map_err(|e| write_error(&e))?;
            Ok(info.base_offset.get())
        }))
    }

    /// Write `meta` as `id`'s state and wait until it is durable, then adopt it.
    async fn write(&self, shard: &Shard, id: &str, meta: TxnMeta, token: u64) -> TxnResult<()> {
        self.still_holds(shard, id, token)?;
        let at = self.append_state(shard, id, Some(&meta))?.await?;
        // The partition's leadership may have moved meanwhile (and back): then the record is
        // the next load's to read from the log, if it committed, not this turn's to adopt.
        self.still_holds(shard, id, token)?;
        if let Some(e) = self.txns.borrow_mut().get_mut(id) {
            e.meta = meta;
            e.log_offset = e.log_offset.max(at);
        }
        Ok(())
    }

    /// Write `meta` as `id`'s state and adopt it at once, without waiting for it to be
    /// durable: for CompleteCommit and CompleteAbort, whose loss in a crash only makes the
    /// restarted coordinator write the (durable) markers again. The record is in the log
    /// before any later record of the id (appends keep call order), and a log that fails to
    /// write it fails every later write too.
    fn write_behind(&self, shard: &Shard, id: &str, meta: TxnMeta, token: u64) -> TxnResult<()> {
        self.still_holds(shard, id, token)?;
        let durable = self.append_state(shard, id, Some(&meta))?;
        let tid = id.to_string();
        runtime::spawn_detached(async move {
            if let Err(e) = durable.await {
                warn!(transactional_id = %tid, error = ?e, "a transaction's Complete record was not written: the restarted coordinator completes it again");
            }
        });
        // The entry's record offset stays the last one known durable (a replicated log may
        // still refuse this record).
        if let Some(e) = self.txns.borrow_mut().get_mut(id) {
            e.meta = meta;
        }
        Ok(())
    }

    /// The transition holding `token` still owns `id`: the entry was not dropped and read
    /// again (a leadership change of its partition) and, in a cluster, this shard still
    /// serves the partition in the term it loaded it in. Checked before each write and
    /// before adopting what a write returned.
    fn still_holds(&self, shard: &Shard, id: &str, token: u64) -> TxnResult<()> {
        let held = self
            .txns
            .borrow()
            .get(id)
            .is_some_and(|e| e.busy && e.turn == token);
        if !held {
            return Err(ResponseError::NotCoordinator);
        }
        let tp = txn_tp(shard, id).ok_or(ResponseError::NotCoordinator)?;
        self.coordinating(shard, &tp)
    }

    /// The coordinator epoch this shard's markers for `id` carry: the term it serves the id's
    /// partition in (0 on a one-node broker). Partitions refuse markers of an older one.
    fn coordinator_epoch(&self, shard: &Shard, id: &str) -> i32 {
        self.serving_term(shard, id)
            .map_or(0, |t| i32::try_from(t).unwrap_or(i32::MAX))
    }

    /// Check a request's producer id and epoch against `meta` (Kafka's order): another
    /// producer id is INVALID_PRODUCER_ID_MAPPING, another epoch PRODUCER_FENCED.
    fn check_producer(meta: &TxnMeta, producer_id: i64, epoch: i16) -> TxnResult<()> {
        if meta.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if meta.producer_epoch != epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }

    /// InitProducerId with a transactional id: a new producer id for a new transactional id,
    /// else the id's producer id with the next epoch (a fresh producer id once the epoch is
    /// exhausted), after aborting its open transaction (fencing the producer that held it).
    /// `current`: the producer id and epoch the client holds (KIP-360), if any.
    pub async fn init_producer_id(
        &self,
        shard: &Shard,
        id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> TxnResult<(i64, i16)> {
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let now = self.clock.wall_ms();
        let token = self.next_turn();
        let existing = {
            let mut txns = self.txns.borrow_mut();
            match txns.get_mut(id) {
                Some(e) if e.busy => return Err(ResponseError::ConcurrentTransactions),
                Some(e) => {
                    e.busy = true;
                    e.turn = token;
                    Some(e.meta.clone())
                }
                None => {
                    // A placeholder holds the id's turn while its producer id is allocated.
                    txns.insert(
                        id.to_string(),
                        Entry {
                            meta: TxnMeta {
                                producer_id: -1,
                                producer_epoch: -1,
                                timeout_ms,
                                state: TxnState::Dead,
                                partitions: BTreeSet::new(),
                                last_update_ms: now,
                                start_ms: -1,
                            },
                            busy: true,
                            turn: token,
                            log_offset: -1,
                        },
                    );
                    None
                }
            }
        };
        let _turn = Busy {
            coordinator: self,
            id: id.to_string(),
            token,
        };
        let Some(mut meta) = existing else {
            let result = async {
                let (pid, epoch) = new_producer_id(shard).await?;
                let meta = TxnMeta {
                    producer_id: pid,
                    producer_epoch: epoch,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now,
                    start_ms: -1,
                };
                self.write(shard, id, meta, token).await?;
                Ok((pid, epoch))
            }
            .await;
            if result.is_err() {
                let mut txns = self.txns.borrow_mut();
                if txns.get(id).is_some_and(|e| e.turn == token) {
                    txns.remove(id);
                }
            }
            return result;
        };
        if let Some((pid, epoch)) = current
            && (pid != meta.producer_id || epoch != meta.producer_epoch)
        {
            return Err(ResponseError::ProducerFenced);
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(ResponseError::ConcurrentTransactions);
            }
            TxnState::Ongoing => {
                // Fence the producer holding the transaction and abort it.
                meta = self.fence_and_abort(shard, id, meta, token).await?;
            }
            _ => {}
        }
        let (pid, epoch) = if meta.producer_epoch >= i16::MAX - 1 || meta.producer_id < 0 {
            new_producer_id(shard).await?
        } else {
            (meta.producer_id, meta.producer_epoch + 1)
        };
        let next = TxnMeta {
            producer_id: pid,
            producer_epoch: epoch,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now,
            start_ms: -1,
        };
        self.write(shard, id, next, token).await?;
        Ok((pid, epoch))
    }

    /// Abort `meta`'s open transaction with the next epoch (so the producer that holds it is
    /// fenced at every partition the markers reach): PrepareAbort, markers, CompleteAbort.
    /// Called with the id's turn held. Returns the completed state.
    async fn fence_and_abort(
        &self,
        shard: &Shard,
        id: &str,
        meta: TxnMeta,
        token: u64,
    ) -> TxnResult<TxnMeta> {
        // Up to i16::MAX, as Kafka fences: the markers must raise every partition's epoch
        // (InitProducerId then moves to a fresh producer id).
        let epoch = meta.producer_epoch.saturating_add(1);
        info!(
            transactional_id = id,
            producer_id = meta.producer_id,
            epoch,
            "fencing the producer and aborting its transaction"
        );
        let prepared = TxnMeta {
            producer_epoch: epoch,
            state: TxnState::PrepareAbort,
            last_update_ms: self.clock.wall_ms(),
            ..meta
        };
        self.write(shard, id, prepared.clone(), token).await?;
        self.complete(shard, id, prepared, token).await
    }

    /// Write the markers of a prepared transaction and then its Complete state. Called with
    /// the id's turn held. An error leaves it prepared: the ticker tries again.
    async fn complete(
        &self,
        shard: &Shard,
        id: &str,
        meta: TxnMeta,
        token: u64,
    ) -> TxnResult<TxnMeta> {
        let (marker, done) = match meta.state {
            TxnState::PrepareCommit => (Marker::Commit, TxnState::CompleteCommit),
            TxnState::PrepareAbort => (Marker::Abort, TxnState::CompleteAbort),
            _ => return Ok(meta),
        };
        if let Some(delay) = marker_delay() {
            runtime::sleep(delay).await;
        }
        self.still_holds(shard, id, token)?;
        write_markers(
            shard,
            &meta.partitions,
            meta.producer_id,
            meta.producer_epoch,
            marker,
            self.coordinator_epoch(shard, id),
        )
        .await?;
        let completed = TxnMeta {
            state: done,
            partitions: BTreeSet::new(),
            last_update_ms: self.clock.wall_ms(),
            start_ms: -1,
            ..meta
        };
        self.write_behind(shard, id, completed.clone(), token)?;
        crate::metrics::txn_completed(marker == Marker::Commit);
        debug!(
            transactional_id = id,
            state = done.name(),
            "transaction complete"
        );
        Ok(completed)
    }

    /// A request of `producer_id`/`epoch` on `id`: its state, checked against the producer
    /// ([`TxnCoordinator::check_producer`]), with the id's turn taken (no await in between,
    /// so the state stays the one checked).
    fn producer_turn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> TxnResult<(Busy<'_>, TxnMeta)> {
        let meta = self
            .meta(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch)?;
        let turn = self
            .take_turn(id)
            .ok_or(ResponseError::ConcurrentTransactions)?;
        Ok((turn, meta))
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's `__consumer_offsets`
    /// partition): the transaction is open and includes `partitions`.
    pub async fn add_partitions(
        &self,
        shard: &Shard,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> TxnResult<()> {
        let (turn, meta) = self.producer_turn(id, producer_id, epoch)?;
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(ResponseError::ConcurrentTransactions);
            }
            TxnState::Empty
            | TxnState::Ongoing
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort => {}
            TxnState::Dead | TxnState::PrepareEpochFence => {
                return Err(ResponseError::InvalidTxnState);
            }
        }
        if meta.state == TxnState::Ongoing && partitions.iter().all(|p| meta.partitions.contains(p))
        {
            return Ok(());
        }
        let now = self.clock.wall_ms();
        let mut next = meta.clone();
        if next.state != TxnState::Ongoing {
            next.start_ms = now;
            next.partitions.clear();
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(partitions);
        next.last_update_ms = now;
        self.write(shard, id, next, turn.token).await
    }

    /// EndTxn: commit or abort the open transaction. Answered once its markers are durable
    /// (or, if they could not all be written, once its Prepare state is: the ticker finishes
    /// them). A retry of the same decision after it completed succeeds.
    pub async fn end(
        &self,
        shard: &Shard,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> TxnResult<()> {
        let (turn, meta) = self.producer_turn(id, producer_id, epoch)?;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {}
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                return Err(ResponseError::ConcurrentTransactions);
            }
            _ => return Err(ResponseError::InvalidTxnState),
        }
        let prepared = TxnMeta {
            state: if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            },
            last_update_ms: self.clock.wall_ms(),
            ..meta
        };
        self.write(shard, id, prepared.clone(), turn.token).await?;
        if let Err(e) = self.complete(shard, id, prepared, turn.token).await {
            // The decision is durable; the ticker writes what is missing.
            warn!(transactional_id = id, error = ?e, "transaction markers not all written: the coordinator retries");
        }
        Ok(())
    }

    /// Check that `producer_id`/`epoch` hold `id`'s open transaction and that `partition`
    /// is part of it (TxnOffsetCommit: the group's `__consumer_offsets` partition, added by
    /// AddOffsetsToTxn; without it no marker would ever decide the offsets).
    pub fn check_ongoing(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &(String, i32),
    ) -> TxnResult<()> {
        let meta = self
            .meta(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch)?;
        match meta.state {
            TxnState::Ongoing if meta.partitions.contains(partition) => Ok(()),
            TxnState::Ongoing => Err(ResponseError::InvalidTxnState),
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Whether a transaction of `producer_id` is in this shard's hands: open, prepared, or
    /// with a transition in flight (the hanging-transaction check leaves those alone).
    pub fn holds(&self, producer_id: i64) -> bool {
        if !self.loaded.get() {
            // Before its states are read, a coordinator may hold anything.
            return true;
        }
        self.txns.borrow().values().any(|e| {
            e.meta.producer_id == producer_id
                && (e.busy
                    || matches!(
                        e.meta.state,
                        TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
                    ))
        })
    }

    /// In a cluster, the term in which this shard serves `id`'s partition (None: it does
    /// not, or the partition is local).
    fn serving_term(&self, shard: &Shard, id: &str) -> Option<u64> {
        let tp = txn_tp(shard, id)?;
        shard.replica(&tp)?;
        match self.leading.borrow().get(&tp.partition) {
            Some(Coordinating::Serving(t)) => Some(*t),
            _ => None,
        }
    }

    /// Whether this shard coordinates the ids of `tp` now: a local partition (a one-node
    /// broker) always; a replicated one while its replica leads in the term this shard loaded
    /// it in. COORDINATOR_LOAD_IN_PROGRESS while it reads the partition, NOT_COORDINATOR
    /// otherwise (the client looks for the coordinator again).
    pub fn coordinating(&self, shard: &Shard, tp: &TopicPartition) -> TxnResult<()> {
        let Some(d) = shard.replica(tp) else {
            if shard.is_cluster() {
                // A cluster's `__transaction_state` is replicated; a local copy is not served.
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            return Ok(());
        };
        let r = d.replica();
        match self.leading.borrow().get(&tp.partition) {
            Some(Coordinating::Serving(t)) if r.is_leader() && r.term() == *t => Ok(()),
            Some(Coordinating::Loading(t)) if r.is_leader() && r.term() == *t => {
                Err(ResponseError::CoordinatorLoadInProgress)
            }
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    /// In a cluster, every tick: follow the leadership of the replicated
    /// `__transaction_state` partitions this shard owns, as the group coordinator follows
    /// `__consumer_offsets`. A replica that leads in a term not loaded yet has its partition's
    /// ids dropped and read again from the log ([`load_partition`]) once the leader applied an
    /// entry of its term; a replica that no longer leads has them dropped (requests get
    /// NOT_COORDINATOR and clients find the new coordinator, which finishes what was
    /// prepared).
    pub fn follow_leadership(&self, shard: &Rc<Shard>) {
        let Some(partitions) = shard
            .catalog()
            .get(TXN_TOPIC)
            .filter(|m| m.is_replicated())
            .map(|m| m.partitions)
        else {
            return;
        };
        for p in 0..partitions {
            let tp = TopicPartition::new(TXN_TOPIC, p);
            if shard.owner_of(&tp) != shard.id {
                continue;
            }
            let leading = shard.replica(&tp).and_then(|d| {
                let r = d.replica();
                r.is_leader().then(|| r.term())
            });
            let now = self.leading.borrow().get(&p).copied();
            match (leading, now) {
                (Some(term), Some(c)) if c.term() == term => {}
                (Some(term), _) => {
                    self.unload(p, partitions);
                    self.leading
                        .borrow_mut()
                        .insert(p, Coordinating::Loading(term));
                    runtime::spawn_detached(load_partition(shard.clone(), tp, term));
                }
                (None, Some(c)) => {
                    let ids = self.unload(p, partitions);
                    self.leading.borrow_mut().remove(&p);
                    info!(partition = %tp, epoch = c.term(), transactional_ids = ids, "no longer the coordinator of this partition's transactions");
                }
                (None, None) => {}
            }
        }
    }

    /// Drop the transactional ids of `__transaction_state` partition `p`. Returns how many.
    fn unload(&self, p: i32, partitions: i32) -> usize {
        let mut txns = self.txns.borrow_mut();
        let before = txns.len();
        txns.retain(|id, _| crate::group::offsets_partition(id, partitions) != p);
        before - txns.len()
    }

    /// Every transaction this shard coordinates (DescribeTransactions, ListTransactions).
    pub fn describe_all(&self) -> Vec<TxnDescription> {
        let mut v: Vec<TxnDescription> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, e)| e.meta.producer_id >= 0)
            .map(|(id, e)| TxnDescription {
                transactional_id: id.clone(),
                meta: e.meta.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        v
    }

    pub fn describe(&self, id: &str) -> Option<TxnMeta> {
        self.meta(id).filter(|m| m.producer_id >= 0)
    }

    /// Open transactions and the age of the oldest, in ms (metrics).
    pub fn open_summary(&self) -> (usize, i64) {
        let now = self.clock.wall_ms();
        let txns = self.txns.borrow();
        let open = txns
            .values()
            .filter(|e| e.meta.state == TxnState::Ongoing)
            .map(|e| now.saturating_sub(e.meta.start_ms).max(0));
        open.fold((0, 0), |(n, oldest), age| (n + 1, oldest.max(age)))
    }

    /// What the ticker must do with a transactional id in state `meta` at `now_ms`.
    fn due(&self, meta: &TxnMeta, now_ms: i64) -> Option<Due> {
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => Some(Due::Complete),
            TxnState::Ongoing
                if now_ms.saturating_sub(meta.start_ms) > i64::from(meta.timeout_ms) =>
            {
                Some(Due::Abort)
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                if meta.producer_id >= 0
                    && now_ms.saturating_sub(meta.last_update_ms) > self.expiration_ms =>
            {
                Some(Due::Expire)
            }
            _ => None,
        }
    }

    /// The ticker's work: finish prepared transactions, abort timed-out ones, forget idle
    /// ids. Each runs in the id's turn, decided again on its state as of taking the turn
    /// (the ids' list is taken first and the work awaits); ids busy now are left to the next
    /// tick.
    pub async fn tick(&self, shard: &Shard) {
        let candidates: Vec<String> = {
            let now = self.clock.wall_ms();
            self.txns
                .borrow()
                .iter()
                .filter(|(_, e)| !e.busy && self.due(&e.meta, now).is_some())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in candidates {
            if shard.stopping.get() {
                return;
            }
            let Some(turn) = self.take_turn(&id) else {
                continue;
            };
            let Some(meta) = self.meta(&id) else {
                continue;
            };
            let token = turn.token;
            let result = match self.due(&meta, self.clock.wall_ms()) {
                None => continue,
                Some(Due::Complete) => self.complete(shard, &id, meta, token).await,
                Some(Due::Abort) => {
                    info!(transactional_id = %id, timeout_ms = meta.timeout_ms, "transaction timed out: aborting");
                    crate::metrics::txn_timed_out();
                    self.fence_and_abort(shard, &id, meta, token).await
                }
                Some(Due::Expire) => {
                    self.expire(shard, &id, token).await;
                    drop(turn);
                    continue;
                }
            };
            if let Err(e) = result {
                warn!(transactional_id = %id, error = ?e, "finishing a transaction failed: retrying on the next tick");
            }
        }
    }

    /// Forget an idle transactional id: a tombstone in its partition, then the entry goes
    /// (Kafka's `transactional.id.expiration.ms`). Called with the id's turn held.
    async fn expire(&self, shard: &Shard, id: &str, token: u64) {
        let written = async {
            self.still_holds(shard, id, token)?;
            self.append_state(shard, id, None)?.await?;
            self.still_holds(shard, id, token)
        }
        .await;
        match written {
            Ok(()) => {
                self.txns.borrow_mut().remove(id);
                info!(transactional_id = id, "transactional id expired");
            }
            Err(e) => {
                warn!(transactional_id = id, error = ?e, "expiring a transactional id failed")
            }
        }
    }

    /// Read the `__transaction_state` partitions this shard owns (startup, before the broker
    /// listens). Returns the number of records read.
    pub async fn load(&self, shard: &Shard) -> Result<u64, StorageError> {
        let Some(meta) = shard.catalog().get(TXN_TOPIC).cloned() else {
            return Ok(0);
        };
        let mut count = 0;
        let mut loaded: HashMap<String, (TxnMeta, i64)> = HashMap::new();
        for p in 0..meta.partitions {
            let tp = TopicPartition::new(TXN_TOPIC, p);
            if shard.owner_of(&tp) != shard.id || shard.replica(&tp).is_some() {
                continue;
            }
            let Some(log) = shard.partition(&tp) else {
                continue;
            };
            count += replay_log(&log, &tp, &mut loaded).await?;
        }
        let prepared = loaded
            .values()
            .filter(|(m, _)| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
            .count();
        let mut txns = self.txns.borrow_mut();
        for (id, (meta, log_offset)) in loaded {
            txns.insert(
                id,
                Entry {
                    meta,
                    busy: false,
                    turn: 0,
                    log_offset,
                },
            );
        }
        if count > 0 {
            info!(shard = %shard.id, records = count, transactional_ids = txns.len(), prepared, "transaction states loaded");
        }
        self.loaded.set(true);
        Ok(count)
    }
}

/// Read a replicated `__transaction_state` partition this shard's replica leads in `term`,
/// once the leader has applied an entry of its own term (then its log holds every record any
/// earlier leader committed: Raft's leader completeness), and serve its ids, unless the
/// leadership moved meanwhile (the next tick sees it). Prepared transactions are finished
/// at once (their markers written again; a second marker closes nothing), open ones abort
/// after their timeout as on a restart. A read that fails leaves the partition to be read
/// again on the next tick.
async fn load_partition(shard: Rc<Shard>, tp: TopicPartition, term: u64) {
    let started = std::time::Instant::now();
    let still_loading = |shard: &Shard| {
        shard.txns.leading.borrow().get(&tp.partition) == Some(&Coordinating::Loading(term))
            && shard
                .replica(&tp)
                .is_some_and(|d| d.replica().is_leader() && d.replica().term() == term)
    };
    let log = loop {
        if shard.stopping.get() || !still_loading(&shard) {
            return;
        }
        if let Some(d) = shard.replica(&tp)
            && d.replica().leader_ready() == Some(term)
        {
            break d.replica().log().clone();
        }
        runtime::sleep(Duration::from_millis(5)).await;
    };
    let mut loaded: HashMap<String, (TxnMeta, i64)> = HashMap::new();
    let read = replay_log(&log, &tp, &mut loaded).await;
    if !still_loading(&shard) {
        return;
    }
    let records = match read {
        Ok(n) => n,
        Err(e) => {
            warn!(partition = %tp, error = %e, "reading transaction states failed: retrying");
            shard.txns.leading.borrow_mut().remove(&tp.partition);
            return;
        }
    };
    let prepared = loaded
        .values()
        .filter(|(m, _)| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
        .count();
    let ids = loaded.len();
    {
        let mut txns = shard.txns.txns.borrow_mut();
        for (id, (meta, log_offset)) in loaded {
            txns.insert(
                id,
                Entry {
                    meta,
                    busy: false,
                    turn: 0,
                    log_offset,
                },
            );
        }
    }
    shard
        .txns
        .leading
        .borrow_mut()
        .insert(tp.partition, Coordinating::Serving(term));
    info!(
        partition = %tp,
        epoch = term,
        transactional_ids = ids,
        prepared,
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "coordinating this partition's transactions"
    );
    if prepared > 0 {
        shard.txns.tick(&shard).await;
    }
}

/// The hanging-transaction check of one partition (run by the shard's retention pass): a
/// transaction open here for longer than any coordinator would let it live
/// (`transaction_max_timeout_ms` plus two abort intervals, counted from when this check first
/// saw it) whose producer id no coordinator of this broker holds (no Ongoing or prepared
/// transaction, nothing in flight) can never be closed by a coordinator: a producer that
/// wrote without AddPartitionsToTxn, a batch after its own abort, a marker that was refused.
/// It would hold the partition's last stable offset, and every read_committed consumer,
/// forever. The partition writes an ABORT marker for it with the producer's epoch here.
pub async fn abort_hanging(shard: &Rc<Shard>, tp: &TopicPartition, log: &Rc<PartitionLog>) {
    let config = &shard.config;
    let limit = Duration::from_millis(
        u64::try_from(config.transaction_max_timeout_ms).unwrap_or(0)
            + 2 * config.transaction_abort_interval_ms,
    );
    for (pid, epoch, first) in log.long_open_transactions(limit) {
        // What the producer had written here when the coordinators were asked.
        let before = log.producer_mark(pid);
        let held = shard
            .invoke_on_all(move |s| async move { s.txns.holds(pid) })
            .await
            .map_or(true, |v| v.into_iter().any(|b| b));
        // Anything the producer wrote meanwhile (a coordinator may have taken it up again)
        // leaves it to the next pass. From this check to the marker's placement, no await.
        if held || log.producer_mark(pid) != before {
            continue;
        }
        warn!(partition = %tp, producer_id = pid, epoch, first_offset = first,
            "aborting a hanging transaction: open longer than any coordinator allows, and no coordinator holds it");
        // The producer's own coordinator epoch here: this abort must not fence its coordinator.
        let appended = log.append_marker(
            pid,
            epoch,
            Marker::Abort,
            log.producer_coordinator_epoch(pid).max(0),
        );
        let written = async {
            let info = appended.await?;
            log.wait_durable(&info).await
        }
        .await;
        match written {
            // Offsets committed in it are dropped, as a coordinator's marker would.
            Ok(()) if tp.topic.as_str() == OFFSETS_TOPIC => {
                shard.groups.complete_txn(tp.partition, pid, false)
            }
            Ok(()) => {}
            Err(e) => {
                warn!(partition = %tp, producer_id = pid, error = %e, "aborting a hanging transaction failed")
            }
        }
    }
}

/// Fault injection for crash tests: `SLUICE_TEST_TXN_MARKER_DELAY_MS` holds every
/// transaction between its durable Prepare record and its markers for that long, so a test
/// can `kill -9` the broker in between (`tests/transactions.rs`). Unset in production.
fn marker_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("SLUICE_TEST_TXN_MARKER_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// A fresh producer id with epoch 0, from the controller's allocator.
async fn new_producer_id(shard: &Shard) -> TxnResult<(i64, i16)> {
    shard
        .invoke_on(CONTROLLER, |s| async move {
            if s.is_cluster() {
                s.init_producer_id_in_cluster(None).await
            } else {
                s.init_producer_id(None)
            }
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
        .map_err(|code| {
            ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError)
        })
}

/// Append `marker` for `producer_id` to every partition of `partitions` (on its owner, the
/// owners in parallel) and wait until all are durable. A partition that no longer exists is
/// skipped (its topic was deleted); any other failure is an error and the caller retries the
/// whole set later (a second marker closes nothing).
async fn write_markers(
    shard: &Shard,
    partitions: &BTreeSet<(String, i32)>,
    producer_id: i64,
    epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
) -> TxnResult<()> {
    let mut by_owner: BTreeMap<ShardId, Vec<TopicPartition>> = BTreeMap::new();
    let mut by_broker: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
    let catalog = shard.catalog();
    for (t, p) in partitions {
        let Some(meta) = catalog.get(t).filter(|m| *p >= 0 && *p < m.partitions) else {
            continue;
        };
        let tp = TopicPartition::new(t.clone(), *p);
        let owner = shard.owner_of(&tp);
        if !meta.is_replicated() {
            // A local partition: this broker's on a one-node broker; in a cluster (a topic
            // made before replication), its designated broker's.
            let designated = if shard.is_cluster() {
                crate::server::handlers::metadata::designated_broker(&catalog, *p)
            } else {
                shard.config.node_id
            };
            if designated == shard.config.node_id {
                by_owner.entry(owner).or_default().push(tp);
            } else {
                by_broker.entry(designated).or_default().push(tp);
            }
            continue;
        }
        // In a cluster: the partition's leader writes it (through Raft), here or remotely.
        let (topic_id, asked) = (meta.id, tp.clone());
        let leader = shard
            .invoke_on(owner, move |s| async move {
                s.cluster()
                    .and_then(|c| c.leader_of(&asked, topic_id))
                    .map(|(l, _)| l)
            })
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        match leader {
            Some(l) if l == shard.config.node_id => by_owner.entry(owner).or_default().push(tp),
            Some(l) => by_broker.entry(l).or_default().push(tp),
            None => {
                debug!(partition = %tp, "no leader known for a transaction marker: retrying later");
                return Err(ResponseError::NotCoordinator);
            }
        }
    }
    let local = by_owner.into_iter().map(|(owner, tps)| {
        let sent = shard.invoke_on(owner, move |s| async move {
            markers_on_owner(&s, tps, producer_id, epoch, marker, coordinator_epoch).await
        });
        async move {
            match sent.await {
                Ok(r) => r,
                Err(_) => Err(ResponseError::CoordinatorNotAvailable),
            }
        }
    });
    let remote = by_broker.into_iter().map(|(broker, tps)| {
        let addr = catalog
            .brokers
            .get(&broker)
            .map(|b| format!("{}:{}", b.host, b.port));
        async move {
            let Some(addr) = addr else {
                return Err(ResponseError::NotCoordinator);
            };
            let answered = remote::write_markers(
                &addr,
                &tps,
                producer_id,
                epoch,
                marker,
                coordinator_epoch,
            )
            .await
            .map_err(|e| {
                warn!(broker, error = %e, "sending transaction markers failed: retrying later");
                ResponseError::NotCoordinator
            })?;
            marker_codes(answered, producer_id, epoch)
        }
    });
    let local = futures::future::join_all(local);
    let remote = futures::future::join_all(remote);
    let (local, remote) = futures::future::join(local, remote).await;
    for r in local.into_iter().chain(remote) {
        r?;
    }
    crate::metrics::txn_markers(partitions.len() as u64);
    Ok(())
}

/// What one transaction's markers came to, from their per-partition codes: a partition gone,
/// or one a newer producer epoch wrote to (the transaction this marker closes is gone), is
/// skipped; any other failure is an error (the coordinator writes the markers again later).
fn marker_codes(codes: Vec<(TopicPartition, i16)>, producer_id: i64, epoch: i16) -> TxnResult<()> {
    for (tp, code) in codes {
        match code {
            0 => {}
            47 => {
                warn!(partition = %tp, producer_id, epoch, "marker refused: a newer producer epoch wrote here")
            }
            52 => {
                warn!(partition = %tp, producer_id, epoch, "marker refused: a newer coordinator wrote here")
            }
            3 => {}
            code => {
                warn!(partition = %tp, code, "writing a transaction marker failed");
                return Err(ResponseError::NotCoordinator);
            }
        }
    }
    Ok(())
}

/// On the owner: the markers of one transaction in this shard's partitions, for a
/// coordinator ([`marker_codes`]).
async fn markers_on_owner(
    shard: &Rc<Shard>,
    tps: Vec<TopicPartition>,
    producer_id: i64,
    epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
) -> TxnResult<()> {
    let codes = write_markers_here(shard, tps, producer_id, epoch, marker, coordinator_epoch).await;
    marker_codes(codes, producer_id, epoch)
}

/// On the shard owning `tps`: write one COMMIT or ABORT marker of `producer_id` into each
/// (WriteTxnMarkers, and this broker's own coordinators). A replicated partition's leader
/// proposes it (answered once committed); a local partition appends it (answered once
/// durable). The appends are placed one after the other (no await between them) and awaited
/// together. Once a marker is in `__consumer_offsets`, the transaction's pending offset
/// commits there take effect or are dropped. Per partition: 0, or the Kafka error code
/// (UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER, INVALID_PRODUCER_EPOCH for an epoch
/// older than the producer's there, a storage error).
pub(crate) async fn write_markers_here(
    shard: &Rc<Shard>,
    tps: Vec<TopicPartition>,
    producer_id: i64,
    epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
) -> Vec<(TopicPartition, i16)> {
    type Written = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), i16>>>>;
    let now = shard.txns.clock.wall_ms();
    let mut pending: Vec<(TopicPartition, Written)> = Vec::with_capacity(tps.len());
    for tp in tps {
        let written: Written = if let Some(d) = shard.replica(&tp) {
            let proposed = d.propose_marker(producer_id, epoch, marker, coordinator_epoch, now);
            Box::pin(async move {
                proposed.await.map(|_| ()).map_err(|e| match e {
                    crate::replication::ReplicaError::Storage(
                        StorageError::InvalidProducerEpoch { .. },
                    ) => ResponseError::InvalidProducerEpoch.code(),
                    e => e.kafka_error_code(),
                })
            })
        } else if let Some(log) = shard.partition(&tp) {
            let appended = log.append_marker(producer_id, epoch, marker, coordinator_epoch);
            Box::pin(async move {
                let code = |e: StorageError| match e {
                    StorageError::InvalidProducerEpoch { .. } => {
                        ResponseError::InvalidProducerEpoch.code()
                    }
                    e => e.kafka_error_code(),
                };
                let info = appended.await.map_err(code)?;
                log.wait_durable(&info).await.map_err(code)
            })
        } else if shard.catalog().has_partition(&tp.topic, tp.partition) {
            // No replica open here (not assigned here, not open yet): retriable.
            Box::pin(std::future::ready(Err(
                ResponseError::NotLeaderOrFollower.code()
            )))
        } else {
            Box::pin(std::future::ready(Err(
                ResponseError::UnknownTopicOrPartition.code(),
            )))
        };
        pending.push((tp, written));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (tp, written) in pending {
        let code = match written.await {
            Ok(()) => {
                if tp.topic.as_str() == OFFSETS_TOPIC {
                    shard
                        .groups
                        .complete_txn(tp.partition, producer_id, marker == Marker::Commit);
                }
                0
            }
            Err(code) => code,
        };
        out.push((tp, code));
    }
    out
}

/// Read a `__transaction_state` partition from its log start to its high watermark: the
/// last record of each transactional id wins; a tombstone removes it.
async fn replay_log(
    log: &PartitionLog,
    tp: &TopicPartition,
    out: &mut HashMap<String, (TxnMeta, i64)>,
) -> Result<u64, StorageError> {
    let mut count = 0u64;
    crate::group::read_records(log, tp, |r| {
        if r.control {
            return;
        }
        let Some(k) = &r.key else { return };
        let id = match records::decode_key(k) {
            Ok(id) => id,
            Err(e) => {
                warn!(partition = %tp, offset = r.offset, error = %e, "skipping undecodable transaction key");
                return;
            }
        };
        count += 1;
        match r.value.as_deref().map(records::decode_value) {
            None => {
                out.remove(&id);
            }
            Some(Ok(meta)) => {
                out.insert(id, (meta, r.offset));
            }
            Some(Err(e)) => {
                warn!(partition = %tp, offset = r.offset, error = %e, "skipping undecodable transaction state")
            }
        }
    })
    .await?;
    Ok(count)
}

/// Run the shard's transaction ticker until the shard stops: at once (finishing what a
/// restart left prepared), then every `transaction_abort_interval_ms`.
pub fn spawn_ticker(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.config.transaction_abort_interval_ms);
    if shard.is_cluster() {
        // Leadership of the replicated `__transaction_state` partitions, followed as often
        // as the group coordinator follows `__consumer_offsets`.
        let follower = shard.clone();
        runtime::spawn_detached(async move {
            while !follower.stopping.get() {
                follower.txns.follow_leadership(&follower);
                runtime::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    runtime::spawn_detached(async move {
        loop {
            if shard.stopping.get() {
                return;
            }
            shard.txns.tick(&shard).await;
            crate::metrics::txn_open(shard.txns.open_summary());
            runtime::sleep(every).await;
        }
    });
}
