//! A shard: the state one core owns, and the way shards ask each other for
//! work.
//!
//! Ownership: every partition is owned by exactly one shard,
//! [`TopicPartition::owner`]; only that shard opens its files. A request that
//! touches another shard's partitions runs the work there with
//! [`Shard::invoke_on`] (message passing over lock-free SPSC channels) and the
//! result comes back to the shard that owns the connection.
//!
//! Shard 0 is also the controller: the only writer of the topic catalog
//! (`cluster::catalog`). It persists a change, then gives every shard the new
//! copy ([`Shard::apply_catalog`]), which opens or deletes the partitions that
//! shard owns.

pub mod cleaner;
pub mod controller;
pub mod scatter;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::cluster::catalog::{Catalog, TopicMeta};
use crate::cluster::node::ClusterShard;
use crate::config::Config;
use crate::runtime::{self, ShardReceiver, ShardSender, oneshot};
use crate::storage::{LogConfig, PartitionLog, StorageError};
use crate::types::{ShardId, TopicPartition};

/// Work sent to another shard: a closure called there, in arrival order,
/// with that shard's state; the future it returns runs as a task.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The result of work handed to a shard with [`Shard::send_on`].
pub type Reply<T> = Pin<Box<dyn Future<Output = Result<T, ShardError>>>>;

/// Errors crossing shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{0} is not reachable (channel closed)")]
    Unreachable(ShardId),
    #[error("{0} dropped the request")]
    Dropped(ShardId),
}

/// Each of `partitions` partitions' share of a shard's tail-cache budget
/// (`constants::TAIL_CACHE_SHARD_BYTES`), within the per-partition bounds.
pub fn tail_cache_share(partitions: usize) -> usize {
    (crate::constants::TAIL_CACHE_SHARD_BYTES / partitions.max(1)).clamp(
        crate::constants::TAIL_CACHE_BYTES_MIN,
        crate::constants::TAIL_CACHE_BYTES_MAX,
    )
}

/// The state one core owns. Lives in an `Rc` on its executor thread.
pub struct Shard {
    pub id: ShardId,
    /// Number of shards in this broker.
    pub count: usize,
    pub config: Arc<Config>,
    /// This shard's copy of the catalog; replaced wholesale by the controller.
    catalog: RefCell<Arc<Catalog>>,
    /// Partitions this shard owns, open.
    partitions: RefCell<HashMap<TopicPartition, Rc<PartitionLog>>>,
    /// Sender to every other shard (None at our own index).
    peers: Vec<Option<ShardSender<Job>>>,
    /// Open client connections on this shard.
    pub connections: Cell<usize>,
    /// Requests of this shard's connections being handled right now.
    pub in_flight: Cell<usize>,
    /// Set when a graceful stop begins: connections stop taking requests.
    /// Set it only through [`Shard::begin_stop`], which also wakes
    /// [`Shard::until_stopping`].
    pub stopping: Cell<bool>,
    /// Fired by [`Shard::begin_stop`].
    stop_notify: runtime::Notify,
    /// The consumer groups this shard coordinates (those whose
    /// `__consumer_offsets` partition it owns; see `crate::group`).
    pub groups: crate::group::GroupCoordinator,
    /// The transactional ids this shard coordinates (those whose `__transaction_state`
    /// partition it owns; see `crate::txn`).
    pub txns: crate::txn::TxnCoordinator,
    /// Serialises controller operations (only used on shard 0).
    pub(crate) controller_lock: futures::lock::Mutex<()>,
    /// Producer id allocator (controller only), loaded on first use.
    pub(crate) producer_ids: RefCell<Option<crate::cluster::producer_ids::ProducerIds>>,
    /// In a cluster: the producer id block this broker claimed, (next, end) (controller only).
    pub(crate) cluster_producer_ids: Cell<(i64, i64)>,
    /// In a cluster: this shard's replicas and links (set once at start).
    cluster: RefCell<Option<Rc<ClusterShard>>>,
    /// One catalog adoption at a time (the controller's and the metadata log's).
    catalog_lock: futures::lock::Mutex<()>,
    self_ref: Weak<Shard>,
}

