//! DescribeTransactions (key 65), version 0: each transactional id's state, producer,
//! timeout, start time and partitions, from its coordinator. An unknown id gets
//! TRANSACTIONAL_ID_NOT_FOUND.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};

use super::{HandlerError, RequestContext, str_bytes};

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeTransactionsRequest,
) -> Result<DescribeTransactionsResponse, HandlerError> {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let tid = id.0.to_string();
        let found = crate::txn::on_coordinator(&ctx.shard, &tid.clone(), move |s| async move {
            s.txns.describe(&tid)
        })
        .await?;
        let state = TransactionState::default().with_transactional_id(id);
        states.push(match found {
            Err(e) => state.with_error_code(e.code()),
            Ok(None) => state.with_error_code(ResponseError::TransactionalIdNotFound.code()),
            Ok(Some(m)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (t, p) in &m.partitions {
                    match topics.last_mut() {
                        Some(d) if d.topic.0.as_str() == t.as_str() => d.partitions.push(*p),
                        _ => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(str_bytes(t.clone())))
                                .with_partitions(vec![*p]),
                        ),
                    }
                }
                state
                    .with_transaction_state(str_bytes(m.state.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.start_ms)
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_topics(topics)
            }
        });
    }
    Ok(DescribeTransactionsResponse::default().with_transaction_states(states))
}
