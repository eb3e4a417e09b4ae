//! The group coordinator's APIs byte by byte (kafka-protocol encodes the requests and decodes
//! the answers), in every version the broker advertises: FindCoordinator (batched v4+),
//! JoinGroup (KIP-394 MEMBER_ID_REQUIRED, static membership and fencing), SyncGroup, Heartbeat,
//! LeaveGroup (batched v3+), OffsetCommit (simple consumers), OffsetFetch (several groups, v8+),
//! ListGroups (state and type filters), DescribeGroups, DeleteGroups and OffsetDelete.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Broker, BrokerOptions, connect_raw, create_topic, encode_request, read_frame};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

static CORRELATION: AtomicI32 = AtomicI32::new(1);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn gid(v: &str) -> GroupId {
    GroupId(s(v))
}

/// One request, one response, on `stream`.
fn call<Req, Resp>(stream: &mut TcpStream, request: &Req, version: i16) -> Resp
where
    Req: Request + Encodable,
    Resp: Decodable,
{
    let correlation = CORRELATION.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(&encode_request(request, version, correlation))
        .expect("write request");
    let payload = read_frame(stream)
        .unwrap_or_else(|e| panic!("no answer to api {} v{version}: {e}", Req::KEY));
    let mut buf = Bytes::from(payload);
    let key = ApiKey::try_from(Req::KEY).expect("api key");
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, correlation);
    Resp::decode(&mut buf, version).expect("response body")
}

fn start_broker() -> Broker {
    Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--group-initial-rebalance-delay-ms".into(),
            "100".into(),
            "--group-min-session-timeout-ms".into(),
            "1000".into(),
        ],
        ..BrokerOptions::default()
    })
}

/// Consumer-protocol member metadata: version 0 subscription to `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| s(t)).collect())
        .encode(&mut b, 0)
        .expect("encode subscription");
    b.freeze()
}

fn join_request(member_id: &str, instance: Option<&str>, topics: &[&str]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(subscription(topics)),
        ])
}

/// Join `group` as a new dynamic member at `version` (handling MEMBER_ID_REQUIRED).
fn join(stream: &mut TcpStream, group: &str, version: i16, topics: &[&str]) -> JoinGroupResponse {
    let mut member_id = String::new();
    for _ in 0..2 {
        let resp: JoinGroupResponse = call(
            stream,
            &join_request(&member_id, None, topics).with_group_id(gid(group)),
            version,
        );
        if resp.error_code == ResponseError::MemberIdRequired.code() {
            assert!(version >= 4, "MEMBER_ID_REQUIRED only from v4");
            assert!(!resp.member_id.is_empty());
            member_id = resp.member_id.to_string();
            continue;
        }
        return resp;
    }
    panic!("join of {group} v{version} did not complete");
}

#[test]
fn find_coordinator_every_version_and_batched() {
    let broker = start_broker();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    for v in 0..=6i16 {
        let mut req = FindCoordinatorRequest::default();
        if v >= 4 {
            req = req.with_coordinator_keys(vec![s("g1"), s("g2")]);
        } else {
            req = req.with_key(s("g1"));
        }
        let resp: FindCoordinatorResponse = call(&mut stream, &req, v);
        if v >= 4 {
            assert_eq!(resp.coordinators.len(), 2, "v{v}");
            for c in &resp.coordinators {
                assert_eq!((c.error_code, c.node_id.0), (0, 0), "v{v}");
                assert_eq!(c.port, i32::from(broker.port()));
            }
        } else {
            assert_eq!((resp.error_code, resp.node_id.0), (0, 0), "v{v}");
            assert_eq!(resp.port, i32::from(broker.port()));
            assert_eq!(resp.host.as_str(), "127.0.0.1");
        }
    }
    // A transactional id is coordinated by this broker too; an empty one is refused.
    let resp: FindCoordinatorResponse = call(
        &mut stream,
        &FindCoordinatorRequest::default()
            .with_key(s("txn"))
            .with_key_type(1),
        3,
    );
    assert_eq!((resp.error_code, resp.node_id.0), (0, 0));
    assert_eq!(resp.port, i32::from(broker.port()));
    let resp: FindCoordinatorResponse = call(
        &mut stream,
        &FindCoordinatorRequest::default()
            .with_key(s(""))
            .with_key_type(1),
        3,
    );
    assert_eq!(resp.error_code, ResponseError::InvalidRequest.code());
}

