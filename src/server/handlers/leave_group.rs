//! LeaveGroup (key 13), versions 0-5: members leave at once instead of
//! waiting for their session to expire; the group rebalances. v0-2 name one
//! member; v3+ a batch, each by member id and/or group instance id, with an
//! error per member. Runs on the group's coordinator shard.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::GROUP_MEMBERS_MAX;
use crate::group;

pub async fn handle(
    ctx: &RequestContext,
    req: LeaveGroupRequest,
) -> Result<LeaveGroupResponse, HandlerError> {
    let version = ctx.version;
    let group_id = req.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let outcome: Result<Vec<i16>, i16> = if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId.code())
    } else if members.is_empty() || members.len() > GROUP_MEMBERS_MAX {
        Err(ResponseError::InvalidRequest.code())
    } else {
        let gid = group_id.clone();
        let list = members.clone();
        match group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
            s.groups.leave(&gid, &list)
        })
        .await?
        {
            Err(e) => Err(e.code()),
            Ok(None) => Err(ResponseError::UnknownMemberId.code()),
            Ok(Some(codes)) => Ok(codes),
        }
    };
    if version < 3 {
        let code = match outcome {
            Ok(codes) => codes.first().copied().unwrap_or(0),
            Err(code) => code,
        };
        return Ok(LeaveGroupResponse::default().with_error_code(code));
    }
    Ok(match outcome {
        Ok(codes) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((member_id, instance_id), code)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(member_id))
                        .with_group_instance_id(instance_id.map(str_bytes))
                        .with_error_code(code)
                })
                .collect(),
        ),
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
    })
}
