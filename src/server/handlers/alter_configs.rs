//! AlterConfigs (key 33), versions 0-2: replace a topic's config overrides
//! (configs not named go back to their defaults) or the dynamic broker
//! configs (resource name "" or this broker's id; the broker names of the
//! obeyed topic configs, e.g. `log.retention.ms`). Validated and applied by
//! the controller (shard 0), which persists the catalog and republishes it;
//! open partitions take the new settings before the answer.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{CONTROLLER, ConfigAlteration, ConfigOp};

pub async fn handle(
    ctx: &RequestContext,
    req: AlterConfigsRequest,
) -> Result<AlterConfigsResponse, HandlerError> {
    let alterations: Vec<ConfigAlteration> = req
        .resources
        .iter()
        .map(|r| ConfigAlteration {
            resource_type: r.resource_type,
            resource_name: r.resource_name.to_string(),
            replace: true,
            ops: r
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| ConfigOp::Set(c.name.to_string(), v.to_string()))
                })
                .collect(),
        })
        .collect();
    let validate_only = req.validate_only;
    let outcomes = ctx
        .shard
        .invoke_on(CONTROLLER, move |c| async move {
            c.alter_configs(alterations, validate_only).await
        })
        .await?;
    let responses = req
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(r, outcome)| {
            let resp = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            match outcome {
                Ok(()) => resp,
                Err((code, message)) => resp
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            }
        })
        .collect();
    Ok(AlterConfigsResponse::default().with_responses(responses))
}