#[test]
fn membership_apis_in_every_version() {
    let broker = start_broker();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    for v in 0..=9i16 {
        let group = format!("raw-join-v{v}");
        let joined = join(&mut stream, &group, v, &["t"]);
        assert_eq!(joined.error_code, 0, "join v{v}");
        assert_eq!(joined.generation_id, 1, "join v{v}");
        assert_eq!(joined.leader, joined.member_id, "sole member leads (v{v})");
        assert_eq!(joined.members.len(), 1, "leader gets the members (v{v})");
        assert_eq!(joined.members[0].metadata, subscription(&["t"]));
        if v >= 7 {
            assert_eq!(
                joined.protocol_type.as_ref().map(|t| t.as_str()),
                Some("consumer")
            );
        }
        assert_eq!(
            joined.protocol_name.as_ref().map(|t| t.as_str()),
            Some("range")
        );
        let member = joined.member_id.clone();

        let sync_version = v.min(5);
        let mut sync = SyncGroupRequest::default()
            .with_group_id(gid(&group))
            .with_generation_id(1)
            .with_member_id(member.clone())
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(member.clone())
                    .with_assignment(Bytes::from_static(b"assignment")),
            ]);
        if sync_version >= 5 {
            sync = sync
                .with_protocol_type(Some(s("consumer")))
                .with_protocol_name(Some(s("range")));
        }
        let synced: SyncGroupResponse = call(&mut stream, &sync, sync_version);
        assert_eq!(synced.error_code, 0, "sync v{sync_version}");
        assert_eq!(&synced.assignment[..], b"assignment");

        let hb_version = v.min(4);
        let hb = HeartbeatRequest::default()
            .with_group_id(gid(&group))
            .with_generation_id(1)
            .with_member_id(member.clone());
        let ok: HeartbeatResponse = call(&mut stream, &hb, hb_version);
        assert_eq!(ok.error_code, 0, "heartbeat v{hb_version}");
        let stale: HeartbeatResponse =
            call(&mut stream, &hb.clone().with_generation_id(7), hb_version);
        assert_eq!(stale.error_code, ResponseError::IllegalGeneration.code());
        let unknown: HeartbeatResponse = call(
            &mut stream,
            &hb.clone().with_member_id(s("nobody")),
            hb_version,
        );
        assert_eq!(unknown.error_code, ResponseError::UnknownMemberId.code());

        let leave_version = v.min(5);
        let leave = if leave_version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(gid(&group))
                .with_members(vec![
                    MemberIdentity::default().with_member_id(member.clone()),
                    MemberIdentity::default().with_member_id(s("nobody")),
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(gid(&group))
                .with_member_id(member.clone())
        };
        let left: LeaveGroupResponse = call(&mut stream, &leave, leave_version);
        assert_eq!(left.error_code, 0, "leave v{leave_version}");
        if leave_version >= 3 {
            let codes: Vec<i16> = left.members.iter().map(|m| m.error_code).collect();
            assert_eq!(codes, vec![0, ResponseError::UnknownMemberId.code()]);
        }
        let after: HeartbeatResponse = call(&mut stream, &hb, hb_version);
        assert_eq!(after.error_code, ResponseError::UnknownMemberId.code());
    }

    // Session timeout outside the broker's bounds.
    let bad: JoinGroupResponse = call(
        &mut stream,
        &join_request("", None, &["t"])
            .with_group_id(gid("raw-bad-session"))
            .with_session_timeout_ms(10),
        5,
    );
    assert_eq!(bad.error_code, ResponseError::InvalidSessionTimeout.code());
    // A member id the group never gave out.
    let stranger: JoinGroupResponse = call(
        &mut stream,
        &join_request("stranger", None, &["t"]).with_group_id(gid("raw-join-v5")),
        5,
    );
    assert_eq!(stranger.error_code, ResponseError::UnknownMemberId.code());
}

