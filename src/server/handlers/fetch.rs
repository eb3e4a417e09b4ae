//! Fetch (key 1), versions 4-18 (v13+ names topics by id).
//!
//! Path: group the partitions by owning shard, read on each owner
//! ([`read_on_owner`]), then assemble in request order, keeping to
//! `max_bytes` (the first non-empty partition's first batch is always whole,
//! KIP-74). If fewer than `min_bytes` came back, wait on the owners until a
//! high watermark moves past what that read saw (new data) or `max_wait_ms`
//! runs out ([`wait_on_owner`]), then read again. Waiting for the fetch
//! offset instead would return at once whenever some data, but less than
//! `min_bytes`, is there, and the handler would spin its shard until the
//! deadline.
//!
//! Fetch sessions (KIP-227) are not kept: the response's session id is 0,
//! which tells clients to send full fetch requests.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, TopicName};

use super::{HandlerError, RequestContext, str_bytes};
use crate::constants::FETCH_WAIT_MS_MAX;
use crate::runtime;
use crate::server::zero_copy;
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::storage::Chunks;
use crate::types::{Offset, ShardId, TopicPartition};

/// One partition to read on its owner.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub tp: TopicPartition,
    pub offset: i64,
    pub max_bytes: usize,
    /// isolation_level 1 (READ_COMMITTED): read below the last stable offset, with the
    /// aborted transactions.
    pub committed: bool,
}

/// What the owner read.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// -1 when unknown (an error).
    pub last_stable_offset: i64,
    /// read_committed: the aborted transactions overlapping the records.
    pub aborted: Vec<crate::storage::producer_state::AbortedTxn>,
    /// As stored (the tail cache's own buffers): sent without a copy.
    pub records: Chunks,
}

struct Slot {
    topic: usize,
    partition: usize,
    owner: ShardId,
    spec: ReadSpec,
}

pub async fn handle(
    ctx: &RequestContext,
    req: FetchRequest,
) -> Result<FetchResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    let started = Instant::now();
    let max_wait = Duration::from_millis(req.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX as i32) as u64);
    let deadline = started + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };

    let mut outcomes: Vec<Vec<ReadOutcome>> = Vec::with_capacity(req.topics.len());
    let mut names: Vec<TopicName> = Vec::with_capacity(req.topics.len());
    let mut slots: Vec<Slot> = Vec::new();
    for (ti, topic) in req.topics.iter().enumerate() {
        let name = super::resolve_topic(&catalog, ctx.version >= 13, &topic.topic, &topic.topic_id);
        names.push(TopicName(str_bytes(name.clone().unwrap_or_default())));
        let mut row = Vec::with_capacity(topic.partitions.len());
        for (pi, part) in topic.partitions.iter().enumerate() {
            let mut outcome = ReadOutcome {
                high_watermark: -1,
                log_start_offset: -1,
                last_stable_offset: -1,
                ..Default::default()
            };
            match &name {
                None => outcome.error_code = ResponseError::UnknownTopicId.code(),
                Some(n) if !catalog.has_partition(n, part.partition) => {
                    outcome.error_code = ResponseError::UnknownTopicOrPartition.code()
                }
                Some(n) => {
                    let tp = TopicPartition::new(n.clone(), part.partition);
                    slots.push(Slot {
                        topic: ti,
                        partition: pi,
                        owner: shard.owner_of(&tp),
                        spec: ReadSpec {
                            tp,
                            offset: part.fetch_offset,
                            max_bytes: part.partition_max_bytes.max(0) as usize,
                            committed: req.isolation_level == 1,
                        },
                    });
                }
            }
            row.push(outcome);
        }
        outcomes.push(row);
    }

    loop {
        let reads = read_all(shard, &slots, max_bytes).await?;
        let mut total = 0usize;
        let mut any_error = false;
        for (slot, mut r) in slots.iter().zip(reads) {
            // Keep to max_bytes in request order; never split a batch.
            if !r.records.is_empty() {
                if total > 0 && total + r.records.len() > max_bytes {
                    r.records = Chunks::default();
                } else {
                    total += r.records.len();
                }
            }
            any_error |= r.error_code != 0;
            outcomes[slot.topic][slot.partition] = r;
        }
        // min_bytes 0 answers at once; otherwise wait for enough data.
        if total >= min_bytes || any_error || slots.is_empty() || Instant::now() >= deadline {
            break;
        }
        // After the wait, read again: the loop ends at the deadline. A
        // graceful stop of this shard answers with what is there instead.
        let stopping = futures_lite::future::or(
            async {
                wait_any(shard, &slots, &outcomes, deadline)
                    .await
                    .map(|()| false)
            },
            async {
                shard.until_stopping().await;
                Ok(true)
            },
        )
        .await?;
        if stopping {
            break;
        }
    }
    for r in outcomes.iter().flatten().filter(|r| r.error_code == 0) {
        crate::metrics::fetch_partition_bytes(r.records.len());
    }

    let responses = req
        .topics
        .iter()
        .zip(outcomes)
        .zip(names)
        .map(|((topic, row), name)| {
            FetchableTopicResponse::default()
                .with_topic(name)
                .with_topic_id(topic.topic_id)
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .zip(row)
                        .map(|(part, r)| {
                            let aborted = (req.isolation_level == 1).then(|| {
                                r.aborted
                                    .iter()
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect()
                            });
                            PartitionData::default()
                                .with_partition_index(part.partition)
                                .with_error_code(r.error_code)
                                .with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.last_stable_offset)
                                .with_log_start_offset(r.log_start_offset)
                                .with_aborted_transactions(aborted)
                                .with_records(Some(zero_copy::placeholder(r.records.into_parts())))
                        })
                        .collect(),
                )
        })
        .collect();
    Ok(FetchResponse::default().with_responses(responses))
}

