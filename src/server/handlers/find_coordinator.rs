//! FindCoordinator (key 10), versions 0-6: on a one-node broker, this broker
//! coordinates every group (key type 0); in a cluster, the group's
//! `__consumer_offsets` partition's designated broker does
//! (`metadata::designated_broker`; the same answer on every broker). v4+
//! answers a batch of keys. Transactions (key type
//! 1) are not supported: COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{HandlerError, RequestContext, str_bytes};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// The coordinator of `group`: (node, host, port); None while the cluster has no brokers
/// registered.
fn coordinator_of(ctx: &RequestContext, group: &str) -> Option<(BrokerId, String, i32)> {
    let config = &ctx.shard.config;
    if !ctx.shard.is_cluster() {
        let (host, port) = config
            .advertised()
            .expect("advertised listener validated at start");
        return Some((BrokerId(config.node_id), host, port));
    }
    let catalog = ctx.shard.catalog();
    let partitions = catalog
        .get(crate::constants::OFFSETS_TOPIC)
        .map_or(config.offsets_topic_partitions, |m| m.partitions);
    let p = crate::group::offsets_partition(group, partitions);
    let id = super::metadata::designated_broker(&catalog, p);
    let b = catalog.brokers.get(&id)?;
    Some((BrokerId(b.id), b.host.clone(), b.port))
}

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
    let not_available = || {
        Some((
            ResponseError::CoordinatorNotAvailable.code(),
            "no broker has registered in the cluster yet".to_string(),
        ))
    };
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let found = coordinator_of(ctx, &key);
                let refused = refusal(req.key_type, &key).or_else(|| {
                    if found.is_none() {
                        not_available()
                    } else {
                        None
                    }
                });
                (key, found, refused)
            })
            .map(|(key, found, refused)| match (refused, found) {
                (None, Some((node, host, port))) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(str_bytes(host))
                    .with_port(port),
                (refused, _) => {
                    let (code, message) = refused.unwrap_or_default();
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(message)))
                }
            })
            .collect();
        return Ok(FindCoordinatorResponse::default().with_coordinators(coordinators));
    }
    let key_type = if ctx.version >= 1 {
        req.key_type
    } else {
        KEY_TYPE_GROUP
    };
    let found = coordinator_of(ctx, &req.key);
    let refused = refusal(key_type, &req.key).or_else(|| {
        if found.is_none() {
            not_available()
        } else {
            None
        }
    });
    Ok(match (refused, found) {
        (None, Some((node, host, port))) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(str_bytes(host))
            .with_port(port),
        (refused, _) => {
            let (code, message) = refused.unwrap_or_default();
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
