//! One run, start to finish:
//! 1. connect to the bootstrap server, create the topics, wait for leaders;
//! 2. record every partition's latest offset (ListOffsets) so consumers
//!    start exactly where this run's data will begin;
//! 3. open all connections, then start the clock: producers follow their
//!    schedule from `start`, measurement begins after the warmup;
//! 4. every second print a live line; at the end let consumers drain;
//! 5. merge histograms and bitsets, write report.json and `.hgrm` files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::Connection;
use crate::consumer::{Consumer, ConsumerResult};
use crate::hgrm;
use crate::latency::{Clock, LatencyPair};
use crate::payload::PayloadSource;
use crate::producer::{Producer, ProducerResult};
use crate::report::{
    BrokerInfo, Delivery, Host, Latency, REPORT_VERSION, Report, Throughput, Tick, git_ref,
};
use crate::shared::{Counters, Interval, PacerSlot, PartitionRef, Shared, run_pacer};
use crate::workload::{Acks, ConsumeFrom, Workload};

/// How long to wait for created topics to have leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between the end of connection setup and the first scheduled send.
const START_DELAY: Duration = Duration::from_millis(200);

/// Run `workload` against `bootstrap`, write the report into `output`.
pub async fn run(
    bootstrap: &str,
    workload: Workload,
    output: &Path,
    command: Vec<String>,
) -> Result<Report> {
    workload.validate()?;
    std::fs::create_dir_all(output).with_context(|| format!("create {}", output.display()))?;
    let payloads = Arc::new(PayloadSource::from_workload(&workload)?);
    let target_rate = workload.target_messages_per_second(payloads.mean_size());
    let started_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let run_id = {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32
    };

    // 1. Topics and leaders.
    let mut control = Connection::connect(bootstrap)
        .await
        .with_context(|| format!("bootstrap server {bootstrap}"))?;
    let topics = workload.topic_names(&format!("sluice-load-{started_at_unix_s}-{run_id:08x}"));
    if control.versions.get(ApiKey::CreateTopics).is_ok() {
        control
            .create_topics(
                &topics,
                workload.partitions as i32,
                workload.replication_factor,
            )
            .await?;
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    let (metadata, partitions) = loop {
        let md = control.metadata(Some(&topics)).await?;
        let mut parts = Vec::new();
        let mut ready = md.topics.len() == topics.len();
        for t in &md.topics {
            if t.error_code != 0 || t.partitions.is_empty() {
                ready = false;
            }
            let name = t
                .name
                .clone()
                .unwrap_or(TopicName(StrBytes::from_static_str("")));
            for p in &t.partitions {
                if p.error_code != 0 || p.leader_id.0 < 0 {
                    ready = false;
                }
                parts.push(PartitionRef {
                    topic: name.clone(),
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                });
            }
        }
        if ready {
            break (md, parts);
        }
        if Instant::now() > deadline {
            bail!("topics {topics:?} have no leaders after {TOPIC_READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut partitions = partitions;
    partitions
        .sort_by(|a, b| (a.topic.0.as_str(), a.partition).cmp(&(b.topic.0.as_str(), b.partition)));
    let brokers: HashMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut broker_list: Vec<(i32, String)> = brokers.clone().into_iter().collect();
    broker_list.sort();
    let broker_info = BrokerInfo {
        bootstrap_server: bootstrap.to_string(),
        cluster_id: metadata.cluster_id.as_ref().map(|c| c.to_string()),
        brokers: broker_list,
        api_versions: control.versions.describe(),
    };

    // 2. Starting offsets, asked of each partition's leader.
    let mut start_offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut by_leader: HashMap<i32, Vec<(String, i32)>> = HashMap::new();
    for p in &partitions {
        by_leader
            .entry(p.leader)
            .or_default()
            .push((p.topic.0.to_string(), p.partition));
    }
    for (leader, ps) in &by_leader {
        let addr = brokers
            .get(leader)
            .with_context(|| format!("no address for broker {leader}"))?;
        let mut c = Connection::connect(addr).await?;
        start_offsets.extend(
            c.list_offsets(ps, workload.consume_from.list_offsets_timestamp())
                .await?,
        );
    }

    // 3. Connections, then the clock.
    let partitions = Arc::new(partitions);
    let index: Arc<HashMap<(String, i32), usize>> = Arc::new(
        partitions
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.topic.0.to_string(), p.partition), i))
            .collect(),
    );
    let mut producer_links = Vec::new();
    for _ in 0..workload.producers {
        producer_links.push(Producer::connect(&partitions, &brokers).await?);
    }
    // Consumer c gets partitions c, c + n, c + 2n, ...; one connection per
    // (consumer, leader).
    let mut consumer_conns = Vec::new();
    for c in 0..workload.consumers as usize {
        let mut mine: HashMap<i32, Vec<(PartitionRef, i64)>> = HashMap::new();
        for (i, p) in partitions.iter().enumerate() {
            if i % workload.consumers as usize == c {
                let off = start_offsets[&(p.topic.0.to_string(), p.partition)];
                mine.entry(p.leader).or_default().push((p.clone(), off));
            }
        }
        for (leader, ps) in mine {
            let conn = Connection::connect(&brokers[&leader]).await?;
            consumer_conns.push((conn, ps));
        }
    }

    let clock = Clock::new();
    let start_us = clock.now_us() + START_DELAY.as_micros() as u64;
    let measure_start_us = start_us + workload.warmup.0.as_micros() as u64;
    let end_us = measure_start_us + workload.duration.0.as_micros() as u64;
    let shared = Arc::new(Shared {
        clock,
        run_id,
        start_us,
        measure_start_us,
        end_us,
        counters: Counters::default(),
        interval: Mutex::new(Interval::default()),
        error_codes: Mutex::new(Default::default()),
        pacer_slots: (0..workload.producers)
            .map(|_| Arc::new(PacerSlot::default()))
            .collect(),
        pacer_thread: Mutex::new(None),
        stop_consumers: AtomicBool::new(false),
        stop_pacer: AtomicBool::new(false),
    });
    let pacer = {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sluice-load-pacer".into())
            .spawn(move || run_pacer(s))?
    };
    *shared.pacer_thread.lock().expect("not poisoned") = Some(pacer.thread().clone());

    let rate_per_producer = target_rate / f64::from(workload.producers);
    let mut producers = Vec::new();
    for (id, links) in producer_links.into_iter().enumerate() {
        let p = Producer::new(
            id as u32,
            shared.clone(),
            workload.clone(),
            partitions.clone(),
            index.clone(),
            links,
            payloads.clone(),
            rate_per_producer,
        );
        producers.push(tokio::spawn(p.run()));
    }
    let mut consumers = Vec::new();
    for (conn, ps) in consumer_conns {
        let c = Consumer::new(
            shared.clone(),
            conn,
            ps,
            workload.fetch_max_wait.0,
            workload.consume_from,
        )?;
        consumers.push(tokio::spawn(c.run()));
    }

    // 4. Live line every second until producers finish, then drain.
    let total_s = (workload.warmup.0 + workload.duration.0).as_secs().max(1);
    let bar = ProgressBar::new(total_s);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut timeline = Vec::new();
    let mut last = (0u64, 0u64, 0u64, 0u64);
    let mut second = 0u64;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let drain_deadline_after_end = workload.drain_timeout.0;
    let mut producers_done_at: Option<Instant> = None;
    loop {
        tokio::time::sleep_until(next_tick.into()).await;
        next_tick += Duration::from_secs(1);
        second += 1;
        let c = &shared.counters;
        let now = (
            c.acked.load(Ordering::Relaxed),
            c.acked_bytes.load(Ordering::Relaxed),
            c.consumed.load(Ordering::Relaxed),
            c.produce_errors.load(Ordering::Relaxed) + c.fetch_errors.load(Ordering::Relaxed),
        );
        let (pub_p50, pub_p99, e2e_p50, e2e_p99) = {
            let mut iv = shared.interval.lock().expect("not poisoned");
            let q = |h: &hdrhistogram::Histogram<u64>, x: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(x) as f64 / 1000.0
                }
            };
            let r = (
                q(&iv.publish.corrected, 0.5),
                q(&iv.publish.corrected, 0.99),
                q(&iv.end_to_end.corrected, 0.5),
                q(&iv.end_to_end.corrected, 0.99),
            );
            iv.publish.reset();
            iv.end_to_end.reset();
            r
        };
        let tick = Tick {
            second,
            acked_msgs_per_s: (now.0 - last.0) as f64,
            acked_mb_per_s: (now.1 - last.1) as f64 / 1e6,
            consumed_msgs_per_s: (now.2 - last.2) as f64,
            publish_p50_ms: pub_p50,
            publish_p99_ms: pub_p99,
            end_to_end_p50_ms: e2e_p50,
            end_to_end_p99_ms: e2e_p99,
            errors: now.3,
        };
        last = now;
        let phase = if shared.clock.now_us() < measure_start_us {
            "warmup"
        } else if shared.clock.now_us() < end_us {
            "measure"
        } else {
            "drain"
        };
        let line = format!(
            "[{second:>4}s {phase:<7}] {:>9.0} msgs/s {:>8.2} MB/s | publish p50 {:>8.3} p99 {:>8.3} ms | e2e p50 {:>8.3} p99 {:>8.3} ms | consumed {:>9.0}/s | errors {}",
            tick.acked_msgs_per_s,
            tick.acked_mb_per_s,
            tick.publish_p50_ms,
            tick.publish_p99_ms,
            tick.end_to_end_p50_ms,
            tick.end_to_end_p99_ms,
            tick.consumed_msgs_per_s,
            tick.errors
        );
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(&line);
        }
        bar.set_position(second.min(total_s));
        bar.set_message(format!("{:.0} msgs/s", tick.acked_msgs_per_s));
        timeline.push(tick);

        let producing_over = producers.iter().all(|h| h.is_finished());
        if producing_over && producers_done_at.is_none() {
            producers_done_at = Some(Instant::now());
        }
        if let Some(t) = producers_done_at {
            let expected = c.acked.load(Ordering::Relaxed);
            let caught_up = c.consumed.load(Ordering::Relaxed) >= expected;
            if consumers.is_empty() || caught_up || t.elapsed() >= drain_deadline_after_end {
                break;
            }
        }
        // Bounded: production ends at end_us; producers then flush within
        // the request timeout; draining is bounded by the drain timeout.
        let hard_limit = (workload.warmup.0
            + workload.duration.0
            + workload.request_timeout.0
            + workload.drain_timeout.0)
            .as_secs()
            + 10;
        if second > hard_limit {
            eprintln!("giving up after {second} s");
            break;
        }
    }
    bar.finish_and_clear();
    shared.stop_consumers.store(true, Ordering::Release);
    shared.stop_pacer.store(true, Ordering::Release);
    pacer.thread().unpark();

    let mut producer_results: Vec<ProducerResult> = Vec::new();
    for h in producers {
        producer_results.push(h.await.context("producer task")??);
    }
    let mut consumer_results: Vec<ConsumerResult> = Vec::new();
    for h in consumers {
        consumer_results.push(h.await.context("consumer task")??);
    }
    pacer.join().ok();

    // 5. Merge and report.
    let mut publish = LatencyPair::new();
    let mut e2e = LatencyPair::new();
    for p in &producer_results {
        publish.add(&p.publish);
    }
    for c in &consumer_results {
        e2e.add(&c.end_to_end);
    }
    let delivery = delivery(&workload, &producer_results, &consumer_results);
    let secs = workload.duration.0.as_secs_f64();
    let produce = Throughput::new(
        producer_results.iter().map(|p| p.measured_acked).sum(),
        producer_results
            .iter()
            .map(|p| p.measured_acked_bytes)
            .sum(),
        secs,
    );
    let consume = Throughput::new(
        consumer_results.iter().map(|c| c.measured_consumed).sum(),
        consumer_results
            .iter()
            .map(|c| c.measured_consumed_bytes)
            .sum(),
        secs,
    );
    let publish_latency = (workload.acks != Acks::None)
        .then(|| Latency::new("publish-latency", &publish.corrected, &publish.uncorrected));
    let end_to_end_latency = (workload.consumers > 0)
        .then(|| Latency::new("end-to-end-latency", &e2e.corrected, &e2e.uncorrected));
    let write_hgrm = |name: &str, h: &hdrhistogram::Histogram<u64>| -> Result<()> {
        let p = output.join(name);
        std::fs::write(&p, hgrm::write(h)).with_context(|| format!("write {}", p.display()))
    };
    if let Some(l) = &publish_latency {
        write_hgrm(&l.corrected_file, &publish.corrected)?;
        write_hgrm(&l.uncorrected_file, &publish.uncorrected)?;
    }
    if let Some(l) = &end_to_end_latency {
        write_hgrm(&l.corrected_file, &e2e.corrected)?;
        write_hgrm(&l.uncorrected_file, &e2e.uncorrected)?;
    }
    let errors = shared.error_codes.lock().expect("not poisoned").clone();
    let report = Report {
        report_version: REPORT_VERSION,
        tool: format!("sluice-load {}", env!("CARGO_PKG_VERSION")),
        command_line: command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        command,
        git_ref: git_ref(),
        started_at_unix_s,
        host: Host::detect(),
        broker: broker_info,
        workload,
        topics,
        target_msgs_per_s: target_rate,
        measured_seconds: secs,
        produce,
        consume,
        publish_latency,
        end_to_end_latency,
        delivery,
        errors,
        timeline,
    };
    let path = output.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(report)
}

