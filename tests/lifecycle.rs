//! Graceful stop under load: SIGTERM while producers are sending makes the broker stop accepting,
//! answer what is in flight, close every partition cleanly and exit 0 within a bound; no
//! acknowledged message is lost, and the next start opens every partition from its
//! clean-shutdown marker without a recovery scan. After `kill -9` the next start says the
//! previous shutdown was not clean and recovers every partition.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, consume_all, create_topic, producer_config, sum_log_field};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;
const PRODUCER_TASKS: u32 = 3;
/// Messages each task keeps in flight.
const IN_FLIGHT_PER_TASK: usize = 32;
/// Send SIGTERM once this many acknowledgements came back (the load goes on during the stop).
const ACKS_BEFORE_STOP: u64 = 3_000;
/// The broker must exit within this after SIGTERM.
const EXIT_BOUND: Duration = Duration::from_secs(20);
const LOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// (partition, offset) -> payload.
type Acked = BTreeMap<(i32, i64), Vec<u8>>;

fn payload(task: u32, sequence: u64) -> Vec<u8> {
    format!(
        "task={task} seq={sequence} {}",
        "y".repeat((sequence % 150) as usize)
    )
    .into_bytes()
}

/// Sends acks=all messages with a bounded window until `stop` is set, recording every
/// acknowledgement, then waits (bounded) for what is still in flight.
async fn producer_task(
    producer: FutureProducer,
    topic: &'static str,
    task: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    acked: Arc<Mutex<Acked>>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut sequence = 0u64;
    let started = Instant::now();
    let record_ack = |value: Vec<u8>, partition: i32, offset: i64| {
        let previous = acked.lock().unwrap().insert((partition, offset), value);
        assert!(
            previous.is_none(),
            "two acknowledgements for partition {partition} offset {offset}"
        );
        acks.fetch_add(1, Ordering::Relaxed);
    };
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_TIMEOUT {
        while in_flight.len() < IN_FLIGHT_PER_TASK {
            let value = payload(task, sequence);
            let partition = ((sequence + u64::from(task)) % PARTITIONS as u64) as i32;
            let record: FutureRecord<'_, (), Vec<u8>> =
                FutureRecord::to(topic).partition(partition).payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(async move { (value, delivery.await) }),
                Err((error, _)) => panic!("task {task}: enqueue: {error}"),
            }
            sequence += 1;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), in_flight.next()).await;
        if let Ok(Some((value, Ok(Ok(delivery))))) = next {
            record_ack(value, delivery.partition, delivery.offset);
        }
    }
    // Acknowledgements arriving now still count; failures are expected once the broker is gone.
    let drain_started = Instant::now();
    while let Ok(Some((value, result))) =
        tokio::time::timeout(Duration::from_secs(30), in_flight.next()).await
    {
        if let Ok(Ok(delivery)) = result {
            record_ack(value, delivery.partition, delivery.offset);
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(60),
            "draining in-flight messages took too long"
        );
    }
}

