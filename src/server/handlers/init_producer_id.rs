//! InitProducerId (key 22), versions 0-5 (v6, KIP-939 two-phase commit, is
//! listed by kafka-protocol 0.18 but its request does not decode).
//!
//! Idempotent producers only: without a transactional id the controller
//! (shard 0) hands out a producer id never used before, with epoch 0, or,
//! when the request carries the producer's current id and epoch (KIP-360,
//! v3+), the same id with the next epoch (a new id once the epoch is
//! exhausted). Partitions then fence the older epoch and expect the new one
//! to start at sequence 0.
//!
//! With a transactional id, the transaction coordinator of the id (`crate::txn`) answers:
//! a new producer id for a new id, else the id's producer id with the next epoch, after
//! aborting the transaction the previous producer left open (which fences it). An empty
//! transactional id is INVALID_REQUEST, as Kafka answers. In a cluster the coordinator is the
//! broker leading the id's `__transaction_state` partition; new producer ids come from the
//! controller's block as for idempotent producers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{HandlerError, RequestContext};
use crate::shard::controller::CONTROLLER;

pub async fn handle(
    ctx: &RequestContext,
    req: InitProducerIdRequest,
) -> Result<InitProducerIdResponse, HandlerError> {
    let error = |e: i16| {
        InitProducerIdResponse::default()
            .with_error_code(e)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let current = match (req.producer_id.0, req.producer_epoch) {
        (-1, -1) => None,
        (id, epoch) if id >= 0 && epoch >= 0 => Some((id, epoch)),
        _ => return Ok(error(ResponseError::InvalidRequest.code())),
    };
    match req.transactional_id.as_ref().map(|t| t.0.to_string()) {
        Some(id) if id.is_empty() => return Ok(error(ResponseError::InvalidRequest.code())),
        Some(id) => {
            let timeout_ms = req.transaction_timeout_ms;
            let tid = id.clone();
            let result = crate::txn::on_coordinator(&ctx.shard, &id, move |s| async move {
                s.txns.init_producer_id(&s, &tid, timeout_ms, current).await
            })
            .await?;
            return Ok(match result.and_then(|r| r) {
                Ok((pid, epoch)) => {
                    tracing::debug!(transactional_id = %id, producer_id = pid, epoch, "init transactional producer id");
                    InitProducerIdResponse::default()
                        .with_producer_id(ProducerId(pid))
                        .with_producer_epoch(epoch)
                }
                Err(e) => error(super::txn_error(e, ctx.version, 4)),
            });
        }
        None => {}
    }
    let result = ctx
        .shard
        .invoke_on(CONTROLLER, move |s| async move {
            if s.is_cluster() {
                s.init_producer_id_in_cluster(current).await
            } else {
                s.init_producer_id(current)
            }
        })
        .await?;
    Ok(match result {
        Ok((id, epoch)) => {
            tracing::debug!(producer_id = id, epoch, "init producer id");
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch)
        }
        Err(code) => error(code),
    })
}
