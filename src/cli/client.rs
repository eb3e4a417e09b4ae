//! A small blocking Kafka client for the admin commands.
//!
//! - [`Connection`]: one TCP connection to one broker. On connect it sends ApiVersions and keeps
//!   the broker's version ranges; [`Connection::version`] picks, per API, the highest version
//!   both the broker and the `kafka-protocol` crate know (min of the two maxima), or reports the
//!   API as unsupported. Requests are sent one at a time: write a frame, read the frame with the
//!   same correlation id. Every socket operation is bounded by [`IO_TIMEOUT`].
//! - [`Cluster`]: a bootstrap connection plus lazily opened connections to the brokers that
//!   Metadata and FindCoordinator name (partition leaders, group coordinators).
//!
//! Wire layout of a request frame: `i32 size | request header (v1 or v2) | body`; of a response
//! frame: `i32 size | response header (v0 or v1) | body`. The header versions follow from the API
//! and version (`HeaderVersion`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FindCoordinatorRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::{
    CONNECT_TIMEOUT, COORDINATOR_RETRIES_MAX, COORDINATOR_RETRY_BACKOFF, CliError, IO_TIMEOUT,
    RESPONSE_BYTES_MAX,
};

/// `client_id` in every request header.
const CLIENT_ID: &str = "sluice-cli";
/// ApiVersions version tried first; a broker that does not know it answers v0 with
/// UNSUPPORTED_VERSION, and the request is repeated at v0.
const API_VERSIONS_PREFERRED: i16 = 3;
/// Kafka error code UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;
/// ListOffsets timestamps with special meaning.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;

/// Offsets by (topic, partition), or the partition's Kafka error code.
pub type PartitionOffsets = BTreeMap<(String, i32), Result<i64, i16>>;

/// One connection to one broker.
pub struct Connection {
    /// The socket, with read and write timeouts set.
    stream: TcpStream,
    /// HOST:PORT as given, for messages.
    address: String,
    /// Broker's (min, max) version per API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
    /// Correlation id of the next request; responses must echo it.
    correlation_id_next: i32,
}

impl Connection {
    /// Connects to `address` (HOST:PORT, every resolved address tried in turn) and negotiates
    /// API versions.
    pub fn connect(address: &str) -> Result<Connection, CliError> {
        let io = |source| CliError::Io {
            context: format!("connecting to {address}"),
            source,
        };
        let targets: Vec<_> = address.to_socket_addrs().map_err(io)?.collect();
        let mut last_error = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        );
        let mut stream = None;
        for target in targets {
            match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        let stream = stream.ok_or_else(|| io(last_error))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut connection = Connection {
            stream,
            address: address.to_owned(),
            versions: HashMap::new(),
            correlation_id_next: 1,
        };
        connection.negotiate()?;
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn negotiate(&mut self) -> Result<(), CliError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-cli"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let payload = self.round_trip(&request, API_VERSIONS_PREFERRED)?;
        // The error code leads the body in every version; on UNSUPPORTED_VERSION the body is v0.
        let error_code = payload.clone().try_get_i16().unwrap_or(0);
        let response: ApiVersionsResponse = if error_code == UNSUPPORTED_VERSION {
            let payload = self.round_trip(&ApiVersionsRequest::default(), 0)?;
            self.decode_body::<ApiVersionsRequest>(payload, 0)?
        } else {
            self.decode_body::<ApiVersionsRequest>(payload, API_VERSIONS_PREFERRED)?
        };
        CliError::check(response.error_code, None, || {
            format!("ApiVersions from {}", self.address)
        })?;
        self.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// Whether the broker offers a version of `R` that we can encode.
    pub fn supports<R: Request>(&self) -> bool {
        self.version::<R>().is_ok()
    }

    /// The version to send `R` at: min(our max, broker's max), if that is within both ranges.
    pub fn version<R: Request>(&self) -> Result<i16, CliError> {
        let name = api_name(R::KEY);
        let Some(&(broker_min, broker_max)) = self.versions.get(&R::KEY) else {
            return Err(CliError::Unsupported(format!(
                "the broker at {} does not support {name}",
                self.address
            )));
        };
        let ours = R::VERSIONS;
        let version = ours.max.min(broker_max);
        if version < ours.min.max(broker_min) {
            return Err(CliError::Unsupported(format!(
                "no common {name} version: the broker at {} serves {broker_min}..={broker_max}, \
                 this client {}..={}",
                self.address, ours.min, ours.max
            )));
        }
        Ok(version)
    }

    /// Sends `request` at `version` (from [`Connection::version`]) and decodes the response.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, CliError> {
        let payload = self.round_trip(request, version)?;
        self.decode_body::<R>(payload, version)
    }

