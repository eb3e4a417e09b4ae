//! A coordinator's markers for partitions another broker leads (a cluster): one
//! WriteTxnMarkers request (v1) to that broker's Kafka listener, as Kafka's coordinator sends
//! it to partition leaders. A connection per request (markers go out once per transaction and
//! leader broker; no pool to keep bounded), each step under a time limit.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ProducerId, RequestHeader, ResponseHeader, TopicName, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::runtime::{self, TcpStream};
use crate::storage::producer_state::Marker;
use crate::types::TopicPartition;

/// How long one WriteTxnMarkers exchange may take (connect, write, the leader's commit, read).
const MARKERS_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response accepted (one code per partition of a transaction).
const RESPONSE_BYTES_MAX: usize = 1 << 20;
const VERSION: i16 = 1;

/// Why a remote marker request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad response: {0}")]
    Protocol(String),
}

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
    let frame = encode(&request)?;
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| RemoteError::Io(format!("connect to {addr}"), e.into()))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&frame)
            .await
            .map_err(|e| RemoteError::Io(format!("write to {addr}"), e))?;
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .await
            .map_err(|e| RemoteError::Io(format!("read from {addr}"), e))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_BYTES_MAX {
            return Err(RemoteError::Protocol(format!("frame size {size}")));
        }
        let mut payload = vec![0u8; size as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| RemoteError::Io(format!("read from {addr}"), e))?;
        Ok(Bytes::from(payload))
    };
    let mut payload = runtime::timeout(MARKERS_TIMEOUT, exchange)
        .await
        .ok_or(RemoteError::Timeout(MARKERS_TIMEOUT))??;
    let bad = |e: anyhow::Error| RemoteError::Protocol(e.to_string());
    ResponseHeader::decode(
        &mut payload,
        WriteTxnMarkersResponse::header_version(VERSION),
    )
    .map_err(bad)?;
    let response = WriteTxnMarkersResponse::decode(&mut payload, VERSION).map_err(bad)?;
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

fn encode(request: &WriteTxnMarkersRequest) -> Result<Vec<u8>, RemoteError> {
    let header = RequestHeader::default()
        .with_request_api_key(27)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-txn-coordinator")));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    let bad = |e: anyhow::Error| RemoteError::Protocol(e.to_string());
    header
        .encode(&mut buf, WriteTxnMarkersRequest::header_version(VERSION))
        .map_err(bad)?;
    request.encode(&mut buf, VERSION).map_err(bad)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.to_vec())
}
