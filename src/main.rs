//! The `sluice` command: `sluice serve` runs the broker; `sluice topic ...` and
//! `sluice group ...` administer any Kafka-protocol broker (see `sluice::cli`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::config::Config;

#[global_allocator]
static GLOBAL: sluice::alloc::GuardedAlloc = sluice::alloc::GuardedAlloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Kafka-compatible, thread-per-core, io_uring message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (defaults: data in ./data, port 9092, one shard per core).
    Serve(Box<ServeArgs>),
    /// Print the configuration: the defaults with every setting's description and bounds
    /// (`--defaults`), or the effective settings of a file after checking them (`--config FILE`).
    Config(ConfigArgs),
    /// Create, list, describe, delete topics and change their configs.
    Topic(sluice::cli::TopicCommand),
    /// List, describe and delete consumer groups; reset their committed offsets.
    Group(sluice::cli::GroupCommand),
    /// List and describe transactions (`sluice txn list`, `sluice txn describe ID`).
    Txn(sluice::cli::TxnCommand),
    /// The cluster's brokers and the state of its partitions (`sluice cluster status`).
    Cluster(sluice::cli::ClusterCommand),
    /// Check this host's kernel settings for the broker, or apply the wanted ones (tuning/README.md).
    Tune(TuneArgs),
}

/// `sluice tune --check` | `sluice tune --apply [--dry-run]`.
///
/// Exit status: `--check` exits 1 when a finding is at error level (the broker would not start
/// here), or with `--strict` at warn level, and 0 otherwise; `--apply` exits 1 when a change
/// failed (EACCES as non-root, EINVAL), after trying every other change.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["check", "apply"])))]
struct TuneArgs {
    /// Print every setting: tuner, setting, current value, wanted value, severity, note.
    #[arg(long)]
    check: bool,
    /// Change what is not as wanted (needs root), printing the shell command of each change first.
    #[arg(long)]
    apply: bool,
    /// With --apply: print the commands only, change nothing.
    #[arg(long, requires = "apply")]
    dry_run: bool,
    /// With --check: exit 1 on warn-level findings too.
    #[arg(long, requires = "check")]
    strict: bool,
    /// TOML configuration file of the broker; flags override it.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// The broker's data directory; its disk is tuned [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The broker's shard count; shard cores are kept free of IRQs [default: cores].
    #[arg(long)]
    shards: Option<usize>,
}

