//! The partition log against a reference model, on the simulated disk (`storage::sim`), with
//! seeded crashes, clean stops and reopens.
//!
//! Each seed runs a random sequence of steps: appends of many sizes (plain batches and one
//! idempotent producer's), left in flight while the flusher works; reads from random offsets;
//! DeleteRecords; clock moves; clean close and reopen; and crashes that lose what was not
//! synced (torn writes included). After every reopen it checks:
//! - every acknowledged batch is there, at its acknowledged offset, byte for byte;
//! - nothing a consumer could have seen (below a high watermark observed) is lost;
//! - nothing past the durable end is visible, and every visible batch is one that was appended
//!   at that offset (no garbage, no stale bytes);
//! - the high watermark is the log end and the log start is the one DeleteRecords made
//!   durable;
//! - reads from every offset find the batch holding it (the indexes agree with the log);
//! - the producer state agrees with the batches that survived: a retry of the producer's last
//!   surviving batch is a duplicate with its offsets, the next sequence is accepted.
//!
//! Quick mode runs `SEEDS_QUICK` seeds inside the test command; `SLUICE_SIM_SEEDS=N` runs N
//! (a soak); `SLUICE_SIM_SEED=S` replays one. A failure prints the seed and its replay command.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::batch::{self, test_util};
use super::io::{Clock, Disk, Env, ManualClock, SyncScope};
use super::producer_state::Marker;
use super::sim::{Faults, SimDisk, SimRng};
use super::{LogConfig, PartitionLog};
use crate::types::Offset;

/// Seeds run by the test command.
const SEEDS_QUICK: u64 = 1000;
/// Steps per seed.
const STEPS: u32 = 200;
const PRODUCER_ID: i64 = 1000;
/// The transactional producer: its batches open a transaction, its markers close it.
const TXN_PRODUCER_ID: i64 = 2000;

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        tail_cache_bytes: 1024,
        pending_bytes_max: 8192,
        ..LogConfig::default()
    }
}

/// What the model knows of one appended batch.
#[derive(Debug, Clone)]
struct Appended {
    /// The batch as stored: the sent bytes with the base offset rewritten.
    bytes: Bytes,
    next_offset: i64,
    /// Idempotent batches: (first sequence, last sequence).
    sequences: Option<(i32, i32)>,
    /// The transactional producer's batches and markers.
    txn: Option<TxnPart>,
    /// The log's generation when it was assigned its offsets.
    generation: u64,
}

/// A batch of the transactional producer.
#[derive(Debug, Clone, Copy)]
enum TxnPart {
    /// Data, with its (first, last) sequence.
    Data(i32, i32),
    Marker(Marker),
}

#[derive(Default)]
struct Model {
    /// Every batch that got offsets in the current incarnation or survived into it, by base
    /// offset (cut back to the log end at each reopen).
    appended: BTreeMap<i64, Appended>,
    /// Base offsets whose append was acknowledged (durable).
    acked: BTreeMap<i64, (i64, u64)>,
    /// The highest high watermark any reader saw.
    seen_end: i64,
    /// The log start DeleteRecords made durable.
    log_start: i64,
    /// The next sequence of the idempotent producer, in the current incarnation.
    next_sequence: i32,
    /// The next sequence of the transactional producer.
    txn_next_sequence: i32,
}

impl Model {
    /// What the log's batches say of the transactional producer, in offset order: its open
    /// transaction's first offset, and its aborted transactions (first offset, marker offset).
    fn transactions(&self) -> (Option<i64>, Vec<(i64, i64)>) {
        let mut open = None;
        let mut aborted = Vec::new();
        for (base, a) in &self.appended {
            match a.txn {
                Some(TxnPart::Data(..)) => {
                    open.get_or_insert(*base);
                }
                Some(TxnPart::Marker(m)) => {
                    if let Some(first) = open.take()
                        && m == Marker::Abort
                    {
                        aborted.push((first, *base));
                    }
                }
                None => {}
            }
        }
        (open, aborted)
    }

    /// The transactional producer's next sequence, after what survived.
    fn txn_sequence_after(&self) -> i32 {
        self.appended
            .values()
            .rev()
            .find_map(|a| match a.txn {
                Some(TxnPart::Data(_, last)) => Some(last + 1),
                _ => None,
            })
            .unwrap_or(0)
    }
}

fn stored(sent: &Bytes, base: i64) -> Bytes {
    let mut b = BytesMut::from(&sent[..]);
    batch::set_base_offset(&mut b, base);
    b.freeze()
}

/// The seeds to run, from the environment (see the module documentation).
fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SLUICE_SIM_SEED") {
        return vec![s.parse().expect("SLUICE_SIM_SEED is a number")];
    }
    let n = std::env::var("SLUICE_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEEDS_QUICK);
    (0..n).collect()
}

/// `SLUICE_SIM_TRACE=1` prints every step (with a replayed seed).
fn trace() -> bool {
    std::env::var_os("SLUICE_SIM_TRACE").is_some()
}

/// Prints the replay command if the seed's run panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {0}; replay: SLUICE_SIM_SEED={0} cargo test --release \
                 --lib storage::sim_test",
                self.0
            );
        }
    }
}

struct Run {
    seed: u64,
    rng: SimRng,
    disk: SimDisk,
    env: Env,
    clock: Rc<ManualClock>,
    dir: PathBuf,
    model: Rc<RefCell<Model>>,
    log: Option<Rc<PartitionLog>>,
    /// Appends in flight: (task, incarnation).
    tasks: Vec<crate::runtime::Task<()>>,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub appends: u64,
    pub acked: u64,
    pub crashes: u64,
    pub clean_stops: u64,
    pub faults: u64,
    pub reads: u64,
    pub full_disks: u64,
    pub truncations: u64,
    /// Reopens that found the transactional producer with an open transaction, and aborted
    /// transactions read back with read_committed.
    pub open_txns_checked: u64,
    pub aborted_txns_checked: u64,
}

impl Run {
    fn new(seed: u64) -> Self {
        // Every other seed runs on a slow disk: completions in other orders.
        let faults = Faults {
            slow: if seed.is_multiple_of(2) { 0.2 } else { 0.0 },
            ..Faults::default()
        };
        let disk = SimDisk::new(seed ^ 0x5eed, faults);
        let clock = Rc::new(ManualClock::new(1_700_000_000_000));
        // Seeds alternate (in pairs, across the slow disk) between one file-system sync per
        // round and one fdatasync per file; of the file-system ones, every other pair of four
        // journals its rounds (`storage::journal`), in small files so that they roll and go.
        let filesystem = (seed / 2).is_multiple_of(2);
        let env = Env::new(
            Rc::new(disk.clone()),
            clock.clone(),
            if filesystem {
                SyncScope::Filesystem
            } else {
                SyncScope::File
            },
        );
        let env = if filesystem && (seed / 8).is_multiple_of(2) {
            env.with_journal(sim_journal(16 << 10))
        } else {
            env
        };
        Run {
            seed,
            rng: SimRng::new(seed),
            disk,
            env,
            clock,
            dir: PathBuf::from("/data/topic-0"),
            model: Rc::new(RefCell::new(Model::default())),
            log: None,
            tasks: Vec::new(),
            stats: Stats::default(),
        }
    }

