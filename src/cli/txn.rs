//! `sluice txn list|describe|abort`: the transactions brokers coordinate.
//!
//! APIs used: Metadata (to find every broker and the partitions' leaders), ListTransactions
//! (on every broker: a broker lists the transactional ids it coordinates), FindCoordinator
//! (key type 1) and DescribeTransactions on the coordinator, DescribeProducers on the leaders
//! of a transaction's partitions (where the producer's open transaction starts in each), and
//! WriteTxnMarkers on a partition's leader to abort a hanging transaction there (Kafka's
//! `kafka-transactions.sh abort`).

use std::collections::BTreeMap;
use std::io::Write;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, ListTransactionsRequest, TopicName,
    TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::client::Cluster;
use super::table::Table;
use super::{CliError, ConnectArgs};

#[derive(clap::Args, Debug)]
pub struct TxnCommand {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub action: TxnAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum TxnAction {
    /// List transactional ids: producer id, state (Empty, Ongoing, PrepareCommit, ...).
    List {
        /// Only these states (repeatable).
        #[arg(long)]
        state: Vec<String>,
        /// Only transactions open longer than this many ms.
        #[arg(long, value_name = "MS")]
        older_than_ms: Option<i64>,
    },
    /// A transactional id's state, producer, timeout, start time and partitions, with where
    /// its open transaction starts in each partition.
    Describe { transactional_id: String },
    /// Abort a hanging transaction in one partition: the open transaction that starts at
    /// `--start-offset` (see `describe`, or DescribeProducers) gets an ABORT marker from the
    /// partition's leader. For a transaction no coordinator will finish (its producer wrote
    /// without AddPartitionsToTxn); a transaction its coordinator still holds is the
    /// coordinator's to end.
    Abort {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// First offset of the open transaction to abort.
        #[arg(long, value_name = "OFFSET")]
        start_offset: i64,
    },
}

/// Runs a txn command, writing its report to `out`.
pub fn run(command: &TxnCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cluster = Cluster::connect(&command.connect.bootstrap_server)?;
    let text = match &command.action {
        TxnAction::List {
            state,
            older_than_ms,
        } => list(&mut cluster, state, *older_than_ms)?,
        TxnAction::Describe { transactional_id } => describe(&mut cluster, transactional_id)?,
        TxnAction::Abort {
            topic,
            partition,
            start_offset,
        } => abort(&mut cluster, topic, *partition, *start_offset)?,
    };
    out.write_all(text.as_bytes())
        .map_err(|source| CliError::Io {
            context: "writing to stdout".into(),
            source,
        })
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn list(
    cluster: &mut Cluster,
    states: &[String],
    older_than_ms: Option<i64>,
) -> Result<String, CliError> {
    cluster.metadata(Some(&[]))?;
    let mut found: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for node in cluster.nodes() {
        let connection = cluster.node(node.id)?;
        let (response, _) = connection.call(|version| {
            let request = ListTransactionsRequest::default()
                .with_state_filters(states.iter().map(|s| str_bytes(s)).collect());
            match older_than_ms {
                Some(ms) if version >= 1 => request.with_duration_filter(ms),
                _ => request,
            }
        })?;
        CliError::check(response.error_code, None, || {
            format!("listing transactions on broker {}", node.id)
        })?;
        if let Some(unknown) = response.unknown_state_filters.first() {
            return Err(CliError::NotFound(format!(
                "no transaction state is called {unknown}"
            )));
        }
        for t in response.transaction_states {
            found.insert(
                t.transactional_id.0.to_string(),
                (t.producer_id.0, t.transaction_state.to_string()),
            );
        }
    }
    let mut table = Table::new(&["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"]);
    for (id, (pid, state)) in found {
        table.row(vec![id, pid.to_string(), state]);
    }
    Ok(table.render())
}

fn describe(cluster: &mut Cluster, id: &str) -> Result<String, CliError> {
    let coordinator = cluster.txn_coordinator(id)?;
    let (response, _) = coordinator.call(|_| {
        DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(str_bytes(id))])
    })?;
    let state = super::first(
        response.transaction_states,
        || format!("describing transactional id {id}"),
        "DescribeTransactions response",
    )?;
    if state.error_code == kafka_protocol::ResponseError::TransactionalIdNotFound.code() {
        return Err(CliError::NotFound(format!(
            "transactional id {id} does not exist"
        )));
    }
    CliError::check(state.error_code, None, || {
        format!("describing transactional id {id}")
    })?;
    let mut text = String::new();
    let start = if state.transaction_start_time_ms >= 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        format!(
            "{} ms ago",
            now.saturating_sub(state.transaction_start_time_ms).max(0)
        )
    } else {
        "-".to_owned()
    };
    text.push_str(&format!(
        "transactional id {id}: {}, producer {} epoch {}, timeout {} ms, started {start}\n",
        state.transaction_state,
        state.producer_id.0,
        state.producer_epoch,
        state.transaction_timeout_ms
    ));
    let partitions: Vec<(String, i32)> = state
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.to_string(), *p))
        })
        .collect();
    if partitions.is_empty() {
        return Ok(text);
    }
    let starts = txn_starts(cluster, &partitions, state.producer_id.0)?;
    let mut table = Table::new(&["TOPIC", "PARTITION", "OPEN-TXN-START-OFFSET"]);
    for (t, p) in partitions {
        let start = match starts.get(&(t.clone(), p)) {
            Some(o) if *o >= 0 => o.to_string(),
            _ => "-".to_owned(),
        };
        table.row(vec![t, p.to_string(), start]);
    }
    text.push_str(&table.render());
    Ok(text)
}