/// `sluice config --defaults` | `sluice config --config FILE`.
#[derive(clap::Args)]
// `multiple`: SLUICE_CONFIG in the environment must not make `--defaults` an error.
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["defaults", "config"])
))]
struct ConfigArgs {
    /// Print every setting with its description, default and bounds, as a TOML file that
    /// loads back as the defaults (wins over --config).
    #[arg(long)]
    defaults: bool,
    /// Check this TOML file against every bound and print the settings it gives (defaults
    /// filled in); exit 1 if it is invalid.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for partition logs and metadata [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:9092].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HOST:PORT advertised to clients [default: the listen address].
    #[arg(long)]
    advertised_listener: Option<String>,
    /// Address of the Prometheus endpoint GET /metrics, or '' for none [default: 0.0.0.0:9644].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Number of shards (one executor thread per core) [default: cores].
    #[arg(long)]
    shards: Option<usize>,
    /// Broker id reported to clients [default: 0].
    #[arg(long)]
    node_id: Option<i32>,
    /// The cluster's brokers, ID@HOST:PORT of each one's RPC listener, the same list on every
    /// broker [default: none, a one-node broker].
    #[arg(long)]
    seed_servers: Option<String>,
    /// Address for broker-to-broker traffic, required with --seed-servers.
    #[arg(long)]
    rpc_listen: Option<String>,
    /// HOST:PORT other brokers reach this one's RPC listener at [default: its seed entry].
    #[arg(long)]
    advertised_rpc_listener: Option<String>,
    /// Raft's tick in ms [default: 20].
    #[arg(long)]
    raft_tick_ms: Option<u64>,
    /// Ticks before a replica without a leader campaigns [default: 10].
    #[arg(long)]
    raft_election_ticks: Option<usize>,
    /// How often leaders hand over to their preferred replica; 0: never [default: 10000].
    #[arg(long)]
    leader_balance_interval_ms: Option<u64>,
    /// A follower not caught up for this long leaves the reported ISR [default: 30000].
    #[arg(long)]
    replica_lag_time_max_ms: Option<u64>,
    /// Replicas of topics created with replication factor -1; 0: min(3, brokers) [default: 0].
    #[arg(long)]
    default_replication_factor: Option<i16>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    num_partitions: Option<i32>,
    /// Create unknown topics on Metadata requests [default: true].
    #[arg(long)]
    auto_create_topics: Option<bool>,
    /// Roll segments at this size in bytes [default: 1 GiB].
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// 0: fdatasync before acknowledging (default); N: at most every N ms.
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// filesystem: one syncfs per group commit for all of a shard's partitions (default);
    /// file: one fdatasync per partition file.
    #[arg(long)]
    fsync_scope: Option<String>,
    /// true: each group commit is one write and fdatasync of the shard's journal, segment
    /// files are written behind it (default); false: segment files written and synced per round.
    #[arg(long)]
    journal: Option<bool>,
    /// Largest record batch accepted in bytes.
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Partitions of __consumer_offsets when created [default: 16].
    #[arg(long)]
    offsets_topic_partitions: Option<i32>,
    /// In a cluster: replicas of each __consumer_offsets partition [default: 3].
    #[arg(long)]
    offsets_topic_replication_factor: Option<i16>,
    /// Segment size of __consumer_offsets when it is created; it is compacted segment by
    /// segment [default: 100 MiB].
    #[arg(long)]
    offsets_topic_segment_bytes: Option<u64>,
    /// Partitions of __transaction_state when it is created [default: 16].
    #[arg(long)]
    transaction_state_partitions: Option<i32>,
    /// Largest transaction timeout a producer may ask for in ms [default: 900000].
    #[arg(long)]
    transaction_max_timeout_ms: Option<i32>,
    /// How often timed-out transactions are aborted, in ms [default: 10000].
    #[arg(long)]
    transaction_abort_interval_ms: Option<u64>,
    /// Forget a transactional id idle for this long, in ms [default: 604800000, 7 days].
    #[arg(long)]
    transactional_id_expiration_ms: Option<u64>,
    /// Delay of the first rebalance of an empty group in ms [default: 3000].
    #[arg(long)]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a group member may ask for in ms [default: 6000].
    #[arg(long)]
    group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a group member may ask for in ms [default: 1800000].
    #[arg(long)]
    group_max_session_timeout_ms: Option<i32>,
    /// Log filter, e.g. info, debug, sluice=trace [default: info, or RUST_LOG].
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON lines [default: false].
    #[arg(long)]
    log_json: bool,
}

