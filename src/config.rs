//! Broker configuration: built-in defaults, overridden by a TOML file, then by
//! command-line flags. Every setting carries its description, default and
//! bounds in [`SETTINGS`]; [`Config::validate`] enforces the bounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::constants;
use crate::storage::io::SyncScope;
use crate::storage::{FlushPolicy, LogConfig};

/// Configuration errors, reported before any shard starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("setting `{name}` = {value} is out of bounds: {bounds}")]
    OutOfBounds {
        name: &'static str,
        value: String,
        bounds: &'static str,
    },
    #[error("setting `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Description, default and bounds of one setting (printed by docs/tools).
pub struct Setting {
    pub name: &'static str,
    pub description: &'static str,
    pub default: &'static str,
    pub bounds: &'static str,
}

/// Every setting of [`Config`], in file order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "data_dir",
        description: "Directory holding partition logs and cluster metadata",
        default: "./data",
        bounds: "a writable directory",
    },
    Setting {
        name: "listen",
        description: "Address every shard binds (SO_REUSEPORT) for Kafka clients",
        default: "0.0.0.0:9092",
        bounds: "HOST:PORT",
    },
    Setting {
        name: "advertised_listener",
        description: "HOST:PORT clients are told to connect to in Metadata",
        default: "listen, with 0.0.0.0 replaced by 127.0.0.1",
        bounds: "HOST:PORT",
    },
    Setting {
        name: "metrics_listen",
        description: "Address of the Prometheus endpoint (GET /metrics, served by shard 0); empty: no endpoint. If it cannot be bound the broker logs an error and runs without it",
        default: "0.0.0.0:9644",
        bounds: "HOST:PORT or empty",
    },
    Setting {
        name: "shards",
        description: "Number of shards (executor threads, one per core)",
        default: "number of available cores",
        bounds: "1..=1024",
    },
    Setting {
        name: "node_id",
        description: "Broker id reported in Metadata",
        default: "0",
        bounds: "0..=2147483647",
    },
    Setting {
        name: "seed_servers",
        description: "The cluster's voters, ID@HOST:PORT of each broker's RPC listener, comma-separated, the same list on every broker; empty: a one-node broker with no replication",
        default: "",
        bounds: "empty or ID@HOST:PORT,... with distinct ids > 0 including node_id",
    },
    Setting {
        name: "rpc_listen",
        description: "Address every shard binds (SO_REUSEPORT) for broker-to-broker traffic (Raft); required with seed_servers",
        default: "",
        bounds: "HOST:PORT or empty",
    },
    Setting {
        name: "advertised_rpc_listener",
        description: "HOST:PORT other brokers reach this broker's RPC listener at, when it differs from its seed_servers entry",
        default: "this broker's seed_servers entry",
        bounds: "HOST:PORT",
    },
    Setting {
        name: "raft_tick_ms",
        description: "Raft's clock: heartbeats every 2 ticks, elections after raft_election_ticks to twice that",
        default: "20",
        bounds: "1..=1000",
    },
    Setting {
        name: "raft_election_ticks",
        description: "Ticks without a leader's word before a replica campaigns (the timeout is drawn from this to twice this)",
        default: "10",
        bounds: "3..=1000",
    },
    Setting {
        name: "leader_balance_interval_ms",
        description: "How often a partition's leader checks whether its preferred replica (the first of its replica list) is in sync and hands the leadership over to it, so leaders spread over the brokers as assigned (Kafka's auto.leader.rebalance.enable); 0: never",
        default: "10000",
        bounds: "0..=3600000",
    },
    Setting {
        name: "replica_lag_time_max_ms",
        description: "A follower that has not caught up with its leader's log for this long leaves the in-sync replicas Metadata reports (replica.lag.time.max.ms); min.insync.replicas is checked against the replicas in sync right now (heard from within the election timeout and close to the leader's log)",
        default: "30000",
        bounds: "100..=3600000",
    },
    Setting {
        name: "default_replication_factor",
        description: "Replicas of a topic created with replication factor -1 (default.replication.factor); 0: min(3, brokers)",
        default: "0",
        bounds: "0..=16",
    },
    Setting {
        name: "auto_create_topics",
        description: "Create unknown topics named in Metadata requests (auto.create.topics.enable)",
        default: "true",
        bounds: "true|false",
    },
    Setting {
        name: "num_partitions",
        description: "Partitions of auto-created topics and of CreateTopics with -1 (num.partitions)",
        default: "1",
        bounds: "1..=10000",
    },
    Setting {
        name: "segment_bytes",
        description: "Roll the active segment at this size (segment.bytes)",
        default: "1073741824",
        bounds: "4096..=4294967295",
    },
    Setting {
        name: "segment_ms",
        description: "Roll the active segment at this age (segment.ms)",
        default: "604800000",
        bounds: ">= 1000",
    },
    Setting {
        name: "retention_ms",
        description: "Delete a sealed segment once its newest record is this old (log.retention.ms; -1: never)",
        default: "604800000",
        bounds: ">= -1",
    },
    Setting {
        name: "retention_bytes",
        description: "Delete the oldest sealed segments while a partition is larger (log.retention.bytes; -1: no limit)",
        default: "-1",
        bounds: ">= -1",
    },
    Setting {
        name: "retention_check_interval_ms",
        description: "Period of each shard's retention pass (log.retention.check.interval.ms)",
        default: "5000",
        bounds: "100..=3600000",
    },
    Setting {
        name: "log_cleaner_enable",
        description: "Run the log cleaner: each shard compacts its partitions whose cleanup.policy contains compact (log.cleaner.enable)",
        default: "true",
        bounds: "true or false",
    },
    Setting {
        name: "log_cleaner_dedupe_buffer_bytes",
        description: "Memory of each shard's cleaner key map (log.cleaner.dedupe.buffer.size, per shard): 32 bytes a key; a dirty log with more keys is cleaned in several passes",
        default: "33554432",
        bounds: "65536..=4294967296",
    },
    Setting {
        name: "log_cleaner_io_max_bytes_per_sec",
        description: "Disk bandwidth (read plus written) each shard's cleaner may use (log.cleaner.io.max.bytes.per.second, per shard); 0: no bound",
        default: "104857600",
        bounds: ">= 0",
    },
    Setting {
        name: "log_cleaner_backoff_ms",
        description: "How long a shard's cleaner sleeps when no log needs cleaning (log.cleaner.backoff.ms)",
        default: "15000",
        bounds: "10..=3600000",
    },
    Setting {
        name: "flush_interval_ms",
        description: "0: fdatasync before acks=all is answered and before data is visible; N: fdatasync at most every N ms",
        default: "0",
        bounds: "0..=60000",
    },
    Setting {
        name: "fsync_scope",
        description: "How writes are made durable: \"filesystem\" (one syncfs of the data directory's file system per group commit, shared by every partition of a shard; needs Linux 5.8+, else falls back to file; give the data directory its own file system) or \"file\" (one fdatasync per partition file written)",
        default: "filesystem",
        bounds: "filesystem | file",
    },
    Setting {
        name: "journal",
        description: "Make each group commit durable with one write and one fdatasync of the shard's journal (all its partitions' batches of the round), then write the segment files behind it without a sync per round; needs fsync_scope = filesystem and flush_interval_ms = 0, else unused",
        default: "true",
        bounds: "true | false",
    },
    Setting {
        name: "journal_file_bytes",
        description: "Size of a shard journal file; a full one asks every partition for what waits behind it and is deleted once all of it is in the segments",
        default: "67108864",
        bounds: "1048576..=4294967296",
    },
    Setting {
        name: "max_message_bytes",
        description: "Largest record batch accepted (message.max.bytes)",
        default: "1048588",
        bounds: "1024..=104857600",
    },
    Setting {
        name: "max_request_bytes",
        description: "Largest request frame accepted (socket.request.max.bytes)",
        default: "104857600",
        bounds: "1024..=1073741824",
    },
    Setting {
        name: "max_connections_per_shard",
        description: "Connections one shard serves at once; more are closed on accept",
        default: "4096",
        bounds: "1..=1000000",
    },
    Setting {
        name: "spin_before_park_us",
        description: "Busy-poll this long before an idle shard sleeps (cross-shard latency vs idle CPU)",
        default: "20",
        bounds: "0..=10000",
    },
    Setting {
        name: "io_memory_bytes",
        description: "Memory each io_uring ring registers for DMA buffers (3 rings per shard)",
        default: "4194304",
        bounds: "524288..=1073741824",
    },
    Setting {
        name: "offsets_topic_partitions",
        description: "Partitions of __consumer_offsets when it is created (offsets.topic.num.partitions); a group's coordinator is the shard owning its partition",
        default: "16",
        bounds: "1..=1000",
    },
    Setting {
        name: "offsets_topic_replication_factor",
        description: "In a cluster, replicas of each __consumer_offsets partition (offsets.topic.replication.factor), at most the number of seed servers; the topic is created once that many brokers have registered, and FindCoordinator answers COORDINATOR_NOT_AVAILABLE until then",
        default: "3",
        bounds: "1..=16",
    },
    Setting {
        name: "offsets_topic_segment_bytes",
        description: "Segment size of __consumer_offsets, set as its segment.bytes when the topic is created (offsets.topic.segment.bytes; AlterConfigs changes it later). Once a partition of it has older segments holding at least twice the bytes of its live offsets, the coordinator re-appends the live offsets and deletes those segments, so the topic and the startup replay stay bounded",
        default: "104857600",
        bounds: "4096..=4294967295",
    },
    Setting {
        name: "transaction_state_partitions",
        description: "Partitions of __transaction_state when it is created (transaction.state.log.num.partitions); a transactional id's coordinator is the shard owning its partition",
        default: "16",
        bounds: "1..=1000",
    },
    Setting {
        name: "transaction_max_timeout_ms",
        description: "Largest transaction.timeout.ms a producer may ask for (transaction.max.timeout.ms); InitProducerId with a larger one gets INVALID_TRANSACTION_TIMEOUT",
        default: "900000",
        bounds: "1000..=2147483647",
    },
    Setting {
        name: "transactional_id_expiration_ms",
        description: "A transactional id with no transaction open for this long is forgotten (transactional.id.expiration.ms): its state is tombstoned in __transaction_state; a producer using it again gets a new producer id",
        default: "604800000",
        bounds: "1000..=31536000000",
    },
    Setting {
        name: "transaction_abort_interval_ms",
        description: "How often the transaction coordinator aborts transactions open longer than their timeout and finishes prepared ones whose markers are not all written (transaction.abort.timed.out.transaction.cleanup.interval.ms)",
        default: "10000",
        bounds: "100..=3600000",
    },
    Setting {
        name: "group_initial_rebalance_delay_ms",
        description: "How long the first rebalance of an empty group waits for more members (group.initial.rebalance.delay.ms)",
        default: "3000",
        bounds: "0..=300000",
    },
    Setting {
        name: "group_min_session_timeout_ms",
        description: "Smallest session timeout a group member may ask for (group.min.session.timeout.ms)",
        default: "6000",
        bounds: "1..=group_max_session_timeout_ms",
    },
    Setting {
        name: "group_max_session_timeout_ms",
        description: "Largest session timeout a group member may ask for (group.max.session.timeout.ms)",
        default: "1800000",
        bounds: "group_min_session_timeout_ms..=86400000",
    },
    Setting {
        name: "log_level",
        description: "tracing filter for the log on stderr, e.g. \"info\", \"debug\", \"info,sluice::storage=trace\"; unset: RUST_LOG, else info",
        default: "RUST_LOG, else info",
        bounds: "a tracing-subscriber EnvFilter directive",
    },
    Setting {
        name: "log_json",
        description: "Log one JSON object per line instead of text lines",
        default: "false",
        bounds: "true|false",
    },
];