#[test]
fn static_member_rejoin_fences_the_old_member_id() {
    let broker = start_broker();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    let group = "raw-static";
    let first: JoinGroupResponse = call(
        &mut stream,
        &join_request("", Some("instance-1"), &["t"]).with_group_id(gid(group)),
        5,
    );
    assert_eq!(
        first.error_code, 0,
        "static members skip MEMBER_ID_REQUIRED"
    );
    let old = first.member_id.clone();
    let sync: SyncGroupResponse = call(
        &mut stream,
        &SyncGroupRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(first.generation_id)
            .with_member_id(old.clone())
            .with_group_instance_id(Some(s("instance-1"))),
        3,
    );
    assert_eq!(sync.error_code, 0);

    // The same instance restarts: new member id, old one fenced.
    let second: JoinGroupResponse = call(
        &mut stream,
        &join_request("", Some("instance-1"), &["t"]).with_group_id(gid(group)),
        5,
    );
    assert_eq!(second.error_code, 0);
    assert_ne!(second.member_id, old);
    let fenced: HeartbeatResponse = call(
        &mut stream,
        &HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(first.generation_id)
            .with_member_id(old.clone())
            .with_group_instance_id(Some(s("instance-1"))),
        3,
    );
    assert_eq!(fenced.error_code, ResponseError::FencedInstanceId.code());
    let current: HeartbeatResponse = call(
        &mut stream,
        &HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(second.generation_id)
            .with_member_id(second.member_id.clone())
            .with_group_instance_id(Some(s("instance-1"))),
        3,
    );
    assert_eq!(current.error_code, 0);
    // Leaving by instance id alone (v3+).
    let left: LeaveGroupResponse = call(
        &mut stream,
        &LeaveGroupRequest::default()
            .with_group_id(gid(group))
            .with_members(vec![
                MemberIdentity::default().with_group_instance_id(Some(s("instance-1"))),
            ]),
        4,
    );
    assert_eq!(left.members[0].error_code, 0);
}

fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)
                        .with_committed_metadata(Some(s("meta"))),
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(99)
                        .with_committed_offset(offset),
                ]),
        ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_in_every_version_and_batched_fetch() {
    const TOPIC: &str = "raw-offsets";
    let broker = start_broker();
    create_topic(&broker.bootstrap(), TOPIC, 2).await;
    let mut stream = connect_raw(broker.addr()).expect("connect");

    for v in 2..=9i16 {
        let group = format!("raw-commit-v{v}");
        let resp: OffsetCommitResponse = call(
            &mut stream,
            &commit_request(&group, -1, "", TOPIC, 100 + i64::from(v)),
            v,
        );
        let codes: Vec<(i32, i16)> = resp.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![(0, 0), (99, ResponseError::UnknownTopicOrPartition.code())],
            "commit v{v}"
        );
    }
    // A member generation for a group that does not exist.
    let resp: OffsetCommitResponse = call(
        &mut stream,
        &commit_request("raw-nogroup", 3, "m", TOPIC, 1),
        8,
    );
    assert_eq!(
        resp.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );

    for v in 1..=7i16 {
        let group = format!("raw-commit-v{}", (v + 1).max(2));
        let resp: OffsetFetchResponse = call(
            &mut stream,
            &OffsetFetchRequest::default()
                .with_group_id(gid(&group))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(s(TOPIC)))
                        .with_partition_indexes(vec![0, 1]),
                ])),
            v,
        );
        let parts = &resp.topics[0].partitions;
        assert_eq!(
            parts[0].committed_offset,
            100 + i64::from((v + 1).max(2)),
            "fetch v{v}"
        );
        assert_eq!(parts[0].metadata.as_ref().map(|m| m.as_str()), Some("meta"));
        assert_eq!(parts[1].committed_offset, -1, "nothing committed on p1");
    }
    // All topics of a group (topics null, v2+).
    let resp: OffsetFetchResponse = call(
        &mut stream,
        &OffsetFetchRequest::default()
            .with_group_id(gid("raw-commit-v5"))
            .with_topics(None),
        6,
    );
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(resp.topics[0].partitions[0].committed_offset, 105);

    // Several groups in one request (v8+), one unknown, one for all topics.
    for v in 8..=9i16 {
        let resp: OffsetFetchResponse = call(
            &mut stream,
            &OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid("raw-commit-v2"))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopics::default()
                            .with_name(TopicName(s(TOPIC)))
                            .with_partition_indexes(vec![0]),
                    ])),
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid("raw-commit-v9"))
                    .with_topics(None),
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid("raw-unknown"))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopics::default()
                            .with_name(TopicName(s(TOPIC)))
                            .with_partition_indexes(vec![0]),
                    ])),
            ]),
            v,
        );
        assert_eq!(resp.groups.len(), 3, "v{v}");
        let offset = |i: usize| resp.groups[i].topics[0].partitions[0].committed_offset;
        assert_eq!((offset(0), offset(1), offset(2)), (102, 109, -1), "v{v}");
        assert!(resp.groups.iter().all(|g| g.error_code == 0));
    }

    // OffsetDelete: refused while a member subscribes to the topic.
    let joined = join(&mut stream, "raw-commit-v3", 5, &[TOPIC]);
    assert_eq!(joined.error_code, 0);
    let delete = OffsetDeleteRequest::default()
        .with_group_id(gid("raw-commit-v3"))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(TOPIC)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0),
                ]),
        ]);
    let refused: OffsetDeleteResponse = call(&mut stream, &delete, 0);
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        ResponseError::GroupSubscribedToTopic.code()
    );
    let _: LeaveGroupResponse = call(
        &mut stream,
        &LeaveGroupRequest::default()
            .with_group_id(gid("raw-commit-v3"))
            .with_member_id(joined.member_id.clone()),
        1,
    );
    let deleted: OffsetDeleteResponse = call(&mut stream, &delete, 0);
    assert_eq!(
        (
            deleted.error_code,
            deleted.topics[0].partitions[0].error_code
        ),
        (0, 0)
    );
    let after: OffsetFetchResponse = call(
        &mut stream,
        &OffsetFetchRequest::default()
            .with_group_id(gid("raw-commit-v3"))
            .with_topics(None),
        7,
    );
    assert!(after.topics.is_empty(), "offset deleted: {after:?}");
    let unknown: OffsetDeleteResponse = call(
        &mut stream,
        &delete.clone().with_group_id(gid("raw-unknown")),
        0,
    );
    assert_eq!(unknown.error_code, ResponseError::GroupIdNotFound.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_describe_delete_in_every_version() {
    const TOPIC: &str = "raw-admin";
    let broker = start_broker();
    create_topic(&broker.bootstrap(), TOPIC, 1).await;
    let mut stream = connect_raw(broker.addr()).expect("connect");
    for i in 0..3 {
        let resp: OffsetCommitResponse = call(
            &mut stream,
            &commit_request(&format!("raw-admin-{i}"), -1, "", TOPIC, 1),
            8,
        );
        assert_eq!(resp.topics[0].partitions[0].error_code, 0);
    }
    let live = join(&mut stream, "raw-admin-live", 5, &[TOPIC]);
    let _: SyncGroupResponse = call(
        &mut stream,
        &SyncGroupRequest::default()
            .with_group_id(gid("raw-admin-live"))
            .with_generation_id(live.generation_id)
            .with_member_id(live.member_id.clone()),
        3,
    );

    for v in 0..=5i16 {
        let resp: ListGroupsResponse = call(&mut stream, &ListGroupsRequest::default(), v);
        assert_eq!(resp.error_code, 0);
        let names: Vec<&str> = resp.groups.iter().map(|g| g.group_id.as_str()).collect();
        for g in [
            "raw-admin-0",
            "raw-admin-1",
            "raw-admin-2",
            "raw-admin-live",
        ] {
            assert!(names.contains(&g), "v{v}: {g} in {names:?}");
        }
        if v >= 4 {
            let live_state = resp
                .groups
                .iter()
                .find(|g| g.group_id.as_str() == "raw-admin-live")
                .map(|g| g.group_state.to_string());
            assert_eq!(live_state.as_deref(), Some("Stable"));
            let stable: ListGroupsResponse = call(
                &mut stream,
                &ListGroupsRequest::default().with_states_filter(vec![s("Stable")]),
                v,
            );
            let names: Vec<&str> = stable.groups.iter().map(|g| g.group_id.as_str()).collect();
            assert_eq!(names, vec!["raw-admin-live"], "v{v} states filter");
        }
        if v >= 5 {
            let none: ListGroupsResponse = call(
                &mut stream,
                &ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
                v,
            );
            assert!(none.groups.is_empty(), "no KIP-848 groups here");
            let classic: ListGroupsResponse = call(
                &mut stream,
                &ListGroupsRequest::default().with_types_filter(vec![s("classic")]),
                v,
            );
            assert!(classic.groups.len() >= 4);
            assert!(
                classic
                    .groups
                    .iter()
                    .all(|g| g.group_type.as_str() == "classic")
            );
        }
    }

    for v in 0..=6i16 {
        let resp: DescribeGroupsResponse = call(
            &mut stream,
            &DescribeGroupsRequest::default().with_groups(vec![
                gid("raw-admin-live"),
                gid("raw-admin-0"),
                gid("raw-admin-none"),
            ]),
            v,
        );
        let live = &resp.groups[0];
        assert_eq!(
            (live.error_code, live.group_state.as_str()),
            (0, "Stable"),
            "v{v}"
        );
        assert_eq!(live.protocol_data.as_str(), "range");
        assert_eq!(live.members.len(), 1);
        assert_eq!(live.members[0].member_metadata, subscription(&[TOPIC]));
        assert_eq!(resp.groups[1].group_state.as_str(), "Empty");
        let none = &resp.groups[2];
        assert_eq!(none.group_state.as_str(), "Dead", "v{v}");
        let expected = if v >= 6 {
            ResponseError::GroupIdNotFound.code()
        } else {
            0
        };
        assert_eq!(none.error_code, expected, "v{v}");
    }

    for v in 0..=2i16 {
        let resp: DeleteGroupsResponse = call(
            &mut stream,
            &DeleteGroupsRequest::default().with_groups_names(vec![
                gid(&format!("raw-admin-{v}")),
                gid("raw-admin-live"),
                gid("raw-admin-none"),
            ]),
            v,
        );
        let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
        assert_eq!(
            codes,
            vec![
                0,
                ResponseError::NonEmptyGroup.code(),
                ResponseError::GroupIdNotFound.code()
            ],
            "delete v{v}"
        );
    }
    let resp: ListGroupsResponse = call(&mut stream, &ListGroupsRequest::default(), 3);
    let names: Vec<&str> = resp.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(names, vec!["raw-admin-live"]);
}

/// A group's membership is recorded in `__consumer_offsets` (Kafka's group metadata record)
/// once its generation is Stable, so it survives the coordinator: after a `kill -9` and a
/// restart of the broker, the member's heartbeat with its member id and generation is
/// accepted (no rejoin, no rebalance), DescribeGroups shows it Stable with its assignment,
/// and once it leaves, DeleteGroups removes the record too (a further restart finds no
/// group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_survives_a_kill_9_and_deletion_removes_it() {
    let mut broker = start_broker();
    create_topic(&broker.bootstrap(), "t", 1).await;
    let group = "raw-membership";
    let assignment = Bytes::from_static(b"assigned-partitions");
    let (member, generation) = {
        let mut stream = connect_raw(broker.addr()).expect("connect");
        let joined = join(&mut stream, group, 7, &["t"]);
        assert_eq!(joined.error_code, 0);
        let sync: SyncGroupResponse = call(
            &mut stream,
            &SyncGroupRequest::default()
                .with_group_id(gid(group))
                .with_generation_id(joined.generation_id)
                .with_member_id(joined.member_id.clone())
                .with_assignments(vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(joined.member_id.clone())
                        .with_assignment(assignment.clone()),
                ]),
            5,
        );
        assert_eq!(sync.error_code, 0);
        (joined.member_id, joined.generation_id)
    };
    // Recorded within a coordinator tick (100 ms).
    std::thread::sleep(std::time::Duration::from_millis(500));
    broker.kill9();
    broker.restart();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    let beat: HeartbeatResponse = call(
        &mut stream,
        &HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(generation)
            .with_member_id(member.clone()),
        4,
    );
    assert_eq!(
        beat.error_code, 0,
        "the member's generation survived the restart"
    );
    let described: DescribeGroupsResponse = call(
        &mut stream,
        &DescribeGroupsRequest::default().with_groups(vec![gid(group)]),
        5,
    );
    let g = &described.groups[0];
    assert_eq!(g.group_state.to_string(), "Stable");
    assert_eq!(g.protocol_data.to_string(), "range");
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_id, member);
    assert_eq!(g.members[0].member_assignment, assignment);
    // An offset keeps the group once it is empty; the member leaves; the group is deleted,
    // and stays deleted across a restart.
    let committed: OffsetCommitResponse = call(
        &mut stream,
        &commit_request(group, generation, &member, "t", 5),
        7,
    );
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);
    let left: LeaveGroupResponse = call(
        &mut stream,
        &LeaveGroupRequest::default()
            .with_group_id(gid(group))
            .with_member_id(member.clone()),
        2,
    );
    assert_eq!(left.error_code, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let deleted: DeleteGroupsResponse = call(
        &mut stream,
        &DeleteGroupsRequest::default().with_groups_names(vec![gid(group)]),
        2,
    );
    assert_eq!(deleted.results[0].error_code, 0);
    drop(stream);
    broker.kill9();
    broker.restart();
    let mut stream = connect_raw(broker.addr()).expect("connect");
    let described: DescribeGroupsResponse = call(
        &mut stream,
        &DescribeGroupsRequest::default().with_groups(vec![gid(group)]),
        5,
    );
    assert_eq!(
        described.groups[0].error_code, 0,
        "v5: an unknown group is Dead without an error"
    );
    assert_eq!(described.groups[0].group_state.to_string(), "Dead");
    let beat: HeartbeatResponse = call(
        &mut stream,
        &HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(generation)
            .with_member_id(member),
        4,
    );
    assert_eq!(beat.error_code, ResponseError::UnknownMemberId.code());
}
