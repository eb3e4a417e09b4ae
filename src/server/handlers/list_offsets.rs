//! ListOffsets (key 2), versions 1-10: earliest (-2), latest (-1, the high
//! watermark; the last stable offset for isolation level READ_COMMITTED), max timestamp (-3), or the first offset at or after a
//! timestamp, with the leader epoch (a replicated partition's Raft term; 0 on a
//! one-node broker). Answered by the partition's owner.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{HandlerError, RequestContext};
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::types::TopicPartition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(
    ctx: &RequestContext,
    req: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    // Answers per (topic, partition) index: filled now (unknown) or by the owners.
    let mut found: Vec<Vec<(i16, i64, i64, i32)>> = Vec::with_capacity(req.topics.len());
    let mut per_owner = ByOwner::new(shard.count);
    for (ti, topic) in req.topics.iter().enumerate() {
        let name = topic.name.0.to_string();
        let mut row = Vec::with_capacity(topic.partitions.len());
        for (pi, p) in topic.partitions.iter().enumerate() {
            if catalog.has_partition(&name, p.partition_index) {
                let tp = TopicPartition::new(name.clone(), p.partition_index);
                let committed = req.isolation_level == 1;
                per_owner.push(shard.owner_of(&tp), (ti, pi), (tp, p.timestamp, committed));
                row.push((0, -1, -1, 0));
            } else {
                row.push((ResponseError::UnknownTopicOrPartition.code(), -1, -1, -1));
            }
        }
        found.push(row);
    }
    let gathered = shard.scatter(per_owner, lookup_all_on_owner).await?;
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
                .map(|(p, (code, offset, timestamp, epoch))| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                        .with_offset(offset)
                        .with_timestamp(timestamp);
                    if code == ResponseError::UnknownTopicOrPartition.code() {
                        answer
                    } else {
                        // leader_epoch exists from v4; earlier encoders refuse it.
                        answer.with_leader_epoch(if ctx.version >= 4 { epoch } else { -1 })
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    Ok(ListOffsetsResponse::default().with_topics(topics))
}

/// On the owner: every lookup of one request, in order.
async fn lookup_all_on_owner(
    shard: Rc<Shard>,
    parts: Vec<(TopicPartition, i64, bool)>,
) -> Vec<(i16, i64, i64, i32)> {
    let mut out = Vec::with_capacity(parts.len());
    for (tp, ts, committed) in parts {
        // The leader epoch: the replica's term, 0 on a one-node broker.
        let epoch = shard
            .replica(&tp)
            .map_or(0, |d| i32::try_from(d.replica().term()).unwrap_or(i32::MAX));
        let (code, offset, timestamp) = lookup_on_owner(&shard, tp, ts, committed).await;
        out.push((code, offset, timestamp, if code == 0 { epoch } else { -1 }));
    }
    out
}

/// On the owner: (error code, offset, timestamp).
async fn lookup_on_owner(
    shard: &Shard,
    tp: TopicPartition,
    ts: i64,
    committed: bool,
) -> (i16, i64, i64) {
    let Some(log) = shard.partition(&tp) else {
        return (ResponseError::NotLeaderOrFollower.code(), -1, -1);
    };
    let found = match ts {
        LATEST if committed => return (0, log.last_stable_offset().get(), -1),
        LATEST => return (0, log.high_watermark().get(), -1),
        EARLIEST => return (0, log.log_start_offset().get(), -1),
        MAX_TIMESTAMP => log.max_timestamp().await,
        t if t >= 0 => log.offset_for_timestamp(t).await,
        _ => return (ResponseError::InvalidRequest.code(), -1, -1),
    };
    match found {
        Ok(Some((offset, timestamp))) => (0, offset.get(), timestamp),
        Ok(None) => (0, -1, -1),
        Err(e) => (e.kafka_error_code(), -1, -1),
    }
}
