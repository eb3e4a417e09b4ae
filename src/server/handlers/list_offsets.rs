//! ListOffsets (key 2), versions 1-10: earliest (-2), latest (-1, the high
//! watermark), max timestamp (-3), or the first offset at or after a
//! timestamp. Answered by the partition's owner.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{HandlerError, RequestContext};
use crate::shard::Shard;
use crate::types::{ShardId, TopicPartition};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(
    ctx: &RequestContext,
    req: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let name = topic.name.0.to_string();
            let base = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            if !catalog.has_partition(&name, p.partition_index) {
                partitions
                    .push(base.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            }
            let tp = TopicPartition::new(name, p.partition_index);
            let owner: ShardId = shard.owner_of(&tp);
            let ts = p.timestamp;
            let (code, offset, timestamp) = shard
                .invoke_on(owner, move |s| lookup_on_owner(s, tp, ts))
                .await?;
            partitions.push(
                base.with_error_code(code)
                    .with_offset(offset)
                    .with_timestamp(timestamp)
                    // leader_epoch exists from v4; earlier encoders refuse it.
                    .with_leader_epoch(if ctx.version >= 4 { 0 } else { -1 }),
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Ok(ListOffsetsResponse::default().with_topics(topics))
}

/// On the owner: (error code, offset, timestamp).
async fn lookup_on_owner(shard: Rc<Shard>, tp: TopicPartition, ts: i64) -> (i16, i64, i64) {
    let Some(log) = shard.partition(&tp) else {
        return (ResponseError::NotLeaderOrFollower.code(), -1, -1);
    };
    let found = match ts {
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
