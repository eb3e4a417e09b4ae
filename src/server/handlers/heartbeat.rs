//! Heartbeat (key 12), versions 0-4: keeps a member's session alive and
//! tells it when a rebalance is in progress (REBALANCE_IN_PROGRESS). Runs on
//! the group's coordinator shard.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{HandlerError, RequestContext};
use crate::group;

pub async fn handle(
    ctx: &RequestContext,
    req: HeartbeatRequest,
) -> Result<HeartbeatResponse, HandlerError> {
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    let instance_id = req.group_instance_id.map(|i| i.to_string());
    let generation = req.generation_id;
    let code = if group_id.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        let gid = group_id.clone();
        group::on_coordinator(&ctx.shard, &group_id, move |s| async move {
            s.groups
                .heartbeat(&gid, &member_id, instance_id.as_deref(), generation)
        })
        .await?
        .unwrap_or_else(|e| e.code())
    };
    Ok(HeartbeatResponse::default().with_error_code(code))
}
