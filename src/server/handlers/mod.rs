//! One file per Kafka API. [`APIS`] is the single list that drives both
//! dispatch and the ApiVersions answer; each API is served in every version
//! the kafka-protocol crate can decode (`ApiKey::valid_versions`).

pub mod api_versions;
pub mod create_topics;
pub mod delete_topics;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::VersionRange;

use crate::shard::{Shard, ShardError};

/// The APIs Sluice serves.
pub const APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
];

/// The versions of `key` we serve, or None if we do not serve it.
pub fn supported_versions(key: ApiKey) -> Option<VersionRange> {
    APIS.contains(&key).then(|| key.valid_versions())
}

/// What a handler needs to know about the request it serves.
pub struct RequestContext {
    pub shard: Rc<Shard>,
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
}

/// A failure that closes the connection (a Kafka error code is preferred
/// wherever the protocol has one).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("request kind does not match its API key")]
    Mismatch,
}

/// Run the handler for `request`. `None` means no response is sent
/// (Produce with acks=0).
pub async fn dispatch(
    ctx: &RequestContext,
    request: RequestKind,
) -> Result<Option<ResponseKind>, HandlerError> {
    Ok(Some(match request {
        RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(ctx, r)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(ctx, r).await?),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(create_topics::handle(ctx, r).await?)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(delete_topics::handle(ctx, r).await?)
        }
        RequestKind::Produce(r) => match produce::handle(ctx, r).await? {
            Some(resp) => ResponseKind::Produce(resp),
            None => return Ok(None),
        },
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::handle(ctx, r).await?),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(ctx, r).await?)
        }
        _ => return Err(HandlerError::Mismatch),
    }))
}

/// A protocol string from an owned string.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
