//! # sluice-load
//!
//! The load generator bundled with Sluice. It speaks the Kafka protocol
//! itself (the `kafka-protocol` crate, no librdkafka) using only standard
//! APIs, so it drives Sluice, Apache Kafka and Redpanda the same way.
//!
//! ```text
//! sluice-load run --bootstrap-server 127.0.0.1:9092 --workload workloads/max-throughput.yaml --output runs/a
//! sluice-load run --bootstrap-server 127.0.0.1:9092 --rate 2000 --duration 10s --output runs/b
//! sluice-load compare runs/a runs/b --output runs/a-vs-b
//! sluice-load commits --bootstrap-server 127.0.0.1:9092 --in-flight 16 --duration 10s
//! ```
//!
//! # Layout
//! - [`workload`]: the settings of a run (file and flags share names).
//! - [`client`]: framing, version negotiation, control requests.
//! - [`payload`]: tracking header, payloads, keys, partitioner.
//! - [`latency`]: clock, fixed-rate schedule, corrected/uncorrected pairs.
//! - [`shared`]: counters and the pacer thread.
//! - [`producer`], [`consumer`]: the load.
//! - [`run`]: one run end to end.
//! - [`report`], [`hgrm`]: report.json and `.hgrm` files.
//! - [`compare`]: side-by-side table and percentile chart.
//! - [`commits`]: pipelined OffsetCommit rate on one connection.

mod client;
mod commits;
mod compare;
mod consumer;
mod hgrm;
mod latency;
mod payload;
mod producer;
mod report;
mod run;
mod shared;
mod workload;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::workload::Workload;

#[derive(Parser)]
#[command(
    name = "sluice-load",
    version,
    about = "Load generator for Kafka-compatible brokers, with coordinated-omission-corrected latency"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload and write DIR/report.json plus .hgrm histograms.
    Run(Box<RunArgs>),
    /// Compare runs: print a table, write PREFIX.svg and PREFIX.png.
    Compare {
        /// report.json files or the directories holding them; the first
        /// is the baseline for ratios.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output prefix: writes PREFIX.svg and PREFIX.png.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Pipelined OffsetCommits on one connection: commits/s and latency, then check that the
    /// last offsets sent are the committed ones.
    Commits(CommitsArgs),
}

#[derive(Args)]
struct CommitsArgs {
    /// host:port of the group's coordinator (a single broker: any).
    #[arg(long, short = 'b')]
    bootstrap_server: String,
    /// Consumer group committing (a simple consumer: no membership).
    #[arg(long, default_value = "sluice-load-commits")]
    group: String,
    /// Topic whose partitions are committed (created if missing).
    #[arg(long, default_value = "sluice-load-commits")]
    topic: String,
    /// Partitions committed per request.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Requests outstanding on the connection.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: workload::Dur,
}

#[derive(Args)]
struct RunArgs {
    /// host:port of any broker.
    #[arg(long, short = 'b')]
    bootstrap_server: String,
    /// Workload file (YAML, or TOML by .toml extension); flags override it.
    #[arg(long, short)]
    workload: Option<PathBuf>,
    /// Directory for report.json and the .hgrm files.
    #[arg(long, short)]
    output: PathBuf,
    #[command(flatten)]
    flags: WorkloadFlags,
}

/// Every workload setting as a flag (same names as in the file).
#[derive(Args, Default)]
struct WorkloadFlags {
    /// Label for reports.
    #[arg(long)]
    name: Option<String>,
    /// Topic name (prefix when --topics > 1); default: fresh per run.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    topics: Option<u32>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<u32>,
    #[arg(long)]
    replication_factor: Option<i16>,
    /// Bytes per message: 1024, 1KiB, 4KB...
    #[arg(long)]
    message_size: Option<workload::ByteSize>,
    /// Sample payloads, one per line.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// random | text | zeros
    #[arg(long)]
    payload_fill: Option<workload::PayloadFill>,
    #[arg(long)]
    producers: Option<u32>,
    #[arg(long)]
    consumers: Option<u32>,
    /// msgs/s over all producers (0 = max), or bytes/s like 50MB/s.
    #[arg(long)]
    rate: Option<workload::Rate>,
    /// e.g. 1ms
    #[arg(long)]
    linger: Option<workload::Dur>,
    /// e.g. 128KiB
    #[arg(long)]
    batch_size: Option<workload::ByteSize>,
    #[arg(long)]
    max_in_flight: Option<u32>,
    #[arg(long)]
    buffer_memory: Option<workload::ByteSize>,
    /// 0 | 1 | all
    #[arg(long)]
    acks: Option<workload::Acks>,
    /// none | gzip | snappy | lz4 | zstd
    #[arg(long)]
    compression: Option<workload::Codec>,
    /// none | round-robin | random | zipf
    #[arg(long)]
    keys: Option<workload::KeyDistribution>,
    #[arg(long)]
    key_count: Option<u32>,
    #[arg(long)]
    zipf_exponent: Option<f64>,
    /// e.g. 2s
    #[arg(long)]
    warmup: Option<workload::Dur>,
    /// Measured time after warmup, e.g. 10s.
    #[arg(long)]
    duration: Option<workload::Dur>,
    #[arg(long)]
    drain_timeout: Option<workload::Dur>,
    #[arg(long)]
    request_timeout: Option<workload::Dur>,
    #[arg(long)]
    fetch_max_wait: Option<workload::Dur>,
    /// Where consumers start: latest (this run's messages, checked exactly once) or
    /// earliest (a catch-up read of everything stored, not checked).
    #[arg(long)]
    consume_from: Option<workload::ConsumeFrom>,
    #[arg(long)]
    seed: Option<u64>,
}

impl WorkloadFlags {
    fn apply(self, w: &mut Workload) {
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { w.$f = v; } )*};
        }
        set!(
            name,
            topics,
            partitions,
            replication_factor,
            message_size,
            payload_fill,
            producers,
            consumers,
            rate,
            linger,
            batch_size,
            max_in_flight,
            buffer_memory,
            acks,
            compression,
            keys,
            key_count,
            zipf_exponent,
            warmup,
            duration,
            drain_timeout,
            request_timeout,
            fetch_max_wait,
            consume_from,
            seed
        );
        if let Some(t) = self.topic {
            w.topic = Some(t);
        }
        if let Some(p) = self.payload_file {
            w.payload_file = Some(p);
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let mut w = match &args.workload {
                Some(p) => Workload::from_file(p)?,
                None => Workload::default(),
            };
            args.flags.apply(&mut w);
            w.validate()?;
            let command: Vec<String> = std::env::args().collect();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("sluice-load")
                .build()
                .context("tokio runtime")?;
            let report = rt.block_on(run::run(&args.bootstrap_server, w, &args.output, command))?;
            // Producer reader tasks may still hold sockets: don't wait.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            println!("{}", report.summary_table());
            println!("report: {}", args.output.join("report.json").display());
        }
        Command::Commits(args) => {
            let load = commits::CommitLoad {
                group: args.group,
                topic: args.topic,
                partitions: args.partitions,
                in_flight: args.in_flight.max(1),
                duration: args.duration.0,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let report = rt.block_on(commits::run(&args.bootstrap_server, &load))?;
            println!("{}", report.summary(&load));
            if let Err(e) = report.read_back {
                anyhow::bail!("commits applied out of order: {e}");
            }
        }
        Command::Compare { runs, output } => {
            let (svg, png) = compare::compare(&runs, &output)?;
            println!("wrote {} and {}", svg.display(), png.display());
        }
    }
    Ok(())
}
