//! `sluice topic create|list|describe|delete|alter-config`.
//!
//! APIs used: Metadata, CreateTopics, DeleteTopics, ListOffsets (earliest and latest, on each
//! partition's leader), DescribeConfigs (optional), IncrementalAlterConfigs or, failing that,
//! AlterConfigs.

use std::collections::BTreeMap;
use std::io::Write;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName, alter_configs_request,
    incremental_alter_configs_request,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{Cluster, Connection, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, PartitionOffsets};
use super::table::{Table, join};
use super::{BROKER_OPERATION_TIMEOUT_MS, CliError, ConnectArgs, error_name, parse_key_value};

/// `resource_type` of a topic in the config APIs.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// `config_source` values of DescribeConfigs (v1+).
const CONFIG_SOURCE_DYNAMIC_TOPIC: i8 = 1;
const CONFIG_SOURCE_DEFAULT: i8 = 5;
/// `config_operation` values of IncrementalAlterConfigs.
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;

#[derive(clap::Args, Debug)]
pub struct TopicCommand {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub action: TopicAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicAction {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions [default: the broker's num.partitions].
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Replicas per partition [default: the broker's default.replication.factor].
        #[arg(long, short = 'r')]
        replication_factor: Option<i16>,
        /// Topic config KEY=VALUE (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", short = 'c', value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics: name, partitions, replication factor, internal flag.
    List {
        /// Include internal topics such as __consumer_offsets.
        #[arg(long)]
        all: bool,
    },
    /// Partitions (leader, leader epoch, replicas, ISR, log start, high watermark) and configs
    /// of a topic.
    Describe {
        name: String,
        /// Show every config, including broker defaults.
        #[arg(long)]
        all_configs: bool,
        /// Brokers' metrics endpoints (HOST:PORT of `metrics_listen`, comma-separated): adds
        /// the log cleaner's state of each compacted partition they own (Kafka has no API
        /// for it).
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// Delete a topic.
    Delete { name: String },
    /// Change topic configs.
    AlterConfig {
        name: String,
        /// Set KEY=VALUE (repeatable).
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Remove KEY, returning it to the broker default (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
    },
}

/// Runs a topic command, writing its report to `out`.
pub fn run(command: &TopicCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cluster = Cluster::connect(&command.connect.bootstrap_server)?;
    let text = match &command.action {
        TopicAction::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => create(
            &mut cluster,
            name,
            *partitions,
            *replication_factor,
            configs,
        )?,
        TopicAction::List { all } => list(&mut cluster, *all)?,
        TopicAction::Describe {
            name,
            all_configs,
            metrics,
        } => {
            let mut text = describe(&mut cluster, name, *all_configs)?;
            if !metrics.is_empty() {
                text.push('\n');
                text.push_str(&cleaner_state(name, metrics)?);
            }
            text
        }
        TopicAction::Delete { name } => delete(&mut cluster, name)?,
        TopicAction::AlterConfig { name, set, delete } => {
            alter_config(&mut cluster, name, set, delete)?
        }
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

fn create(
    cluster: &mut Cluster,
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> Result<String, CliError> {
    let topic = CreatableTopic::default()
        .with_name(TopicName(str_bytes(name)))
        .with_num_partitions(partitions.unwrap_or(-1))
        .with_replication_factor(replication_factor.unwrap_or(-1))
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(str_bytes(k))
                        .with_value(Some(str_bytes(v)))
                })
                .collect(),
        );
    let (response, _) = cluster.bootstrap().call(|_| {
        CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(BROKER_OPERATION_TIMEOUT_MS)
    })?;
    let result = super::first(
        response.topics,
        || format!("creating topic {name}"),
        "CreateTopics response",
    )?;
    CliError::check(result.error_code, result.error_message.as_ref(), || {
        format!("creating topic {name}")
    })?;
    let partitions = partitions.map_or("default".to_owned(), |p| p.to_string());
    let replication = replication_factor.map_or("default".to_owned(), |r| r.to_string());
    Ok(format!(
        "Created topic {name} (partitions: {partitions}, replication factor: {replication}).\n"
    ))
}

fn list(cluster: &mut Cluster, all: bool) -> Result<String, CliError> {
    let metadata = cluster.metadata(None)?;
    let mut rows: Vec<(String, usize, usize, bool)> = metadata
        .topics
        .iter()
        .filter(|t| all || !t.is_internal)
        .filter_map(|t| {
            let name = t.name.as_ref()?.0.to_string();
            let replication = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
            Some((name, t.partitions.len(), replication, t.is_internal))
        })
        .collect();
    rows.sort();
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION", "INTERNAL"]);
    for (name, partitions, replication, internal) in rows {
        table.row(vec![
            name,
            partitions.to_string(),
            replication.to_string(),
            internal.to_string(),
        ]);
    }
    Ok(table.render())
}

fn describe(cluster: &mut Cluster, name: &str, all_configs: bool) -> Result<String, CliError> {
    let metadata = cluster.metadata(Some(&[name.to_owned()]))?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
        .ok_or_else(|| CliError::NotFound(format!("topic {name} does not exist")))?;
    if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return Err(CliError::NotFound(format!("topic {name} does not exist")));
    }
    CliError::check(topic.error_code, None, || {
        format!("describing topic {name}")
    })?;
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition_index);
    let replication = partitions.first().map_or(0, |p| p.replica_nodes.len());
    let mut text = format!(
        "Topic: {name}  Id: {}  Partitions: {}  ReplicationFactor: {replication}  Internal: {}\n\n",
        topic.topic_id,
        partitions.len(),
        topic.is_internal
    );

    let keys: Vec<(String, i32)> = partitions
        .iter()
        .map(|p| (name.to_owned(), p.partition_index))
        .collect();
    let earliest = cluster.list_offsets(&keys, EARLIEST_TIMESTAMP)?;
    let latest = cluster.list_offsets(&keys, LATEST_TIMESTAMP)?;
    let show = |offsets: &PartitionOffsets, key: &(String, i32)| match offsets.get(key) {
        Some(Ok(offset)) => offset.to_string(),
        Some(Err(code)) => format!("error:{}", error_name(*code)),
        None => "-".to_owned(),
    };
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "EPOCH",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "HIGH-WATERMARK",
    ]);
    for (partition, key) in partitions.iter().zip(&keys) {
        table.row(vec![
            partition.partition_index.to_string(),
            partition.leader_id.0.to_string(),
            partition.leader_epoch.to_string(),
            join(
                &partition
                    .replica_nodes
                    .iter()
                    .map(|b| b.0)
                    .collect::<Vec<_>>(),
            ),
            join(&partition.isr_nodes.iter().map(|b| b.0).collect::<Vec<_>>()),
            show(&earliest, key),
            show(&latest, key),
        ]);
    }
    text.push_str(&table.render());
    text.push('\n');

