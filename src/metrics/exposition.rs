//! Merge the shards' snapshots and encode them as OpenMetrics text with the
//! `prometheus-client` crate (a [`Collector`] emitting constant values:
//! the crate's own metric types are never on the recording path).
//!
//! Metric names start with `sluice_`; every per-shard series carries a
//! `shard` label. Per-API series appear once the API has served a request.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::{HistogramSnapshot, ShardSnapshot};

/// The HTTP content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape reports.
#[derive(Debug)]
pub struct Scrape {
    /// One per shard, in shard order.
    pub shards: Vec<ShardSnapshot>,
    /// Time since the broker started.
    pub uptime: Duration,
}

/// Encode `scrape` as OpenMetrics text (ends with `# EOF`).
pub fn encode(scrape: Scrape) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Consumer-group lag per (group, topic, partition): the partition's high
/// watermark (from its owner) minus the group's committed offset (from the
/// group's coordinator), at least 0. Partitions not open anywhere are left
/// out.
pub fn group_lag(shards: &[ShardSnapshot]) -> Vec<(String, String, i32, i64)> {
    let hw: HashMap<(&str, i32), i64> = shards
        .iter()
        .flat_map(|s| &s.partitions)
        .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
        .collect();
    let mut out: Vec<_> = shards
        .iter()
        .flat_map(|s| &s.committed)
        .filter_map(|c| {
            let hw = hw.get(&(c.topic.as_str(), c.partition))?;
            Some((
                c.group.clone(),
                c.topic.clone(),
                c.partition,
                (hw - c.offset).max(0),
            ))
        })
        .collect();
    out.sort();
    out
}

type Labels = Vec<(&'static str, String)>;

fn shard_label(s: &ShardSnapshot) -> Labels {
    vec![("shard", s.shard.to_string())]
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| key.to_string(), |k| format!("{k:?}"))
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (impl EncodeLabelSet, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (impl EncodeLabelSet, V)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge_single<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: V,
) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// `scale` converts recorded units to the exposed ones (ns to s: 1e-9).
fn histogram<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    scale: f64,
    series: impl IntoIterator<Item = (impl EncodeLabelSet, &'a HistogramSnapshot)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in series {
        assert_eq!(h.counts.len(), h.bounds.len() + 1, "one count per bucket");
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .map(|&b| b as f64 * scale)
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.counts.iter().copied())
            .collect();
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum as f64 * scale,
            h.count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )?;
    }
    Ok(())
}

