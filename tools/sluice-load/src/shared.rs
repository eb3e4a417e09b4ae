//! State shared by the producers, consumers, the pacer and the reporter of
//! one run. Counters are atomics; the per-second histograms sit behind a
//! mutex that each task takes once per response, not per message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

use kafka_protocol::messages::TopicName;
use tokio::sync::Notify;

use crate::latency::{Clock, LatencyPair};

/// One partition the run writes to.
#[derive(Debug, Clone)]
pub struct PartitionRef {
    pub topic: TopicName,
    pub partition: i32,
    /// Broker id of the leader.
    pub leader: i32,
}

/// Counters updated as the run goes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages created by producers (all phases).
    pub sent: AtomicU64,
    /// Messages acknowledged (acks=0: written to the socket).
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    /// Messages whose produce failed (error code, timeout, connection loss).
    pub produce_errors: AtomicU64,
    /// Tracked messages consumed, duplicates included.
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
    /// Fetch partition errors and failed fetch requests.
    pub fetch_errors: AtomicU64,
}

/// The latency of the current one-second interval, for the live line.
#[derive(Debug, Default)]
pub struct Interval {
    pub publish: LatencyPair,
    pub end_to_end: LatencyPair,
}

/// A producer's wake-up slot in the pacer.
#[derive(Debug)]
pub struct PacerSlot {
    /// Unix µs at which the producer wants to be woken; u64::MAX = never.
    pub due_us: AtomicU64,
    pub notify: Notify,
}

impl Default for PacerSlot {
    fn default() -> Self {
        PacerSlot {
            due_us: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }
}

pub struct Shared {
    pub clock: Clock,
    /// Random per run; consumers ignore messages of other runs.
    pub run_id: u32,
    /// Producing starts (schedule origin).
    pub start_us: u64,
    /// Warmup ends: latencies and throughput count from here.
    pub measure_start_us: u64,
    /// Producing stops.
    pub end_us: u64,
    pub counters: Counters,
    pub interval: Mutex<Interval>,
    /// Error code -> count, for the report.
    pub error_codes: Mutex<BTreeMap<String, u64>>,
    pub pacer_slots: Vec<Arc<PacerSlot>>,
    pub pacer_thread: Mutex<Option<Thread>>,
    /// Set when consumers should stop.
    pub stop_consumers: AtomicBool,
    /// Set when the pacer thread should exit.
    pub stop_pacer: AtomicBool,
}

impl Shared {
    pub fn count_error(&self, what: &str, n: u64) {
        *self
            .error_codes
            .lock()
            .expect("not poisoned")
            .entry(what.to_string())
            .or_default() += n;
    }

    /// Ask the pacer to wake producer `id` at `due_us`.
    pub fn wake_at(&self, id: usize, due_us: u64) {
        self.pacer_slots[id].due_us.store(due_us, Ordering::Release);
        if let Some(t) = self.pacer_thread.lock().expect("not poisoned").as_ref() {
            t.unpark();
        }
    }
}

/// Floor of the pacer's sleep: below this, sleeping costs more than it saves.
const PACER_SLEEP_US_MIN: u64 = 20;
/// Ceiling of the pacer's sleep, so a missed unpark costs at most this.
const PACER_SLEEP_US_MAX: u64 = 2_000;

/// The pacer: one OS thread that wakes producers at their due times with
/// ~50-100 µs precision (tokio's timer wheel has 1 ms granularity, which
/// would add up to 1 ms of generator lag to every corrected latency).
pub fn run_pacer(shared: Arc<Shared>) {
    while !shared.stop_pacer.load(Ordering::Acquire) {
        let now = shared.clock.now_us();
        let mut next = u64::MAX;
        for slot in &shared.pacer_slots {
            let due = slot.due_us.load(Ordering::Acquire);
            if due <= now {
                if slot
                    .due_us
                    .compare_exchange(due, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    slot.notify.notify_one();
                }
            } else {
                next = next.min(due);
            }
        }
        let sleep_us = next
            .saturating_sub(shared.clock.now_us())
            .clamp(PACER_SLEEP_US_MIN, PACER_SLEEP_US_MAX);
        std::thread::park_timeout(std::time::Duration::from_micros(sleep_us));
    }
}
