//! A network partition of a three-broker cluster (issue 12), with real processes in network
//! namespaces the test creates: each broker runs in its own namespace, joined to the others
//! and to the test (the client) by a bridge. The test cuts the leader of a partition off
//! from the other two brokers (blackhole routes both ways, the client still reaches every
//! broker) while producing with acks=all:
//! - a producer that can only reach the cut-off leader gets no acks=all write acknowledged
//!   (the leader cannot commit, and check-quorum steps it down);
//! - a producer bootstrapped on the majority keeps being acknowledged (a new leader);
//! - after the partition heals, the old leader drops its uncommitted suffix and catches up;
//!   every acknowledged record is at its acknowledged offset, no offset was acknowledged
//!   twice, and the three replicas' files are byte-identical.
//!
//! Needs root (network namespaces); elsewhere it says so and passes. The namespaces, links
//! and processes are removed when the test ends, failing or not.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{raw_api_versions_v0, segment_batches, segment_files};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const KAFKA_PORT: u16 = 9092;
const RPC_PORT: u16 = 9093;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces on a bridge; removed on drop.
struct Net {
    tag: String,
    subnet: String,
}

impl Net {
    fn ns(&self, node: usize) -> String {
        format!("{}n{node}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }
    fn ip(&self, node: usize) -> String {
        format!("{}.{}", self.subnet, node)
    }

    fn create() -> Result<Net, String> {
        let id = std::process::id() % 10_000;
        let net = Net {
            tag: format!("sl{id}"),
            subnet: format!("10.{}.{}", 100 + id / 250 % 100, id % 250),
        };
        let br = net.bridge();
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", net.subnet),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for node in 1..=3 {
            let ns = net.ns(node);
            let host_end = format!("{}h{node}", net.tag);
            let ns_end = format!("{}c{node}", net.tag);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            sh(&["ip", "link", "set", &ns_end, "netns", &ns])?;
            sh(&["ip", "link", "set", &host_end, "master", &br])?;
            sh(&["ip", "link", "set", &host_end, "up"])?;
            let inside = |a: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &ns];
                v.extend_from_slice(a);
                sh(&v)
            };
            inside(&["ip", "link", "set", "lo", "up"])?;
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.ip(node)),
                "dev",
                &ns_end,
            ])?;
            inside(&["ip", "link", "set", &ns_end, "up"])?;
        }
        Ok(net)
    }

    /// Drop traffic between `node` and every other broker, both ways (the client still
    /// reaches it).
    fn isolate(&self, node: usize) -> Result<(), String> {
        self.blackhole(node, "add")
    }

    fn heal(&self, node: usize) -> Result<(), String> {
        self.blackhole(node, "del")
    }

    /// Add or delete (`op`) blackhole routes between `node` and each other broker, both ways.
    fn blackhole(&self, node: usize, op: &str) -> Result<(), String> {
        for other in (1..=3).filter(|&o| o != node) {
            for (at, to) in [(node, other), (other, node)] {
                let ns = self.ns(at);
                let dst = format!("{}/32", self.ip(to));
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "route",
                    op,
                    "blackhole",
                    &dst,
                ])?;
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in 1..=3 {
            let _ = sh(&["ip", "netns", "del", &self.ns(node)]);
            let _ = sh(&["ip", "link", "del", &format!("{}h{node}", self.tag)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge()]);
    }
}

