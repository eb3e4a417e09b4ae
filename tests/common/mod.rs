//! Shared harness for Sluice's integration tests.
//!
//! # Layout
//! - [`Broker`]: runs `target/release/sluice serve` on 127.0.0.1 with a temporary data directory,
//!   waits until it answers a raw ApiVersions request, and kills it on drop. Its stderr goes to a
//!   file in the temp dir, printed when the test panics. Its metrics endpoint listens on a port of
//!   its own ([`Broker::metrics_addr`], [`Broker::scrape`]), never the shared default 9644.
//! - Raw wire helpers ([`encode_request`], [`read_frame`], [`api_versions_v3`], ...) for tests that
//!   talk to the broker byte by byte.
//! - rdkafka helpers: client configs with bounded timeouts, and [`consume_partitions`], which
//!   reads partitions from a start offset to a known end with an `assign()`ed consumer.
//! - [`segment_batches`]: walks the RecordBatches in a segment file, the way recovery must.
//! - [`run_with_timeout`]: runs an external command (kcat) with a deadline.
//! - [`load`]: acks=all producer tasks that record every acknowledgement, and the read-back
//!   check that none was lost (the stop and crash tests).
//!
//! Every loop here is bounded both in iterations and in wall-clock time, and every address is on
//! 127.0.0.1.

// Each test binary uses its own subset of this module.
#![allow(dead_code)]

pub mod load;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

/// How long a broker may take from spawn to answering ApiVersions.
pub const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a broker may take to exit after SIGTERM before it is sent SIGKILL: the broker's
/// own bounds (`broker::DRAIN_BOUND` for its requests to finish, then as long again for the
/// shards to meet) plus time to close its partitions. A 10 s limit failed a cluster test
/// whose stopping leader was still draining an acks=all produce.
pub const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(25);
/// Read/write timeout on raw sockets: a broker that neither answers nor closes within this time
/// fails the test instead of hanging it.
pub const RAW_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response frame the raw helpers accept (the broker's own request limit is 100 MiB).
pub const RAW_FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;
/// Bounds passed to every rdkafka client so nothing waits forever.
pub const CLIENT_MESSAGE_TIMEOUT_MS: u32 = 30_000;
pub const CLIENT_SOCKET_TIMEOUT_MS: u32 = 10_000;

/// Options for `sluice serve` beyond the ones every test passes.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    pub segment_bytes: Option<u64>,
    pub num_partitions: Option<u32>,
    /// `--metrics-listen` value; None: 127.0.0.1 on a free port of this broker's own.
    pub metrics_listen: Option<String>,
    /// Further `sluice serve` flags, passed as given (e.g.
    /// `--group-initial-rebalance-delay-ms 100`).
    pub extra_args: Vec<String>,
    /// The data directory; None: `data` in the test's temporary directory.
    pub data_dir: Option<PathBuf>,
    /// `--shards`; None: 2.
    pub shards: Option<usize>,
    /// Environment variables of the broker process (e.g. a test's fault injection).
    pub env: Vec<(String, String)>,
}

