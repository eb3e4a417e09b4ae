//! Starting the broker: host checks, the data-directory lock, the catalog,
//! the shard-to-shard channels, and one executor per shard.
//!
//! Each shard, on its own thread: works around the glommio iopoll probe,
//! connects its channels, recovers the partitions it owns, waits until every
//! shard has recovered, then binds the listening port (SO_REUSEPORT) and
//! serves.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::storage::io::SyncScope;

/// Longest a graceful stop waits for in-flight requests, and for the other
/// shards to drain.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

use crate::cluster::catalog::{Catalog, CatalogError};
use crate::config::{Config, ConfigError};
use crate::constants::CROSS_SHARD_QUEUE_DEPTH;
use crate::lifecycle::{StopSignal, install_signal_handler};
use crate::runtime::{self, ExecutorSettings, RuntimeError, ShardChannels};
use crate::server;
use crate::shard::{Job, Shard};
use crate::storage::OpenedFrom;
use crate::types::{ShardId, TopicPartition};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("another broker is using data directory {0} (lock held on .lock)")]
    Locked(String),
    #[error("io_uring is disabled on this host (kernel.io_uring_disabled = {0}); set it to 0")]
    IoUringDisabled(String),
    #[error(
        "the memlock limit is {have} bytes but {need} are needed ({shards} shards x 3 rings x {io_memory} bytes); \
         raise it (ulimit -l, LimitMEMLOCK= in systemd), run with CAP_IPC_LOCK, or lower io_memory_bytes"
    )]
    Memlock {
        have: u64,
        need: u64,
        shards: usize,
        io_memory: usize,
    },
}

/// The host as `sluice tune` and the start-up checks see it for this
/// configuration: its data directory, shard cores and io_uring memory
/// (shards x 3 rings x `io_memory_bytes`, as charged to memlock below).
pub fn tuning_host(config: &Config) -> sluice_tune::Host {
    let shards = config.shard_count();
    let need = (shards * 3 * config.io_memory_bytes) as u64;
    sluice_tune::Host::local(&config.data_dir, shards, need)
}

/// Check that io_uring is allowed and that the memlock limit covers the
/// rings; raise the soft limit when the hard limit allows.
pub fn check_host(config: &Config) -> Result<(), StartError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let v = v.trim().to_string();
        if v != "0" {
            return Err(StartError::IoUringDisabled(v));
        }
    }
    let shards = config.shard_count();
    let need = (shards * 3 * config.io_memory_bytes) as u64;
    // SAFETY: plain syscalls on a local struct.
    let (mut soft, hard) = unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r);
        (r.rlim_cur, r.rlim_max)
    };
    if soft != libc::RLIM_INFINITY && soft < need {
        let target = if hard == libc::RLIM_INFINITY {
            need
        } else {
            need.min(hard)
        };
        let r = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: plain syscall.
        if target > soft && unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0 {
            info!(from = soft, to = target, "raised the memlock soft limit");
            soft = target;
        }
    }
    // Root (CAP_IPC_LOCK) is not charged for io_uring memory (GLOMMIO.md §1).
    // SAFETY: plain syscall.
    let privileged = unsafe { libc::geteuid() } == 0;
    if soft != libc::RLIM_INFINITY && soft < need && !privileged {
        return Err(StartError::Memlock {
            have: soft,
            need,
            shards,
            io_memory: config.io_memory_bytes,
        });
    }
    Ok(())
}

/// The fsync scope the shards use: the configured one, except that `filesystem` needs syncfs
/// to report write-back errors (Linux 5.8 and later); on an older kernel it falls back to
/// `file`, with a warning.
pub fn effective_sync_scope(config: &Config) -> SyncScope {
    let scope = config.sync_scope().unwrap_or_default();
    if scope == SyncScope::Filesystem {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !kernel_at_least(&release, 5, 8) {
            warn!(
                kernel = release.trim(),
                "fsync_scope = filesystem needs Linux 5.8+ (syncfs error reporting); using file"
            );
            return SyncScope::File;
        }
    }
    scope
}

