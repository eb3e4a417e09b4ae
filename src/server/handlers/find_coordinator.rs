//! FindCoordinator (key 10), versions 0-6: on a one-node broker, this broker
//! coordinates every group (key type 0) and transactional id (key type 1); in a cluster, the
//! leader of the group's `__consumer_offsets` partition (of the id's `__transaction_state`
//! partition) does, as this broker's replica of it knows the leader, or the leader's notices
//! tell a broker holding no replica (COORDINATOR_NOT_AVAILABLE, retriable, while there is
//! none: during an election, before the topic exists). v4+ answers a batch of keys.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::{OFFSETS_TOPIC, TXN_TOPIC};
use crate::types::TopicPartition;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// The coordinator of `key` (a group in `__consumer_offsets`, a transactional id in
/// `__transaction_state`, per `topic`): (node, host, port), or why there is none now.
async fn coordinator_of(
    ctx: &RequestContext,
    topic: &'static str,
    key: &str,
) -> Result<Result<(BrokerId, String, i32), String>, HandlerError> {
    let config = &ctx.shard.config;
    if !ctx.shard.is_cluster() {
        let (host, port) = config
            .advertised()
            .expect("advertised listener validated at start");
        return Ok(Ok((BrokerId(config.node_id), host, port)));
    }
    let catalog = ctx.shard.catalog();
    let Some(meta) = catalog.get(topic) else {
        if topic == TXN_TOPIC {
            crate::cluster::metadata::create_txn_topic_soon(&ctx.shard);
            return Ok(Err(format!("{topic} is being created: retry")));
        }
        return Ok(Err(format!(
            "{topic} is created once offsets_topic_replication_factor brokers have registered"
        )));
    };
    let p = crate::group::offsets_partition(key, meta.partitions);
    let leader = if meta.is_replicated() {
        let tp = TopicPartition::new(topic, p);
        let owner = ctx.shard.owner_of(&tp);
        let topic_id = meta.id;
        ctx.shard
            .invoke_on(owner, move |s| async move {
                s.cluster()
                    .and_then(|c| c.leader_of(&tp, topic_id))
                    .map(|(l, _)| l)
            })
            .await?
    } else if topic == OFFSETS_TOPIC {
        // A cluster formed before the topic was replicated: its partitions are local, each
        // served by its designated broker.
        Some(super::metadata::designated_broker(&catalog, p))
    } else {
        return Ok(Err(format!("{topic} is not replicated: not served")));
    };
    let Some(id) = leader else {
        return Ok(Err(format!("no leader known here for {topic}-{p}: retry")));
    };
    Ok(match catalog.brokers.get(&id) {
        Some(b) => Ok((BrokerId(b.id), b.host.clone(), b.port)),
        None => Err(format!("broker {id} is not registered yet")),
    })
}

/// (error code, message) for a key, or None if this broker coordinates it.
fn refusal(key_type: i8, key: &str) -> Option<(i16, String)> {
    match key_type {
        KEY_TYPE_GROUP if key.is_empty() => Some((
            ResponseError::InvalidRequest.code(),
            "the group id is empty".into(),
        )),
        KEY_TYPE_GROUP => None,
        KEY_TYPE_TRANSACTION if key.is_empty() => Some((
            ResponseError::InvalidRequest.code(),
            "the transactional id is empty".into(),
        )),
        KEY_TYPE_TRANSACTION => None,
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
    // Why `key` of `key_type` gets no coordinator, or the coordinator.
    let answer = |key_type: i8, key: String| async move {
        if let Some(refused) = refusal(key_type, &key) {
            return Ok::<_, HandlerError>((key, Err(refused)));
        }
        let topic = if key_type == KEY_TYPE_TRANSACTION {
            TXN_TOPIC
        } else {
            OFFSETS_TOPIC
        };
        let found = coordinator_of(ctx, topic, &key)
            .await?
            .map_err(|why| (ResponseError::CoordinatorNotAvailable.code(), why));
        Ok((key, found))
    };
    if ctx.version >= 4 {
        let asks = req
            .coordinator_keys
            .into_iter()
            .map(|key| answer(req.key_type, key.to_string()));
        let mut coordinators = Vec::new();
        for result in futures::future::join_all(asks).await {
            let (key, found) = result?;
            coordinators.push(match found {
                Ok((node, host, port)) => Coordinator::default()
                    .with_key(str_bytes(key))
                    .with_node_id(node)
                    .with_host(str_bytes(host))
                    .with_port(port),
                Err((code, message)) => Coordinator::default()
                    .with_key(str_bytes(key))
                    .with_node_id(BrokerId(-1))
                    .with_host(StrBytes::default())
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            });
        }
        return Ok(FindCoordinatorResponse::default().with_coordinators(coordinators));
    }
    let key_type = if ctx.version >= 1 {
        req.key_type
    } else {
        KEY_TYPE_GROUP
    };
    let (_, found) = answer(key_type, req.key.to_string()).await?;
    Ok(match found {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(str_bytes(host))
            .with_port(port),
        Err((code, message)) => {
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
