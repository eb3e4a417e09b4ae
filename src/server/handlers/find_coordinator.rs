//! FindCoordinator (key 10), versions 0-6: this broker coordinates every
//! group (key type 0); v4+ answers a batch of keys. Transactions (key type
//! 1) are not supported: COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{HandlerError, RequestContext, str_bytes};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// (error code, message) for a key, or None if this broker coordinates it.
fn refusal(key_type: i8, key: &str) -> Option<(i16, String)> {
    match key_type {
        KEY_TYPE_GROUP if key.is_empty() => Some((
            ResponseError::InvalidRequest.code(),
            "the group id is empty".into(),
        )),
        KEY_TYPE_GROUP => None,
        KEY_TYPE_TRANSACTION => Some((
            ResponseError::CoordinatorNotAvailable.code(),
            "transactions are not supported".into(),
        )),
        t => Some((
            ResponseError::InvalidRequest.code(),
            format!("unsupported key type {t}"),
        )),
    }
}

pub async fn handle(
    ctx: &RequestContext,
    req: FindCoordinatorRequest,
) -> Result<FindCoordinatorResponse, HandlerError> {
    let config = &ctx.shard.config;
    let (host, port) = config
        .advertised()
        .expect("advertised listener validated at start");
    let node = BrokerId(config.node_id);
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| match refusal(req.key_type, &key) {
                None => Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(str_bytes(host.clone()))
                    .with_port(port),
                Some((code, message)) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_host(StrBytes::default())
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            })
            .collect();
        return Ok(FindCoordinatorResponse::default().with_coordinators(coordinators));
    }
    let key_type = if ctx.version >= 1 {
        req.key_type
    } else {
        KEY_TYPE_GROUP
    };
    Ok(match refusal(key_type, &req.key) {
        None => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(str_bytes(host))
            .with_port(port),
        Some((code, message)) => {
            let resp = FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            // error_message exists from v1.
            if ctx.version >= 1 {
                resp.with_error_message(Some(str_bytes(message)))
            } else {
                resp
            }
        }
    })
}