    /// Picks the version with [`Connection::version`], builds the request for it and sends it.
    pub fn call<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(R::Response, i16), CliError> {
        let version = self.version::<R>()?;
        let request = build(version);
        Ok((self.send(&request, version)?, version))
    }

    /// Writes one request frame and reads the response frame; returns the payload after the
    /// response header, whose correlation id is checked.
    fn round_trip<R: Request>(&mut self, request: &R, version: i16) -> Result<Bytes, CliError> {
        let name = api_name(R::KEY);
        let correlation_id = self.correlation_id_next;
        self.correlation_id_next = self.correlation_id_next.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        let encode_error = |e: anyhow::Error| CliError::Protocol {
            context: format!("encoding {name} v{version}"),
            message: e.to_string(),
        };
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(encode_error)?;
        request.encode(&mut frame, version).map_err(encode_error)?;
        let size = i32::try_from(frame.len() - 4).map_err(|_| CliError::Protocol {
            context: format!("encoding {name} v{version}"),
            message: "request too large".into(),
        })?;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let io_context = format!("{name} to {}", self.address);
        let io = |source| CliError::Io {
            context: io_context.clone(),
            source,
        };
        self.stream.write_all(&frame).map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_BYTES_MAX {
            return Err(CliError::Protocol {
                context: io_context,
                message: format!("response frame size {size} out of range"),
            });
        }
        let mut payload = vec![0u8; size as usize];
        self.stream.read_exact(&mut payload).map_err(io)?;
        let mut payload = Bytes::from(payload);
        let header_version = R::Response::header_version(version);
        let header = ResponseHeader::decode(&mut payload, header_version).map_err(|e| {
            CliError::Protocol {
                context: format!("decoding the {name} response header"),
                message: e.to_string(),
            }
        })?;
        if header.correlation_id != correlation_id {
            return Err(CliError::Protocol {
                context: io_context,
                message: format!(
                    "response correlation id {} for request {correlation_id}",
                    header.correlation_id
                ),
            });
        }
        Ok(payload)
    }

    fn decode_body<R: Request>(
        &self,
        mut payload: Bytes,
        version: i16,
    ) -> Result<R::Response, CliError> {
        R::Response::decode(&mut payload, version).map_err(|e| CliError::Protocol {
            context: format!(
                "decoding {} v{version} response from {}",
                api_name(R::KEY),
                self.address
            ),
            message: e.to_string(),
        })
    }
}

/// Name of an API key for messages, e.g. `DescribeConfigs`.
pub fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(api) => format!("{api:?}"),
        Err(_) => format!("API {key}"),
    }
}

/// A broker as Metadata names it.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

impl Node {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The bootstrap connection plus connections to the brokers it names.
pub struct Cluster {
    bootstrap: Connection,
    /// Brokers from the last Metadata response, by node id.
    nodes: BTreeMap<i32, Node>,
    /// Open connections to brokers, by HOST:PORT (which may be the bootstrap's address too).
    connections: HashMap<String, Connection>,
}

impl Cluster {
    /// `bootstrap`: one HOST:PORT or a comma-separated list, tried in order (as Kafka's
    /// tools take `--bootstrap-server`); the first that answers is used.
    pub fn connect(bootstrap: &str) -> Result<Cluster, CliError> {
        let mut last = None;
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::connect(address) {
                Ok(connection) => {
                    return Ok(Cluster {
                        bootstrap: connection,
                        nodes: BTreeMap::new(),
                        connections: HashMap::new(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| CliError::NotFound(format!("no bootstrap server in {bootstrap:?}"))))
    }

    /// The bootstrap connection, for cluster-wide requests (Metadata, CreateTopics, configs).
    pub fn bootstrap(&mut self) -> &mut Connection {
        &mut self.bootstrap
    }

    /// Metadata for `topics` (None: all topics), never auto-creating one. Remembers the brokers.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse, CliError> {
        let (response, _) = self.bootstrap.call(|version| {
            let mut request = MetadataRequest::default().with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect()
            }));
            // The field exists from v4 on; before that every request may auto-create.
            if version >= 4 {
                request.allow_auto_topic_creation = false;
            }
            request
        })?;
        self.nodes = response
            .brokers
            .iter()
            .map(|b| {
                let node = Node {
                    id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                };
                (node.id, node)
            })
            .collect();
        Ok(response)
    }

