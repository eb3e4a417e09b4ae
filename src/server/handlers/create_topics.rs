//! CreateTopics (key 19), versions 2-7: validated and applied by the
//! controller (shard 0); answered once every shard has opened its partitions.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{CONTROLLER, TopicSpec};

/// A topic's manual replica assignments, by partition from 0. Indexes that are not
/// 0, 1, ... n-1 each once leave an empty assignment in the gap, which the controller
/// refuses (INVALID_REPLICA_ASSIGNMENT).
fn manual_assignments(
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Vec<Vec<i32>> {
    let n = t.assignments.len();
    let mut out = vec![Vec::new(); n];
    for a in &t.assignments {
        match usize::try_from(a.partition_index) {
            Ok(i) if i < n && out[i].is_empty() => {
                out[i] = a.broker_ids.iter().map(|b| b.0).collect();
                if out[i].is_empty() {
                    return vec![Vec::new(); n];
                }
            }
            _ => return vec![Vec::new(); n],
        }
    }
    out
}

/// Config source DYNAMIC_TOPIC_CONFIG in DescribeConfigs terms.
const SOURCE_TOPIC: i8 = 1;

pub async fn handle(
    ctx: &RequestContext,
    req: CreateTopicsRequest,
) -> Result<CreateTopicsResponse, HandlerError> {
    let specs: Vec<TopicSpec> = req
        .topics
        .iter()
        .map(|t| TopicSpec {
            name: t.name.0.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: manual_assignments(t),
            configs: t
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect(),
        })
        .collect();
    let validate_only = req.validate_only;
    let version = ctx.version;
    let outcomes = ctx
        .shard
        .invoke_on(CONTROLLER, move |c| async move {
            c.create_topics(specs, validate_only).await
        })
        .await?;
    let topics = req
        .topics
        .into_iter()
        .zip(outcomes)
        .map(|(t, outcome)| match outcome {
            Ok(meta) => CreatableTopicResult::default()
                .with_name(t.name)
                .with_topic_id(meta.id)
                .with_num_partitions(meta.partitions)
                .with_replication_factor(meta.replicas.first().map_or(1, |r| r.len() as i16))
                // Configs are reported from v5; earlier encoders refuse them.
                .with_configs(Some(
                    meta.configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(k.clone()))
                                .with_value(Some(str_bytes(v.clone())))
                                .with_config_source(SOURCE_TOPIC)
                        })
                        .filter(|_| version >= 5)
                        .collect(),
                )),
            Err((code, message)) => CreatableTopicResult::default()
                .with_name(t.name)
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        })
        .collect();
    Ok(CreateTopicsResponse::default().with_topics(topics))
}