    async fn open(&mut self) {
        // A reopen is a restart: the old incarnation's tasks must not share its group commit.
        self.env = self.env.restarted();
        // Seeds alternate (in fours) between zero-filled and preallocated space ahead.
        let cfg = LogConfig {
            zero_fill_below: if (self.seed / 4).is_multiple_of(2) {
                cfg().zero_fill_below
            } else {
                0
            },
            // Under a journal, odd seeds write what waits behind it in small steps.
            behind_write_bytes: if seed_is_odd(self.seed) {
                2048
            } else {
                cfg().behind_write_bytes
            },
            // Some journal seeds send their larger rounds straight to the segment.
            journal_below_bytes: if (self.seed / 16).is_multiple_of(2) {
                cfg().journal_below_bytes
            } else {
                2048
            },
            ..cfg()
        };
        let log = match PartitionLog::open_in(self.env.clone(), self.dir.clone(), cfg).await {
            Ok(log) => log,
            // A journal replay needs room for what it writes back: on a full disk the open
            // fails (the journal stays), the operator frees space and starts again.
            Err(e) if e.is_disk_full() && self.env.journal.is_some() => {
                if trace() {
                    eprintln!("reopen on a full disk failed ({e}): freeing space");
                }
                // The broker exits when a partition cannot be opened: whatever the failed
                // open still had in flight dies with it.
                self.disk.crash();
                let mut faults = self.disk.faults();
                faults.capacity_bytes = None;
                self.disk.set_faults(faults);
                self.env = self.env.restarted();
                PartitionLog::open_in(self.env.clone(), self.dir.clone(), cfg)
                    .await
                    .unwrap_or_else(|e| panic!("seed {}: reopen failed: {e}", self.seed))
            }
            Err(e) => panic!("seed {}: reopen failed: {e}", self.seed),
        };
        if trace() {
            eprintln!(
                "reopened ({:?}): start {} end {}",
                log.opened_from(),
                log.log_start_offset().get(),
                log.log_end_offset().get()
            );
            for seg in log.segment_summaries() {
                eprintln!(
                    "  segment {} size {} next {} offsets {:?}",
                    seg.base, seg.size, seg.next_offset, seg.offsets
                );
            }
        }
        // As the broker does once every partition is open: earlier journals go.
        if let Some(j) = &self.env.journal {
            j.finish_recovery()
                .await
                .unwrap_or_else(|e| panic!("seed {}: removing replayed journals: {e}", self.seed));
        }
        self.check_reopened(&log).await;
        self.log = Some(log);
    }

    fn log(&self) -> Rc<PartitionLog> {
        self.log.clone().expect("open")
    }

    /// Start an append and leave it in flight; its ack is recorded when it is durable.
    fn append(&mut self) {
        let log = self.log();
        let kind = self.rng.below(12);
        let idempotent = kind < 3;
        let count = 1 + self.rng.below(12) as usize;
        let value_len = [0, 10, 100, 700][self.rng.below(4) as usize];
        let ts = self.clock.wall_ms();
        let mut txn = None;
        let (sent, sequences) = if idempotent {
            let seq = self.model.borrow().next_sequence;
            let b = test_util::encode_idempotent(PRODUCER_ID, 0, seq, count, ts);
            (b, Some((seq, seq + count as i32 - 1)))
        } else if kind < 5 {
            let seq = self.model.borrow().txn_next_sequence;
            txn = Some(TxnPart::Data(seq, seq + count as i32 - 1));
            let b = test_util::encode_transactional(TXN_PRODUCER_ID, 0, seq, count, ts);
            (b, None)
        } else if kind < 6 {
            let m = if self.rng.below(2) == 0 {
                Marker::Commit
            } else {
                Marker::Abort
            };
            txn = Some(TxnPart::Marker(m));
            (batch::encode_marker(TXN_PRODUCER_ID, 0, m, 0, ts), None)
        } else {
            (test_util::encode_batch(0, count, ts, value_len), None)
        };
        let appended = match txn {
            Some(TxnPart::Marker(m)) => {
                futures::future::Either::Left(log.append_marker(TXN_PRODUCER_ID, 0, m, 0))
            }
            _ => futures::future::Either::Right(log.append(sent.clone())),
        };
        if trace() {
            eprintln!("append: count {count} sequences {sequences:?} txn {txn:?}");
        }
        if let Some((_, last)) = sequences {
            self.model.borrow_mut().next_sequence = last + 1;
        }
        if let Some(TxnPart::Data(_, last)) = txn {
            self.model.borrow_mut().txn_next_sequence = last + 1;
        }
        self.stats.appends += 1;
        let model = self.model.clone();
        let seed = self.seed;
        self.tasks.push(crate::runtime::spawn(async move {
            let Ok(info) = appended.await else { return };
            let base = info.base_offset.get();
            let next = info.last_offset.get() + 1;
            // Offsets are assigned at the log end: whatever the model had from `base` on was
            // given back (a full disk) or cut (a truncation). A duplicate is the batch already
            // there: its entry stays.
            let duplicate = model
                .borrow()
                .appended
                .get(&base)
                .is_some_and(|a| match (sequences, txn) {
                    (Some((first, _)), _) => a.sequences.map(|s| s.0) == Some(first),
                    (_, Some(TxnPart::Data(first, _))) => {
                        matches!(a.txn, Some(TxnPart::Data(f, _)) if f == first)
                    }
                    _ => false,
                });
            if trace() {
                eprintln!("assigned {base}..{next} sequences {sequences:?} txn {txn:?} duplicate {duplicate}");
            }
            if !duplicate {
                let mut m = model.borrow_mut();
                m.appended.split_off(&base);
                m.appended.insert(
                    base,
                    Appended {
                        bytes: stored(&sent, base),
                        next_offset: next,
                        sequences,
                        txn,
                        generation: info.generation,
                    },
                );
            }
            if log.wait_durable(&info).await.is_ok() {
                let mut m = model.borrow_mut();
                assert!(
                    m.appended.contains_key(&base),
                    "seed {seed}: acked batch {base} unknown"
                );
                if trace() {
                    eprintln!("acked {base}..{next} gen {}", info.generation);
                }
                m.acked.insert(base, (next, info.generation));
            }
        }));
    }

    /// Read from a random offset and check what comes back against the model.
    async fn read(&mut self) {
        let log = self.log();
        let hw = log.high_watermark().get();
        let start = log.log_start_offset().get();
        {
            let mut m = self.model.borrow_mut();
            m.seen_end = m.seen_end.max(hw);
        }
        if hw <= start {
            return;
        }
        let offset = start + self.rng.below((hw - start) as u64) as i64;
        self.stats.reads += 1;
        match log
            .read(Offset(offset), 1 + self.rng.below(6000) as usize)
            .await
        {
            Ok(data) => self.check_batches(&data.records, offset, hw),
            // Only a log that failed (a failed fdatasync) may refuse a read.
            Err(e) => assert!(
                log.failed(),
                "seed {}: read at {offset} of a healthy log: {e}",
                self.seed
            ),
        }
    }

