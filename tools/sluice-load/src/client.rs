//! A minimal Kafka protocol client over tokio TCP, built on the
//! `kafka-protocol` crate's message types.
//!
//! Only standard APIs are used (ApiVersions, Metadata, CreateTopics,
//! Produce, Fetch, ListOffsets, OffsetCommit, OffsetFetch), so the same code drives Sluice, Apache Kafka
//! and Redpanda. Versions are negotiated per connection: the highest version
//! both the broker (ApiVersions) and this tool ([`VERSION_CAPS`]) support.
//!
//! Framing: every request and response is a big-endian i32 size followed by
//! that many bytes. Kafka answers requests on one connection in order, so a
//! pipelined sender matches responses to requests by FIFO order and checks
//! the correlation id.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, RequestHeader, ResponseHeader, TopicName,
    create_topics_request::CreatableTopic,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest response frame accepted (a Fetch is bounded by its max_bytes,
/// 50 MiB by default, plus overhead).
pub const FRAME_BYTES_MAX: usize = 128 << 20;
/// Connect and single-request timeout for control requests.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);
/// Client id sent in every request header.
pub const CLIENT_ID: &str = "sluice-load";

/// The highest version of each API this tool speaks. Capped below the
/// crate's maximum where newer versions replace topic names with topic ids
/// (Produce v13, Fetch v13+), which would need a name-to-id map.
pub const VERSION_CAPS: &[(ApiKey, i16)] = &[
    (ApiKey::ApiVersions, 3),
    (ApiKey::Metadata, 12),
    (ApiKey::CreateTopics, 7),
    (ApiKey::Produce, 11),
    (ApiKey::Fetch, 12),
    (ApiKey::ListOffsets, 7),
    (ApiKey::OffsetCommit, 8),
    (ApiKey::OffsetFetch, 7),
];

/// Kafka error code: topic already exists (CreateTopics).
pub const ERROR_TOPIC_ALREADY_EXISTS: i16 = 36;

/// Negotiated versions for one broker.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    map: HashMap<i16, i16>,
}

impl Versions {
    /// Pick, for each API in [`VERSION_CAPS`], min(our cap, broker max),
    /// provided it is at least the broker's and the crate's minimum.
    pub fn negotiate(resp: &ApiVersionsResponse) -> Result<Versions> {
        let mut map = HashMap::new();
        for &(key, cap) in VERSION_CAPS {
            let ours = key.valid_versions();
            let Some(theirs) = resp.api_keys.iter().find(|k| k.api_key == key as i16) else {
                continue;
            };
            let v = cap.min(theirs.max_version).min(ours.max);
            if v >= theirs.min_version && v >= ours.min {
                map.insert(key as i16, v);
            }
        }
        Ok(Versions { map })
    }

    pub fn get(&self, key: ApiKey) -> Result<i16> {
        self.map
            .get(&(key as i16))
            .copied()
            .ok_or_else(|| anyhow!("broker supports no usable version of {key:?}"))
    }

    /// For the report: api name -> version.
    pub fn describe(&self) -> Vec<(String, i16)> {
        let mut v: Vec<(String, i16)> = VERSION_CAPS
            .iter()
            .filter_map(|(k, _)| self.map.get(&(*k as i16)).map(|v| (format!("{k:?}"), *v)))
            .collect();
        v.sort();
        v
    }
}

/// Encode one request frame (size prefix, header, body).
pub fn encode_request<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, patched below
    header
        .encode(&mut buf, key.request_header_version(version))
        .context("encode request header")?;
    body.encode(&mut buf, version)
        .with_context(|| format!("encode {key:?} v{version}"))?;
    let size = i32::try_from(buf.len() - 4).context("request too large")?;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Split a response frame (without its size prefix) into correlation id and
/// body, given the API and version it answers.
pub fn decode_response_header(key: ApiKey, version: i16, frame: &mut Bytes) -> Result<i32> {
    let header = ResponseHeader::decode(frame, key.response_header_version(version))
        .with_context(|| format!("decode {key:?} response header"))?;
    Ok(header.correlation_id)
}

/// Decode a whole response frame: header then body.
pub fn decode_response<T: Decodable>(
    key: ApiKey,
    version: i16,
    expected_correlation_id: i32,
    mut frame: Bytes,
) -> Result<T> {
    let cid = decode_response_header(key, version, &mut frame)?;
    if cid != expected_correlation_id {
        bail!("{key:?} response has correlation id {cid}, expected {expected_correlation_id}");
    }
    T::decode(&mut frame, version).with_context(|| format!("decode {key:?} v{version} response"))
}

