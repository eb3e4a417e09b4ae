//! Disk faults on a real file system: a broker whose data directory is a small ext4 file
//! system on a loop device that the test creates, fills, breaks and removes (root and loop
//! devices needed; without them the tests say so and pass).
//!
//! - Disk full: produce gets KAFKA_STORAGE_ERROR, fetches go on, and once space is freed
//!   produce works again, in the same broker process; nothing acknowledged is lost across a
//!   `kill -9` after.
//! - The disk fails (ext4's shutdown ioctl, what xfstests' `godown` does: every later write,
//!   fdatasync and read of that file system fails with EIO): a fetch that must read the disk
//!   gets KAFKA_STORAGE_ERROR for its partition, produce gets KAFKA_STORAGE_ERROR, the broker
//!   stays up and answers; after a restart on the repaired file system everything acknowledged
//!   is there and the partition takes writes.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, BrokerOptions, create_topic, encode_request, producer_config};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`) and its flag that skips flushing the journal.
const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587D;
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
const KAFKA_STORAGE_ERROR: i16 = 56;

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 file system in an image file, loop-mounted; unmounted and removed on drop.
struct LoopFs {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
    _temp: tempfile::TempDir,
}

impl LoopFs {
    /// None (and a note on stderr) when not root: mounting needs it.
    fn create(size_mib: u64) -> Option<LoopFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loop-mounting a file system needs root");
            return None;
        }
        if !std::path::Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: this kernel has no loop devices");
            return None;
        }
        let temp = tempfile::Builder::new()
            .prefix("sluice-loopfs-")
            .tempdir()
            .expect("temp dir");
        let image = temp.path().join("fs.img");
        let mount = temp.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        File::create(&image)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("image file");
        // No blocks reserved for root (the broker runs as root here): full means full.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        let mut fs = LoopFs {
            image,
            mount,
            mounted: false,
            _temp: temp,
        };
        fs.mount();
        Some(fs)
    }

    fn mount(&mut self) {
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(&self.mount));
        self.mounted = true;
    }

    fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a leftover process): detach it lazily so the loop device goes with it.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        self.mounted = false;
    }

    /// Unmount and mount again: after a shutdown, ext4 replays its journal.
    fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Every later write, fdatasync and read on the file system fails with EIO.
    fn shutdown(&self) {
        let dir = File::open(&self.mount).expect("open mount point");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: ioctl on an open descriptor with a pointer to a live u32, as the kernel's
        // EXT4_IOC_SHUTDOWN expects.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags) };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Fill the file system with one file until writes fail with ENOSPC; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount.join("filler");
        let mut f = File::create(&path).expect("create filler");
        for chunk in [1 << 20, 4096] {
            let buf = vec![0xAAu8; chunk];
            // Bounded: the file system is small.
            for _ in 0..100_000 {
                if f.write_all(&buf).and_then(|()| f.sync_data()).is_err() {
                    break;
                }
            }
        }
        path
    }

    fn data_dir(&self) -> PathBuf {
        self.mount.join("data")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn broker_on(fs: &LoopFs) -> Broker {
    Broker::start_with(BrokerOptions {
        data_dir: Some(fs.data_dir()),
        // Small segments: rolls (new files) happen while the disk is full too.
        segment_bytes: Some(256 << 10),
        ..BrokerOptions::default()
    })
}

fn no_retry_producer(bootstrap: &str) -> FutureProducer {
    producer_config(bootstrap)
        .set("message.send.max.retries", "0")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// Produce one message: its offset, or the error librdkafka reports (no retries).
async fn send(producer: &FutureProducer, topic: &str, value: &[u8]) -> Result<i64, KafkaError> {
    let record = FutureRecord::<(), [u8]>::to(topic)
        .partition(0)
        .payload(value);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(delivery) => Ok(delivery.offset),
        Err((e, _)) => Err(e),
    }
}

fn is_storage_error(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError)
    )
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("message-{i:06}-").into_bytes();
    v.resize(2048, b'x');
    v
}

/// The values of partition 0 from offset 0 to `end`, read with librdkafka.
fn consume(bootstrap: &str, topic: &str, end: i64) -> Vec<Vec<u8>> {
    let ranges = BTreeMap::from([(0, (0, end))]);
    common::consume_partitions(bootstrap, topic, &ranges, Duration::from_secs(60))
        .remove(&0)
        .expect("partition 0")
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

/// One raw Fetch of partition 0 from `offset`: (error code, record bytes).
fn raw_fetch(addr: std::net::SocketAddr, topic: &str, offset: i64) -> (i16, usize) {
    const VERSION: i16 = 11;
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let mut stream = common::connect_raw(addr).expect("connect");
    stream
        .write_all(&encode_request(&request, VERSION, 7))
        .expect("send fetch");
    let mut buf = Bytes::from(common::read_frame(&mut stream).expect("fetch answered"));
    ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(VERSION))
        .expect("header");
    let response = FetchResponse::decode(&mut buf, VERSION).expect("fetch response");
    let p = &response.responses[0].partitions[0];
    (p.error_code, p.records.as_ref().map_or(0, |r| r.len()))
}

