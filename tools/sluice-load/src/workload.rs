//! Workload: what to run, in the spirit of the OpenMessaging Benchmark's
//! workload files. Read from YAML or TOML (by extension), then overridden
//! field by field by command-line flags; every field has the same name in
//! both (`message_size` in a file is `--message-size` on the command line).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Smallest message: the tracking header embedded in every payload
/// (see `payload::HEADER_LEN`).
pub const MESSAGE_BYTES_MIN: u64 = crate::payload::HEADER_LEN as u64;
/// Largest message this tool builds.
pub const MESSAGE_BYTES_MAX: u64 = 16 << 20;
/// Upper bounds that keep a mistyped flag from exhausting the machine.
pub const PRODUCERS_MAX: u32 = 1024;
pub const CONSUMERS_MAX: u32 = 1024;
pub const PARTITIONS_MAX: u32 = 100_000;
pub const TOPICS_MAX: u32 = 10_000;
pub const IN_FLIGHT_MAX: u32 = 1024;
pub const KEY_COUNT_MAX: u32 = 100_000_000;

/// A byte count: a number, or a string with unit (B, KB, KiB, MB, MiB, GB, GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            u => bail!("unknown size unit {u:?} in {s:?}"),
        };
        Ok(ByteSize((n * mult).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1024 && n.is_multiple_of(1024) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

/// A duration: a string like `10s`, `500ms`, `2m`, `1h`, `250us`; a bare
/// number in a file means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
        let secs = match unit.trim() {
            "" | "s" => n,
            "ms" => n / 1e3,
            "us" | "µs" => n / 1e6,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            u => bail!("unknown duration unit {u:?} in {s:?}"),
        };
        if !(0.0..=86_400.0 * 7.0).contains(&secs) {
            bail!("duration {s:?} out of range (0 to 7 days)");
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Target rate: messages per second (`0` = as fast as possible), or bytes
/// per second with a unit (`50MB/s`, `10MiB/s`), converted with the mean
/// message size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    MessagesPerSecond(f64),
    BytesPerSecond(u64),
}

impl FromStr for Rate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(b) = s.strip_suffix("/s") {
            if b.chars().last().is_some_and(|c| c.is_ascii_alphabetic()) && !b.ends_with("msg") {
                return Ok(Rate::BytesPerSecond(b.parse::<ByteSize>()?.0));
            }
            let b = b.trim_end_matches("msg").trim();
            return Ok(Rate::MessagesPerSecond(b.parse()?));
        }
        let n: f64 = s.parse().with_context(|| format!("bad rate {s:?}"))?;
        if n < 0.0 {
            bail!("rate must be >= 0");
        }
        Ok(Rate::MessagesPerSecond(n))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::MessagesPerSecond(n) => write!(f, "{n}"),
            Rate::BytesPerSecond(b) => write!(f, "{}/s", ByteSize(*b)),
        }
    }
}

/// Producer acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    /// The Produce request's `acks` field.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl FromStr for Acks {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "0" => Acks::None,
            "1" => Acks::Leader,
            "all" | "-1" => Acks::All,
            _ => bail!("acks must be 0, 1 or all, got {s:?}"),
        })
    }
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

/// Where consumers start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// The log end when the run starts: they read what this run produces, and every
    /// acknowledged message is checked to arrive exactly once.
    Latest,
    /// The log start: they read what is stored (a catch-up read of older data, from disk
    /// rather than the tail cache), counted as consumed bytes whoever wrote them; nothing
    /// is checked.
    Earliest,
}

impl ConsumeFrom {
    /// ListOffsets' timestamp for this position.
    pub fn list_offsets_timestamp(self) -> i64 {
        match self {
            ConsumeFrom::Latest => -1,
            ConsumeFrom::Earliest => -2,
        }
    }
}

impl FromStr for ConsumeFrom {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "latest" => ConsumeFrom::Latest,
            "earliest" => ConsumeFrom::Earliest,
            _ => bail!("consume-from must be latest or earliest, got {s:?}"),
        })
    }
}

