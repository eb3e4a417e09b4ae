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
//! Transactions are not supported: a request with a transactional id gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED (an empty one INVALID_REQUEST, as
//! Kafka answers), so a transactional client fails at once and clearly
//! instead of half-working.

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
    match req.transactional_id.as_ref().map(|t| t.0.is_empty()) {
        Some(false) => {
            return Ok(error(
                ResponseError::TransactionalIdAuthorizationFailed.code(),
            ));
        }
        Some(true) => return Ok(error(ResponseError::InvalidRequest.code())),
        None => {}
    }
    let current = match (req.producer_id.0, req.producer_epoch) {
        (-1, -1) => None,
        (id, epoch) if id >= 0 && epoch >= 0 => Some((id, epoch)),
        _ => return Ok(error(ResponseError::InvalidRequest.code())),
    };
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
