//! The admin commands (`sluice topic ...`, `sluice group ...`) run as a separate process against
//! a real broker, checked by their output and by their effects as rdkafka clients see them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, producer_config, run_with_timeout};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Longest one CLI invocation may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a wait for a group state may take.
const GROUP_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one `sluice` invocation did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

fn sluice(broker: &Broker, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .arg("--bootstrap-server")
        .arg(broker.bootstrap());
    let output = run_with_timeout(&mut command, b"", COMMAND_TIMEOUT);
    let run = Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ sluice {}\n{}{}(exit {})",
        args.join(" "),
        run.stdout,
        run.stderr,
        output.status
    );
    run
}

/// Runs a command that must succeed; returns its stdout.
fn ok(broker: &Broker, args: &[&str]) -> String {
    let run = sluice(broker, args);
    assert!(
        run.success,
        "sluice {args:?} failed: {}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// Runs a command that must fail with a message containing `needle` on stderr.
fn fails(broker: &Broker, args: &[&str], needle: &str) {
    let run = sluice(broker, args);
    assert!(!run.success, "sluice {args:?} succeeded: {}", run.stdout);
    assert!(
        run.stderr.contains(needle),
        "sluice {args:?}: stderr lacks {needle:?}: {}",
        run.stderr
    );
}

/// The whitespace-separated cells of the table row whose first cells are `prefix`.
fn row(stdout: &str, prefix: &[&str]) -> Option<Vec<String>> {
    stdout
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.len() >= prefix.len() && cells.iter().zip(prefix).all(|(c, p)| c == p))
}

/// Cell `column` (by header name) of the row starting with `prefix`.
fn cell(stdout: &str, header_first: &str, prefix: &[&str], column: &str) -> String {
    let header = row(stdout, &[header_first]).unwrap_or_else(|| panic!("no header in {stdout}"));
    let index = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    let cells = row(stdout, prefix).unwrap_or_else(|| panic!("no row {prefix:?} in {stdout}"));
    cells[index].clone()
}

/// Produces `count` messages to one partition and waits until they are acknowledged.
fn produce(bootstrap: &str, topic: &str, partition: i32, count: usize) {
    let producer: BaseProducer = producer_config(bootstrap).create().expect("producer");
    for i in 0..count {
        let value = format!("message-{i}");
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .payload(&value)
                    .partition(partition),
            )
            .expect("queue message");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Commits offsets for `group` without joining it (assign-style consumer, generation -1).
fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let consumer = common::simple_consumer(bootstrap, group);
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("add partition");
    }
    consumer.assign(&list).expect("assign");
    consumer.commit(&list, CommitMode::Sync).expect("commit");
}

#[test]
fn topic_create_list_describe_alter_delete() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    const TOPIC: &str = "cli-topic";

    let out = ok(
        &broker,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=3600000",
        ],
    );
    assert!(out.contains("Created topic cli-topic"), "{out}");
    fails(
        &broker,
        &["topic", "create", TOPIC, "--partitions", "3"],
        "TopicAlreadyExists",
    );

    let out = ok(&broker, &["topic", "list"]);
    assert_eq!(
        row(&out, &[TOPIC]),
        Some(vec![TOPIC.into(), "3".into(), "1".into(), "false".into()]),
        "{out}"
    );
    assert!(!out.contains("__consumer_offsets"), "{out}");
    let all = ok(&broker, &["topic", "list", "--all"]);
    assert!(row(&all, &[TOPIC]).is_some(), "{all}");

    produce(&bootstrap, TOPIC, 1, 5);
    let out = ok(&broker, &["topic", "describe", TOPIC]);
    assert!(out.contains("Partitions: 3"), "{out}");
    for partition in ["0", "1", "2"] {
        assert_eq!(cell(&out, "PARTITION", &[partition], "LOG-START"), "0");
        let expected = if partition == "1" { "5" } else { "0" };
        assert_eq!(
            cell(&out, "PARTITION", &[partition], "HIGH-WATERMARK"),
            expected,
            "{out}"
        );
        assert_eq!(cell(&out, "PARTITION", &[partition], "REPLICAS"), "0");
    }
    let configs_supported = !out.contains("Configs: not available");
    if configs_supported {
        assert_eq!(cell(&out, "CONFIG", &["retention.ms"], "VALUE"), "3600000");
    }

    fails(
        &broker,
        &["topic", "alter-config", TOPIC],
        "nothing to change",
    );
    let run = sluice(
        &broker,
        &[
            "topic",
            "alter-config",
            TOPIC,
            "--set",
            "retention.ms=7200000",
        ],
    );
    if run.success {
        assert!(
            run.stdout.contains("set retention.ms=7200000"),
            "{}",
            run.stdout
        );
        if configs_supported {
            let out = ok(&broker, &["topic", "describe", TOPIC]);
            assert_eq!(cell(&out, "CONFIG", &["retention.ms"], "VALUE"), "7200000");
            assert_eq!(cell(&out, "CONFIG", &["retention.ms"], "SOURCE"), "topic");
        }
        let out = ok(
            &broker,
            &["topic", "alter-config", TOPIC, "--delete", "retention.ms"],
        );
        assert!(out.contains("deleted retention.ms"), "{out}");
        if configs_supported {
            // Back to the broker's value: no longer a topic override.
            let out = ok(&broker, &["topic", "describe", TOPIC, "--all-configs"]);
            assert_ne!(cell(&out, "CONFIG", &["retention.ms"], "SOURCE"), "topic");
        }
    } else {
        // A broker without the config APIs must say so, not fail obscurely.
        assert!(
            run.stderr
                .contains("neither IncrementalAlterConfigs nor AlterConfigs")
                || run
                    .stderr
                    .contains("AlterConfigs needs the current configs"),
            "{}",
            run.stderr
        );
    }

    let out = ok(&broker, &["topic", "delete", TOPIC]);
    assert!(out.contains("Deleted topic cli-topic"), "{out}");
    let out = ok(&broker, &["topic", "list"]);
    assert!(row(&out, &[TOPIC]).is_none(), "{out}");
    fails(&broker, &["topic", "describe", TOPIC], "does not exist");
    fails(&broker, &["topic", "delete", TOPIC], "does not exist");
}