/// The broker's configuration. Field docs mirror [`SETTINGS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertised_listener: Option<String>,
    /// Empty disables the endpoint; see [`Config::metrics_addr`].
    pub metrics_listen: String,
    pub shards: Option<usize>,
    pub node_id: i32,
    pub seed_servers: String,
    pub rpc_listen: String,
    pub advertised_rpc_listener: Option<String>,
    pub raft_tick_ms: u64,
    pub raft_election_ticks: usize,
    pub leader_balance_interval_ms: u64,
    pub replica_lag_time_max_ms: u64,
    pub default_replication_factor: i16,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub retention_check_interval_ms: u64,
    pub log_cleaner_enable: bool,
    pub log_cleaner_dedupe_buffer_bytes: u64,
    pub log_cleaner_io_max_bytes_per_sec: u64,
    pub log_cleaner_backoff_ms: u64,
    pub flush_interval_ms: u64,
    pub fsync_scope: String,
    pub journal: bool,
    pub journal_file_bytes: u64,
    pub max_message_bytes: usize,
    pub max_request_bytes: usize,
    pub max_connections_per_shard: usize,
    pub spin_before_park_us: u64,
    pub io_memory_bytes: usize,
    pub offsets_topic_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: u64,
    pub transaction_state_partitions: i32,
    pub transaction_max_timeout_ms: i32,
    pub transaction_abort_interval_ms: u64,
    pub transactional_id_expiration_ms: u64,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// None: `RUST_LOG`, else `info`; see [`Config::log_filter`].
    pub log_level: Option<String>,
    pub log_json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            listen: "0.0.0.0:9092".parse().expect("static address"),
            advertised_listener: None,
            metrics_listen: "0.0.0.0:9644".to_string(),
            shards: None,
            node_id: 0,
            seed_servers: String::new(),
            rpc_listen: String::new(),
            advertised_rpc_listener: None,
            raft_tick_ms: 20,
            raft_election_ticks: 10,
            leader_balance_interval_ms: 10_000,
            replica_lag_time_max_ms: 30_000,
            default_replication_factor: 0,
            auto_create_topics: true,
            num_partitions: 1,
            segment_bytes: constants::SEGMENT_BYTES_DEFAULT,
            segment_ms: constants::SEGMENT_MS_DEFAULT,
            retention_ms: constants::RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            retention_check_interval_ms: constants::RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            log_cleaner_enable: true,
            log_cleaner_dedupe_buffer_bytes: 32 << 20,
            log_cleaner_io_max_bytes_per_sec: 100 << 20,
            log_cleaner_backoff_ms: 15_000,
            flush_interval_ms: 0,
            fsync_scope: "filesystem".to_string(),
            journal: true,
            journal_file_bytes: 64 << 20,
            max_message_bytes: constants::MESSAGE_BYTES_MAX_DEFAULT,
            max_request_bytes: constants::REQUEST_BYTES_MAX_DEFAULT,
            max_connections_per_shard: constants::CONNECTIONS_PER_SHARD_MAX_DEFAULT,
            spin_before_park_us: 20,
            io_memory_bytes: constants::IO_MEMORY_BYTES_PER_SHARD,
            offsets_topic_partitions: constants::OFFSETS_TOPIC_PARTITIONS_DEFAULT,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: constants::OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT,
            transaction_state_partitions: 16,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_interval_ms: 10_000,
            transactional_id_expiration_ms: 604_800_000,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            log_level: None,
            log_json: false,
        }
    }
}

