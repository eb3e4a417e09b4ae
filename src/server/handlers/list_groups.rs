//! ListGroups (key 16), versions 0-5: every group of every shard. v4+
//! filters by state, v5+ by type (all groups here are "classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{HandlerError, RequestContext, str_bytes};

/// The group type of every group this broker runs (KIP-848 terms).
const GROUP_TYPE_CLASSIC: &str = "classic";

pub async fn handle(
    ctx: &RequestContext,
    req: ListGroupsRequest,
) -> Result<ListGroupsResponse, HandlerError> {
    let version = ctx.version;
    let states: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = req
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if !types.is_empty() && !types.iter().any(|t| t == GROUP_TYPE_CLASSIC) {
        return Ok(ListGroupsResponse::default());
    }
    let per_shard = ctx
        .shard
        .invoke_on_all(|s| async move { s.groups.list() })
        .await?;
    let groups = per_shard
        .into_iter()
        .flatten()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_ascii_lowercase()))
        .map(|g| {
            let entry = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type));
            // group_state from v4, group_type from v5.
            let entry = if version >= 4 {
                entry.with_group_state(str_bytes(g.state))
            } else {
                entry
            };
            if version >= 5 {
                entry.with_group_type(str_bytes(GROUP_TYPE_CLASSIC))
            } else {
                entry
            }
        })
        .collect();
    Ok(ListGroupsResponse::default().with_groups(groups))
}