/// Reads every partition back and checks that each acknowledged message is at its offset with
/// its payload, with no gaps.
fn verify(bootstrap: &str, topic: &str, acked: &Acked, when: &str) {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = tokio::task::block_in_place(|| {
        consume_all(bootstrap, topic, &partitions, Duration::from_secs(60))
    });
    let mut stored = Acked::new();
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
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(place, value)| stored.get(*place) != Some(*value))
        .map(|(place, _)| *place)
        .collect();
    assert!(
        lost.is_empty(),
        "{when}: {} of {} acknowledged messages lost or changed, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Partitions opened from their marker and partitions recovered, summed over the shards' lines
/// of the latest run.
fn open_counts(broker: &Broker) -> (u64, u64, u64) {
    let log = broker.last_run_log();
    let field = |name| {
        sum_log_field(&log, "partitions recovered", name)
            .unwrap_or_else(|| panic!("no 'partitions recovered' line in:\n{log}"))
    };
    (
        field("partitions"),
        field("opened_clean"),
        field("recovered"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_restart_skips_recovery() {
    const TOPIC: &str = "lifecycle";
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Acked::new()));
    let mut tasks = Vec::new();
    {
        // Short message timeout: once the broker is gone, unanswered messages fail quickly and
        // the producer is dropped before the restart.
        let producer: FutureProducer = producer_config(&bootstrap)
            .set("message.timeout.ms", "5000")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        for task in 0..PRODUCER_TASKS {
            tasks.push(tokio::spawn(producer_task(
                producer.clone(),
                TOPIC,
                task,
                stop.clone(),
                acks.clone(),
                acked.clone(),
            )));
        }
    }
    let started = Instant::now();
    while acks.load(Ordering::Relaxed) < ACKS_BEFORE_STOP {
        assert!(
            started.elapsed() < LOAD_TIMEOUT,
            "only {} acknowledgements within {LOAD_TIMEOUT:?}",
            acks.load(Ordering::Relaxed)
        );
        assert!(broker.is_running(), "broker exited under load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGTERM while the producers keep sending.
    let acks_at_stop = acks.load(Ordering::Relaxed);
    let exit = tokio::task::block_in_place(|| broker.terminate(EXIT_BOUND));
    stop.store(true, Ordering::Relaxed);
    let (status, took) = exit.unwrap_or_else(|| {
        panic!(
            "broker did not exit within {EXIT_BOUND:?} of SIGTERM:\n{}",
            broker.logs_text()
        )
    });
    for task in tasks {
        task.await.expect("producer task panicked");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "SIGTERM after {acks_at_stop} acks; exited with {status} in {took:?}; {} acknowledged",
        acked.len()
    );
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let stop_log = broker.last_run_log();
    assert!(
        stop_log.contains("stopped accepting connections"),
        "{stop_log}"
    );
    assert!(stop_log.contains("sluice stopped cleanly"), "{stop_log}");

    // The next start trusts every partition's marker: no recovery scan at all.
    broker.restart();
    let start_log = broker.last_run_log();
    assert!(
        start_log.contains("previous shutdown was clean"),
        "{start_log}"
    );
    let (partitions, opened_clean, recovered) = open_counts(&broker);
    assert!(partitions >= PARTITIONS as u64, "{start_log}");
    assert_eq!(opened_clean, partitions, "{start_log}");
    assert_eq!(recovered, 0, "{start_log}");
    verify(&bootstrap, TOPIC, &acked, "after SIGTERM and restart");

    // The markers were consumed by that start: a crash now means a full recovery.
    tokio::task::block_in_place(|| broker.kill9());
    broker.restart();
    let start_log = broker.last_run_log();
    assert!(
        start_log.contains("previous shutdown was not clean"),
        "{start_log}"
    );
    let (partitions, opened_clean, recovered) = open_counts(&broker);
    assert_eq!((opened_clean, recovered), (0, partitions), "{start_log}");
    verify(&bootstrap, TOPIC, &acked, "after kill -9 and restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_is_not_clean_and_recovers() {
    const TOPIC: &str = "lifecycle-kill";
    const MESSAGES: u32 = 400;
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    assert!(
        broker
            .last_run_log()
            .contains("new data directory: no previous shutdown")
    );
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    let producer: FutureProducer = producer_config(&bootstrap).create().expect("producer");
    let mut acked = Acked::new();
    for index in 0..MESSAGES {
        let value = payload(9, u64::from(index));
        let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(TOPIC)
            .partition((index % PARTITIONS as u32) as i32)
            .payload(&value);
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("message {index}: {e}"));
        acked.insert((delivery.partition, delivery.offset), value);
    }
    drop(producer);
    tokio::task::block_in_place(|| broker.kill9());
    broker.restart();
    let start_log = broker.last_run_log();
    assert!(
        start_log.contains("previous shutdown was not clean: partitions will be recovered"),
        "{start_log}"
    );
    let (partitions, opened_clean, recovered) = open_counts(&broker);
    assert!(partitions >= PARTITIONS as u64);
    assert_eq!((opened_clean, recovered), (0, partitions), "{start_log}");
    verify(&bootstrap, TOPIC, &acked, "after kill -9");
}