/// A broker process in a namespace; killed on drop.
struct NsBroker {
    child: Option<Child>,
    addr: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl NsBroker {
    fn start(net: &Net, node: usize, dir: &std::path::Path) -> NsBroker {
        let seeds = (1..=3)
            .map(|n| format!("{n}@{}:{RPC_PORT}", net.ip(n)))
            .collect::<Vec<_>>()
            .join(",");
        let data = dir.join(format!("data{node}"));
        let log = dir.join(format!("broker{node}.log"));
        let ip = net.ip(node);
        let listen = format!("{ip}:{KAFKA_PORT}");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns(node),
                env!("CARGO_BIN_EXE_sluice"),
                "serve",
            ])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--listen", &listen, "--advertised-listener", &listen])
            .args(["--rpc-listen", &format!("{ip}:{RPC_PORT}")])
            .args(["--seed-servers", &seeds, "--node-id", &node.to_string()])
            .args(["--shards", "1", "--metrics-listen", ""])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("spawn sluice in its namespace");
        let b = NsBroker {
            child: Some(child),
            addr: listen.parse().unwrap(),
            data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while raw_api_versions_v0(b.addr, 1).is_err() {
            assert!(Instant::now() < deadline, "broker {node} not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child (ip netns exec execs sluice in place).
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        let start = s.len().saturating_sub(20_000);
        s[s.char_indices()
            .find(|(i, _)| *i >= start)
            .map_or(0, |(i, _)| i)..]
            .to_string()
    }
}

impl Drop for NsBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .set("socket.timeout.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "500");
    c
}

fn leader_of(bootstrap: &str, topic: &str) -> Option<i32> {
    let p: rdkafka::producer::BaseProducer = client(bootstrap).create().ok()?;
    let md = p
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().first()?;
    let l = t.partitions().first()?.leader();
    (l > 0 && md.brokers().len() == 3).then_some(l)
}

fn wait_leader(bootstrap: &str, topic: &str, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = leader_of(bootstrap, topic)
            && Some(l) != not
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no leader of {topic} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn produce(
    p: &FutureProducer,
    topic: &str,
    tag: &str,
    n: usize,
) -> (Vec<(i64, String)>, usize) {
    let sends = (0..n).map(|i| {
        let payload = format!("{tag}-{i}");
        async move {
            let r = p
                .send(
                    FutureRecord::<(), _>::to(topic)
                        .payload(&payload)
                        .partition(0),
                    Duration::from_secs(60),
                )
                .await;
            (payload, r)
        }
    });
    let mut acked = Vec::new();
    let mut failed = 0;
    for (payload, r) in futures::future::join_all(sends).await {
        match r {
            Ok(d) => acked.push((d.offset, payload)),
            Err(_) => failed += 1,
        }
    }
    (acked, failed)
}

fn producer(bootstrap: &str, timeout_ms: u32) -> FutureProducer {
    client(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("request.timeout.ms", "2000")
        .set("retry.backoff.ms", "100")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_acknowledges_nothing_and_rejoins_identical() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: network namespaces cannot be made here; skipping");
        return;
    }
    let net = match Net::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot make network namespaces ({e}); skipping");
            return;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("sluice-netns-")
        .tempdir()
        .unwrap();
    let mut brokers: Vec<NsBroker> = (1..=3)
        .map(|n| NsBroker::start(&net, n, dir.path()))
        .collect();
    let all = (1..=3)
        .map(|n| format!("{}:{KAFKA_PORT}", net.ip(n)))
        .collect::<Vec<_>>()
        .join(",");
    let logs = |bs: &[NsBroker]| {
        bs.iter()
            .enumerate()
            .map(|(i, b)| format!("#### node {}\n{}", i + 1, b.logs()))
            .collect::<String>()
    };
    let topic = "cut";
    let admin: rdkafka::admin::AdminClient<_> = client(&all).create().unwrap();
    let mut created = false;
    for _ in 0..40 {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        if let Ok(r) = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(3))],
                &opts,
            )
            .await
            && r[0].is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(created, "topic created\n{}", logs(&brokers));
    let old = wait_leader(&all, topic, None) as usize;

    let main = producer(&all, 60_000);
    let mut acked: Vec<(i64, String)> = Vec::new();
    let (a, failed) = produce(&main, topic, "before", 200).await;
    assert_eq!(failed, 0, "{}", logs(&brokers));
    acked.extend(a);

    // Cut the leader off from its peers (the client still reaches every broker). An acks=all
    // Produce sent straight to it cannot be acknowledged: it cannot commit, and check-quorum
    // steps it down within an election timeout.
    net.isolate(old).unwrap();
    let cut_at = Instant::now();
    let code = common::raw_produce(
        format!("{}:{KAFKA_PORT}", net.ip(old)).parse().unwrap(),
        topic,
        "cut-off-raw",
    );
    eprintln!(
        "acks=all Produce to the cut-off leader (node {old}): error code {code} after {:?}",
        cut_at.elapsed()
    );
    assert_ne!(
        code,
        0,
        "the cut-off leader acknowledged an acks=all write\n{}",
        logs(&brokers)
    );
    // Producers keep going: one bootstrapped on the old leader (it learns the others from
    // it), one on the majority. Whatever they get acknowledged must be in the final log.
    let via_old = producer(&format!("{}:{KAFKA_PORT}", net.ip(old)), 60_000);
    let majority = (1..=3)
        .filter(|&n| n != old)
        .map(|n| format!("{}:{KAFKA_PORT}", net.ip(n)))
        .collect::<Vec<_>>()
        .join(",");
    let to_majority = producer(&majority, 60_000);
    let (from_old, from_majority) = tokio::join!(
        produce(&via_old, topic, "via-old", 100),
        produce(&to_majority, topic, "majority", 200)
    );
    eprintln!(
        "while node {old} is cut off: {} + {} acknowledged ({} + {} failed), in {:?}",
        from_old.0.len(),
        from_majority.0.len(),
        from_old.1,
        from_majority.1,
        cut_at.elapsed()
    );
    assert!(
        from_majority.0.len() >= 190,
        "the majority went on ({} of 200)\n{}",
        from_majority.0.len(),
        logs(&brokers)
    );
    acked.extend(from_old.0);
    acked.extend(from_majority.0);
    let new = wait_leader(&majority, topic, Some(old as i32));
    assert_ne!(new as usize, old);

    // Heal: the old leader drops what it could not commit and catches up.
    net.heal(old).unwrap();
    let (a, failed) = produce(&main, topic, "after", 200).await;
    assert_eq!(failed, 0, "{}", logs(&brokers));
    acked.extend(a);
    main.flush(Duration::from_secs(10)).unwrap();
    to_majority.flush(Duration::from_secs(10)).unwrap();
    via_old.flush(Duration::from_secs(10)).unwrap();

    // No offset acknowledged twice; every acknowledged record at its offset.
    let mut by_offset: HashMap<i64, String> = HashMap::new();
    for (o, p) in &acked {
        if let Some(prev) = by_offset.insert(*o, p.clone()) {
            panic!("offset {o} acknowledged for {prev} and for {p}");
        }
    }
    let consumer: BaseConsumer = client(&all)
        .set("group.id", "netns-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let high = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) {
                Ok((_, h)) => break h,
                Err(e) => {
                    assert!(Instant::now() < deadline, "watermarks: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read until the consumer's position reaches the high watermark (the last offsets may
    // be Raft's own entries, control batches that consumers skip).
    let position = |c: &BaseConsumer| match c
        .position()
        .ok()
        .and_then(|l| l.find_partition(topic, 0).map(|e| e.offset()))
    {
        Some(Offset::Offset(o)) => o,
        _ => 0,
    };
    while position(&consumer) < high {
        assert!(
            Instant::now() < deadline,
            "read to {high}: at {:?}",
            seen.keys().next_back()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            seen.insert(m.offset(), payload);
        }
    }
    for (o, p) in &by_offset {
        assert_eq!(
            seen.get(o),
            Some(p),
            "acknowledged record at offset {o}\n{}",
            logs(&brokers)
        );
    }
    assert!(
        !seen.values().any(|p| p.starts_with("cut-off-raw")),
        "the record the cut-off leader refused is visible"
    );

    // Byte-identical replicas once quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in &mut brokers {
        b.stop();
    }
    let replica = |b: &NsBroker| {
        let mut out = Vec::new();
        for (_, path) in segment_files(&b.data.join(format!("{topic}-0"))) {
            let bytes = std::fs::read(&path).unwrap();
            for bp in segment_batches(&path) {
                out.extend_from_slice(
                    &bytes[bp.position as usize..(bp.position + bp.size) as usize],
                );
            }
        }
        out
    };
    // Each batch: (base offset, epoch, last offset delta, size), to say where two differ.
    let layout = |b: &NsBroker| {
        let mut out = Vec::new();
        for (_, path) in segment_files(&b.data.join(format!("{topic}-0"))) {
            for bp in segment_batches(&path) {
                out.push((
                    bp.base_offset,
                    bp.partition_leader_epoch,
                    bp.last_offset_delta,
                    bp.size,
                ));
            }
        }
        out
    };
    let first = replica(&brokers[0]);
    for (i, b) in brokers.iter().enumerate().skip(1) {
        if replica(b) != first {
            let (a, o) = (layout(&brokers[0]), layout(b));
            let at = a.iter().zip(&o).position(|(x, y)| x != y);
            panic!(
                "node {} differs from node 1 (high watermark {high}): {} and {} batches, first \
                 difference at batch {at:?}; batches (base, epoch, last delta, size): node 1 \
                 {a:?}, node {} {o:?}, node 3 {:?}\n{}",
                i + 1,
                a.len(),
                o.len(),
                i + 1,
                layout(&brokers[2]),
                logs(&brokers)
            );
        }
    }
    drop(net);
}