impl fmt::Display for ConsumeFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumeFrom::Latest => "latest",
            ConsumeFrom::Earliest => "earliest",
        })
    }
}

/// Batch compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn wire(self) -> kafka_protocol::records::Compression {
        use kafka_protocol::records::Compression as C;
        match self {
            Codec::None => C::None,
            Codec::Gzip => C::Gzip,
            Codec::Snappy => C::Snappy,
            Codec::Lz4 => C::Lz4,
            Codec::Zstd => C::Zstd,
        }
    }
}

impl FromStr for Codec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "none" => Codec::None,
            "gzip" => Codec::Gzip,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd,
            _ => bail!("compression must be none, gzip, snappy, lz4 or zstd, got {s:?}"),
        })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

/// How messages are keyed. Keyed messages go to `murmur2(key) % partitions`
/// (the Java client's default partitioner); unkeyed ones round-robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    None,
    RoundRobin,
    Random,
    Zipf,
}

impl FromStr for KeyDistribution {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "none" => KeyDistribution::None,
            "round-robin" | "round_robin" | "roundrobin" => KeyDistribution::RoundRobin,
            "random" => KeyDistribution::Random,
            "zipf" => KeyDistribution::Zipf,
            _ => bail!("keys must be none, round-robin, random or zipf, got {s:?}"),
        })
    }
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyDistribution::None => "none",
            KeyDistribution::RoundRobin => "round-robin",
            KeyDistribution::Random => "random",
            KeyDistribution::Zipf => "zipf",
        })
    }
}

/// Filler for the payload bytes after the tracking header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFill {
    /// Pseudo-random bytes: incompressible, like OMB's default payload.
    Random,
    /// Repetitive ASCII text: compresses roughly like JSON logs.
    Text,
    Zeros,
}

impl FromStr for PayloadFill {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "random" => PayloadFill::Random,
            "text" => PayloadFill::Text,
            "zeros" => PayloadFill::Zeros,
            _ => bail!("payload fill must be random, text or zeros, got {s:?}"),
        })
    }
}

impl fmt::Display for PayloadFill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadFill::Random => "random",
            PayloadFill::Text => "text",
            PayloadFill::Zeros => "zeros",
        })
    }
}

/// Serialize every setting as its display string, deserialize from a
/// string or a bare number, so files read naturally in YAML and TOML.
macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum NumOrStr { I(i64), F(f64), S(String) }
                let s = match NumOrStr::deserialize(d)? {
                    NumOrStr::I(i) => i.to_string(),
                    NumOrStr::F(f) => f.to_string(),
                    NumOrStr::S(s) => s,
                };
                s.parse().map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
            }
        }
    )*};
}
string_serde!(
    ByteSize,
    Dur,
    Rate,
    Acks,
    ConsumeFrom,
    Codec,
    KeyDistribution,
    PayloadFill
);

