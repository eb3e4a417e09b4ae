//! The configuration file: `sluice config --defaults` prints a file that `sluice config --config`
//! accepts and echoes back with the same values; a value out of bounds is refused by both
//! `sluice config` and `sluice serve`; and a broker started with `--config` obeys the file
//! (partitions of auto-created topics, JSON log lines) while flags still override it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Broker, BrokerOptions, partition_count, run_with_timeout};

/// Longest one `sluice config` (or a refused `sluice serve`) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn sluice(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).env_remove("SLUICE_CONFIG");
    let output = run_with_timeout(&mut command, b"", RUN_TIMEOUT);
    eprintln!(
        "$ sluice {}\n{}{}({})",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

fn table(text: &[u8]) -> toml::Table {
    std::str::from_utf8(text)
        .expect("utf-8")
        .parse::<toml::Table>()
        .expect("TOML")
}

#[test]
fn printed_defaults_check_and_echo_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = sluice(&["config", "--defaults"]);
    assert!(defaults.status.success());
    let text = String::from_utf8(defaults.stdout.clone()).expect("utf-8");
    // Every setting carries its description, default and bounds.
    assert!(
        text.contains("# default: 0.0.0.0:9092; bounds: HOST:PORT"),
        "{text}"
    );
    assert!(text.contains("\nnum_partitions = 1\n"), "{text}");
    assert!(text.contains("log_json = false"), "{text}");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &defaults.stdout).expect("write");

    let echoed = sluice(&["config", "--config", path.to_str().unwrap()]);
    assert!(echoed.status.success());
    let printed = table(&defaults.stdout);
    let effective = table(&echoed.stdout);
    assert_eq!(printed, effective, "the defaults file gives the defaults");

    // An edited file: the change shows, the rest stays at the defaults.
    let edited = text.replace("\nnum_partitions = 1\n", "\nnum_partitions = 6\n");
    std::fs::write(&path, edited).expect("write");
    let echoed = sluice(&["config", "--config", path.to_str().unwrap()]);
    assert!(echoed.status.success());
    let effective = table(&echoed.stdout);
    assert_eq!(effective["num_partitions"].as_integer(), Some(6));
    assert_eq!(effective["listen"], printed["listen"]);

    // `sluice config` alone says what it needs.
    assert!(!sluice(&["config"]).status.success());
}

#[test]
fn out_of_bounds_and_unknown_settings_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("num_partitions = 0\n", "num_partitions"),
        ("segment_bytes = 100\n", "segment_bytes"),
        ("log_level = \"sluice=loud\"\n", "log_level"),
        ("no_such_setting = 1\n", "no_such_setting"),
    ];
    for (index, (body, named)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{index}.toml"));
        std::fs::write(&path, body).expect("write");
        let checked = sluice(&["config", "--config", path.to_str().unwrap()]);
        assert_eq!(checked.status.code(), Some(1), "{body}");
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert!(stderr.contains(named), "{body}: {stderr}");

        // The broker refuses it too, before binding anything.
        let data = dir.path().join(format!("data-{index}"));
        let served = sluice(&[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
        ]);
        assert!(
            !served.status.success() && served.status.code().is_some(),
            "{body}: serve exited with {}",
            served.status
        );
        let stderr = String::from_utf8_lossy(&served.stderr);
        assert!(stderr.contains(named), "{body}: {stderr}");
    }
}

#[test]
fn broker_obeys_the_file_and_flags_override_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    // `shards = 1` is overridden by the `--shards 2` every test broker gets.
    std::fs::write(
        &path,
        "num_partitions = 3\nlog_json = true\nlog_level = \"info\"\nshards = 1\n",
    )
    .expect("write");
    let mut broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--config".into(), path.to_str().unwrap().into()],
        ..BrokerOptions::default()
    });
    assert_eq!(partition_count(&broker.bootstrap(), "from-config"), 3);
    assert!(broker.stop(), "stops on SIGTERM");

    let log = broker.last_run_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{log}");
    let mut shards_seen = std::collections::BTreeSet::new();
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["fields"]["message"].is_string(), "{line}");
        if let Some(shard) = event["fields"]["shard"].as_str() {
            shards_seen.insert(shard.to_string());
        }
    }
    assert!(
        log.contains("sluice stopped cleanly"),
        "the stop is logged: {log}"
    );
    assert!(
        shards_seen.len() >= 2,
        "--shards 2 beat the file's shards = 1: {shards_seen:?}\n{log}"
    );
}
