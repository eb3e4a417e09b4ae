//! Admin APIs through real client libraries: confluent-kafka's AdminClient
//! (Python: topic configs, CreatePartitions, DeleteRecords,
//! DescribeCluster) and kafkajs admin (createPartitions, describeConfigs,
//! alterConfigs, deleteTopicRecords). The client code lives in
//! tests/clients/; `tools/test.sh` (the README's test command) installs the pinned Python and
//! npm packages.

mod common;

use std::time::Duration;

use common::{Broker, run_with_timeout};

#[test]
fn python_confluent_admin() {
    let broker = Broker::start();
    let output = run_with_timeout(
        common::python_command("python_clients.py")
            .arg(broker.bootstrap())
            .arg("admin"),
        b"",
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python admin failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(stdout.contains("confluent-kafka admin ok"), "{stdout}");
}

#[test]
fn kafkajs_admin() {
    let broker = Broker::start();
    let output = run_with_timeout(
        &mut common::kafkajs_command(&broker.bootstrap(), &["admin"]),
        b"",
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kafkajs admin failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(stdout.contains("kafkajs admin ok"), "{stdout}");
}