fn check<T: PartialOrd + ToString>(
    name: &'static str,
    value: T,
    min: T,
    max: T,
    bounds: &'static str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfBounds {
            name,
            value: value.to_string(),
            bounds,
        });
    }
    Ok(())
}

impl Config {
    /// Load a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Check every bound in [`SETTINGS`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = self.shards {
            check("shards", s, 1, 1024, "1..=1024")?;
        }
        check("node_id", self.node_id, 0, i32::MAX, "0..=2147483647")?;
        check(
            "num_partitions",
            self.num_partitions,
            1,
            constants::PARTITIONS_PER_TOPIC_MAX,
            "1..=10000",
        )?;
        check(
            "segment_bytes",
            self.segment_bytes,
            4096,
            u64::from(u32::MAX),
            "4096..=4294967295",
        )?;
        check("segment_ms", self.segment_ms, 1000, u64::MAX, ">= 1000")?;
        check("retention_ms", self.retention_ms, -1, i64::MAX, ">= -1")?;
        check(
            "retention_bytes",
            self.retention_bytes,
            -1,
            i64::MAX,
            ">= -1",
        )?;
        check(
            "retention_check_interval_ms",
            self.retention_check_interval_ms,
            100,
            3_600_000,
            "100..=3600000",
        )?;
        check(
            "log_cleaner_dedupe_buffer_bytes",
            self.log_cleaner_dedupe_buffer_bytes,
            65_536,
            4 << 30,
            "65536..=4294967296",
        )?;
        check(
            "log_cleaner_backoff_ms",
            self.log_cleaner_backoff_ms,
            10,
            3_600_000,
            "10..=3600000",
        )?;
        check(
            "flush_interval_ms",
            self.flush_interval_ms,
            0,
            60_000,
            "0..=60000",
        )?;
        check(
            "journal_file_bytes",
            self.journal_file_bytes,
            1 << 20,
            4 << 30,
            "1048576..=4294967296",
        )?;
        check(
            "max_message_bytes",
            self.max_message_bytes,
            1024,
            100 * 1024 * 1024,
            "1024..=104857600",
        )?;
        check(
            "max_request_bytes",
            self.max_request_bytes,
            1024,
            1 << 30,
            "1024..=1073741824",
        )?;
        check(
            "max_connections_per_shard",
            self.max_connections_per_shard,
            1,
            1_000_000,
            "1..=1000000",
        )?;
        check(
            "spin_before_park_us",
            self.spin_before_park_us,
            0,
            10_000,
            "0..=10000",
        )?;
        check(
            "io_memory_bytes",
            self.io_memory_bytes,
            512 * 1024,
            1 << 30,
            "524288..=1073741824",
        )?;
        check(
            "offsets_topic_partitions",
            self.offsets_topic_partitions,
            1,
            1000,
            "1..=1000",
        )?;
        check(
            "offsets_topic_replication_factor",
            self.offsets_topic_replication_factor,
            1,
            16,
            "1..=16",
        )?;
        check(
            "offsets_topic_segment_bytes",
            self.offsets_topic_segment_bytes,
            4096,
            u64::from(u32::MAX),
            "4096..=4294967295",
        )?;
        check(
            "transaction_state_partitions",
            self.transaction_state_partitions,
            1,
            1000,
            "1..=1000",
        )?;
        check(
            "transaction_max_timeout_ms",
            self.transaction_max_timeout_ms,
            1000,
            i32::MAX,
            "1000..=2147483647",
        )?;
        check(
            "transaction_abort_interval_ms",
            self.transaction_abort_interval_ms,
            100,
            3_600_000,
            "100..=3600000",
        )?;
        check(
            "transactional_id_expiration_ms",
            self.transactional_id_expiration_ms,
            1000,
            31_536_000_000,
            "1000..=31536000000",
        )?;
        check(
            "group_initial_rebalance_delay_ms",
            self.group_initial_rebalance_delay_ms,
            0,
            300_000,
            "0..=300000",
        )?;
        check(
            "group_max_session_timeout_ms",
            self.group_max_session_timeout_ms,
            1,
            86_400_000,
            "1..=86400000",
        )?;
        check(
            "group_min_session_timeout_ms",
            self.group_min_session_timeout_ms,
            1,
            self.group_max_session_timeout_ms,
            "1..=group_max_session_timeout_ms",
        )?;
        self.advertised()?;
        check("raft_tick_ms", self.raft_tick_ms, 1, 1000, "1..=1000")?;
        check(
            "raft_election_ticks",
            self.raft_election_ticks,
            3,
            1000,
            "3..=1000",
        )?;
        check(
            "leader_balance_interval_ms",
            self.leader_balance_interval_ms,
            0,
            3_600_000,
            "0..=3600000",
        )?;
        check(
            "replica_lag_time_max_ms",
            self.replica_lag_time_max_ms,
            100,
            3_600_000,
            "100..=3600000",
        )?;
        check(
            "default_replication_factor",
            self.default_replication_factor,
            0,
            16,
            "0..=16",
        )?;
        self.cluster()?;
        self.metrics_addr()?;
        self.log_filter()?;
        self.sync_scope()?;
        Ok(())
    }

    /// `fsync_scope` as the storage's [`SyncScope`].
    pub fn sync_scope(&self) -> Result<SyncScope, ConfigError> {
        SyncScope::parse(self.fsync_scope.trim()).ok_or_else(|| ConfigError::Invalid {
            name: "fsync_scope",
            reason: format!("`{}` is not \"filesystem\" or \"file\"", self.fsync_scope),
        })
    }

    /// The log filter: `log_level` when set, else `RUST_LOG` when set and
    /// valid, else `info`.
    pub fn log_filter(&self) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
        use tracing_subscriber::EnvFilter;
        match &self.log_level {
            Some(level) => EnvFilter::try_new(level).map_err(|e| ConfigError::Invalid {
                name: "log_level",
                reason: format!("`{level}` is not a log filter: {e}"),
            }),
            None => {
                Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
            }
        }
    }

    /// The metrics endpoint's address, or None when `metrics_listen` is
    /// empty (disabled).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let s = self.metrics_listen.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| ConfigError::Invalid {
            name: "metrics_listen",
            reason: format!("`{s}` is not HOST:PORT (an IP address and a port) or empty"),
        })
    }

    /// Number of shards to run.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The cluster this broker belongs to, or None for a one-node broker (no `seed_servers`).
    pub fn cluster(&self) -> Result<Option<crate::cluster::seeds::ClusterSpec>, ConfigError> {
        crate::cluster::seeds::ClusterSpec::from_config(self)
    }

    /// The (host, port) advertised to clients in Metadata.
    pub fn advertised(&self) -> Result<(String, i32), ConfigError> {
        match &self.advertised_listener {
            Some(s) => {
                let (host, port) = s.rsplit_once(':').ok_or(ConfigError::Invalid {
                    name: "advertised_listener",
                    reason: format!("`{s}` is not HOST:PORT"),
                })?;
                let port: u16 = port.parse().map_err(|_| ConfigError::Invalid {
                    name: "advertised_listener",
                    reason: format!("bad port in `{s}`"),
                })?;
                Ok((host.trim_matches(['[', ']']).to_string(), i32::from(port)))
            }
            None => {
                let ip = self.listen.ip();
                let host = if ip.is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    ip.to_string()
                };
                Ok((host, i32::from(self.listen.port())))
            }
        }
    }

    /// Storage settings for a partition log (topic configs may override
    /// some of them).
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            max_message_bytes: self.max_message_bytes,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            flush: if self.flush_interval_ms == 0 {
                FlushPolicy::Always
            } else {
                FlushPolicy::Interval(Duration::from_millis(self.flush_interval_ms))
            },
            ..LogConfig::default()
        }
    }

    /// The defaults as a commented TOML document.
    pub fn defaults_toml() -> String {
        let values = toml::Value::try_from(Config::default()).expect("the defaults serialize");
        let mut out = String::from(
            "# Sluice configuration file: every setting with its description, default and\n\
             # bounds. Printed by `sluice config --defaults`; load with `sluice serve --config`.\n\
             # Flags given to `sluice serve` override this file.\n\n",
        );
        for s in SETTINGS {
            out.push_str(&format!(
                "# {}\n# default: {}; bounds: {}\n",
                s.description, s.default, s.bounds
            ));
            // Settings without a value by default (computed at start) stay commented out.
            match values.get(s.name) {
                Some(v) => out.push_str(&format!("{} = {}\n\n", s.name, v)),
                None => out.push_str(&format!("# {} = \n\n", s.name)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(
            Config::default().advertised().unwrap(),
            ("127.0.0.1".to_string(), 9092)
        );
    }

    #[test]
    fn file_overrides_and_bounds() {
        let c: Config = toml::from_str("num_partitions = 8\nshards = 2\n").unwrap();
        assert_eq!(c.num_partitions, 8);
        assert_eq!(c.shard_count(), 2);
        let bad: Config = toml::from_str("num_partitions = 0").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<Config>("no_such_setting = 1").is_err());
    }

    #[test]
    fn metrics_listen_parses_or_disables() {
        let on = Config::default().metrics_addr().unwrap();
        assert_eq!(on, Some("0.0.0.0:9644".parse().unwrap()));
        let off: Config = toml::from_str("metrics_listen = \"\"\n").unwrap();
        assert_eq!(off.metrics_addr().unwrap(), None);
        off.validate().unwrap();
        let bad: Config = toml::from_str("metrics_listen = \"localhost\"\n").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn log_level_is_a_filter() {
        let c: Config =
            toml::from_str("log_level = \"info,sluice::storage=trace\"\nlog_json = true\n")
                .unwrap();
        c.validate().unwrap();
        assert!(c.log_json);
        let bad: Config = toml::from_str("log_level = \"sluice=loud\"\n").unwrap();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                name: "log_level",
                ..
            })
        ));
    }

    #[test]
    fn every_field_is_described() {
        let json = serde_json::to_value(Config::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(
                SETTINGS.iter().any(|s| s.name == key),
                "setting {key} lacks a description"
            );
        }
    }

    #[test]
    fn printed_defaults_load_back_as_the_defaults() {
        let printed = Config::defaults_toml();
        let parsed: Config = toml::from_str(&printed).expect("defaults TOML parses");
        parsed.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
        for s in SETTINGS {
            assert!(printed.contains(s.name), "{} is not printed", s.name);
        }
    }
}
