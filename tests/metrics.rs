//! The Prometheus endpoint (`--metrics-listen`): scraped during and after a produce/fetch run
//! with real clients (rdkafka), each body parsed with a Prometheus text-format parser
//! (`prometheus-parse`; the final body also with the strict OpenMetrics parser of Python's
//! prometheus_client). Checks that counters move, histograms have cumulative buckets ending in
//! +Inf == count, both shards report, partition high watermarks match what was produced, and
//! consumer-group lag is high watermark minus the committed offset.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Broker, BrokerOptions, RAW_IO_TIMEOUT, consume_all, create_topic, producer_config, watermarks,
};
use prometheus_parse::{Sample, Scrape, Value};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TOPIC: &str = "metrics-run";
const PARTITIONS: i32 = 4;
const PER_PARTITION: usize = 250;
const GROUP: &str = "metrics-group";
/// Committed offset of partition 0: consumed only partly, so its lag is not 0.
const PARTIAL_COMMIT: i64 = 40;
/// Longest any phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed scrape plus its raw text.
struct Parsed {
    text: String,
    samples: Vec<Sample>,
}

fn scrape(broker: &Broker) -> Parsed {
    let (status, content_type, text) = broker.scrape("/metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "content type {content_type:?}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    Parsed {
        text,
        samples: scrape.samples,
    }
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

impl Parsed {
    /// Samples of `metric` whose labels include every (key, value) of `with`.
    fn find<'a>(
        &'a self,
        metric: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.metric == metric && with.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// Sum of a counter or gauge over the matching series (0 if none).
    fn sum(&self, metric: &str, with: &[(&str, &str)]) -> f64 {
        self.find(metric, with).map(|s| number(&s.value)).sum()
    }

    /// The one matching series' value.
    fn one(&self, metric: &str, with: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.find(metric, with).collect();
        assert_eq!(found.len(), 1, "one {metric} with {with:?}, got {found:?}");
        number(&found[0].value)
    }

    /// Check every series of histogram `name`: buckets ascending and cumulative, the last one
    /// +Inf and equal to `<name>_count`. Returns the total count over all series.
    fn check_histogram(&self, name: &str) -> f64 {
        let mut total = 0.0;
        let mut series = 0;
        for s in self.samples.iter().filter(|s| s.metric == name) {
            let Value::Histogram(buckets) = &s.value else {
                panic!("{name} is not a histogram: {s:?}");
            };
            series += 1;
            assert!(buckets.len() > 2, "{name}: buckets {buckets:?}");
            for w in buckets.windows(2) {
                assert!(w[0].less_than < w[1].less_than, "{name}: bounds ascend");
                assert!(w[0].count <= w[1].count, "{name}: cumulative: {buckets:?}");
            }
            let last = buckets.last().unwrap();
            assert!(last.less_than.is_infinite(), "{name}: last bucket is +Inf");
            // The _count sample with the same labels.
            let count = self
                .samples
                .iter()
                .find(|c| c.metric == format!("{name}_count") && c.labels == s.labels)
                .unwrap_or_else(|| panic!("{name}_count for {}", s.labels));
            assert_eq!(last.count, number(&count.value), "{name}: +Inf == count");
            total += last.count;
        }
        assert!(series > 0, "no series of histogram {name}");
        total
    }
}

fn produce(bootstrap: &str) {
    let producer: BaseProducer = producer_config(bootstrap).create().expect("producer");
    for i in 0..PER_PARTITION * PARTITIONS as usize {
        let value = format!("value-{i}-{}", "x".repeat(i % 300));
        let mut record = BaseRecord::<(), _>::to(TOPIC)
            .payload(&value)
            .partition(i as i32 % PARTITIONS);
        for attempt in 0..1000 {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(attempt < 999, "send kept failing: {e}");
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 100 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(PHASE_TIMEOUT).expect("flush");
}

fn commit(bootstrap: &str, offsets: &[(i32, i64)]) {
    common::commit_offsets(&common::simple_consumer(bootstrap, GROUP), TOPIC, offsets);
}

#[test]
fn scrape_during_and_after_a_produce_fetch_run() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    tokio::runtime::Runtime::new()
        .expect("tokio")
        .block_on(create_topic(&bootstrap, TOPIC, PARTITIONS));
    let before = scrape(&broker);

    // Scrape continuously while a producer and then a consumer run.
    let done = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(0u32));
    let scraper = {
        let (done, during, addr) = (done.clone(), during.clone(), broker.metrics_addr());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::SeqCst) && started.elapsed() < PHASE_TIMEOUT * 2 {
                let (status, _, text) = common::http_get(addr, "/metrics").expect("scrape");
                assert_eq!(status, 200);
                assert!(text.ends_with("# EOF\n"));
                Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
                *during.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    produce(&bootstrap);
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let consumed = consume_all(&bootstrap, TOPIC, &partitions, PHASE_TIMEOUT);
    assert_eq!(
        consumed.values().map(Vec::len).sum::<usize>(),
        PER_PARTITION * PARTITIONS as usize
    );
    done.store(true, Ordering::SeqCst);
    scraper.join().expect("scraper thread");
    assert!(
        *during.lock().unwrap() > 0,
        "scraped while the run was going"
    );

    let mut offsets: Vec<(i32, i64)> = partitions
        .iter()
        .map(|&p| (p, PER_PARTITION as i64))
        .collect();
    offsets[0].1 = PARTIAL_COMMIT;
    commit(&bootstrap, &offsets);

    let after = scrape(&broker);
    for api in ["Produce", "Fetch"] {
        let (a, b) = (
            before.sum("sluice_requests_total", &[("api", api)]),
            after.sum("sluice_requests_total", &[("api", api)]),
        );
        assert!(b > a, "{api} requests went from {a} to {b}");
    }
    assert!(after.sum("sluice_requests_total", &[("api", "OffsetCommit")]) >= 1.0);
    let latency_count = after.check_histogram("sluice_request_duration_seconds");
    assert!(latency_count >= after.sum("sluice_requests_total", &[]) - 1.0);
    for api in ["Produce", "Fetch"] {
        let count = after.sum("sluice_request_duration_seconds_count", &[("api", api)]);
        assert_eq!(
            count,
            after.sum("sluice_requests_total", &[("api", api)]),
            "{api}: one latency observation per request"
        );
    }
    assert!(after.sum("sluice_request_bytes_total", &[]) > 0.0);
    assert!(after.sum("sluice_response_bytes_total", &[]) > 0.0);
    assert!(
        after.sum("sluice_request_bytes_total", &[])
            > before.sum("sluice_request_bytes_total", &[])
    );
    assert!(after.check_histogram("sluice_fsync_duration_seconds") > 0.0);
    // Small rounds go through the shard journal (on by default).
    let rounds = after.sum("sluice_journal_rounds_total", &[]);
    assert!(rounds > 0.0, "journal rounds counted");
    assert!(after.sum("sluice_journal_entries_total", &[]) >= rounds);
    assert!(after.sum("sluice_journal_written_bytes_total", &[]) >= 4096.0 * rounds);
    assert_eq!(
        after.find("sluice_journal_files_reused_total", &[]).count(),
        2,
        "one per shard"
    );
    assert!(after.check_histogram("sluice_produce_partition_bytes") > 0.0);
    assert!(after.check_histogram("sluice_fetch_partition_bytes") > 0.0);
    for shard in ["0", "1"] {
        assert_eq!(
            after
                .find("sluice_connections", &[("shard", shard)])
                .count(),
            1,
            "shard {shard} reports"
        );
        assert!(
            after
                .find("sluice_fsync_duration_seconds", &[("shard", shard)])
                .count()
                == 1
        );
    }
    // Partitions: high watermark as produced, one owner each, both shards own some.
    let mut owners = BTreeMap::new();
    for p in 0..PARTITIONS {
        let ps = p.to_string();
        let labels = [("topic", TOPIC), ("partition", ps.as_str())];
        assert_eq!(
            after.one("sluice_partition_high_watermark", &labels),
            PER_PARTITION as f64
        );
        assert_eq!(watermarks(&bootstrap, TOPIC, p).1, PER_PARTITION as i64);
        assert!(after.one("sluice_partition_size_bytes", &labels) > 0.0);
        let owner = after
            .find("sluice_partition_high_watermark", &labels)
            .next()
            .unwrap()
            .labels
            .get("shard")
            .unwrap()
            .to_string();
        owners.insert(p, owner);
        let lag = after.one(
            "sluice_group_lag",
            &[("group", GROUP), ("topic", TOPIC), ("partition", &ps)],
        );
        let committed = after.one(
            "sluice_group_committed_offset",
            &[("group", GROUP), ("topic", TOPIC), ("partition", &ps)],
        );
        assert_eq!(
            lag,
            PER_PARTITION as f64 - committed,
            "lag of partition {p}"
        );
    }
    assert_eq!(
        after.one(
            "sluice_group_lag",
            &[("group", GROUP), ("topic", TOPIC), ("partition", "0")]
        ),
        (PER_PARTITION as i64 - PARTIAL_COMMIT) as f64
    );
    assert!(
        owners.values().any(|o| o == "0") && owners.values().any(|o| o == "1"),
        "partitions on both shards: {owners:?}"
    );
    // Cross-shard traffic: both directions exist and something was sent.
    for (shard, target) in [("0", "1"), ("1", "0")] {
        assert_eq!(
            after
                .find(
                    "sluice_cross_shard_sent_total",
                    &[("shard", shard), ("target", target)]
                )
                .count(),
            1
        );
        assert_eq!(
            after
                .find(
                    "sluice_cross_shard_outstanding",
                    &[("shard", shard), ("target", target)]
                )
                .count(),
            1
        );
    }
    assert!(after.sum("sluice_cross_shard_sent_total", &[]) > 0.0);
    assert!(after.sum("sluice_cross_shard_received_total", &[]) > 0.0);
    assert_eq!(after.one("sluice_build_info", &[]), 1.0);
    assert!(after.text.contains("# TYPE sluice_requests counter\n"));
    strict_openmetrics_check(&after.text);
}

/// Parse `text` with the Prometheus project's own OpenMetrics parser (Python prometheus_client,
/// tests/clients/openmetrics_check.py), which is strict where `prometheus-parse` is lenient:
/// `# EOF`, `_total` on counters, cumulative buckets ending in +Inf == `_count`.
fn strict_openmetrics_check(text: &str) {
    let output = common::run_with_timeout(
        &mut common::python_command("openmetrics_check.py"),
        text.as_bytes(),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "strict OpenMetrics parse failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for family in [
        "sluice_requests counter",
        "sluice_request_duration_seconds histogram",
        "sluice_fsync_duration_seconds histogram",
        "sluice_group_lag gauge",
    ] {
        assert!(stdout.contains(family), "{family} in {stdout}");
    }
    assert!(stdout.ends_with("ok\n"), "{stdout}");
}

#[test]
fn other_paths_methods_and_garbage() {
    let broker = Broker::start();
    let (status, _, _) = broker.scrape("/nope");
    assert_eq!(status, 404);
    let (status, _, _) = broker.scrape("/metrics?name=x");
    assert_eq!(status, 200);
    for (request, want) in [
        (
            &b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
            "HTTP/1.1 405",
        ),
        (
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            "HTTP/1.1 400",
        ),
    ] {
        let mut s = TcpStream::connect_timeout(&broker.metrics_addr(), RAW_IO_TIMEOUT).unwrap();
        s.set_read_timeout(Some(RAW_IO_TIMEOUT)).unwrap();
        s.write_all(request).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with(want), "{request:?}: {answer:?}");
    }
    // A head as large as the limit (8 KiB) without its end is refused, not buffered without
    // end. Exactly the limit, so the broker has read every byte when it answers (closing with
    // unread bytes would reset the connection before the answer is read).
    let mut s = TcpStream::connect_timeout(&broker.metrics_addr(), RAW_IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(RAW_IO_TIMEOUT)).unwrap();
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(8 * 1024, b'a');
    let _ = s.write_all(&big);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The broker still serves.
    assert_eq!(broker.scrape("/metrics").0, 200);
}

#[test]
fn a_taken_metrics_port_is_logged_and_the_broker_serves_anyway() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap();
    let broker = Broker::start_with(BrokerOptions {
        metrics_listen: Some(addr.to_string()),
        ..BrokerOptions::default()
    });
    // Started (the harness waited for ApiVersions); the reason is in the log.
    wait_for_log(&broker, "cannot serve metrics");
    common::api_versions_v3(broker.addr(), 7);
}

#[test]
fn an_empty_metrics_listen_disables_the_endpoint() {
    let broker = Broker::start_with(BrokerOptions {
        metrics_listen: Some(String::new()),
        ..BrokerOptions::default()
    });
    wait_for_log(&broker, "metrics endpoint disabled");
    assert!(common::http_get(broker.metrics_addr(), "/metrics").is_err());
}

/// Waits (bounded) until the broker's log contains `needle`: shard 0 logs it while shard 1 may
/// already be answering the harness's readiness probe.
fn wait_for_log(broker: &Broker, needle: &str) {
    let started = Instant::now();
    while !broker.logs_text().contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {needle:?} in the log:\n{}",
            broker.logs_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
