//! DeleteTopics (key 20), versions 1-6: by name (v1-5 `topic_names`), or by
//! name or topic id (v6 `topics`). Applied by the controller.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::CONTROLLER;

pub async fn handle(
    ctx: &RequestContext,
    req: DeleteTopicsRequest,
) -> Result<DeleteTopicsResponse, HandlerError> {
    let catalog = ctx.shard.catalog();
    // (name if known, id as asked)
    let wanted: Vec<(Option<String>, Uuid)> = if ctx.version >= 6 {
        req.topics
            .iter()
            .map(|t| match &t.name {
                Some(n) => (Some(n.0.to_string()), t.topic_id),
                None => (catalog.name_of(&t.topic_id).map(str::to_string), t.topic_id),
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let names: Vec<String> = wanted.iter().filter_map(|(n, _)| n.clone()).collect();
    let results = ctx
        .shard
        .invoke_on(
            CONTROLLER,
            move |c| async move { c.delete_topics(names).await },
        )
        .await?;
    let mut results = results.into_iter();
    let responses = wanted
        .into_iter()
        .map(|(name, id)| match name {
            Some(n) => {
                let (_, topic_id, code) = results.next().expect("one result per name");
                DeletableTopicResult::default()
                    .with_name(Some(TopicName(str_bytes(n))))
                    .with_topic_id(topic_id)
                    .with_error_code(code)
            }
            None => DeletableTopicResult::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(ResponseError::UnknownTopicId.code()),
        })
        .collect();
    Ok(DeleteTopicsResponse::default().with_responses(responses))
}
