//! kafkajs (pure JavaScript) against a real broker: admin, producer, and a
//! two-member consumer group. The client code lives in
//! tests/clients/kafkajs_clients.js; `tools/test.sh` installs its pinned npm packages.

mod common;

use std::time::Duration;

use common::{Broker, BrokerOptions, kafkajs_command, run_with_timeout};

#[test]
fn kafkajs_round_trip_with_group() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--group-initial-rebalance-delay-ms".into(), "200".into()],
        ..BrokerOptions::default()
    });
    let output = run_with_timeout(
        &mut kafkajs_command(&broker.bootstrap(), &[]),
        b"",
        Duration::from_secs(150),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kafkajs failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(stdout.contains("kafkajs round trip ok"), "{stdout}");
}

/// kafkajs in idempotent mode while the broker restarts under it: no
/// duplicates, no gaps, order kept per key.
#[test]
fn kafkajs_idempotent_producer_across_restart() {
    let mut broker = Broker::start_with(BrokerOptions {
        num_partitions: Some(3),
        extra_args: vec!["--group-initial-rebalance-delay-ms".into(), "200".into()],
        ..BrokerOptions::default()
    });
    let mut child = kafkajs_command(&broker.bootstrap(), &["idempotent"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node");
    // Let the producer get going, then restart the broker under it.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(broker.stop(), "broker did not stop on SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    let status = common::wait_child(&mut child, Duration::from_secs(120));
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.is_some_and(|s| s.success()),
        "kafkajs idempotent run failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(stdout.contains("kafkajs idempotent ok"), "{stdout}");
}
