//! OffsetDelete (key 47), version 0: delete some committed offsets of a
//! group (tombstones, durable before the answer). A partition of a topic
//! that a member of a "consumer" group subscribes to gets
//! GROUP_SUBSCRIBED_TO_TOPIC; a non-consumer group with members gets
//! NON_EMPTY_GROUP.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::group;

pub async fn handle(
    ctx: &RequestContext,
    req: OffsetDeleteRequest,
) -> Result<OffsetDeleteResponse, HandlerError> {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return Ok(
            OffsetDeleteResponse::default().with_error_code(ResponseError::InvalidGroupId.code())
        );
    }
    let catalog = ctx.shard.catalog();
    let mut unknown: Vec<(String, i32)> = Vec::new();
    let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut parts = Vec::new();
        for p in &t.partitions {
            if catalog.has_partition(&name, p.partition_index) {
                parts.push(p.partition_index);
            } else {
                unknown.push((name.clone(), p.partition_index));
            }
        }
        topics.push((name, parts));
    }
    let gid = group_id.clone();
    let result = group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
        s.groups.delete_offsets(&s, &gid, topics).await
    })
    .await?;
    let results = match result {
        Err(e) => return Ok(OffsetDeleteResponse::default().with_error_code(e.code())),
        Ok(Err(code)) => return Ok(OffsetDeleteResponse::default().with_error_code(code)),
        Ok(Ok(r)) => r,
    };
    let topics = results
        .into_iter()
        .map(|(name, codes)| {
            let mut partitions: Vec<OffsetDeleteResponsePartition> = codes
                .into_iter()
                .map(|(p, code)| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                })
                .collect();
            for (_, p) in unknown.iter().filter(|(t, _)| *t == name) {
                partitions.push(
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(*p)
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                );
            }
            OffsetDeleteResponseTopic::default()
                .with_name(kafka_protocol::messages::TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    Ok(OffsetDeleteResponse::default().with_topics(topics))
}