/// A running (or stopped) Sluice broker owned by one test.
///
/// The data directory lives as long as this value, so a test can stop the broker, tamper with
/// the files and start it again on the same directory and port.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    /// Port of the metrics endpoint (`--metrics-listen`), kept across restarts.
    metrics_port: u16,
    options: BrokerOptions,
    /// Number of times the broker was spawned; each run writes its own log file.
    runs: u32,
    data_dir: PathBuf,
    log_dir: PathBuf,
    /// Keeps the temporary directory (data and logs) alive; removed on drop, except when the test
    /// is failing: then it is kept for inspection and its path printed.
    temp: Option<tempfile::TempDir>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(options: BrokerOptions) -> Broker {
        let temp = tempfile::Builder::new()
            .prefix("sluice-it-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        let log_dir = temp.path().join("logs");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        std::fs::create_dir_all(&log_dir).expect("create log dir");
        let mut broker = Broker {
            child: None,
            port: free_port(),
            metrics_port: free_port(),
            options,
            runs: 0,
            data_dir,
            log_dir,
            temp: Some(temp),
        };
        broker.spawn_and_wait();
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Address of the broker's Prometheus endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }

    /// `GET path` on the metrics endpoint: (status code, Content-Type, body). Bounded by
    /// [`RAW_IO_TIMEOUT`] per read and write.
    pub fn scrape(&self, path: &str) -> (u16, String, String) {
        http_get(self.metrics_addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of one partition's segment files: `<data>/<topic>-<partition>`.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.log_dir.join(format!("broker-run-{run}.log"))
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.runs += 1;
        let log_path = self.log_path(self.runs);
        let log = File::create(&log_path).expect("create broker log");
        let log_err = log.try_clone().expect("clone log handle");
        let listen = self.bootstrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&listen)
            .arg("--advertised-listener")
            .arg(&listen)
            .arg("--shards")
            .arg(self.options.shards.unwrap_or(2).to_string())
            .arg("--metrics-listen")
            .arg(
                self.options
                    .metrics_listen
                    .clone()
                    .unwrap_or_else(|| format!("127.0.0.1:{}", self.metrics_port)),
            );
        if let Some(bytes) = self.options.segment_bytes {
            command.arg("--segment-bytes").arg(bytes.to_string());
        }
        if let Some(n) = self.options.num_partitions {
            command.arg("--num-partitions").arg(n.to_string());
        }
        command.args(&self.options.extra_args);
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        command
            // Plain log lines in the captured file, without terminal colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command.spawn().expect("spawn sluice");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls TCP connect plus a raw ApiVersions v0 round trip until it succeeds, the broker
    /// exits, or [`BROKER_READY_TIMEOUT`] passes.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        let mut last_error = String::from("no attempt made");
        for attempt in 0..1_000u32 {
            if started.elapsed() > BROKER_READY_TIMEOUT {
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                // The log is printed by Drop.
                panic!("broker exited during startup with {status}");
            }
            match raw_api_versions_v0(self.addr(), 1_000 + attempt as i32) {
                Ok(()) => return,
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "broker not ready within {:?} on {} (last error: {last_error})",
            BROKER_READY_TIMEOUT,
            self.bootstrap()
        );
    }

    /// Stops the broker gracefully: SIGTERM, then SIGKILL if it has not exited within
    /// [`BROKER_STOP_TIMEOUT`]. Returns true if it exited on SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if wait_child(&mut child, BROKER_STOP_TIMEOUT).is_some() {
            return true;
        }
        eprintln!("broker did not exit within {BROKER_STOP_TIMEOUT:?} of SIGTERM; sending SIGKILL");
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `kill -9`: the broker gets no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The broker process's environment from its next start on.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.options.env = env;
    }

    /// Starts the broker again on the same data directory and port.
    pub fn restart(&mut self) {
        self.spawn_and_wait();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// All log files of all runs so far, concatenated (tail of each if long).
    /// Whether any run's log has a line containing `needle` (the whole logs, not a tail).
    pub fn logs_contain(&self, needle: &str) -> bool {
        (1..=self.runs).any(|run| {
            std::fs::read(self.log_path(run))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
    }

    /// Whether one line of the broker's logs (any run) holds every one of `parts`.
    pub fn logs_have_line(&self, parts: &[&str]) -> bool {
        (1..=self.runs).any(|run| {
            std::fs::read(self.log_path(run)).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .lines()
                    .any(|l| parts.iter().all(|p| l.contains(p)))
            })
        })
    }

    pub fn logs_text(&self) -> String {
        const TAIL_BYTES: usize = 64 * 1024;
        let mut text = String::new();
        for run in 1..=self.runs {
            let path = self.log_path(run);
            let content = std::fs::read(&path).unwrap_or_default();
            let start = content.len().saturating_sub(TAIL_BYTES);
            text.push_str(&format!(
                "===== broker log, run {run} ({}), last {} of {} bytes =====\n",
                path.display(),
                content.len() - start,
                content.len()
            ));
            text.push_str(&String::from_utf8_lossy(&content[start..]));
            text.push('\n');
        }
        text
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_text());
            if let Some(temp) = self.temp.take() {
                eprintln!(
                    "test failed: broker data and logs kept in {}",
                    temp.keep().display()
                );
            }
        }
    }
}

