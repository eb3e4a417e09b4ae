//! End to end against a real Sluice broker: a short fixed-rate run, then
//! `compare` on its report.
//!
//! Needs the broker binary: run `cargo build --release --bin sluice` (or a
//! debug build) first. It is looked up at `<target dir>/{release,debug}/sluice`
//! (the newer of the two), or at `$SLUICE_BIN`. A missing binary fails the
//! test: this is not a test that may silently skip in CI.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound on the whole run (3 s measured plus setup and drain).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn sluice_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    // This test runs as <target>/<profile>/deps/against_sluice-<hash>, so <target> is
    // found whatever CARGO_TARGET_DIR says.
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let candidates = [target.join("release/sluice"), target.join("debug/sluice")];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "Sluice broker binary not found at {:?}: run `cargo build --release --bin sluice` \
                 before this test (or set SLUICE_BIN)",
                candidates
            )
        })
}

/// A broker on a free loopback port, killed on drop. Its log is kept in its temp dir and
/// printed if the test fails while it runs.
struct Broker {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

/// A loopback port that binds now, below the kernel's ephemeral range. A port from the range
/// (`bind 127.0.0.1:0`) can be handed to an outgoing connection of the test run before the
/// broker binds it, or be picked again by the script test running beside this one; a connect
/// to it can even succeed against itself (TCP simultaneous open) with no broker listening.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    const FLOOR: u32 = 10_000;
    if low > FLOOR + 1_000 {
        let seed = std::process::id().wrapping_mul(7_919).wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
        for attempt in 0..2_000u32 {
            let port =
                (FLOOR + seed.wrapping_add(attempt.wrapping_mul(7_907)) % (low - FLOOR)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    fn start() -> Broker {
        let data = tempfile::tempdir().unwrap();
        // Glommio listeners use SO_REUSEPORT, so a port "in use" would not fail to bind: take
        // one that is free now.
        let port = free_port();
        let log = std::fs::File::create(data.path().join("broker.log")).unwrap();
        let child = Command::new(sluice_binary())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                "2",
                "--metrics-listen",
                "",
            ])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        let mut b = Broker { child, port, data };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                // A connection to itself is not the broker.
                if s.local_addr().ok() != s.peer_addr().ok() {
                    break;
                }
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("sluice exited before listening ({status}):\n{}", b.log());
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not listen on {port}:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== sluice broker log =====\n{}", self.log());
        }
    }
}

