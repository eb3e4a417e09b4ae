//! OffsetCommit (key 8), versions 2-9: store a group's consumed positions.
//! Members commit with their generation and member id; simple consumers
//! (manual assignment) with generation -1 and no member id. Answered once
//! the records are durable in `__consumer_offsets` (see `crate::group`).
//! A pipelined write (`server::ordering`): commits of one connection apply in
//! the order sent, so the last one sent wins.
//! v10 (topic ids) is not served: kafka-protocol 0.18 cannot decode it.

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::{HandlerError, RequestContext};
use crate::constants::{GROUP_ID_LEN_MAX, OFFSET_METADATA_BYTES_MAX};
use crate::group::{self, CommitPartition, CommitRequest, GroupCoordinator};

pub async fn handle(
    ctx: &RequestContext,
    req: OffsetCommitRequest,
) -> Result<OffsetCommitResponse, HandlerError> {
    let version = ctx.version;
    let group_id = req.group_id.0.to_string();
    let catalog = ctx.shard.catalog();
    let group_error = if group_id.is_empty() || group_id.len() > GROUP_ID_LEN_MAX {
        Some(ResponseError::InvalidGroupId.code())
    } else {
        None
    };
    // Partitions the coordinator must handle; the rest fail here.
    let mut local: HashMap<(String, i32), i16> = HashMap::new();
    let mut forward: Vec<(String, Vec<CommitPartition>)> = Vec::new();
    for topic in &req.topics {
        let name = topic.name.0.to_string();
        let mut parts = Vec::new();
        for p in &topic.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let code = if let Some(code) = group_error {
                Some(code)
            } else if !catalog.has_partition(&name, p.partition_index) {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else if metadata.len() > OFFSET_METADATA_BYTES_MAX {
                Some(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                None
            };
            match code {
                Some(code) => {
                    local.insert((name.clone(), p.partition_index), code);
                }
                None => parts.push(CommitPartition {
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata,
                }),
            }
        }
        if !parts.is_empty() {
            forward.push((name, parts));
        }
    }
    let mut codes: HashMap<(String, i32), i16> = HashMap::new();
    if !forward.is_empty() {
        let commit = CommitRequest {
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
            generation: req.generation_id_or_member_epoch,
            topics: forward.clone(),
        };
        let gid = group_id.clone();
        // Hand the commit to the coordinator, which takes its place in the
        // group's line on arrival; then the connection's next write may go.
        let reply = match group::coordinator_of(&ctx.shard, &group_id) {
            Some(target) => Some(
                ctx.shard
                    .send_on(target, move |s| GroupCoordinator::commit(s, gid, commit))
                    .await?,
            ),
            None => None,
        };
        ctx.placed();
        let result = match reply {
            Some(reply) => Some(reply.await?),
            None => None,
        };
        match result {
            Some(results) => {
                for (topic, parts) in results {
                    for (p, code) in parts {
                        codes.insert((topic.clone(), p), code);
                    }
                }
            }
            None => {
                for (topic, parts) in &forward {
                    for p in parts {
                        codes.insert(
                            (topic.clone(), p.partition),
                            ResponseError::CoordinatorNotAvailable.code(),
                        );
                    }
                }
            }
        }
    }
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let key = (name.clone(), p.partition_index);
                    let code = local
                        .get(&key)
                        .or_else(|| codes.get(&key))
                        .copied()
                        .unwrap_or(ResponseError::UnknownServerError.code());
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    Ok(OffsetCommitResponse::default().with_topics(topics))
}