    match describe_configs(cluster.bootstrap(), name) {
        Ok(configs) => {
            let mut table = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
            for config in configs
                .iter()
                .filter(|c| all_configs || c.config_source != CONFIG_SOURCE_DEFAULT)
            {
                let value = if config.is_sensitive {
                    "(sensitive)".to_owned()
                } else {
                    config
                        .value
                        .as_ref()
                        .map_or("(null)".to_owned(), |v| v.to_string())
                };
                table.row(vec![
                    config.name.to_string(),
                    value,
                    config_source_name(config.config_source).to_owned(),
                ]);
            }
            if table.is_empty() {
                text.push_str("Configs: none set on the topic (--all-configs shows defaults)\n");
            } else {
                text.push_str(&table.render());
            }
        }
        Err(CliError::Unsupported(why)) => {
            text.push_str(&format!("Configs: not available ({why})\n"));
        }
        Err(error) => return Err(error),
    }
    Ok(text)
}

/// Every config of topic `name`, sorted by key; `Unsupported` if the broker lacks
/// DescribeConfigs.
fn describe_configs(
    connection: &mut Connection,
    name: &str,
) -> Result<Vec<DescribeConfigsResourceResult>, CliError> {
    let (response, _) = connection.call(|_| {
        DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(str_bytes(name))
                .with_configuration_keys(None),
        ])
    })?;
    let result = super::first(
        response.results,
        || format!("describing configs of topic {name}"),
        "DescribeConfigs response",
    )?;
    CliError::check(result.error_code, result.error_message.as_ref(), || {
        format!("describing configs of topic {name}")
    })?;
    let mut configs = result.configs;
    configs.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(configs)
}

