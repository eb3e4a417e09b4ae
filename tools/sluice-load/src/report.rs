//! The self-describing run report (`report.json`): exact command line, git
//! ref, host, broker, resolved workload, every figure, the per-second
//! timeline and the percentile curves that `compare` plots. Latencies in
//! the report are milliseconds; MB is 10^6 bytes.

use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::hgrm::{self, Point};
use crate::workload::Workload;

/// Format version of report.json.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_bytes: u64,
    pub os: String,
}

impl Host {
    pub fn detect() -> Host {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(String::new, |s| s.trim().to_string());
        let os = read("/etc/os-release")
            .lines()
            .find(|l| l.starts_with("PRETTY_NAME="))
            .map_or_else(String::new, |l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            });
        Host {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_bytes,
            os,
        }
    }
}

/// `git rev-parse HEAD` in the current directory, else in the source tree
/// this binary was built from; `dirty` if the work tree has changes.
pub fn git_ref() -> Option<String> {
    let try_dir = |dir: &Path| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dirty = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
        Some(if dirty { format!("{head}-dirty") } else { head })
    };
    try_dir(Path::new(".")).or_else(|| try_dir(Path::new(env!("CARGO_MANIFEST_DIR"))))
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        Summary {
            count: h.len(),
            min_ms: h.min() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
            p50_ms: q(0.5),
            p75_ms: q(0.75),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            p99_99_ms: q(0.9999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }

    /// (label, value) in report order.
    pub fn rows(&self) -> [(&'static str, f64); 8] {
        [
            ("p50", self.p50_ms),
            ("p75", self.p75_ms),
            ("p95", self.p95_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p99_9_ms),
            ("p99.99", self.p99_99_ms),
            ("max", self.max_ms),
            ("mean", self.mean_ms),
        ]
    }
}

/// One latency metric: corrected and uncorrected, with curves and files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// From each message's intended send time (coordinated omission
    /// corrected). At max rate equal to `uncorrected`.
    pub corrected: Summary,
    /// From the moment each message was actually created.
    pub uncorrected: Summary,
    /// `.hgrm` files next to report.json.
    pub corrected_file: String,
    pub uncorrected_file: String,
    /// Percentile distribution of `corrected` (as in the .hgrm file).
    pub corrected_curve: Vec<Point>,
    pub uncorrected_curve: Vec<Point>,
}

impl Latency {
    pub fn new(name: &str, c: &Histogram<u64>, u: &Histogram<u64>) -> Latency {
        Latency {
            corrected: Summary::of(c),
            uncorrected: Summary::of(u),
            corrected_file: format!("{name}.hgrm"),
            uncorrected_file: format!("{name}-uncorrected.hgrm"),
            corrected_curve: hgrm::points(c),
            uncorrected_curve: hgrm::points(u),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Messages in the measured window.
    pub messages: u64,
    pub bytes: u64,
    pub msgs_per_s: f64,
    /// 10^6 bytes per second (message key + value bytes).
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn new(messages: u64, bytes: u64, seconds: f64) -> Throughput {
        let s = seconds.max(1e-9);
        Throughput {
            messages,
            bytes,
            msgs_per_s: messages as f64 / s,
            mb_per_s: bytes as f64 / s / 1e6,
        }
    }
}

/// Exactly-once accounting over the whole run (warmup included).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delivery {
    pub sent: u64,
    /// Acknowledged by the broker (acks=0: written to the socket).
    pub acked: u64,
    pub produce_errors: u64,
    /// Distinct tracked messages consumed.
    pub consumed_unique: u64,
    /// Receipts beyond the first of the same message.
    pub duplicates: u64,
    /// Acknowledged but never consumed.
    pub missing: u64,
    /// Consumed but not acknowledged (e.g. a timed-out request that was
    /// in fact written).
    pub consumed_unacked: u64,
    /// acked == consumed_unique, no duplicates, nothing missing.
    /// Null when there were no consumers or they read from the earliest offset.
    pub exactly_once: Option<bool>,
}

/// One line of the per-second timeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    pub second: u64,
    pub acked_msgs_per_s: f64,
    pub acked_mb_per_s: f64,
    pub consumed_msgs_per_s: f64,
    pub publish_p50_ms: f64,
    pub publish_p99_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub bootstrap_server: String,
    pub cluster_id: Option<String>,
    /// node id -> host:port
    pub brokers: Vec<(i32, String)>,
    /// Negotiated API versions.
    pub api_versions: Vec<(String, i16)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub report_version: u32,
    pub tool: String,
    /// argv, exactly.
    pub command: Vec<String>,
    /// argv joined for copy and paste.
    pub command_line: String,
    pub git_ref: Option<String>,
    /// Unix seconds at start.
    pub started_at_unix_s: u64,
    pub host: Host,
    pub broker: BrokerInfo,
    pub workload: Workload,
    pub topics: Vec<String>,
    /// msgs/s over all producers; 0 = max rate.
    pub target_msgs_per_s: f64,
    pub measured_seconds: f64,
    pub produce: Throughput,
    pub consume: Throughput,
    /// Absent with acks=0 (there is no acknowledgement to time).
    pub publish_latency: Option<Latency>,
    /// Absent without consumers.
    pub end_to_end_latency: Option<Latency>,
    pub delivery: Delivery,
    /// Error kind -> count.
    pub errors: std::collections::BTreeMap<String, u64>,
    pub timeline: Vec<Tick>,
}

