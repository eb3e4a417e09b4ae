//! Python clients against a real broker: confluent-kafka (current
//! librdkafka) and kafka-python (pure Python). The client code lives in
//! tests/clients/python_clients.py; `tools/test.sh` installs the packages.

mod common;

use std::time::Duration;

use common::{Broker, run_with_timeout};

#[test]
fn python_clients_round_trip() {
    let broker = Broker::start();
    let output = run_with_timeout(
        common::python_command("python_clients.py").arg(broker.bootstrap()),
        b"",
        Duration::from_secs(150),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python clients failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.logs_text()
    );
    assert!(stdout.contains("confluent-kafka round trip ok"), "{stdout}");
    assert!(stdout.contains("kafka-python round trip ok"), "{stdout}");
}
