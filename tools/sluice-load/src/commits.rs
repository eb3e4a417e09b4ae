//! `sluice-load commits`: the rate of pipelined OffsetCommits on one connection.
//!
//! One connection keeps `in_flight` OffsetCommit requests outstanding for `duration`; every
//! request commits the next offset of each of `partitions` partitions for one group (a simple
//! consumer: generation -1, no member id, so no group membership is needed). The responses
//! must come back in order and without errors. At the end an OffsetFetch on the same
//! connection must return the last offsets sent: the broker applied the commits in order.
//! Prints commits/s and the latency of one commit (send to answer, HdrHistogram).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncWriteExt;

use crate::client::{self, Connection};

/// What one `commits` run does.
#[derive(Debug, Clone)]
pub struct CommitLoad {
    pub group: String,
    pub topic: String,
    pub partitions: i32,
    pub in_flight: usize,
    pub duration: Duration,
}

/// What it measured.
#[derive(Debug)]
pub struct CommitReport {
    pub requests: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// The OffsetFetch at the end: Ok, or which partition read back another offset than the
    /// last one sent.
    pub read_back: std::result::Result<(), String>,
}

impl CommitReport {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn summary(&self, load: &CommitLoad) -> String {
        let q = |p: f64| self.latency_us.value_at_quantile(p) as f64 / 1000.0;
        format!(
            "{} OffsetCommits ({} partitions each, {} in flight) in {:.1}s: {:.0} commits/s; \
             latency ms p50 {:.2} p99 {:.2} max {:.2}; {}",
            self.requests,
            load.partitions,
            load.in_flight,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            q(0.5),
            q(0.99),
            self.latency_us.max() as f64 / 1000.0,
            match &self.read_back {
                Ok(()) => "committed offsets read back in order".to_string(),
                Err(e) => format!("OUT OF ORDER: {e}"),
            }
        )
    }
}

fn commit_request(load: &CommitLoad, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(load.group.clone())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(load.topic.clone())))
                .with_partitions(
                    (0..load.partitions)
                        .map(|p| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                        })
                        .collect(),
                ),
        ])
}

/// Run the load against `bootstrap` (the topic must exist, or be auto-created by Metadata).
pub async fn run(bootstrap: &str, load: &CommitLoad) -> Result<CommitReport> {
    let mut conn = Connection::connect(bootstrap).await?;
    let topics = [load.topic.clone()];
    conn.create_topics(&topics, load.partitions, 1).await?;
    let version = conn.versions.get(ApiKey::OffsetCommit)?;
    let bar = indicatif::ProgressBar::new(load.duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("commits {bar:30} {pos}/{len}s {msg}")
            .context("progress style")?,
    );
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // (correlation id, sent at) of the requests in flight, oldest first.
    let mut outstanding: VecDeque<(i32, Instant)> = VecDeque::new();
    let mut next_offset = 0i64;
    let mut requests = 0u64;
    let started = Instant::now();
    let deadline = started + load.duration;
    loop {
        let sending = Instant::now() < deadline;
        while sending && outstanding.len() < load.in_flight {
            next_offset += 1;
            let cid = conn.next_correlation_id();
            let frame = client::encode_request(
                ApiKey::OffsetCommit,
                version,
                cid,
                &commit_request(load, next_offset),
            )?;
            conn.writer.write_all(&frame).await?;
            outstanding.push_back((cid, Instant::now()));
        }
        let Some((cid, sent)) = outstanding.pop_front() else {
            break;
        };
        let frame = tokio::time::timeout(
            client::CONTROL_TIMEOUT,
            client::read_frame(&mut conn.reader),
        )
        .await
        .context("OffsetCommit: timed out")??;
        let response: OffsetCommitResponse =
            client::decode_response(ApiKey::OffsetCommit, version, cid, frame)?;
        for topic in &response.topics {
            for p in &topic.partitions {
                if p.error_code != 0 {
                    bail!(
                        "OffsetCommit partition {}: error {}",
                        p.partition_index,
                        p.error_code
                    );
                }
            }
        }
        latency_us.saturating_record(sent.elapsed().as_micros() as u64);
        requests += 1;
        bar.set_position(started.elapsed().as_secs().min(load.duration.as_secs()));
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let fetch_version = conn.versions.get(ApiKey::OffsetFetch)?;
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(load.group.clone())))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(load.topic.clone())))
                .with_partition_indexes((0..load.partitions).collect()),
        ]));
    let fetched: OffsetFetchResponse = conn
        .call(ApiKey::OffsetFetch, fetch_version, &fetch)
        .await?;
    let read_back = fetched
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.committed_offset != next_offset)
        .map_or(Ok(()), |p| {
            Err(format!(
                "partition {}: committed offset {} but the last commit sent was {next_offset}",
                p.partition_index, p.committed_offset
            ))
        });
    Ok(CommitReport {
        requests,
        elapsed,
        latency_us,
        read_back,
    })
}
