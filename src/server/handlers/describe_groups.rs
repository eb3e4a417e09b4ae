//! DescribeGroups (key 15), versions 0-6: state, protocol and members of
//! each group, asked of its coordinator shard. Unknown groups read as Dead
//! (v6+: with GROUP_ID_NOT_FOUND, as Kafka does).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::group::{self, GroupDescription};

/// Operations bit set when the client asked for authorized operations
/// (v3+): everything a group allows (READ, DESCRIBE, DELETE), no ACLs here.
const GROUP_OPERATIONS_ALL: i32 = (1 << 3) | (1 << 8) | (1 << 6);

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeGroupsRequest,
) -> Result<DescribeGroupsResponse, HandlerError> {
    let version = ctx.version;
    let include_ops = version >= 3 && req.include_authorized_operations;
    let asks = req.groups.into_iter().map(|id| async move {
        let gid = id.0.to_string();
        let found = if gid.is_empty() {
            Err(ResponseError::CoordinatorNotAvailable)
        } else {
            let key = gid.clone();
            group::on_coordinator(
                &ctx.shard,
                &gid,
                move |s| async move { s.groups.describe(&key) },
            )
            .await?
        };
        Ok::<_, HandlerError>((id, found))
    });
    let mut groups = Vec::new();
    for result in futures::future::join_all(asks).await {
        let (id, found) = result?;
        let d = found.unwrap_or_else(|e| GroupDescription {
            error: e.code(),
            state: "Dead",
            protocol_type: String::new(),
            protocol_data: String::new(),
            members: Vec::new(),
        });
        // Before v6 an unknown group is a Dead group without an error.
        let error = if d.error == ResponseError::GroupIdNotFound.code() && version < 6 {
            0
        } else {
            d.error
        };
        let members = d
            .members
            .into_iter()
            .map(|m| {
                DescribedGroupMember::default()
                    .with_member_id(str_bytes(m.member_id))
                    .with_group_instance_id(if version >= 4 {
                        m.group_instance_id.map(str_bytes)
                    } else {
                        None
                    })
                    .with_client_id(str_bytes(m.client_id))
                    .with_client_host(str_bytes(m.client_host))
                    .with_member_metadata(m.metadata)
                    .with_member_assignment(m.assignment)
            })
            .collect();
        let mut entry = DescribedGroup::default()
            .with_group_id(id)
            .with_error_code(error)
            .with_group_state(str_bytes(d.state))
            .with_protocol_type(str_bytes(d.protocol_type))
            .with_protocol_data(str_bytes(d.protocol_data))
            .with_members(members);
        if include_ops {
            entry = entry.with_authorized_operations(GROUP_OPERATIONS_ALL);
        }
        groups.push(entry);
    }
    Ok(DescribeGroupsResponse::default().with_groups(groups))
}