#[test]
fn group_list_describe_reset_delete() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--group-initial-rebalance-delay-ms".into(),
            "100".into(),
            "--group-min-session-timeout-ms".into(),
            "1000".into(),
        ],
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    const TOPIC: &str = "cli-group-topic";
    const GROUP: &str = "cli-group";

    ok(&broker, &["topic", "create", TOPIC, "--partitions", "2"]);
    produce(&bootstrap, TOPIC, 0, 5);
    produce(&bootstrap, TOPIC, 1, 5);
    commit(&bootstrap, GROUP, TOPIC, &[(0, 2), (1, 5)]);

    let out = ok(&broker, &["group", "list"]);
    assert!(row(&out, &[GROUP]).is_some(), "{out}");

    let out = ok(&broker, &["group", "describe", GROUP]);
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "COMMITTED"), "2");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "LOG-END"), "5");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "LAG"), "3");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "1"], "LAG"), "0");

    // Dry run: a plan, nothing committed.
    let out = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
        ],
    );
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "CURRENT"), "2");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "NEW"), "0");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "1"], "NEW"), "0");
    assert!(out.contains("Dry run"), "{out}");
    let out = ok(&broker, &["group", "describe", GROUP]);
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "COMMITTED"), "2");

    // Execute.
    let out = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(out.contains("Committed new offsets"), "{out}");
    let out = ok(&broker, &["group", "describe", GROUP]);
    for partition in ["0", "1"] {
        assert_eq!(cell(&out, "TOPIC", &[TOPIC, partition], "COMMITTED"), "0");
        assert_eq!(cell(&out, "TOPIC", &[TOPIC, partition], "LAG"), "5");
    }

    // One partition, an explicit offset (clamped to the log end), and a datetime in the future
    // (no record at or after it: the log end).
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            &format!("{TOPIC}:1"),
            "--to-offset",
            "99",
            "--execute",
        ],
    );
    let out = ok(&broker, &["group", "describe", GROUP]);
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "COMMITTED"), "0");
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "1"], "COMMITTED"), "5");
    let out = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-datetime",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(cell(&out, "TOPIC", &[TOPIC, "0"], "NEW"), "5");
    fails(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-datetime",
            "yesterday",
        ],
        "RFC 3339",
    );

    // An active member: reset --execute and delete are refused with a clear reason.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4")
        .create()
        .expect("group consumer");
    member.subscribe(&[TOPIC]).expect("subscribe");
    let started = Instant::now();
    while member.assignment().map_or(0, |a| a.count()) < 2 {
        assert!(
            started.elapsed() < GROUP_WAIT_TIMEOUT,
            "the consumer got no assignment"
        );
        let _ = member.poll(Duration::from_millis(100));
    }
    // Keep heartbeating from another thread while the CLI runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = member.poll(Duration::from_millis(100));
            }
            member.unsubscribe();
            drop(member);
        })
    };
    let out = ok(&broker, &["group", "describe", GROUP]);
    assert!(out.contains("State: Stable"), "{out}");
    assert!(out.contains("Members: 1"), "{out}");
    assert_ne!(cell(&out, "TOPIC", &[TOPIC, "0"], "MEMBER"), "-", "{out}");
    fails(
        &broker,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
            "--execute",
        ],
        "only be reset while the group is empty",
    );
    fails(&broker, &["group", "delete", GROUP], "active members");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().expect("poller thread");

    // Once the member has left, the group can be deleted.
    let started = Instant::now();
    loop {
        let out = ok(&broker, &["group", "describe", GROUP]);
        if out.contains("State: Empty") {
            break;
        }
        assert!(
            started.elapsed() < GROUP_WAIT_TIMEOUT,
            "group never became empty: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ok(&broker, &["group", "delete", GROUP]);
    assert!(out.contains("Deleted group cli-group"), "{out}");
    let out = ok(&broker, &["group", "list"]);
    assert!(row(&out, &[GROUP]).is_none(), "{out}");
    fails(&broker, &["group", "describe", GROUP], "does not exist");
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    let port = common::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args([
        "topic",
        "list",
        "--bootstrap-server",
        &format!("127.0.0.1:{port}"),
    ]);
    let output = run_with_timeout(&mut command, b"", COMMAND_TIMEOUT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("connecting to 127.0.0.1:{port}")),
        "{stderr}"
    );
}
