//! SyncGroup (key 14), versions 0-5: the leader hands in the assignment of
//! the generation; every member gets its own. A follower's request waits for
//! the leader's. v5 checks the protocol type and name. Runs on the group's
//! coordinator shard.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::MEMBER_ASSIGNMENT_BYTES_MAX;
use crate::group::{
    self,
    state::{SyncOutcome, SyncRequest},
};

pub async fn handle(
    ctx: &RequestContext,
    req: SyncGroupRequest,
) -> Result<SyncGroupResponse, HandlerError> {
    let version = ctx.version;
    let group_id = req.group_id.0.to_string();
    let too_big = req
        .assignments
        .iter()
        .any(|a| a.assignment.len() > MEMBER_ASSIGNMENT_BYTES_MAX);
    let outcome = if group_id.is_empty() {
        SyncOutcome::error(ResponseError::InvalidGroupId)
    } else if too_big {
        SyncOutcome::error(ResponseError::InvalidRequest)
    } else {
        let sync = SyncRequest {
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.map(|i| i.to_string()),
            generation: req.generation_id,
            protocol_type: req.protocol_type.map(|t| t.to_string()),
            protocol_name: req.protocol_name.map(|n| n.to_string()),
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        };
        let gid = group_id.clone();
        group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
            s.groups.sync(&gid, sync).await
        })
        .await?
        .unwrap_or_else(SyncOutcome::error)
    };
    let resp = SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_assignment(if outcome.error == 0 {
            outcome.assignment
        } else {
            Bytes::new()
        });
    Ok(if version >= 5 {
        resp.with_protocol_type(outcome.protocol_type.map(str_bytes))
            .with_protocol_name(outcome.protocol_name.map(str_bytes))
    } else {
        resp
    })
}