impl Shard {
    pub fn new(
        id: ShardId,
        count: usize,
        config: Arc<Config>,
        catalog: Arc<Catalog>,
        peers: Vec<Option<ShardSender<Job>>>,
    ) -> Rc<Self> {
        crate::metrics::init(count);
        let groups = crate::group::GroupCoordinator::new(&config);
        let txns = crate::txn::TxnCoordinator::new(&config);
        let every = std::time::Duration::from_millis(config.retention_check_interval_ms);
        let shard = Rc::new_cyclic(|w| Shard {
            id,
            count,
            config,
            catalog: RefCell::new(catalog),
            partitions: RefCell::new(HashMap::new()),
            peers,
            connections: Cell::new(0),
            in_flight: Cell::new(0),
            stopping: Cell::new(false),
            stop_notify: runtime::Notify::new(),
            groups,
            txns,
            controller_lock: futures::lock::Mutex::new(()),
            producer_ids: RefCell::new(None),
            cluster_producer_ids: Cell::new((0, 0)),
            cluster: RefCell::new(None),
            catalog_lock: futures::lock::Mutex::new(()),
            self_ref: w.clone(),
        });
        runtime::spawn_detached(retention_task(Rc::downgrade(&shard), every));
        if shard.config.log_cleaner_enable {
            runtime::spawn_detached(cleaner::cleaner_task(Rc::downgrade(&shard)));
        }
        shard
    }

    fn rc(&self) -> Rc<Shard> {
        self.self_ref.upgrade().expect("shard is alive")
    }

    /// Serve jobs sent by shard `source`, in arrival order: each job's
    /// closure is called here, in the receive loop, so the synchronous part
    /// of every job (an append's offset assignment, a commit's place in its
    /// group's line) runs in the order the jobs were sent; what it returns
    /// runs as its own task, so the loop never blocks and shards cannot
    /// deadlock on full channels.
    pub fn serve_peer(self: &Rc<Self>, source: ShardId, rx: ShardReceiver<Job>) {
        let shard = self.clone();
        runtime::spawn_detached(async move {
            while let Some(job) = rx.recv().await {
                crate::metrics::cross_shard_received(source.0);
                runtime::spawn_detached(job(shard.clone()));
            }
        });
    }

    /// The shard that owns `tp`.
    pub fn owner_of(&self, tp: &TopicPartition) -> ShardId {
        tp.owner(self.count)
    }

