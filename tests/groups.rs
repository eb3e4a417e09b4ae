//! Consumer groups through a real client (rdkafka, librdkafka 2.12): the group coordinator's
//! rebalances split partitions among members, committed offsets let a restarted consumer resume,
//! survive broker restarts and kill -9, and the admin calls (ListGroups, DescribeGroups,
//! DeleteGroups) see the groups.
//!
//! Every broker runs with a 200 ms initial rebalance delay (Kafka's default 3 s would only slow
//! the tests) and every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{
    Broker, BrokerOptions, admin_client, commit_offsets, committed, create_topic, producer_config,
    simple_consumer,
};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Longest any single phase of a test may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

fn start_broker() -> Broker {
    Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--group-initial-rebalance-delay-ms".into(),
            "200".into(),
            "--group-min-session-timeout-ms".into(),
            "1000".into(),
        ],
        ..BrokerOptions::default()
    })
}

fn group_consumer(bootstrap: &str, group: &str, strategy: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("partition.assignment.strategy", strategy)
        .set("fetch.wait.max.ms", "100")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4")
        .create()
        .expect("create group consumer")
}

/// Produce `count` keyed messages, spread over `partitions` explicitly (value = index).
fn produce(bootstrap: &str, topic: &str, partitions: i32, start: usize, count: usize) {
    let producer: BaseProducer = producer_config(bootstrap).create().expect("producer");
    for i in start..start + count {
        let key = format!("key-{i}");
        let value = i.to_string();
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition((i % partitions as usize) as i32);
        // A full local queue is drained by polling; bounded by the flush below.
        for _ in 0..1000 {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush produced messages");
}

/// Partitions of `topic` assigned to `consumer` right now.
fn assigned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Poll every consumer until `done` says the assignments are as wanted. Messages polled
/// meanwhile are recorded and committed, so nothing is lost.
fn poll_until(
    consumers: &[&BaseConsumer],
    seen: &mut Vec<(usize, i32, i64)>,
    what: &str,
    done: impl Fn(&[BTreeSet<i32>], usize) -> bool,
) {
    let started = Instant::now();
    loop {
        let assignments: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        if done(&assignments, seen.len()) {
            return;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "timed out waiting for {what}: assignments {assignments:?}, {} messages seen",
            seen.len()
        );
        for (i, c) in consumers.iter().enumerate() {
            poll_one(c, i, seen);
        }
    }
}

/// One poll; a message is recorded then committed synchronously.
fn poll_one(consumer: &BaseConsumer, index: usize, seen: &mut Vec<(usize, i32, i64)>) {
    match consumer.poll(Duration::from_millis(50)) {
        None => {}
        Some(Err(e)) => eprintln!("consumer {index}: {e}"),
        Some(Ok(m)) => {
            seen.push((index, m.partition(), m.offset()));
            if let Err(e) = consumer.commit_message(&m, CommitMode::Sync) {
                eprintln!(
                    "consumer {index}: commit of p{} @{} failed: {e}",
                    m.partition(),
                    m.offset()
                );
            }
        }
    }
}

fn disjoint_cover(assignments: &[BTreeSet<i32>], partitions: i32) -> bool {
    let total: usize = assignments.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = assignments.iter().flatten().copied().collect();
    total == partitions as usize && union.len() == partitions as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_splits_partitions_rebalances_and_consumes_each_message_once() {
    const TOPIC: &str = "groups-split";
    const PARTITIONS: i32 = 6;
    const MESSAGES: usize = 600;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    produce(&bootstrap, TOPIC, PARTITIONS, 0, MESSAGES / 2);

    let a = group_consumer(&bootstrap, "split", "range");
    let b = group_consumer(&bootstrap, "split", "range");
    a.subscribe(&[TOPIC]).expect("subscribe a");
    b.subscribe(&[TOPIC]).expect("subscribe b");
    let mut seen = Vec::new();
    poll_until(
        &[&a, &b],
        &mut seen,
        "two members with 3 partitions each",
        |s, _| disjoint_cover(s, PARTITIONS) && s.iter().all(|p| p.len() == 3),
    );
    eprintln!("two consumers: {:?} {:?}", assigned(&a), assigned(&b));
    poll_until(&[&a, &b], &mut seen, "half the messages", |_, n| {
        n >= MESSAGES / 2
    });

    // A third member joins: the group rebalances to 2 partitions each.
    let c = group_consumer(&bootstrap, "split", "range");
    c.subscribe(&[TOPIC]).expect("subscribe c");
    poll_until(
        &[&a, &b, &c],
        &mut seen,
        "three members with 2 partitions each",
        |s, _| disjoint_cover(s, PARTITIONS) && s.iter().all(|p| p.len() == 2),
    );
    eprintln!(
        "three consumers: {:?} {:?} {:?}",
        assigned(&a),
        assigned(&b),
        assigned(&c)
    );
    produce(&bootstrap, TOPIC, PARTITIONS, MESSAGES / 2, MESSAGES / 2);
    poll_until(&[&a, &b, &c], &mut seen, "every message", |_, n| {
        n >= MESSAGES
    });
    // Let stragglers (duplicates) show up.
    for _ in 0..10 {
        for (i, consumer) in [&a, &b, &c].into_iter().enumerate() {
            poll_one(consumer, i, &mut seen);
        }
    }

    let mut counts: HashMap<(i32, i64), usize> = HashMap::new();
    for (_, p, o) in &seen {
        *counts.entry((*p, *o)).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "consumed more than once: {duplicates:?}"
    );
    assert_eq!(counts.len(), MESSAGES, "distinct messages consumed");
    let by_consumer: BTreeMap<usize, usize> = seen.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.0).or_default() += 1;
        m
    });
    eprintln!("messages per consumer: {by_consumer:?}");
    assert!(
        by_consumer.get(&2).copied().unwrap_or(0) > 0,
        "the third consumer got messages"
    );
    close_bounded(vec![a, b, c]);
}

