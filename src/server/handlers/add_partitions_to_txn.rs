//! AddPartitionsToTxn (key 24), versions 0-3 (the client form; v4+ is Kafka's
//! broker-to-broker verification of KIP-890, which a broker that does not advertise
//! `transaction.version` 2 never receives from clients). The partitions join the
//! producer's open transaction on the transactional id's coordinator (`crate::txn`).
//! A partition of an unknown topic fails the request: it gets UNKNOWN_TOPIC_OR_PARTITION
//! and the others OPERATION_NOT_ATTEMPTED, as Kafka answers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use super::{HandlerError, RequestContext};

/// A request's partitions: (topic, partitions) in request order.
type Topics = Vec<(kafka_protocol::messages::TopicName, Vec<i32>)>;

fn answer(topics: &Topics, code: impl Fn(&str, i32) -> i16) -> AddPartitionsToTxnResponse {
    let results = topics
        .iter()
        .map(|(name, ps)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(name.clone())
                .with_results_by_partition(
                    ps.iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code(&name.0, *p))
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub async fn handle(
    ctx: &RequestContext,
    req: AddPartitionsToTxnRequest,
) -> Result<AddPartitionsToTxnResponse, HandlerError> {
    let topics: Topics = req
        .v3_and_below_topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions.clone()))
        .collect();
    if ctx.version >= 4 {
        // The batched form is for brokers; answer its top-level error.
        return Ok(AddPartitionsToTxnResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code()));
    }
    let catalog = ctx.shard.catalog();
    // Internal topics are never a transaction's data partitions (AddOffsetsToTxn adds
    // `__consumer_offsets`).
    let internal = |t: &str| {
        t == crate::constants::OFFSETS_TOPIC
            || t == crate::constants::TXN_TOPIC
            || t.starts_with("__cluster")
    };
    let unknown = |t: &str, p: i32| !catalog.has_partition(t, p) || internal(t);
    if topics
        .iter()
        .any(|(t, ps)| ps.iter().any(|p| unknown(&t.0, *p)))
    {
        return Ok(answer(&topics, |t, p| {
            if unknown(t, p) {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                ResponseError::OperationNotAttempted.code()
            }
        }));
    }
    let id = req.v3_and_below_transactional_id.0.to_string();
    let producer_id = req.v3_and_below_producer_id.0;
    let epoch = req.v3_and_below_producer_epoch;
    let partitions: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t.0.to_string(), *p)))
        .collect();
    let tid = id.clone();
    let result = crate::txn::on_coordinator(&ctx.shard, &id, move |s| async move {
        s.txns
            .add_partitions(&s, &tid, producer_id, epoch, partitions)
            .await
    })
    .await?;
    let code = match result.and_then(|r| r) {
        Ok(()) => 0,
        Err(e) => super::txn_error(e, ctx.version, 2),
    };
    Ok(answer(&topics, |_, _| code))
}
