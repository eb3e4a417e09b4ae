//! DeleteRecords (key 21), versions 0-2: move partitions' log start offset
//! (to the given offset, or the high watermark for -1) on their owners; the
//! owner persists a start inside a segment and deletes the sealed segments
//! wholly below it ([`crate::storage::PartitionLog::delete_records`]). The
//! answer carries the new low watermark. An offset above the high
//! watermark is OFFSET_OUT_OF_RANGE.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{HandlerError, RequestContext};
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::types::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    req: DeleteRecordsRequest,
) -> Result<DeleteRecordsResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    // results[t][p] = (low watermark, error code)
    let mut results: Vec<Vec<(i64, i16)>> = Vec::with_capacity(req.topics.len());
    let mut per_owner = ByOwner::new(shard.count);
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.name.0.to_string();
        let mut row = Vec::with_capacity(t.partitions.len());
        for (pi, p) in t.partitions.iter().enumerate() {
            if catalog.has_partition(&name, p.partition_index) {
                let tp = TopicPartition::new(name.clone(), p.partition_index);
                per_owner.push(shard.owner_of(&tp), (ti, pi), (tp, p.offset));
                row.push((-1, 0));
            } else {
                row.push((-1, ResponseError::UnknownTopicOrPartition.code()));
            }
        }
        results.push(row);
    }
    let gathered = shard.scatter(per_owner, delete_on_owner).await?;
    for ((t, p), outcome) in gathered.all().await? {
        results[t][p] = outcome;
    }
    let topics = req
        .topics
        .into_iter()
        .zip(results)
        .map(|(t, row)| {
            DeleteRecordsTopicResult::default()
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(row)
                        .map(|(p, (low, code))| {
                            DeleteRecordsPartitionResult::default()
                                .with_partition_index(p.partition_index)
                                .with_low_watermark(low)
                                .with_error_code(code)
                        })
                        .collect(),
                )
                .with_name(t.name)
        })
        .collect();
    Ok(DeleteRecordsResponse::default().with_topics(topics))
}

/// On the owner: (new low watermark, error code) per partition.
async fn delete_on_owner(shard: Rc<Shard>, parts: Vec<(TopicPartition, i64)>) -> Vec<(i64, i16)> {
    let mut out = Vec::with_capacity(parts.len());
    for (tp, offset) in parts {
        if let Some(d) = shard.replica(&tp) {
            out.push(delete_replicated(&tp, &d, offset).await);
            continue;
        }
        let Some(log) = shard.partition(&tp) else {
            out.push((-1, ResponseError::NotLeaderOrFollower.code()));
            continue;
        };
        match log.delete_records(offset).await {
            Ok(low) => {
                tracing::info!(partition = %tp, low_watermark = low.get(), "deleted records");
                out.push((low.get(), 0));
            }
            Err(e) => out.push((-1, e.kafka_error_code())),
        }
    }
    out
}

/// DeleteRecords on a replicated partition's leader: the new log start is a Raft entry
/// ([`crate::replication::Replica::propose_log_start`]) that every replica applies, answered
/// once committed and applied here; the segments below go with each replica's next
/// compaction.
async fn delete_replicated(
    tp: &TopicPartition,
    d: &crate::replication::driver::Driver,
    offset: i64,
) -> (i64, i16) {
    let r = d.replica();
    if !r.is_leader() {
        return (-1, ResponseError::NotLeaderOrFollower.code());
    }
    let log = r.log();
    let (hw, start) = (log.high_watermark().get(), log.log_start_offset().get());
    let target = if offset == -1 { hw } else { offset };
    if target < 0 || target > hw {
        return (-1, ResponseError::OffsetOutOfRange.code());
    }
    if target <= start {
        return (start, 0);
    }
    match d.propose_log_start(crate::types::Offset(target)).await {
        Ok(_) => {
            let low = log.log_start_offset().get();
            tracing::info!(partition = %tp, low_watermark = low, "deleted records (replicated)");
            (low, 0)
        }
        Err(e) => (-1, e.kafka_error_code()),
    }
}
