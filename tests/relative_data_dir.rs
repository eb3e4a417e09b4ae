//! The README's start command runs with a relative data directory
//! (`./data`); the broker must work from one, including creating topics.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, producer_config, raw_api_versions_v0, wait_child, watermarks};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[test]
fn relative_data_dir_serves_and_creates_topics() {
    let temp = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--shards", "2", "--data-dir", "data"])
        .args(["--listen", &addr.to_string()])
        .current_dir(temp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn broker");
    let started = Instant::now();
    while raw_api_versions_v0(addr, 1).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "broker not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bootstrap = addr.to_string();
    let producer: BaseProducer = producer_config(&bootstrap).create().expect("producer");
    for i in 0..10 {
        producer
            .send(
                BaseRecord::to("relative")
                    .key("k")
                    .payload(&format!("v{i}")),
            )
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(20)).expect("flush");
    assert_eq!(watermarks(&bootstrap, "relative", 0), (0, 10));
    assert!(temp.path().join("data").join("relative-0").is_dir());
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    if wait_child(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        panic!("broker did not stop on SIGTERM");
    }
}
