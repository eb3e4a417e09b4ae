//! kafkajs (pure JavaScript) against a real broker: admin, producer, and a
//! two-member consumer group. The client code lives in
//! tests/clients/kafkajs_clients.js; `.ci/run` installs its npm packages.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Broker, BrokerOptions, run_with_timeout};

#[test]
fn kafkajs_round_trip_with_group() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--group-initial-rebalance-delay-ms".into(), "200".into()],
        ..BrokerOptions::default()
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let output = run_with_timeout(
        Command::new("node")
            .arg(format!("{dir}/kafkajs_clients.js"))
            .arg(broker.bootstrap())
            .current_dir(dir),
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
