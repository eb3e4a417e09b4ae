//! A coordinator's markers for partitions another broker leads (a cluster): one
//! WriteTxnMarkers request (v1) to that broker's Kafka listener, as Kafka's coordinator sends
//! it to partition leaders ([`crate::cluster::remote::call`]).

use std::time::Duration;

use kafka_protocol::messages::WriteTxnMarkersRequest;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;

pub use crate::cluster::remote::RemoteError;
use crate::storage::producer_state::Marker;
use crate::types::TopicPartition;

/// How long one WriteTxnMarkers exchange may take (connect, write, the leader's commit, read).
const MARKERS_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response accepted (one code per partition of a transaction).
const RESPONSE_BYTES_MAX: usize = 1 << 20;
const VERSION: i16 = 1;

/// Ask the broker at `addr` to write `marker` of `producer_id`/`epoch` into `tps` (it leads
/// them): each partition's error code as it answered.
pub async fn write_markers(
    addr: &str,
    tps: &[TopicPartition],
    producer_id: i64,
    epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
) -> Result<Vec<(TopicPartition, i16)>, RemoteError> {
    let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
    for tp in tps {
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partition_indexes.push(tp.partition),
            None => topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partition_indexes(vec![tp.partition]),
            ),
        }
    }
    let request = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_transaction_result(marker == Marker::Commit)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(topics),
    ]);
    let response = crate::cluster::remote::call(
        addr,
        &request,
        VERSION,
        "sluice-txn-coordinator",
        MARKERS_TIMEOUT,
        RESPONSE_BYTES_MAX,
    )
    .await?;
    let mut out = Vec::with_capacity(tps.len());
    for m in response.markers {
        for t in m.topics {
            for p in t.partitions {
                out.push((
                    TopicPartition::new(t.name.0.to_string(), p.partition_index),
                    p.error_code,
                ));
            }
        }
    }
    Ok(out)
}
