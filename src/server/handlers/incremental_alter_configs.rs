//! IncrementalAlterConfigs (key 44), versions 0-1: SET (0), DELETE (1),
//! APPEND (2) and SUBTRACT (3) on a topic's config overrides or on the
//! dynamic broker configs (see `alter_configs`). Validated and applied by
//! the controller (shard 0); an unknown operation fails its resource with
//! INVALID_REQUEST and leaves it unchanged.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{CONTROLLER, ConfigAlteration, ConfigOp};

pub async fn handle(
    ctx: &RequestContext,
    req: IncrementalAlterConfigsRequest,
) -> Result<IncrementalAlterConfigsResponse, HandlerError> {
    // Per resource: its alteration, or the error that stops it here.
    let parsed: Vec<Result<ConfigAlteration, String>> = req
        .resources
        .iter()
        .map(|r| {
            let ops = r
                .configs
                .iter()
                .map(|c| {
                    let name = c.name.to_string();
                    let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                    match c.config_operation {
                        0 => Ok(ConfigOp::Set(name, value)),
                        1 => Ok(ConfigOp::Delete(name)),
                        2 => Ok(ConfigOp::Append(name, value)),
                        3 => Ok(ConfigOp::Subtract(name, value)),
                        op => Err(format!("Unknown config operation {op} for {name}")),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ConfigAlteration {
                resource_type: r.resource_type,
                resource_name: r.resource_name.to_string(),
                replace: false,
                ops,
            })
        })
        .collect();
    let alterations: Vec<ConfigAlteration> = parsed.iter().flatten().cloned().collect();
    let validate_only = req.validate_only;
    let mut outcomes = ctx
        .shard
        .invoke_on(CONTROLLER, move |c| async move {
            c.alter_configs(alterations, validate_only).await
        })
        .await?
        .into_iter();
    let responses = req
        .resources
        .into_iter()
        .zip(parsed)
        .map(|(r, p)| {
            let resp = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            let outcome = match p {
                Err(message) => Err((ResponseError::InvalidRequest.code(), message)),
                Ok(_) => outcomes.next().expect("one outcome per alteration"),
            };
            match outcome {
                Ok(()) => resp,
                Err((code, message)) => resp
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            }
        })
        .collect();
    Ok(IncrementalAlterConfigsResponse::default().with_responses(responses))
}
