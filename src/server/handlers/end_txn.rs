//! EndTxn (key 26), versions 0-4: commit or abort the producer's open transaction. Answered
//! once the COMMIT or ABORT markers are durable in every partition of it (see `crate::txn`).
//! v5 (KIP-890's epoch bump per transaction) is not served: clients use it only with
//! `transaction.version` 2.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};

use super::{HandlerError, RequestContext};

pub async fn handle(
    ctx: &RequestContext,
    req: EndTxnRequest,
) -> Result<EndTxnResponse, HandlerError> {
    let id = req.transactional_id.0.to_string();
    let (producer_id, epoch, commit) = (req.producer_id.0, req.producer_epoch, req.committed);
    let tid = id.clone();
    let result = crate::txn::on_coordinator(&ctx.shard, &id, move |s| async move {
        s.txns.end(&s, &tid, producer_id, epoch, commit).await
    })
    .await?;
    let code = match result.and_then(|r| r) {
        Ok(()) => 0,
        Err(e) => super::txn_error(e, ctx.version, 2),
    };
    Ok(EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1))
}