    /// `records` (read from `offset`) are whole batches the model appended at their offsets,
    /// the first holding `offset`, all below `hw`.
    fn check_batches(&self, records: &Bytes, offset: i64, hw: i64) {
        let m = self.model.borrow();
        let mut pos = 0;
        let mut first = true;
        while pos < records.len() {
            let h = batch::BatchHeader::parse(&records[pos..])
                .unwrap_or_else(|e| panic!("seed {}: unparsable batch at {pos}: {e}", self.seed));
            let size = h.size();
            let bytes = records.slice(pos..pos + size);
            let want = m.appended.get(&h.base_offset).unwrap_or_else(|| {
                panic!(
                    "seed {}: read a batch at {} that was never appended there",
                    self.seed, h.base_offset
                )
            });
            assert_eq!(
                bytes, want.bytes,
                "seed {}: batch {} differs",
                self.seed, h.base_offset
            );
            if first {
                assert!(
                    h.base_offset <= offset && offset < want.next_offset,
                    "seed {}: read at {offset} starts with batch {}..{}",
                    self.seed,
                    h.base_offset,
                    want.next_offset
                );
                first = false;
            }
            assert!(
                want.next_offset <= hw,
                "seed {}: read past the high watermark",
                self.seed
            );
            pos += size;
        }
    }

    async fn delete_records(&mut self) {
        let log = self.log();
        let hw = log.high_watermark().get();
        let start = log.log_start_offset().get();
        if hw <= start || log.failed() {
            return;
        }
        let target = start + self.rng.below((hw - start) as u64 / 4 + 1) as i64;
        if let Ok(low) = log.delete_records(target).await {
            assert_eq!(low.get(), target.max(start));
            let mut m = self.model.borrow_mut();
            m.log_start = m.log_start.max(low.get());
        }
    }

    /// Let tasks run: the flusher writes and syncs, appends complete.
    async fn settle(&mut self, yields: u64) {
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
    }

    async fn crash(&mut self) {
        self.stats.crashes += 1;
        if trace()
            && let Some(log) = &self.log
        {
            eprintln!("crash: durable {}", log.durable_end_offset().get());
            for seg in log.segment_summaries() {
                eprintln!(
                    "  segment {} size {} next {}",
                    seg.base, seg.size, seg.next_offset
                );
            }
        }
        self.disk.crash();
        if trace() {
            let mut names = self.disk.list_dir(&self.dir).await.unwrap_or_default();
            names.sort();
            eprintln!("after the crash: {names:?}");
        }
        // Faults armed for the old incarnation do not carry over into recovery.
        self.disk.fail_next(0, 0, 0);
        let log = self.log.take().expect("open");
        // In-flight appends fail now: the disk lost the handles under them.
        drop(log);
        for t in std::mem::take(&mut self.tasks) {
            t.await;
        }
        self.open().await;
    }

    async fn clean_stop(&mut self) {
        self.stats.clean_stops += 1;
        let log = self.log.take().expect("open");
        for t in std::mem::take(&mut self.tasks) {
            t.await;
        }
        let end = log.log_end_offset().get();
        let was_failed = log.failed();
        let closed = log.close().await;
        if trace() {
            eprintln!("close: {closed:?}");
        }
        if was_failed || closed.is_err() {
            // A log that lost an fdatasync (before or during the close) does not close cleanly
            // and leaves no marker: the restart recovers it, like after a crash.
            assert!(
                closed.is_err() && log.failed(),
                "seed {}: a failed log closed cleanly ({closed:?})",
                self.seed
            );
            drop(log);
            self.disk.crash();
            self.disk.fail_next(0, 0, 0);
            self.open().await;
            return;
        }
        drop(log);
        // The broker removes a shard's journal once all its partitions closed cleanly; left in
        // place (a stop that did not get that far), the reopen skips it for a cleanly closed log.
        if let Some(j) = &self.env.journal
            && self.rng.below(2) == 0
        {
            j.remove_own().await.expect("remove the journal");
        }
        self.open().await;
        assert_eq!(
            self.log().log_end_offset().get(),
            end,
            "seed {}: a clean stop keeps everything appended",
            self.seed
        );
    }

    /// The invariants after a reopen; cuts the model back to what survived.
    async fn check_reopened(&mut self, log: &Rc<PartitionLog>) {
        let seed = self.seed;
        let end = log.log_end_offset().get();
        let hw = log.high_watermark().get();
        assert_eq!(
            hw, end,
            "seed {seed}: high watermark {hw} is not the log end {end}"
        );
        {
            let mut m = self.model.borrow_mut();
            let acked_end = m.acked.values().map(|a| a.0).max().unwrap_or(0);
            assert!(
                end >= acked_end,
                "seed {seed}: log end {end} below the acknowledged end {acked_end}"
            );
            assert!(
                end >= m.seen_end,
                "seed {seed}: log end {end} below what a reader saw ({})",
                m.seen_end
            );
            assert_eq!(
                log.log_start_offset().get(),
                m.log_start.max(0),
                "seed {seed}: log start"
            );
            // What did not survive is forgotten: later appends reuse those offsets.
            m.appended.retain(|_, a| a.next_offset <= end);
            // A reopened log starts again at generation 0: what survived predates it.
            m.appended.values_mut().for_each(|a| a.generation = 0);
            m.acked.values_mut().for_each(|a| a.1 = 0);
            m.seen_end = end;
        }
        self.stats.acked = self.model.borrow().acked.len() as u64;
        // Every acked batch, and every batch that survived, reads back at its offset.
        let bases: Vec<(i64, i64)> = {
            let m = self.model.borrow();
            m.appended
                .iter()
                .filter(|(b, _)| **b >= m.log_start)
                .map(|(b, a)| (*b, a.next_offset))
                .collect()
        };
        for (base, next) in &bases {
            let data = log
                .read(Offset(*base), 1)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: read at {base}: {e}"));
            assert!(!data.records.is_empty(), "seed {seed}: batch {base} lost");
            self.check_batches(&data.records, *base, hw);
            // The last offset of the batch finds it too (index lookup inside the segment).
            let data = log
                .read(Offset(next - 1), 1)
                .await
                .expect("read last offset");
            self.check_batches(&data.records, next - 1, hw);
        }
        {
            let m = self.model.borrow();
            for (base, (next, _)) in &m.acked {
                if *next <= m.log_start {
                    continue;
                }
                assert!(
                    m.appended.contains_key(base),
                    "seed {seed}: acknowledged batch {base}..{next} lost"
                );
            }
            // Surviving batches tile the log from the start: no gap, no garbage.
            let mut expect = None;
            for (base, a) in m.appended.range(m.log_start..) {
                if let Some(e) = expect {
                    assert_eq!(*base, e, "seed {seed}: gap before batch {base}");
                }
                expect = Some(a.next_offset);
            }
        }
        self.check_producer_state(log).await;
        self.check_transactions(log).await;
    }

    /// The reopened log's open transaction, last stable offset and aborted transactions are
    /// what its surviving batches say.
    async fn check_transactions(&mut self, log: &Rc<PartitionLog>) {
        let seed = self.seed;
        let (open, aborted, log_start) = {
            let mut m = self.model.borrow_mut();
            m.txn_next_sequence = m.txn_sequence_after();
            let (open, aborted) = m.transactions();
            (open, aborted, m.log_start.max(0))
        };
        let hw = log.high_watermark().get();
        assert_eq!(
            log.open_transactions(),
            open.map(|f| (TXN_PRODUCER_ID, f))
                .into_iter()
                .collect::<Vec<_>>(),
            "seed {seed}: open transactions"
        );
        self.stats.open_txns_checked += u64::from(open.is_some());
        // Never below the log start (DeleteRecords past an open transaction's first batch).
        let lso = open.map_or(hw, |f| f.min(hw)).max(log_start);
        assert_eq!(
            log.last_stable_offset().get(),
            lso,
            "seed {seed}: last stable offset"
        );
        if log_start >= hw {
            return;
        }
        let read = log
            .read_chunks_committed(Offset(log_start), 1)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: read_committed at {log_start}: {e}"));
        let want: Vec<(i64, i64)> = aborted
            .into_iter()
            .filter(|(first, last)| *last >= log_start && *first < lso)
            .collect();
        let got: Vec<(i64, i64)> = read
            .aborted
            .iter()
            .map(|a| (a.first_offset, a.last_offset))
            .collect();
        assert_eq!(got, want, "seed {seed}: aborted transactions");
        self.stats.aborted_txns_checked += got.len() as u64;
        assert!(
            read.aborted
                .iter()
                .all(|a| a.producer_id == TXN_PRODUCER_ID),
            "seed {seed}: aborted transactions of another producer"
        );
    }