impl Report {
    pub fn load(path: &Path) -> Result<Report> {
        let path = if path.is_dir() {
            path.join("report.json")
        } else {
            path.to_path_buf()
        };
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The summary table printed at the end of a run.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let w = &self.workload;
        s += &format!(
            "\n== sluice-load: {} ({} topic(s) x {} partitions, {} B, {} producer(s), {} consumer(s), acks={}, compression={}, keys={})\n",
            w.name,
            w.topics,
            w.partitions,
            w.message_size,
            w.producers,
            w.consumers,
            w.acks,
            w.compression,
            w.keys
        );
        let target = if self.target_msgs_per_s > 0.0 {
            format!("{:.0} msgs/s", self.target_msgs_per_s)
        } else {
            "max".to_string()
        };
        s += &format!(
            "target {target}, measured {:.1} s\n\n",
            self.measured_seconds
        );
        s += &format!("{:<10} {:>14} {:>10}\n", "", "msgs/s", "MB/s");
        s += &format!(
            "{:<10} {:>14.0} {:>10.2}\n",
            "produce", self.produce.msgs_per_s, self.produce.mb_per_s
        );
        s += &format!(
            "{:<10} {:>14.0} {:>10.2}\n\n",
            "consume", self.consume.msgs_per_s, self.consume.mb_per_s
        );
        let lat: Vec<(&str, &Summary)> = [
            self.publish_latency
                .as_ref()
                .map(|l| ("publish", &l.corrected)),
            self.publish_latency
                .as_ref()
                .map(|l| ("publish*", &l.uncorrected)),
            self.end_to_end_latency
                .as_ref()
                .map(|l| ("e2e", &l.corrected)),
            self.end_to_end_latency
                .as_ref()
                .map(|l| ("e2e*", &l.uncorrected)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !lat.is_empty() {
            s += &format!("{:<10}", "ms");
            for (label, _) in Summary::default().rows() {
                s += &format!(" {label:>9}");
            }
            s += "\n";
            for (name, sum) in &lat {
                s += &format!("{name:<10}");
                for (_, v) in sum.rows() {
                    s += &format!(" {v:>9.3}");
                }
                s += "\n";
            }
            s += "(* = uncorrected: from actual send time, hides stalls; the others are from intended send time)\n\n";
        }
        let d = &self.delivery;
        s += &format!(
            "delivery: sent {} acked {} errors {} consumed {} duplicates {} missing {} unacked-consumed {} => {}\n",
            d.sent,
            d.acked,
            d.produce_errors,
            d.consumed_unique,
            d.duplicates,
            d.missing,
            d.consumed_unacked,
            match d.exactly_once {
                Some(true) => "exactly once",
                Some(false) => "NOT exactly once",
                None => "not checked (no consumers, or read from the earliest offset)",
            }
        );
        if !self.errors.is_empty() {
            s += &format!("errors: {:?}\n", self.errors);
        }
        s
    }
}