/// Leave the group and close each consumer, bounded in time. rust-rdkafka's drop of a
/// subscribed BaseConsumer can block forever inside librdkafka (its close runs the revoke
/// callback, whose `rd_kafka_assign` waits with no timeout: seen once here, in this test's
/// final drop, client side, with the broker idle and healthy). Unsubscribing and polling first
/// lets the revoke run in a normal poll; the drop itself runs on a thread of its own that the
/// test stops waiting for after 10 s.
fn close_bounded(consumers: Vec<BaseConsumer>) {
    for consumer in &consumers {
        consumer.unsubscribe();
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for consumer in &consumers {
            let _ = consumer.poll(Duration::from_millis(50));
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumers);
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        eprintln!("closing the consumers did not finish within 10 s (librdkafka close); moving on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_consumer_resumes_from_committed_offset() {
    const TOPIC: &str = "groups-resume";
    const PARTITIONS: i32 = 3;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    produce(&bootstrap, TOPIC, PARTITIONS, 0, 90);

    let mut seen = Vec::new();
    {
        let first = group_consumer(&bootstrap, "resume", "roundrobin");
        first.subscribe(&[TOPIC]).expect("subscribe");
        poll_until(&[&first], &mut seen, "40 messages", |_, n| n >= 40);
        first.unsubscribe();
    }
    let committed_after_first: BTreeMap<i32, i64> =
        seen.iter().fold(BTreeMap::new(), |mut m, s| {
            let e = m.entry(s.1).or_insert(0);
            *e = (*e).max(s.2 + 1);
            m
        });
    let first_count = seen.len();

    let second = group_consumer(&bootstrap, "resume", "roundrobin");
    second.subscribe(&[TOPIC]).expect("subscribe");
    poll_until(&[&second], &mut seen, "the rest", |_, n| n >= 90);
    for (_, p, o) in &seen[first_count..] {
        let from = committed_after_first.get(p).copied().unwrap_or(0);
        assert!(
            *o >= from,
            "p{p}: offset {o} re-read although {from} was committed"
        );
    }
    let distinct: BTreeSet<(i32, i64)> = seen.iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(distinct.len(), 90);
    assert_eq!(seen.len(), 90, "nothing consumed twice");

    // What the broker reports matches.
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let committed = second
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(30),
            "p{} committed",
            e.partition()
        );
    }
}

