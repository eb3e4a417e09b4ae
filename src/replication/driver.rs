//! The task that drives one replica on its shard in real time: it ticks Raft every `tick`,
//! steps the peers' messages handed to [`Driver::deliver`], runs the replica's ready work and
//! hands what it sends to a [`Transport`]. The simulation drives replicas itself instead.
//!
//! Bounded: the inbox holds at most `inbox_max` messages; beyond that messages are dropped
//! (counted), which Raft treats as a lossy network and recovers from by retrying.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::Message;

use super::replica::{Acks, Replica, ReplicaError};
use crate::runtime::Notify;
use crate::storage::log::AppendInfo;

/// Where a replica's messages go: the broker-to-broker connections, or in tests the other
/// replicas of the process. `send` never blocks: a full queue drops the message.
pub trait Transport {
    fn send(&self, m: Message);
}

/// One replica's driving task and inbox.
pub struct Driver {
    replica: Rc<Replica>,
    inbox: RefCell<VecDeque<Message>>,
    inbox_max: usize,
    dropped: Cell<u64>,
    wake: Notify,
    stop: Cell<bool>,
}

impl Driver {
    pub fn new(replica: Rc<Replica>, inbox_max: usize) -> Rc<Driver> {
        Rc::new(Driver {
            replica,
            inbox: RefCell::new(VecDeque::new()),
            inbox_max,
            dropped: Cell::new(0),
            wake: Notify::new(),
            stop: Cell::new(false),
        })
    }

    pub fn replica(&self) -> &Rc<Replica> {
        &self.replica
    }

    /// A peer's message for this replica.
    pub fn deliver(&self, m: Message) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= self.inbox_max {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        inbox.push_back(m);
        drop(inbox);
        self.wake.notify_all();
    }

    /// Messages dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// [`Replica::propose_with`], waking the task so the entries go out at once.
    pub fn propose(
        &self,
        records: Bytes,
        acks: Acks,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let fut = self.replica.propose_with(records, acks);
        self.wake.notify_all();
        fut
    }

    /// [`Replica::propose_log_start`] (DeleteRecords), waking the task.
    pub fn propose_log_start(
        &self,
        offset: crate::types::Offset,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let fut = self.replica.propose_log_start(offset);
        self.wake.notify_all();
        fut
    }

