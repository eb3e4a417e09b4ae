//! OffsetForLeaderEpoch (key 23), versions 2-4 (KIP-101, KIP-320): for each partition, the
//! largest leader epoch at most the one asked for and the offset where it ended (the log end
//! for the latest epoch). A consumer that read up to some offset in an epoch asks this after
//! a leader change; an end below its position means the log was truncated under it.
//! Answered by the partition's owner from the log's leader-epoch cache.
//!
//! - A replicated partition: only its leader answers (else NOT_LEADER_OR_FOLLOWER); a
//!   `current_leader_epoch` older than the leader's term is FENCED_LEADER_EPOCH, a newer one
//!   UNKNOWN_LEADER_EPOCH (the client's metadata is ahead of this broker: it retries).
//! - A one-node broker's partition has epoch 0 all along: epoch 0 (or any epoch asked for)
//!   ends at the log end.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::{HandlerError, RequestContext};
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::types::TopicPartition;

/// (error code, leader epoch, end offset).
type Answer = (i16, i32, i64);

const UNDEFINED: Answer = (0, -1, -1);

pub async fn handle(
    ctx: &RequestContext,
    req: OffsetForLeaderEpochRequest,
) -> Result<OffsetForLeaderEpochResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    let mut found: Vec<Vec<Answer>> = Vec::with_capacity(req.topics.len());
    let mut per_owner = ByOwner::new(shard.count);
    for (ti, topic) in req.topics.iter().enumerate() {
        let name = topic.topic.0.to_string();
        let mut row = Vec::with_capacity(topic.partitions.len());
        for (pi, p) in topic.partitions.iter().enumerate() {
            if catalog.has_partition(&name, p.partition) {
                let tp = TopicPartition::new(name.clone(), p.partition);
                per_owner.push(
                    shard.owner_of(&tp),
                    (ti, pi),
                    (tp, p.current_leader_epoch, p.leader_epoch),
                );
                row.push(UNDEFINED);
            } else {
                row.push((ResponseError::UnknownTopicOrPartition.code(), -1, -1));
            }
        }
        found.push(row);
    }
    let gathered = shard.scatter(per_owner, answer_all_on_owner).await?;
    for ((t, p), answer) in gathered.all().await? {
        found[t][p] = answer;
    }
    let topics = req
        .topics
        .into_iter()
        .zip(found)
        .map(|(topic, row)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, (code, epoch, end))| {
                    EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_error_code(code)
                        .with_leader_epoch(epoch)
                        .with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    Ok(OffsetForLeaderEpochResponse::default().with_topics(topics))
}

async fn answer_all_on_owner(
    shard: Rc<Shard>,
    parts: Vec<(TopicPartition, i32, i32)>,
) -> Vec<Answer> {
    parts
        .into_iter()
        .map(|(tp, current, epoch)| answer_on_owner(&shard, &tp, current, epoch))
        .collect()
}

/// On the owner: one partition's answer.
fn answer_on_owner(shard: &Shard, tp: &TopicPartition, current: i32, epoch: i32) -> Answer {
    if let Some(driver) = shard.replica(tp) {
        let r = driver.replica();
        if !r.is_leader() {
            return (ResponseError::NotLeaderOrFollower.code(), -1, -1);
        }
        let term = i32::try_from(r.term()).unwrap_or(i32::MAX);
        if current >= 0 && current < term {
            return (ResponseError::FencedLeaderEpoch.code(), -1, -1);
        }
        if current > term {
            return (ResponseError::UnknownLeaderEpoch.code(), -1, -1);
        }
        let (e, end) = r.log().end_offset_for_epoch(epoch);
        return (0, e, end.get());
    }
    let Some(log) = shard.partition(tp) else {
        return (ResponseError::NotLeaderOrFollower.code(), -1, -1);
    };
    if current > 0 {
        return (ResponseError::UnknownLeaderEpoch.code(), -1, -1);
    }
    if epoch < 0 {
        return UNDEFINED;
    }
    (0, 0, log.log_end_offset().get())
}