const NS: f64 = 1e-9;

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let shards = &self.shards;
        gauge(
            &mut e,
            "sluice_build_info",
            "Sluice version (value 1)",
            None,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1i64,
            )],
        )?;
        gauge_single(
            &mut e,
            "sluice_uptime",
            "Time since the broker started",
            Some(&Unit::Seconds),
            self.uptime.as_secs_f64(),
        )?;
        gauge_single(
            &mut e,
            "sluice_shards",
            "Number of shards (executor threads)",
            None,
            shards.len() as i64,
        )?;
        let per_api = || {
            shards.iter().flat_map(|s| {
                s.requests.iter().map(move |(key, n, h)| {
                    let mut l = shard_label(s);
                    l.push(("api", api_name(*key)));
                    (l, *n, h)
                })
            })
        };
        counter(
            &mut e,
            "sluice_requests",
            "Kafka requests answered, by API (per accepting shard)",
            None,
            per_api().map(|(l, n, _)| (l, n)),
        )?;
        histogram(
            &mut e,
            "sluice_request_duration",
            "From request frame read to response encoded, by API",
            Some(&Unit::Seconds),
            NS,
            per_api().map(|(l, _, h)| (l, h)),
        )?;
        counter(
            &mut e,
            "sluice_bad_input_closes",
            "Connections closed for bad input (framing, unknown API or version, undecodable request) or a failed handler",
            None,
            shards.iter().map(|s| (shard_label(s), s.bad_input_closes)),
        )?;
        type Get = fn(&ShardSnapshot) -> u64;
        let journal: [(&str, &str, Option<&Unit>, Get); 4] = [
            (
                "sluice_journal_rounds",
                "Rounds the shard journal wrote (one write and one fdatasync each)",
                None,
                |s| s.journal_rounds,
            ),
            (
                "sluice_journal_entries",
                "Entries (a partition's round, a cut, a delete) in the shard journal's rounds",
                None,
                |s| s.journal_entries,
            ),
            (
                "sluice_journal_written",
                "Bytes the shard journal wrote (rounds padded to 4 KiB)",
                Some(&Unit::Bytes),
                |s| s.journal_bytes,
            ),
            (
                "sluice_journal_files_reused",
                "Reclaimed shard journal files reused as the next file",
                None,
                |s| s.journal_files_reused,
            ),
        ];
        for (name, help, unit, get) in journal {
            counter(
                &mut e,
                name,
                help,
                unit,
                shards.iter().map(|s| (shard_label(s), get(s))),
            )?;
        }
        let txn: [(&str, &str, Get); 4] = [
            (
                "sluice_transactions_committed",
                "Transactions the shard's coordinator committed (markers durable)",
                |s| s.txn_commits,
            ),
            (
                "sluice_transactions_aborted",
                "Transactions the shard's coordinator aborted (by the producer, a timeout or a fencing)",
                |s| s.txn_aborts,
            ),
            (
                "sluice_transactions_timed_out",
                "Transactions aborted because they stayed open longer than their timeout",
                |s| s.txn_timed_out,
            ),
            (
                "sluice_transaction_markers",
                "COMMIT and ABORT markers the shard's coordinator wrote",
                |s| s.txn_markers,
            ),
        ];
        for (name, help, get) in txn {
            counter(
                &mut e,
                name,
                help,
                None,
                shards.iter().map(|s| (shard_label(s), get(s))),
            )?;
        }
        gauge(
            &mut e,
            "sluice_transactions_open",
            "Transactions open on the shard's coordinator (as of its last tick)",
            None,
            shards.iter().map(|s| (shard_label(s), s.txn_open)),
        )?;
        gauge(
            &mut e,
            "sluice_transaction_oldest_age",
            "Age of the oldest open transaction on the shard's coordinator (as of its last tick)",
            Some(&Unit::Seconds),
            shards
                .iter()
                .map(|s| (shard_label(s), s.txn_oldest_ms as f64 / 1000.0)),
        )?;
        counter(
            &mut e,
            "sluice_request",
            "Request frame bytes read from Kafka clients",
            Some(&Unit::Bytes),
            shards.iter().map(|s| (shard_label(s), s.bytes_in)),
        )?;
        counter(
            &mut e,
            "sluice_response",
            "Response frame bytes written to Kafka clients",
            Some(&Unit::Bytes),
            shards.iter().map(|s| (shard_label(s), s.bytes_out)),
        )?;
        histogram(
            &mut e,
            "sluice_produce_partition",
            "Records bytes per partition in Produce requests",
            Some(&Unit::Bytes),
            1.0,
            shards
                .iter()
                .map(|s| (shard_label(s), &s.produce_partition_bytes)),
        )?;
        histogram(
            &mut e,
            "sluice_fetch_partition",
            "Records bytes returned per partition by Fetch",
            Some(&Unit::Bytes),
            1.0,
            shards
                .iter()
                .map(|s| (shard_label(s), &s.fetch_partition_bytes)),
        )?;
        histogram(
            &mut e,
            "sluice_fsync_duration",
            "Duration of each fdatasync of a segment (group commit)",
            Some(&Unit::Seconds),
            NS,
            shards.iter().map(|s| (shard_label(s), &s.fsync_latency)),
        )?;
        let per_peer = || {
            shards
                .iter()
                .flat_map(|s| s.peers.iter().map(move |p| (s.shard, p)))
        };
        counter(
            &mut e,
            "sluice_cross_shard_sent",
            "Jobs sent to another shard (invoke_on)",
            None,
            per_peer().map(|(s, p)| {
                (
                    vec![("shard", s.to_string()), ("target", p.peer.to_string())],
                    p.sent,
                )
            }),
        )?;
        counter(
            &mut e,
            "sluice_cross_shard_received",
            "Jobs received from another shard and started",
            None,
            per_peer().map(|(s, p)| {
                (
                    vec![("shard", s.to_string()), ("source", p.peer.to_string())],
                    p.received,
                )
            }),
        )?;
        gauge(
            &mut e,
            "sluice_cross_shard_outstanding",
            "Jobs sent to the target shard and not answered yet (queue depth)",
            None,
            per_peer().map(|(s, p)| {
                (
                    vec![("shard", s.to_string()), ("target", p.peer.to_string())],
                    p.outstanding,
                )
            }),
        )?;
        gauge(
            &mut e,
            "sluice_connections",
            "Open Kafka client connections",
            None,
            shards
                .iter()
                .map(|s| (shard_label(s), s.connections as u64)),
        )?;
        gauge(
            &mut e,
            "sluice_requests_in_flight",
            "Requests being handled on the shard's connections",
            None,
            shards
                .iter()
                .map(|s| (shard_label(s), s.requests_in_flight as u64)),
        )?;
        let raft = |f: fn(&super::RaftSnapshot) -> u64| {
            shards.iter().map(move |s| (shard_label(s), f(&s.raft)))
        };
        gauge(
            &mut e,
            "sluice_raft_replicas",
            "Replicas of replicated partitions (and of the cluster metadata log) on the shard",
            None,
            raft(|r| r.replicas),
        )?;
        gauge(
            &mut e,
            "sluice_raft_leaders",
            "Replicas on the shard that lead their Raft group",
            None,
            raft(|r| r.leaders),
        )?;
        gauge(
            &mut e,
            "sluice_raft_follower_lag_entries",
            "Over the groups the shard leads: Raft entries the slowest follower does not have yet",
            None,
            raft(|r| r.follower_lag_entries),
        )?;
        counter(
            &mut e,
            "sluice_raft_leader_elections",
            "Times the shard's replicas became leader of their group",
            None,
            raft(|r| r.leader_elections),
        )?;
        gauge(
            &mut e,
            "sluice_raft_term_max",
            "The highest Raft term (Kafka leader epoch) among the shard's replicas",
            None,
            raft(|r| r.term_max),
        )?;
        counter(
            &mut e,
            "sluice_raft_replicated",
            "Bytes of entries the shard's leaders sent to followers in appends (re-sends included)",
            Some(&Unit::Bytes),
            raft(|r| r.bytes_replicated),
        )?;
        counter(
            &mut e,
            "sluice_raft_leadership_transfers",
            "Leaderships the shard's leaders handed to their preferred replica",
            None,
            raft(|r| r.leadership_transfers),
        )?;
        counter(
            &mut e,
            "sluice_raft_snapshots_installed",
            "Snapshots the shard's replicas installed: behind their leader's log base, their log was reset to it",
            None,
            raft(|r| r.snapshots_installed),
        )?;
        counter(
            &mut e,
            "sluice_raft_log_compactions",
            "Times the shard's replicas moved their Raft log base past segments they removed (retention, DeleteRecords)",
            None,
            raft(|r| r.log_compactions),
        )?;
        gauge(
            &mut e,
            "sluice_raft_follower_lag_by_broker_entries",
            "Per follower broker, over the groups the shard leads: the most Raft entries it lacks",
            None,
            shards.iter().flat_map(|s| {
                s.raft.follower_lag.iter().map(move |(&b, &lag)| {
                    (
                        vec![("shard", s.shard.to_string()), ("broker", b.to_string())],
                        lag,
                    )
                })
            }),
        )?;
        histogram(
            &mut e,
            "sluice_raft_commit_duration",
            "From a leader's proposal (a produce, an offset commit) to its commit: fdatasynced on a majority of the replicas",
            Some(&Unit::Seconds),
            NS,
            shards
                .iter()
                .map(|s| (shard_label(s), &s.raft.commit_latency)),
        )?;
        counter(
            &mut e,
            "sluice_raft_deferred_proposals",
            "Proposals that arrived while their replica was inside a Raft ready cycle",
            None,
            raft(|r| r.deferred_proposals),
        )?;
        counter(
            &mut e,
            "sluice_rpc_messages_sent",
            "Raft messages sent to other brokers",
            None,
            raft(|r| r.rpc_sent),
        )?;
        counter(
            &mut e,
            "sluice_rpc_messages_dropped",
            "Raft messages dropped (a full queue, a peer that cannot be reached)",
            None,
            raft(|r| r.rpc_dropped),
        )?;
        let per_partition = || {
            shards.iter().flat_map(|s| {
                s.partitions.iter().map(move |p| {
                    let l = vec![
                        ("shard", s.shard.to_string()),
                        ("topic", p.topic.clone()),
                        ("partition", p.partition.to_string()),
                    ];
                    (l, p)
                })
            })
        };
        gauge(
            &mut e,
            "sluice_partition_size",
            "Bytes in the partition's segments (per owning shard)",
            Some(&Unit::Bytes),
            per_partition().map(|(l, p)| (l, p.size_bytes)),
        )?;
        gauge(
            &mut e,
            "sluice_partition_high_watermark",
            "Offset after the last durable record, visible to consumers",
            None,
            per_partition().map(|(l, p)| (l, p.high_watermark)),
        )?;
        gauge(
            &mut e,
            "sluice_partition_log_end_offset",
            "Offset after the last appended record",
            None,
            per_partition().map(|(l, p)| (l, p.log_end_offset)),
        )?;
        gauge(
            &mut e,
            "sluice_partition_log_start_offset",
            "First offset still in the log",
            None,
            per_partition().map(|(l, p)| (l, p.log_start_offset)),
        )?;
        let cleaned = || per_partition().filter_map(|(l, p)| p.cleaner.map(|c| (l, c)));
        gauge(
            &mut e,
            "sluice_log_cleaner_dirty_ratio",
            "Compacted partitions: dirty share of the bytes the cleaner could take now",
            None,
            cleaned().map(|(l, c)| (l, c.dirty_ratio)),
        )?;
        gauge(
            &mut e,
            "sluice_log_cleaner_dirty",
            "Compacted partitions: cleanable bytes past the cleaner's checkpoint (its backlog)",
            Some(&Unit::Bytes),
            cleaned().map(|(l, c)| (l, c.dirty_bytes)),
        )?;
        gauge(
            &mut e,
            "sluice_log_cleaner_checkpoint",
            "Compacted partitions: offsets below were cleaned",
            None,
            cleaned().map(|(l, c)| (l, c.checkpoint)),
        )?;
        gauge(
            &mut e,
            "sluice_log_cleaner_last_pass_time_ms",
            "Compacted partitions: wall-clock time of the last cleaning pass's end (-1: none since the start)",
            None,
            cleaned().map(|(l, c)| (l, c.status.last_pass_ms)),
        )?;
        counter(
            &mut e,
            "sluice_log_cleaner_passes",
            "Compacted partitions: cleaning passes since the start",
            None,
            cleaned().map(|(l, c)| (l, c.status.passes)),
        )?;
        counter(
            &mut e,
            "sluice_log_cleaner_failures",
            "Compacted partitions: cleaning passes that failed (the log left as it was)",
            None,
            cleaned().map(|(l, c)| (l, c.status.failures)),
        )?;
        counter(
            &mut e,
            "sluice_log_cleaner_read",
            "Compacted partitions: log bytes the cleaner read (the bytes cleaned)",
            Some(&Unit::Bytes),
            cleaned().map(|(l, c)| (l, c.status.bytes_read)),
        )?;
        counter(
            &mut e,
            "sluice_log_cleaner_written",
            "Compacted partitions: log bytes the cleaner wrote",
            Some(&Unit::Bytes),
            cleaned().map(|(l, c)| (l, c.status.bytes_written)),
        )?;
        counter(
            &mut e,
            "sluice_log_cleaner_records_removed",
            "Compacted partitions: records the cleaner removed",
            None,
            cleaned().map(|(l, c)| (l, c.status.records_removed)),
        )?;
        gauge(
            &mut e,
            "sluice_group_committed_offset",
            "Committed offset of a consumer group (per coordinating shard)",
            None,
            shards.iter().flat_map(|s| {
                s.committed.iter().map(move |c| {
                    (
                        vec![
                            ("shard", s.shard.to_string()),
                            ("group", c.group.clone()),
                            ("topic", c.topic.clone()),
                            ("partition", c.partition.to_string()),
                        ],
                        c.offset,
                    )
                })
            }),
        )?;
        gauge(
            &mut e,
            "sluice_group_lag",
            "Partition high watermark minus the group's committed offset (records)",
            None,
            group_lag(shards).into_iter().map(|(g, t, p, lag)| {
                (
                    vec![("group", g), ("topic", t), ("partition", p.to_string())],
                    lag,
                )
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CommittedSnapshot, PartitionSnapshot, local_snapshot};

    fn partition(topic: &str, p: i32, hw: i64) -> PartitionSnapshot {
        PartitionSnapshot {
            topic: topic.into(),
            partition: p,
            size_bytes: 100,
            log_start_offset: 0,
            high_watermark: hw,
            log_end_offset: hw,
            cleaner: None,
        }
    }

    fn committed(group: &str, topic: &str, p: i32, offset: i64) -> CommittedSnapshot {
        CommittedSnapshot {
            group: group.into(),
            topic: topic.into(),
            partition: p,
            offset,
        }
    }

    #[test]
    fn lag_joins_high_watermarks_and_commits_across_shards() {
        let mut a = local_snapshot(0);
        let mut b = local_snapshot(1);
        a.partitions = vec![partition("t", 0, 10)];
        b.partitions = vec![partition("t", 1, 20)];
        // The group's coordinator is shard 0; partition 1 lives on shard 1.
        a.committed = vec![
            committed("g", "t", 0, 4),
            committed("g", "t", 1, 20),
            committed("g", "gone", 0, 1),
            committed("h", "t", 0, 12),
        ];
        let lag = group_lag(&[a, b]);
        assert_eq!(
            lag,
            vec![
                ("g".into(), "t".into(), 0, 6),
                ("g".into(), "t".into(), 1, 0),
                ("h".into(), "t".into(), 0, 0),
            ]
        );
    }

    #[test]
    fn encodes_openmetrics_with_cumulative_buckets() {
        let text = std::thread::spawn(|| {
            crate::metrics::request_done(0, std::time::Instant::now());
            let mut s = local_snapshot(0);
            s.partitions = vec![partition("t", 0, 7)];
            s.committed = vec![committed("g", "t", 0, 5)];
            encode(Scrape {
                shards: vec![s],
                uptime: Duration::from_secs(3),
            })
            .unwrap()
        })
        .join()
        .unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("sluice_requests_total{shard=\"0\",api=\"Produce\"} 1\n"));
        assert!(text.contains(
            "sluice_request_duration_seconds_bucket{le=\"+Inf\",shard=\"0\",api=\"Produce\"} 1\n"
        ));
        assert!(
            text.contains("sluice_request_duration_seconds_count{shard=\"0\",api=\"Produce\"} 1\n")
        );
        assert!(text.contains("# TYPE sluice_fsync_duration_seconds histogram\n"));
        assert!(text.contains(
            "sluice_partition_high_watermark{shard=\"0\",topic=\"t\",partition=\"0\"} 7\n"
        ));
        assert!(text.contains("sluice_group_lag{group=\"g\",topic=\"t\",partition=\"0\"} 2\n"));
        assert!(text.contains("sluice_uptime_seconds 3.0\n"), "{text}");
    }
}