/// Whether a kernel release string such as `6.1.0-13-amd64` is at least `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Hold an exclusive lock on `<data>/.lock` for the life of the process, so
/// a second broker cannot share the data directory (or, through
/// SO_REUSEPORT, silently share the port).
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let display = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: display.clone(),
        source,
    })?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|source| StartError::DataDir {
            path: display.clone(),
            source,
        })?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::Locked(display));
    }
    Ok(f)
}

/// On shard 0: serve the metrics endpoint if `metrics_listen` is set. A
/// port that cannot be bound is logged and the broker runs without metrics:
/// losing observability must not take the data path down.
fn start_metrics(shard: &Rc<Shard>, config: &Config, stop: &Arc<StopSignal>) {
    let Ok(Some(addr)) = config.metrics_addr() else {
        info!("metrics endpoint disabled (metrics_listen is empty)");
        return;
    };
    match runtime::bind_exclusive(addr) {
        Ok(listener) => runtime::spawn_detached(crate::metrics::http::serve(
            shard.clone(),
            listener,
            stop.clone(),
        )),
        Err(e) => error!(%addr, error = %e, "cannot serve metrics: running without them"),
    }
}

/// On the metadata shard of a cluster member: open this broker's replica of the metadata log
/// (a Raft group of every seed) and start applying it.
async fn start_metadata(
    shard: &Rc<Shard>,
    spec: &crate::cluster::seeds::ClusterSpec,
) -> Result<(), crate::replication::ReplicaError> {
    use crate::cluster::metadata::{METADATA_TOPIC_ID, metadata_tp};
    let cluster = shard.cluster().expect("set above");
    let mut log_cfg = shard.config.log_config();
    log_cfg.retention_enabled = false;
    cluster
        .open_replica(
            &shard.config.data_dir,
            &metadata_tp(),
            METADATA_TOPIC_ID,
            spec.voters(),
            None,
            log_cfg,
        )
        .await?;
    let driver = cluster.replica(&metadata_tp()).expect("opened above");
    crate::cluster::metadata::spawn_applier(shard.clone(), driver.replica().log().clone());
    Ok(())
}