/// A plain HTTP/1.1 GET (the server closes after one response): (status code, Content-Type,
/// body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, RAW_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(RAW_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(RAW_IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(64 * 1024 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// Waits for a child to exit for at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    for _ in 0..100_000u32 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if started.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Picks a free port for a broker: one that binds on 127.0.0.1 now, released at once.
///
/// The port is taken from below the kernel's ephemeral range when possible. A broker port inside
/// that range can be handed to a client's outgoing connection while the broker is down for a
/// restart (then the restarted broker cannot bind it, or a reconnecting client connects to
/// itself), which would make the restart tests flaky.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    const LOW: u32 = 10_000;
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        // Spread parallel tests and concurrent test binaries over the range.
        let seed = std::process::id()
            .wrapping_mul(7_919)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729))
            .wrapping_add(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            );
        // A port handed out once is never handed out again by this process: a broker binds its
        // port only after recovering its data, and in that window another test's probe would find
        // the same port free (two brokers would then share it through SO_REUSEPORT, or the second
        // metrics endpoint would fail to bind).
        let mut given = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2_000u32 {
            let port = (LOW + (seed.wrapping_add(attempt.wrapping_mul(7_907))) % span) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The test clients' folder (tests/clients): Python and Node scripts, and the packages
/// `tools/test.sh` installs for them (`.venv`, `node_modules`).
const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

/// Panics with the command that installs the test clients when `path` (inside tests/clients)
/// is missing.
fn require_client_install(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: the README's test command (tools/test.sh) installs the test clients; \
         `tools/test.sh setup` installs them without running the tests",
        path.display()
    );
}

/// `tests/clients/.venv/bin/python3 tests/clients/<script>`: the pinned Python clients
/// (tests/clients/requirements.txt) live in that virtual environment, never in the system's.
pub fn python_command(script: &str) -> Command {
    let python = Path::new(CLIENTS_DIR).join(".venv/bin/python3");
    require_client_install(&python);
    let mut command = Command::new(python);
    command.arg(Path::new(CLIENTS_DIR).join(script));
    command
}

/// `node tests/clients/kafkajs_clients.js <bootstrap> <args...>`, ready to run, with the pinned
/// npm packages (tests/clients/package-lock.json) that `tools/test.sh` installs.
pub fn kafkajs_command(bootstrap: &str, args: &[&str]) -> Command {
    require_client_install(&Path::new(CLIENTS_DIR).join("node_modules/kafkajs/package.json"));
    let mut command = Command::new("node");
    command
        .arg(format!("{CLIENTS_DIR}/kafkajs_clients.js"))
        .arg(bootstrap)
        .args(args)
        .current_dir(CLIENTS_DIR);
    command
}

