//! One file per Kafka API. [`APIS`] is the single list that drives both
//! dispatch and the ApiVersions answer; each API is served in every version
//! the kafka-protocol crate can decode (`ApiKey::valid_versions`).

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::VersionRange;

use crate::shard::{Shard, ShardError};

/// The APIs Sluice serves.
pub const APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::InitProducerId,
    ApiKey::DescribeProducers,
    ApiKey::CreatePartitions,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DescribeCluster,
    ApiKey::DeleteRecords,
    ApiKey::DescribeLogDirs,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeTransactions,
    ApiKey::ListTransactions,
    ApiKey::WriteTxnMarkers,
];

/// The versions of `key` we serve, or None if we do not serve it.
pub fn supported_versions(key: ApiKey) -> Option<VersionRange> {
    APIS.contains(&key).then(|| served_versions(key))
}

/// `ApiKey::valid_versions`, capped where kafka-protocol 0.18 lists a
/// version its request decoder refuses (OffsetCommit and OffsetFetch v10:
/// only the response types know v10).
pub fn served_versions(key: ApiKey) -> VersionRange {
    use kafka_protocol::protocol::Message;
    let r = key.valid_versions();
    let decodable = match key {
        ApiKey::OffsetCommit => kafka_protocol::messages::OffsetCommitRequest::VERSIONS.max,
        ApiKey::OffsetFetch => kafka_protocol::messages::OffsetFetchRequest::VERSIONS.max,
        // InitProducerId v6 (KIP-939) is listed but its request does not decode.
        ApiKey::InitProducerId => kafka_protocol::messages::InitProducerIdRequest::VERSIONS.max,
        // Transaction protocol version 1 (KIP-98, KIP-447): the versions clients send to a
        // broker that does not advertise `transaction.version` 2 (KIP-890 part 2). The
        // batched AddPartitionsToTxn v4+ is broker-to-broker.
        ApiKey::AddPartitionsToTxn => 3,
        ApiKey::AddOffsetsToTxn => 3,
        ApiKey::EndTxn => 4,
        ApiKey::TxnOffsetCommit => 4,
        _ => r.max,
    };
    VersionRange {
        min: r.min,
        max: r.max.min(decodable),
    }
}

/// What a handler needs to know about the request it serves.
pub struct RequestContext {
    pub shard: Rc<Shard>,
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    /// This request's place in its connection's order
    /// (`server::ordering`); pipelined writes call
    /// [`RequestContext::placed`].
    pub completion: crate::server::ordering::Completion,
}

impl RequestContext {
    /// A pipelined write (Produce, OffsetCommit) has handed its work to
    /// every owner (`Shard::send_on`): the connection's next write may go.
    pub fn placed(&self) {
        self.completion.placed();
    }
}

/// A failure that closes the connection (a Kafka error code is preferred
/// wherever the protocol has one).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("request kind does not match its API key")]
    Mismatch,
    /// The broker cannot answer yet (a cluster member still replaying the metadata log):
    /// the connection closes and the client asks another broker.
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

/// Run the handler for `request`. `None` means no response is sent
/// (Produce with acks=0).
pub async fn dispatch(
    ctx: &RequestContext,
    request: RequestKind,
) -> Result<Option<ResponseKind>, HandlerError> {
    Ok(Some(match request {
        RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(ctx, r)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(ctx, r).await?),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(create_topics::handle(ctx, r).await?)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(delete_topics::handle(ctx, r).await?)
        }
        RequestKind::Produce(r) => match produce::handle(ctx, r).await? {
            Some(resp) => ResponseKind::Produce(resp),
            None => return Ok(None),
        },
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::handle(ctx, r).await?),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(ctx, r).await?)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(ctx, r).await?)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(find_coordinator::handle(ctx, r).await?)
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(join_group::handle(ctx, r).await?),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(sync_group::handle(ctx, r).await?),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(heartbeat::handle(ctx, r).await?),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(leave_group::handle(ctx, r).await?),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(offset_commit::handle(ctx, r).await?)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(offset_fetch::handle(ctx, r).await?)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(list_groups::handle(ctx, r).await?),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(describe_groups::handle(ctx, r).await?)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(delete_groups::handle(ctx, r).await?)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(offset_delete::handle(ctx, r).await?)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(init_producer_id::handle(ctx, r).await?)
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(describe_producers::handle(ctx, r).await?)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions::handle(ctx, r).await?)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(describe_configs::handle(ctx, r).await?)
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(alter_configs::handle(ctx, r).await?)
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(incremental_alter_configs::handle(ctx, r).await?)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(describe_cluster::handle(ctx, r).await?)
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(delete_records::handle(ctx, r).await?)
        }
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(describe_log_dirs::handle(ctx, r).await?)
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(add_partitions_to_txn::handle(ctx, r).await?)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(add_offsets_to_txn::handle(ctx, r).await?)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(end_txn::handle(ctx, r).await?),
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn_offset_commit::handle(ctx, r).await?)
        }
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(describe_transactions::handle(ctx, r).await?)
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(list_transactions::handle(ctx, r).await?)
        }
        RequestKind::WriteTxnMarkers(r) => {
            ResponseKind::WriteTxnMarkers(write_txn_markers::handle(ctx, r).await?)
        }
        _ => return Err(HandlerError::Mismatch),
    }))
}

/// The code a transaction API answers for `e`: PRODUCER_FENCED (Kafka 2.7+) is
/// INVALID_PRODUCER_EPOCH for request versions below `fenced_since`, as Kafka answers
/// clients that predate it.
pub fn txn_error(e: kafka_protocol::ResponseError, version: i16, fenced_since: i16) -> i16 {
    fenced_code(e.code(), version, fenced_since)
}

/// [`txn_error`] on a code.
pub fn fenced_code(code: i16, version: i16, fenced_since: i16) -> i16 {
    use kafka_protocol::ResponseError;
    if code == ResponseError::ProducerFenced.code() && version < fenced_since {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// A protocol string from an owned string.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The topic a Produce/Fetch entry names: by id when the request version
/// uses topic ids (KIP-516), else by name. `None`: an unknown id.
pub fn resolve_topic(
    catalog: &crate::cluster::catalog::Catalog,
    by_id: bool,
    name: &kafka_protocol::messages::TopicName,
    id: &uuid::Uuid,
) -> Option<String> {
    if by_id {
        catalog.name_of(id).map(str::to_string)
    } else {
        Some(name.0.to_string())
    }
}
