//! One Kafka request from this broker to another broker's Kafka listener, as Kafka's own
//! brokers talk to each other for data: a transaction coordinator's WriteTxnMarkers
//! (`txn::remote`), a replica copying a compacted prefix from its leader (Fetch, see
//! `replication::prefix`). A connection per request (both are rare: once per transaction and
//! leader broker, once per snapshot chunk; no pool to keep bounded), the whole exchange under
//! a time limit and the response under a size limit.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::runtime::{self, TcpStream};

/// Why a request to another broker got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad response: {0}")]
    Protocol(String),
}

/// Send `request` at `version` to the broker at `addr` and decode its response: the whole
/// exchange (connect, write, the broker's work, read) within `timeout`, a response frame of
/// at most `response_max` bytes.
pub async fn call<R: Request>(
    addr: &str,
    request: &R,
    version: i16,
    client_id: &'static str,
    timeout: Duration,
    response_max: usize,
) -> Result<R::Response, RemoteError> {
    let frame = encode(request, version, client_id)?;
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
        if size < 4 || size as usize > response_max {
            return Err(RemoteError::Protocol(format!("frame size {size}")));
        }
        let mut payload = vec![0u8; size as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| RemoteError::Io(format!("read from {addr}"), e))?;
        Ok(Bytes::from(payload))
    };
    let mut payload = runtime::timeout(timeout, exchange)
        .await
        .ok_or(RemoteError::Timeout(timeout))??;
    let bad = |e: anyhow::Error| RemoteError::Protocol(e.to_string());
    ResponseHeader::decode(&mut payload, R::Response::header_version(version)).map_err(bad)?;
    R::Response::decode(&mut payload, version).map_err(bad)
}

fn encode<R: Request>(
    request: &R,
    version: i16,
    client_id: &'static str,
) -> Result<Vec<u8>, RemoteError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    let bad = |e: anyhow::Error| RemoteError::Protocol(e.to_string());
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(bad)?;
    request.encode(&mut buf, version).map_err(bad)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.to_vec())
}