/// Quote an argument for a POSIX shell if it needs it.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Merge acknowledgement and receipt bitsets into the exactly-once account.
pub fn delivery(
    workload: &Workload,
    producers: &[ProducerResult],
    consumers: &[ConsumerResult],
) -> Delivery {
    let mut d = Delivery {
        sent: producers.iter().map(|p| p.sent).sum(),
        acked: producers.iter().map(|p| p.acked_count).sum(),
        produce_errors: producers.iter().map(|p| p.errors).sum(),
        duplicates: consumers.iter().map(|c| c.duplicates).sum(),
        ..Delivery::default()
    };
    let mut union: HashMap<u32, Vec<u64>> = HashMap::new();
    for c in consumers {
        for (pid, bits) in &c.received {
            let u = union.entry(*pid).or_default();
            if u.len() < bits.len() {
                u.resize(bits.len(), 0);
            }
            for (w, b) in u.iter_mut().zip(bits) {
                // Received by two consumers: also a duplicate.
                d.duplicates += u64::from((*w & b).count_ones());
                *w |= b;
            }
        }
    }
    if consumers.is_empty() {
        // Nothing was read back: there is nothing to check.
        return d;
    }
    let empty = Vec::new();
    for p in producers {
        let u = union.get(&p.id).unwrap_or(&empty);
        let words = u.len().max(p.acked.len());
        for i in 0..words {
            let a = p.acked.get(i).copied().unwrap_or(0);
            let r = u.get(i).copied().unwrap_or(0);
            d.consumed_unique += u64::from(r.count_ones());
            d.missing += u64::from((a & !r).count_ones());
            d.consumed_unacked += u64::from((r & !a).count_ones());
        }
    }
    // From the earliest offset the consumers read older data too and may not reach this
    // run's: nothing to check.
    d.exactly_once = (workload.consumers > 0 && workload.consume_from == ConsumeFrom::Latest)
        .then_some(d.missing == 0 && d.duplicates == 0 && d.consumed_unacked == 0);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_finds_missing_duplicate_and_unacked() {
        let w = Workload::default();
        let p = ProducerResult {
            id: 0,
            sent: 4,
            acked: vec![0b0111],
            acked_count: 3,
            ..ProducerResult::default()
        };
        let mut c1 = ConsumerResult::default();
        c1.mark(0, 0);
        c1.mark(0, 3); // not acked
        let mut c2 = ConsumerResult::default();
        c2.mark(0, 0); // duplicate across consumers
        let d = delivery(&w, &[p], &[c1, c2]);
        assert_eq!(d.consumed_unique, 2);
        assert_eq!(d.duplicates, 1);
        assert_eq!(d.missing, 2); // 1 and 2
        assert_eq!(d.consumed_unacked, 1);
        assert_eq!(d.exactly_once, Some(false));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--rate=5"), "--rate=5");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