/// Commit with a manually assigned consumer (generation -1, no member id) and read it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_restart_and_kill_9() {
    const TOPIC: &str = "groups-durable";
    let mut broker = start_broker();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 4).await;
    // Many groups, so both shards coordinate some.
    let groups: Vec<String> = (0..8).map(|i| format!("durable-{i}")).collect();
    for (i, g) in groups.iter().enumerate() {
        let c = simple_consumer(&bootstrap, g);
        commit_offsets(&c, TOPIC, &[(0, 10 + i as i64), (3, 100 + i as i64)]);
    }

    assert!(broker.stop(), "graceful stop");
    broker.restart();
    let bootstrap = broker.bootstrap();
    for (i, g) in groups.iter().enumerate() {
        let got = committed(&bootstrap, g, TOPIC, 4);
        assert_eq!(
            got[&0],
            Offset::Offset(10 + i as i64),
            "{g} p0 after restart"
        );
        assert_eq!(got[&1], Offset::Invalid, "{g} p1 never committed");
        assert_eq!(
            got[&3],
            Offset::Offset(100 + i as i64),
            "{g} p3 after restart"
        );
    }
    // Groups with only offsets are listed (Empty).
    let lister = simple_consumer(&bootstrap, "lister");
    let list = lister
        .fetch_group_list(None, Duration::from_secs(10))
        .expect("group list");
    let names: BTreeSet<&str> = list.groups().iter().map(|g| g.name()).collect();
    for g in &groups {
        assert!(
            names.contains(g.as_str()),
            "{g} listed after restart: {names:?}"
        );
    }

    // New commits, then kill -9: acknowledged commits are durable.
    for (i, g) in groups.iter().enumerate() {
        let c = simple_consumer(&bootstrap, g);
        commit_offsets(&c, TOPIC, &[(0, 1000 + i as i64)]);
    }
    broker.kill9();
    broker.restart();
    let bootstrap = broker.bootstrap();
    for (i, g) in groups.iter().enumerate() {
        let got = committed(&bootstrap, g, TOPIC, 4);
        assert_eq!(
            got[&0],
            Offset::Offset(1000 + i as i64),
            "{g} p0 after kill -9"
        );
        assert_eq!(
            got[&3],
            Offset::Offset(100 + i as i64),
            "{g} p3 after kill -9"
        );
    }

    // A group member resumes from offsets committed before the crash.
    produce(&bootstrap, TOPIC, 4, 0, 40);
    let c = simple_consumer(&bootstrap, "resume-after-crash");
    commit_offsets(&c, TOPIC, &[(0, 5), (1, 5), (2, 5), (3, 5)]);
    broker.kill9();
    broker.restart();
    let bootstrap = broker.bootstrap();
    let member = group_consumer(&bootstrap, "resume-after-crash", "range");
    member.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = Vec::new();
    poll_until(
        &[&member],
        &mut seen,
        "the 20 uncommitted messages",
        |_, n| n >= 20,
    );
    assert!(
        seen.iter().all(|s| s.2 >= 5),
        "resumed at the committed offsets: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_assignment_strategy_forms_a_group() {
    const TOPIC: &str = "groups-strategies";
    const PARTITIONS: i32 = 4;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    produce(&bootstrap, TOPIC, PARTITIONS, 0, 40);
    for strategy in ["range", "roundrobin", "cooperative-sticky"] {
        let group = format!("strategy-{strategy}");
        let a = group_consumer(&bootstrap, &group, strategy);
        let b = group_consumer(&bootstrap, &group, strategy);
        a.subscribe(&[TOPIC]).expect("subscribe");
        b.subscribe(&[TOPIC]).expect("subscribe");
        let mut seen = Vec::new();
        poll_until(
            &[&a, &b],
            &mut seen,
            &format!("{strategy}: split and consume"),
            |s, n| disjoint_cover(s, PARTITIONS) && s.iter().all(|p| p.len() == 2) && n >= 40,
        );
        let list = a
            .fetch_group_list(Some(&group), Duration::from_secs(10))
            .expect("describe");
        let info = &list.groups()[0];
        assert_eq!(info.protocol(), strategy, "selected protocol");
        assert_eq!(info.state(), "Stable");
        assert_eq!(info.members().len(), 2);
    }

    // Protocol selection: the one both support wins.
    let a = group_consumer(&bootstrap, "mixed", "range,roundrobin");
    let b = group_consumer(&bootstrap, "mixed", "roundrobin");
    a.subscribe(&[TOPIC]).expect("subscribe");
    b.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = Vec::new();
    poll_until(&[&a, &b], &mut seen, "mixed group", |s, _| {
        disjoint_cover(s, PARTITIONS) && s.iter().all(|p| !p.is_empty())
    });
    let list = a
        .fetch_group_list(Some("mixed"), Duration::from_secs(10))
        .expect("describe");
    assert_eq!(list.groups()[0].protocol(), "roundrobin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_describes_and_deletes_groups() {
    const TOPIC: &str = "groups-admin";
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 2).await;
    produce(&bootstrap, TOPIC, 2, 0, 10);

    let member = group_consumer(&bootstrap, "admin-live", "range");
    member.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = Vec::new();
    poll_until(&[&member], &mut seen, "all messages", |s, n| {
        s[0].len() == 2 && n >= 10
    });
    let list = member
        .fetch_group_list(Some("admin-live"), Duration::from_secs(10))
        .expect("describe");
    let info = &list.groups()[0];
    assert_eq!((info.state(), info.protocol_type()), ("Stable", "consumer"));
    assert_eq!(info.members().len(), 1);
    assert!(
        info.members()[0]
            .assignment()
            .is_some_and(|a| !a.is_empty())
    );

    let admin = admin_client(&bootstrap);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_groups(&["admin-live", "admin-unknown"], &options)
        .await
        .expect("DeleteGroups");
    let codes: BTreeMap<String, Option<RDKafkaErrorCode>> = results
        .into_iter()
        .map(|r| match r {
            Ok(name) => (name, None),
            Err((name, code)) => (name, Some(code)),
        })
        .collect();
    assert_eq!(codes["admin-live"], Some(RDKafkaErrorCode::NonEmptyGroup));
    assert_eq!(
        codes["admin-unknown"],
        Some(RDKafkaErrorCode::GroupIdNotFound)
    );

    // The member leaves (LeaveGroup on close): the group becomes Empty with its offsets.
    drop(member);
    let lister = simple_consumer(&bootstrap, "lister");
    let started = Instant::now();
    loop {
        let list = lister
            .fetch_group_list(Some("admin-live"), Duration::from_secs(10))
            .expect("describe");
        if list.groups().first().is_some_and(|g| g.state() == "Empty") {
            break;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "group never became Empty"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        committed(&bootstrap, "admin-live", TOPIC, 2)[&0],
        Offset::Offset(5),
        "offsets kept after the member left"
    );
    let results = admin
        .delete_groups(&["admin-live"], &options)
        .await
        .expect("DeleteGroups");
    assert_eq!(results[0], Ok("admin-live".to_string()));
    let list = lister
        .fetch_group_list(None, Duration::from_secs(10))
        .expect("list");
    assert!(
        list.groups().iter().all(|g| g.name() != "admin-live"),
        "deleted group still listed"
    );
    assert_eq!(
        committed(&bootstrap, "admin-live", TOPIC, 2)[&0],
        Offset::Invalid,
        "offsets deleted with the group"
    );
}
