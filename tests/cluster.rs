//! A three-broker cluster (issue 12): real broker processes on 127.0.0.1 with their own
//! ports, data directories and RPC listeners (one or two shards each), driven by a real
//! client (the rdkafka crate, librdkafka 2.12) producing with acks=all while the test kills
//! a partition's leader and then a follower with `kill -9` and restarts each, then restarts
//! every broker in turn. Then a checker reads every partition from its leader and every
//! replica's files: every acknowledged record is at its acknowledged offset, consumers see
//! offsets only going forward, and the replicas' logs are byte-identical.
//!
//! `SLUICE_CLUSTER_CYCLES=N` runs N fault cycles (default 1; each kills a leader and a
//! follower of the next partition).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
const PER_PHASE: usize = 300;

/// Held by a test while its cluster runs: one cluster at a time in this file. Three brokers
/// per test on a two-core host leave little room, and two clusters at once (with a Python
/// copier beside them) slowed elections and clients enough to fail a test now and then.
struct OneCluster;

static CLUSTER_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Wait until no other test of this file runs a cluster, then hold the right until dropped.
fn one_cluster_at_a_time() -> OneCluster {
    use std::sync::atomic::Ordering::SeqCst;
    while CLUSTER_RUNNING
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    OneCluster
}

impl Drop for OneCluster {
    fn drop(&mut self) {
        CLUSTER_RUNNING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The brokers of one cluster; `brokers[i]` is node `i + 1`.
struct Cluster {
    brokers: Vec<Broker>,
}

impl Cluster {
    fn start(shards: &[usize]) -> Cluster {
        Cluster::start_args(shards, &[])
    }

    /// [`Cluster::start`] with more flags for every broker.
    fn start_args(shards: &[usize], extra: &[String]) -> Cluster {
        let rpc: Vec<u16> = shards.iter().map(|_| free_port()).collect();
        let seeds = rpc
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = shards
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Broker::start_with(BrokerOptions {
                    shards: Some(n),
                    extra_args: vec![
                        "--node-id".into(),
                        (i + 1).to_string(),
                        "--rpc-listen".into(),
                        format!("127.0.0.1:{}", rpc[i]),
                        "--seed-servers".into(),
                        seeds.clone(),
                        // Leaders move back to their preferred replica soon after it returns.
                        "--leader-balance-interval-ms".into(),
                        "2000".into(),
                        // A dead follower leaves the reported ISR soon.
                        "--replica-lag-time-max-ms".into(),
                        "2000".into(),
                    ]
                    .into_iter()
                    .chain(extra.iter().cloned())
                    .collect(),
                    ..Default::default()
                })
            })
            .collect();
        Cluster { brokers }
    }

    /// Every broker's Kafka address (clients find the running ones).
    fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Broker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: i32) -> &mut Broker {
        &mut self.brokers[(id - 1) as usize]
    }

    fn logs(&self) -> String {
        self.brokers
            .iter()
            .enumerate()
            .map(|(i, b)| format!("#### node {}\n{}", i + 1, b.logs_text()))
            .collect()
    }
}

/// A client for Metadata requests only.
fn metadata_client(bootstrap: &str) -> rdkafka::producer::BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .expect("metadata client")
}

