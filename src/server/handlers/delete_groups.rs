//! DeleteGroups (key 42), versions 0-2: delete groups without members and
//! their committed offsets (tombstones in `__consumer_offsets`, durable
//! before the answer). NON_EMPTY_GROUP if members remain, GROUP_ID_NOT_FOUND
//! if unknown.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::{HandlerError, RequestContext};
use crate::group;

pub async fn handle(
    ctx: &RequestContext,
    req: DeleteGroupsRequest,
) -> Result<DeleteGroupsResponse, HandlerError> {
    let asks = req.groups_names.into_iter().map(|id| async move {
        let gid = id.0.to_string();
        let code = if gid.is_empty() {
            ResponseError::InvalidGroupId.code()
        } else {
            let key = gid.clone();
            group::on_coordinator(&ctx.shard, &gid, move |s| async move {
                s.groups.delete(&s, &key).await
            })
            .await?
            .unwrap_or_else(|e| e.code())
        };
        Ok::<_, HandlerError>(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        )
    });
    let results = futures::future::join_all(asks)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeleteGroupsResponse::default().with_results(results))
}