    /// A retry of the producer's last surviving batch is a duplicate with its offsets; the
    /// producer then carries on from the sequence after it.
    async fn check_producer_state(&mut self, log: &Rc<PartitionLog>) {
        let last = {
            let m = self.model.borrow();
            m.appended
                .iter()
                .rev()
                .find_map(|(b, a)| a.sequences.map(|s| (*b, a.clone(), s)))
        };
        let next_sequence = match last {
            Some((base, a, (first, last))) => {
                let count = (a.next_offset - base) as usize;
                let retry = test_util::encode_idempotent(PRODUCER_ID, 0, first, count, 0);
                // Same sequences, same header fields that matter: a duplicate, not appended.
                match log.append(retry).await {
                    Ok(info) => assert_eq!(
                        info.base_offset.get(),
                        base,
                        "seed {}: a retry of batch {base} was appended again",
                        self.seed
                    ),
                    Err(e) => panic!("seed {}: retry of batch {base} refused: {e}", self.seed),
                }
                last + 1
            }
            None => 0,
        };
        self.model.borrow_mut().next_sequence = next_sequence;
    }

    /// The disk fills up (the capacity drops to what is used plus a few KiB) or gets its space
    /// back. Appends then fail with `DiskFull` or a full disk gives back what it could not
    /// write: the log must stay up, lose nothing acknowledged and take writes again later.
    fn fill_or_free_disk(&mut self) {
        let mut faults = self.disk.faults();
        faults.capacity_bytes = match faults.capacity_bytes {
            Some(_) => None,
            None => {
                self.stats.full_disks += 1;
                Some(self.disk.used_bytes() + self.rng.below(16 << 10))
            }
        };
        self.disk.set_faults(faults);
    }

    /// Cut the log back to a random offset at or above the log start (what a replica does
    /// when its leader lacks its suffix): the model forgets everything from the cut on,
    /// acknowledged or not.
    async fn truncate(&mut self) {
        let log = self.log();
        let start = log.log_start_offset().get();
        let end = log.log_end_offset().get();
        if log.failed() || end <= start {
            return;
        }
        let target = end - self.rng.below(((end - start) as u64).min(40) + 1) as i64;
        let before = log.generation();
        match log.truncate_to(Offset(target)).await {
            Ok(cut) => {
                if trace() {
                    eprintln!("truncated to {target}: cut {cut}");
                }
                self.stats.truncations += 1;
                let cut = cut.get();
                assert!(
                    cut <= target,
                    "seed {}: cut {cut} above {target}",
                    self.seed
                );
                let below_hw = {
                    let mut m = self.model.borrow_mut();
                    // Appends assigned before the call and at or past the cut are gone; those
                    // after it (a later generation) may already be in.
                    m.appended.retain(|b, a| *b < cut || a.generation > before);
                    m.acked.retain(|b, a| *b < cut || a.1 > before);
                    m.seen_end = m.seen_end.min(cut);
                    m.log_start = m.log_start.min(cut);
                    // The producers' sequences past the cut are gone with it.
                    m.txn_next_sequence = m.txn_sequence_after();
                    m.next_sequence = m
                        .appended
                        .values()
                        .rev()
                        .find_map(|a| a.sequences.map(|(_, last)| last + 1))
                        .unwrap_or(0);
                    // What survived the cut still reads back.
                    let hw = log.high_watermark().get();
                    m.appended
                        .range(start..)
                        .rev()
                        .find(|(_, a)| a.next_offset <= hw)
                        .map(|(b, _)| *b)
                };
                if let Some(base) = below_hw {
                    let data = log.read(Offset(base), 1).await.unwrap_or_else(|e| {
                        panic!("seed {}: read {base} after a cut: {e}", self.seed)
                    });
                    self.check_batches(&data.records, base, log.high_watermark().get());
                }
            }
            // A log that failed meanwhile (an fdatasync fault) refuses it. The cut may or may
            // not have happened: what it would remove need not survive (no longer acked) but
            // may (still known).
            Err(e) => {
                assert!(
                    log.failed(),
                    "seed {}: truncate_to({target}): {e}",
                    self.seed
                );
                let mut m = self.model.borrow_mut();
                m.acked.retain(|_, a| a.0 <= target);
                let holding = m
                    .appended
                    .range(..=target)
                    .next_back()
                    .filter(|(_, a)| a.next_offset > target)
                    .map_or(target, |(b, _)| *b);
                m.seen_end = m.seen_end.min(holding);
            }
        }
    }

    /// A disk fault: the next fdatasync fails (the log must stop acknowledging: it goes
    /// offline until reopened), or the next read fails (only that read fails).
    async fn fault(&mut self) {
        self.stats.faults += 1;
        if self.rng.below(2) == 0 {
            self.disk.fail_next(0, 1, 0);
        } else {
            self.disk.fail_next(0, 0, 1);
            let log = self.log();
            let hw = log.high_watermark().get();
            let start = log.log_start_offset().get();
            if hw > start {
                // Served from the tail cache or the segment: either way no panic, and the log
                // keeps working for the next read.
                let _ = log.read(Offset(start), 1 << 20).await;
            }
            self.disk.fail_next(0, 0, 0);
            self.read().await;
        }
    }

    async fn step(&mut self) {
        let pick = self.rng.below(100);
        if trace() {
            let log = self.log();
            eprintln!(
                "step {pick}: start {} hw {} durable {} end {} gen {} full {}",
                log.log_start_offset().get(),
                log.high_watermark().get(),
                log.durable_end_offset().get(),
                log.log_end_offset().get(),
                log.generation(),
                log.disk_full()
            );
        }
        match pick {
            0..=51 => self.append(),
            52 => self.fill_or_free_disk(),
            53 => self.truncate().await,
            54 => self.fault().await,
            55..=69 => self.read().await,
            70..=79 => {
                let n = self.rng.below(20);
                self.settle(n).await;
            }
            80..=84 => self.delete_records().await,
            85..=89 => self
                .clock
                .advance(Duration::from_millis(self.rng.below(2000))),
            90..=95 => self.crash().await,
            _ => self.clean_stop().await,
        }
    }
}

/// One seed's run; returns what it did.
pub(crate) async fn run_seed(seed: u64) -> Stats {
    let _guard = SeedGuard(seed);
    let mut run = Run::new(seed);
    run.disk
        .create_dir_all(&run.dir)
        .await
        .expect("create the data directory");
    run.open().await;
    for _ in 0..STEPS {
        run.step().await;
    }
    run.crash().await;
    run.stats
}

