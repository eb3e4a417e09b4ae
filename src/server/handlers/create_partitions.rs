//! CreatePartitions (key 37), versions 0-3: grow topics. Validated and
//! applied by the controller (shard 0), which persists the catalog and
//! publishes it; answered once every shard has opened its new partitions.
//! Manual assignments of the new partitions are honoured in a cluster (each
//! names distinct registered brokers, as many as the topic's replication
//! factor); on a one-node broker they can only name this broker.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{CONTROLLER, PartitionsSpec};

pub async fn handle(
    ctx: &RequestContext,
    req: CreatePartitionsRequest,
) -> Result<CreatePartitionsResponse, HandlerError> {
    let requests: Vec<PartitionsSpec> = req
        .topics
        .iter()
        .map(|t| PartitionsSpec {
            name: t.name.0.to_string(),
            count: t.count,
            // Null or empty: none.
            assignments: t.assignments.as_ref().filter(|a| !a.is_empty()).map(|a| {
                a.iter()
                    .map(|x| x.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let validate_only = req.validate_only;
    let outcomes = ctx
        .shard
        .invoke_on(CONTROLLER, move |c| async move {
            c.create_partitions(requests, validate_only).await
        })
        .await?;
    let results = req
        .topics
        .into_iter()
        .zip(outcomes)
        .map(|(t, outcome)| {
            let r = CreatePartitionsTopicResult::default().with_name(t.name);
            match outcome {
                Ok(()) => r,
                Err((code, message)) => r
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            }
        })
        .collect();
    Ok(CreatePartitionsResponse::default().with_results(results))
}
