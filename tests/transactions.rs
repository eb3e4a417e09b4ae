//! Transactions against a real broker with real clients: confluent-kafka (librdkafka 2.16)
//! and kafka-python (tests/clients/transactions.py), kafkajs (tests/clients/kafkajs_clients.js).
//!
//! - commit, abort, an open transaction holding read_committed back, fencing of a zombie, a
//!   timed-out transaction aborted by the coordinator, send_offsets_to_transaction in a group;
//! - a transaction left open at a `kill -9` is aborted after its timeout, the committed one
//!   before it stays;
//! - exactly-once consume-transform-produce: the copier killed several times and the broker
//!   killed with `kill -9` once; the output read with read_committed holds every input record
//!   exactly once, in input order per partition.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, Script, run_with_timeout, watermarks};

fn options() -> BrokerOptions {
    BrokerOptions {
        extra_args: vec![
            "--transaction-abort-interval-ms".into(),
            "300".into(),
            "--group-initial-rebalance-delay-ms".into(),
            "0".into(),
        ],
        ..Default::default()
    }
}

/// Run `transactions.py BOOTSTRAP args...` to completion; its stdout, or a panic with its
/// output and the broker's log.
fn run(broker: &Broker, args: &[&str], timeout_s: u64) -> String {
    let output = run_with_timeout(
        common::python_command("transactions.py")
            .arg(broker.bootstrap())
            .args(args),
        b"",
        Duration::from_secs(timeout_s),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "transactions.py {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    stdout
}

/// `sluice ARGS --bootstrap-server <broker>`: its stdout, or a panic with its output.
fn sluice_cli(broker: &Broker, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--bootstrap-server", broker.bootstrap().as_str()])
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "sluice {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn confluent_and_kafka_python_transactions() {
    let broker = Broker::start_with(options());
    for (mode, ok) in [
        ("commit-abort", "commit-abort ok"),
        ("zombie", "zombie ok"),
        ("timeout", "timeout ok"),
        ("offsets", "offsets ok"),
        ("kafka-python", "kafka-python ok"),
    ] {
        let out = run(&broker, &[mode], 150);
        assert!(out.contains(ok), "{mode}: {out}");
    }
    // The coordinator counted what it did.
    let (_, _, metrics) = broker.scrape("/metrics");
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        total("sluice_transactions_committed_total") >= 8.0,
        "{metrics}"
    );
    assert!(
        total("sluice_transactions_aborted_total") >= 4.0,
        "{metrics}"
    );
    assert!(
        total("sluice_transactions_timed_out_total") >= 1.0,
        "{metrics}"
    );
}

