//! ListTransactions (key 66), versions 0-2: every transactional id this broker coordinates
//! (gathered from every shard), filtered by state, producer id, duration (v1+: open longer
//! than that many ms) and a transactional id regular expression (v2+). An unknown state
//! filter is listed back in `unknown_state_filters`.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::{HandlerError, RequestContext, str_bytes};
use crate::txn::TxnState;

const STATES: [TxnState; 8] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
    TxnState::Dead,
    TxnState::PrepareEpochFence,
];

pub async fn handle(
    ctx: &RequestContext,
    req: ListTransactionsRequest,
) -> Result<ListTransactionsResponse, HandlerError> {
    let mut unknown = Vec::new();
    let mut wanted = Vec::new();
    for f in &req.state_filters {
        match STATES.iter().find(|s| s.name() == f.as_str()) {
            Some(s) => wanted.push(*s),
            None => unknown.push(f.clone()),
        }
    }
    let pattern = match req.transactional_id_pattern.as_deref() {
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(r) => Some(r),
            Err(_) => {
                return Ok(ListTransactionsResponse::default().with_error_code(
                    kafka_protocol::ResponseError::InvalidRegularExpression.code(),
                ));
            }
        },
        _ => None,
    };
    let all = ctx
        .shard
        .invoke_on_all(|s| async move { s.txns.describe_all() })
        .await?;
    let now = crate::storage::io::Clock::wall_ms(&crate::runtime::SystemClock);
    let states = all
        .into_iter()
        .flatten()
        .filter(|d| wanted.is_empty() || wanted.contains(&d.meta.state))
        .filter(|d| {
            req.producer_id_filters.is_empty()
                || req
                    .producer_id_filters
                    .contains(&ProducerId(d.meta.producer_id))
        })
        .filter(|d| {
            req.duration_filter < 0
                || (d.meta.start_ms >= 0 && now - d.meta.start_ms >= req.duration_filter)
        })
        .filter(|d| {
            pattern
                .as_ref()
                .is_none_or(|r| r.is_match(&d.transactional_id))
        })
        .map(|d| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(d.transactional_id)))
                .with_producer_id(ProducerId(d.meta.producer_id))
                .with_transaction_state(str_bytes(d.meta.state.name()))
        })
        .collect();
    Ok(ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states))
}
