//! Graceful stop under load: SIGTERM while producers are sending makes the broker stop accepting,
//! answer what is in flight, close every partition cleanly and exit 0 within a bound; no
//! acknowledged message is lost, and the next start opens every partition from its
//! clean-shutdown marker without a recovery scan. After `kill -9` the next start says the
//! previous shutdown was not clean and recovers every partition.

mod common;

use std::time::Duration;

use common::load::{self, Acked, AckedLoad, LoadSpec, payload};
use common::{Broker, create_topic, producer_config, sum_log_field};
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

fn verify(bootstrap: &str, topic: &str, acked: &Acked, when: &str) {
    load::verify(bootstrap, topic, PARTITIONS, acked, when);
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

    let load = AckedLoad::start(
        &bootstrap,
        LoadSpec {
            topic: TOPIC,
            partitions: PARTITIONS,
            tasks: PRODUCER_TASKS,
            in_flight_per_task: IN_FLIGHT_PER_TASK,
            task_base: 0,
            timeout: LOAD_TIMEOUT,
        },
    );
    load.wait_for_acks(&mut broker, ACKS_BEFORE_STOP, "before SIGTERM")
        .await;
    // SIGTERM while the producers keep sending.
    let acks_at_stop = load.acks();
    let exit = tokio::task::block_in_place(|| broker.terminate(EXIT_BOUND));
    let (status, took) = exit.unwrap_or_else(|| {
        panic!(
            "broker did not exit within {EXIT_BOUND:?} of SIGTERM:\n{}",
            broker.logs_text()
        )
    });
    let (acked, _failures) = load.finish().await;
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