#[test]
fn simulated_crashes_lose_nothing_acknowledged() {
    crate::runtime::block_on_test(|| async {
        let seeds = seeds();
        let mut total = Stats::default();
        for &seed in &seeds {
            let s = run_seed(seed).await;
            total.appends += s.appends;
            total.acked += s.acked;
            total.crashes += s.crashes;
            total.clean_stops += s.clean_stops;
            total.reads += s.reads;
            total.faults += s.faults;
            total.full_disks += s.full_disks;
            total.truncations += s.truncations;
            total.open_txns_checked += s.open_txns_checked;
            total.aborted_txns_checked += s.aborted_txns_checked;
        }
        eprintln!("simulation: {} seeds, {total:?}", seeds.len());
        assert!(
            total.crashes >= seeds.len() as u64,
            "every seed ends with a crash"
        );
        assert!(total.acked > 0, "the simulation acknowledged nothing");
        if seeds.len() >= 100 {
            assert!(
                total.open_txns_checked > 0 && total.aborted_txns_checked > 0,
                "the simulation checked no transaction"
            );
        }
    });
}

/// Preallocation grows with the segment, bounded by the segment size: a fresh broker's 16
/// offsets partitions (100 MiB segments) open and take appends on a disk with 2 MiB free.
#[test]
fn partitions_open_on_a_nearly_full_disk() {
    assert_eq!(super::log::preallocation_target(0, 100 << 20), 64 << 10);
    assert_eq!(
        super::log::preallocation_target(64 << 10, 100 << 20),
        128 << 10
    );
    assert_eq!(
        super::log::preallocation_target(40 << 20, 100 << 20),
        48 << 20
    );
    assert_eq!(super::log::preallocation_target(0, 4096), 64 << 10);
    assert_eq!(super::log::preallocation_target(200 << 10, 4096), 256 << 10);
    crate::runtime::block_on_test(|| async {
        let disk = SimDisk::new(
            1,
            Faults {
                capacity_bytes: Some(2 << 20),
                ..Faults::default()
            },
        );
        let env = Env::new(
            Rc::new(disk.clone()),
            Rc::new(ManualClock::new(0)),
            crate::storage::io::SyncScope::default(),
        );
        let cfg = LogConfig {
            segment_bytes: 100 << 20,
            ..LogConfig::default()
        };
        let mut logs = Vec::new();
        for p in 0..16 {
            let dir = PathBuf::from(format!("/data/__consumer_offsets-{p}"));
            disk.create_dir_all(&dir).await.unwrap();
            logs.push(PartitionLog::open_in(env.clone(), dir, cfg).await.unwrap());
        }
        for log in &logs {
            let info = log
                .append(test_util::encode_batch(0, 3, 0, 100))
                .await
                .unwrap();
            log.wait_durable(&info).await.unwrap();
        }
        assert!(disk.used_bytes() <= 16 * (64 << 10) + (64 << 10));
    });
}

/// A failed fdatasync takes the partition offline: the appends waiting for it and every later
/// one get KAFKA_STORAGE_ERROR, nothing more is acknowledged, the fsync is not retried on that
/// file; reads below the high watermark still work; a reopen recovers it.
#[test]
fn a_failed_fdatasync_takes_the_log_offline_until_reopened() {
    crate::runtime::block_on_test(|| async {
        let disk = SimDisk::new(3, Faults::default());
        let env = Env::new(
            Rc::new(disk.clone()),
            Rc::new(ManualClock::new(0)),
            crate::storage::io::SyncScope::default(),
        );
        let dir = PathBuf::from("/data/t-0");
        disk.create_dir_all(&dir).await.unwrap();
        let log = PartitionLog::open_in(env.clone(), dir.clone(), cfg())
            .await
            .unwrap();
        let first = log
            .append(test_util::encode_batch(0, 5, 0, 50))
            .await
            .unwrap();
        log.wait_durable(&first).await.unwrap();
        disk.fail_next(0, 1, 0);
        let second = log
            .append(test_util::encode_batch(0, 5, 0, 50))
            .await
            .unwrap();
        let err = log.wait_durable(&second).await.unwrap_err();
        assert_eq!(err.kafka_error_code(), 56, "KAFKA_STORAGE_ERROR: {err}");
        assert!(log.failed());
        let later = log.append(test_util::encode_batch(0, 1, 0, 10)).await;
        assert_eq!(later.unwrap_err().kafka_error_code(), 56);
        assert_eq!(log.high_watermark().get(), first.last_offset.get() + 1);
        let data = log.read(Offset(0), 1 << 20).await.unwrap();
        assert!(
            !data.records.is_empty(),
            "reads below the high watermark go on"
        );
        drop(log);
        disk.crash();
        let log = PartitionLog::open_in(env.restarted(), dir, cfg())
            .await
            .unwrap();
        assert!(!log.failed());
        assert!(log.log_end_offset().get() > first.last_offset.get());
        let next = log
            .append(test_util::encode_batch(0, 2, 0, 10))
            .await
            .unwrap();
        log.wait_durable(&next).await.unwrap();
    });
}

fn seed_is_odd(seed: u64) -> bool {
    !seed.is_multiple_of(2)
}

/// A journal for the simulated disk, in files of `file_bytes`.
pub(super) fn sim_journal(file_bytes: u64) -> crate::storage::journal::JournalConfig {
    crate::storage::journal::JournalConfig {
        root: PathBuf::from("/data/journal"),
        generation: 1,
        shard: 0,
        file_bytes,
        enabled: true,
    }
}

pub(super) fn sim_env(seed: u64) -> (SimDisk, Env, Rc<ManualClock>) {
    let disk = SimDisk::new(seed, Faults::default());
    let clock = Rc::new(ManualClock::new(1_700_000_000_000));
    let env = Env::new(
        Rc::new(disk.clone()),
        clock.clone(),
        crate::storage::io::SyncScope::default(),
    );
    (disk, env, clock)
}

async fn open_sim(env: &Env, dir: &str) -> Rc<PartitionLog> {
    let dir = PathBuf::from(dir);
    env.disk.create_dir_all(&dir).await.unwrap();
    PartitionLog::open_in(env.clone(), dir, cfg())
        .await
        .unwrap()
}

/// Append and wait until durable.
async fn produce(
    log: &Rc<PartitionLog>,
    b: Bytes,
) -> Result<super::AppendInfo, super::StorageError> {
    let info = log.append(b).await?;
    log.wait_durable(&info).await?;
    Ok(info)
}

/// Every batch header in `records`.
fn headers(records: &Bytes) -> Vec<batch::BatchHeader> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let h = batch::BatchHeader::parse(&records[pos..]).unwrap();
        pos += h.size();
        out.push(h);
    }
    out
}