/// Run the tool with a time bound; panics with its output on failure.
fn sluice_load(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice-load {args:?} did not finish in {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "sluice-load {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

fn check_monotonic(curve: &Value, what: &str) {
    let pts = curve.as_array().unwrap();
    assert!(!pts.is_empty(), "{what}: empty curve");
    for w in pts.windows(2) {
        assert!(
            w[1]["value_ms"].as_f64() >= w[0]["value_ms"].as_f64(),
            "{what}"
        );
        assert!(
            w[1]["percentile"].as_f64() >= w[0]["percentile"].as_f64(),
            "{what}"
        );
    }
}

fn check_summary(s: &Value, what: &str) {
    assert!(s["count"].as_u64().unwrap() > 0, "{what}: no samples");
    let keys = [
        "p50_ms",
        "p75_ms",
        "p95_ms",
        "p99_ms",
        "p99_9_ms",
        "p99_99_ms",
        "max_ms",
    ];
    let v: Vec<f64> = keys.iter().map(|k| s[k].as_f64().unwrap()).collect();
    assert!(v[0] > 0.0, "{what}: p50 is 0");
    for w in v.windows(2) {
        assert!(w[1] >= w[0], "{what}: percentiles not monotonic: {v:?}");
    }
}

#[test]
fn fixed_rate_run_against_sluice_then_compare() {
    let broker = Broker::start();
    let out = tempfile::tempdir().unwrap();
    let run_dir = out.path().join("sluice-2000");
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    // One partition: multi-partition Produce requests spanning both shards
    // can stall in the current broker (see tools/sluice-load/README.md).
    let stdout = sluice_load(&[
        "run",
        "--bootstrap-server",
        &bootstrap,
        "--rate",
        "2000",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--partitions",
        "1",
        "--message-size",
        "256",
        "--drain-timeout",
        "10s",
        "--request-timeout",
        "10s",
        "--output",
        run_dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("exactly once"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap())
            .unwrap();
    // Self-describing.
    assert!(
        report["command_line"]
            .as_str()
            .unwrap()
            .contains("--rate 2000")
    );
    assert!(report["host"]["cores"].as_u64().unwrap() >= 1);
    assert!(
        !report["broker"]["api_versions"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Reaches its target rate within 10%.
    let rate = report["produce"]["msgs_per_s"].as_f64().unwrap();
    assert!((1800.0..=2200.0).contains(&rate), "produce rate {rate}");
    let consumed = report["consume"]["msgs_per_s"].as_f64().unwrap();
    assert!(
        (1800.0..=2200.0).contains(&consumed),
        "consume rate {consumed}"
    );

    // Every produced message consumed exactly once.
    let d = &report["delivery"];
    assert_eq!(d["sent"], d["acked"], "{d}");
    assert_eq!(d["produce_errors"], 0, "{d}");
    assert_eq!(d["acked"], d["consumed_unique"], "{d}");
    assert_eq!(d["duplicates"], 0, "{d}");
    assert_eq!(d["missing"], 0, "{d}");
    assert_eq!(d["exactly_once"], true, "{d}");
    assert!(d["acked"].as_u64().unwrap() >= 7_500, "{d}");

    // Histograms non-empty with monotonic percentiles, in the report and
    // in the .hgrm files.
    for metric in ["publish_latency", "end_to_end_latency"] {
        let l = &report[metric];
        check_summary(&l["corrected"], metric);
        check_summary(&l["uncorrected"], metric);
        check_monotonic(&l["corrected_curve"], metric);
        for f in ["corrected_file", "uncorrected_file"] {
            let text = std::fs::read_to_string(run_dir.join(l[f].as_str().unwrap())).unwrap();
            assert!(text.contains("Percentile TotalCount 1/(1-Percentile)"));
            assert!(text.contains("#[Max     ="));
        }
        // Corrected latency is never below uncorrected.
        assert!(
            l["corrected"]["p99_ms"].as_f64() >= l["uncorrected"]["p99_ms"].as_f64(),
            "{metric}"
        );
    }

    // compare writes SVG and PNG (the same run twice is a valid comparison).
    let prefix = out.path().join("cmp");
    let stdout = sluice_load(&[
        "compare",
        run_dir.to_str().unwrap(),
        run_dir.join("report.json").to_str().unwrap(),
        "--output",
        prefix.to_str().unwrap(),
    ]);
    assert!(stdout.contains("produce msgs/s"), "{stdout}");
    assert!(stdout.contains("1.00x"), "{stdout}");
    let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("99.9%"), "svg");
    let png = std::fs::read(prefix.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "png too small: {}", png.len());
}

/// `benches/compare.sh` in smoke mode (`QUICK=1`): the host measures (fio, iperf3), Sluice
/// started by the script, the reduced workload matrix, one report. Checks that every section
/// is there and every workload produced numbers, not that they are fast (benchmarks, not
/// timed tests).
#[test]
fn compare_script_smoke() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/compare.sh");
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .arg(&script)
        .env("QUICK", "1")
        .env("SLUICE", sluice_binary())
        .env("LOAD", env!("CARGO_BIN_EXE_sluice-load"))
        .env("OUT", out.path())
        .env("DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("benches/compare.sh did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "compare.sh failed\nstderr:\n{stderr}"
    );
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in ["## Host limits", "## Workloads", "## Partition sweep"] {
        assert!(report.contains(section), "no {section:?} in\n{report}");
    }
    assert!(
        !report.contains("failed"),
        "a workload failed:\n{report}\n{stderr}"
    );
    for workload in [
        "produce-16p",
        "produce-consume-16p",
        "partitions-16",
        "partitions-256",
        "latency-5000",
        "latency-half-max",
    ] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {workload} | sluice |")))
            .unwrap_or_else(|| panic!("no row for {workload} in\n{report}"));
        let produce: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(produce > 0.0, "{workload} produced nothing: {row}");
        let cpu = row.split('|').nth(8).unwrap().trim();
        assert!(
            cpu.parse::<f64>().is_ok(),
            "{workload} has no CPU figure: {row}"
        );
    }
    // The catch-up read from disk consumed something.
    let row = report
        .lines()
        .find(|l| l.starts_with("| fetch-disk-16p | sluice |"))
        .unwrap_or_else(|| panic!("no catch-up row in\n{report}"));
    let consume: f64 = row.split('|').nth(4).unwrap().trim().parse().unwrap();
    assert!(consume > 0.0, "the catch-up read consumed nothing: {row}");
    let fio_seq = report
        .lines()
        .find(|l| l.contains("sequential write, qd 1"))
        .unwrap();
    let mbs: f64 = fio_seq.split('|').nth(2).unwrap().trim().parse().unwrap();
    assert!(mbs > 0.0, "fio measured nothing: {fio_seq}");
    assert!(out.path().join("latency.svg").exists(), "no latency chart");
}