/// Run the broker until the process is stopped.
pub fn run(mut config: Config) -> Result<(), StartError> {
    config.validate()?;
    crate::metrics::http::mark_start();
    check_host(&config)?;
    // Warnings only (reads of /proc and /sys): a badly tuned host is slower, not broken.
    sluice_tune::log_startup_checks(&tuning_host(&config));
    let _lock = lock_data_dir(&config.data_dir)?;
    // Absolute from here on: glommio's directory calls fail (EBADF) on
    // relative paths such as the default `./data`.
    config.data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    // Before any partition opens: report (and consume) how the last run ended.
    crate::lifecycle::take_broker_marker(&config.data_dir);
    let mut cluster = config.cluster()?;
    if let Some(spec) = &mut cluster {
        spec.incarnation =
            crate::cluster::incarnation::load_or_create(&config.data_dir).map_err(|source| {
                StartError::DataDir {
                    path: config.data_dir.display().to_string(),
                    source,
                }
            })?;
    }
    let catalog = match &cluster {
        // A one-node broker owns its catalog.
        None => {
            let mut catalog = Catalog::load_or_create(&config.data_dir)?;
            crate::group::ensure_offsets_topic(&mut catalog, &config)?;
            crate::txn::ensure_txn_topic(&mut catalog, &config)?;
            catalog
        }
        // In a cluster the catalog is what the metadata log says; the file is the last applied
        // copy, replaced as the log is applied.
        Some(spec) => {
            info!(node_id = spec.node_id, seeds = ?spec.seeds, rpc_listen = %spec.rpc_listen, incarnation = spec.incarnation, "starting as a cluster member");
            Catalog::load_cached(&config.data_dir)?
        }
    };
    let catalog = Arc::new(catalog);
    let shards = config.shard_count();
    info!(
        shards,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        topics = catalog.topics.len(),
        "starting sluice"
    );

    let channels: Vec<Option<ShardChannels<Job>>> =
        runtime::channel_matrix(shards, CROSS_SHARD_QUEUE_DEPTH)
            .into_iter()
            .map(Some)
            .collect();
    let channels = Arc::new(Mutex::new(channels));
    let recovered = Arc::new(Barrier::new(shards));
    let stop = StopSignal::new();
    install_signal_handler(stop.clone());
    let data_dir = config.data_dir.clone();
    // Partitions closed cleanly / not, summed over shards at stop.
    let closed = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let closed_all = closed.clone();
    let sync_scope = effective_sync_scope(&config);
    // Each start journals into a generation of its own; what earlier ones left is replayed.
    let journal_root = config.data_dir.join(crate::storage::journal::JOURNAL_DIR);
    let journal_generation = crate::storage::journal::latest_generation(&journal_root) + 1;
    let journal_on =
        config.journal && sync_scope == SyncScope::Filesystem && config.flush_interval_ms == 0;
    info!(fsync_scope = ?sync_scope, journal = journal_on, "durability");
    let config = Arc::new(config);
    let settings = ExecutorSettings {
        shards,
        io_memory_bytes: config.io_memory_bytes,
        spin_before_park: Duration::from_micros(config.spin_before_park_us),
        pin: true,
    };

    runtime::run_shards(&settings, move |id| {
        let channels = channels.clone();
        let catalog = catalog.clone();
        let config = config.clone();
        let recovered = recovered.clone();
        let stop = stop.clone();
        let closed = closed_all.clone();
        let journal_root = journal_root.clone();
        let cluster = cluster.clone();
        async move {
            // Startup only: each shard takes its own channel ends once.
            let mine = channels.lock().expect("channel table")[id.0]
                .take()
                .expect("each shard takes its channels once");
            crate::storage::io::Env::init_production(
                sync_scope,
                Some(crate::storage::journal::JournalConfig {
                    root: journal_root.clone(),
                    generation: journal_generation,
                    shard: id.0,
                    file_bytes: config.journal_file_bytes,
                    enabled: journal_on,
                }),
            );
            if let Err(e) = runtime::file::warm_iopoll_probe(&config.data_dir).await {
                error!(shard = %id, error = %e, "iopoll probe workaround failed");
            }
            // Connecting waits for the peer's end: connect every end at once.
            let senders = futures::future::join_all(mine.to.into_iter().map(|tx| async move {
                match tx {
                    Some(tx) => Some(runtime::connect_sender(tx).await),
                    None => None,
                }
            }));
            let receivers =
                futures::future::join_all(mine.from.into_iter().enumerate().filter_map(
                    |(source, rx)| {
                        rx.map(|rx| async move {
                            (ShardId(source), runtime::connect_receiver(rx).await)
                        })
                    },
                ));
            let (peers, receivers) = futures::future::join(senders, receivers).await;
            let shard = Shard::new(
                id,
                shards,
                config.clone(),
                Arc::new(Catalog::default()),
                peers,
            );
            for (source, rx) in receivers {
                shard.serve_peer(source, rx);
            }
            if let Some(spec) = &cluster {
                shard.set_cluster(crate::cluster::node::ClusterShard::new(
                    spec.clone(),
                    &config,
                ));
                crate::cluster::node::spawn_leadership_notices(shard.clone());
            }
            shard.remove_orphans_with(&catalog);
            let opening = Instant::now();
            // What earlier starts journaled, for the partitions this shard owns.
            let journal = crate::storage::io::Env::production().journal;
            if let Some(j) = &journal {
                let owns = |name: &str| {
                    TopicPartition::parse_dir_name(name).is_some_and(|tp| shard.owner_of(&tp) == id)
                };
                if let Err(e) = j.load(&owns).await {
                    error!(shard = %id, error = %e, "cannot read the journal");
                    std::process::exit(1);
                }
            }
            if let Err(e) = shard.apply_catalog(catalog.clone()).await {
                error!(shard = %id, error = %e, "cannot open partitions");
                std::process::exit(1);
            }
            if let Some(spec) = &cluster
                && id == crate::cluster::metadata::metadata_shard(shards)
                && let Err(e) = start_metadata(&shard, spec).await
            {
                error!(shard = %id, error = %e, "cannot open the cluster metadata log");
                std::process::exit(1);
            }
            let partitions = shard.owned_partitions();
            let count = |how| {
                partitions
                    .iter()
                    .filter(|(_, log)| log.opened_from() == how)
                    .count()
            };
            info!(
                shard = %id,
                partitions = partitions.len(),
                opened_clean = count(OpenedFrom::CleanShutdown),
                recovered = count(OpenedFrom::Recovery),
                created = count(OpenedFrom::Created),
                elapsed_ms = opening.elapsed().as_millis() as u64,
                "partitions recovered"
            );
            drop(partitions);
            // Committed offsets are served from memory: rebuild them first.
            if let Err(e) = shard.groups.load(&shard).await {
                error!(shard = %id, error = %e, "cannot load committed offsets");
                std::process::exit(1);
            }
            crate::group::spawn_ticker(shard.clone());
            if let Err(e) = shard.txns.load(&shard).await {
                error!(shard = %id, error = %e, "cannot load transaction states");
                std::process::exit(1);
            }
            // Serve only when every shard can answer for its partitions.
            recovered.wait();
            // Every shard's partitions are open: prepared transactions can get their markers.
            crate::txn::spawn_ticker(shard.clone());
            // Every shard replayed what concerned it: earlier journal generations can go.
            if id.0 == 0
                && let Some(j) = &journal
                && let Err(e) = j.finish_recovery().await
            {
                error!(error = %e, "cannot remove replayed journal files");
                std::process::exit(1);
            }
            recovered.wait();
            let listener = match runtime::bind_reuseport(config.listen) {
                Ok(l) => l,
                Err(e) => {
                    error!(shard = %id, addr = %config.listen, error = %e, "cannot listen");
                    std::process::exit(1);
                }
            };
            server::announce(&shard, &listener);
            if let Some(spec) = &cluster {
                match runtime::bind_reuseport(spec.rpc_listen) {
                    Ok(l) => runtime::spawn_detached(crate::cluster::rpc::accept_loop(
                        shard.clone(),
                        l,
                        stop.clone(),
                    )),
                    Err(e) => {
                        error!(shard = %id, addr = %spec.rpc_listen, error = %e, "cannot listen for brokers");
                        std::process::exit(1);
                    }
                }
                if id == crate::cluster::metadata::metadata_shard(shards) {
                    let (host, port) = config
                        .advertised()
                        .expect("advertised listener validated at start");
                    crate::cluster::metadata::spawn_registration(
                        shard.clone(),
                        crate::cluster::catalog::BrokerInfo {
                            id: spec.node_id,
                            host,
                            port,
                            rpc: spec.seeds[&spec.node_id].clone(),
                            shards,
                            incarnation: spec.incarnation,
                        },
                    );
                }
            }
            if id.0 == 0 {
                start_metrics(&shard, &config, &stop);
                info!(addr = %config.listen, "sluice ready");
            }
            server::accept_loop(shard.clone(), listener, stop.clone()).await;
            server::drain(&shard, DRAIN_BOUND).await;
            stop.drained_barrier(shards, DRAIN_BOUND).await;
            let (ok, failed) = shard.close_all().await;
            // Everything journaled is in the segments and synced: the journal can go.
            if failed == 0
                && let Some(j) = &journal
                && let Err(e) = j.remove_own().await
            {
                warn!(shard = %id, error = %e, "cannot remove the journal after a clean stop");
            }
            closed.0.fetch_add(ok, Ordering::SeqCst);
            closed.1.fetch_add(failed, Ordering::SeqCst);
            info!(shard = %id, closed = ok, failed, "partitions flushed and closed");
        }
    })?;
    let ok = closed.0.load(Ordering::SeqCst);
    let failed = closed.1.load(Ordering::SeqCst);
    if failed > 0 {
        error!(
            failed,
            "some partitions did not close cleanly: the next start recovers them"
        );
        return Ok(());
    }
    match crate::lifecycle::write_broker_marker(&data_dir, ok) {
        Ok(()) => info!(partitions = ok, "sluice stopped cleanly"),
        Err(e) => error!(error = %e, "cannot write the clean-shutdown marker"),
    }
    Ok(())
}
