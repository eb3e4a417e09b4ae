//! Produce (key 0), versions 3-13 (v13 names topics by id).
//!
//! Path: resolve each topic against this shard's catalog copy, group the
//! partitions by owning shard, and run the appends there
//! ([`produce_on_owner`]); answer once every owner has answered. Batches stay
//! opaque: the owner validates CRC32C and rewrites base offsets only.
//!
//! Topic configs obeyed here (through the partition's `LogConfig`):
//! `max.message.bytes` (a larger batch gets MESSAGE_TOO_LARGE) and
//! `message.timestamp.type=LogAppendTime` (the owner stamps the batch and
//! the answer carries `log_append_time_ms`).
//!
//! Acks: 0 appends and sends no response; 1 and -1 are answered after the
//! batch is durable (fdatasync under the default flush policy). On a single
//! broker the leader is the whole ISR, so 1 and -1 wait for the same thing,
//! and an acknowledged batch survives `kill -9` either way.
//!
//! In a cluster, a replicated partition's batches are proposed to its Raft group on the
//! owner shard ([`crate::replication::Replica::propose`]): acks=all is answered once a
//! majority of the replicas has them fdatasynced, acks=1 once the leader's own log has them;
//! a broker whose replica does not lead answers NOT_LEADER_OR_FOLLOWER.
//!
//! Idempotent producers: the owner's `PartitionLog::append` checks each
//! batch with a producer id against the partition's producer state. A retry
//! of a batch already appended (durable or still queued) is answered with
//! the original base offset and no error, once the original is durable, as
//! Kafka does; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER (45), an
//! older epoch INVALID_PRODUCER_EPOCH (47, Kafka's answer to Produce since
//! 2.7), a transactional batch INVALID_TXN_STATE (48).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use super::{HandlerError, RequestContext, str_bytes};
use crate::replication::Acks;
use crate::runtime;
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::types::TopicPartition;

/// One partition's outcome.
#[derive(Debug, Clone)]
pub struct PartitionOutcome {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// The batches' append time under LogAppendTime, else -1.
    pub log_append_time_ms: i64,
}

impl PartitionOutcome {
    /// The log refused the batch or could not make it durable.
    fn refused(e: &crate::storage::StorageError, log: &crate::storage::PartitionLog) -> Self {
        Self {
            error_code: e.kafka_error_code(),
            error_message: Some(e.to_string()),
            base_offset: -1,
            log_start_offset: log.log_start_offset().get(),
            log_append_time_ms: -1,
        }
    }

    fn error(code: ResponseError, message: Option<String>) -> Self {
        Self {
            error_code: code.code(),
            error_message: message,
            base_offset: -1,
            log_start_offset: -1,
            log_append_time_ms: -1,
        }
    }
}