/// Runs `command` with `stdin` fed to it, killing it after `timeout`.
pub fn run_with_timeout(command: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
        // Dropping `input` closes the pipe: the command sees EOF.
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let status = match wait_child(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let status = child.wait().expect("wait killed command");
            eprintln!("command {command:?} killed after {timeout:?}");
            status
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw wire helpers
// ---------------------------------------------------------------------------------------------

/// Encodes a size-prefixed request frame with the header version the API key calls for.
pub fn encode_request<R: Request>(request: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let api_key = ApiKey::try_from(R::KEY).expect("known api key");
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-it")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, header_version)
        .expect("encode header");
    request.encode(&mut body, version).expect("encode body");
    frame(&body)
}

/// One uncompressed magic-v2 RecordBatch holding `values` (offsets from 0, timestamp `ts`)
/// from `producer` = (producer id, epoch, first sequence); `(-1, -1, -1)` for a plain,
/// non-idempotent producer.
pub fn record_batch(producer: (i64, i16, i32), ts: i64, values: Vec<bytes::Bytes>) -> bytes::Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let (producer_id, producer_epoch, first_sequence) = producer;
    let records: Vec<Record> = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch when offset - sequence changes: keep them in step.
            sequence: first_sequence + i as i32,
            timestamp: ts,
            key: None,
            value: Some(value),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Prefixes `payload` with its big-endian i32 length.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 4);
    framed.extend_from_slice(&(payload.len() as i32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// Request header v1 (api key, version, correlation id, nullable client id) as raw bytes, for
/// requests whose version no encoder knows (e.g. Metadata v99).
pub fn raw_header_v1(api_key: i16, version: i16, correlation_id: i32, client_id: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&api_key.to_be_bytes());
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&correlation_id.to_be_bytes());
    bytes.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    bytes.extend_from_slice(client_id.as_bytes());
    bytes
}

pub fn connect_raw(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(RAW_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(RAW_IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads one size-prefixed frame (without its length prefix).
pub fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = i32::from_be_bytes(length);
    if length < 0 || length as usize > RAW_FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response frame length {length} out of range"),
        ));
    }
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// What the broker did with a connection after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerOutcome {
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// The broker sent these bytes instead of closing.
    Answered(Vec<u8>),
    /// Neither within [`RAW_IO_TIMEOUT`].
    TimedOut,
}

/// Waits until the broker either closes the connection or sends something.
pub fn await_close(stream: &mut TcpStream) -> PeerOutcome {
    let mut buffer = [0u8; 4096];
    match stream.read(&mut buffer) {
        Ok(0) => PeerOutcome::Closed,
        Ok(n) => PeerOutcome::Answered(buffer[..n].to_vec()),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            PeerOutcome::TimedOut
        }
        // Connection reset / broken pipe: the broker closed with unread data pending.
        Err(_) => PeerOutcome::Closed,
    }
}

/// ApiVersions v0 round trip; used for readiness. Returns a description of what went wrong.
pub fn raw_api_versions_v0(addr: SocketAddr, correlation_id: i32) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let request = encode_request(&ApiVersionsRequest::default(), 0, correlation_id);
    stream
        .write_all(&request)
        .map_err(|e| format!("write: {e}"))?;
    let payload = read_frame(&mut stream).map_err(|e| format!("read: {e}"))?;
    let (echoed, response) = decode_api_versions(&payload, 0)?;
    if echoed != correlation_id {
        return Err(format!(
            "correlation id {echoed}, expected {correlation_id}"
        ));
    }
    if response.error_code != 0 {
        return Err(format!("error code {}", response.error_code));
    }
    Ok(())
}

/// Decodes an ApiVersions response payload (response header v0, always, per KIP-511).
pub fn decode_api_versions(
    payload: &[u8],
    version: i16,
) -> Result<(i32, ApiVersionsResponse), String> {
    let mut buffer = bytes::Bytes::copy_from_slice(payload);
    let header = ResponseHeader::decode(&mut buffer, 0).map_err(|e| format!("header: {e}"))?;
    let body =
        ApiVersionsResponse::decode(&mut buffer, version).map_err(|e| format!("body: {e}"))?;
    Ok((header.correlation_id, body))
}

/// A full ApiVersions v3 round trip on a fresh connection: proves the broker serves normally.
pub fn api_versions_v3(addr: SocketAddr, correlation_id: i32) -> ApiVersionsResponse {
    let mut stream = connect_raw(addr).expect("connect for ApiVersions v3");
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("sluice-it"))
        .with_client_software_version(StrBytes::from_static_str("0.1.0"));
    stream
        .write_all(&encode_request(&request, 3, correlation_id))
        .expect("write ApiVersions v3");
    let payload = read_frame(&mut stream).expect("read ApiVersions v3 response");
    let (echoed, response) = decode_api_versions(&payload, 3).expect("decode ApiVersions v3");
    assert_eq!(echoed, correlation_id, "ApiVersions v3 correlation id");
    assert_eq!(response.error_code, 0, "ApiVersions v3 error code");
    assert!(
        !response.api_keys.is_empty(),
        "ApiVersions v3 returned no APIs"
    );
    let _ = stream.shutdown(Shutdown::Both);
    response
}

