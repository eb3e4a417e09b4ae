//! DescribeProducers (key 61), version 0: the active idempotent producers
//! of each requested partition (id, epoch, last sequence, last timestamp),
//! read from the partition's producer state on its owner shard. Includes
//! batches assigned offsets but not yet durable. No transactions, so
//! coordinator epoch and transaction start offset are always -1.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::{HandlerError, RequestContext};
use crate::shard::Shard;
use crate::storage::ProducerInfo;
use crate::types::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeProducersRequest,
) -> Result<DescribeProducersResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
        for p in topic.partition_indexes {
            let base = PartitionResponse::default().with_partition_index(p);
            if !catalog.has_partition(&name, p) {
                partitions
                    .push(base.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            }
            let tp = TopicPartition::new(name.clone(), p);
            let owner = shard.owner_of(&tp);
            let found = shard
                .invoke_on(owner, move |s| async move { producers_on_owner(s, tp) })
                .await?;
            partitions.push(match found {
                None => base.with_error_code(ResponseError::NotLeaderOrFollower.code()),
                Some(list) => base.with_active_producers(
                    list.into_iter()
                        .map(|p| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(p.producer_id))
                                .with_producer_epoch(i32::from(p.epoch))
                                .with_last_sequence(p.last_sequence)
                                .with_last_timestamp(p.last_timestamp)
                                .with_coordinator_epoch(p.coordinator_epoch)
                                .with_current_txn_start_offset(p.txn_start_offset)
                        })
                        .collect(),
                ),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Ok(DescribeProducersResponse::default().with_topics(topics))
}

/// On the owner: the partition's producers, None if it is not open here.
fn producers_on_owner(shard: Rc<Shard>, tp: TopicPartition) -> Option<Vec<ProducerInfo>> {
    shard.partition(&tp).map(|log| log.producers())
}
