//! `tuning/sluice.service`: systemd accepts the unit without a warning (`systemd-analyze
//! verify`), and its `ExecStart=` command, run as written (the binary and the config path
//! pointed at this build and a config made the README's way), serves Kafka clients and stops
//! with exit status 0 on the unit's `KillSignal=` well within its `TimeoutStopSec=`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, raw_api_versions_v0, run_with_timeout, wait_child};

const UNIT: &str = include_str!("../tuning/sluice.service");
/// Where the unit expects the binary and the config file.
const UNIT_BINARY: &str = "/usr/local/bin/sluice";
const UNIT_CONFIG: &str = "/etc/sluice/sluice.toml";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of the first uncommented `key=` line of the unit.
fn directive<'a>(key: &str) -> &'a str {
    let prefix = format!("{key}=");
    UNIT.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// The unit with its binary path replaced by this build's.
fn unit_for_this_build() -> String {
    UNIT.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn systemd_accepts_the_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit_for_this_build()).expect("write unit");
    let output = run_with_timeout(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("SYSTEMD_LOG_COLOR", "0"),
        b"",
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed ({}): {stderr}",
        output.status
    );
    // Unknown keys and unparsable values are only warnings: refuse those too.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sluice.service"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd warns about the unit: {warnings:#?}"
    );
}

#[test]
fn exec_start_serves_and_stops_on_the_kill_signal() {
    assert_eq!(directive("KillSignal"), "SIGTERM");
    let stop_timeout: u64 = directive("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");

    // The config as README.md makes it: the printed defaults with data_dir changed; here also
    // the listeners, so the test owns its ports.
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("var-lib-sluice");
    let port = free_port();
    let defaults = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["config", "--defaults"])
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("sluice config --defaults");
    assert!(defaults.status.success());
    let config: String = String::from_utf8(defaults.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some(("data_dir", _)) => format!("data_dir = {:?}", data_dir.display().to_string()),
            Some(("listen", _)) => format!("listen = \"127.0.0.1:{port}\""),
            Some(("metrics_listen", _)) => "metrics_listen = \"\"".to_string(),
            _ => line.to_string(),
        })
        .map(|line| line + "\n")
        .collect();
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, config).expect("write config");

    let exec_start = directive("ExecStart")
        .replace(UNIT_BINARY, env!("CARGO_BIN_EXE_sluice"))
        .replace(UNIT_CONFIG, config_path.to_str().unwrap());
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    let log = std::fs::File::create(dir.path().join("broker.log")).expect("log");
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .env_remove("SLUICE_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn ExecStart");
    let log_text = || std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();

    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let started = Instant::now();
    let mut ready = false;
    for attempt in 0..200 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("ExecStart exited with {status}:\n{}", log_text());
        }
        if raw_api_versions_v0(addr, attempt).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "ExecStart never served ApiVersions:\n{}", log_text());
    assert!(Path::new(&data_dir).join("__cluster").exists());

    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_child(&mut child, Duration::from_secs(stop_timeout));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "not stopped within TimeoutStopSec={stop_timeout}s:\n{}",
            log_text()
        );
    };
    assert!(status.success(), "exit status {status}:\n{}", log_text());
    assert!(
        log_text().contains("sluice stopped cleanly"),
        "{}",
        log_text()
    );
}