#[tokio::test]
async fn a_full_disk_refuses_produce_and_takes_writes_again_once_space_is_freed() {
    const TOPIC: &str = "disk-full";
    let Some(fs) = LoopFs::create(48) else { return };
    let mut broker = broker_on(&fs);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 1).await;
    let producer = no_retry_producer(&bootstrap);
    let mut acked: Vec<(i64, Vec<u8>)> = Vec::new();
    for i in 0..100 {
        let v = value(i);
        let offset = send(&producer, TOPIC, &v)
            .await
            .expect("produce before the disk is full");
        acked.push((offset, v));
    }

    let filler = fs.fill();
    // Whatever the partition still had preallocated goes first; then KAFKA_STORAGE_ERROR.
    let mut refused = None;
    for i in 100..20_000 {
        let v = value(i);
        match send(&producer, TOPIC, &v).await {
            Ok(offset) => acked.push((offset, v)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses produce");
    assert!(
        is_storage_error(&refused),
        "expected KAFKA_STORAGE_ERROR, got {refused}"
    );
    assert!(broker.is_running(), "the broker survives a full disk");
    let logs = broker.logs_text();
    assert!(logs.contains("disk full"), "the broker logs the full disk");
    assert!(!logs.contains("panicked"), "no panic: {logs}");

    // Fetches go on.
    let end = acked.last().unwrap().0 + 1;
    let read = consume(&bootstrap, TOPIC, end);
    assert_eq!(read.len(), acked.len());

    // Space freed: produce works again in the same process (after the broker's probe).
    std::fs::remove_file(&filler).expect("remove filler");
    let mut resumed = None;
    for attempt in 0..100 {
        let v = value(100_000 + attempt);
        match send(&producer, TOPIC, &v).await {
            Ok(offset) => {
                resumed = Some(offset);
                acked.push((offset, v));
                break;
            }
            Err(e) if is_storage_error(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("produce after freeing space: {e}"),
        }
    }
    let resumed = resumed.expect("produce works again once space is freed");
    assert_eq!(
        resumed, end,
        "offsets continue where the acknowledged ones ended"
    );
    for i in 0..50 {
        let v = value(200_000 + i);
        let offset = send(&producer, TOPIC, &v)
            .await
            .expect("produce after recovery");
        acked.push((offset, v));
    }

    // kill -9: everything acknowledged is there, at its offset.
    broker.kill9();
    broker.restart();
    let end = acked.last().unwrap().0 + 1;
    let read = consume(&bootstrap, TOPIC, end);
    let acked_values: Vec<Vec<u8>> = acked.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        read, acked_values,
        "acknowledged messages survive, in order"
    );
    broker.stop();
}

#[tokio::test]
async fn a_failing_disk_answers_with_storage_errors_and_a_restart_recovers() {
    const TOPIC: &str = "disk-eio";
    let Some(mut fs) = LoopFs::create(48) else {
        return;
    };
    let mut broker = broker_on(&fs);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 1).await;
    let producer = no_retry_producer(&bootstrap);
    let mut acked = Vec::new();
    for i in 0..300 {
        let v = value(i);
        let offset = send(&producer, TOPIC, &v)
            .await
            .expect("produce on a healthy disk");
        assert_eq!(offset, i as i64);
        acked.push(v);
    }
    drop(producer);
    // A restart empties the tail cache: the fetch below must read the disk.
    assert!(broker.stop(), "clean stop");
    broker.restart();
    assert_eq!(raw_fetch(broker.addr(), TOPIC, 0).0, 0, "healthy fetch");
    broker.stop();
    broker.restart();

    fs.shutdown();
    // A read error fails that partition's fetch with KAFKA_STORAGE_ERROR (no hang, no crash).
    let (code, bytes) = raw_fetch(broker.addr(), TOPIC, 0);
    assert_eq!(code, KAFKA_STORAGE_ERROR, "fetch from a failed disk");
    assert_eq!(bytes, 0);
    // A write or fdatasync error: KAFKA_STORAGE_ERROR, and the partition stays offline.
    let producer = no_retry_producer(&bootstrap);
    for i in 0..3 {
        let e = send(&producer, TOPIC, &value(1000 + i))
            .await
            .expect_err("produce onto a failed disk");
        assert!(
            is_storage_error(&e),
            "expected KAFKA_STORAGE_ERROR, got {e}"
        );
    }
    assert!(broker.is_running(), "the broker survives a failing disk");
    common::raw_api_versions_v0(broker.addr(), 9).expect("the broker still answers");
    assert!(!broker.logs_text().contains("panicked"));

    // Repaired (the journal replays at mount), restarted: everything acknowledged is there.
    broker.kill9();
    fs.remount();
    broker.restart();
    assert_eq!(consume(&bootstrap, TOPIC, acked.len() as i64), acked);
    let producer = no_retry_producer(&bootstrap);
    let next = send(&producer, TOPIC, &value(5000))
        .await
        .expect("produce after restart");
    assert_eq!(next, acked.len() as i64);
    broker.stop();
}