// ---------------------------------------------------------------------------------------------
// rdkafka helpers
// ---------------------------------------------------------------------------------------------

/// Producer settings shared by the tests: acks=all, bounded timeouts, no idempotence (Sluice has
/// no InitProducerId yet).
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", CLIENT_MESSAGE_TIMEOUT_MS.to_string())
        .set("request.timeout.ms", "10000")
        .set("socket.timeout.ms", CLIENT_SOCKET_TIMEOUT_MS.to_string())
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("log_level", "4");
    config
}

/// A consumer of `group` that never joins it: for committing offsets (generation -1, as a
/// manually assigned consumer does) and reading them back. Auto commit is off.
pub fn simple_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("socket.timeout.ms", CLIENT_SOCKET_TIMEOUT_MS.to_string())
        .set("log_level", "4")
        .create()
        .expect("create simple consumer")
}

/// Commits `offsets` ((partition, offset) of `topic`) with `consumer`, synchronously.
pub fn commit_offsets(consumer: &BaseConsumer, topic: &str, offsets: &[(i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .expect("add partition offset");
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
}

/// The committed offsets of `group` for partitions 0..partitions of `topic` (OffsetFetch);
/// `Offset::Invalid` where none is committed.
pub fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Offset> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    simple_consumer(bootstrap, group)
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

/// Consumer for `assign()` with explicit offsets. librdkafka's `assign()` requires a group.id
/// (it fails with "Requires a consumer with group.id configured" otherwise), so one is set, but
/// nothing ever commits: auto commit and offset store are off, and explicit start offsets mean
/// no committed offset is ever fetched from a coordinator.
pub fn assign_consumer(bootstrap: &str, group_hint: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("sluice-it-{group_hint}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("socket.timeout.ms", CLIENT_SOCKET_TIMEOUT_MS.to_string())
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "4")
        .create()
        .expect("create consumer")
}

/// Admin client with bounded timeouts.
pub fn admin_client(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", CLIENT_SOCKET_TIMEOUT_MS.to_string())
        .set("log_level", "4")
        .create()
        .expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)))
}

/// CreateTopics for one topic; returns the per-topic result (Err carries the Kafka error code).
pub async fn try_create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<String, (String, RDKafkaErrorCode)> {
    let admin = admin_client(bootstrap);
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &admin_options(),
        ),
    )
    .await
    .expect("CreateTopics timed out")
    .expect("CreateTopics request failed");
    assert_eq!(results.len(), 1, "CreateTopics results");
    results.into_iter().next().unwrap()
}

/// CreateTopics that must succeed.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    try_create_topic(bootstrap, topic, partitions)
        .await
        .unwrap_or_else(|(name, code)| panic!("CreateTopics {name}: {code:?}"));
}

/// DeleteTopics for one topic; returns the per-topic result.
pub async fn try_delete_topic(
    bootstrap: &str,
    topic: &str,
) -> Result<String, (String, RDKafkaErrorCode)> {
    let admin = admin_client(bootstrap);
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        admin.delete_topics(&[topic], &admin_options()),
    )
    .await
    .expect("DeleteTopics timed out")
    .expect("DeleteTopics request failed");
    assert_eq!(results.len(), 1, "DeleteTopics results");
    results.into_iter().next().unwrap()
}

/// Names of all topics in a Metadata response for all topics.
pub fn topic_names(bootstrap: &str) -> Vec<String> {
    let client: BaseProducer = producer_config(bootstrap)
        .create()
        .expect("metadata client");
    let metadata = client
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata for all topics");
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    names.sort();
    names
}

/// Low and high watermark of one partition (ListOffsets earliest / latest).
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer = assign_consumer(bootstrap, "watermarks");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("fetch_watermarks {topic}/{partition}: {e}"))
}

