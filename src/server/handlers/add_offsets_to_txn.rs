//! AddOffsetsToTxn (key 25), versions 0-3: the group's `__consumer_offsets` partition joins
//! the producer's open transaction, so the transaction's offset commits (TxnOffsetCommit)
//! get its marker. v4 (KIP-890's TRANSACTION_ABORTABLE) is not served: clients use it only
//! with `transaction.version` 2.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::{HandlerError, RequestContext};
use crate::constants::OFFSETS_TOPIC;

pub async fn handle(
    ctx: &RequestContext,
    req: AddOffsetsToTxnRequest,
) -> Result<AddOffsetsToTxnResponse, HandlerError> {
    let group = req.group_id.0.to_string();
    if group.is_empty() {
        return Ok(AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code()));
    }
    let Some(tp) = crate::group::offsets_tp(&ctx.shard, &group) else {
        return Ok(AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code()));
    };
    let id = req.transactional_id.0.to_string();
    let (producer_id, epoch) = (req.producer_id.0, req.producer_epoch);
    let tid = id.clone();
    let result = crate::txn::on_coordinator(&ctx.shard, &id, move |s| async move {
        s.txns
            .add_partitions(
                &s,
                &tid,
                producer_id,
                epoch,
                vec![(OFFSETS_TOPIC.to_string(), tp.partition)],
            )
            .await
    })
    .await?;
    let code = match result.and_then(|r| r) {
        Ok(()) => 0,
        Err(e) => super::txn_error(e, ctx.version, 2),
    };
    Ok(AddOffsetsToTxnResponse::default().with_error_code(code))
}