    /// Run `f` on shard `target` with that shard's state, and return its
    /// result here. Runs inline when `target` is this shard.
    pub async fn invoke_on<T, F, Fut>(&self, target: ShardId, f: F) -> Result<T, ShardError>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        self.send_on(target, f).await?.await
    }

    /// Hand `f` to shard `target` and return once it is on its way: `f`
    /// itself (its synchronous part) has run when `target` is this shard, or
    /// else sits in the channel to `target` behind every job sent there
    /// before it, and `target` calls it in that order. The returned
    /// [`Reply`] resolves to the result of the future `f` returned.
    ///
    /// This is the ordering point of a request (`server::ordering`): once
    /// `send_on` returned for each of its owners, a later request of the
    /// connection may be sent, and its jobs run after these on every shard.
    pub async fn send_on<T, F, Fut>(&self, target: ShardId, f: F) -> Result<Reply<T>, ShardError>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if target == self.id {
            let fut = f(self.rc());
            return Ok(Box::pin(async move { Ok(fut.await) }));
        }
        let (tx, rx) = oneshot::channel();
        let origin = self.id;
        let job: Job = Box::new(move |shard| {
            let fut = f(shard.clone());
            Box::pin(async move {
                let out = fut.await;
                // The result travels back as a job on the channel to `origin`, so the waiting
                // task is woken on its own shard. Completing the oneshot here would wake it
                // from this thread: glommio's foreign-waker path races with the task's
                // teardown and aborted the broker with a double free (under load, about once
                // in ten 10 s runs).
                let reply: Job = Box::new(move |_| {
                    Box::pin(async move {
                        let _ = tx.send(out);
                    })
                });
                if let Some(back) = shard.peers[origin.0].as_ref() {
                    let _ = back.send(reply).await;
                }
            })
        });
        let sender = self.peers[target.0]
            .as_ref()
            .ok_or(ShardError::Unreachable(target))?;
        // Outstanding (the target's queue depth as seen from here) until
        // the reply arrives or the send fails.
        let outstanding = crate::metrics::cross_shard_sent(target.0);
        if sender.send(job).await.is_err() {
            return Err(ShardError::Unreachable(target));
        }
        Ok(Box::pin(async move {
            let out = rx.await.map_err(|_| ShardError::Dropped(target));
            drop(outstanding);
            out
        }))
    }

    /// Run `f` on every shard (this one included) and collect the results in
    /// shard order.
    pub async fn invoke_on_all<T, F, Fut>(&self, f: F) -> Result<Vec<T>, ShardError>
    where
        T: Send + 'static,
        F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let futs = (0..self.count).map(|s| self.invoke_on(ShardId(s), f.clone()));
        futures::future::join_all(futs).await.into_iter().collect()
    }

    /// A graceful stop begins on this shard: take no new requests and end
    /// the waits of long-polling requests ([`Shard::until_stopping`]), so
    /// they are answered with what they have.
    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop_notify.notify_all();
    }

    /// Resolves once [`Shard::begin_stop`] ran (at once if it already did).
    pub async fn until_stopping(&self) {
        while !self.stopping.get() {
            let listener = self.stop_notify.listen();
            if self.stopping.get() {
                return;
            }
            listener.await;
        }
    }

    /// This shard's copy of the catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// An open partition this shard owns that this broker serves to clients: a local
    /// partition, or a replicated one whose replica here leads its group (a follower's log is
    /// not served: clients get NOT_LEADER_OR_FOLLOWER and refresh their metadata).
    pub fn partition(&self, tp: &TopicPartition) -> Option<Rc<PartitionLog>> {
        if let Some(log) = self.partitions.borrow().get(tp) {
            return Some(log.clone());
        }
        self.replica(tp)
            .filter(|d| d.replica().is_leader())
            .map(|d| d.replica().log().clone())
    }

    /// Whether the broker is part of a cluster (started with `seed_servers`).
    pub fn is_cluster(&self) -> bool {
        self.cluster.borrow().is_some()
    }

    /// This shard's part in the cluster (None on a one-node broker).
    pub fn cluster(&self) -> Option<Rc<ClusterShard>> {
        self.cluster.borrow().clone()
    }

    /// Set this shard's part in the cluster, once, at start.
    pub fn set_cluster(&self, c: Rc<ClusterShard>) {
        *self.cluster.borrow_mut() = Some(c);
    }

    /// The replica of `tp` on this shard (replicated partitions only).
    pub fn replica(&self, tp: &TopicPartition) -> Option<Rc<crate::replication::driver::Driver>> {
        self.cluster.borrow().as_ref().and_then(|c| c.replica(tp))
    }

    /// Partitions this shard owns (for shutdown and diagnostics).
    pub fn owned_partitions(&self) -> Vec<(TopicPartition, Rc<PartitionLog>)> {
        self.partitions
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Storage settings of a topic: the broker's static settings, dynamic
    /// broker configs, then topic overrides (this shard's catalog copy).
    /// Values out of the log's bounds are clamped to them.
    pub fn log_config_for(&self, meta: &TopicMeta) -> LogConfig {
        use controller::topic_config_value;
        let catalog = self.catalog();
        let value = |key: &str| topic_config_value(&self.config, &catalog, meta, key);
        let int = |key: &str| value(key).and_then(|v| v.parse::<i64>().ok());
        let mut cfg = self.config.log_config();
        if let Some(v) = int("segment.bytes") {
            cfg.segment_bytes = v.clamp(4096, i64::from(u32::MAX)) as u64;
        }
        if let Some(v) = int("segment.ms") {
            cfg.segment_ms = v.max(1) as u64;
        }
        if let Some(v) = int("max.message.bytes") {
            cfg.max_message_bytes = v.max(crate::storage::batch::HEADER_LEN as i64) as usize;
        }
        if let Some(v) = int("retention.ms") {
            cfg.retention_ms = v.max(-1);
        }
        if let Some(v) = int("retention.bytes") {
            cfg.retention_bytes = v.max(-1);
        }
        if let Some(v) = value("cleanup.policy") {
            cfg.retention_enabled = v.split(',').any(|p| p.trim() == "delete");
            cfg.compact = v.split(',').any(|p| p.trim() == "compact");
        }
        if let Some(v) = value("min.cleanable.dirty.ratio").and_then(|v| v.parse::<f64>().ok()) {
            cfg.min_cleanable_dirty_ratio = v.clamp(0.0, 1.0);
        }
        if let Some(v) = int("delete.retention.ms") {
            cfg.delete_retention_ms = v.max(0);
        }
        if let Some(v) = int("min.compaction.lag.ms") {
            cfg.min_compaction_lag_ms = v.max(0);
        }
        if let Some(v) = int("max.compaction.lag.ms") {
            cfg.max_compaction_lag_ms = v.max(0);
        }
        if let Some(v) = value("message.timestamp.type") {
            cfg.log_append_time = v == "LogAppendTime";
        }
        cfg
    }

    /// Adopt a new catalog copy: delete the partitions of topics that are
    /// gone (or were re-created with a new id), open the partitions this
    /// shard owns that are not open yet. Ignores a copy older than ours.
    pub async fn apply_catalog(&self, new: Arc<Catalog>) -> Result<(), StorageError> {
        let _adopting = self.catalog_lock.lock().await;
        let old = self.catalog();
        if new.version < old.version {
            return Ok(());
        }
        *self.catalog.borrow_mut() = new.clone();
        // Delete what is gone.
        let doomed: Vec<(TopicPartition, Rc<PartitionLog>)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(tp, _)| {
                let same = match (old.get(&tp.topic), new.get(&tp.topic)) {
                    (Some(o), Some(n)) => o.id == n.id,
                    _ => false,
                };
                !same || !new.has_partition(&tp.topic, tp.partition)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (tp, log) in doomed {
            self.partitions.borrow_mut().remove(&tp);
            info!(shard = %self.id, partition = %tp, "deleting partition");
            log.delete().await?;
        }
        // Replicas this broker no longer holds (topic gone, re-created, reassigned).
        if let Some(cluster) = self.cluster() {
            let node = self.config.node_id;
            let metadata = crate::cluster::metadata::metadata_tp();
            for (tp, _) in cluster.replicas() {
                if tp == metadata {
                    continue;
                }
                let keep = new.get(&tp.topic).is_some_and(|m| {
                    Some(m.id) == cluster.topic_id_of(&tp)
                        && m.replicas_of(tp.partition).contains(&node)
                });
                if !keep {
                    info!(shard = %self.id, partition = %tp, "removing replica");
                    cluster.remove_replica(&tp, true).await;
                }
            }
        }
        // Apply changed configs (topic or broker level) to open partitions.
        let open: Vec<(TopicPartition, Rc<PartitionLog>)> = self.owned_partitions();
        for (tp, log) in open {
            if let Some(meta) = new.get(&tp.topic) {
                let mut cfg = self.log_config_for(meta);
                // The tail cache's bound is the shard's share, set below.
                cfg.tail_cache_bytes = log.cfg().tail_cache_bytes;
                if cfg != log.cfg() {
                    debug!(shard = %self.id, partition = %tp, "applying changed configs");
                    log.update_config(cfg);
                }
            }
        }
        // Open what is new.
        for meta in new.topics.values() {
            for p in 0..meta.partitions {
                let tp = TopicPartition::new(meta.name.clone(), p);
                if self.owner_of(&tp) != self.id || self.partitions.borrow().contains_key(&tp) {
                    continue;
                }
                if meta.is_replicated() {
                    self.open_replica(meta, &tp).await;
                    continue;
                }
                let dir = self.config.data_dir.join(tp.dir_name());
                let log = PartitionLog::open(dir, self.log_config_for(meta)).await?;
                debug!(shard = %self.id, partition = %tp, "opened partition");
                self.partitions.borrow_mut().insert(tp, log);
            }
        }
        self.share_tail_cache();
        Ok(())
    }

    /// Open this broker's replica of `tp` if it holds one. A replica that cannot be opened is
    /// logged and left closed (the others of its group serve the partition); it does not stop
    /// the catalog from being adopted.
    async fn open_replica(&self, meta: &TopicMeta, tp: &TopicPartition) {
        let Some(cluster) = self.cluster() else {
            warn!(shard = %self.id, partition = %tp, "replicated topic on a broker without a cluster: not opened");
            return;
        };
        let replicas = meta.replicas_of(tp.partition);
        if !replicas.contains(&self.config.node_id) || cluster.replica(tp).is_some() {
            return;
        }
        let voters = replicas.iter().map(|&id| id as u64).collect();
        if let Err(e) = cluster
            .open_replica(
                &self.config.data_dir,
                tp,
                meta.id,
                voters,
                replicas.first().map(|&id| id as u64),
                self.log_config_for(meta),
            )
            .await
        {
            tracing::error!(shard = %self.id, partition = %tp, error = %e, "cannot open replica");
            return;
        }
        if let Some(d) = cluster.replica(tp) {
            d.replica()
                .set_prefix_source(Some(Rc::new(crate::cluster::node::LeaderFetch {
                    shard: self.self_ref.clone(),
                    tp: tp.clone(),
                })));
        }
    }

    /// Give each partition this shard owns its equal share of the shard's tail-cache budget.
    fn share_tail_cache(&self) {
        let logs = self.owned_partitions();
        let share = tail_cache_share(logs.len());
        for (_, log) in logs {
            if log.cfg().tail_cache_bytes != share {
                log.set_tail_cache_bytes(share);
            }
        }
    }

    /// At startup: remove partition directories this shard owns that the
    /// catalog no longer lists (a crash between a DeleteTopics catalog write
    /// and the directory removal leaves them behind).
    pub fn remove_orphans_with(&self, catalog: &Catalog) {
        let Ok(entries) = std::fs::read_dir(&self.config.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("__") || name.starts_with('.') {
                continue;
            }
            let Some(tp) = TopicPartition::parse_dir_name(name) else {
                continue;
            };
            if self.owner_of(&tp) != self.id || catalog.has_partition(&tp.topic, tp.partition) {
                continue;
            }
            warn!(shard = %self.id, dir = %name, "removing partition directory not in the catalog");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!(shard = %self.id, dir = %name, error = %e, "cannot remove orphan directory");
            }
        }
    }

    /// Close every partition (flush, seal, clean-shutdown marker) for a
    /// clean stop. Returns how many closed cleanly and how many failed (a
    /// failed one has no marker and is recovered at the next start).
    pub async fn close_all(&self) -> (usize, usize) {
        let parts: Vec<_> = self.partitions.borrow_mut().drain().collect();
        let (mut closed, mut failed) = match self.cluster() {
            Some(c) => c.close_all().await,
            None => (0, 0),
        };
        for (tp, log) in parts {
            match log.close().await {
                Ok(()) => closed += 1,
                Err(e) => {
                    failed += 1;
                    warn!(shard = %self.id, partition = %tp, error = %e, "close failed");
                }
            }
        }
        (closed, failed)
    }
}