/// Reads each listed partition from `start` (inclusive) to `end` (exclusive) and returns the
/// messages per partition in the order received. Fails the test if the range is not complete
/// within `timeout`, or if a message outside the range arrives.
pub fn consume_partitions(
    bootstrap: &str,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    timeout: Duration,
) -> BTreeMap<i32, Vec<OwnedMessage>> {
    let consumer = assign_consumer(bootstrap, topic);
    let mut assignment = TopicPartitionList::new();
    let mut result: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
    let mut remaining: u64 = 0;
    for (&partition, &(start, end)) in ranges {
        assert!(
            start <= end,
            "bad range {start}..{end} for partition {partition}"
        );
        result.insert(partition, Vec::new());
        if start < end {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .expect("add partition");
            remaining += (end - start) as u64;
        }
    }
    if remaining == 0 {
        return result;
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut errors = 0u32;
    // Each poll either returns a message, an error, or waits at most 500 ms: bounded by time.
    for _ in 0..10_000_000u64 {
        if remaining == 0 {
            break;
        }
        if started.elapsed() > timeout {
            let progress: Vec<String> = ranges
                .iter()
                .map(|(p, (s, e))| {
                    let got = result.get(p).map_or(0, |v| v.len());
                    format!("p{p}: {got}/{} from {s}", e - s)
                })
                .collect();
            panic!(
                "consuming {topic} timed out after {timeout:?}: {}",
                progress.join(", ")
            );
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(error)) => {
                errors += 1;
                eprintln!("consumer error on {topic}: {error}");
                assert!(errors < 1_000, "too many consumer errors");
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let (start, end) = ranges[&partition];
                assert!(
                    offset >= start && offset < end,
                    "partition {partition}: offset {offset} outside the requested {start}..{end}"
                );
                let received = result.get_mut(&partition).expect("assigned partition");
                if let Some(last) = received.last() {
                    assert!(
                        offset > last.offset(),
                        "partition {partition}: offset {offset} after {}",
                        last.offset()
                    );
                }
                received.push(message.detach());
                remaining -= 1;
            }
        }
    }
    let _ = consumer.unassign();
    result
}

/// Reads every partition of `topic` from 0 to its current high watermark.
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> BTreeMap<i32, Vec<OwnedMessage>> {
    let ranges: BTreeMap<i32, (i64, i64)> = partitions
        .iter()
        .map(|&p| {
            let (low, high) = watermarks(bootstrap, topic, p);
            assert_eq!(low, 0, "low watermark of {topic}/{p}");
            (p, (0, high))
        })
        .collect();
    consume_partitions(bootstrap, topic, &ranges, timeout)
}

/// Partition count of `topic` as Metadata reports it. The request allows auto-creation (a
/// producer-type client sends allow_auto_topic_creation=true; librdkafka consumers send false by
/// default), so this creates unknown topics. LEADER_NOT_AVAILABLE, Kafka's answer while an
/// auto-created topic is being set up, is retried a few times.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let client: BaseProducer = producer_config(bootstrap)
        .create()
        .expect("metadata client");
    let started = Instant::now();
    let mut last_error = None;
    for _ in 0..20u32 {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        let metadata = client
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("metadata for {topic}: {e}"));
        let entry = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .unwrap_or_else(|| panic!("topic {topic} missing from metadata"));
        match entry.error() {
            None => return entry.partitions().len(),
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) => {
                last_error = entry.error();
                std::thread::sleep(Duration::from_millis(250));
            }
            Some(error) => panic!("metadata error for {topic}: {error:?}"),
        }
    }
    panic!("metadata for {topic} kept failing: {last_error:?}");
}

// ---------------------------------------------------------------------------------------------
// Segment files
// ---------------------------------------------------------------------------------------------

/// Position of one RecordBatch inside a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPosition {
    /// Byte offset of the batch in the file.
    pub position: u64,
    /// Total size: batchLength + 12.
    pub size: u64,
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub last_offset_delta: i32,
}