/// (partition → leader) of `topic` as `bootstrap` reports it, once every partition has one
/// and the cluster lists `brokers` brokers.
fn wait_for_leaders(bootstrap: &str, topic: &str, brokers: usize) -> BTreeMap<i32, i32> {
    let client = metadata_client(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
        {
            Ok(md) => {
                let t = md.topics().first().expect("one topic");
                let leaders: BTreeMap<i32, i32> = t
                    .partitions()
                    .iter()
                    .map(|p| (p.id(), p.leader()))
                    .collect();
                if md.brokers().len() == brokers
                    && t.error().is_none()
                    && leaders.len() == PARTITIONS as usize
                    && leaders.values().all(|&l| l > 0)
                {
                    return leaders;
                }
                last = format!(
                    "brokers {}, topic error {:?}, leaders {leaders:?}",
                    md.brokers().len(),
                    t.error()
                );
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no leader for every partition of {topic} within 30 s: {last}");
}

/// Each partition's replica list of `topic`, once Metadata lists `count` partitions.
fn replica_lists(bootstrap: &str, topic: &str, count: usize) -> Vec<Vec<i32>> {
    let client = metadata_client(bootstrap);
    let mut last = Vec::new();
    for _ in 0..100 {
        if let Ok(md) = client
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
        {
            let mut parts: Vec<(i32, Vec<i32>)> = md.topics()[0]
                .partitions()
                .iter()
                .map(|p| (p.id(), p.replicas().to_vec()))
                .collect();
            parts.sort();
            last = parts.into_iter().map(|(_, r)| r).collect();
            if last.len() == count {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{topic}: {count} partitions expected, Metadata lists {last:?}");
}

/// CreateTopics and CreatePartitions with manual replica assignments: Metadata lists the
/// replicas asked for (in their order), and an assignment naming an unknown broker or the
/// same broker twice is INVALID_REPLICA_ASSIGNMENT.
async fn manual_replica_assignments_are_honoured(bootstrap: &str) {
    use rdkafka::admin::{AdminOptions, NewPartitions};
    use rdkafka::types::RDKafkaErrorCode;
    let admin = admin_client(bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let r = admin
        .create_topics(
            &[NewTopic::new(
                "manual",
                2,
                TopicReplication::Variable(&[&[2, 3], &[3, 1]]),
            )],
            &opts,
        )
        .await
        .expect("CreateTopics request");
    assert!(r[0].is_ok(), "manual assignment: {r:?}");
    assert_eq!(
        replica_lists(bootstrap, "manual", 2),
        vec![vec![2, 3], vec![3, 1]]
    );
    for bad in [&[&[1, 9][..]][..], &[&[2, 2][..]][..]] {
        let r = admin
            .create_topics(
                &[NewTopic::new(
                    "manual-bad",
                    1,
                    TopicReplication::Variable(bad),
                )],
                &opts,
            )
            .await
            .expect("CreateTopics request");
        assert!(
            matches!(&r[0], Err((_, RDKafkaErrorCode::InvalidReplicaAssignment))),
            "{bad:?}: {r:?}"
        );
    }
    let r = admin
        .create_partitions(&[NewPartitions::new("manual", 3).assign(&[&[1, 2]])], &opts)
        .await
        .expect("CreatePartitions request");
    assert!(r[0].is_ok(), "CreatePartitions with an assignment: {r:?}");
    assert_eq!(
        replica_lists(bootstrap, "manual", 3),
        vec![vec![2, 3], vec![3, 1], vec![1, 2]]
    );
    let r = admin
        .create_partitions(
            &[NewPartitions::new("manual", 4).assign(&[&[1, 2, 3]])],
            &opts,
        )
        .await
        .expect("CreatePartitions request");
    assert!(
        matches!(&r[0], Err((_, RDKafkaErrorCode::InvalidReplicaAssignment))),
        "a replication factor unlike the topic's: {r:?}"
    );
}

/// `sluice cluster status` against the broker at `addr`.
fn cluster_status(addr: &str) -> String {
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_sluice")).args(["cluster", "status", "-b", addr]),
        b"",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "cluster status: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The leader of partition 0 of `topic`, once there is one.
fn wait_for_partition_leader(bootstrap: &str, topic: &str) -> i32 {
    let client = metadata_client(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = client
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(p) = md.topics().first().and_then(|t| t.partitions().first())
            && p.leader() > 0
        {
            return p.leader();
        }
        assert!(Instant::now() < deadline, "no leader of {topic}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until the cluster lists `n` brokers (they register through the metadata log).
fn wait_for_brokers(bootstrap: &str, n: usize) {
    let client = metadata_client(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(md) = client.client().fetch_metadata(None, Duration::from_secs(5))
            && md.brokers().len() == n
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the cluster did not list {n} brokers within 30 s");
}

/// One acknowledged record.
#[derive(Debug, Clone)]
struct Acked {
    partition: i32,
    offset: i64,
    payload: String,
}

/// Produce records `from..to` (record i to partition i mod 3) with acks=all; returns the
/// acknowledged ones and how many failed (allowed only while a leader is being replaced).
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    from: usize,
    to: usize,
) -> (Vec<Acked>, usize) {
    produce_tagged(producer, topic, "record", from, to).await
}

/// [`produce`] with payloads `{tag}-{i}`.
async fn produce_tagged(
    producer: &FutureProducer,
    topic: &str,
    tag: &str,
    from: usize,
    to: usize,
) -> (Vec<Acked>, usize) {
    let sends = (from..to).map(|i| {
        let payload = format!("{tag}-{i}");
        let key = i.to_string();
        let p = (i % PARTITIONS as usize) as i32;
        async move {
            let r = producer
                .send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload(&payload)
                        .partition(p),
                    Duration::from_secs(30),
                )
                .await;
            (payload, r)
        }
    });
    let mut acked = Vec::new();
    let mut failed = 0;
    for (payload, r) in futures::future::join_all(sends).await {
        match r {
            Ok(d) => acked.push(Acked {
                partition: d.partition,
                offset: d.offset,
                payload,
            }),
            Err((e, _)) => {
                eprintln!("not acknowledged: {payload}: {e}");
                failed += 1;
            }
        }
    }
    (acked, failed)
}

/// Read every partition from the beginning to its high watermark: (partition, offset) →
/// payload. Checks that offsets only go forward within a partition.
fn read_all(bootstrap: &str, topic: &str) -> HashMap<(i32, i64), String> {
    let mut seen = HashMap::new();
    read_each(bootstrap, topic, |p, o, _, payload| {
        let payload = String::from_utf8(payload.unwrap_or_default().to_vec()).unwrap();
        seen.insert((p, o), payload);
    });
    seen
}

/// Read every partition from the beginning to its high watermark, handing each record
/// (partition, offset, key, value) to `on`. Checks that offsets only go forward within a
/// partition.
fn read_each(
    bootstrap: &str,
    topic: &str,
    mut on: impl FnMut(i32, i64, Option<&[u8]>, Option<&[u8]>),
) {
    let consumer = assign_consumer(bootstrap, "cluster-check");
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        // Right after a restart a broker may not know a leader yet (LEADER_NOT_AVAILABLE):
        // the client's metadata catches up.
        let deadline = Instant::now() + Duration::from_secs(20);
        let high = loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("watermarks of partition {p}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("watermarks of partition {p}: {e}"),
            }
        };
        ends.insert(p, high);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Done when the consumer's position reached each high watermark: the last offsets may
    // be Raft's own entries (control batches, which consumers skip).
    let reached = |c: &rdkafka::consumer::BaseConsumer| {
        let Ok(pos) = c.position() else { return false };
        (0..PARTITIONS).all(|p| match pos.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= ends[&p],
            _ => ends[&p] == 0,
        })
    };
    while !reached(&consumer) {
        assert!(
            Instant::now() < deadline,
            "did not read to the high watermarks {ends:?}; at {last:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("consume");
        let (p, o) = (m.partition(), m.offset());
        if let Some(prev) = last.get(&p) {
            assert!(o > *prev, "partition {p}: offset {o} after {prev}");
        }
        last.insert(p, o);
        on(p, o, m.key(), m.payload());
    }
}

/// The record batches of one replica of a partition, in order, as stored.
fn replica_bytes(broker: &Broker, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, path) in segment_files(&broker.partition_dir(topic, partition)) {
        let bytes = std::fs::read(&path).unwrap();
        for b in segment_batches(&path) {
            out.extend_from_slice(&bytes[b.position as usize..(b.position + b.size) as usize]);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_survives_kill_9_and_a_rolling_restart_and_replicas_end_identical() {
    let _one = one_cluster_at_a_time();
    // Node 3 runs two shards: the broker-to-broker messages it receives are routed to the
    // shard that owns each partition.
    let mut cluster = Cluster::start(&[1, 1, 2]);
    let bootstrap = cluster.bootstrap();
    let topic = "replicated";
    wait_for_brokers(&bootstrap, 3);

    // CreateTopics with replication factor 3 goes through the metadata log.
    create_replicated(&cluster, topic).await;
    let leaders = wait_for_leaders(&bootstrap, topic, 3);
    manual_replica_assignments_are_honoured(&bootstrap).await;

    let producer = retrying_producer(&bootstrap);
    let mut acked = Vec::new();
    let (a, failed) = produce(&producer, topic, 0, PER_PHASE).await;
    assert_eq!(failed, 0, "no failure before any fault\n{}", cluster.logs());
    acked.extend(a);

    // Fault cycles: kill -9 a partition's leader, then one of its followers, each time
    // producing while the broker is down and after it is back; then a rolling restart.
    let cycles: usize = std::env::var("SLUICE_CLUSTER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut next = PER_PHASE;
    let mut leaders = leaders;
    for cycle in 0..cycles {
        let p = (cycle % PARTITIONS as usize) as i32;
        let leader = leaders[&p];
        let follower = (1..=3).find(|&n| n != leader).expect("a follower");
        for (role, victim) in [("leader", leader), ("follower", follower)] {
            cluster.node(victim).kill9();
            let killed_at = Instant::now();
            let (a, failed) = produce(&producer, topic, next, next + PER_PHASE).await;
            next += PER_PHASE;
            eprintln!(
                "cycle {cycle}: after kill -9 of node {victim} ({role} of partition {p}): {} acknowledged, {failed} not, in {:?}",
                a.len(),
                killed_at.elapsed()
            );
            assert!(
                a.len() >= PER_PHASE * 9 / 10,
                "most records are acknowledged with one broker down ({} of {PER_PHASE})\n{}",
                a.len(),
                cluster.logs()
            );
            acked.extend(a);
            let now = wait_for_leaders(&bootstrap, topic, 3);
            assert!(
                now.values().all(|&l| l != victim),
                "no partition is led by the dead node {victim}: {now:?}"
            );
            // It comes back, catches up from its peers, and the cluster takes writes.
            cluster.node(victim).restart();
            let (a, failed) = produce(&producer, topic, next, next + PER_PHASE).await;
            next += PER_PHASE;
            assert_eq!(
                failed,
                0,
                "no failure once every broker is back\n{}",
                cluster.logs()
            );
            acked.extend(a);
            leaders = wait_for_leaders(&bootstrap, topic, 3);
        }
    }
    // A rolling restart under load: each broker stopped cleanly and started again in turn.
    for node in 1..=3 {
        assert!(cluster.node(node).stop(), "node {node} stops cleanly");
        let (a, failed) = produce(&producer, topic, next, next + PER_PHASE / 3).await;
        next += PER_PHASE / 3;
        eprintln!(
            "rolling restart: node {node} down: {} acknowledged, {failed} not",
            a.len()
        );
        acked.extend(a);
        cluster.node(node).restart();
    }
    let (a, failed) = produce(&producer, topic, next, next + PER_PHASE).await;
    assert_eq!(
        failed,
        0,
        "no failure after the rolling restart\n{}",
        cluster.logs()
    );
    acked.extend(a);
    producer.flush(Duration::from_secs(10)).expect("flush");

    // An idempotent producer (InitProducerId from a block of the metadata log) while a
    // leader is killed: its retries reach the new leader, which recognizes them from the
    // producer state its log carries, so no record is stored twice.
    let idempotent: FutureProducer = producer_config(&bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("idempotent producer");
    let leaders_now = wait_for_leaders(&bootstrap, topic, 3);
    let idem_from = next;
    let sends = produce_tagged(&idempotent, topic, "idem", idem_from, idem_from + PER_PHASE);
    let victim = leaders_now[&1];
    let (sent, ()) = tokio::join!(sends, async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        cluster.node(victim).kill9();
    });
    let (a, failed) = sent;
    eprintln!(
        "idempotent producer, node {victim} killed: {} acknowledged, {failed} not",
        a.len()
    );
    acked.extend(a);
    cluster.node(victim).restart();
    idempotent.flush(Duration::from_secs(10)).expect("flush");

    // Raft on /metrics: every broker reports its replicas (the metadata log's included),
    // the ones it leads, elections, and the replicated partitions' high watermarks.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut leaders_total = 0.0;
        let (mut commits, mut replicated, mut lag_series, mut term) = (0.0, 0.0, 0, 0.0f64);
        for node in 1..=3 {
            let (status, _, body) = cluster.node(node).scrape("/metrics");
            assert_eq!(status, 200);
            let value = |name: &str| -> f64 {
                body.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            assert!(
                value("sluice_raft_replicas{") >= 4.0,
                "node {node}: 3 partitions and the metadata log\n{body}"
            );
            leaders_total += value("sluice_raft_leaders{");
            assert!(value("sluice_raft_leader_elections_total{") >= 0.0);
            commits += value("sluice_raft_commit_duration_seconds_count{");
            replicated += value("sluice_raft_replicated_bytes_total{");
            term = term.max(value("sluice_raft_term_max{"));
            lag_series += body
                .lines()
                .filter(|l| l.starts_with("sluice_raft_follower_lag_by_broker_entries{"))
                .count();
            assert!(
                body.lines()
                    .any(|l| l.starts_with("sluice_partition_high_watermark{")
                        && l.contains(&format!("topic=\"{topic}\""))),
                "node {node}: replicated partitions on /metrics"
            );
        }
        if leaders_total >= 4.0 {
            // Commit latency and bytes replicated by the leaders, the term, and a lag per
            // follower broker of every leading shard.
            assert!(commits > 0.0, "commits timed on /metrics");
            assert!(replicated > 0.0, "bytes replicated on /metrics");
            assert!(term >= 1.0, "a term on /metrics");
            assert!(lag_series >= 2, "a lag per follower on /metrics");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each of the 3 partitions and the metadata log has a leader somewhere ({leaders_total})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Checker 1: every acknowledged record is where it was acknowledged, read from leaders.
    let seen = check_acked(&cluster, topic, &acked);
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for p in seen.values().filter(|p| p.starts_with("idem-")) {
        *copies.entry(p.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "idempotent records stored more than once: {twice:?}\n{}",
        cluster.logs()
    );

    // min.insync.replicas: with a follower down, an acks=all produce to a topic that asks
    // for 3 in-sync replicas is refused with NOT_ENOUGH_REPLICAS, and taken again once the
    // follower is back.
    let strict = "strict";
    let admin = admin_client(&bootstrap);
    let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let mut created = false;
    for _ in 0..20 {
        let r = admin
            .create_topics(
                &[NewTopic::new(strict, 1, TopicReplication::Fixed(3))
                    .set("min.insync.replicas", "3")],
                &opts,
            )
            .await
            .expect("CreateTopics request");
        if r[0].is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(created, "topic {strict} created");
    // The leader may first be another replica and move to the preferred one (the first of
    // the replica list) at the next balancing round: wait for that, so it stays put.
    let preferred = replica_lists(&bootstrap, strict, 1)[0][0];
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let l = wait_for_partition_leader(&bootstrap, strict);
        if l == preferred || Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(leader, preferred, "{strict} led by its preferred replica");
    let code_until = |addr: std::net::SocketAddr, want: i16| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let code = raw_produce(addr, strict, "strict");
            if code == want || Instant::now() > deadline {
                return code;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let leader_addr = cluster.node(leader).addr();
    assert_eq!(code_until(leader_addr, 0), 0, "all three in sync: taken");
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let via = cluster.node(leader).bootstrap();
    let status = cluster_status(&via);
    assert!(
        status.contains("Brokers: 3") && status.matches(" up ").count() == 3,
        "three brokers up:\n{status}"
    );
    cluster.node(follower).kill9();
    // `sluice cluster status` shows the broker down and, once the leaders noticed, the
    // partitions it held as under-replicated.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = cluster_status(&via);
        if s.contains("unreachable")
            && s.contains("under-replicated")
            && !s.contains("under-replicated: 0")
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed node {follower} down:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let line = status
        .lines()
        .find(|l| l.starts_with(&follower.to_string()))
        .unwrap_or_default();
    assert!(
        line.contains("unreachable"),
        "node {follower}: {line}\n{status}"
    );
    assert_eq!(
        code_until(leader_addr, 19),
        19,
        "NOT_ENOUGH_REPLICAS with node {follower} down\n{}",
        cluster.logs()
    );
    cluster.node(follower).restart();
    assert_eq!(
        code_until(leader_addr, 0),
        0,
        "taken again once node {follower} is back\n{}",
        cluster.logs()
    );

    // OffsetForLeaderEpoch (KIP-320) on the leaders, checked below against the logs once
    // the brokers stopped (while they run, the tail of a log may be in the journal only): a
    // stale current epoch is fenced, a newer one unknown, a follower refuses.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut epoch_answers = Vec::new();
    for p in 0..PARTITIONS {
        let leader = wait_for_leaders(&bootstrap, topic, 3)[&p];
        let addr = cluster.brokers[(leader - 1) as usize].addr();
        // Epochs from 1 up: each answered with the largest epoch at most it and where that
        // one ended, until one past the latest (undefined).
        let mut answers = Vec::new();
        for e in 1..1_000 {
            let (code, epoch, end) = raw_offset_for_leader_epoch(addr, topic, p, -1, e);
            assert_eq!(code, 0, "partition {p} epoch {e}");
            if epoch < 0 {
                break;
            }
            answers.push((e, epoch, end));
        }
        let current = answers.last().expect("epochs").0;
        assert!(current >= 2, "partition {p} saw leader changes");
        let fenced = raw_offset_for_leader_epoch(addr, topic, p, current - 1, current);
        assert_eq!(
            fenced.0, 74,
            "FENCED_LEADER_EPOCH for a stale current epoch"
        );
        let ahead = raw_offset_for_leader_epoch(addr, topic, p, current + 1, current);
        assert_eq!(ahead.0, 75, "UNKNOWN_LEADER_EPOCH for a newer one");
        let ok = raw_offset_for_leader_epoch(addr, topic, p, current, current);
        assert_eq!(ok.0, 0, "the current epoch: {ok:?}");
        let follower = (1..=3).find(|&n| n != leader).expect("a follower");
        let addr = cluster.brokers[(follower - 1) as usize].addr();
        let answer = raw_offset_for_leader_epoch(addr, topic, p, -1, current);
        assert_eq!(answer.0, 6, "a follower answers NOT_LEADER_OR_FOLLOWER");
        epoch_answers.push((p, answers));
    }

    // Checker 2: with the cluster quiet, every replica holds the same bytes.
    stop_and_compare_replicas(&mut cluster, topic);
    // Each epoch's answer is where the next epoch begins in the log (the latest: the log
    // end), and an epoch with no batch of its own answers with the one before it.
    for (p, answers) in epoch_answers {
        let mut epochs: Vec<(i32, i64, i64)> = Vec::new(); // (epoch, first, after last)
        let dir = cluster.brokers[0].partition_dir(topic, p);
        for (_, path) in segment_files(&dir) {
            for b in segment_batches(&path) {
                let (e, after) = (
                    b.partition_leader_epoch,
                    b.base_offset + i64::from(b.last_offset_delta) + 1,
                );
                match epochs.last_mut() {
                    Some(cur) if cur.0 == e => cur.2 = after,
                    _ => epochs.push((e, b.base_offset, after)),
                }
            }
        }
        for (asked, epoch, end) in answers {
            let i = epochs
                .iter()
                .rposition(|x| x.0 <= asked)
                .unwrap_or_else(|| panic!("partition {p}: epoch {asked} in {epochs:?}"));
            assert_eq!(
                epoch, epochs[i].0,
                "partition {p}: epoch {asked}: {epochs:?}"
            );
            match epochs.get(i + 1) {
                Some(next) => assert_eq!(
                    end, next.1,
                    "partition {p}: end of epoch {asked}: {epochs:?}"
                ),
                None => assert!(
                    end <= epochs[i].2,
                    "partition {p}: latest epoch {asked}: {epochs:?}"
                ),
            }
        }
    }
}

/// An acks=all producer that retries through leader changes for up to a minute.
fn retrying_producer(bootstrap: &str) -> FutureProducer {
    producer_config(bootstrap)
        .set("retries", "1000")
        .set("retry.backoff.ms", "100")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("producer")
}

/// Create `topic` with PARTITIONS partitions and replication factor 3, retrying while the
/// metadata log elects its first leader.
async fn create_replicated(cluster: &Cluster, topic: &str) {
    create_replicated_with(cluster, topic, &[]).await
}

/// [`create_replicated`] with topic configs.
async fn create_replicated_with(cluster: &Cluster, topic: &str, configs: &[(&str, &str)]) {
    let admin = admin_client(&cluster.bootstrap());
    for _ in 0..20 {
        let opts = rdkafka::admin::AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(15)))
            .request_timeout(Some(Duration::from_secs(15)));
        let t = configs.iter().fold(
            NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(3)),
            |t, (k, v)| t.set(k, v),
        );
        let r = admin
            .create_topics(&[t], &opts)
            .await
            .expect("CreateTopics request");
        match &r[0] {
            Ok(_) => return,
            Err((_, code)) => {
                eprintln!("CreateTopics: {code:?}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    panic!("topic not created\n{}", cluster.logs());
}

/// Each partition's leader as `bootstrap` reports it right now (-1: none).
fn leaders_now(bootstrap: &str, topic: &str) -> BTreeMap<i32, i32> {
    let client = metadata_client(bootstrap);
    match client
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
    {
        Ok(md) => md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader()))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Every acknowledged record is where it was acknowledged (read from the leaders); returns
/// what was read.
fn check_acked(cluster: &Cluster, topic: &str, acked: &[Acked]) -> HashMap<(i32, i64), String> {
    let seen = read_all(&cluster.bootstrap(), topic);
    let missing: Vec<String> = acked
        .iter()
        .filter(|r| seen.get(&(r.partition, r.offset)) != Some(&r.payload))
        .map(|r| format!("{r:?}: found {:?}", seen.get(&(r.partition, r.offset))))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost or moved: {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)],
        cluster.logs()
    );
    seen
}

/// Stop every broker cleanly and compare each partition's replicas byte for byte, but for
/// trailing control batches: the brokers stop one after the other, and a leader elected
/// after a broker stopped appends its leader-change control batch where that broker never
/// sees it.
fn stop_and_compare_replicas(cluster: &mut Cluster, topic: &str) {
    for b in &mut cluster.brokers {
        assert!(b.stop(), "clean stop");
    }
    for p in 0..PARTITIONS {
        let logs: Vec<Vec<u8>> = cluster
            .brokers
            .iter()
            .map(|b| without_trailing_control_batches(replica_bytes(b, topic, p)))
            .collect();
        assert!(!logs[0].is_empty(), "partition {p} holds data");
        for (i, l) in logs.iter().enumerate().skip(1) {
            assert!(
                *l == logs[0],
                "partition {p}: node {} holds {} bytes, node 1 holds {}, and they differ",
                i + 1,
                l.len(),
                logs[0].len()
            );
        }
    }
}

/// `bytes` (whole batches) without the control batches at its end.
fn without_trailing_control_batches(bytes: Vec<u8>) -> Vec<u8> {
    let mut ends = Vec::new(); // (start, end, control) of each batch
    let mut pos = 0;
    while pos + 23 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let attributes = i16::from_be_bytes(bytes[pos + 21..pos + 23].try_into().unwrap());
        ends.push((pos, pos + 12 + len, attributes & 0x20 != 0));
        pos += 12 + len;
    }
    let keep = ends
        .iter()
        .rposition(|(_, _, control)| !control)
        .map_or(0, |i| ends[i].1);
    bytes[..keep].to_vec()
}

/// A broker whose data directory is wiped (a lost disk) comes back with a new incarnation:
/// until it has caught up, its votes do not count, so it cannot help elect a leader that
/// lacks what it lost. With one broker wiped and another down, the partitions that need a
/// new leader stay leaderless (the survivor alone is no majority, and the wiped broker's
/// votes are ignored); the survivor's own partitions go on. Once the other broker is back,
/// the wiped one is re-replicated, registers its new data directory, and every replica
/// ends byte-identical with every acknowledged record in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_broker_rejoins_without_voting_until_it_caught_up() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&[1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    let topic = "wiped";
    wait_for_brokers(&bootstrap, 3);
    create_replicated(&cluster, topic).await;
    let leaders = wait_for_leaders(&bootstrap, topic, 3);
    let producer = retrying_producer(&bootstrap);
    let (mut acked, failed) = produce(&producer, topic, 0, PER_PHASE).await;
    assert_eq!(failed, 0, "no failure before any fault\n{}", cluster.logs());

    // The survivor leads the fewest partitions (at most one of three): the others need an
    // election once the other two brokers are gone.
    let led = |n: i32| leaders.values().filter(|&&l| l == n).count();
    let survivor = (1..=3).min_by_key(|&n| led(n)).expect("a node");
    let others: Vec<i32> = (1..=3).filter(|&n| n != survivor).collect();
    let (wiped, down) = (others[0], others[1]);
    let orphaned: Vec<i32> = leaders
        .iter()
        .filter(|(_, l)| **l != survivor)
        .map(|(p, _)| *p)
        .collect();
    eprintln!(
        "leaders {leaders:?}: wiping node {wiped}, stopping node {down}, orphaned {orphaned:?}"
    );
    cluster.node(down).kill9();
    cluster.node(wiped).kill9();
    let dir = cluster.node(wiped).data_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).expect("wipe the data directory");
    cluster.node(wiped).restart();
    let survivor_addr = cluster.node(survivor).bootstrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let now = leaders_now(&survivor_addr, topic);
        for p in &orphaned {
            let l = now.get(p).copied().unwrap_or(-1);
            // The survivor may still name a dead leader for a while; what must not happen is
            // an election won with the wiped broker's vote.
            assert!(
                l != survivor,
                "partition {p} got leader {l} with node {down} down and node {wiped} wiped: \
                 the wiped broker's vote counted\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        cluster
            .node(survivor)
            .logs_contain("rejoins with a new data directory"),
        "the survivor ignored the wiped broker's votes\n{}",
        cluster.logs()
    );

    // The stopped broker comes back: leaders are elected, the wiped broker catches up and
    // registers again.
    cluster.node(down).restart();
    let (a, _) = produce(&producer, topic, PER_PHASE, 2 * PER_PHASE).await;
    acked.extend(a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .node(wiped)
        .logs_contain("registering the new data directory")
    {
        assert!(
            Instant::now() < deadline,
            "the wiped broker did not catch up within 60 s\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (a, failed) = produce(&producer, topic, 2 * PER_PHASE, 3 * PER_PHASE).await;
    assert_eq!(
        failed,
        0,
        "no failure once every broker is back\n{}",
        cluster.logs()
    );
    acked.extend(a);
    check_acked(&cluster, topic, &acked);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_and_compare_replicas(&mut cluster, topic);
}

#[test]
fn a_cluster_member_refuses_inconsistent_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--seed-servers", "1@127.0.0.1:1", "--node-id", "1"],
            "rpc_listen",
        ),
        (
            &[
                "--seed-servers",
                "1@127.0.0.1:1,2@127.0.0.1:2",
                "--node-id",
                "3",
                "--rpc-listen",
                "127.0.0.1:1",
            ],
            "node_id",
        ),
        (
            &[
                "--seed-servers",
                "1@nohostport",
                "--node-id",
                "1",
                "--rpc-listen",
                "127.0.0.1:1",
            ],
            "seed_servers",
        ),
    ];
    for (args, name) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--metrics-listen")
            .arg("")
            .args(args);
        let out = run_with_timeout(&mut cmd, b"", Duration::from_secs(20));
        assert!(!out.status.success(), "{args:?} started");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(name),
            "{args:?}: the error names `{name}`: {text}"
        );
    }
}

/// Counts the partition assignments a group member received (one per rebalance).
#[derive(Default)]
struct Assignments(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Assignments {}

impl rdkafka::consumer::ConsumerContext for Assignments {
    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

type Member = rdkafka::consumer::BaseConsumer<Assignments>;

/// A member of consumer group `group` that commits only when told to; it starts from the
/// beginning of partitions that have no committed offset, so lost offsets would show as
/// records read again from the start.
fn group_consumer(bootstrap: &str, group: &str) -> Member {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "3")
        .create_with_context(Assignments::default())
        .expect("group consumer")
}

/// The broker coordinating `group`, as the running brokers of `cluster` answer
/// FindCoordinator, once one names a coordinator that is not `not` (a killed broker).
fn coordinator_of(cluster: &mut Cluster, group: &str, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        for b in cluster.brokers.iter_mut() {
            if !b.is_running() {
                continue;
            }
            match raw_find_coordinator(b.addr(), group) {
                Ok((0, node)) if Some(node) != not => return node,
                Ok(answer) => last = format!("{answer:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no coordinator for {group} within 30 s (last answer: {last})");
}

/// One delivered record: into `seen`, checked to be at or past `floor[partition]` (the
/// offsets committed before), so a lost commit (a restart from the beginning) fails here.
fn take(
    m: &rdkafka::message::BorrowedMessage<'_>,
    floor: &BTreeMap<i32, i64>,
    seen: &mut HashMap<(i32, i64), String>,
    cluster: &Cluster,
) {
    let (p, o) = (m.partition(), m.offset());
    let low = floor.get(&p).copied().unwrap_or(0);
    assert!(
        o >= low,
        "partition {p}: offset {o} delivered, below the committed {low}: the commit was lost\n{}",
        cluster.logs()
    );
    let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
    seen.insert((p, o), payload);
}

/// Poll `consumer` until `want(seen)` or 60 s; every record it delivers goes through
/// [`take`].
fn consume_while(
    consumer: &Member,
    floor: &BTreeMap<i32, i64>,
    seen: &mut HashMap<(i32, i64), String>,
    want: impl Fn(&HashMap<(i32, i64), String>) -> bool,
    cluster: &Cluster,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want(seen) {
        assert!(
            Instant::now() < deadline,
            "the group consumer stalled with {} records\n{}",
            seen.len(),
            cluster.logs()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => take(&m, floor, seen, cluster),
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
}

/// Commit `offsets` ((partition, next offset) of `topic`) as the group member `consumer`,
/// retrying while the coordinator moves and the member rejoins (records delivered meanwhile
/// go through [`take`]).
fn commit_as_member(
    consumer: &Member,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    floor: &BTreeMap<i32, i64>,
    seen: &mut HashMap<(i32, i64), String>,
    cluster: &Cluster,
) {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .expect("add partition offset");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("commit: {e}; retrying");
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    take(&m, floor, seen, cluster);
                }
            }
            Err(e) => panic!("commit failed for 30 s: {e}\n{}", cluster.logs()),
        }
    }
}

/// Per partition, the offset after the last record in `seen`.
fn next_offsets(seen: &HashMap<(i32, i64), String>) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for &(p, o) in seen.keys() {
        let e = next.entry(p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    next
}

/// Committed offsets as a plain map (-1: none), read through `bootstrap`.
fn committed_map(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    committed(bootstrap, group, topic, PARTITIONS)
        .into_iter()
        .map(|(p, o)| (p, o.to_raw().unwrap_or(-1)))
        .collect()
}

/// `__consumer_offsets` is replicated and the group coordinator moves with its partition's
/// leadership (issue 12, item 3). A group member consumes and commits; the coordinator is
/// killed with `kill -9`: FindCoordinator names another broker, the member goes on by itself
/// without reading anything below its commit again, and commits through the new
/// coordinator. The killed broker comes back, the second coordinator is killed too, and a
/// new member of the group resumes exactly where the first one committed: every offset
/// acknowledged by either coordinator survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_survive_coordinator_failover() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&[1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    let topic = "grouped";
    let group = "failover-group";
    wait_for_brokers(&bootstrap, 3);
    create_replicated(&cluster, topic).await;
    wait_for_leaders(&bootstrap, topic, 3);
    // Every partition of __consumer_offsets has three replicas on distinct brokers.
    for (p, r) in replica_lists(&bootstrap, "__consumer_offsets", 16)
        .iter()
        .enumerate()
    {
        let distinct: std::collections::BTreeSet<_> = r.iter().collect();
        assert_eq!(distinct.len(), 3, "__consumer_offsets-{p} replicas {r:?}");
    }
    let producer = retrying_producer(&bootstrap);
    let (acked, failed) = produce(&producer, topic, 0, 600).await;
    assert_eq!(failed, 0, "no failure before any fault\n{}", cluster.logs());

    // A member consumes about half and commits its positions.
    let a = group_consumer(&bootstrap, group);
    a.subscribe(&[topic]).expect("subscribe");
    let mut seen = HashMap::new();
    let none = BTreeMap::new();
    consume_while(&a, &none, &mut seen, |s| s.len() >= 300, &cluster);
    let consumed = next_offsets(&seen);
    commit_as_member(&a, topic, &consumed, &none, &mut seen, &cluster);
    let assigned = a.context().0.load(std::sync::atomic::Ordering::SeqCst);
    let first = committed_map(&bootstrap, group, topic);
    for (p, o) in &consumed {
        assert_eq!(first[p], *o, "partition {p}: the commit is read back");
    }

    // kill -9 of the coordinator: the member goes on, never below its commit.
    let coordinator = coordinator_of(&mut cluster, group, None);
    cluster.node(coordinator).kill9();
    let successor = coordinator_of(&mut cluster, group, Some(coordinator));
    eprintln!("coordinator {coordinator} killed; {successor} took over");
    let all: HashMap<(i32, i64), String> = acked
        .iter()
        .map(|r| ((r.partition, r.offset), r.payload.clone()))
        .collect();
    consume_while(
        &a,
        &first,
        &mut seen,
        |s| all.keys().all(|k| s.contains_key(k)),
        &cluster,
    );
    for (k, v) in &all {
        assert_eq!(seen.get(k), Some(v), "record at {k:?} as acknowledged");
    }
    let ends = next_offsets(&seen);
    commit_as_member(&a, topic, &ends, &first, &mut seen, &cluster);
    let second = committed_map(&bootstrap, group, topic);
    assert_eq!(second, ends, "committed through the new coordinator");
    // The group's membership was recorded in __consumer_offsets and the new coordinator
    // restored it: the member carried on with its generation, without a rebalance.
    assert_eq!(
        a.context().0.load(std::sync::atomic::Ordering::SeqCst),
        assigned,
        "no rebalance across the coordinator's failover\n{}",
        cluster.logs()
    );
    // The member leaves; the killed broker comes back and catches up, and every partition's
    // leadership returns to its preferred replica (the first of its replica list), so leaders
    // stay spread as assigned.
    drop(a);
    cluster.node(coordinator).restart();
    wait_for_brokers(&bootstrap, 3);
    let preferred: BTreeMap<i32, i32> = replica_lists(&bootstrap, topic, PARTITIONS as usize)
        .iter()
        .enumerate()
        .map(|(p, r)| (p as i32, r[0]))
        .collect();
    let spread: std::collections::BTreeSet<i32> = preferred.values().copied().collect();
    assert_eq!(
        spread.len(),
        3,
        "preferred leaders on distinct brokers: {preferred:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaders_now(&bootstrap, topic) != preferred {
        assert!(
            Instant::now() < deadline,
            "leaders {:?} did not return to the preferred replicas {preferred:?} within 30 s\n{}",
            leaders_now(&bootstrap, topic),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // More records, then the second coordinator dies too: a new member resumes exactly at
    // the commit.
    let (more, failed) = produce_tagged(&producer, topic, "after", 600, 660).await;
    assert_eq!(
        failed,
        0,
        "no failure with every broker up\n{}",
        cluster.logs()
    );
    let now = coordinator_of(&mut cluster, group, None);
    cluster.node(now).kill9();
    let next = coordinator_of(&mut cluster, group, Some(now));
    eprintln!("coordinator {now} killed; {next} took over");
    let b = group_consumer(&bootstrap, group);
    b.subscribe(&[topic]).expect("subscribe");
    let mut seen_b = HashMap::new();
    let wanted: HashMap<(i32, i64), String> = more
        .iter()
        .map(|r| ((r.partition, r.offset), r.payload.clone()))
        .collect();
    consume_while(
        &b,
        &second,
        &mut seen_b,
        |s| wanted.keys().all(|k| s.contains_key(k)),
        &cluster,
    );
    // Nothing consumed before the commit came back (the floor check) and nothing more
    // arrived: exactly the records produced after it.
    let _ = b.poll(Duration::from_millis(500));
    assert!(
        seen_b.keys().all(|k| wanted.contains_key(k)),
        "only records after the commit: {:?}",
        seen_b
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .collect::<Vec<_>>()
    );
    drop(b);
    cluster.node(now).restart();
    for broker in &mut cluster.brokers {
        assert!(broker.stop(), "clean stop");
    }
}

/// Every running broker's own Metadata answer for `topic` (partition → leader), once every
/// broker names a leader other than `not` for every partition and they all agree; panics
/// after 20 s.
fn agreed_leaders(cluster: &mut Cluster, topic: &str, not: Option<i32>) -> BTreeMap<i32, i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut answers = Vec::new();
        for (i, b) in cluster.brokers.iter_mut().enumerate() {
            if !b.is_running() {
                continue;
            }
            match raw_metadata_leaders(b.addr(), topic) {
                Ok(parts) => answers.push((i + 1, parts)),
                Err(e) => last = format!("node {}: {e}", i + 1),
            }
        }
        let leaders = |parts: &BTreeMap<i32, (i16, i32)>| -> BTreeMap<i32, i32> {
            parts.iter().map(|(p, (_, l))| (*p, *l)).collect()
        };
        if let Some((_, first)) = answers.first() {
            let want = leaders(first);
            let good = want.len() == PARTITIONS as usize
                && want.values().all(|&l| l > 0 && Some(l) != not)
                && answers.iter().all(|(_, a)| leaders(a) == want);
            if good {
                return want;
            }
            last = format!("{answers:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the brokers did not agree on every leader of {topic} within 20 s: {last}");
}

/// With four brokers and three replicas per partition, each broker lacks some partitions'
/// replicas, yet every broker names every partition's leader in Metadata (leaders tell the
/// brokers without a replica, twice a second) and the same coordinator for a group, also
/// right after a leader is killed with `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_without_a_replica_know_the_leaders() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&[1, 1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    let topic = "four";
    wait_for_brokers(&bootstrap, 4);
    create_replicated(&cluster, topic).await;
    let replicas = replica_lists(&bootstrap, topic, PARTITIONS as usize);
    for (p, r) in replicas.iter().enumerate() {
        assert_eq!(r.len(), 3, "partition {p}: three replicas of four brokers");
    }
    let before = agreed_leaders(&mut cluster, topic, None);
    // A group's coordinator is the same from every broker, replica or not.
    let group = "four-group";
    let coordinator = coordinator_of(&mut cluster, group, None);
    for (i, b) in cluster.brokers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match raw_find_coordinator(b.addr(), group) {
                Ok((0, node)) if node == coordinator => break,
                answer => assert!(
                    Instant::now() < deadline,
                    "node {}: FindCoordinator {answer:?}, expected {coordinator}",
                    i + 1
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let victim = before[&0];
    cluster.node(victim).kill9();
    let after = agreed_leaders(&mut cluster, topic, Some(victim));
    eprintln!("leaders {before:?}; node {victim} killed; now {after:?}");
    cluster.node(victim).restart();
    for broker in &mut cluster.brokers {
        assert!(broker.stop(), "clean stop");
    }
}

/// The record batches of one replica of a partition from the batch holding `from` on.
fn replica_bytes_from(broker: &Broker, topic: &str, partition: i32, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, path) in segment_files(&broker.partition_dir(topic, partition)) {
        let bytes = std::fs::read(&path).unwrap();
        for b in segment_batches(&path) {
            if b.base_offset + i64::from(b.last_offset_delta) >= from {
                out.extend_from_slice(&bytes[b.position as usize..(b.position + b.size) as usize]);
            }
        }
    }
    out
}

/// The base offset of a replica's first segment on disk.
fn first_segment(broker: &Broker, topic: &str, partition: i32) -> i64 {
    segment_files(&broker.partition_dir(topic, partition))
        .first()
        .map_or(0, |s| s.0)
}

/// Retention on replicated partitions (Raft snapshots). A topic with small segments, one
/// broker killed with `kill -9`; while it is down DeleteRecords (a real admin client) moves
/// every partition's log start, and the retention pass of the running replicas removes the
/// segments below it, moving their Raft base past what the stopped broker holds. Back, that
/// broker is behind its leaders' base and catches up from a snapshot (its log reset to the
/// base). Meanwhile one group commits offsets often enough that the replicated
/// `__consumer_offsets` partition is compacted by the log cleaner. Checked: the low
/// watermark is the deleted-to offset on every partition, consumers read from there, every
/// acknowledged record at or past it is in place, the group's latest offsets survive, and
/// after a clean stop the replicas hold the same bytes from the highest first segment on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_delete_records_on_replicated_partitions() {
    let _one = one_cluster_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "retention_check_interval_ms = 300\nlog_cleaner_backoff_ms = 300\n",
    )
    .expect("config");
    let mut cluster = Cluster::start_args(
        &[1, 1, 1],
        &[
            "--config".into(),
            config.to_str().unwrap().into(),
            "--offsets-topic-partitions".into(),
            "1".into(),
            "--offsets-topic-segment-bytes".into(),
            "16384".into(),
        ],
    );
    let bootstrap = cluster.bootstrap();
    let topic = "trimmed";
    wait_for_brokers(&bootstrap, 3);
    create_replicated_with(&cluster, topic, &[("segment.bytes", "16384")]).await;
    wait_for_leaders(&bootstrap, topic, 3);
    let admin = admin_client(&bootstrap);
    let opts = rdkafka::admin::AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(15)))
        .request_timeout(Some(Duration::from_secs(15)));
    let producer = retrying_producer(&bootstrap);
    let tag = "x".repeat(900);
    let (mut acked, failed) = produce_tagged(&producer, topic, &tag, 0, PER_PHASE).await;
    assert_eq!(failed, 0, "no failure before any fault\n{}", cluster.logs());

    let down = 3;
    cluster.node(down).kill9();
    let (a, _) = produce_tagged(&producer, topic, &tag, PER_PHASE, 2 * PER_PHASE).await;
    acked.extend(a);

    // DeleteRecords to the middle of what each partition holds.
    let mut targets = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = tokio::task::block_in_place(|| watermarks(&bootstrap, topic, p));
        targets.insert(p, high / 2);
        tpl.add_partition_offset(topic, p, Offset::Offset(high / 2))
            .unwrap();
    }
    let deleted = admin
        .delete_records(&tpl, &opts)
        .await
        .expect("DeleteRecords");
    for e in deleted.elements() {
        assert!(e.error().is_ok(), "DeleteRecords {e:?}\n{}", cluster.logs());
        assert_eq!(
            e.offset(),
            Offset::Offset(targets[&e.partition()]),
            "the low watermark of partition {}",
            e.partition()
        );
    }

    // The running replicas remove the segments below the new start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let trimmed = (1..=2)
            .all(|n| (0..PARTITIONS).all(|p| first_segment(&cluster.brokers[n - 1], topic, p) > 0));
        if trimmed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segments below the log start not removed\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Committed offsets, many times over: the replicated offsets partition is compacted.
    let group_topic_offsets: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    tokio::task::block_in_place(|| {
        let busy = simple_consumer(&bootstrap, "busy");
        for i in 0..400 {
            let offsets: Vec<(i32, i64)> = group_topic_offsets
                .iter()
                .map(|&(p, _)| (p, i + i64::from(p)))
                .collect();
            common::commit_offsets(&busy, topic, &offsets);
        }
    });

    // The stopped broker is behind its leaders' base: it installs a snapshot.
    cluster.node(down).restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .node(down)
        .logs_contain("installing the leader's snapshot")
    {
        assert!(
            Instant::now() < deadline,
            "node {down} did not install a snapshot\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (a, failed) = produce_tagged(&producer, topic, &tag, 2 * PER_PHASE, 3 * PER_PHASE).await;
    assert_eq!(
        failed,
        0,
        "no failure with every broker back\n{}",
        cluster.logs()
    );
    acked.extend(a);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .brokers
        .iter()
        .any(|b| b.logs_have_line(&["log cleaner pass", "__consumer_offsets-0"]))
    {
        assert!(
            Instant::now() < deadline,
            "__consumer_offsets was not compacted\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let committed =
        tokio::task::block_in_place(|| common::committed(&bootstrap, "busy", topic, PARTITIONS));
    for p in 0..PARTITIONS {
        assert_eq!(
            committed[&p],
            Offset::Offset(399 + i64::from(p)),
            "the group's latest offset of partition {p}"
        );
    }

    for p in 0..PARTITIONS {
        let (low, _) = tokio::task::block_in_place(|| watermarks(&bootstrap, topic, p));
        assert_eq!(low, targets[&p], "low watermark of partition {p}");
    }
    let seen = tokio::task::block_in_place(|| read_all(&bootstrap, topic));
    let below: Vec<_> = seen
        .keys()
        .filter(|(p, o)| *o < targets[p])
        .take(5)
        .collect();
    assert!(below.is_empty(), "deleted records were read: {below:?}");
    let kept: Vec<Acked> = acked
        .into_iter()
        .filter(|r| r.offset >= targets[&r.partition])
        .collect();
    check_acked(&cluster, topic, &kept);

    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in &mut cluster.brokers {
        assert!(b.stop(), "clean stop");
    }
    for p in 0..PARTITIONS {
        let from = cluster
            .brokers
            .iter()
            .map(|b| first_segment(b, topic, p))
            .max()
            .unwrap();
        let logs: Vec<Vec<u8>> = cluster
            .brokers
            .iter()
            .map(|b| replica_bytes_from(b, topic, p, from))
            .collect();
        assert!(!logs[0].is_empty(), "partition {p} holds data");
        for (i, l) in logs.iter().enumerate().skip(1) {
            assert!(
                *l == logs[0],
                "partition {p}: node {} differs from node 1 from offset {from}",
                i + 1
            );
        }
    }
}

/// Keyed updates (and tombstones) of `keys` keys for `rounds`, acks=all: the latest value
/// (None: deleted) of each key goes into `table`, the records acknowledged per partition into
/// `produced`; returns how many were not acknowledged.
async fn update_table(
    producer: &FutureProducer,
    topic: &str,
    rounds: std::ops::Range<usize>,
    keys: usize,
    deleted: &[usize],
    table: &mut BTreeMap<String, Option<String>>,
    produced: &mut BTreeMap<i32, usize>,
) -> usize {
    let mut failed = 0;
    for r in rounds.clone() {
        let last = r + 1 == rounds.end;
        let sends = (0..keys).map(|k| {
            let key = format!("key-{k}");
            let value = (!(last && deleted.contains(&k)))
                .then(|| format!("{key}-round-{r}-{}", "v".repeat(700)));
            async move {
                let mut record = FutureRecord::to(topic).key(&key);
                if let Some(v) = &value {
                    record = record.payload(v);
                }
                let res = producer.send(record, Duration::from_secs(30)).await;
                (key, value, res)
            }
        });
        for (key, value, res) in futures::future::join_all(sends).await {
            match res {
                Ok(d) => {
                    *produced.entry(d.partition).or_default() += 1;
                    table.insert(key, value);
                }
                Err((e, _)) => {
                    eprintln!("not acknowledged: {key}: {e}");
                    failed += 1;
                }
            }
        }
    }
    failed
}

/// Log compaction on replicated partitions: a compacted topic (16 KiB segments) with every
/// partition on three brokers takes many updates of 60 keys, and tombstones, while one
/// broker is down (`kill -9`). The running replicas move their Raft base and clean their
/// logs below it (leaders and followers alike). Back, the stopped broker is behind its
/// leaders' base: it installs their snapshot and copies the compacted prefix from the
/// leader. Once it leads the partition it is preferred for, a consumer reading every
/// partition from the beginning (a Kafka Streams-style restore) gets exactly the table (the
/// latest value of every live key, no deleted key with a value), with fewer records than
/// were produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_restores_its_table_from_a_replica_seeded_by_a_snapshot() {
    let _one = one_cluster_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "retention_check_interval_ms = 300\nlog_cleaner_backoff_ms = 300\n",
    )
    .expect("config");
    let mut cluster = Cluster::start_args(
        &[1, 1, 1],
        &["--config".into(), config.to_str().unwrap().into()],
    );
    let bootstrap = cluster.bootstrap();
    let topic = "table";
    wait_for_brokers(&bootstrap, 3);
    create_replicated_with(
        &cluster,
        topic,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "16384"),
            ("min.cleanable.dirty.ratio", "0.1"),
        ],
    )
    .await;
    wait_for_leaders(&bootstrap, topic, 3);
    let producer = retrying_producer(&bootstrap);
    let (keys, deleted) = (60, [0, 1, 2, 3, 4]);
    let mut table = BTreeMap::new();
    let mut produced = BTreeMap::new();
    let failed = update_table(&producer, topic, 0..3, keys, &[], &mut table, &mut produced).await;
    assert_eq!(failed, 0, "no failure before any fault\n{}", cluster.logs());

    let down = 3;
    cluster.node(down).kill9();
    let failed = update_table(
        &producer,
        topic,
        3..30,
        keys,
        &deleted,
        &mut table,
        &mut produced,
    )
    .await;
    assert_eq!(failed, 0, "no failure with two brokers\n{}", cluster.logs());

    // The running replicas move their base and clean below it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(1..=2).all(|n| {
        let b = &cluster.brokers[n - 1];
        b.logs_have_line(&["log cleaner pass", "table-"])
            && b.logs_have_line(&["Raft log compacted", "table-"])
    }) {
        assert!(
            Instant::now() < deadline,
            "the running replicas did not compact and clean\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Back, the stopped broker installs a snapshot and copies the compacted prefix.
    cluster.node(down).restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .node(down)
        .logs_contain("copied the compacted prefix from the leader")
    {
        assert!(
            Instant::now() < deadline,
            "node {down} did not copy a compacted prefix\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // A few more updates, then the broker leads the partition it is preferred for.
    let failed = update_table(
        &producer,
        topic,
        30..31,
        keys,
        &deleted,
        &mut table,
        &mut produced,
    )
    .await;
    assert_eq!(
        failed,
        0,
        "no failure with every broker back\n{}",
        cluster.logs()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let led = loop {
        let leaders = tokio::task::block_in_place(|| leaders_now(&bootstrap, topic));
        if let Some((&p, _)) = leaders.iter().find(|(_, l)| **l == down) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "node {down} leads no partition: {leaders:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let mut restored: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut read: BTreeMap<i32, usize> = BTreeMap::new();
    tokio::task::block_in_place(|| {
        read_each(&bootstrap, topic, |p, _, key, value| {
            let key = String::from_utf8(key.expect("every record has a key").to_vec()).unwrap();
            let value = value.map(|v| String::from_utf8(v.to_vec()).unwrap());
            *read.entry(p).or_default() += 1;
            restored.insert(key, value);
        })
    });
    let live = |t: &BTreeMap<String, Option<String>>| -> BTreeMap<String, String> {
        t.iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    };
    assert_eq!(
        live(&restored),
        live(&table),
        "the restored table (partition {led} read from node {down})"
    );
    assert_eq!(live(&table).len(), keys - deleted.len());
    eprintln!(
        "partition {led} (led by node {down}, seeded by a snapshot): {} records read of {} produced",
        read[&led], produced[&led]
    );
    assert!(
        read[&led] < produced[&led] / 2,
        "partition {led} was compacted: {} records read of {} produced",
        read[&led],
        produced[&led]
    );
}

/// Spawn a client script that prints "ACK <partition> <offset> <value>" lines and a final
/// "FAILED <n>" line (`produce-acked` mode), returning its output once it exits.
fn spawn_acked(mut command: Command) -> std::thread::JoinHandle<(bool, String, String)> {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the client");
    std::thread::spawn(move || {
        let out = child.wait_with_output().expect("client output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// The acknowledged records of a `produce-acked` run, and its failure count.
fn parse_acked(out: &str) -> (Vec<Acked>, Option<usize>) {
    let mut acked = Vec::new();
    let mut failed = None;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ACK", p, o, v] => acked.push(Acked {
                partition: p.parse().expect("partition"),
                offset: o.parse().expect("offset"),
                payload: v.to_string(),
            }),
            ["FAILED", n, ..] => failed = n.parse().ok(),
            _ => {}
        }
    }
    (acked, failed)
}

/// The other real clients through a leader's `kill -9`: confluent-kafka (Python, librdkafka
/// 2.16) and kafkajs (JavaScript), both idempotent with acks=all, produce to a partition with
/// three replicas while the test kills its leader. Both ride through on their own (retries,
/// metadata refresh), and every record either got acknowledged is at its acknowledged offset
/// afterwards, once each, with no offset acknowledged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_and_kafkajs_ride_through_a_leader_kill() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&[1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    let topic = "polyglot";
    wait_for_brokers(&bootstrap, 3);
    create_replicated(&cluster, topic).await;
    let leader = wait_for_leaders(&bootstrap, topic, 3)[&0];
    const COUNT: usize = 400;
    let count = COUNT.to_string();
    let mut py = python_command("python_clients.py");
    py.args([bootstrap.as_str(), "produce-acked", topic, &count, "py"]);
    let python = spawn_acked(py);
    let js = spawn_acked(kafkajs_command(
        &bootstrap,
        &["produce-acked", topic, &count, "js"],
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eprintln!("killing node {leader}, the leader of {topic}-0");
    cluster.node(leader).kill9();
    let mut acked = Vec::new();
    for (name, handle) in [("confluent-kafka", python), ("kafkajs", js)] {
        let (ok, out, err) = tokio::task::block_in_place(|| handle.join().expect("client thread"));
        assert!(ok, "{name} failed: {err}\n{}", cluster.logs());
        let (a, failed) = parse_acked(&out);
        eprintln!("{name}: {} acknowledged, failed {failed:?}", a.len());
        assert_eq!(
            failed,
            Some(0),
            "{name} gave up on records: {out}\n{err}\n{}",
            cluster.logs()
        );
        assert_eq!(a.len(), COUNT, "{name}: every record acknowledged");
        acked.extend(a);
    }
    let mut offsets = std::collections::HashSet::new();
    for r in &acked {
        assert!(
            offsets.insert(r.offset),
            "offset {} acknowledged twice",
            r.offset
        );
    }
    cluster.node(leader).restart();
    let seen = check_acked(&cluster, topic, &acked);
    let stored = seen
        .iter()
        .filter(|((p, _), v)| *p == 0 && (v.starts_with("py-") || v.starts_with("js-")))
        .count();
    assert_eq!(stored, 2 * COUNT, "each record stored once");
}

/// What a Fetch answered for one partition: (error code, high watermark, last stable offset,
/// aborted transactions as (producer id, first offset)).
type FetchTxnView = (i16, i64, i64, Vec<(i64, i64)>);

/// Fetch (v11) of `topic`-0 from offset 0 at `addr`, read_committed or not.
fn raw_fetch_txn(
    addr: std::net::SocketAddr,
    topic: &str,
    read_committed: bool,
) -> std::io::Result<FetchTxnView> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(i8::from(read_committed))
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let r: FetchResponse = raw_round_trip(addr, &req, 11)?;
    let p = &r.responses[0].partitions[0];
    Ok((
        p.error_code,
        p.high_watermark,
        p.last_stable_offset,
        p.aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
    ))
}

/// WriteTxnMarkers (v1) at `addr`: one marker of (producer id, epoch) for `partitions` of
/// `topic`; each partition's error code.
fn raw_write_marker(
    addr: std::net::SocketAddr,
    producer: (i64, i16),
    commit: bool,
    topic: &str,
    partitions: Vec<i32>,
) -> std::io::Result<BTreeMap<i32, i16>> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{
        ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    let req = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_transaction_result(commit)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_indexes(partitions),
            ]),
    ]);
    let r: WriteTxnMarkersResponse = raw_round_trip(addr, &req, 1)?;
    Ok(r.markers[0].topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code))
        .collect())
}

/// OffsetFetch (v7, require_stable) of `group` for `topic`-0 at `addr`: (error code, offset).
fn raw_offset_fetch_stable(
    addr: std::net::SocketAddr,
    group: &str,
    topic: &str,
) -> std::io::Result<(i16, i64)> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(vec![0]),
        ]))
        .with_require_stable(true);
    let r: OffsetFetchResponse = raw_round_trip(addr, &req, 7)?;
    if r.error_code != 0 {
        return Ok((r.error_code, -1));
    }
    let p = &r.topics[0].partitions[0];
    Ok((p.error_code, p.committed_offset))
}

/// The partition side of transactions in a cluster (issue 13): a transactional batch on a
/// replicated partition holds the leader's last stable offset until WriteTxnMarkers (sent by
/// `sluice txn abort`, as a transaction coordinator would) has the leader commit the ABORT
/// marker through Raft (a follower answers NOT_LEADER_OR_FOLLOWER); after the leader's `kill -9`, the new leader
/// reports the same aborted transaction and stable offset. Offsets committed in a
/// transaction (TxnOffsetCommit) stay pending (UNSTABLE_OFFSET_COMMIT) until the COMMIT
/// marker reaches the group's `__consumer_offsets` partition, then count, also on the next
/// coordinator after a `kill -9`.
#[test]
fn transaction_markers_and_pending_offsets_replicate() {
    let _one = one_cluster_at_a_time();
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        GroupId, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
        ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
    };
    use kafka_protocol::protocol::StrBytes;

    let mut cluster = Cluster::start(&[1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    let topic = "txn-replicated";
    wait_for_brokers(&bootstrap, 3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(create_replicated(&cluster, topic));
    let leaders = wait_for_leaders(&bootstrap, topic, 3);
    let leader = leaders[&0];
    let addr_of = |c: &mut Cluster, id: i32| c.node(id).addr();

    // An idempotent producer id (the controller's block), then a transactional batch of it.
    let init: InitProducerIdResponse = raw_round_trip(
        addr_of(&mut cluster, leader),
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
        4,
    )
    .expect("InitProducerId");
    assert_eq!(init.error_code, 0);
    let producer = (init.producer_id.0, init.producer_epoch);
    let produce = |addr, producer: (i64, i16, i32), transactional: bool, value: &'static [u8]| {
        let mut batch = record_batch(
            producer,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
            vec![bytes::Bytes::from_static(value)],
        )
        .to_vec();
        if transactional {
            batch[22] |= 0x10;
            let crc = crc32c::crc32c(&batch[21..]);
            batch[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("txn-replicated")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from(batch))),
                    ]),
            ]);
        let r: ProduceResponse = raw_round_trip(addr, &req, 9).expect("Produce");
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    let leader_addr = addr_of(&mut cluster, leader);
    // The transaction starts after the leader's own first entry (a Raft control batch).
    let (code, first) = produce(leader_addr, (producer.0, producer.1, 0), true, b"in-txn");
    assert_eq!(code, 0);
    assert_eq!(produce(leader_addr, (-1, -1, -1), false, b"plain").0, 0);
    let (code, hw, lso, aborted) = raw_fetch_txn(leader_addr, topic, true).expect("Fetch");
    assert_eq!(code, 0);
    assert!(hw >= first + 2, "both batches committed: hw {hw}");
    assert_eq!(
        lso, first,
        "the open transaction holds the last stable offset"
    );
    assert!(aborted.is_empty());

    // The marker: refused by a follower, committed by the leader.
    let follower = (1..=3).find(|&b| b != leader).unwrap();
    let refused = raw_write_marker(
        addr_of(&mut cluster, follower),
        producer,
        false,
        topic,
        vec![0],
    )
    .expect("WriteTxnMarkers");
    assert_eq!(refused[&0], 6, "a follower: NOT_LEADER_OR_FOLLOWER");
    // `sluice txn abort` (Kafka's `kafka-transactions.sh abort`): DescribeProducers finds
    // the producer whose transaction starts there, WriteTxnMarkers aborts it.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "txn",
            "abort",
            "--topic",
            topic,
            "--partition",
            "0",
            "--start-offset",
            &first.to_string(),
            "--bootstrap-server",
            &bootstrap,
        ])
        .output()
        .expect("run sluice txn abort");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("producer {}", producer.0)),
        "sluice txn abort: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    let (_, hw, lso, aborted) = raw_fetch_txn(leader_addr, topic, true).expect("Fetch");
    assert_eq!(lso, hw, "stable once the marker committed");
    assert_eq!(aborted, vec![(producer.0, first)]);
    // A stale epoch's marker is refused.
    let stale = raw_write_marker(
        leader_addr,
        (producer.0, producer.1 - 1),
        true,
        topic,
        vec![0],
    )
    .expect("WriteTxnMarkers");
    assert_eq!(stale[&0], 47, "INVALID_PRODUCER_EPOCH");

    // Offsets in a transaction: pending until the COMMIT marker reaches the group's
    // partition, wherever its leader is.
    let group = "txn-offsets-group";
    let coordinator = coordinator_of(&mut cluster, group, None);
    let coordinator_addr = addr_of(&mut cluster, coordinator);
    let txn_commit = || -> TxnOffsetCommitResponse {
        raw_round_trip(
            coordinator_addr,
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("copier")))
                .with_group_id(GroupId(StrBytes::from_static_str("txn-offsets-group")))
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_generation_id(-1)
                .with_topics(vec![
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("txn-replicated")))
                        .with_partitions(vec![
                            TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(2)
                                .with_committed_leader_epoch(-1)
                                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
                        ]),
                ]),
            3,
        )
        .expect("TxnOffsetCommit")
    };
    // The coordinator may still be loading its partition (COORDINATOR_LOAD_IN_PROGRESS).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let code = txn_commit().topics[0].partitions[0].error_code;
        if code == 0 {
            break;
        }
        assert!(
            code == 14 && Instant::now() < deadline,
            "TxnOffsetCommit: {code}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        raw_offset_fetch_stable(addr_of(&mut cluster, coordinator), group, topic)
            .expect("OffsetFetch")
            .0,
        88,
        "UNSTABLE_OFFSET_COMMIT before the marker"
    );
    // Every broker gets the marker for all of __consumer_offsets: each partition is written
    // by exactly one, its leader.
    let mut written_by: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for b in 1..=3 {
        let codes = raw_write_marker(
            addr_of(&mut cluster, b),
            producer,
            true,
            "__consumer_offsets",
            (0..16).collect(),
        )
        .expect("WriteTxnMarkers");
        for (p, code) in codes {
            assert!(
                code == 0 || code == 6,
                "partition {p} at broker {b}: {code}"
            );
            if code == 0 {
                written_by.entry(p).or_default().push(b);
            }
        }
    }
    assert_eq!(written_by.len(), 16, "{written_by:?}");
    assert!(written_by.values().all(|v| v.len() == 1), "{written_by:?}");
    assert_eq!(
        raw_offset_fetch_stable(addr_of(&mut cluster, coordinator), group, topic)
            .expect("OffsetFetch"),
        (0, 2),
        "the committed transaction's offset"
    );

    // kill -9 the data partition's leader, then the group's coordinator: their successors
    // know the aborted transaction and the committed offset from their logs.
    cluster.node(leader).kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    'data: loop {
        let mut last = String::new();
        for b in (1..=3).filter(|&b| b != leader) {
            match raw_fetch_txn(addr_of(&mut cluster, b), topic, true) {
                Ok((0, hw, lso, aborted)) => {
                    assert_eq!(aborted, vec![(producer.0, first)], "new leader {b}");
                    assert_eq!(lso, hw, "new leader {b}");
                    break 'data;
                }
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new leader served read_committed within 30 s: {last}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if coordinator != leader {
        cluster.node(leader).restart();
        cluster.node(coordinator).kill9();
    }
    let next = coordinator_of(&mut cluster, group, Some(coordinator));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match raw_offset_fetch_stable(addr_of(&mut cluster, next), group, topic) {
            Ok((0, offset)) => {
                assert_eq!(offset, 2, "the offset survived the coordinator's failover");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "OffsetFetch at {next}: {other:?}\n{}",
                cluster.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// FindCoordinator (v2, key type 1) for `transactional_id` at `addr`: (error code, node).
fn raw_find_txn_coordinator(
    addr: std::net::SocketAddr,
    transactional_id: &str,
) -> std::io::Result<(i16, i32)> {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let req = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(transactional_id.to_string()))
        .with_key_type(1);
    let r: FindCoordinatorResponse = raw_round_trip(addr, &req, 2)?;
    Ok((r.error_code, r.node_id.0))
}

/// The broker coordinating `transactional_id`, as a running broker answers, other than `not`.
fn txn_coordinator_of(cluster: &mut Cluster, transactional_id: &str, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        for b in cluster.brokers.iter_mut() {
            if !b.is_running() {
                continue;
            }
            match raw_find_txn_coordinator(b.addr(), transactional_id) {
                Ok((0, node)) if Some(node) != not => return node,
                Ok(answer) => last = format!("{answer:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no coordinator for {transactional_id} within 30 s (last answer: {last})");
}

/// `transactions.py BOOTSTRAP args...` against the cluster (topics with three replicas), to
/// completion; its stdout.
fn txn_script(cluster: &Cluster, args: &[&str], timeout_s: u64) -> String {
    let output = run_with_timeout(
        python_command("transactions.py")
            .arg(cluster.bootstrap())
            .args(args)
            .env("SLUICE_TEST_REPLICATION", "3"),
        b"",
        Duration::from_secs(timeout_s),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "transactions.py {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    stdout
}

/// Exactly-once on a three-broker cluster (issue 13): a confluent-kafka
/// consume-transform-produce loop (transactional producer, `send_offsets_to_transaction`,
/// read_committed consumer) copies N keyed records between topics with three replicas while
/// the test kills, with `kill -9`, the broker coordinating its transactional id (the leader of
/// the id's `__transaction_state` partition), then the leader of an output partition, each
/// mid-stream and restarted after; the copier process is killed between cycles too. A copy
/// run to the end follows, and the output read with read_committed holds every input record
/// exactly once, in input order per partition.
#[test]
fn exactly_once_copy_survives_coordinator_and_leader_kill_9() {
    let _one = one_cluster_at_a_time();
    const N: &str = "3000";
    let env = [("SLUICE_TEST_REPLICATION", "3")];
    let mut cluster = Cluster::start(&[1, 1, 1]);
    let bootstrap = cluster.bootstrap();
    wait_for_brokers(&bootstrap, 3);
    let out = txn_script(&cluster, &["seed", "eos-in", N], 120);
    assert!(out.contains("seed ok"), "{out}");
    for cycle in 0..3 {
        let copier = Script::spawn_env(&bootstrap, &["copy", "eos-in", "eos-out"], &env);
        let started = copier.wait_for("committed", 2, Duration::from_secs(60));
        let victim = match cycle {
            1 => Some(txn_coordinator_of(&mut cluster, "eos-copy-1", None)),
            2 => Some(wait_for_partition_leader(&bootstrap, "eos-out")),
            _ => None,
        };
        if let Some(v) = victim {
            eprintln!("cycle {cycle}: kill -9 broker {v}");
            cluster.node(v).kill9();
            // The copier goes on with the new coordinator or leader.
            let after = copier.wait_for("committed", 2, Duration::from_secs(60));
            eprintln!("cycle {cycle}: progress after the kill: {after}");
            cluster.node(v).restart();
        }
        copier.kill();
        assert!(
            started,
            "copier cycle {cycle} made no progress\n{}",
            cluster.logs()
        );
    }
    let out = txn_script(&cluster, &["copy", "eos-in", "eos-out"], 240);
    assert!(out.contains("copy done"), "{out}");
    let out = txn_script(&cluster, &["verify", "eos-in", "eos-out", N], 120);
    assert!(out.contains("verify ok"), "{out}");
}