pub async fn handle(
    ctx: &RequestContext,
    req: ProduceRequest,
) -> Result<Option<ProduceResponse>, HandlerError> {
    let shard = &ctx.shard;
    let acks = req.acks;
    let catalog = shard.catalog();
    // A client timeout of 0 or less would fail every acks=all produce: use 30 s.
    let timeout = if req.timeout_ms > 0 {
        Duration::from_millis(req.timeout_ms as u64)
    } else {
        Duration::from_secs(30)
    };

    // outcomes[t][p], filled either now (errors) or by the owners.
    let mut outcomes: Vec<Vec<Option<PartitionOutcome>>> = Vec::with_capacity(req.topic_data.len());
    // Per owner: (topic index, partition index) -> (partition, records).
    let mut work = ByOwner::new(shard.count);
    let mut names: Vec<TopicName> = Vec::with_capacity(req.topic_data.len());
    for (ti, topic) in req.topic_data.iter().enumerate() {
        let name = super::resolve_topic(&catalog, ctx.version >= 13, &topic.name, &topic.topic_id);
        names.push(TopicName(str_bytes(name.clone().unwrap_or_default())));
        let mut row = Vec::with_capacity(topic.partition_data.len());
        for (pi, part) in topic.partition_data.iter().enumerate() {
            let outcome = match &name {
                _ if !(-1..=1).contains(&acks) => Some(PartitionOutcome::error(
                    ResponseError::InvalidRequiredAcks,
                    None,
                )),
                None => Some(PartitionOutcome::error(ResponseError::UnknownTopicId, None)),
                Some(n) if !catalog.has_partition(n, part.index) => Some(PartitionOutcome::error(
                    ResponseError::UnknownTopicOrPartition,
                    None,
                )),
                Some(n) => {
                    crate::metrics::produce_partition_bytes(
                        part.records.as_ref().map_or(0, Bytes::len),
                    );
                    let tp = TopicPartition::new(n.clone(), part.index);
                    work.push(shard.owner_of(&tp), (ti, pi), (tp, part.records.clone()));
                    None
                }
            };
            row.push(outcome);
        }
        outcomes.push(row);
    }

    // Hand every owner its appends, then let the connection's next write
    // go (`server::ordering`): the owners assign offsets in the order the
    // work reached them, so this request's batches land after the previous
    // request's on every partition. Then wait for durability.
    let gathered = shard
        .scatter(work, move |s, parts| {
            produce_on_owner(&s, acks, timeout, parts)
        })
        .await?;
    ctx.placed();
    for ((t, p), r) in gathered.all().await? {
        outcomes[t][p] = Some(r);
    }
    if acks == 0 {
        return Ok(None);
    }

    let responses = req
        .topic_data
        .iter()
        .zip(outcomes)
        .zip(names)
        .map(|((topic, row), name)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(
                    topic
                        .partition_data
                        .iter()
                        .zip(row)
                        .map(|(part, o)| {
                            let o = o.expect("every partition has an outcome");
                            PartitionProduceResponse::default()
                                .with_index(part.index)
                                .with_error_code(o.error_code)
                                .with_error_message(o.error_message.map(str_bytes))
                                .with_base_offset(o.base_offset)
                                .with_log_append_time_ms(o.log_append_time_ms)
                                .with_log_start_offset(o.log_start_offset)
                        })
                        .collect(),
                )
        })
        .collect();
    Ok(Some(ProduceResponse::default().with_responses(responses)))
}

/// Append on the shard that owns the partitions. The appends are *called*
/// here, before this returns (so in the order the work arrived), and get
/// their offsets then or their place in line; the returned future waits
/// for durability, under one timer for all the partitions (a timer per
/// partition cost a twentieth of the broker's time at 1,024 partitions):
/// a partition not done by then is answered REQUEST_TIMED_OUT.
pub fn produce_on_owner(
    shard: &Shard,
    acks: i16,
    timeout: Duration,
    parts: Vec<(TopicPartition, Option<Bytes>)>,
) -> impl std::future::Future<Output = Vec<PartitionOutcome>> + use<> {
    // Whether an append waits in a room queue: it takes its offsets when polled in its turn, so
    // it must not wait behind this request's other partitions (it would hold up the producers
    // queued behind it on that partition).
    let mut queued = false;
    let appends: Vec<_> = parts
        .into_iter()
        .map(|(tp, records)| {
            let records = records.unwrap_or_default();
            // A replicated partition: proposed to its Raft group (the call assigns the
            // offsets, so order is kept as for a local append).
            if let Some(driver) = shard.replica(&tp) {
                let mode = if acks == -1 { Acks::All } else { Acks::Leader };
                let log = driver.replica().log().clone();
                let refused = if acks == -1 {
                    not_enough_replicas(shard, &tp, driver.replica())
                } else {
                    None
                };
                let proposed = (refused.is_none() && !records.is_empty())
                    .then(|| driver.propose(records, mode));
                return futures::future::Either::Left(async move {
                    match refused {
                        Some(o) => o,
                        None => proposal_outcome(&tp, &log, proposed).await,
                    }
                });
            }
            let log = shard.partition(&tp);
            let appended = match &log {
                Some(log) if !records.is_empty() => {
                    let appended = log.append(records);
                    queued |= log.appends_wait_for_room();
                    Some(appended)
                }
                _ => None,
            };
            futures::future::Either::Right(
                async move { append_outcome(&tp, acks, log, appended).await },
            )
        })
        .collect();
    async move {
        let n = appends.len();
        let mut outcomes: Vec<Option<PartitionOutcome>> = vec![None; n];
        // Timed out: the partitions still waiting are dropped (an append still waiting for
        // room is not made) and answered as timed out.
        let _ = runtime::timeout(timeout, async {
            if queued {
                let mut all: FuturesUnordered<_> = appends
                    .into_iter()
                    .enumerate()
                    .map(|(i, append)| append.map(move |o| (i, o)))
                    .collect();
                while let Some((i, outcome)) = all.next().await {
                    outcomes[i] = Some(outcome);
                }
            } else {
                // Every append has its offsets: awaited one after the other. The response
                // waits for the last of them anyway, and a request's partitions become durable
                // together (one journal round), so after the first wait the rest are ready
                // when reached. Concurrent futures (FuturesUnordered) cost a task, a waker and
                // a wake-up per partition.
                for (i, append) in appends.into_iter().enumerate() {
                    outcomes[i] = Some(append.await);
                }
            }
        })
        .await;
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| PartitionOutcome::error(ResponseError::RequestTimedOut, None))
            })
            .collect()
    }
}