fn config_source_name(source: i8) -> &'static str {
    match source {
        CONFIG_SOURCE_DYNAMIC_TOPIC => "topic",
        2 => "dynamic-broker",
        3 => "dynamic-default-broker",
        4 => "static-broker",
        CONFIG_SOURCE_DEFAULT => "default",
        6 => "dynamic-broker-logger",
        7 => "client-metrics",
        8 => "group",
        _ => "unknown",
    }
}

fn delete(cluster: &mut Cluster, name: &str) -> Result<String, CliError> {
    let (response, _) = cluster.bootstrap().call(|version| {
        let request = DeleteTopicsRequest::default().with_timeout_ms(BROKER_OPERATION_TIMEOUT_MS);
        // v6 names topics in `topics` (by name or id); earlier versions in `topic_names`.
        if version >= 6 {
            request.with_topics(vec![
                DeleteTopicState::default().with_name(Some(TopicName(str_bytes(name)))),
            ])
        } else {
            request.with_topic_names(vec![TopicName(str_bytes(name))])
        }
    })?;
    let result = super::first(
        response.responses,
        || format!("deleting topic {name}"),
        "DeleteTopics response",
    )?;
    if result.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return Err(CliError::NotFound(format!("topic {name} does not exist")));
    }
    CliError::check(result.error_code, result.error_message.as_ref(), || {
        format!("deleting topic {name}")
    })?;
    Ok(format!("Deleted topic {name}.\n"))
}

fn alter_config(
    cluster: &mut Cluster,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
) -> Result<String, CliError> {
    if set.is_empty() && delete.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --set KEY=VALUE and/or --delete KEY".into(),
        ));
    }
    let connection = cluster.bootstrap();
    let context = || format!("altering configs of topic {name}");
    let api = if connection.supports::<IncrementalAlterConfigsRequest>() {
        use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let configs = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(str_bytes(k))
                    .with_config_operation(CONFIG_OPERATION_SET)
                    .with_value(Some(str_bytes(v)))
            })
            .chain(delete.iter().map(|k| {
                AlterableConfig::default()
                    .with_name(str_bytes(k))
                    .with_config_operation(CONFIG_OPERATION_DELETE)
                    .with_value(None)
            }))
            .collect();
        let (response, _) = connection.call(|_| {
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TYPE_TOPIC)
                    .with_resource_name(str_bytes(name))
                    .with_configs(configs),
            ])
        })?;
        for result in &response.responses {
            CliError::check(result.error_code, result.error_message.as_ref(), context)?;
        }
        "IncrementalAlterConfigs"
    } else if connection.supports::<AlterConfigsRequest>() {
        // AlterConfigs replaces the topic's whole dynamic config, so the current one is read
        // first and edited; without DescribeConfigs that would silently drop settings.
        let current = match describe_configs(connection, name) {
            Ok(configs) => configs,
            Err(CliError::Unsupported(why)) => {
                return Err(CliError::Unsupported(format!(
                    "the broker lacks IncrementalAlterConfigs, and AlterConfigs needs the \
                     current configs, but {why}"
                )));
            }
            Err(error) => return Err(error),
        };
        let mut configs: BTreeMap<String, String> = current
            .iter()
            .filter(|c| c.config_source == CONFIG_SOURCE_DYNAMIC_TOPIC && !c.is_sensitive)
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        for key in delete {
            configs.remove(key);
        }
        for (key, value) in set {
            configs.insert(key.clone(), value.clone());
        }
        use alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let (response, _) = connection.call(|_| {
            AlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TYPE_TOPIC)
                    .with_resource_name(str_bytes(name))
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                AlterableConfig::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(v)))
                            })
                            .collect(),
                    ),
            ])
        })?;
        for result in &response.responses {
            CliError::check(result.error_code, result.error_message.as_ref(), context)?;
        }
        "AlterConfigs"
    } else {
        return Err(CliError::Unsupported(format!(
            "the broker at {} supports neither IncrementalAlterConfigs nor AlterConfigs: \
             topic configs cannot be changed there",
            connection.address()
        )));
    };
    let mut text = format!("Altered configs of topic {name} ({api}):\n");
    for (key, value) in set {
        text.push_str(&format!("  set {key}={value}\n"));
    }
    for key in delete {
        text.push_str(&format!("  deleted {key}\n"));
    }
    Ok(text)
}