/// Size of the batch fields up to and including the CRC (baseOffset 8, batchLength 4,
/// partitionLeaderEpoch 4, magic 1, crc 4); the CRC covers everything after it.
pub const BATCH_CRC_END: u64 = 21;
/// Smallest valid RecordBatch (header without records).
pub const BATCH_HEADER_BYTES: u64 = 61;

/// Walks the batches of a segment from byte 0 until a zero batchLength or the end of the data.
/// Panics on a batch that runs past the end of the file or fails its CRC: used on files the
/// broker wrote and that the test has not damaged yet.
pub fn segment_batches(path: &Path) -> Vec<BatchPosition> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut batches = Vec::new();
    let mut position = 0usize;
    for _ in 0..bytes.len() / BATCH_HEADER_BYTES as usize + 1 {
        if position + 12 > bytes.len() {
            break;
        }
        let length = i32::from_be_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        if length == 0 {
            break;
        }
        assert!(
            length as u64 >= BATCH_HEADER_BYTES - 12,
            "{}: batch at {position} has batchLength {length}",
            path.display()
        );
        let size = length as usize + 12;
        assert!(
            position + size <= bytes.len(),
            "{}: batch at {position} of size {size} runs past the end ({})",
            path.display(),
            bytes.len()
        );
        let batch = &bytes[position..position + size];
        assert_eq!(batch[16], 2, "magic of batch at {position}");
        let crc_stored = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        let crc_computed = crc32c::crc32c(&batch[21..]);
        assert_eq!(
            crc_stored,
            crc_computed,
            "{}: CRC of batch at {position}",
            path.display()
        );
        batches.push(BatchPosition {
            position: position as u64,
            size: size as u64,
            base_offset: i64::from_be_bytes(batch[0..8].try_into().unwrap()),
            partition_leader_epoch: i32::from_be_bytes(batch[12..16].try_into().unwrap()),
            last_offset_delta: i32::from_be_bytes(batch[23..27].try_into().unwrap()),
        });
        position += size;
    }
    batches
}

/// Segment files of a partition, sorted by base offset (the name is the 20-digit base offset).
pub fn segment_files(partition_dir: &Path) -> Vec<(i64, PathBuf)> {
    let mut segments: Vec<(i64, PathBuf)> = std::fs::read_dir(partition_dir)
        .unwrap_or_else(|e| panic!("read dir {}: {e}", partition_dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let stem = name.strip_suffix(".log")?;
            if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((stem.parse().ok()?, path))
        })
        .collect();
    segments.sort();
    segments
}

// ---------------------------------------------------------------------------------------------
// Graceful stop (tests/lifecycle.rs)
// ---------------------------------------------------------------------------------------------

impl Broker {
    /// Sends SIGTERM and waits up to `timeout` for the broker to exit. Returns its exit status
    /// and how long it took, or None if it did not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        match wait_child(&mut child, timeout) {
            Some(status) => Some((status, started.elapsed())),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// The log of the latest run only.
    pub fn last_run_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path(self.runs)).unwrap_or_default())
            .into_owned()
    }
}

/// Sums the integer field `field=` over the log lines containing `message` (e.g. the per-shard
/// "partitions recovered" lines); None if no line has the message.
pub fn sum_log_field(log: &str, message: &str, field: &str) -> Option<u64> {
    let key = format!("{field}=");
    let mut found = false;
    let mut sum = 0;
    for line in log.lines().filter(|l| l.contains(message)) {
        found = true;
        let value = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&key))
            .and_then(|v| {
                v.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {field}= in log line: {line}"));
        sum += value;
    }
    found.then_some(sum)
}

