//! The admin APIs on the wire, every version Sluice serves: each request is
//! encoded with kafka-protocol, sent raw, and its response decoded with the
//! same version (a response the encoder refused would close the
//! connection instead). Also checks the answers' contents: DescribeCluster,
//! DescribeLogDirs sizes, CreatePartitions errors, DescribeConfigs sources.

mod common;

use std::io::Write;
use std::net::TcpStream;

use bytes::Bytes;
use common::{Broker, api_versions_v3, connect_raw, encode_request, read_frame};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteRecordsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeLogDirsRequest,
    IncrementalAlterConfigsRequest, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Send `req` at `version` and decode the response body.
fn call<R: Request, T: Decodable>(stream: &mut TcpStream, req: &R, version: i16, id: i32) -> T {
    stream
        .write_all(&encode_request(req, version, id))
        .expect("write request");
    let payload = read_frame(stream)
        .unwrap_or_else(|e| panic!("api {} v{version}: no response ({e})", R::KEY));
    let mut buf = Bytes::from(payload);
    let key = ApiKey::try_from(R::KEY).unwrap();
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, id);
    T::decode(&mut buf, version)
        .unwrap_or_else(|e| panic!("api {} v{version}: decode response: {e}", R::KEY))
}

fn versions(broker: &Broker, key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let av = api_versions_v3(broker.addr(), 1);
    let k = av
        .api_keys
        .iter()
        .find(|k| k.api_key == key as i16)
        .unwrap_or_else(|| panic!("{key:?} not advertised"));
    k.min_version..=k.max_version
}