/// Read one frame (without size prefix) from a socket.
pub async fn read_frame(r: &mut OwnedReadHalf) -> Result<Bytes> {
    let size = r.read_i32().await.context("read frame size")?;
    if size < 0 || size as usize > FRAME_BYTES_MAX {
        bail!("bad frame size {size}");
    }
    let mut buf = BytesMut::zeroed(size as usize);
    r.read_exact(&mut buf).await.context("read frame body")?;
    Ok(buf.freeze())
}

/// A connection to one broker with negotiated versions. Used both for
/// simple request/response (control path) and split into halves for
/// pipelining (producers, consumers).
pub struct Connection {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    pub versions: Versions,
    next_correlation_id: i32,
    pub address: String,
}

impl Connection {
    /// Connect and negotiate versions with ApiVersions.
    pub async fn connect(address: &str) -> Result<Connection> {
        let stream = tokio::time::timeout(CONTROL_TIMEOUT, TcpStream::connect(address))
            .await
            .with_context(|| format!("connect to {address}: timed out"))?
            .with_context(|| format!("connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut conn = Connection {
            reader,
            writer,
            versions: Versions::default(),
            next_correlation_id: 1,
            address: address.to_string(),
        };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp: ApiVersionsResponse = match conn
            .call(ApiKey::ApiVersions, 3, &req)
            .await
            .and_then(|r: ApiVersionsResponse| {
                if r.error_code == 0 {
                    Ok(r)
                } else {
                    Err(anyhow!("ApiVersions v3 error {}", r.error_code))
                }
            }) {
            Ok(r) => r,
            // A broker that does not know v3 answers with error 35 in a v0
            // body and may close; retry on a fresh connection with v0.
            Err(_) => {
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (reader, writer) = stream.into_split();
                conn.reader = reader;
                conn.writer = writer;
                conn.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
                    .await?
            }
        };
        if resp.error_code != 0 {
            bail!("ApiVersions error {}", resp.error_code);
        }
        conn.versions = Versions::negotiate(&resp)?;
        Ok(conn)
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        let c = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1).max(1);
        c
    }

    /// Send one request and wait for its response (no pipelining).
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        let cid = self.next_correlation_id();
        let frame = encode_request(key, version, cid, req)?;
        let fut = async {
            self.writer.write_all(&frame).await?;
            read_frame(&mut self.reader).await
        };
        let resp = tokio::time::timeout(CONTROL_TIMEOUT, fut)
            .await
            .with_context(|| format!("{key:?} to {}: timed out", self.address))??;
        decode_response(key, version, cid, resp)
    }

    /// Metadata for `topics` (all topics if None).
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let v = self.versions.get(ApiKey::Metadata)?;
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        self.call(ApiKey::Metadata, v, &req).await
    }

    /// Create topics; "already exists" is not an error.
    pub async fn create_topics(
        &mut self,
        topics: &[String],
        partitions: i32,
        replication_factor: i16,
    ) -> Result<()> {
        let v = self.versions.get(ApiKey::CreateTopics)?;
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.clone())))
                            .with_num_partitions(partitions)
                            .with_replication_factor(replication_factor)
                    })
                    .collect(),
            );
        let resp: CreateTopicsResponse = self.call(ApiKey::CreateTopics, v, &req).await?;
        for t in resp.topics {
            if t.error_code != 0 && t.error_code != ERROR_TOPIC_ALREADY_EXISTS {
                bail!(
                    "CreateTopics {}: error {} {}",
                    t.name.0.as_str(),
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// Latest offsets (ListOffsets timestamp -1) of the given partitions.
    /// Offsets at ListOffsets `timestamp` (-1 the log end, -2 the log start).
    pub async fn list_offsets(
        &mut self,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> Result<HashMap<(String, i32), i64>> {
        let v = self.versions.get(ApiKey::ListOffsets)?;
        let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
        for (t, p) in partitions {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(*p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, v, &req).await?;
        let mut out = HashMap::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "ListOffsets {}-{}: error {}",
                        t.name.0.as_str(),
                        p.partition_index,
                        p.error_code
                    );
                }
                out.insert((t.name.0.to_string(), p.partition_index), p.offset);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn frame_size(mut b: &[u8]) -> Option<i32> {
        (b.len() >= 4).then(|| b.get_i32())
    }

    #[test]
    fn request_frame_has_size_prefix_and_header() {
        let f = encode_request(ApiKey::ApiVersions, 3, 7, &ApiVersionsRequest::default()).unwrap();
        assert_eq!(frame_size(&f).unwrap() as usize, f.len() - 4);
        // api key 18, version 3, correlation id 7
        assert_eq!(&f[4..12], &[0, 18, 0, 3, 0, 0, 0, 7]);
    }
}
