//! WriteTxnMarkers (key 27), versions 0-1: a transaction coordinator asks the leaders of a
//! transaction's partitions to write its COMMIT or ABORT marker (Kafka's broker-to-broker
//! API; Sluice's coordinators send it to the brokers leading their partitions in a cluster).
//! Each partition goes to the shard owning it, which proposes the marker through its
//! replica (a leader only: NOT_LEADER_OR_FOLLOWER elsewhere, answered once committed) or
//! appends it to a local log (answered once durable). INVALID_PRODUCER_EPOCH: the producer
//! wrote there with a newer epoch since (the transaction this marker closes is gone).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::storage::producer_state::Marker;
use crate::types::{ShardId, TopicPartition};

pub async fn handle(
    ctx: &RequestContext,
    req: WriteTxnMarkersRequest,
) -> Result<WriteTxnMarkersResponse, HandlerError> {
    let catalog = ctx.shard.catalog();
    let mut results = Vec::with_capacity(req.markers.len());
    // Markers one after the other, in request order: a later marker of the same producer
    // must not overtake an earlier one.
    for m in req.markers {
        let (producer_id, epoch) = (m.producer_id.0, m.producer_epoch);
        let marker = if m.transaction_result {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut codes: BTreeMap<(String, i32), i16> = BTreeMap::new();
        let mut by_owner: BTreeMap<ShardId, Vec<TopicPartition>> = BTreeMap::new();
        for t in &m.topics {
            let topic = t.name.0.to_string();
            for p in &t.partition_indexes {
                if catalog.has_partition(&topic, *p) {
                    let tp = TopicPartition::new(topic.clone(), *p);
                    by_owner
                        .entry(ctx.shard.owner_of(&tp))
                        .or_default()
                        .push(tp);
                } else {
                    codes.insert(
                        (topic.clone(), *p),
                        ResponseError::UnknownTopicOrPartition.code(),
                    );
                }
            }
        }
        let coordinator_epoch = m.coordinator_epoch;
        let sends = by_owner.into_iter().map(|(owner, tps)| {
            let asked = tps.clone();
            let sent = ctx.shard.invoke_on(owner, move |s| async move {
                crate::txn::write_markers_here(
                    &s,
                    tps,
                    producer_id,
                    epoch,
                    marker,
                    coordinator_epoch,
                )
                .await
            });
            async move { (asked, sent.await) }
        });
        for (asked, written) in futures::future::join_all(sends).await {
            match written {
                Ok(written) => {
                    for (tp, code) in written {
                        codes.insert((tp.topic.to_string(), tp.partition), code);
                    }
                }
                Err(_) => {
                    for tp in asked {
                        codes.insert(
                            (tp.topic.to_string(), tp.partition),
                            ResponseError::NotLeaderOrFollower.code(),
                        );
                    }
                }
            }
        }
        let mut topics: BTreeMap<String, Vec<WritableTxnMarkerPartitionResult>> = BTreeMap::new();
        for ((topic, partition), code) in codes {
            topics.entry(topic).or_default().push(
                WritableTxnMarkerPartitionResult::default()
                    .with_partition_index(partition)
                    .with_error_code(code),
            );
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(name, partitions)| {
                            WritableTxnMarkerTopicResult::default()
                                .with_name(TopicName(str_bytes(name)))
                                .with_partitions(partitions)
                        })
                        .collect(),
                ),
        );
    }
    Ok(WriteTxnMarkersResponse::default().with_markers(results))
}