#[test]
fn admin_apis_answer_every_served_version() {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::{
        AlterConfigsResponse, CreatePartitionsResponse, CreateTopicsResponse,
        DeleteRecordsResponse, DescribeClusterResponse, DescribeConfigsResponse,
        DescribeLogDirsResponse, IncrementalAlterConfigsResponse,
    };

    let broker = Broker::start();
    let mut stream = connect_raw(broker.addr()).unwrap();
    let topic = "raw-admin";
    let create = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(s(topic)))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])
        .with_timeout_ms(10_000);
    let r: CreateTopicsResponse = call(&mut stream, &create, 5, 2);
    assert_eq!(r.topics[0].error_code, 0);
    let mut id = 10;
    let mut next = || {
        id += 1;
        id
    };

    // Manual replica assignments on a one-node broker (node 0): only this broker; with
    // numPartitions or replicationFactor also set, INVALID_REQUEST (42); another broker,
    // INVALID_REPLICA_ASSIGNMENT (39).
    {
        use kafka_protocol::messages::BrokerId;
        use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
        let assigned = |name: &str, brokers: &[i32], partitions: i32| {
            CreateTopicsRequest::default()
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(TopicName(s(name)))
                        .with_num_partitions(partitions)
                        .with_replication_factor(-1)
                        .with_assignments(vec![
                            CreatableReplicaAssignment::default()
                                .with_partition_index(0)
                                .with_broker_ids(brokers.iter().map(|&b| BrokerId(b)).collect()),
                        ]),
                ])
                .with_timeout_ms(10_000)
        };
        for (name, brokers, partitions, code) in [
            ("assigned", &[0][..], -1, 0),
            ("assigned-both", &[0][..], 1, 42),
            ("assigned-elsewhere", &[7][..], -1, 39),
            ("assigned-twice", &[0, 0][..], -1, 39),
        ] {
            let r: CreateTopicsResponse =
                call(&mut stream, &assigned(name, brokers, partitions), 5, 3);
            assert_eq!(
                r.topics[0].error_code, code,
                "{name}: {:?}",
                r.topics[0].error_message
            );
        }
    }

    // CreatePartitions: grow by one per version; the same count is INVALID_PARTITIONS (37).
    let mut count = 1;
    for v in versions(&broker, ApiKey::CreatePartitions) {
        count += 1;
        for (c, expect) in [(count, 0), (count, 37)] {
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_count(c),
                ])
                .with_timeout_ms(10_000);
            let r: CreatePartitionsResponse = call(&mut stream, &req, v, next());
            assert_eq!(r.results[0].error_code, expect, "CreatePartitions v{v}");
        }
    }

    for v in versions(&broker, ApiKey::DescribeConfigs) {
        let req = DescribeConfigsRequest::default()
            .with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(topic)),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("0")),
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("no-such-topic")),
            ])
            .with_include_synonyms(true);
        let r: DescribeConfigsResponse = call(&mut stream, &req, v, next());
        assert_eq!(r.results[0].error_code, 0, "DescribeConfigs v{v}");
        let retention = r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .expect("retention.ms described");
        assert_eq!(
            retention.value.as_ref().map(|v| v.as_str()),
            Some("604800000")
        );
        assert_ne!(retention.config_source, 1, "default, not a topic override");
        assert!(
            r.results[1]
                .configs
                .iter()
                .any(|c| c.name.as_str() == "log.retention.ms")
        );
        assert_eq!(r.results[2].error_code, 3, "unknown topic");
    }

    for v in versions(&broker, ApiKey::AlterConfigs) {
        use kafka_protocol::messages::alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let req = AlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("86400000"))),
                ]),
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("no.such.config"))
                        .with_value(Some(s("1"))),
                ]),
        ]);
        let r: AlterConfigsResponse = call(&mut stream, &req, v, next());
        assert_eq!(r.responses[0].error_code, 0, "AlterConfigs v{v}");
        assert_eq!(r.responses[1].error_code, 40, "INVALID_CONFIG v{v}");
    }

    for v in versions(&broker, ApiKey::IncrementalAlterConfigs) {
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("segment.bytes"))
                        .with_config_operation(0)
                        .with_value(Some(s("1048576"))),
                    AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_config_operation(1),
                ]),
            AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s(""))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("log.retention.ms"))
                        .with_config_operation(0)
                        .with_value(Some(s("3600000"))),
                ]),
        ]);
        let r: IncrementalAlterConfigsResponse = call(&mut stream, &req, v, next());
        assert_eq!(r.responses[0].error_code, 0, "IncrementalAlterConfigs v{v}");
        assert_eq!(r.responses[1].error_code, 0, "broker config v{v}");
    }
    // The broker default now shows through a topic without an override.
    let req = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configuration_keys(Some(vec![s("retention.ms"), s("segment.bytes")])),
    ]);
    let r: DescribeConfigsResponse = call(&mut stream, &req, 4, next());
    let configs = &r.results[0].configs;
    assert_eq!(configs.len(), 2);
    let seg = configs
        .iter()
        .find(|c| c.name.as_str() == "segment.bytes")
        .unwrap();
    assert_eq!(seg.value.as_ref().unwrap().as_str(), "1048576");
    assert_eq!(seg.config_source, 1);
    let ret = configs
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .unwrap();
    assert_eq!(ret.value.as_ref().unwrap().as_str(), "3600000");
    assert_eq!(ret.config_source, 2, "dynamic broker config");

    for v in versions(&broker, ApiKey::DescribeCluster) {
        let req = DescribeClusterRequest::default();
        let r: DescribeClusterResponse = call(&mut stream, &req, v, next());
        assert_eq!(r.error_code, 0, "DescribeCluster v{v}");
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].port, i32::from(broker.port()));
        assert_eq!(r.controller_id.0, 0);
        assert!(!r.cluster_id.is_empty());
    }

    for v in versions(&broker, ApiKey::DeleteRecords) {
        let req = DeleteRecordsRequest::default()
            .with_topics(vec![
                DeleteRecordsTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![
                        DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(-1),
                        DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(5),
                        DeleteRecordsPartition::default()
                            .with_partition_index(99)
                            .with_offset(0),
                    ]),
            ])
            .with_timeout_ms(10_000);
        let r: DeleteRecordsResponse = call(&mut stream, &req, v, next());
        let p = &r.topics[0].partitions;
        assert_eq!(
            (p[0].error_code, p[0].low_watermark),
            (0, 0),
            "DeleteRecords v{v}"
        );
        assert_eq!(p[1].error_code, 1, "above the high watermark");
        assert_eq!(p[2].error_code, 3, "unknown partition");
    }

    for v in versions(&broker, ApiKey::DescribeLogDirs) {
        for topics in [
            None,
            Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(TopicName(s(topic)))
                    .with_partitions(vec![0, 1]),
            ]),
        ] {
            let req = DescribeLogDirsRequest::default().with_topics(topics);
            let r: DescribeLogDirsResponse = call(&mut stream, &req, v, next());
            assert_eq!(r.results.len(), 1, "DescribeLogDirs v{v}");
            let t = r.results[0]
                .topics
                .iter()
                .find(|t| t.name.0.as_str() == topic)
                .expect("topic listed");
            assert!(t.partitions.len() >= 2);
            assert!(t.partitions.iter().all(|p| p.partition_size >= 0));
        }
    }
}
