//! JoinGroup (key 11), versions 0-9: a member joins (or rejoins) a group and
//! waits until the next generation forms; the leader gets every member's
//! metadata for the selected protocol. v4+ new dynamic members first get
//! MEMBER_ID_REQUIRED with their id (KIP-394); v5+ static members
//! (`group.instance.id`). Runs on the group's coordinator shard (see
//! `crate::group::state` for the state machine).

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::{GROUP_ID_LEN_MAX, MEMBER_METADATA_BYTES_MAX, PROTOCOLS_PER_MEMBER_MAX};
use crate::group::{self, state::JoinOutcome, state::JoinRequest};

/// Where the member connects from, as DescribeGroups reports it. The
/// request context carries no peer address yet.
const CLIENT_HOST_UNKNOWN: &str = "/unknown";

fn check(ctx: &RequestContext, req: &JoinGroupRequest) -> Result<(), ResponseError> {
    let config = &ctx.shard.config;
    let group_id = &req.group_id.0;
    if group_id.is_empty() || group_id.len() > GROUP_ID_LEN_MAX {
        return Err(ResponseError::InvalidGroupId);
    }
    if req
        .group_instance_id
        .as_ref()
        .is_some_and(|i| i.is_empty() || i.len() > GROUP_ID_LEN_MAX)
    {
        return Err(ResponseError::InvalidRequest);
    }
    if req.session_timeout_ms < config.group_min_session_timeout_ms
        || req.session_timeout_ms > config.group_max_session_timeout_ms
    {
        return Err(ResponseError::InvalidSessionTimeout);
    }
    let metadata_bytes: usize = req.protocols.iter().map(|p| p.metadata.len()).sum();
    if req.protocol_type.is_empty()
        || req.protocols.is_empty()
        || req.protocols.len() > PROTOCOLS_PER_MEMBER_MAX
        || metadata_bytes > MEMBER_METADATA_BYTES_MAX
    {
        return Err(ResponseError::InconsistentGroupProtocol);
    }
    Ok(())
}

pub async fn handle(
    ctx: &RequestContext,
    req: JoinGroupRequest,
) -> Result<JoinGroupResponse, HandlerError> {
    let version = ctx.version;
    let outcome = match check(ctx, &req) {
        Err(e) => JoinOutcome::error(e, req.member_id.to_string()),
        Ok(()) => {
            let group_id = req.group_id.0.to_string();
            let session = req.session_timeout_ms.max(0) as u64;
            // v0 has no rebalance timeout: the session timeout serves.
            let rebalance = if version >= 1 {
                req.rebalance_timeout_ms.max(0) as u64
            } else {
                session
            };
            let join = JoinRequest {
                member_id: req.member_id.to_string(),
                group_instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
                require_known_member_id: version >= 4,
                client_id: ctx
                    .header
                    .client_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                client_host: CLIENT_HOST_UNKNOWN.to_string(),
                session_timeout: Duration::from_millis(session),
                rebalance_timeout: Duration::from_millis(rebalance),
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .iter()
                    .map(|p| (p.name.to_string(), p.metadata.clone()))
                    .collect(),
            };
            let gid = group_id.clone();
            let member_id = join.member_id.clone();
            group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
                s.groups.join(&gid, join).await
            })
            .await?
            .unwrap_or_else(|e| JoinOutcome::error(e, member_id))
        }
    };
    Ok(response(outcome, version))
}

fn response(o: JoinOutcome, version: i16) -> JoinGroupResponse {
    let members = o
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                // group_instance_id exists from v5.
                .with_group_instance_id(if version >= 5 {
                    m.group_instance_id.map(str_bytes)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    let resp = JoinGroupResponse::default()
        .with_error_code(o.error)
        .with_generation_id(o.generation)
        .with_leader(str_bytes(o.leader))
        .with_member_id(str_bytes(o.member_id))
        .with_members(members);
    if version >= 7 {
        // Nullable from v7.
        resp.with_protocol_type(o.protocol_type.map(str_bytes))
            .with_protocol_name(o.protocol_name.map(str_bytes))
    } else {
        resp.with_protocol_name(Some(str_bytes(o.protocol_name.unwrap_or_default())))
    }
}
