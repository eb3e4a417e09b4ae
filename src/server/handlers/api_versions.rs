//! ApiVersions (key 18), versions 0-4: the APIs and versions this broker
//! serves, built from [`super::APIS`].
//!
//! Old-client trap: librdkafka before 2.2 misreads optional tagged fields in
//! an ApiVersions v3 response ("Read underflow"), so none are sent: no
//! supported or finalized features.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::{APIS, RequestContext};

fn api_list() -> Vec<ApiVersion> {
    APIS.iter()
        .map(|k| {
            let r = super::served_versions(*k);
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(r.min)
                .with_max_version(r.max)
        })
        .collect()
}

pub fn handle(_ctx: &RequestContext, _req: ApiVersionsRequest) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_list())
}

/// The answer to an ApiVersions request of a version we do not serve
/// (encoded as v0 by the caller).
pub fn unsupported_version_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_list())
}