/// A full disk answers produce with KAFKA_STORAGE_ERROR, gives back what it could not write,
/// keeps serving reads and takes writes again once space is freed, without a reopen; nothing
/// acknowledged is lost across a crash afterwards.
#[test]
fn a_full_disk_refuses_writes_until_space_is_freed() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, clock) = sim_env(7);
        let log = open_sim(&env, "/data/full-0").await;
        let mut acked = Vec::new();
        for i in 0..5 {
            acked.push(
                produce(&log, test_util::encode_batch(0, 4, i, 100))
                    .await
                    .unwrap(),
            );
        }
        // No room left beyond what is allocated now.
        disk.set_faults(Faults {
            capacity_bytes: Some(disk.used_bytes()),
            ..Faults::default()
        });
        let mut refused = None;
        for i in 0..200 {
            match produce(&log, test_util::encode_batch(0, 4, i, 700)).await {
                Ok(info) => acked.push(info),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("a full disk refuses a produce");
        assert_eq!(e.kafka_error_code(), 56, "KAFKA_STORAGE_ERROR: {e}");
        assert!(e.is_disk_full(), "{e}");
        assert!(log.disk_full() && !log.failed(), "full, not failed");
        assert_eq!(
            log.log_end_offset(),
            log.high_watermark(),
            "nothing unwritten is kept"
        );
        // Reads go on.
        let data = log.read(Offset(0), 1 << 20).await.unwrap();
        assert_eq!(headers(&data.records)[0].base_offset, 0);
        // Still full: refused at once.
        let e = log
            .append(test_util::encode_batch(0, 1, 0, 10))
            .await
            .unwrap_err();
        assert!(e.is_disk_full());
        // Space freed: after the probe interval an append asks for a probe, the next one goes
        // through.
        disk.set_faults(Faults::default());
        clock.advance(Duration::from_secs(1));
        let mut attempts = 0;
        let info = loop {
            attempts += 1;
            assert!(attempts < 10, "writes did not resume after space was freed");
            match produce(&log, test_util::encode_batch(0, 2, 0, 10)).await {
                Ok(info) => break info,
                Err(e) => assert!(e.is_disk_full(), "{e}"),
            }
            futures_lite::future::yield_now().await;
        };
        assert!(!log.disk_full());
        acked.push(info);
        // A crash keeps everything acknowledged.
        drop(log);
        disk.crash();
        let log = open_sim(&env, "/data/full-0").await;
        let end = acked.last().unwrap().last_offset.get() + 1;
        assert!(log.log_end_offset().get() >= end);
        for a in &acked {
            let data = log.read(a.base_offset, 1).await.unwrap();
            assert_eq!(headers(&data.records)[0].base_offset, a.base_offset.get());
        }
    });
}

/// A broker restarted on a full disk opens its partitions (no preallocation) and serves reads.
#[test]
fn a_log_opens_on_a_full_disk() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, _) = sim_env(8);
        let log = open_sim(&env, "/data/t-0").await;
        produce(&log, test_util::encode_batch(0, 3, 0, 100))
            .await
            .unwrap();
        drop(log);
        disk.crash();
        disk.set_faults(Faults {
            capacity_bytes: Some(disk.used_bytes()),
            ..Faults::default()
        });
        let log = open_sim(&env, "/data/t-0").await;
        assert_eq!(log.log_end_offset().get(), 3);
        assert!(
            !log.read(Offset(0), 1 << 20)
                .await
                .unwrap()
                .records
                .is_empty()
        );
    });
}

/// Leader epochs are stamped into batches and recorded where they begin; a truncation drops
/// the batch holding the offset and everything after it, with its producer state and epochs,
/// durably.
#[test]
fn truncate_to_drops_the_suffix_its_producer_state_and_epochs() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, _) = sim_env(9);
        let log = open_sim(&env, "/data/t-0").await;
        log.start_leader_epoch(1).await.unwrap();
        for seq in 0..3 {
            produce(
                &log,
                test_util::encode_idempotent(PRODUCER_ID, 0, seq * 4, 4, 0),
            )
            .await
            .unwrap();
        }
        log.start_leader_epoch(2).await.unwrap();
        let second = produce(&log, test_util::encode_idempotent(PRODUCER_ID, 0, 12, 4, 0))
            .await
            .unwrap();
        produce(&log, test_util::encode_batch(0, 3, 0, 50))
            .await
            .unwrap();
        assert_eq!(second.base_offset.get(), 12);
        let epochs: Vec<(i32, i64)> = log
            .leader_epochs()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect();
        assert_eq!(epochs, vec![(1, 0), (2, 12)]);
        assert_eq!(log.end_offset_for_epoch(1), (1, Offset(12)));
        assert_eq!(log.end_offset_for_epoch(2), (2, Offset(19)));
        let all = log.read(Offset(0), 1 << 20).await.unwrap().records;
        let stamped: Vec<i32> = headers(&all)
            .iter()
            .map(|h| h.partition_leader_epoch)
            .collect();
        assert_eq!(stamped, vec![1, 1, 1, 2, 2]);

        // Inside the epoch-2 batch 12..16: that batch goes, the log ends at 12.
        assert_eq!(log.truncate_to(Offset(14)).await.unwrap(), Offset(12));
        assert_eq!(log.log_end_offset().get(), 12);
        assert_eq!(log.high_watermark().get(), 12);
        assert_eq!(log.leader_epochs().len(), 1);
        assert!(log.read(Offset(13), 100).await.is_err(), "past the end");
        // The producer's state is back at sequence 11: sequence 12 is new again.
        let again = produce(&log, test_util::encode_idempotent(PRODUCER_ID, 0, 12, 4, 0))
            .await
            .unwrap();
        assert_eq!(
            again.base_offset.get(),
            12,
            "appended anew, not a duplicate"
        );
        // Durable: a crash keeps the cut and the epochs.
        drop(log);
        disk.crash();
        let log = open_sim(&env, "/data/t-0").await;
        assert_eq!(log.log_end_offset().get(), 16);
        let epochs: Vec<(i32, i64)> = log
            .leader_epochs()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect();
        assert_eq!(epochs, vec![(1, 0)]);
        // Truncation below the start is refused; at or past the end changes nothing.
        assert_eq!(log.truncate_to(Offset(99)).await.unwrap(), Offset(16));
    });
}

/// A follower stores the leader's batches byte for byte at the leader's offsets, learns its
/// epochs from them, refuses a gap, and shows consumers only what the caller's high
/// watermark allows while its durable end runs ahead.
#[test]
fn a_follower_appends_at_the_leaders_offsets() {
    crate::runtime::block_on_test(|| async {
        let (_disk, env, _) = sim_env(10);
        let leader = open_sim(&env, "/data/leader-0").await;
        let follower = open_sim(&env, "/data/follower-0").await;
        leader.start_leader_epoch(4).await.unwrap();
        for i in 0..4 {
            produce(&leader, test_util::encode_batch(0, 3, i, 40))
                .await
                .unwrap();
        }
        produce(
            &leader,
            test_util::encode_idempotent(PRODUCER_ID, 0, 0, 2, 0),
        )
        .await
        .unwrap();
        let bytes = leader.read(Offset(0), 1 << 20).await.unwrap().records;
        follower.set_high_watermark(Offset(0));
        let info = follower.append_replicated(bytes.clone()).await.unwrap();
        assert_eq!((info.base_offset.get(), info.last_offset.get()), (0, 13));
        follower.wait_durable(&info).await.unwrap();
        assert_eq!(follower.durable_end_offset().get(), 14);
        assert_eq!(
            follower.high_watermark().get(),
            0,
            "the caller's high watermark holds"
        );
        follower.set_high_watermark(Offset(6));
        assert_eq!(follower.high_watermark().get(), 6);
        assert!(
            follower.read(Offset(7), 100).await.is_err(),
            "above the high watermark"
        );
        follower.set_high_watermark(Offset(14));
        let copy = follower.read(Offset(0), 1 << 20).await.unwrap().records;
        assert_eq!(copy, bytes, "byte for byte");
        let epochs: Vec<(i32, i64)> = follower
            .leader_epochs()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect();
        assert_eq!(epochs, vec![(4, 0)]);
        // The producer's state came along: its retry is a duplicate on the follower too.
        assert_eq!(follower.producers()[0].last_sequence, 1);
        // A gap is refused.
        let gap = leader.read(Offset(3), 1).await.unwrap().records;
        let e = follower.append_replicated(gap).await.unwrap_err();
        assert!(
            matches!(
                e,
                super::StorageError::NotContiguous {
                    expected: 14,
                    got: 3
                }
            ),
            "{e}"
        );
    });
}

