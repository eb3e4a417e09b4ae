//! DescribeConfigs (key 32), versions 1-4: topic configs (the obeyed ones
//! with their effective value and source: topic override, dynamic broker
//! config, static broker setting or default; then any other stored
//! override) and broker configs (the dynamic ones, then a few read-only
//! static settings). Synonyms when asked: a topic override is followed by
//! the broker default it overrides. Answered from this shard's catalog copy.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::controller::{
    ConfigEntry, ConfigSource, OBEYED_TOPIC_CONFIGS, RESOURCE_BROKER, RESOURCE_TOPIC,
    broker_config_value, topic_config_entries,
};

/// Kafka's ConfigEntry types (v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_DOUBLE: i8 = 6;

/// Configs of one resource: (entry, its synonyms, read only).
type Entries = Vec<(ConfigEntry, Vec<ConfigEntry>, bool)>;

fn config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" | "log.cleanup.policy" | "listeners" | "log.dirs" => TYPE_LIST,
        "max.message.bytes" | "segment.bytes" | "message.max.bytes" | "log.segment.bytes"
        | "broker.id" | "num.partitions" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        "min.cleanable.dirty.ratio" | "log.cleaner.min.cleanable.ratio" => TYPE_DOUBLE,
        "message.timestamp.type" | "log.message.timestamp.type" => TYPE_STRING,
        n if n.ends_with(".ms") || n.ends_with(".bytes") => TYPE_LONG,
        _ => TYPE_STRING,
    }
}

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeConfigsRequest,
) -> Result<DescribeConfigsResponse, HandlerError> {
    let shard = &ctx.shard;
    let config = &shard.config;
    let catalog = shard.catalog();
    let synonyms = req.include_synonyms;
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            // (entry, synonyms, read_only)
            let entries: Result<Entries, (ResponseError, String)> = match r.resource_type {
                RESOURCE_TOPIC => match catalog.get(&name) {
                    Some(meta) => Ok(topic_config_entries(config, &catalog, meta)
                        .into_iter()
                        .map(|(e, s)| (e, s, false))
                        .collect()),
                    None => Err((
                        ResponseError::UnknownTopicOrPartition,
                        format!("Topic {name} does not exist"),
                    )),
                },
                RESOURCE_BROKER if name.is_empty() || name == config.node_id.to_string() => {
                    Ok(broker_entries(ctx))
                }
                RESOURCE_BROKER => Err((
                    ResponseError::InvalidRequest,
                    format!("Unknown broker {name}"),
                )),
                t => Err((
                    ResponseError::InvalidRequest,
                    format!("Unsupported resource type {t}"),
                )),
            };
            match entries {
                Err((e, message)) => base
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(message))),
                Ok(entries) => {
                    // A null or empty key list means every config (as Kafka).
                    let configs = entries
                        .into_iter()
                        .filter(|(e, _, _)| {
                            r.configuration_keys.as_ref().is_none_or(|keys| {
                                keys.is_empty() || keys.iter().any(|k| k.as_str() == e.name)
                            })
                        })
                        .map(|(e, syn, read_only)| {
                            let syn = if synonyms {
                                syn.into_iter()
                                    .map(|s| {
                                        DescribeConfigsSynonym::default()
                                            .with_name(str_bytes(s.name))
                                            .with_value(Some(str_bytes(s.value)))
                                            .with_source(s.source as i8)
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            DescribeConfigsResourceResult::default()
                                .with_config_type(config_type(&e.name))
                                .with_name(str_bytes(e.name))
                                .with_value(Some(str_bytes(e.value)))
                                .with_read_only(read_only)
                                .with_config_source(e.source as i8)
                                .with_synonyms(syn)
                        })
                        .collect();
                    base.with_configs(configs)
                }
            }
        })
        .collect();
    Ok(DescribeConfigsResponse::default().with_results(results))
}

/// The broker's configs: the dynamic ones (changeable with AlterConfigs),
/// then read-only static settings.
fn broker_entries(ctx: &RequestContext) -> Entries {
    let config = &ctx.shard.config;
    let catalog = ctx.shard.catalog();
    let mut out: Entries = OBEYED_TOPIC_CONFIGS
        .iter()
        .map(|(_, broker_key)| {
            let e = broker_config_value(config, &catalog, broker_key).expect("known broker key");
            (e.clone(), vec![e], false)
        })
        .collect();
    let listeners = config
        .advertised()
        .map(|(h, p)| format!("PLAINTEXT://{h}:{p}"))
        .unwrap_or_default();
    let statics = [
        ("broker.id", config.node_id.to_string()),
        ("num.partitions", config.num_partitions.to_string()),
        (
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
        ),
        ("log.dirs", config.data_dir.display().to_string()),
        ("advertised.listeners", listeners),
        (
            "log.retention.check.interval.ms",
            config.retention_check_interval_ms.to_string(),
        ),
    ];
    for (name, value) in statics {
        let e = ConfigEntry {
            name: name.to_string(),
            value,
            source: ConfigSource::StaticBroker,
        };
        out.push((e.clone(), vec![e], true));
    }
    out
}
