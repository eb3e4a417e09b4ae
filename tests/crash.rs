//! `kill -9` under load: every message acknowledged with acks=all survives, at the offset it was
//! acknowledged with, and the log takes new appends after the recovered end.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, consume_all, producer_config};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;
const PRODUCER_TASKS: u32 = 4;
/// Messages each task keeps in flight.
const IN_FLIGHT_PER_TASK: usize = 64;
/// Kill the broker once this many acknowledgements came back.
const ACKS_BEFORE_KILL: u64 = 5_000;
const LOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// (partition, offset) -> payload.
type Acked = BTreeMap<(i32, i64), Vec<u8>>;

fn payload(task: u32, sequence: u64) -> Vec<u8> {
    format!(
        "task={task} seq={sequence} {}",
        "x".repeat((sequence % 100) as usize)
    )
    .into_bytes()
}

/// Sends acks=all messages with a bounded window until `stop` is set, then waits for what is
/// still in flight (it fails after message.timeout.ms once the broker is dead).
async fn producer_task(
    producer: FutureProducer,
    task: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    acked: Arc<Mutex<Acked>>,
) -> u64 {
    let mut in_flight = FuturesUnordered::new();
    let mut sequence = 0u64;
    let mut failures = 0u64;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_TIMEOUT {
        while in_flight.len() < IN_FLIGHT_PER_TASK {
            let value = payload(task, sequence);
            let partition = ((sequence + task as u64) % PARTITIONS as u64) as i32;
            let record: FutureRecord<'_, (), Vec<u8>> =
                FutureRecord::to(TOPIC).partition(partition).payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(async move { (value, delivery.await) }),
                Err((error, _)) => panic!("task {task}: enqueue: {error}"),
            }
            sequence += 1;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), in_flight.next()).await;
        if let Ok(Some((value, result))) = next {
            match result.expect("delivery cancelled") {
                Ok(delivery) => {
                    let previous = acked
                        .lock()
                        .unwrap()
                        .insert((delivery.partition, delivery.offset), value);
                    assert!(
                        previous.is_none(),
                        "two acknowledgements for partition {} offset {}",
                        delivery.partition,
                        delivery.offset
                    );
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => failures += 1,
            }
        }
    }
    // Drain: acknowledgements that arrive now are still acknowledgements (the broker may have
    // answered just before the kill); failures are expected.
    let drain_started = Instant::now();
    while let Ok(Some((value, result))) =
        tokio::time::timeout(Duration::from_secs(30), in_flight.next()).await
    {
        if let Ok(Ok(delivery)) = result {
            acked
                .lock()
                .unwrap()
                .insert((delivery.partition, delivery.offset), value);
            acks.fetch_add(1, Ordering::Relaxed);
        } else {
            failures += 1;
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(60),
            "draining in-flight messages took too long"
        );
    }
    failures
}

/// Runs the producer tasks against `broker` until `acks_before_kill` acknowledgements came back,
/// kills the broker with SIGKILL, lets the tasks finish, and returns every acknowledged message.
async fn load_then_kill(broker: &mut Broker, round: u32, acks_before_kill: u64) -> Acked {
    let bootstrap = broker.bootstrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Acked::new()));
    let mut tasks = Vec::new();
    {
        // Short message timeout: once the broker is gone, in-flight messages fail quickly and
        // the producer is dropped before the restart, so no retry lands afterwards.
        let producer: FutureProducer = producer_config(&bootstrap)
            .set("message.timeout.ms", "5000")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        for task in 0..PRODUCER_TASKS {
            tasks.push(tokio::spawn(producer_task(
                producer.clone(),
                round * 100 + task,
                stop.clone(),
                acks.clone(),
                acked.clone(),
            )));
        }
    }

    let started = Instant::now();
    while acks.load(Ordering::Relaxed) < acks_before_kill {
        assert!(
            started.elapsed() < LOAD_TIMEOUT,
            "round {round}: only {} acknowledgements within {LOAD_TIMEOUT:?}",
            acks.load(Ordering::Relaxed)
        );
        assert!(
            broker.is_running(),
            "round {round}: broker exited under load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill9();
    let acks_at_kill = acks.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for task in tasks {
        failures += task.await.expect("producer task panicked");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "round {round}: killed after {acks_at_kill} acks; {} acknowledged in total, {failures} failed",
        acked.len()
    );
    acked
}

/// Reads the whole recovered log and checks that every acknowledged message is at its offset
/// with its payload and that offsets have no gaps. Returns the end offset of each partition.
fn verify_recovered(bootstrap: &str, acked: &Acked, when: &str) -> BTreeMap<i32, i64> {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = tokio::task::block_in_place(|| {
        consume_all(bootstrap, TOPIC, &partitions, Duration::from_secs(60))
    });
    let mut stored = Acked::new();
    let mut ends = BTreeMap::new();
    for (partition, messages) in &consumed {
        for (position, message) in messages.iter().enumerate() {
            assert_eq!(
                message.offset(),
                position as i64,
                "{when}: partition {partition}: recovered log has a gap"
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
        "{when}: {} of {} acknowledged messages lost or changed after kill -9, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let mut broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(PARTITIONS as u32),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    assert_eq!(
        common::partition_count(&bootstrap, TOPIC),
        PARTITIONS as usize
    );

    // Round 1 crashes a fresh log; round 2 crashes a log that was itself recovered from a crash.
    let mut acked = load_then_kill(&mut broker, 1, ACKS_BEFORE_KILL).await;
    broker.restart();
    verify_recovered(&bootstrap, &acked, "after first kill");
    let more = load_then_kill(&mut broker, 2, ACKS_BEFORE_KILL / 2).await;
    for place in more.keys() {
        assert!(
            !acked.contains_key(place),
            "offset {place:?} acknowledged in both rounds"
        );
    }
    acked.extend(more);
    broker.restart();
    let ends = verify_recovered(&bootstrap, &acked, "after second kill");

    // New appends go right after the recovered end of each partition.
    let producer: FutureProducer = producer_config(&bootstrap).create().expect("producer");
    for partition in 0..PARTITIONS {
        let record: FutureRecord<'_, (), str> = FutureRecord::to(TOPIC)
            .partition(partition)
            .payload("after restart");
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("append to {partition} after restart: {e}"));
        assert_eq!(
            delivery.offset, ends[&partition],
            "partition {partition}: first append after recovery"
        );
    }
}
