//! Acknowledged-write load for the tests that stop or crash a broker under load
//! (tests/crash.rs, tests/lifecycle.rs): producer tasks keep a bounded window of acks=all
//! messages in flight and record every acknowledgement with its partition and offset; [`verify`]
//! reads the partitions back and checks that each acknowledged message is where it was
//! acknowledged, with its payload, and that offsets have no gaps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Broker, consume_all, producer_config};

/// (partition, offset) -> payload of every acknowledged message.
pub type Acked = BTreeMap<(i32, i64), Vec<u8>>;

/// Longest the in-flight messages may take to settle once the load is told to stop.
const DRAIN_BOUND: Duration = Duration::from_secs(60);

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub topic: &'static str,
    /// Messages go round robin over partitions 0..partitions.
    pub partitions: i32,
    pub tasks: u32,
    /// Messages each task keeps in flight.
    pub in_flight_per_task: usize,
    /// Added to the task index in payloads, so rounds of load against one topic differ.
    pub task_base: u32,
    /// The load stops by itself after this long.
    pub timeout: Duration,
}

/// The payload of message `sequence` of task `task`: unique, of varying length.
pub fn payload(task: u32, sequence: u64) -> Vec<u8> {
    format!(
        "task={task} seq={sequence} {}",
        "x".repeat((sequence % 128) as usize)
    )
    .into_bytes()
}

/// Running producer tasks (on the current tokio runtime) and what they were acknowledged.
pub struct AckedLoad {
    spec: LoadSpec,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    acked: Arc<Mutex<Acked>>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl AckedLoad {
    /// Starts the producer tasks against `bootstrap`. They share one producer with a short
    /// message timeout, so once the broker is gone unanswered messages fail within seconds.
    pub fn start(bootstrap: &str, spec: LoadSpec) -> AckedLoad {
        let producer: FutureProducer = producer_config(bootstrap)
            .set("message.timeout.ms", "5000")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(Acked::new()));
        let tasks = (0..spec.tasks)
            .map(|task| {
                tokio::spawn(producer_task(
                    producer.clone(),
                    spec,
                    spec.task_base + task,
                    stop.clone(),
                    acks.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        AckedLoad {
            spec,
            stop,
            acks,
            acked,
            tasks,
        }
    }

    /// Acknowledgements so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` acknowledgements came back; panics if the broker exits or
    /// the load's timeout passes first.
    pub async fn wait_for_acks(&self, broker: &mut Broker, count: u64, what: &str) {
        let started = Instant::now();
        while self.acks() < count {
            assert!(
                started.elapsed() < self.spec.timeout,
                "{what}: only {} acknowledgements within {:?}",
                self.acks(),
                self.spec.timeout
            );
            assert!(broker.is_running(), "{what}: broker exited under load");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Tells the tasks to stop, waits for them (their in-flight messages are acknowledged or
    /// fail), and returns every acknowledged message and the number of failed ones.
    pub async fn finish(self) -> (Acked, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = 0;
        for task in self.tasks {
            failures += task.await.expect("producer task panicked");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, failures)
    }
}

/// Sends until `stop` is set (or the timeout passes), then waits (bounded) for what is still in
/// flight. Returns how many messages failed.
async fn producer_task(
    producer: FutureProducer,
    spec: LoadSpec,
    task: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    acked: Arc<Mutex<Acked>>,
) -> u64 {
    let mut in_flight = FuturesUnordered::new();
    let mut sequence = 0u64;
    let mut failures = 0u64;
    let record_ack = |value: Vec<u8>, partition: i32, offset: i64| {
        let previous = acked.lock().unwrap().insert((partition, offset), value);
        assert!(
            previous.is_none(),
            "two acknowledgements for partition {partition} offset {offset}"
        );
        acks.fetch_add(1, Ordering::Relaxed);
    };
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.timeout {
        while in_flight.len() < spec.in_flight_per_task {
            let value = payload(task, sequence);
            let partition = ((sequence + u64::from(task)) % spec.partitions as u64) as i32;
            let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(spec.topic)
                .partition(partition)
                .payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(async move { (value, delivery.await) }),
                Err((error, _)) => panic!("task {task}: enqueue: {error}"),
            }
            sequence += 1;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), in_flight.next()).await;
        if let Ok(Some((value, result))) = next {
            match result.expect("delivery cancelled") {
                Ok(delivery) => record_ack(value, delivery.partition, delivery.offset),
                Err(_) => failures += 1,
            }
        }
    }
    // Acknowledgements arriving now still count (the broker may have answered just before it
    // stopped); failures are expected once it is gone.
    let drain_started = Instant::now();
    while let Ok(Some((value, result))) =
        tokio::time::timeout(Duration::from_secs(30), in_flight.next()).await
    {
        match result {
            Ok(Ok(delivery)) => record_ack(value, delivery.partition, delivery.offset),
            _ => failures += 1,
        }
        assert!(
            drain_started.elapsed() < DRAIN_BOUND,
            "draining in-flight messages took too long"
        );
    }
    failures
}

/// Reads partitions 0..partitions of `topic` to their end and checks that every acknowledged
/// message is at its offset with its payload and that offsets have no gaps. Returns each
/// partition's end offset. Call from a multi-threaded tokio test (it blocks in place).
pub fn verify(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    acked: &Acked,
    when: &str,
) -> BTreeMap<i32, i64> {
    let partitions: Vec<i32> = (0..partitions).collect();
    let consumed = tokio::task::block_in_place(|| {
        consume_all(bootstrap, topic, &partitions, Duration::from_secs(60))
    });
    let mut stored = Acked::new();
    let mut ends = BTreeMap::new();
    for (partition, messages) in &consumed {
        for (position, message) in messages.iter().enumerate() {
            assert_eq!(
                message.offset(),
                position as i64,
                "{when}: partition {partition} has a gap"
            );
            stored.insert(
                (*partition, message.offset()),
                message.payload().unwrap_or_default().to_vec(),
            );
        }
        ends.insert(*partition, messages.len() as i64);
    }
    let mut missing = Vec::new();
    for (place, value) in acked {
        match stored.get(place) {
            Some(found) if found == value => {}
            Some(found) => missing.push(format!(
                "{place:?}: stored {:?}, acknowledged {:?}",
                String::from_utf8_lossy(found),
                String::from_utf8_lossy(value)
            )),
            None => missing.push(format!("{place:?}: absent")),
        }
    }
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged messages lost or changed, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    ends
}
