//! OffsetFetch (key 9), versions 1-9: a group's committed offsets, for the
//! listed partitions or (topics null, v2+) all of them; -1 where nothing is
//! committed. v8+ asks for several groups at once, each answered by its
//! coordinator shard, concurrently. v10 (topic ids) is not served:
//! kafka-protocol 0.18 cannot decode it. With require_stable (v7+, KIP-447: read_committed
//! consumers), a partition whose offset a transaction committed and whose marker has not
//! landed yet gets UNSTABLE_OFFSET_COMMIT, which clients retry.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::GROUP_ID_LEN_MAX;
use crate::group::{self, FetchedOffset};

/// One group's answer: an error, or offsets per topic.
type GroupOffsets = Result<Vec<(String, Vec<FetchedOffset>)>, i16>;

async fn fetch_group(
    ctx: &RequestContext,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<GroupOffsets, HandlerError> {
    if group_id.is_empty() || group_id.len() > GROUP_ID_LEN_MAX {
        return Ok(Err(ResponseError::InvalidGroupId.code()));
    }
    let gid = group_id.clone();
    let found = group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
        let mut found = s.groups.fetch(&gid, topics);
        if require_stable {
            for (t, ps) in &mut found {
                for p in ps.iter_mut() {
                    if s.groups.has_pending(&gid, t, p.partition) {
                        p.offset = -1;
                        p.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                }
            }
        }
        found
    })
    .await?;
    Ok(found.map_err(|e| e.code()))
}

pub async fn handle(
    ctx: &RequestContext,
    req: OffsetFetchRequest,
) -> Result<OffsetFetchResponse, HandlerError> {
    let version = ctx.version;
    if version >= 8 {
        let asks = req.groups.into_iter().map(|g| {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let id = g.group_id;
            async move {
                let result = fetch_group(ctx, id.0.to_string(), topics, req.require_stable).await;
                (id, result)
            }
        });
        let mut groups = Vec::new();
        for (id, result) in futures::future::join_all(asks).await {
            let entry = OffsetFetchResponseGroup::default().with_group_id(id);
            groups.push(match result? {
                Err(code) => entry.with_error_code(code),
                Ok(topics) => entry.with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(t)))
                                .with_partitions(
                                    ps.into_iter()
                                        .map(|p| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p.partition)
                                                .with_committed_offset(p.offset)
                                                .with_committed_leader_epoch(p.leader_epoch)
                                                .with_metadata(Some(str_bytes(p.metadata)))
                                                .with_error_code(p.error_code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            });
        }
        return Ok(OffsetFetchResponse::default().with_groups(groups));
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect::<Vec<_>>()
    });
    // v1 has no "all topics" form; a null list there reads as empty.
    let topics = if version < 2 {
        Some(topics.unwrap_or_default())
    } else {
        topics
    };
    let requested = topics.clone();
    let stable = version >= 7 && req.require_stable;
    let result = fetch_group(ctx, req.group_id.0.to_string(), topics, stable).await?;
    let (code, found) = match result {
        Ok(found) => (0, found),
        // v1 has no top-level error: report it on every partition.
        Err(code) => (
            code,
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| {
                    let ps = ps
                        .into_iter()
                        .map(|p| FetchedOffset {
                            partition: p,
                            offset: -1,
                            leader_epoch: -1,
                            metadata: String::new(),
                            error_code: 0,
                        })
                        .collect();
                    (t, ps)
                })
                .collect(),
        ),
    };
    let topics = found
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(t)))
                .with_partitions(
                    ps.into_iter()
                        .map(|p| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p.partition)
                                .with_committed_offset(p.offset)
                                // committed_leader_epoch exists from v5.
                                .with_committed_leader_epoch(if version >= 5 {
                                    p.leader_epoch
                                } else {
                                    -1
                                })
                                .with_metadata(Some(str_bytes(p.metadata)))
                                .with_error_code(if version < 2 { code } else { p.error_code })
                        })
                        .collect(),
                )
        })
        .collect();
    let resp = OffsetFetchResponse::default().with_topics(topics);
    Ok(if version >= 2 {
        resp.with_error_code(code)
    } else {
        resp
    })
}
