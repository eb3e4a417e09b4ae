//! TxnOffsetCommit (key 28), versions 0-4: a consumer group's offsets committed inside the
//! producer's transaction (`send_offsets_to_transaction`). Checked on the transactional
//! id's coordinator (the transaction is open with this producer id and epoch, and includes
//! the group's `__consumer_offsets` partition: AddOffsetsToTxn came first, else
//! INVALID_TXN_STATE), then written
//! by the group's coordinator as a transactional batch of the producer to the group's
//! `__consumer_offsets` partition; they take effect when the transaction's COMMIT marker
//! lands there (`GroupCoordinator::complete_txn`). Membership is checked as Kafka does since
//! KIP-447 (v3+ carries the member id and generation). In a cluster the transaction
//! coordinator is not asked (it may be another broker), as Kafka's group coordinator does
//! not ask it before KIP-890; the partition's leader still refuses an old producer epoch.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::{HandlerError, RequestContext};
use crate::group::{CommitPartition, PartitionErrors, TxnCommitRequest};

fn answer(errors: PartitionErrors) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse::default().with_topics(
        errors
            .into_iter()
            .map(|(t, ps)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(super::str_bytes(t)))
                    .with_partitions(
                        ps.into_iter()
                            .map(|(p, code)| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Every partition of `topics` answered COORDINATOR_NOT_AVAILABLE (no `__consumer_offsets`).
fn errors_all_unavailable(out: &mut PartitionErrors, topics: &[(String, Vec<CommitPartition>)]) {
    let code = ResponseError::CoordinatorNotAvailable.code();
    for (t, ps) in topics {
        out.push((t.clone(), ps.iter().map(|p| (p.partition, code)).collect()));
    }
}

pub async fn handle(
    ctx: &RequestContext,
    req: TxnOffsetCommitRequest,
) -> Result<TxnOffsetCommitResponse, HandlerError> {
    let catalog = ctx.shard.catalog();
    let mut refused: PartitionErrors = Vec::new();
    let mut topics: Vec<(String, Vec<CommitPartition>)> = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for p in &t.partitions {
            if catalog.has_partition(&name, p.partition_index) {
                ok.push(CommitPartition {
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                });
            } else {
                bad.push((
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition.code(),
                ));
            }
        }
        if !ok.is_empty() {
            topics.push((name.clone(), ok));
        }
        if !bad.is_empty() {
            refused.push((name, bad));
        }
    }
    let all = |code: i16, topics: &[(String, Vec<CommitPartition>)]| -> PartitionErrors {
        topics
            .iter()
            .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (p.partition, code)).collect()))
            .collect()
    };
    let id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let (producer_id, epoch) = (req.producer_id.0, req.producer_epoch);
    let Some(offsets_tp) = crate::group::offsets_tp(&ctx.shard, &group) else {
        errors_all_unavailable(&mut refused, &topics);
        return Ok(answer(refused));
    };
    let partition = (offsets_tp.topic.to_string(), offsets_tp.partition);
    let tid = id.clone();
    // In a cluster the transaction coordinator may be another broker: as Kafka's group
    // coordinator (before KIP-890), this one does not ask it; the producer's epoch is still
    // checked against the producer state of the group's partition.
    let check = if ctx.shard.is_cluster() {
        Ok(Ok(()))
    } else {
        crate::txn::on_coordinator(&ctx.shard, &id, move |s| async move {
            s.txns.check_ongoing(&tid, producer_id, epoch, &partition)
        })
        .await?
    };
    let mut errors = match check.and_then(|r| r) {
        Err(e) => all(super::txn_error(e, ctx.version, 3), &topics),
        Ok(()) if topics.is_empty() => Vec::new(),
        Ok(()) => {
            let commit = TxnCommitRequest {
                producer_id,
                producer_epoch: epoch,
                generation: req.generation_id,
                member_id: req.member_id.to_string(),
                group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
                topics: topics.clone(),
            };
            let gid = group.clone();
            match crate::group::on_coordinator(&ctx.shard, &group, move |s| async move {
                crate::group::GroupCoordinator::txn_commit(s, &gid, commit).await
            })
            .await?
            {
                Ok(errors) => errors
                    .into_iter()
                    .map(|(t, ps)| {
                        let ps = ps
                            .into_iter()
                            .map(|(p, c)| (p, super::fenced_code(c, ctx.version, 3)))
                            .collect();
                        (t, ps)
                    })
                    .collect(),
                Err(e) => all(e.code(), &topics),
            }
        }
    };
    errors.extend(refused);
    Ok(answer(errors))
}