    /// Brokers from the last [`Cluster::metadata`] call.
    pub fn nodes(&self) -> Vec<Node> {
        self.nodes.values().cloned().collect()
    }

    /// Connection to a broker named by Metadata.
    pub fn node(&mut self, id: i32) -> Result<&mut Connection, CliError> {
        let node = self.nodes.get(&id).cloned().ok_or_else(|| {
            CliError::NotFound(format!("broker {id} is not in the cluster metadata"))
        })?;
        self.connection(&node.address())
    }

    /// Connection to HOST:PORT, opened on first use.
    pub fn connection(&mut self, address: &str) -> Result<&mut Connection, CliError> {
        if !self.connections.contains_key(address) {
            let connection = Connection::connect(address)?;
            self.connections.insert(address.to_owned(), connection);
        }
        Ok(self
            .connections
            .get_mut(address)
            .expect("connection inserted above"))
    }

    /// Connection to the coordinator of consumer group `group`, found with FindCoordinator.
    /// Retries while the coordinator is loading or not yet available (a broker may create its
    /// offsets topic on the first request).
    pub fn coordinator(&mut self, group: &str) -> Result<&mut Connection, CliError> {
        self.find_coordinator(group, 0, "group")
    }

    /// Connection to the transaction coordinator of `transactional_id`.
    pub fn txn_coordinator(&mut self, transactional_id: &str) -> Result<&mut Connection, CliError> {
        self.find_coordinator(transactional_id, 1, "transactional id")
    }

    /// FindCoordinator for `key` of `key_type` (0 group, 1 transaction), with retries.
    fn find_coordinator(
        &mut self,
        key_text: &str,
        key_type: i8,
        what: &str,
    ) -> Result<&mut Connection, CliError> {
        let group = key_text;
        let mut attempt = 0;
        let node = loop {
            attempt += 1;
            let (response, version) = self.bootstrap.call(|version| {
                let key = StrBytes::from_string(group.to_owned());
                let request = FindCoordinatorRequest::default().with_key_type(key_type);
                if version >= 4 {
                    request.with_coordinator_keys(vec![key])
                } else {
                    request.with_key(key)
                }
            })?;
            let coordinator = if version >= 4 {
                super::first(
                    response.coordinators,
                    || format!("FindCoordinator for {what} {group}"),
                    "coordinator list",
                )?
            } else {
                Coordinator::default()
                    .with_node_id(response.node_id)
                    .with_host(response.host)
                    .with_port(response.port)
                    .with_error_code(response.error_code)
                    .with_error_message(response.error_message)
            };
            let retriable = matches!(coordinator.error_code, 14 | 15);
            if retriable && attempt < COORDINATOR_RETRIES_MAX {
                std::thread::sleep(COORDINATOR_RETRY_BACKOFF);
                continue;
            }
            CliError::check(
                coordinator.error_code,
                coordinator.error_message.as_ref(),
                || format!("finding the coordinator of {what} {group}"),
            )?;
            let BrokerId(id) = coordinator.node_id;
            break Node {
                id,
                host: coordinator.host.to_string(),
                port: coordinator.port,
            };
        };
        self.connection(&node.address())
    }