/// One acks=all Produce of one record to partition 0 of `topic`, straight to `addr` (no client
/// retries, timeout 3 s): its error code.
pub fn raw_produce(addr: SocketAddr, topic: &str, value: &str) -> i16 {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    const V: i16 = 9;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(3_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(record_batch(
                            (-1, -1, -1),
                            0,
                            vec![value.to_string().into()],
                        ))),
                ]),
        ]);
    let mut s = connect_raw(addr).expect("connect to the broker");
    std::io::Write::write_all(&mut s, &encode_request(&req, V, 7)).unwrap();
    let frame = read_frame(&mut s).expect("a Produce response");
    let mut b = bytes::Bytes::from(frame);
    // Produce v9 is a flexible version: response header v1.
    ResponseHeader::decode(&mut b, 1).expect("response header");
    let r = kafka_protocol::messages::ProduceResponse::decode(&mut b, V).expect("response");
    r.responses[0].partition_responses[0].error_code
}

/// One OffsetForLeaderEpoch (v4) for partition `partition` of `topic`, straight to `addr`:
/// (error code, leader epoch, end offset).
pub fn raw_offset_for_leader_epoch(
    addr: SocketAddr,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{
        OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    const V: i16 = 4;
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    OffsetForLeaderPartition::default()
                        .with_partition(partition)
                        .with_current_leader_epoch(current_leader_epoch)
                        .with_leader_epoch(leader_epoch),
                ]),
        ]);
    let mut s = connect_raw(addr).expect("connect to the broker");
    std::io::Write::write_all(&mut s, &encode_request(&req, V, 9)).unwrap();
    let frame = read_frame(&mut s).expect("an OffsetForLeaderEpoch response");
    let mut b = bytes::Bytes::from(frame);
    ResponseHeader::decode(&mut b, 1).expect("response header");
    let r = OffsetForLeaderEpochResponse::decode(&mut b, V).expect("response");
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// One request at `version` on a new connection to `addr`, and its response (the response
/// header version from the API's table).
pub fn raw_round_trip<Req, Resp>(
    addr: SocketAddr,
    request: &Req,
    version: i16,
) -> std::io::Result<Resp>
where
    Req: Request,
    Resp: kafka_protocol::protocol::Decodable,
{
    use kafka_protocol::messages::{ApiKey, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut s = connect_raw(addr)?;
    std::io::Write::write_all(&mut s, &encode_request(request, version, 10))?;
    let mut b = bytes::Bytes::from(read_frame(&mut s)?);
    let bad =
        |e: anyhow::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let key = ApiKey::try_from(Req::KEY)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "unknown API key"))?;
    ResponseHeader::decode(&mut b, key.response_header_version(version)).map_err(bad)?;
    Resp::decode(&mut b, version).map_err(bad)
}

/// FindCoordinator (v2) for consumer group `group` at `addr`: (error code, coordinator's
/// node id).
pub fn raw_find_coordinator(addr: SocketAddr, group: &str) -> std::io::Result<(i16, i32)> {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let req = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let r: FindCoordinatorResponse = raw_round_trip(addr, &req, 2)?;
    Ok((r.error_code, r.node_id.0))
}

/// Metadata (v9) for `topic` at `addr`: each partition's (error code, leader).
pub fn raw_metadata_leaders(
    addr: SocketAddr,
    topic: &str,
) -> std::io::Result<BTreeMap<i32, (i16, i32)>> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let r: MetadataResponse = raw_round_trip(addr, &req, 9)?;
    Ok(r.topics
        .first()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, (p.error_code, p.leader_id.0)))
                .collect()
        })
        .unwrap_or_default())
}

/// A running `transactions.py` whose stdout lines arrive on a channel.
pub struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Script {
    /// `transactions.py BOOTSTRAP args...`.
    pub fn spawn(bootstrap: &str, args: &[&str]) -> Script {
        Script::spawn_env(bootstrap, args, &[])
    }

    /// [`Script::spawn`] with environment variables (`SLUICE_TEST_REPLICATION=3` against a
    /// cluster).
    pub fn spawn_env(bootstrap: &str, args: &[&str], env: &[(&str, &str)]) -> Script {
        let mut child = python_command("transactions.py")
            .arg(bootstrap)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn transactions.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, lines }
    }

    /// Wait until `count` lines containing `needle` were printed; false at the deadline or
    /// if the script ended first.
    pub fn wait_for(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while seen < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => seen += 1,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        true
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