/// Start the tracing subscriber on stderr with the configured filter and format.
fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = config.log_filter()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    sluice::alloc::tune_allocator();
    let mut config = match &args.config {
        Some(p) => Config::from_file(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.advertised_listener {
        config.advertised_listener = Some(v);
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = v;
    }
    if let Some(v) = args.shards {
        config.shards = Some(v);
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.seed_servers {
        config.seed_servers = v;
    }
    if let Some(v) = args.rpc_listen {
        config.rpc_listen = v;
    }
    if let Some(v) = args.advertised_rpc_listener {
        config.advertised_rpc_listener = Some(v);
    }
    if let Some(v) = args.raft_tick_ms {
        config.raft_tick_ms = v;
    }
    if let Some(v) = args.raft_election_ticks {
        config.raft_election_ticks = v;
    }
    if let Some(v) = args.replica_lag_time_max_ms {
        config.replica_lag_time_max_ms = v;
    }
    if let Some(v) = args.leader_balance_interval_ms {
        config.leader_balance_interval_ms = v;
    }
    if let Some(v) = args.default_replication_factor {
        config.default_replication_factor = v;
    }
    if let Some(v) = args.num_partitions {
        config.num_partitions = v;
    }
    if let Some(v) = args.auto_create_topics {
        config.auto_create_topics = v;
    }
    if let Some(v) = args.segment_bytes {
        config.segment_bytes = v;
    }
    if let Some(v) = args.flush_interval_ms {
        config.flush_interval_ms = v;
    }
    if let Some(v) = args.fsync_scope {
        config.fsync_scope = v;
    }
    if let Some(v) = args.journal {
        config.journal = v;
    }
    if let Some(v) = args.max_message_bytes {
        config.max_message_bytes = v;
    }
    if let Some(v) = args.offsets_topic_partitions {
        config.offsets_topic_partitions = v;
    }
    if let Some(v) = args.offsets_topic_replication_factor {
        config.offsets_topic_replication_factor = v;
    }
    if let Some(v) = args.offsets_topic_segment_bytes {
        config.offsets_topic_segment_bytes = v;
    }
    if let Some(v) = args.transaction_state_partitions {
        config.transaction_state_partitions = v;
    }
    if let Some(v) = args.transaction_max_timeout_ms {
        config.transaction_max_timeout_ms = v;
    }
    if let Some(v) = args.transaction_abort_interval_ms {
        config.transaction_abort_interval_ms = v;
    }
    if let Some(v) = args.transactional_id_expiration_ms {
        config.transactional_id_expiration_ms = v;
    }
    if let Some(v) = args.group_initial_rebalance_delay_ms {
        config.group_initial_rebalance_delay_ms = v;
    }
    if let Some(v) = args.group_min_session_timeout_ms {
        config.group_min_session_timeout_ms = v;
    }
    if let Some(v) = args.group_max_session_timeout_ms {
        config.group_max_session_timeout_ms = v;
    }
    if let Some(v) = args.log_level {
        config.log_level = Some(v);
    }
    if args.log_json {
        config.log_json = true;
    }
    init_logging(&config)?;
    sluice::broker::run(config).context("sluice could not start")
}

/// Runs `sluice tune`; see [`TuneArgs`] for the exit status.
fn tune(args: TuneArgs) -> anyhow::Result<()> {
    use sluice_tune::Severity;
    use std::io::Write;
    let mut config = match &args.config {
        Some(p) => Config::from_file(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.shards {
        config.shards = Some(v);
    }
    let host = sluice::broker::tuning_host(&config);
    let tuners = sluice_tune::tuners::all();
    let mut out = std::io::stdout().lock();
    let failed = if args.apply {
        let planned = sluice_tune::plan(&host, tuners.iter().map(|t| t.as_ref()));
        if args.dry_run {
            writeln!(
                out,
                "# sluice tune --apply --dry-run: nothing below was run"
            )?;
        }
        if planned.is_empty() {
            writeln!(out, "# nothing to change")?;
        }
        let failures = sluice_tune::apply(&host, &planned, args.dry_run, &mut out)?;
        for f in &failures {
            eprintln!("error: {}: {}", f.tuner, f.error);
        }
        !failures.is_empty()
    } else {
        let findings = sluice_tune::check_all(&host);
        write!(out, "{}", sluice_tune::render_table(&findings))?;
        let limit = if args.strict {
            Severity::Warn
        } else {
            Severity::Error
        };
        findings.iter().any(|f| f.severity >= limit)
    };
    out.flush().context("writing to stdout")?;
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs `sluice config`.
fn print_config(args: ConfigArgs) -> anyhow::Result<()> {
    // clap requires at least one of the two.
    let Some(path) = args.config.filter(|_| !args.defaults) else {
        print!("{}", Config::defaults_toml());
        return Ok(());
    };
    let config = Config::from_file(&path).with_context(|| format!("loading {}", path.display()))?;
    if let Err(e) = config.validate() {
        eprintln!("error: {}: {e}", path.display());
        std::process::exit(1);
    }
    print!(
        "{}",
        toml::to_string(&config).context("encoding the configuration")?
    );
    Ok(())
}

/// Runs an admin command with stdout as its output. An operating error (broker unreachable,
/// topic missing, ...) is printed alone, without the backtrace anyhow would add, and exits with
/// status 1.
fn run_admin(
    command: impl FnOnce(&mut dyn std::io::Write) -> Result<(), sluice::cli::CliError>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let result = command(&mut std::io::stdout().lock());
    std::io::stdout().flush().context("writing to stdout")?;
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Config(args) => print_config(args),
        Command::Topic(command) => run_admin(|out| sluice::cli::topic::run(&command, out)),
        Command::Group(command) => run_admin(|out| sluice::cli::group::run(&command, out)),
        Command::Cluster(command) => run_admin(|out| sluice::cli::cluster::run(&command, out)),
        Command::Txn(command) => run_admin(|out| sluice::cli::txn::run(&command, out)),
        Command::Tune(args) => tune(args),
    }
}