    /// Offsets of partitions at `timestamp` ([`LATEST_TIMESTAMP`], [`EARLIEST_TIMESTAMP`], or
    /// milliseconds since the epoch: the first offset whose timestamp is at or after it, -1 if
    /// none). Each partition is asked of its leader. A partition's Kafka error is returned as
    /// `Err(code)`.
    pub fn list_offsets(
        &mut self,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> Result<PartitionOffsets, CliError> {
        let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let metadata = self.metadata(Some(&topics))?;
        let mut leaders: BTreeMap<(String, i32), i32> = BTreeMap::new();
        for topic in &metadata.topics {
            let Some(name) = &topic.name else { continue };
            for partition in &topic.partitions {
                leaders.insert(
                    (name.0.to_string(), partition.partition_index),
                    partition.leader_id.0,
                );
            }
        }
        let mut result = BTreeMap::new();
        // Partitions grouped by leader, then by topic.
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in partitions {
            match leaders.get(&(topic.clone(), *partition)) {
                Some(&leader) if leader >= 0 => by_leader
                    .entry(leader)
                    .or_default()
                    .entry(topic.clone())
                    .or_default()
                    .push(*partition),
                Some(_) => {
                    // LEADER_NOT_AVAILABLE
                    result.insert((topic.clone(), *partition), Err(5));
                }
                None => {
                    // UNKNOWN_TOPIC_OR_PARTITION
                    result.insert((topic.clone(), *partition), Err(3));
                }
            }
        }
        for (leader, topics) in by_leader {
            let connection = self.node(leader)?;
            let (response, _) = connection.call(|_| {
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        topics
                            .iter()
                            .map(|(topic, partitions)| {
                                ListOffsetsTopic::default()
                                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                                    .with_partitions(
                                        partitions
                                            .iter()
                                            .map(|&p| {
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(p)
                                                    .with_timestamp(timestamp)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })?;
            for topic in response.topics {
                for partition in topic.partitions {
                    let key = (topic.name.0.to_string(), partition.partition_index);
                    let value = if partition.error_code == 0 {
                        Ok(partition.offset)
                    } else {
                        Err(partition.error_code)
                    };
                    result.insert(key, value);
                }
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{DescribeConfigsRequest, OffsetCommitRequest};
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    use super::*;

    /// A fake broker that answers ApiVersions requests on one connection: the first with
    /// UNSUPPORTED_VERSION (a v0 body, as Kafka does) if `refuse_first`, then with `apis`.
    /// Returns its address and the versions of the ApiVersions requests it saw.
    fn fake_broker(
        apis: Vec<(ApiKey, i16, i16)>,
        refuse_first: bool,
    ) -> (String, std::thread::JoinHandle<Vec<i16>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut size = [0u8; 4];
                if stream.read_exact(&mut size).is_err() {
                    break;
                }
                let mut payload = vec![0u8; i32::from_be_bytes(size) as usize];
                stream.read_exact(&mut payload).expect("read frame");
                let mut payload = Bytes::from(payload);
                let header = decode_request_header_from_buffer(&mut payload).expect("header");
                assert_eq!(header.request_api_key, ApiKey::ApiVersions as i16);
                let version = header.request_api_version;
                ApiVersionsRequest::decode(&mut payload, version).expect("request decodes");
                seen.push(version);
                let refuse = refuse_first && seen.len() == 1;
                let (body, body_version) = if refuse {
                    (ApiVersionsResponse::default().with_error_code(35), 0)
                } else {
                    let keys = apis
                        .iter()
                        .map(|&(key, min, max)| {
                            ApiVersion::default()
                                .with_api_key(key as i16)
                                .with_min_version(min)
                                .with_max_version(max)
                        })
                        .collect();
                    (ApiVersionsResponse::default().with_api_keys(keys), version)
                };
                let mut frame = BytesMut::new();
                ResponseHeader::default()
                    .with_correlation_id(header.correlation_id)
                    .encode(&mut frame, 0)
                    .expect("encode header");
                body.encode(&mut frame, body_version).expect("encode body");
                stream
                    .write_all(&(frame.len() as i32).to_be_bytes())
                    .expect("write size");
                stream.write_all(&frame).expect("write frame");
            }
            seen
        });
        (address, handle)
    }

    #[test]
    fn negotiates_the_lower_maximum_and_reports_missing_apis() {
        let (address, broker) = fake_broker(
            vec![
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::Metadata, 0, 9),
                (ApiKey::OffsetCommit, 0, 1),
            ],
            false,
        );
        let connection = Connection::connect(&address).expect("connect");
        // Broker max 9 < crate max 13.
        assert_eq!(connection.version::<MetadataRequest>().unwrap(), 9);
        assert!(!connection.supports::<DescribeConfigsRequest>());
        let missing = connection.version::<DescribeConfigsRequest>().unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("does not support DescribeConfigs"),
            "{missing}"
        );
        // Broker 0..=1, crate 2..=9: nothing in common.
        let disjoint = connection.version::<OffsetCommitRequest>().unwrap_err();
        assert!(
            disjoint
                .to_string()
                .contains("no common OffsetCommit version"),
            "{disjoint}"
        );
        drop(connection);
        assert_eq!(broker.join().expect("fake broker"), vec![3]);
    }

    #[test]
    fn falls_back_to_api_versions_v0() {
        let (address, broker) = fake_broker(
            vec![(ApiKey::ApiVersions, 0, 0), (ApiKey::Metadata, 1, 20)],
            true,
        );
        let connection = Connection::connect(&address).expect("connect");
        // Broker max 20 > crate max 13.
        assert_eq!(connection.version::<MetadataRequest>().unwrap(), 13);
        drop(connection);
        assert_eq!(broker.join().expect("fake broker"), vec![3, 0]);
    }
}