    /// [`Replica::propose_marker`] (WriteTxnMarkers), waking the task.
    pub fn propose_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: crate::storage::producer_state::Marker,
        coordinator_epoch: i32,
        timestamp_ms: i64,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let fut = self.replica.propose_marker(
            producer_id,
            producer_epoch,
            marker,
            coordinator_epoch,
            timestamp_ms,
        );
        self.wake.notify_all();
        fut
    }

    /// [`Replica::propose_for_producer`] (a transactional offset commit), waking the task.
    pub fn propose_for_producer(
        &self,
        records: Bytes,
    ) -> impl std::future::Future<Output = Result<AppendInfo, ReplicaError>> + use<> {
        let fut = self.replica.propose_for_producer(records);
        self.wake.notify_all();
        fut
    }

    /// [`Replica::request_compaction`], waking the task.
    pub fn request_compaction(
        &self,
        remove_below: crate::types::Offset,
        base_to: crate::types::Offset,
    ) {
        self.replica.request_compaction(remove_below, base_to);
        self.wake.notify_all();
    }

    /// Ask the task to end after its current round (a compacted prefix being copied gives
    /// up: the install goes on at the next open).
    pub fn stop(&self) {
        self.stop.set(true);
        self.replica.stop_installing();
        self.wake.notify_all();
    }

    /// Run until [`Driver::stop`] or a replica failure (returned). With `balance_every`, a
    /// leader checks that often whether to hand over to its preferred replica
    /// ([`Replica::balance_leadership`]).
    pub async fn run(
        self: Rc<Self>,
        transport: Rc<dyn Transport>,
        tick: Duration,
        balance_every: Option<Duration>,
    ) -> Result<(), ReplicaError> {
        let mut next_tick = Instant::now() + tick;
        let mut next_balance = balance_every.map(|d| Instant::now() + d);
        // A write becoming durable wakes the task: the ready work that waited for it (a
        // leader's commit, a follower's append responses) runs at once.
        let me = Rc::downgrade(&self);
        self.replica.set_on_durable(Some(Rc::new(move || {
            if let Some(d) = me.upgrade() {
                d.wake.notify_all();
            }
        })));
        while !self.stop.get() {
            let listener = self.wake.listen();
            let inbox = std::mem::take(&mut *self.inbox.borrow_mut());
            for m in inbox {
                self.replica.step(m);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.replica.tick();
                next_tick = now + tick;
            }
            if let (Some(at), Some(every)) = (next_balance, balance_every)
                && now >= at
            {
                self.replica.balance_leadership();
                next_balance = Some(now + every);
            }
            self.replica.process_ready().await?;
            for m in self.replica.take_messages() {
                transport.send(m);
            }
            if self.inbox.borrow().is_empty() && !self.replica.has_ready() {
                let wait = next_tick.saturating_duration_since(Instant::now());
                crate::runtime::timeout(wait, listener).await;
            }
        }
        self.replica.set_on_durable(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ReplicaConfig;
    use crate::storage::batch::test_util::encode_batch;
    use crate::storage::io::{Env, ManualClock, SyncScope};
    use crate::storage::log::LogConfig;
    use crate::storage::sim::{Faults, SimDisk};
    use std::path::PathBuf;

    /// The replicas of one process, by id; a stopped one receives nothing.
    #[derive(Default)]
    struct LocalNet {
        drivers: RefCell<Vec<Option<Rc<Driver>>>>,
        /// A replica cut off: nothing reaches it or leaves it.
        cut: Cell<Option<u64>>,
        /// Each replica's environment (its disk), to reopen it.
        envs: RefCell<Vec<Env>>,
        /// Each replica's simulated disk (to cut its power).
        disks: RefCell<Vec<SimDisk>>,
    }

    impl Transport for LocalNet {
        fn send(&self, m: Message) {
            if self.cut.get().is_some_and(|c| c == m.from || c == m.to) {
                return;
            }
            let to = m.to as usize - 1;
            if let Some(Some(d)) = self.drivers.borrow().get(to) {
                d.deliver(m);
            }
        }
    }

    /// The running replicas but `not`.
    fn others(net: &LocalNet, not: u64) -> Vec<Rc<Driver>> {
        net.drivers
            .borrow()
            .iter()
            .flatten()
            .filter(|d| d.replica().id() != not)
            .cloned()
            .collect()
    }

    /// A leader other than `not`.
    fn leader(net: &LocalNet, not: Option<u64>) -> Option<Rc<Driver>> {
        net.drivers
            .borrow()
            .iter()
            .flatten()
            .find(|d| d.replica().is_leader() && Some(d.replica().id()) != not)
            .cloned()
    }

    async fn wait_for_leader(net: &LocalNet, not: Option<u64>) -> Rc<Driver> {
        for _ in 0..500 {
            if let Some(d) = leader(net, not) {
                return d;
            }
            crate::runtime::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader within 5 s");
    }

    async fn produce(d: &Driver, n: i64, from: i64) -> i64 {
        let mut last = -1;
        for i in from..from + n {
            let fut = d.propose(encode_batch(0, 2, i * 10, 32), Acks::All);
            let info = crate::runtime::timeout(Duration::from_secs(5), fut)
                .await
                .expect("acknowledged within 5 s")
                .expect("acknowledged");
            assert!(info.base_offset.0 > last);
            last = info.last_offset.0;
        }
        last
    }

    type Tasks = Vec<crate::runtime::Task<Result<(), ReplicaError>>>;

    /// Three replicas on simulated disks, driven in real time (10 ms ticks).
    async fn start() -> (Rc<LocalNet>, Tasks) {
        start_with(None, None).await
    }

    /// [`start`] with a preferred leader and a leader-balance period.
    async fn start_with(
        preferred: Option<u64>,
        balance: Option<Duration>,
    ) -> (Rc<LocalNet>, Tasks) {
        start_cfg(preferred, balance, LogConfig::default()).await
    }

    /// [`start`] with followers leaving the reported ISR after `ticks` without catching up.
    async fn start_lagging(ticks: u64) -> (Rc<LocalNet>, Tasks) {
        start_full(None, None, LogConfig::default(), ticks).await
    }

    /// [`start_with`] with the partition logs' settings.
    async fn start_cfg(
        preferred: Option<u64>,
        balance: Option<Duration>,
        log_cfg: LogConfig,
    ) -> (Rc<LocalNet>, Tasks) {
        start_full(preferred, balance, log_cfg, 1_500).await
    }

    async fn start_full(
        preferred: Option<u64>,
        balance: Option<Duration>,
        log_cfg: LogConfig,
        lag_ticks: u64,
    ) -> (Rc<LocalNet>, Tasks) {
        let net = Rc::new(LocalNet::default());
        let clock = Rc::new(ManualClock::new(1_700_000_000_000));
        let mut tasks = Vec::new();
        for id in 1..=3u64 {
            let disk = SimDisk::new(id, Faults::default());
            net.disks.borrow_mut().push(disk.clone());
            let env = Env::new(Rc::new(disk), clock.clone(), SyncScope::default());
            net.envs.borrow_mut().push(env.clone());
            let cfg = ReplicaConfig {
                new_replica: true,
                preferred_leader: preferred,
                lag_time_max_ticks: lag_ticks,
                ..ReplicaConfig::new(id, vec![1, 2, 3])
            };
            let r = Replica::open(env, PathBuf::from("/data/t-0"), log_cfg, &cfg)
                .await
                .expect("open");
            let d = Driver::new(r, 1024);
            net.drivers.borrow_mut().push(Some(d.clone()));
            let transport: Rc<dyn Transport> = net.clone();
            tasks.push(crate::runtime::spawn(d.run(
                transport,
                Duration::from_millis(10),
                balance,
            )));
        }
        (net, tasks)
    }

    /// Leadership follows the preferred replica: a new group elects it first, and after
    /// another replica won an election (the preferred one was cut off), the leader hands over once the preferred replica is
    /// back and caught up, and nothing acknowledged is lost on the way.
    #[test]
    fn leadership_returns_to_the_preferred_replica() {
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start_with(Some(2), Some(Duration::from_millis(100))).await;
            let first = wait_for_leader(&net, None).await;
            net.cut.set(Some(first.replica().id()));
            let other = wait_for_leader(&net, Some(first.replica().id())).await;
            let last = produce(&other, 20, 0).await;
            net.cut.set(None);
            let mut leader = None;
            for _ in 0..500 {
                leader = leader_id(&net);
                if leader == Some(2) {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(leader, Some(2), "the preferred replica leads again");
            let d = wait_for_leader(&net, None).await;
            assert!(produce(&d, 5, 20).await > last);
            let total: u64 = net
                .drivers
                .borrow()
                .iter()
                .flatten()
                .map(|d| d.replica().leadership_transfers())
                .sum();
            assert_eq!(
                first.replica().id(),
                2,
                "a new group elects its preferred replica"
            );
            if other.replica().id() != 2 {
                assert!(total >= 1, "the leadership was handed over");
            }
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                t.await.expect("driver ends cleanly");
            }
        });
    }

    /// The current leader's id, if exactly one replica leads.
    fn leader_id(net: &LocalNet) -> Option<u64> {
        let leaders: Vec<u64> = net
            .drivers
            .borrow()
            .iter()
            .flatten()
            .filter(|d| d.replica().is_leader())
            .map(|d| d.replica().id())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    async fn committed_bytes(d: &Driver) -> Bytes {
        crate::replication::committed_log(d.replica().log()).await
    }

    /// Idempotent producers on a replicated partition: a retry of a committed batch gets its
    /// original offsets and is not stored twice, a gap in the sequence is refused, a retry of
    /// a batch not committed yet gets a retriable error; and after the leader stops, the new
    /// leader (whose producer state came from its log) still recognizes the retry.
    #[test]
    fn idempotent_retries_are_deduplicated_across_a_leader_change() {
        use crate::storage::batch::test_util::encode_idempotent;
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start().await;
            let first = wait_for_leader(&net, None).await;
            let ack = |d: &Driver, b: Bytes| {
                let fut = d.propose(b, Acks::All);
                async move {
                    crate::runtime::timeout(Duration::from_secs(5), fut)
                        .await
                        .expect("answered within 5 s")
                }
            };
            let a = ack(&first, encode_idempotent(7, 0, 0, 3, 1_000))
                .await
                .unwrap();
            let b = ack(&first, encode_idempotent(7, 0, 3, 2, 1_001))
                .await
                .unwrap();
            // Retries of committed batches: the original offsets, nothing stored.
            let again = ack(&first, encode_idempotent(7, 0, 0, 3, 1_000))
                .await
                .unwrap();
            assert_eq!(again.base_offset, a.base_offset);
            let end = first.replica().log().log_end_offset();
            let again_b = ack(&first, encode_idempotent(7, 0, 3, 2, 1_001))
                .await
                .unwrap();
            assert_eq!(again_b.base_offset, b.base_offset);
            assert_eq!(
                first.replica().log().log_end_offset(),
                end,
                "a retry is not stored"
            );
            // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER.
            let gap = ack(&first, encode_idempotent(7, 0, 9, 1, 1_002)).await;
            assert_eq!(gap.unwrap_err().kafka_error_code(), 45);
            // Two proposals in a row (the second checked against the first, not yet in the
            // log), then a retry of the second at once: in flight, retriable.
            let c = first.propose(encode_idempotent(7, 0, 5, 1, 1_003), Acks::All);
            let d = first.propose(encode_idempotent(7, 0, 6, 1, 1_004), Acks::All);
            let d_again = first.propose(encode_idempotent(7, 0, 6, 1, 1_004), Acks::All);
            let c = c.await.unwrap();
            let d = d.await.unwrap();
            assert_eq!(d.base_offset.0, c.base_offset.0 + 1);
            match d_again.await {
                Ok(info) => assert_eq!(info.base_offset, d.base_offset),
                Err(e) => assert_eq!(e.kafka_error_code(), 7, "{e}"),
            }
            // The leader stops; the new one knows the producer from its log.
            let old = first.replica().id();
            first.stop();
            net.drivers.borrow_mut()[old as usize - 1] = None;
            let second = wait_for_leader(&net, Some(old)).await;
            let retry = loop {
                match ack(&second, encode_idempotent(7, 0, 6, 1, 1_004)).await {
                    Err(e) if e.kafka_error_code() == 7 => {
                        crate::runtime::sleep(Duration::from_millis(20)).await
                    }
                    other => break other,
                }
            };
            assert_eq!(
                retry.unwrap().base_offset,
                d.base_offset,
                "deduplicated after failover"
            );
            let next = ack(&second, encode_idempotent(7, 0, 7, 1, 1_005))
                .await
                .unwrap();
            assert!(next.base_offset.0 > d.base_offset.0);
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    }

    /// Transactions on a replicated partition: a transactional batch holds the last stable
    /// offset back on every replica until its marker (proposed by the leader, as
    /// WriteTxnMarkers asks) commits; an abort joins every replica's aborted list; a marker
    /// with a newer epoch fences the producer at once, before the log holds it; a stale
    /// marker and a client's control batch are refused. Every replica ends with the same
    /// last stable offset and aborted transactions.
    #[test]
    fn transactions_and_their_markers_replicate() {
        use crate::storage::batch::test_util::{encode_batch, encode_transactional};
        use crate::storage::producer_state::Marker;
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start().await;
            let l = wait_for_leader(&net, None).await;
            async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
                crate::runtime::timeout(Duration::from_secs(5), fut)
                    .await
                    .expect("answered within 5 s")
            }
            let t1 = within(l.propose(encode_transactional(9, 0, 0, 3, 1_000), Acks::All))
                .await
                .unwrap();
            let plain = within(l.propose(encode_batch(0, 2, 1_001, 8), Acks::All))
                .await
                .unwrap();
            let log = l.replica().log().clone();
            assert!(log.high_watermark().0 > plain.last_offset.0);
            assert_eq!(
                log.last_stable_offset(),
                t1.base_offset,
                "held by the open txn"
            );
            let abort = within(l.propose_marker(9, 0, Marker::Abort, 0, 1_002))
                .await
                .unwrap();
            assert_eq!(log.last_stable_offset().0, log.high_watermark().0);
            // The sequence continues after a marker of the same epoch.
            let t2 = within(l.propose(encode_transactional(9, 0, 3, 1, 1_003), Acks::All))
                .await
                .unwrap();
            within(l.propose_marker(9, 0, Marker::Commit, 0, 1_004))
                .await
                .unwrap();
            // A fencing abort with epoch 1, and the old epoch's batch right behind it: refused
            // although the marker is not in the log yet.
            let fence = l.propose_marker(9, 1, Marker::Abort, 0, 1_005);
            let zombie = l.propose(encode_transactional(9, 0, 4, 1, 1_006), Acks::All);
            assert_eq!(within(zombie).await.unwrap_err().kafka_error_code(), 47);
            within(fence).await.unwrap();
            let stale = within(l.propose_marker(9, 0, Marker::Commit, 0, 1_007)).await;
            assert_eq!(stale.unwrap_err().kafka_error_code(), 47);
            // Coordinator epochs: a marker from an older coordinator than the last one here is
            // refused (TRANSACTION_COORDINATOR_FENCED), also when the newer one is only
            // proposed.
            within(l.propose_marker(9, 1, Marker::Commit, 5, 1_009))
                .await
                .unwrap();
            let late = within(l.propose_marker(9, 1, Marker::Abort, 4, 1_010)).await;
            assert_eq!(late.unwrap_err().kafka_error_code(), 52);
            let newer = l.propose_marker(9, 1, Marker::Commit, 7, 1_011);
            let older = l.propose_marker(9, 1, Marker::Commit, 6, 1_012);
            assert_eq!(within(older).await.unwrap_err().kafka_error_code(), 52);
            within(newer).await.unwrap();
            let control = crate::storage::batch::encode_marker(5, 0, Marker::Commit, 0, 1_008);
            assert!(within(l.propose(control, Acks::All)).await.is_err());
            // Every replica: the same high watermark, last stable offset, aborted list.
            let end = log.log_end_offset();
            for _ in 0..500 {
                let caught_up = net
                    .drivers
                    .borrow()
                    .iter()
                    .flatten()
                    .all(|d| d.replica().log().high_watermark() == end);
                if caught_up {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            let drivers: Vec<_> = net.drivers.borrow().iter().flatten().cloned().collect();
            for d in drivers {
                let rlog = d.replica().log().clone();
                assert_eq!(rlog.high_watermark(), end, "replica {}", d.replica().id());
                assert_eq!(rlog.last_stable_offset(), end);
                let read = rlog
                    .read_chunks_committed(t1.base_offset, 1 << 20)
                    .await
                    .unwrap();
                let aborted: Vec<(i64, i64)> = read
                    .aborted
                    .iter()
                    .map(|a| (a.producer_id, a.first_offset))
                    .collect();
                assert_eq!(
                    aborted,
                    vec![(9, t1.base_offset.0)],
                    "replica {}",
                    d.replica().id()
                );
                assert_eq!(rlog.txn_outcome(9, t1.base_offset.0), Some(false));
                assert_eq!(rlog.txn_outcome(9, t2.base_offset.0), Some(true));
                assert!(abort.base_offset.0 < t2.base_offset.0);
            }
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    }

    /// A leader cut off from the others: acks=1 writes are still acknowledged (its own log
    /// has them), acks=all writes are not (it steps down and they fail), nor is a sequence
    /// gap refused (it cannot confirm it still leads). The others elect a
    /// leader and take writes; after the cut heals the old leader drops its uncommitted
    /// suffix and ends with the same committed log as the new leader.
    #[test]
    fn a_leader_cut_off_stops_acknowledging_and_rejoins_as_a_follower() {
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start().await;
            let first = wait_for_leader(&net, None).await;
            produce(&first, 5, 0).await;
            let old = first.replica().id();
            net.cut.set(Some(old));
            let one = first.propose(encode_batch(0, 1, 9_000, 8), Acks::Leader);
            let all = first.propose(encode_batch(0, 1, 9_100, 8), Acks::All);
            // A sequence gap (as a producer whose batches the new leader took would send):
            // the cut-off leader cannot confirm it leads, so it is no OUT_OF_ORDER_SEQUENCE.
            let gap = first.propose(
                crate::storage::batch::test_util::encode_idempotent(3, 0, 40, 1, 9_200),
                Acks::All,
            );
            let one = crate::runtime::timeout(Duration::from_secs(5), one)
                .await
                .expect("acks=1 answered");
            assert!(one.is_ok(), "acks=1 on the cut-off leader: {one:?}");
            let all = crate::runtime::timeout(Duration::from_secs(5), all)
                .await
                .expect("acks=all answered (the leader steps down)");
            assert!(
                matches!(all, Err(ReplicaError::NotLeader { .. })),
                "acks=all on a cut-off leader must not be acknowledged: {all:?}"
            );
            let gap = crate::runtime::timeout(Duration::from_secs(5), gap)
                .await
                .expect("the gap answered");
            assert!(
                matches!(gap, Err(ReplicaError::NotLeader { .. })),
                "a cut-off leader must not refuse a sequence it may lack: {gap:?}"
            );
            assert!(!first.replica().is_leader(), "check_quorum stepped it down");
            let next = wait_for_leader(&net, Some(old)).await;
            let last = produce(&next, 5, 100).await;
            net.cut.set(None);
            let mut same = false;
            for _ in 0..500 {
                let hw = |d: &Driver| d.replica().log().high_watermark().0;
                if hw(&first) > last && hw(&first) == hw(&next) {
                    same = committed_bytes(&first).await == committed_bytes(&next).await;
                    if same {
                        break;
                    }
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            assert!(same, "the old leader caught up to the same committed log");
            let log = committed_bytes(&next).await;
            let stamps: Vec<i64> = crate::storage::batch::BatchIter::new(&log)
                .map(|i| i.expect("batch").1.base_timestamp)
                .collect();
            assert!(
                !stamps.contains(&9_100),
                "the unacknowledged acks=all write was dropped"
            );
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                t.await.expect("no replica failed");
            }
        });
    }

    /// Three replicas driven in real time: a leader is elected, acknowledges writes, and when
    /// it stops the other two elect a new one that keeps every acknowledged write and takes
    /// new ones.
    #[test]
    fn a_new_leader_takes_over_when_the_leader_stops() {
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start().await;
            let first = wait_for_leader(&net, None).await;
            let acked = produce(&first, 20, 0).await;

            let stopped = Instant::now();
            let old = first.replica().id();
            first.stop();
            net.drivers.borrow_mut()[old as usize - 1] = None;
            let next = wait_for_leader(&net, Some(old)).await;
            assert_ne!(next.replica().id(), old);
            eprintln!("failover: a new leader after {:?}", stopped.elapsed());
            let last = produce(&next, 20, 100).await;
            assert!(last > acked);

            // Both remaining replicas hold everything acknowledged.
            for _ in 0..500 {
                let hws: Vec<i64> = net
                    .drivers
                    .borrow()
                    .iter()
                    .flatten()
                    .map(|d| d.replica().log().high_watermark().0)
                    .collect();
                if hws.iter().all(|&h| h > last) {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            for d in net.drivers.borrow().iter().flatten() {
                assert!(d.replica().log().high_watermark().0 > last);
                d.stop();
            }
            for t in tasks {
                t.await.expect("no replica failed");
            }
        });
    }

    /// The leader's log, read as a consumer would (a follower's compacted prefix source).
    struct LeaderLog(Rc<LocalNet>);

    impl crate::replication::prefix::PrefixSource for LeaderLog {
        fn fetch(
            &self,
            leader: Option<u64>,
            from: i64,
        ) -> futures::future::LocalBoxFuture<
            'static,
            Result<crate::replication::prefix::PrefixChunk, String>,
        > {
            let d = leader.and_then(|l| {
                self.0
                    .drivers
                    .borrow()
                    .get(l as usize - 1)
                    .cloned()
                    .flatten()
            });
            Box::pin(async move {
                let d = d.ok_or("no leader")?;
                let log = d.replica().log().clone();
                let data = log
                    .read(
                        crate::types::Offset(from.max(log.log_start_offset().0)),
                        4096,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(crate::replication::prefix::PrefixChunk {
                    log_start: data.log_start_offset.0,
                    records: data.records,
                })
            })
        }
    }

    /// Keyed batches for a compacted partition: `n` batches of two records, keys from a set
    /// of 5.
    async fn produce_keyed(d: &Driver, n: i64, from: i64) -> i64 {
        use kafka_protocol::records::Compression;
        let mut last = -1;
        for i in from..from + n {
            let (k1, k2) = (format!("k{}", i % 5), format!("k{}", (i + 2) % 5));
            let v = format!("v{i}-{}", "x".repeat(60));
            let b = crate::storage::cleaner::test_util::batch(
                0,
                &[(Some(&k1), Some(&v)), (Some(&k2), Some(&v))],
                Compression::None,
                1_700_000_000_000 + i,
                None,
            );
            let fut = d.propose(Bytes::from(b), Acks::All);
            let info = crate::runtime::timeout(Duration::from_secs(5), fut)
                .await
                .expect("acknowledged within 5 s")
                .expect("acknowledged");
            last = info.last_offset.0;
        }
        last
    }

    /// Compaction on a replicated partition: the replicas' Raft base moves to their active
    /// segment while their sealed segments stay (the compacted prefix), and the leader's
    /// cleaner rewrites them below its base. A follower cut off meanwhile is behind the
    /// leader's base: back, it installs the snapshot, copies the leader's compacted prefix
    /// through its prefix source, and then holds the leader's bytes from the same log start;
    /// reopened from its disk, it keeps them.
    #[test]
    fn a_follower_behind_a_compacted_base_copies_the_compacted_prefix() {
        crate::runtime::block_on_test(|| async {
            assert!(!compacted_prefix_scenario(None).await);
        });
    }

    /// [`a_follower_behind_a_compacted_base_copies_the_compacted_prefix`] with the
    /// follower's power cut at its k-th disk change after it is back, for every k up to the
    /// end of its install: reopened (unsynced writes lost as a power loss loses them), it
    /// finishes or repeats the install and ends with the leader's bytes all the same.
    #[test]
    fn a_power_cut_during_a_prefix_install_loses_nothing() {
        crate::runtime::block_on_test(|| async {
            let mut k = 0;
            while compacted_prefix_scenario(Some(k)).await {
                k += 1;
                assert!(k < 2_000, "the install ends within 2,000 disk changes");
            }
            assert!(k > 10, "the power was cut at {k} points");
            eprintln!("power cut at each of {k} disk changes of a prefix install");
        });
    }

    /// The scenario of the compacted-prefix tests; with `crash_at`, the follower's disk
    /// loses its power at that change after the follower is back. Returns whether it did.
    async fn compacted_prefix_scenario(crash_at: Option<u64>) -> bool {
        use crate::storage::cleaner::OffsetMap;
        use crate::storage::log::CleanerThrottle;
        let log_cfg = LogConfig {
            segment_bytes: 2048,
            compact: true,
            ..LogConfig::default()
        };
        let (net, mut tasks) = start_cfg(None, None, log_cfg).await;
        for d in net.drivers.borrow().iter().flatten() {
            d.replica()
                .set_prefix_source(Some(Rc::new(LeaderLog(net.clone()))));
        }
        let leader = wait_for_leader(&net, None).await;
        produce_keyed(&leader, 10, 0).await;
        let behind = (1..=3u64).find(|&i| i != leader.replica().id()).unwrap();
        let slot = behind as usize - 1;
        net.cut.set(Some(behind));
        let last = produce_keyed(&leader, 80, 10).await;
        let live = others(&net, behind);
        for _ in 0..500 {
            for d in &live {
                let log = d.replica().log();
                d.request_compaction(log.first_segment_base(), log.active_segment().0);
            }
            if live.iter().all(|d| d.replica().base().offset > last / 2) {
                break;
            }
            crate::runtime::sleep(Duration::from_millis(10)).await;
        }
        for d in &live {
            let base = d.replica().base();
            let log = d.replica().log();
            assert!(
                base.offset > last / 2,
                "replica {} compacted",
                d.replica().id()
            );
            assert_eq!(base.log_start, 0, "the base keeps the log start below it");
            assert_eq!(log.first_segment_base().0, 0, "the prefix stays");
        }
        // The leader cleans below its base, never past it.
        let base = leader.replica().base().offset;
        let stats = leader
            .replica()
            .log()
            .clean(
                &mut OffsetMap::with_memory(1 << 20),
                1_800_000_000_000,
                &CleanerThrottle::new(u64::MAX),
            )
            .await
            .expect("cleans")
            .expect("something to clean");
        assert!(stats.records_removed > 0);
        assert!(leader.replica().log().cleaner_checkpoint().0 <= base);
        let disk = net.disks.borrow()[slot].clone();
        if let Some(k) = crash_at {
            disk.crash_after(k);
        }
        net.cut.set(None);
        let mut follower = net.drivers.borrow()[slot].clone().unwrap();
        let last = produce_keyed(&leader, 5, 90).await;
        for _ in 0..500 {
            if follower.replica().log().high_watermark().0 > last || disk.crashed_as_planned() {
                break;
            }
            crate::runtime::sleep(Duration::from_millis(10)).await;
        }
        let crashed = disk.crashed_as_planned();
        if !crashed {
            // The install and the catch-up ended before the k-th change: no cut from here on.
            disk.resume();
        }
        if crashed {
            // The follower's process ends; a new one opens what the disk kept.
            follower.stop();
            let _ = tasks.remove(slot).await;
            let _ = follower.replica().close().await;
            disk.resume();
            // A new process: nothing of the old one's sync errors is left.
            let old = net.envs.borrow()[slot].clone();
            let env = Env::new(
                Rc::new(disk.clone()),
                old.clock.clone(),
                SyncScope::default(),
            );
            net.envs.borrow_mut()[slot] = env.clone();
            let cfg = ReplicaConfig::new(behind, vec![1, 2, 3]);
            let r = Replica::open(env, PathBuf::from("/data/t-0"), log_cfg, &cfg)
                .await
                .expect("reopens after the power cut");
            r.set_prefix_source(Some(Rc::new(LeaderLog(net.clone()))));
            follower = Driver::new(r, 1024);
            net.drivers.borrow_mut()[slot] = Some(follower.clone());
            let transport: Rc<dyn Transport> = net.clone();
            tasks.insert(
                slot,
                crate::runtime::spawn(follower.clone().run(
                    transport,
                    Duration::from_millis(10),
                    None,
                )),
            );
            let last = produce_keyed(&leader, 1, 95).await;
            for _ in 0..500 {
                if follower.replica().log().high_watermark().0 > last {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
        } else {
            assert_eq!(
                follower.replica().snapshot_counts().0,
                1,
                "installed a snapshot"
            );
        }
        let at = format!("power cut at change {crash_at:?}: {crashed}");
        assert!(!follower.replica().prefix_pending(), "{at}");
        assert_eq!(
            follower.replica().log().high_watermark(),
            leader.replica().log().high_watermark(),
            "{at}"
        );
        assert_eq!(follower.replica().log().log_start_offset().0, 0, "{at}");
        let copied = committed_bytes(&follower).await;
        assert_eq!(
            copied,
            committed_bytes(&leader).await,
            "the leader's compacted bytes from the same log start ({at})"
        );
        // Reopened from its disk, the follower keeps the prefix and its base.
        let base = follower.replica().base();
        follower.stop();
        tasks.remove(slot).await.expect("stops cleanly");
        follower.replica().close().await.expect("closes");
        net.drivers.borrow_mut()[slot] = None;
        let env = net.envs.borrow()[slot].clone();
        let cfg = ReplicaConfig::new(behind, vec![1, 2, 3]);
        let r = Replica::open(env, PathBuf::from("/data/t-0"), log_cfg, &cfg)
            .await
            .expect("reopens");
        assert_eq!(r.base(), base, "{at}");
        assert!(!r.prefix_pending(), "{at}");
        assert_eq!(
            crate::replication::committed_log(r.log()).await,
            copied,
            "{at}"
        );
        r.close().await.expect("closes");
        for d in net.drivers.borrow().iter().flatten() {
            d.stop();
        }
        for t in tasks {
            t.await.expect("no replica failed");
        }
        crashed
    }

    /// Retention on a replicated partition: the leader moves the log start (DeleteRecords, a
    /// Raft entry every replica applies) and compacts its Raft log below it while a follower
    /// is cut off; back, the follower is behind the leader's base and catches up from a
    /// snapshot (its log reset to the base), then holds the same bytes from the same log
    /// start; reopened from its disk, it keeps its base.
    #[test]
    fn a_follower_behind_the_leaders_base_catches_up_from_a_snapshot() {
        use crate::types::Offset;
        crate::runtime::block_on_test(|| async {
            let log_cfg = LogConfig {
                segment_bytes: 2048,
                ..LogConfig::default()
            };
            let (net, mut tasks) = start_cfg(None, None, log_cfg).await;
            let leader = wait_for_leader(&net, None).await;
            produce(&leader, 10, 0).await;
            let behind = (1..=3u64).find(|&i| i != leader.replica().id()).unwrap();
            net.cut.set(Some(behind));
            let last = produce(&leader, 80, 10).await;
            let start = last / 2;
            crate::runtime::timeout(
                Duration::from_secs(5),
                leader.propose_log_start(Offset(start)),
            )
            .await
            .expect("answered")
            .expect("the log start moves");
            assert_eq!(leader.replica().log().log_start_offset().0, start);
            let live = others(&net, behind);
            // The cut-off follower stops holding the leader's compaction back once it has
            // not been heard from for an election timeout.
            for _ in 0..500 {
                for d in &live {
                    let log = d.replica().log();
                    let at = log.segment_base_at(log.log_start_offset());
                    d.request_compaction(at, at);
                }
                if live.iter().all(|d| d.replica().base().index > 0) {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            for d in &live {
                let base = d.replica().base();
                assert!(base.index > 0, "replica {} compacted", d.replica().id());
                assert!(base.offset <= start && base.offset > 0);
                assert_eq!(d.replica().log().log_start_offset().0, start);
                assert_eq!(
                    d.replica().log().first_segment_base().0,
                    base.offset,
                    "segments below the base are gone"
                );
            }
            net.cut.set(None);
            let follower = net.drivers.borrow()[behind as usize - 1].clone().unwrap();
            let last = produce(&leader, 5, 90).await;
            for _ in 0..500 {
                if follower.replica().log().high_watermark().0 > last {
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                follower.replica().snapshot_counts().0,
                1,
                "installed a snapshot"
            );
            assert!(follower.replica().log().high_watermark().0 > last);
            assert_eq!(follower.replica().log().log_start_offset().0, start);
            assert_eq!(
                committed_bytes(&follower).await,
                committed_bytes(&leader).await,
                "the same bytes from the same log start"
            );
            // Reopened from its disk, the follower keeps its base and its log.
            let before = committed_bytes(&follower).await;
            let base = follower.replica().base();
            follower.stop();
            tasks
                .remove(behind as usize - 1)
                .await
                .expect("stops cleanly");
            follower.replica().close().await.expect("closes");
            net.drivers.borrow_mut()[behind as usize - 1] = None;
            let env = net.envs.borrow()[behind as usize - 1].clone();
            let cfg = ReplicaConfig::new(behind, vec![1, 2, 3]);
            let r = Replica::open(env, PathBuf::from("/data/t-0"), log_cfg, &cfg)
                .await
                .expect("reopens");
            assert_eq!(r.base(), base);
            assert_eq!(r.log().log_start_offset().0, start);
            assert_eq!(crate::replication::committed_log(r.log()).await, before);
            r.close().await.expect("closes");
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                t.await.expect("no replica failed");
            }
        });
    }

    /// The reported ISR follows `replica.lag.time.max.ms`: a follower cut off stays in it
    /// until it has not caught up for that long, then leaves it, and comes back once it has
    /// caught up again; `in_sync_now` (what min.insync.replicas counts) drops it within an
    /// election timeout.
    #[test]
    fn a_follower_leaves_the_isr_after_the_lag_time() {
        crate::runtime::block_on_test(|| async {
            let (net, tasks) = start_lagging(30).await;
            let leader = wait_for_leader(&net, None).await;
            produce(&leader, 5, 0).await;
            let r = leader.replica().clone();
            assert_eq!(r.in_sync(), vec![1, 2, 3]);
            let cut = (1..=3u64).find(|&i| i != r.id()).unwrap();
            net.cut.set(Some(cut));
            let since = Instant::now();
            produce(&leader, 5, 5).await;
            assert!(r.in_sync().contains(&cut), "still in the ISR right after");
            let mut left = None;
            let mut now_left = None;
            for _ in 0..300 {
                if now_left.is_none() && !r.in_sync_now().contains(&cut) {
                    now_left = Some(since.elapsed());
                }
                if !r.in_sync().contains(&cut) {
                    left = Some(since.elapsed());
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            let left = left.expect("the cut-off follower left the ISR");
            assert!(
                left >= Duration::from_millis(250),
                "not before the lag time: {left:?}"
            );
            assert!(
                now_left.is_some_and(|t| t < left),
                "in_sync_now drops it first"
            );
            net.cut.set(None);
            let mut back = false;
            for _ in 0..300 {
                if r.in_sync().contains(&cut) {
                    back = true;
                    break;
                }
                crate::runtime::sleep(Duration::from_millis(10)).await;
            }
            assert!(back, "back in the ISR once caught up");
            for d in net.drivers.borrow().iter().flatten() {
                d.stop();
            }
            for t in tasks {
                t.await.expect("no replica failed");
            }
        });
    }
}
