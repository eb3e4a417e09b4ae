//! `kill -9` under load: every message acknowledged with acks=all survives, at the offset it was
//! acknowledged with, and the log takes new appends after the recovered end.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::load::{self, Acked, AckedLoad, LoadSpec};
use common::{Broker, BrokerOptions, producer_config};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;
const PRODUCER_TASKS: u32 = 4;
/// Messages each task keeps in flight.
const IN_FLIGHT_PER_TASK: usize = 64;
/// Kill the broker once this many acknowledgements came back.
const ACKS_BEFORE_KILL: u64 = 5_000;
/// How long the load may run before a journal file has been reused (reused-files test).
const REUSE_WAIT: Duration = Duration::from_secs(60);
/// With 1 MiB journal files: enough rounds that files are reclaimed and reused before the kill.
const REUSE_ACKS_BEFORE_KILL: u64 = 30_000;
const LOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs the producer tasks against `broker` until `acks_before_kill` acknowledgements came back,
/// kills the broker with SIGKILL, lets the tasks finish, and returns every acknowledged message.
async fn load_then_kill(
    broker: &mut Broker,
    round: u32,
    acks_before_kill: u64,
    expect_reuse: bool,
) -> Acked {
    let load = AckedLoad::start(
        &broker.bootstrap(),
        LoadSpec {
            topic: TOPIC,
            partitions: PARTITIONS,
            tasks: PRODUCER_TASKS,
            in_flight_per_task: IN_FLIGHT_PER_TASK,
            task_base: round * 100,
            timeout: LOAD_TIMEOUT,
        },
    );
    load.wait_for_acks(broker, acks_before_kill, &format!("round {round}"))
        .await;
    if expect_reuse {
        // Journal files were reclaimed and reused (renamed spares holding older rounds)
        // before the kill: the load goes on until one was (a file is reclaimed once the next
        // one has filled, and reused at the switch after that).
        let reused = || {
            let (_, _, body) = broker.scrape("/metrics");
            body.lines()
                .filter(|l| l.starts_with("sluice_journal_files_reused_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let deadline = std::time::Instant::now() + REUSE_WAIT;
        while reused() == 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no journal file was reused within {REUSE_WAIT:?} of load"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    broker.kill9();
    let acks_at_kill = load.acks();
    let (acked, failures) = load.finish().await;
    eprintln!(
        "round {round}: killed after {acks_at_kill} acks; {} acknowledged in total, {failures} failed",
        acked.len()
    );
    acked
}

/// Reads the whole recovered log back (see [`load::verify`]); returns each partition's end.
fn verify_recovered(bootstrap: &str, acked: &Acked, when: &str) -> BTreeMap<i32, i64> {
    load::verify(bootstrap, TOPIC, PARTITIONS, acked, when)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    kill_9_twice(Vec::new(), ACKS_BEFORE_KILL, false).await;
}

/// The same with 1 MiB shard journal files: they fill, are reclaimed and reused (renamed
/// spares holding older rounds) many times before each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_with_reused_journal_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "journal_file_bytes = 1048576\n").expect("write the config");
    kill_9_twice(
        vec!["--config".into(), config.display().to_string()],
        REUSE_ACKS_BEFORE_KILL,
        true,
    )
    .await;
}

/// The shard journals' file names under `data`, stream by stream.
fn journal_files(data: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for stream in std::fs::read_dir(data.join("journal"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(stream.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            names.push(format!(
                "{}/{}",
                stream.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    names.sort();
    names
}

/// Two rounds of load and `kill -9`, then every acknowledged message is checked and new
/// appends go after the recovered ends.
/// With `expect_reuse`, journal files must have been reclaimed and reused before the first
/// kill.
async fn kill_9_twice(extra_args: Vec<String>, acks_before_kill: u64, expect_reuse: bool) {
    let mut broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(PARTITIONS as u32),
        extra_args,
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    assert_eq!(
        common::partition_count(&bootstrap, TOPIC),
        PARTITIONS as usize
    );

    // Round 1 crashes a fresh log; round 2 crashes a log that was itself recovered from a crash.
    let mut acked = load_then_kill(&mut broker, 1, acks_before_kill, expect_reuse).await;
    let journal = journal_files(broker.data_dir());
    eprintln!("journal at the kill: {journal:?}");
    broker.restart();
    verify_recovered(&bootstrap, &acked, "after first kill");
    let more = load_then_kill(&mut broker, 2, acks_before_kill / 2, false).await;
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