#[test]
fn kafkajs_transactions() {
    let broker = Broker::start_with(options());
    let output = run_with_timeout(
        &mut common::kafkajs_command(&broker.bootstrap(), &["transactions"]),
        b"",
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("kafkajs transactions ok"),
        "kafkajs transactions failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
}

#[test]
fn a_transaction_open_at_kill_9_is_aborted_after_its_timeout() {
    let mut broker = Broker::start_with(options());
    let open = Script::spawn(&broker.bootstrap(), &["leave-open", "txn-crash"]);
    assert!(
        open.wait_for("left open", 1, Duration::from_secs(60)),
        "the producer did not open its transaction\nbroker log:\n{}",
        broker.logs_text()
    );
    // The tools see it open: ListTransactions, DescribeTransactions, DescribeProducers.
    let listed = sluice_cli(&broker, &["txn", "list", "--state", "Ongoing"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("txn-left-open") && l.ends_with("Ongoing")),
        "{listed}"
    );
    let described = sluice_cli(&broker, &["txn", "describe", "txn-left-open"]);
    assert!(described.contains("Ongoing, producer"), "{described}");
    assert!(described.contains("txn-crash"), "{described}");
    // Every partition of it holds an open transaction starting at an offset.
    let starts = described
        .lines()
        .filter(|l| l.starts_with("txn-crash"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or("-").to_string())
        .collect::<Vec<_>>();
    assert!(
        !starts.is_empty() && starts.iter().all(|s| s.parse::<i64>().is_ok()),
        "{described}"
    );
    broker.kill9();
    open.kill();
    broker.restart();
    run(&broker, &["plain", "txn-crash", "after", "5"], 60);
    // The restarted coordinator aborts the open transaction once its 3 s timeout passed;
    // until then read_committed stops at it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = run_with_timeout(
            common::python_command("transactions.py").args([
                broker.bootstrap().as_str(),
                "expect",
                "txn-crash",
                "c:10",
                "after:5",
            ]),
            b"",
            Duration::from_secs(60),
        );
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read_committed never settled\nstderr:\n{}\nbroker log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(broker.logs_contain("transaction timed out: aborting"));
}

/// `kill -9` between a durable PrepareCommit and its markers: the restarted coordinator
/// writes the markers, and read_committed sees the whole transaction.
#[test]
fn a_commit_prepared_at_kill_9_completes_after_restart() {
    let mut opts = options();
    opts.env = vec![("SLUICE_TEST_TXN_MARKER_DELAY_MS".into(), "60000".into())];
    let mut broker = Broker::start_with(opts);
    let committing = Script::spawn(&broker.bootstrap(), &["commit-slow", "txn-prepared"]);
    assert!(
        committing.wait_for("committing", 1, Duration::from_secs(60)),
        "the producer did not reach its commit\nbroker log:\n{}",
        broker.logs_text()
    );
    // EndTxn is in: its PrepareCommit is durable, its markers wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sluice_cli(&broker, &["txn", "list", "--state", "PrepareCommit"])
        .contains("txn-commit-slow")
    {
        assert!(
            Instant::now() < deadline,
            "the transaction never reached PrepareCommit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.kill9();
    committing.kill();
    broker.set_env(Vec::new());
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = run_with_timeout(
            common::python_command("transactions.py").args([
                broker.bootstrap().as_str(),
                "expect",
                "txn-prepared",
                "p:10",
            ]),
            b"",
            Duration::from_secs(60),
        );
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the prepared commit never completed\nstderr:\n{}\nbroker log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = sluice_cli(&broker, &["txn", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("txn-commit-slow") && l.ends_with("CompleteCommit")),
        "{listed}"
    );
}

#[test]
fn exactly_once_copy_survives_killed_copiers_and_a_broker_kill_9() {
    const N: &str = "6000";
    let mut broker = Broker::start_with(options());
    run(&broker, &["seed", "eos-in", N], 120);
    for cycle in 0..4 {
        let copier = Script::spawn(&broker.bootstrap(), &["copy", "eos-in", "eos-out"]);
        let progressed = copier.wait_for("committed", 3, Duration::from_secs(60));
        if cycle == 1 {
            // The broker dies under the copier, mid-transaction or mid-commit.
            broker.kill9();
            broker.restart();
        }
        copier.kill();
        assert!(
            progressed || cycle == 1,
            "copier cycle {cycle} made no progress\nbroker log:\n{}",
            broker.logs_text()
        );
    }
    let out = run(&broker, &["copy", "eos-in", "eos-out"], 200);
    assert!(out.contains("copy done"), "{out}");
    let out = run(&broker, &["verify", "eos-in", "eos-out", N], 120);
    assert!(out.contains("verify ok"), "{out}");
}

/// `benches/transactions.py` in smoke mode (its figures are the closing note's, not checked).
#[test]
fn transactions_bench_smoke() {
    let broker = Broker::start_with(options());
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/.venv/bin/python3");
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/transactions.py");
    let output = run_with_timeout(
        std::process::Command::new(python)
            .arg(bench)
            .arg(broker.bootstrap())
            .args(["--seconds", "0.3", "--sizes", "1,10"]),
        b"",
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("transactions bench ok"),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("txn/plain rounds per second"), "{stdout}");
}

/// `__transaction_state` stays bounded: with 4 KiB segments, the shard's log cleaner keeps
/// the latest state of each transactional id; after a `kill -9` every transactional id reads
/// back with its latest state and epoch.
#[test]
fn transaction_states_are_compacted_and_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "retention_check_interval_ms = 200\nlog_cleaner_backoff_ms = 100\n",
    )
    .expect("config");
    let mut opts = options();
    opts.extra_args.extend([
        "--config".into(),
        config.to_str().unwrap().into(),
        "--transaction-state-partitions".into(),
        "1".into(),
        "--offsets-topic-segment-bytes".into(),
        "4096".into(),
    ]);
    let mut broker = Broker::start_with(opts);
    run(&broker, &["init-only", "txn-idle"], 60);
    run(&broker, &["many-txns", "txn-many-out", "300"], 120);
    let (_, high) = watermarks(&broker.bootstrap(), "__transaction_state", 0);
    let size = || {
        let (_, _, text) = broker.scrape("/metrics");
        text.lines()
            .find(|l| {
                l.starts_with("sluice_partition_size_bytes{")
                    && l.contains("topic=\"__transaction_state\",partition=\"0\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("the size of __transaction_state/0")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = size();
        if bytes <= 3 * 4096 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "__transaction_state was not compacted ({bytes} bytes, {high} records)\nbroker log:\n{}",
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(broker.logs_contain("log cleaner pass"));
    broker.kill9();
    broker.restart();
    let idle = sluice_cli(&broker, &["txn", "describe", "txn-idle"]);
    assert!(idle.contains("Empty, producer"), "{idle}");
    assert!(idle.contains("epoch 0"), "{idle}");
    let many = sluice_cli(&broker, &["txn", "describe", "txn-many"]);
    assert!(many.contains("CompleteCommit, producer"), "{many}");
    assert!(many.contains("epoch 0"), "{many}");
    // The epoch carries on from the recovered state.
    run(&broker, &["many-txns", "txn-many-out", "1"], 60);
    let many = sluice_cli(&broker, &["txn", "describe", "txn-many"]);
    assert!(many.contains("epoch 1"), "{many}");
}

/// An idle transactional id is forgotten after `transactional_id_expiration_ms`: its state is
/// tombstoned (through a restart), the tools no longer find it, and it can be used again.
#[test]
fn idle_transactional_ids_expire() {
    let mut opts = options();
    opts.extra_args
        .extend(["--transactional-id-expiration-ms".into(), "1000".into()]);
    let mut broker = Broker::start_with(opts);
    run(&broker, &["init-only", "txn-expiring"], 60);
    let first = sluice_cli(&broker, &["txn", "describe", "txn-expiring"]);
    assert!(first.contains("Empty, producer"), "{first}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["txn", "describe", "txn-expiring", "--bootstrap-server"])
            .arg(broker.bootstrap())
            .output()
            .expect("run sluice");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("does not exist") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle id did not expire\n{}",
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(broker.logs_contain("transactional id expired"));
    // The tombstone survives a restart.
    broker.kill9();
    broker.restart();
    assert!(!sluice_cli(&broker, &["txn", "list"]).contains("txn-expiring"));
    // Used again, it starts afresh.
    run(&broker, &["init-only", "txn-expiring"], 60);
}

/// A transactional batch no coordinator knows of (written without AddPartitionsToTxn) would
/// hold the partition's last stable offset forever; once it is older than any coordinator
/// allows, the partition aborts it, and read_committed consumers move on.
#[test]
fn a_hanging_transaction_is_aborted_by_its_partition() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
        TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "retention_check_interval_ms = 200\n").expect("config");
    let mut opts = options();
    opts.extra_args.extend([
        "--config".into(),
        config.to_str().unwrap().into(),
        "--transaction-max-timeout-ms".into(),
        "1000".into(),
    ]);
    let broker = Broker::start_with(opts);
    run(&broker, &["seed", "txn-hang", "10"], 60);

    // An idempotent producer id, then a batch marked transactional: no coordinator holds it.
    let mut stream = common::connect_raw(broker.addr()).expect("connect");
    let decode = |stream: &mut std::net::TcpStream, key: i16, version: i16| {
        let payload = common::read_frame(stream).expect("read response");
        let api = kafka_protocol::messages::ApiKey::try_from(key).expect("api key");
        let mut buf = bytes::Bytes::from(payload);
        kafka_protocol::messages::ResponseHeader::decode(
            &mut buf,
            api.response_header_version(version),
        )
        .expect("header");
        buf
    };
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    std::io::Write::write_all(&mut stream, &common::encode_request(&init, 4, 1)).expect("write");
    let mut buf = decode(&mut stream, 22, 4);
    let init = InitProducerIdResponse::decode(&mut buf, 4).expect("InitProducerId");
    assert_eq!(init.error_code, 0);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = common::record_batch(
        (init.producer_id.0, init.producer_epoch, 0),
        ts,
        vec![bytes::Bytes::from_static(b"hanging")],
    );
    let mut batch = batch.to_vec();
    batch[22] |= 0x10; // attributes: transactional
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("txn-hang")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(batch))),
                ]),
        ]);
    std::io::Write::write_all(&mut stream, &common::encode_request(&produce, 9, 2)).expect("write");
    let mut buf = decode(&mut stream, 0, 9);
    let produced = ProduceResponse::decode(&mut buf, 9).expect("Produce");
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);

    run(&broker, &["plain", "txn-hang", "after", "5"], 60);
    // The partition aborts it once it is older than 1 s + 2 abort intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !broker.logs_contain("aborting a hanging transaction") {
        assert!(
            Instant::now() < deadline,
            "the hanging transaction was not aborted\nbroker log:\n{}",
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    loop {
        let output = run_with_timeout(
            common::python_command("transactions.py").args([
                broker.bootstrap().as_str(),
                "expect",
                "txn-hang",
                "in-:10",
                "after:5",
            ]),
            b"",
            Duration::from_secs(60),
        );
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read_committed never got past the hanging transaction\nstderr:\n{}\nbroker log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