/// acks=all on a leader with fewer in-sync replicas than the topic's `min.insync.replicas`
/// (default 1): NOT_ENOUGH_REPLICAS, as Kafka answers. Raft's majority commit stays the rule
/// for acknowledging; this only refuses earlier.
fn not_enough_replicas(
    shard: &Shard,
    tp: &TopicPartition,
    replica: &crate::replication::Replica,
) -> Option<PartitionOutcome> {
    if !replica.is_leader() {
        return None;
    }
    let min: usize = shard
        .catalog()
        .get(&tp.topic)
        .and_then(|m| m.configs.get("min.insync.replicas"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if min <= 1 {
        return None; // the leader is always in sync: nothing to count
    }
    let in_sync = replica.in_sync_now().len();
    (in_sync < min).then(|| {
        PartitionOutcome::error(
            ResponseError::NotEnoughReplicas,
            Some(format!(
                "{in_sync} in-sync replicas, min.insync.replicas is {min}"
            )),
        )
    })
}

/// One replicated partition's proposal: answered once committed (acks=all: fdatasynced on a
/// majority of its replicas) or, for acks=1, once the leader's own log has it.
async fn proposal_outcome(
    tp: &TopicPartition,
    log: &crate::storage::PartitionLog,
    proposed: Option<
        impl std::future::Future<
            Output = Result<crate::storage::AppendInfo, crate::replication::ReplicaError>,
        >,
    >,
) -> PartitionOutcome {
    let Some(proposed) = proposed else {
        return PartitionOutcome::error(
            ResponseError::InvalidRecord,
            Some("empty record set".into()),
        );
    };
    match proposed.await {
        Ok(info) => PartitionOutcome {
            error_code: 0,
            error_message: None,
            base_offset: info.base_offset.get(),
            log_start_offset: info.log_start_offset.get(),
            log_append_time_ms: info.log_append_time_ms,
        },
        Err(e) => {
            tracing::debug!(partition = %tp, error = %e, "proposal refused");
            PartitionOutcome {
                error_code: e.kafka_error_code(),
                error_message: Some(e.to_string()),
                base_offset: -1,
                log_start_offset: log.log_start_offset().get(),
                log_append_time_ms: -1,
            }
        }
    }
}

/// One partition's append, and with acks its durability.
async fn append_outcome(
    tp: &TopicPartition,
    acks: i16,
    log: Option<Rc<crate::storage::PartitionLog>>,
    appended: Option<
        impl std::future::Future<
            Output = Result<crate::storage::AppendInfo, crate::storage::StorageError>,
        >,
    >,
) -> PartitionOutcome {
    let Some(log) = log else {
        return PartitionOutcome::error(ResponseError::NotLeaderOrFollower, None);
    };
    let Some(appended) = appended else {
        return PartitionOutcome::error(
            ResponseError::InvalidRecord,
            Some("empty record set".into()),
        );
    };
    let info = match appended.await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(partition = %tp, error = %e, "append refused");
            return PartitionOutcome::refused(&e, &log);
        }
    };
    if acks != 0
        && let Err(e) = log.wait_durable(&info).await
    {
        return PartitionOutcome::refused(&e, &log);
    }
    PartitionOutcome {
        error_code: 0,
        error_message: None,
        base_offset: info.base_offset.get(),
        log_start_offset: info.log_start_offset.get(),
        log_append_time_ms: info.log_append_time_ms,
    }
}
