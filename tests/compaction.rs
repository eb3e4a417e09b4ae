//! Log compaction against a real broker with a real client (confluent-kafka,
//! `tests/clients/compaction.py`): keyed topics with `cleanup.policy=compact` and 16 KiB
//! segments take many updates of a bounded set of keys and tombstones, in every codec; the
//! shard's log cleaner compacts them. A Kafka Streams-style restore (from the beginning to the
//! end) then returns exactly the table: the latest value of every live key, the tombstones
//! while `delete.retention.ms` lasts and none after it, offsets increasing with gaps; the
//! partition shrinks to about its live data; Debian's kcat (librdkafka 2.0.2) reads the same
//! records. A record without a key is refused. Aborted
//! transactions' records go and committed ones stay. A `kill -9` while the cleaner works
//! loses nothing and leaves a readable log.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, python_command};

const ROUNDS: u32 = 30;
const KEYS: u32 = 100;
const SEGMENT_BYTES: u64 = 16 * 1024;
const WAIT: Duration = Duration::from_secs(60);

/// Run `compaction.py BOOTSTRAP args...` to its end; its stdout, or a panic with its stderr
/// and the broker's log.
fn script(broker: &Broker, args: &[&str]) -> String {
    let out = python_command("compaction.py")
        .arg(broker.bootstrap())
        .args(args)
        .output()
        .expect("run compaction.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "compaction.py {args:?} failed:\n{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.last_run_log()
    );
    stdout
}

/// `sluice_partition_size_bytes` of `topic`/0.
fn partition_bytes(broker: &Broker, topic: &str) -> u64 {
    let (status, _, text) = broker.scrape("/metrics");
    assert_eq!(status, 200);
    let series = format!("topic=\"{topic}\",partition=\"0\"}}");
    text.lines()
        .find(|l| l.starts_with("sluice_partition_size_bytes{") && l.contains(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no size of {topic}/0 in:\n{text}"))
}

/// Wait until `topic`/0 is at most `bound` bytes.
fn wait_compacted(broker: &Broker, topic: &str, bound: u64) -> u64 {
    let started = Instant::now();
    loop {
        let bytes = partition_bytes(broker, topic);
        if bytes <= bound {
            return bytes;
        }
        assert!(
            started.elapsed() < WAIT,
            "{topic} not compacted within {WAIT:?}: {bytes} bytes:\n{}",
            broker.last_run_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn broker(extra_config: &str) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("log_cleaner_backoff_ms = 100\nretention_check_interval_ms = 200\n{extra_config}"),
    )
    .expect("config");
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--config".into(), config.to_str().expect("utf-8").into()],
        ..BrokerOptions::default()
    });
    (dir, broker)
}

#[test]
fn compacted_topics_keep_the_latest_value_of_every_key_in_every_codec() {
    let (_dir, broker) = broker("");
    let rounds = ROUNDS.to_string();
    let keys = KEYS.to_string();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        // Tombstones stay for a day on "none", go at once on the others.
        let (retention, tombstones) = if codec == "none" {
            ("86400000", "tombstones=kept")
        } else {
            ("0", "tombstones=gone")
        };
        let topic = format!("table-{codec}");
        script(&broker, &["create", &topic, retention]);
        let produced = script(&broker, &["produce", &topic, codec, &rounds, &keys]);
        let total = partition_bytes(&broker, &topic);
        // Live data: 90 keys of ~100-byte records, plus the tombstones, in a few batches;
        // the active segment is never cleaned.
        let bytes = wait_compacted(&broker, &topic, 3 * SEGMENT_BYTES);
        let restored = script(&broker, &["restore", &topic, &rounds, &keys, tombstones]);
        eprintln!(
            "{codec}: {}, {total} bytes when the producer finished, {bytes} once compacted; restore: {}",
            produced.trim(),
            restored.trim()
        );
        assert!(
            restored.contains("GAPS") && !restored.contains("GAPS 0 "),
            "{codec}: a compacted log has gaps: {restored}"
        );
        // The old client (Debian's kcat, librdkafka 2.0.2) reads the compacted log as the
        // new one does: the same records, offsets increasing.
        let records: usize = restored
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("RECORDS n");
        let out = std::process::Command::new("timeout")
            .args(["60", "kcat", "-b", &broker.bootstrap()])
            .args([
                "-X",
                "socket.timeout.ms=10000",
                "-C",
                "-t",
                &topic,
                "-p",
                "0",
            ])
            .args(["-o", "beginning", "-e", "-q", "-f", "%o %k\\n"])
            .output()
            .expect("run kcat (apt-get install kcat; .ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{codec}: kcat failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let offsets: Vec<i64> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(offsets.len(), records, "{codec}: kcat read:\n{text}");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{codec}: kcat offsets do not increase"
        );
    }
    assert!(
        broker.last_run_log().contains("log cleaner pass"),
        "each pass is logged"
    );
    let refused = script(&broker, &["keyless", "table-none"]);
    assert!(refused.contains("REFUSED"), "{refused}");

    // `sluice topic describe --metrics` shows the cleaner's state.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["topic", "--bootstrap-server", &broker.bootstrap()])
        .args(["describe", "table-zstd", "--metrics"])
        .arg(broker.metrics_addr().to_string())
        .output()
        .expect("run sluice topic describe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("Log cleaner:"))
        .nth(2)
        .unwrap_or_else(|| panic!("no cleaner state in:\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[0], "0", "{row}");
    let passes: u64 = cells[4].parse().expect("passes");
    assert!(
        passes >= 1 && cells[5] == "0",
        "passes and no failures: {row}"
    );
    assert!(row.ends_with("ago"), "{row}");
}

#[test]
fn the_cleaner_removes_aborted_transactions_and_keeps_committed_ones() {
    let (_dir, broker) = broker("");
    let topic = "table-txn";
    let rounds = "12";
    let keys = "50";
    script(&broker, &["create", topic, "0"]);
    let produced = script(&broker, &["txn-produce", topic, rounds, keys]);
    let bytes = wait_compacted(&broker, topic, 3 * SEGMENT_BYTES);
    // Once compacted, the restore finds no aborted record even with read_uncommitted.
    let started = Instant::now();
    loop {
        let out = python_command("compaction.py")
            .args([&broker.bootstrap(), "txn-restore", topic, rounds, keys])
            .output()
            .expect("run compaction.py");
        if out.status.success() {
            eprintln!(
                "{} compacted to {bytes} bytes: {}",
                produced.trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "aborted records left: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            broker.last_run_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn kill_9_while_the_cleaner_works_loses_nothing() {
    // A slow cleaner (256 KiB/s), so the kills land in the middle of passes.
    let (_dir, mut broker) = broker("log_cleaner_io_max_bytes_per_sec = 262144\n");
    let topic = "table-kill";
    let rounds = (ROUNDS * 6).to_string();
    let keys = KEYS.to_string();
    script(&broker, &["create", topic, "0"]);
    script(&broker, &["produce", topic, "lz4", &rounds, &keys]);
    for (i, after) in [700u64, 1_300, 2_100].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(after));
        broker.kill9();
        broker.restart();
        let restored = script(
            &broker,
            &["restore", topic, &rounds, &keys, "tombstones=any"],
        );
        let log = broker.last_run_log();
        let mid_pass = log.contains("log cleaner swap a crash interrupted")
            || log.contains("log cleaner file a crash left");
        eprintln!(
            "after kill -9 #{i} (mid-pass files found: {mid_pass}): {}",
            restored.trim()
        );
    }
    let bytes = wait_compacted(&broker, topic, 3 * SEGMENT_BYTES);
    let restored = script(
        &broker,
        &["restore", topic, &rounds, &keys, "tombstones=gone"],
    );
    eprintln!("compacted to {bytes} bytes: {}", restored.trim());
}