/// Read every slot on its owner, in parallel across owners; results in slot
/// order.
async fn read_all(
    shard: &Rc<Shard>,
    slots: &[Slot],
    max_bytes: usize,
) -> Result<Vec<ReadOutcome>, HandlerError> {
    let mut per_owner = ByOwner::new(shard.count);
    for (i, s) in slots.iter().enumerate() {
        per_owner.push(s.owner, i, s.spec.clone());
    }
    let gathered = shard
        .scatter(per_owner, move |s, specs| {
            read_on_owner(s, specs, max_bytes)
        })
        .await?;
    let mut out = vec![ReadOutcome::default(); slots.len()];
    for (i, o) in gathered.all().await? {
        out[i] = o;
    }
    Ok(out)
}

/// Read partitions on the shard that owns them, stopping once `max_bytes`
/// have been gathered.
pub async fn read_on_owner(
    shard: Rc<Shard>,
    specs: Vec<ReadSpec>,
    max_bytes: usize,
) -> Vec<ReadOutcome> {
    let mut out = Vec::with_capacity(specs.len());
    let mut total = 0usize;
    for spec in specs {
        let Some(log) = shard.partition(&spec.tp) else {
            out.push(ReadOutcome {
                error_code: ResponseError::NotLeaderOrFollower.code(),
                high_watermark: -1,
                log_start_offset: -1,
                last_stable_offset: -1,
                aborted: Vec::new(),
                records: Chunks::default(),
            });
            continue;
        };
        let mut outcome = ReadOutcome {
            error_code: 0,
            high_watermark: log.high_watermark().get(),
            log_start_offset: log.log_start_offset().get(),
            last_stable_offset: log.last_stable_offset().get(),
            aborted: Vec::new(),
            records: Chunks::default(),
        };
        if total < max_bytes {
            let offset = Offset(spec.offset);
            let max = spec.max_bytes.min(max_bytes - total).max(1);
            let read = if spec.committed {
                log.read_chunks_committed(offset, max).await
            } else {
                log.read_chunks(offset, max).await
            };
            match read {
                Ok(data) => {
                    total += data.records.len();
                    outcome.high_watermark = data.high_watermark.get();
                    outcome.log_start_offset = data.log_start_offset.get();
                    outcome.last_stable_offset = data.last_stable_offset.get();
                    outcome.aborted = data.aborted;
                    outcome.records = data.records;
                }
                Err(e) => outcome.error_code = e.kafka_error_code(),
            }
        }
        out.push(outcome);
    }
    out
}

/// Wait until any slot's high watermark passes the one its last read saw
/// (`outcomes`; the fetch offset if that is higher), or the deadline.
async fn wait_any(
    shard: &Rc<Shard>,
    slots: &[Slot],
    outcomes: &[Vec<ReadOutcome>],
    deadline: Instant,
) -> Result<(), HandlerError> {
    let mut per_owner = ByOwner::new(shard.count);
    for s in slots {
        let o = &outcomes[s.topic][s.partition];
        // read_committed sees new data when the last stable offset moves.
        let seen = if s.spec.committed {
            o.last_stable_offset
        } else {
            o.high_watermark
        };
        per_owner.push(
            s.owner,
            (),
            (s.spec.tp.clone(), s.spec.offset.max(seen), s.spec.committed),
        );
    }
    let waits = shard
        .scatter(per_owner, move |s, w| async move {
            wait_on_owner(s, w, deadline).await;
            Vec::<()>::new()
        })
        .await?;
    Ok(waits.first().await?)
}

/// On the owner: return once a partition's high watermark is past the given
/// offset, or at the deadline (or at once when none of the partitions is
/// here any more: the caller's next read reports it). A caller that stops
/// waiting (another owner answered first, or its shard stops) drops the
/// reply; this wait still ends at its deadline at the latest.
pub async fn wait_on_owner(
    shard: Rc<Shard>,
    parts: Vec<(TopicPartition, i64, bool)>,
    deadline: Instant,
) {
    let logs: Vec<_> = parts
        .iter()
        .filter_map(|(tp, off, committed)| shard.partition(tp).map(|l| (l, *off, *committed)))
        .collect();
    // The last stable offset moves only with the high watermark (a marker or a batch
    // becoming durable), so its listener serves read_committed too.
    let visible_end = |l: &crate::storage::PartitionLog, committed: bool| {
        if committed {
            l.last_stable_offset().get()
        } else {
            l.high_watermark().get()
        }
    };
    loop {
        // Listen before checking so a move between the check and the wait
        // is not lost.
        let listeners: Vec<_> = logs.iter().map(|(l, _, _)| l.hw_changed()).collect();
        if logs.iter().any(|(l, off, c)| visible_end(l, *c) > *off) || logs.is_empty() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let any = futures::future::select_all(listeners.into_iter().map(Box::pin));
        if runtime::timeout(deadline - now, any).await.is_none() {
            return;
        }
    }
}
