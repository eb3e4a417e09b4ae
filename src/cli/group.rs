//! `sluice group list|describe|delete|reset-offsets`.
//!
//! APIs used: Metadata (to find every broker), ListGroups (on every broker: a broker lists the
//! groups it coordinates), FindCoordinator, then on the coordinator DescribeGroups, OffsetFetch,
//! OffsetCommit and DeleteGroups; ListOffsets on partition leaders for log-end offsets.
//!
//! `reset-offsets --execute` commits with generation -1 and an empty member id, as Kafka's own
//! tool does: the coordinator accepts that only while the group has no members.

use std::collections::BTreeMap;
use std::io::Write;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::client::{Cluster, Connection, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, PartitionOffsets};
use super::table::Table;
use super::time::parse_rfc3339_ms;
use super::{CliError, ConnectArgs, error_name};

#[derive(clap::Args, Debug)]
pub struct GroupCommand {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub action: GroupAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum GroupAction {
    /// List consumer groups: name, state, protocol type.
    List,
    /// Members, committed offsets, log-end offsets and lag of a group.
    Describe { group: String },
    /// Delete a group and its committed offsets (the group must have no members).
    Delete { group: String },
    /// Move a group's committed offsets (dry run unless --execute).
    ResetOffsets(ResetOffsetsArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("target").required(true).multiple(false)
))]
pub struct ResetOffsetsArgs {
    pub group: String,
    /// Topic to reset, all its partitions (TOPIC) or some (TOPIC:0,2). Repeatable.
    #[arg(long, short = 't', required = true)]
    pub topic: Vec<String>,
    /// Reset to the log start offset.
    #[arg(long, group = "target")]
    pub to_earliest: bool,
    /// Reset to the log end offset (high watermark).
    #[arg(long, group = "target")]
    pub to_latest: bool,
    /// Reset to this offset, clamped to [log start, log end].
    #[arg(long, group = "target", value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// Reset to the first offset with a timestamp at or after this time (RFC 3339, e.g.
    /// 2026-01-31T12:00:00Z); the log end if there is none.
    #[arg(long, group = "target", value_name = "RFC3339")]
    pub to_datetime: Option<String>,
    /// Commit the new offsets (otherwise only print the plan).
    #[arg(long)]
    pub execute: bool,
}

/// Runs a group command, writing its report to `out`.
pub fn run(command: &GroupCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cluster = Cluster::connect(&command.connect.bootstrap_server)?;
    let text = match &command.action {
        GroupAction::List => list(&mut cluster)?,
        GroupAction::Describe { group } => describe(&mut cluster, group)?,
        GroupAction::Delete { group } => delete(&mut cluster, group)?,
        GroupAction::ResetOffsets(args) => reset_offsets(&mut cluster, args)?,
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

fn list(cluster: &mut Cluster) -> Result<String, CliError> {
    cluster.metadata(Some(&[]))?;
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for node in cluster.nodes() {
        let connection = cluster.node(node.id)?;
        let (response, version) = connection.call(|_| ListGroupsRequest::default())?;
        CliError::check(response.error_code, None, || {
            format!("listing groups on broker {}", node.id)
        })?;
        for group in response.groups {
            // The state is in the response from v4 on.
            let state = if version >= 4 {
                group.group_state.to_string()
            } else {
                "-".to_owned()
            };
            groups.insert(
                group.group_id.0.to_string(),
                (state, group.protocol_type.to_string()),
            );
        }
    }
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    for (group, (state, protocol_type)) in groups {
        let protocol_type = if protocol_type.is_empty() {
            "-".to_owned()
        } else {
            protocol_type
        };
        table.row(vec![group, state, protocol_type]);
    }
    Ok(table.render())
}

/// DescribeGroups for one group on its coordinator. Kafka answers an unknown group with state
/// Dead (or, from v6, GROUP_ID_NOT_FOUND).
fn describe_group(coordinator: &mut Connection, group: &str) -> Result<DescribedGroup, CliError> {
    let (response, _) = coordinator
        .call(|_| DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]))?;
    let described = super::first(
        response.groups,
        || format!("describing group {group}"),
        "DescribeGroups response",
    )?;
    if described.error_code == ResponseError::GroupIdNotFound.code() {
        return Err(CliError::NotFound(format!("group {group} does not exist")));
    }
    CliError::check(
        described.error_code,
        described.error_message.as_ref(),
        || format!("describing group {group}"),
    )?;
    Ok(described)
}