/// Every setting of a run. The defaults give a short, moderate run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Label shown in reports and comparisons.
    pub name: String,
    /// Topic name; with `topics > 1`, the prefix of `<topic>-<i>`. Unset:
    /// a fresh `sluice-load-<unix seconds>` per run, so runs never share data.
    pub topic: Option<String>,
    /// Number of topics.
    pub topics: u32,
    /// Partitions per topic (used when creating; existing topics keep theirs).
    pub partitions: u32,
    pub replication_factor: i16,
    /// Size of every message (value bytes), unless `payload_file` is set.
    pub message_size: ByteSize,
    /// File of sample payloads, one per line (like `kcat -l`); each message
    /// takes the next line, padded to the tracking header's size if shorter.
    pub payload_file: Option<PathBuf>,
    pub payload_fill: PayloadFill,
    /// Producer tasks, each with its own connection per broker.
    pub producers: u32,
    /// Consumer tasks; partitions are assigned to them round-robin.
    pub consumers: u32,
    /// Where consumers start: `latest` (this run's messages, checked) or `earliest` (a
    /// catch-up read of what is stored).
    pub consume_from: ConsumeFrom,
    /// Target rate over all producers; 0 = as fast as possible.
    pub rate: Rate,
    /// How long a partition's batch may wait for more messages.
    pub linger: Dur,
    /// A partition's batch is sent once it reaches this many bytes.
    pub batch_size: ByteSize,
    /// Produce requests in flight per connection (Kafka's
    /// max.in.flight.requests.per.connection).
    pub max_in_flight: u32,
    /// Bytes a producer may hold unsent before it stops generating
    /// (Kafka's buffer.memory); late messages are charged from their
    /// intended time.
    pub buffer_memory: ByteSize,
    pub acks: Acks,
    pub compression: Codec,
    pub keys: KeyDistribution,
    /// Distinct keys for keyed distributions.
    pub key_count: u32,
    /// Skew of the zipf key distribution (YCSB uses 0.99).
    pub zipf_exponent: f64,
    /// Produced and consumed but not measured.
    pub warmup: Dur,
    /// Measured time after warmup.
    pub duration: Dur,
    /// After producing stops, how long consumers may take to catch up.
    pub drain_timeout: Dur,
    /// Produce request timeout (sent to the broker and applied locally).
    pub request_timeout: Dur,
    /// Fetch long-poll wait.
    pub fetch_max_wait: Dur,
    /// Seed for key choice and random payloads (runs are reproducible).
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "default".into(),
            topic: None,
            topics: 1,
            partitions: 16,
            replication_factor: 1,
            message_size: ByteSize(1024),
            payload_file: None,
            payload_fill: PayloadFill::Random,
            producers: 1,
            consumers: 1,
            consume_from: ConsumeFrom::Latest,
            rate: Rate::MessagesPerSecond(10_000.0),
            linger: Dur(Duration::from_millis(1)),
            batch_size: ByteSize(128 << 10),
            max_in_flight: 5,
            buffer_memory: ByteSize(32 << 20),
            acks: Acks::Leader,
            compression: Codec::None,
            keys: KeyDistribution::None,
            key_count: 10_000,
            zipf_exponent: 0.99,
            warmup: Dur(Duration::from_secs(2)),
            duration: Dur(Duration::from_secs(10)),
            drain_timeout: Dur(Duration::from_secs(15)),
            request_timeout: Dur(Duration::from_secs(30)),
            fetch_max_wait: Dur(Duration::from_millis(100)),
            seed: 42,
        }
    }
}