/// The log cleaner's state of `topic`'s compacted partitions, from the brokers' `/metrics`.
fn cleaner_state(topic: &str, endpoints: &[String]) -> Result<String, CliError> {
    use std::collections::BTreeMap;
    // partition -> metric name -> value
    let mut rows: BTreeMap<i32, BTreeMap<String, String>> = BTreeMap::new();
    let topic_label = format!("topic=\"{topic}\"");
    for endpoint in endpoints {
        let body = http_get_metrics(endpoint)?;
        for line in body
            .lines()
            .filter(|l| l.starts_with("sluice_log_cleaner_"))
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if !series.contains(&topic_label) {
                continue;
            }
            let name = series.split('{').next().unwrap_or_default().to_owned();
            let partition = series
                .split("partition=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(p) = partition {
                rows.entry(p).or_default().insert(name, value.to_owned());
            }
        }
    }
    if rows.is_empty() {
        return Ok(format!(
            "Log cleaner: no compacted partition of {topic} on {}\n",
            endpoints.join(", ")
        ));
    }
    let mut table = Table::new(&[
        "PARTITION",
        "DIRTY-RATIO",
        "BACKLOG-BYTES",
        "CLEANED-BELOW",
        "PASSES",
        "FAILURES",
        "CLEANED-BYTES",
        "LAST-PASS",
    ]);
    let now_ms = {
        use crate::storage::io::Clock;
        crate::runtime::SystemClock.wall_ms()
    };
    for (p, m) in rows {
        let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "-".to_owned());
        let last = match get("sluice_log_cleaner_last_pass_time_ms").parse::<f64>() {
            Ok(t) if t >= 0.0 => format!("{:.1}s ago", (now_ms as f64 - t) / 1000.0),
            _ => "never".to_owned(),
        };
        table.row(vec![
            p.to_string(),
            get("sluice_log_cleaner_dirty_ratio"),
            get("sluice_log_cleaner_dirty_bytes"),
            get("sluice_log_cleaner_checkpoint"),
            get("sluice_log_cleaner_passes_total"),
            get("sluice_log_cleaner_failures_total"),
            get("sluice_log_cleaner_read_bytes_total"),
            last,
        ]);
    }
    Ok(format!("Log cleaner:\n{}", table.render()))
}

/// `GET /metrics` from `endpoint` (HOST:PORT), its body.
fn http_get_metrics(endpoint: &str) -> Result<String, CliError> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let io = |source: std::io::Error| CliError::Io {
        context: format!("reading the metrics of {endpoint}"),
        source,
    };
    let addr = endpoint
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| CliError::NotFound(format!("no address for {endpoint}")))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)).map_err(io)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(io)?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(CliError::NotFound(format!(
            "{endpoint} did not answer GET /metrics with 200"
        ))),
    }
}