/// The shard sets a partition's tail-cache bound: the cache is trimmed at once and stays
/// within it; reads of what left it come from the segment.
#[test]
fn the_tail_cache_stays_within_its_bound() {
    crate::runtime::block_on_test(|| async {
        let (_disk, env, _) = sim_env(11);
        let log = open_sim(&env, "/data/tail-0").await;
        log.set_tail_cache_bytes(64 << 10);
        for i in 0..20 {
            produce(&log, test_util::encode_batch(0, 2, i, 300))
                .await
                .unwrap();
        }
        let used = log.tail_cache_used();
        assert!(used > 0 && used <= 64 << 10, "{used}");
        log.set_tail_cache_bytes(1000);
        assert!(log.tail_cache_used() <= 1000);
        for i in 0..20 {
            produce(&log, test_util::encode_batch(0, 2, i, 300))
                .await
                .unwrap();
            assert!(log.tail_cache_used() <= 1000);
        }
        // Everything reads back, from the segments.
        let data = log.read(Offset(0), 1 << 20).await.unwrap();
        assert_eq!(headers(&data.records)[0].base_offset, 0);
    });
}

/// Under a flush interval the writer's periodic fdatasync runs on the log's clock: once the
/// simulated clock passes the interval, what was written is synced and survives a crash.
#[test]
fn the_periodic_fdatasync_runs_on_the_logs_clock() {
    crate::runtime::block_on_test(|| async {
        for seed in 0..20 {
            let (disk, env, clock) = sim_env(100 + seed);
            let dir = PathBuf::from("/data/interval-0");
            env.disk.create_dir_all(&dir).await.unwrap();
            let cfg = LogConfig {
                flush: super::FlushPolicy::Interval(Duration::from_secs(1)),
                ..cfg()
            };
            let log = PartitionLog::open_in(env.clone(), dir.clone(), cfg)
                .await
                .unwrap();
            let info = produce(&log, test_util::encode_batch(0, 5, 0, 200))
                .await
                .unwrap();
            clock.advance(Duration::from_millis(1500));
            for _ in 0..50 {
                futures_lite::future::yield_now().await;
            }
            drop(log);
            disk.crash();
            let log = PartitionLog::open_in(env, dir, cfg).await.unwrap();
            assert!(
                log.log_end_offset().get() > info.last_offset.get(),
                "seed {seed}: the batch written before the interval passed was not synced"
            );
        }
    });
}

/// Group commit across partitions (`storage::group_sync`): four logs share one file-system
/// sync per round. A crash at a random point keeps every acknowledged batch of every log, the
/// syncs are shared (fewer syncs than acknowledged appends), and a failed sync fails the
/// appends of every log waiting on it, later ones too, until a restart.
#[test]
fn group_commit_across_partitions_keeps_every_ack() {
    crate::runtime::block_on_test(|| async {
        let mut shared = false;
        for seed in 0..40u64 {
            let _replay = SeedGuard(seed);
            let disk = SimDisk::new(
                seed,
                Faults {
                    slow: 0.3,
                    ..Faults::default()
                },
            );
            let env = Env::new(
                Rc::new(disk.clone()),
                Rc::new(ManualClock::new(0)),
                SyncScope::Filesystem,
            );
            let mut logs = Vec::new();
            for p in 0..4 {
                logs.push(open_sim(&env, &format!("/data/t-{p}")).await);
            }
            let acked: Rc<RefCell<Vec<(usize, i64, i64)>>> = Rc::default();
            let mut rng = SimRng::new(seed);
            let mut tasks = Vec::new();
            for i in 0..60 {
                let p = rng.below(4) as usize;
                let log = logs[p].clone();
                let acked = acked.clone();
                tasks.push(crate::runtime::spawn(async move {
                    if let Ok(info) = produce(&log, test_util::encode_batch(0, 2, i, 40)).await {
                        let base = info.base_offset.get();
                        acked
                            .borrow_mut()
                            .push((p, base, info.last_offset.get() + 1));
                    }
                }));
            }
            for _ in 0..rng.below(400) {
                futures_lite::future::yield_now().await;
            }
            disk.crash();
            drop(logs);
            for t in tasks {
                t.await;
            }
            let (syncs, callers) = env.group_sync.stats();
            shared |= callers > syncs;
            let env = env.restarted();
            for p in 0..4 {
                let log = open_sim(&env, &format!("/data/t-{p}")).await;
                let end = log.log_end_offset().get();
                let mine: Vec<_> = acked
                    .borrow()
                    .iter()
                    .filter(|a| a.0 == p)
                    .copied()
                    .collect();
                for (_, base, next) in mine {
                    assert!(end >= next, "seed {seed}: t-{p} lost acked {base}..{next}");
                    let data = log.read(Offset(base), 1 << 20).await.unwrap();
                    let h = headers(&data.records);
                    assert_eq!(h[0].base_offset, base, "seed {seed}: t-{p} at {base}");
                }
            }
        }
        assert!(shared, "no round shared a file-system sync");

        // A failed sync fails every log waiting on it, and every later sync.
        let (disk, env, _) = sim_env(7);
        let a = open_sim(&env, "/data/a-0").await;
        let b = open_sim(&env, "/data/b-0").await;
        produce(&a, test_util::encode_batch(0, 1, 0, 10))
            .await
            .unwrap();
        disk.fail_next(0, 1, 0);
        let (ra, rb) = futures::join!(
            produce(&a, test_util::encode_batch(0, 1, 0, 10)),
            produce(&b, test_util::encode_batch(0, 1, 0, 10))
        );
        assert_eq!(ra.unwrap_err().kafka_error_code(), 56);
        assert_eq!(rb.unwrap_err().kafka_error_code(), 56);
        let c = open_sim(&env, "/data/c-0").await;
        let rc = produce(&c, test_util::encode_batch(0, 1, 0, 10)).await;
        assert_eq!(
            rc.unwrap_err().kafka_error_code(),
            56,
            "later syncs fail too"
        );
        let c = open_sim(&env.restarted(), "/data/c-0").await;
        produce(&c, test_util::encode_batch(0, 1, 0, 10))
            .await
            .unwrap();
    });
}

/// A simulated disk (of `seed`) with a journal of 16 KiB files, and the log `dir` opened on it.
async fn journaled_log(seed: u64, dir: &str) -> (SimDisk, Env, Rc<PartitionLog>) {
    let (disk, env, _) = sim_env(seed);
    let env = env.with_journal(sim_journal(16 << 10));
    let log = open_sim(&env, dir).await;
    (disk, env, log)
}