impl Workload {
    /// Read a workload file: `.toml` as TOML, anything else as YAML.
    pub fn from_file(path: &Path) -> Result<Workload> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let w: Workload = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?
        } else {
            serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))?
        };
        Ok(w)
    }

    /// Check every bound; a workload that passes can run.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(anyhow!("{what}")) };
        check(
            (1..=TOPICS_MAX).contains(&self.topics),
            "topics must be 1..=10000",
        )?;
        check(
            (1..=PARTITIONS_MAX).contains(&self.partitions),
            "partitions must be 1..=100000",
        )?;
        check(
            self.replication_factor >= 1,
            "replication factor must be >= 1",
        )?;
        check(
            (1..=PRODUCERS_MAX).contains(&self.producers),
            "producers must be 1..=1024",
        )?;
        check(
            self.consumers <= CONSUMERS_MAX,
            "consumers must be 0..=1024",
        )?;
        if self.payload_file.is_none() {
            check(
                (MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX).contains(&self.message_size.0),
                &format!(
                    "message size must be {MESSAGE_BYTES_MIN}..={MESSAGE_BYTES_MAX} bytes \
                     (each payload carries a {MESSAGE_BYTES_MIN}-byte tracking header)"
                ),
            )?;
        }
        check(
            (1..=IN_FLIGHT_MAX).contains(&self.max_in_flight),
            "max in flight must be 1..=1024",
        )?;
        check(self.batch_size.0 >= 1, "batch size must be >= 1")?;
        check(
            self.buffer_memory.0 >= self.batch_size.0,
            "buffer memory must be >= batch size",
        )?;
        check(
            (1..=KEY_COUNT_MAX).contains(&self.key_count),
            "key count must be 1..=100000000",
        )?;
        check(
            self.zipf_exponent > 0.0 && self.zipf_exponent.is_finite(),
            "zipf exponent must be > 0",
        )?;
        check(!self.duration.0.is_zero(), "duration must be > 0")?;
        if let Some(t) = &self.topic {
            check(
                !t.is_empty()
                    && t.len() <= 200
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "topic names use [A-Za-z0-9._-], at most 200 characters",
            )?;
        }
        Ok(())
    }

    /// Topic names this run uses.
    pub fn topic_names(&self, default_prefix: &str) -> Vec<String> {
        let base = self
            .topic
            .clone()
            .unwrap_or_else(|| default_prefix.to_string());
        if self.topics == 1 {
            vec![base]
        } else {
            (0..self.topics).map(|i| format!("{base}-{i}")).collect()
        }
    }

    /// Target messages per second over all producers (0 = unlimited).
    pub fn target_messages_per_second(&self, mean_message_bytes: f64) -> f64 {
        match self.rate {
            Rate::MessagesPerSecond(n) => n,
            Rate::BytesPerSecond(b) => b as f64 / mean_message_bytes.max(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_from_parses_and_maps_to_list_offsets() {
        let e: ConsumeFrom = "earliest".parse().unwrap();
        assert_eq!(e.list_offsets_timestamp(), -2);
        assert_eq!(
            "latest"
                .parse::<ConsumeFrom>()
                .unwrap()
                .list_offsets_timestamp(),
            -1
        );
        assert!("oldest".parse::<ConsumeFrom>().is_err());
        let w: Workload = serde_yaml::from_str("consume_from: earliest").unwrap();
        assert_eq!(w.consume_from, ConsumeFrom::Earliest);
        assert_eq!(Workload::default().consume_from, ConsumeFrom::Latest);
    }

    #[test]
    fn parses_units() {
        assert_eq!("1KiB".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!("1kb".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        assert_eq!("10s".parse::<Dur>().unwrap(), Dur(Duration::from_secs(10)));
        assert_eq!(
            "500ms".parse::<Dur>().unwrap(),
            Dur(Duration::from_millis(500))
        );
        assert_eq!("2m".parse::<Dur>().unwrap(), Dur(Duration::from_secs(120)));
        assert_eq!(
            "50MB/s".parse::<Rate>().unwrap(),
            Rate::BytesPerSecond(50_000_000)
        );
        assert_eq!(
            "2000".parse::<Rate>().unwrap(),
            Rate::MessagesPerSecond(2000.0)
        );
        assert_eq!(
            "2000msg/s".parse::<Rate>().unwrap(),
            Rate::MessagesPerSecond(2000.0)
        );
        assert!("fast".parse::<Rate>().is_err());
        assert!("3".parse::<Acks>().is_err());
    }

    #[test]
    fn yaml_and_toml_agree() {
        let yaml = "name: x\npartitions: 4\nmessage_size: 1KiB\nrate: 50MB/s\nacks: all\n\
                    compression: zstd\nkeys: zipf\nduration: 30s\nwarmup: 5\n";
        let toml = "name = \"x\"\npartitions = 4\nmessage_size = \"1KiB\"\nrate = \"50MB/s\"\n\
                    acks = \"all\"\ncompression = \"zstd\"\nkeys = \"zipf\"\nduration = \"30s\"\n\
                    warmup = 5\n";
        let a: Workload = serde_yaml::from_str(yaml).unwrap();
        let b: Workload = toml::from_str(toml).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.acks, Acks::All);
        assert_eq!(a.warmup, Dur(Duration::from_secs(5)));
        a.validate().unwrap();
    }

    #[test]
    fn shipped_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let w = Workload::from_file(&p).unwrap();
            w.validate().unwrap();
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_bounds() {
        assert!(serde_yaml::from_str::<Workload>("partitionz: 3\n").is_err());
        let w = Workload {
            message_size: ByteSize(8),
            ..Workload::default()
        };
        assert!(w.validate().is_err());
    }
}