/// Committed offsets of a group, every topic: (topic, partition) -> offset (-1: none).
fn fetch_offsets(
    coordinator: &mut Connection,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>, CliError> {
    let version = coordinator.version::<OffsetFetchRequest>()?;
    if version < 2 {
        return Err(CliError::Unsupported(format!(
            "the broker at {} only serves OffsetFetch v{version}, which cannot list all \
             committed offsets of a group",
            coordinator.address()
        )));
    }
    let request = if version >= 8 {
        OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(str_bytes(group)))
                .with_topics(None),
        ])
    } else {
        OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(None)
    };
    let response = coordinator.send(&request, version)?;
    let context = || format!("fetching committed offsets of group {group}");
    let mut offsets = BTreeMap::new();
    if version >= 8 {
        for g in response.groups {
            CliError::check(g.error_code, None, context)?;
            for topic in g.topics {
                for p in topic.partitions {
                    CliError::check(p.error_code, None, context)?;
                    offsets.insert(
                        (topic.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    } else {
        CliError::check(response.error_code, None, context)?;
        for topic in response.topics {
            for p in topic.partitions {
                CliError::check(p.error_code, None, context)?;
                offsets.insert(
                    (topic.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(offsets)
}

/// Which member (member id, client id, host) owns each partition, from the consumer protocol
/// assignments. Members whose assignment does not decode own nothing here.
fn assignments(group: &DescribedGroup) -> BTreeMap<(String, i32), (String, String, String)> {
    let mut owners = BTreeMap::new();
    if group.protocol_type.as_str() != "consumer" {
        return owners;
    }
    for member in &group.members {
        let mut bytes = member.member_assignment.clone();
        if bytes.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([bytes[0], bytes[1]]);
        let _ = bytes::Buf::get_i16(&mut bytes);
        let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3))
        else {
            continue;
        };
        for topic in assignment.assigned_partitions {
            for partition in topic.partitions {
                owners.insert(
                    (topic.topic.0.to_string(), partition),
                    (
                        member.member_id.to_string(),
                        member.client_id.to_string(),
                        member.client_host.to_string(),
                    ),
                );
            }
        }
    }
    owners
}

fn describe(cluster: &mut Cluster, group: &str) -> Result<String, CliError> {
    let coordinator = cluster.coordinator(group)?;
    let described = describe_group(coordinator, group)?;
    let committed = fetch_offsets(coordinator, group)?;
    if described.group_state.as_str() == "Dead" && committed.is_empty() {
        return Err(CliError::NotFound(format!("group {group} does not exist")));
    }
    let owners = assignments(&described);
    let mut partitions: Vec<(String, i32)> =
        committed.keys().chain(owners.keys()).cloned().collect();
    partitions.sort();
    partitions.dedup();
    let log_end = cluster.list_offsets(&partitions, LATEST_TIMESTAMP)?;

    let protocol = if described.protocol_data.is_empty() {
        "-"
    } else {
        described.protocol_data.as_str()
    };
    let mut text = format!(
        "Group: {group}  State: {}  Protocol type: {}  Protocol: {protocol}  Members: {}\n\n",
        described.group_state,
        if described.protocol_type.is_empty() {
            "-"
        } else {
            described.protocol_type.as_str()
        },
        described.members.len()
    );
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG-END",
        "LAG",
        "MEMBER",
        "CLIENT-ID",
        "HOST",
    ]);
    for key in &partitions {
        let committed_offset = committed.get(key).copied().filter(|&o| o >= 0);
        let (end, lag) = match log_end.get(key) {
            Some(Ok(end)) => (
                end.to_string(),
                committed_offset.map_or("-".to_owned(), |c| (end - c).max(0).to_string()),
            ),
            Some(Err(code)) => (format!("error:{}", error_name(*code)), "-".to_owned()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (member, client, host) = owners
            .get(key)
            .cloned()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        table.row(vec![
            key.0.clone(),
            key.1.to_string(),
            committed_offset.map_or("-".to_owned(), |c| c.to_string()),
            end,
            lag,
            member,
            client,
            host,
        ]);
    }
    if table.is_empty() {
        text.push_str("No committed offsets and no assigned partitions.\n");
    } else {
        text.push_str(&table.render());
    }
    if !described.members.is_empty() {
        text.push('\n');
        let mut members = Table::new(&["MEMBER", "INSTANCE", "CLIENT-ID", "HOST"]);
        for m in &described.members {
            members.row(vec![
                m.member_id.to_string(),
                m.group_instance_id
                    .as_ref()
                    .map_or("-".to_owned(), |i| i.to_string()),
                m.client_id.to_string(),
                m.client_host.to_string(),
            ]);
        }
        text.push_str(&members.render());
    }
    Ok(text)
}

fn delete(cluster: &mut Cluster, group: &str) -> Result<String, CliError> {
    let coordinator = cluster.coordinator(group)?;
    let (response, _) = coordinator.call(|_| {
        DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))])
    })?;
    let result = super::first(
        response.results,
        || format!("deleting group {group}"),
        "DeleteGroups response",
    )?;
    match result.error_code {
        // NON_EMPTY_GROUP
        68 => Err(CliError::GroupState(format!(
            "cannot delete group {group}: it has active members (stop its consumers first)"
        ))),
        // GROUP_ID_NOT_FOUND
        69 => Err(CliError::NotFound(format!("group {group} does not exist"))),
        code => {
            CliError::check(code, None, || format!("deleting group {group}"))?;
            Ok(format!("Deleted group {group}.\n"))
        }
    }
}

/// `TOPIC` or `TOPIC:0,1,2`.
fn parse_topic_spec(spec: &str) -> Result<(String, Option<Vec<i32>>), CliError> {
    match spec.split_once(':') {
        None if !spec.is_empty() => Ok((spec.to_owned(), None)),
        Some((topic, list)) if !topic.is_empty() => {
            let partitions = list
                .split(',')
                .map(|p| p.trim().parse::<i32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    CliError::Usage(format!(
                        "--topic {spec:?}: expected TOPIC or TOPIC:PARTITION,PARTITION,..."
                    ))
                })?;
            Ok((topic.to_owned(), Some(partitions)))
        }
        _ => Err(CliError::Usage(format!(
            "--topic {spec:?}: empty topic name"
        ))),
    }
}

/// The group states in which a commit with generation -1 is accepted.
fn accepts_admin_commit(state: &str) -> bool {
    matches!(state, "Empty" | "Dead")
}

fn reset_offsets(cluster: &mut Cluster, args: &ResetOffsetsArgs) -> Result<String, CliError> {
    let group = args.group.as_str();
    // Partitions to reset.
    let mut specs = Vec::new();
    for spec in &args.topic {
        specs.push(parse_topic_spec(spec)?);
    }
    let topics: Vec<String> = specs.iter().map(|(t, _)| t.clone()).collect();
    let metadata = cluster.metadata(Some(&topics))?;
    let mut partitions: Vec<(String, i32)> = Vec::new();
    for (topic, wanted) in &specs {
        let entry = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .filter(|t| t.error_code != 3)
            .ok_or_else(|| CliError::NotFound(format!("topic {topic} does not exist")))?;
        CliError::check(entry.error_code, None, || {
            format!("looking up topic {topic}")
        })?;
        let existing: Vec<i32> = entry.partitions.iter().map(|p| p.partition_index).collect();
        match wanted {
            None => partitions.extend(existing.iter().map(|&p| (topic.clone(), p))),
            Some(list) => {
                for p in list {
                    if !existing.contains(p) {
                        return Err(CliError::NotFound(format!(
                            "topic {topic} has no partition {p}"
                        )));
                    }
                    partitions.push((topic.clone(), *p));
                }
            }
        }
    }
    partitions.sort();
    partitions.dedup();

    // Targets.
    let earliest = cluster.list_offsets(&partitions, EARLIEST_TIMESTAMP)?;
    let latest = cluster.list_offsets(&partitions, LATEST_TIMESTAMP)?;
    let by_time = match &args.to_datetime {
        Some(text) => {
            let ms = parse_rfc3339_ms(text).map_err(CliError::Usage)?;
            Some(cluster.list_offsets(&partitions, ms)?)
        }
        None => None,
    };
    let offset_of = |map: &PartitionOffsets, key: &(String, i32)| -> Result<i64, CliError> {
        match map.get(key) {
            Some(Ok(offset)) => Ok(*offset),
            Some(Err(code)) => Err(CliError::Kafka {
                context: format!("listing offsets of {}/{}", key.0, key.1),
                code: *code,
                message: None,
            }),
            None => Err(CliError::NotFound(format!(
                "no offsets for {}/{}",
                key.0, key.1
            ))),
        }
    };
    let mut plan: Vec<((String, i32), i64)> = Vec::new();
    for key in &partitions {
        let low = offset_of(&earliest, key)?;
        let high = offset_of(&latest, key)?;
        let target = if args.to_earliest {
            low
        } else if args.to_latest {
            high
        } else if let Some(offset) = args.to_offset {
            offset.clamp(low, high)
        } else if let Some(by_time) = &by_time {
            match offset_of(by_time, key)? {
                // No record at or after the time: the end of the log.
                -1 => high,
                offset => offset.clamp(low, high),
            }
        } else {
            unreachable!("clap requires exactly one target");
        };
        plan.push((key.clone(), target));
    }

    let coordinator = cluster.coordinator(group)?;
    let described = describe_group(coordinator, group)?;
    let current = fetch_offsets(coordinator, group)?;
    let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT", "NEW"]);
    for (key, target) in &plan {
        let now = current
            .get(key)
            .copied()
            .filter(|&o| o >= 0)
            .map_or("-".to_owned(), |o| o.to_string());
        table.row(vec![
            key.0.clone(),
            key.1.to_string(),
            now,
            target.to_string(),
        ]);
    }
    let mut text = table.render();
    if !args.execute {
        if !accepts_admin_commit(described.group_state.as_str()) {
            text.push_str(&format!(
                "\nNote: group {group} is {} with {} member(s); --execute only works once the \
                 group is empty.\n",
                described.group_state,
                described.members.len()
            ));
        }
        text.push_str("\nDry run: nothing committed. Add --execute to commit these offsets.\n");
        return Ok(text);
    }
    let not_empty = |state: &str, members: usize| {
        CliError::GroupState(format!(
            "cannot reset offsets of group {group}: it is {state} with {members} member(s); \
             offsets can only be reset while the group is empty (stop its consumers first)"
        ))
    };
    if !accepts_admin_commit(described.group_state.as_str()) {
        return Err(not_empty(
            described.group_state.as_str(),
            described.members.len(),
        ));
    }
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((topic, partition), target) in &plan {
        by_topic.entry(topic.as_str()).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*target),
        );
    }
    let (response, _) = coordinator.call(|_| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::default())
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(str_bytes(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            )
    })?;
    for topic in &response.topics {
        for p in &topic.partitions {
            match p.error_code {
                0 => {}
                // ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS: the group gained
                // members since it was described.
                22 | 25 | 27 => {
                    return Err(CliError::GroupState(format!(
                        "cannot reset offsets of group {group}: the coordinator refused the \
                         commit ({}), so the group has members again; offsets can only be reset \
                         while the group is empty (stop its consumers first)",
                        error_name(p.error_code)
                    )));
                }
                code => CliError::check(code, None, || {
                    format!(
                        "committing offsets of group {group} for {}/{}",
                        topic.name.0, p.partition_index
                    )
                })?,
            }
        }
    }
    text.push_str(&format!("\nCommitted new offsets for group {group}.\n"));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs() {
        assert_eq!(parse_topic_spec("t").unwrap(), ("t".to_owned(), None));
        assert_eq!(
            parse_topic_spec("t:0,2").unwrap(),
            ("t".to_owned(), Some(vec![0, 2]))
        );
        assert!(parse_topic_spec("t:x").is_err());
        assert!(parse_topic_spec(":1").is_err());
        assert!(parse_topic_spec("").is_err());
    }
}
