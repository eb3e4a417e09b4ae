//! librdkafka's own integration suite as a test of ours: its quick subset (produce, consume,
//! offsets, groups; 0030 among them, which commits offsets asynchronously and reads them back)
//! runs against a broker of this build through `tools/librdkafka-suite.sh --quick`. The script
//! builds librdkafka's `test-runner` from the source inside the rdkafka-sys crate on first use
//! (a few minutes, then cached under the target directory). `tools/librdkafka-suite.sh --all`
//! runs the whole set and prints the per-test table.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Broker, BrokerOptions, run_with_timeout};

/// The first run builds librdkafka and its test-runner; the quick set itself takes minutes.
const SUITE_TIMEOUT: Duration = Duration::from_secs(40 * 60);

#[test]
fn librdkafka_quick_suite_passes() {
    // The suite expects `num.partitions=4` for auto-created topics, and its clusters start
    // group rebalances without delay.
    let broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(4),
        extra_args: vec!["--group-initial-rebalance-delay-ms".into(), "0".into()],
        ..BrokerOptions::default()
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/librdkafka-suite.sh");
    let output = run_with_timeout(
        Command::new(script)
            .arg("--bootstrap")
            .arg(broker.bootstrap())
            .arg("--quick")
            .env("CARGO_TARGET_DIR", target_dir()),
        b"",
        SUITE_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "librdkafka's quick suite failed\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("0030 0030_offset_commit") && l.contains("PASSED")),
        "0030 did not run:\n{stdout}"
    );
}

/// The target directory this test was built in (`target/release/deps/<test>` → `target`).
fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}