/// The shard journal (`storage::journal`): acknowledged batches that are only in the journal
/// when the process dies are back after the restart, across rolled and reclaimed journal
/// files, a cut and a deleted partition of the same name.
#[test]
fn the_journal_replays_what_its_segments_lack() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, log) = journaled_log(3, "/data/j-0").await;
        let mut acked = Vec::new();
        for i in 0..40 {
            let info = produce(&log, test_util::encode_batch(0, 3, i, 100))
                .await
                .unwrap();
            acked.push((info.base_offset.get(), info.last_offset.get() + 1));
        }
        let (rounds, _, _, recycled) = env.journal.as_ref().unwrap().stats();
        assert!(
            rounds >= 40,
            "every acknowledged round went through the journal"
        );
        assert!(recycled > 0, "reclaimed journal files were reused");
        disk.crash();
        drop(log);
        let env = env.restarted();
        let log = open_sim(&env, "/data/j-0").await;
        assert_eq!(
            log.log_end_offset().get(),
            120,
            "everything acknowledged is back"
        );
        for (base, _) in &acked {
            let data = log.read(Offset(*base), 1).await.unwrap();
            assert_eq!(headers(&data.records)[0].base_offset, *base);
        }
    });
}

/// A compacted prefix taken into a journaled log (a replica seeded by a snapshot): the reset
/// before it journaled a cut below the prefix, and a power loss after the prefix is in must
/// not let the journal's replay apply that cut to it.
#[test]
fn a_power_loss_after_a_prefix_is_taken_in_keeps_the_prefix() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, log) = journaled_log(11, "/data/p-0").await;
        for i in 0..10 {
            produce(&log, test_util::encode_batch(0, 3, i, 100))
                .await
                .unwrap();
        }
        log.reset_to_empty(Offset(100)).await.unwrap();
        let mut w = log.prefix_writer().await.unwrap();
        w.skip_to(0);
        // Batches at 0, 10, 20, ... (compaction's gaps between them), each of 3 records.
        let mut bases = Vec::new();
        for base in (0..90).step_by(10) {
            let b = test_util::encode_batch(base, 3, base, 100);
            assert_eq!(w.push(&b).await.unwrap(), 1);
            bases.push(base);
        }
        assert!(!w.is_complete());
        log.adopt_prefix(w, Offset(0)).await.unwrap();
        assert_eq!(log.log_start_offset().get(), 0);
        assert_eq!(log.log_end_offset().get(), 100);
        disk.crash();
        drop(log);
        let env = env.restarted();
        let log = open_sim(&env, "/data/p-0").await;
        assert_eq!(
            log.log_end_offset().get(),
            100,
            "the log still ends at its base"
        );
        assert_eq!(log.log_start_offset().get(), 0);
        for base in bases {
            let data = log.read_replicated(Offset(base), 1).await.unwrap();
            assert_eq!(
                headers(&data.records)[0].base_offset,
                base,
                "the prefix's batch at {base} is there"
            );
        }
    });
}

/// Reused journal files are reclaimed and reused again, cycle after cycle: the files on disk
/// stay bounded (a reused file's size is known without its first path, which is gone).
#[test]
fn reused_journal_files_keep_cycling() {
    crate::runtime::block_on_test(|| async {
        let (disk, env, log) = journaled_log(5, "/data/r-0").await;
        for i in 0..300 {
            produce(&log, test_util::encode_batch(0, 3, i, 100))
                .await
                .unwrap();
            // Let the reclaimer run between rounds.
            crate::runtime::yield_now().await;
        }
        let (rounds, _, _, recycled) = env.journal.as_ref().unwrap().stats();
        assert!(rounds >= 300);
        let stream = PathBuf::from("/data/journal/0000000001-000");
        let names = disk.list_dir(&stream).await.unwrap();
        let count = |suffix: &str| {
            names
                .iter()
                .filter(|n| n.to_str().is_some_and(|n| n.ends_with(suffix)))
                .count()
        };
        assert!(
            count(".jnl") <= 4 && count(".spare") <= 2,
            "journal files pile up: {names:?}"
        );
        // 300 rounds of 4 KiB in 16 KiB files: about 75 files' worth, nearly all reused.
        assert!(recycled >= 50, "files reused {recycled} times");
    });
}

/// The batches of a journal file the flush mark left behind are written to their segments
/// while the next file fills, each partition at its own slot of the fill: right after the
/// mark moves, a partition of slot 0 has written behind and one of the last slot has not;
/// it does before the next file is full.
#[test]
fn write_behind_follows_the_next_files_fill() {
    crate::runtime::block_on_test(|| async {
        use super::journal::{PRESSURE_SLOTS, pressure_slot};
        let (_disk, env, _) = sim_env(11);
        let env = env.with_journal(sim_journal(64 << 10));
        let name = |slot: usize| {
            (0..)
                .map(|i| format!("w-{i}"))
                .find(|n| pressure_slot(n) == slot)
                .expect("some name hashes to every slot")
        };
        let early = open_sim(&env, &format!("/data/{}", name(0))).await;
        let late = open_sim(&env, &format!("/data/{}", name(PRESSURE_SLOTS - 1))).await;
        // One batch on each, then let the flushers woken by the fill run.
        let round = |i: i64| {
            let (early, late) = (early.clone(), late.clone());
            async move {
                for log in [&early, &late] {
                    produce(log, test_util::encode_batch(0, 1, i, 100))
                        .await
                        .unwrap();
                }
                for _ in 0..8 {
                    crate::runtime::yield_now().await;
                }
            }
        };
        let mut i = 0;
        // Until the mark moves: slot 0 writes behind at once, the last slot waits.
        while early.written_end() == 0 {
            assert!(i < 100, "the journal never moved to a second file");
            round(i).await;
            i += 1;
        }
        assert_eq!(
            late.written_end(),
            0,
            "a partition of the last slot wrote behind when the mark moved"
        );
        // Its turn comes within the next file's fill (a round of both is 8 KiB, a file 64 KiB).
        let mut rounds = 0;
        while late.written_end() == 0 {
            assert!(rounds < 8, "the last slot never wrote behind");
            round(i).await;
            i += 1;
            rounds += 1;
        }
        assert!(
            rounds >= 4,
            "the last slot wrote behind after {rounds} rounds only"
        );
    });
}

/// A log closed while it is offered to the journal writer (appended, not taken yet, the
/// writer busy with another log's round) takes its queue back and writes it before it closes:
/// nothing panics, nothing queued is lost. Tried at several points of the writer's round.
#[test]
fn a_close_while_offered_to_the_journal_writes_the_queue() {
    crate::runtime::block_on_test(|| async {
        let (_disk, env, _) = sim_env(13);
        let env = env.with_journal(sim_journal(16 << 10));
        for k in 0..8 {
            let dir = format!("/data/c-{k}");
            let log = open_sim(&env, &dir).await;
            let other = open_sim(&env, &format!("/data/o-{k}")).await;
            produce(&log, test_util::encode_batch(0, 3, 0, 100))
                .await
                .unwrap();
            // The writer starts a round of the other log...
            let busy = other.append(test_util::encode_batch(0, 3, 0, 100));
            for _ in 0..k {
                crate::runtime::yield_now().await;
            }
            // ...while this one is assigned and offered, then closed.
            let appended = log.append(test_util::encode_batch(0, 3, 1, 100));
            log.close().await.unwrap();
            assert_eq!(appended.await.unwrap().base_offset.get(), 3);
            busy.await.unwrap();
            other.close().await.unwrap();
            drop(log);
            let log = open_sim(&env, &dir).await;
            assert_eq!(
                log.log_end_offset().get(),
                6,
                "k {k}: the queued batch was written"
            );
            log.close().await.unwrap();
        }
    });
}