/// Where `producer_id`'s open transaction starts in each partition (DescribeProducers on the
/// partitions' leaders); absent where it has none.
fn txn_starts(
    cluster: &mut Cluster,
    partitions: &[(String, i32)],
    producer_id: i64,
) -> Result<BTreeMap<(String, i32), i64>, CliError> {
    let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
    topics.dedup();
    let metadata = cluster.metadata(Some(&topics))?;
    let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for topic in &metadata.topics {
        let Some(name) = &topic.name else { continue };
        for p in &topic.partitions {
            let key = (name.0.to_string(), p.partition_index);
            if partitions.contains(&key) && p.leader_id.0 >= 0 {
                by_leader
                    .entry(p.leader_id.0)
                    .or_default()
                    .entry(key.0)
                    .or_default()
                    .push(key.1);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (leader, topics) in by_leader {
        let connection = cluster.node(leader)?;
        let (response, _) = connection.call(|_| {
            DescribeProducersRequest::default().with_topics(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        TopicRequest::default()
                            .with_name(TopicName(str_bytes(t)))
                            .with_partition_indexes(ps.clone())
                    })
                    .collect(),
            )
        })?;
        for t in response.topics {
            for p in t.partitions {
                if let Some(s) = p
                    .active_producers
                    .iter()
                    .find(|s| s.producer_id.0 == producer_id)
                {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        s.current_txn_start_offset,
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Abort the open transaction starting at `start_offset` in `topic`-`partition`: its
/// producer and epoch from DescribeProducers on the leader, then WriteTxnMarkers there.
fn abort(
    cluster: &mut Cluster,
    topic: &str,
    partition: i32,
    start_offset: i64,
) -> Result<String, CliError> {
    let metadata = cluster.metadata(Some(&[topic.to_owned()]))?;
    let leader = metadata
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .map(|p| p.leader_id.0)
        .ok_or_else(|| CliError::NotFound(format!("no partition {topic}-{partition}")))?;
    if leader < 0 {
        return Err(CliError::NotFound(format!(
            "{topic}-{partition} has no leader now: retry"
        )));
    }
    let connection = cluster.node(leader)?;
    let (response, _) = connection.call(|_| {
        DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partition_indexes(vec![partition]),
        ])
    })?;
    let described = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| CliError::NotFound(format!("no partition {topic}-{partition}")))?;
    CliError::check(described.error_code, None, || {
        format!("describing the producers of {topic}-{partition}")
    })?;
    let producer = described
        .active_producers
        .iter()
        .find(|s| s.current_txn_start_offset == start_offset)
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no open transaction starts at offset {start_offset} in {topic}-{partition}"
            ))
        })?;
    let (producer_id, epoch) = (producer.producer_id.0, producer.producer_epoch as i16);
    let coordinator_epoch = producer.coordinator_epoch.max(0);
    let (response, _) = connection.call(|_| {
        WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(producer.producer_id)
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(vec![
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partition_indexes(vec![partition]),
                ]),
        ])
    })?;
    let code = response
        .markers
        .iter()
        .flat_map(|m| m.topics.iter())
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .map_or(
            kafka_protocol::ResponseError::UnknownServerError.code(),
            |p| p.error_code,
        );
    CliError::check(code, None, || {
        format!("writing the ABORT marker into {topic}-{partition}")
    })?;
    Ok(format!(
        "aborted the transaction of producer {producer_id} (epoch {epoch}) starting at offset {start_offset} in {topic}-{partition}\n"
    ))
}