/// Each shard's retention pass, every `retention_check_interval_ms`: asks each
/// partition it owns to delete its expired sealed segments
/// ([`PartitionLog::enforce_retention`]), and each replica to move its Raft base
/// ([`crate::replication::Replica::request_compaction`]). Bounded: one pass per period, one
/// partition at a time; exits when the shard stops or is dropped. (`__consumer_offsets` and
/// `__transaction_state` are compacted by the log cleaner, `shard::cleaner`.)
async fn retention_task(shard: Weak<Shard>, every: std::time::Duration) {
    loop {
        runtime::sleep(every).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.stopping.get() {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (tp, log) in shard.owned_partitions() {
            crate::txn::abort_hanging(&shard, &tp, &log).await;
            match log.enforce_retention(now_ms).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(shard = %shard.id, partition = %tp, segments = n, log_start = log.log_start_offset().get(), "retention deleted segments")
                }
                Err(e) => {
                    warn!(shard = %shard.id, partition = %tp, error = %e, "retention pass failed")
                }
            }
            runtime::yield_if_needed().await;
        }
        // Replicated partitions (leaders and followers alike, each on its own log): the
        // segments retention would remove, and those wholly below a log start DeleteRecords
        // moved, go once the replica's Raft base is past them (`Replica::compact`).
        if let Some(cluster) = shard.cluster() {
            for (tp, d) in cluster.replicas() {
                // The metadata log is never trimmed: each record is a catalog applied on top
                // of the version before it, so a broker replays it from its first record.
                if tp == crate::cluster::metadata::metadata_tp() {
                    continue;
                }
                let log = d.replica().log();
                let below_start = log.segment_base_at(log.log_start_offset());
                let target = log
                    .retention_target(now_ms)
                    .map_or(below_start, |t| t.max(below_start));
                // A compacted log keeps its sealed segments (the cleaner rewrites them below
                // the Raft base): the base moves to the active segment, the segments below
                // `target` go.
                let base_to = if log.cfg().compact {
                    log.active_segment().0.max(target)
                } else {
                    target
                };
                if target > log.first_segment_base() || base_to.0 > d.replica().base().offset {
                    tracing::debug!(shard = %shard.id, partition = %tp, offset = target.get(), base = base_to.get(), "compacting a replicated log");
                    d.request_compaction(target, base_to);
                }
            }
        }
    }
}

#[cfg(test)]
mod tail_cache_tests {
    use super::tail_cache_share;
    use crate::constants::{TAIL_CACHE_BYTES_MAX, TAIL_CACHE_BYTES_MIN, TAIL_CACHE_SHARD_BYTES};

    #[test]
    fn the_tail_cache_budget_is_shared_within_bounds() {
        assert_eq!(tail_cache_share(0), TAIL_CACHE_BYTES_MAX);
        assert_eq!(tail_cache_share(16), TAIL_CACHE_BYTES_MAX);
        assert_eq!(tail_cache_share(128), TAIL_CACHE_SHARD_BYTES / 128);
        assert_eq!(tail_cache_share(10_000), TAIL_CACHE_BYTES_MIN);
        // Memory stays bounded as partitions grow: 10,000 partitions on a shard hold at most
        // 320 MiB of tail cache, not 40 GiB.
        assert!(10_000 * tail_cache_share(10_000) <= 320 << 20);
        for n in [1, 10, 100, 1_000, 5_000] {
            assert!(
                n * tail_cache_share(n) <= TAIL_CACHE_SHARD_BYTES.max(n * TAIL_CACHE_BYTES_MIN)
            );
        }
    }
}
