//! CreateTopics (key 19), versions 2-7: validated and applied by the
//! controller (shard 0); answered once every shard has opened its partitions.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{CONTROLLER, TopicSpec};

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
            partitions: if t.assignments.is_empty() {
                t.num_partitions
            } else {
                t.assignments.len() as i32
            },
            replication_factor: if t.assignments.is_empty() {
                t.replication_factor
            } else {
                t.assignments
                    .first()
                    .map(|a| a.broker_ids.len() as i16)
                    .unwrap_or(-1)
            },
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
                .with_replication_factor(1)
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
