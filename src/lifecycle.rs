//! Process lifecycle: SIGTERM/SIGINT start a graceful stop.
//!
//! The main thread blocks both signals before the shard threads start (so
//! they inherit the mask) and a small thread waits for them with `sigwait`.
//! A signal sets [`StopSignal`]; every shard polls it from a timer, stops
//! accepting, lets in-flight requests finish (bounded), waits for the other
//! shards to drain too, then flushes and closes its partitions. A second
//! signal exits at once.
//!
//! # Clean-shutdown markers
//! Each partition's `close` leaves its own marker (`storage::clean_shutdown`),
//! which is what the next start trusts to skip the recovery scan. When
//! every shard closed all its partitions without error, the main thread
//! also writes `<data>/clean-shutdown` ([`write_broker_marker`]); the next
//! start reads and removes it before any shard starts
//! ([`take_broker_marker`]) and logs whether the previous shutdown was
//! clean. The broker-wide file only reports; it is never trusted for data.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::runtime;

/// How often shards look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Shared, write-once stop flag plus a drain counter. Touched only at
/// shutdown and by a 20 ms timer per shard: never on the data path.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    drained: AtomicUsize,
}

impl StopSignal {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolve once a stop was requested.
    pub async fn stopped(&self) {
        while !self.is_stopping() {
            runtime::sleep(POLL_INTERVAL).await;
        }
    }

    /// Announce that this shard drained, then wait (bounded) until `shards`
    /// shards have, so no shard closes partitions another one still needs.
    /// `fut`'s output, or None if a stop is requested first (an accept loop's wait).
    pub async fn unless_stopped<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(fut.await) }, async {
            self.stopped().await;
            None
        })
        .await
    }

    pub async fn drained_barrier(&self, shards: usize, bound: Duration) {
        self.drained.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + bound;
        while self.drained.load(Ordering::SeqCst) < shards && Instant::now() < deadline {
            runtime::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Block SIGTERM and SIGINT in this thread (and threads it starts later) and
/// start the thread that turns them into a stop request.
pub fn install_signal_handler(stop: Arc<StopSignal>) {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask on the
    // calling thread; sigwait in a dedicated thread on the same set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::Builder::new()
            .name("sluice-signals".into())
            .spawn(move || {
                let mut first = true;
                loop {
                    let mut sig: libc::c_int = 0;
                    if libc::sigwait(&set, &mut sig) != 0 {
                        continue;
                    }
                    if first {
                        info!(signal = sig, "stop requested: draining");
                        stop.request_stop();
                        first = false;
                    } else {
                        warn!(signal = sig, "second stop signal: exiting now");
                        std::process::exit(130);
                    }
                }
            })
            .expect("spawn signal thread");
    }
}

/// Name of the broker-wide marker in the data directory.
pub const BROKER_MARKER_FILE: &str = "clean-shutdown";
/// First line of the broker-wide marker (the format, for humans and tools).
const BROKER_MARKER_HEADER: &str = "sluice clean shutdown v1";

/// How the previous run of the broker on this data directory ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousShutdown {
    /// No catalog yet: a new data directory.
    FirstStart,
    /// Every partition was closed cleanly (the broker-wide marker was there).
    Clean,
    /// Killed, crashed, or a partition failed to close: partitions without
    /// their own marker are recovered by a scan.
    NotClean,
}

/// At startup, before any shard opens a partition: read and remove
/// `<data>/clean-shutdown` (durably, so a crash of this run is not taken
/// for a clean stop), and log what it says. Blocking (main thread).
pub fn take_broker_marker(data_dir: &Path) -> PreviousShutdown {
    let path = data_dir.join(BROKER_MARKER_FILE);
    let text = std::fs::read_to_string(&path).ok();
    if text.is_some()
        && let Err(e) = std::fs::remove_file(&path).and_then(|()| sync_dir_blocking(data_dir))
    {
        warn!(marker = %path.display(), error = %e, "cannot remove the clean-shutdown marker");
    }
    let first_start = !data_dir.join("__cluster").join("catalog.json").exists();
    match text {
        Some(t) if t.starts_with(BROKER_MARKER_HEADER) => {
            let detail = t.lines().skip(1).collect::<Vec<_>>().join(" ");
            info!(detail = %detail, "previous shutdown was clean");
            PreviousShutdown::Clean
        }
        _ if first_start => {
            info!("new data directory: no previous shutdown");
            PreviousShutdown::FirstStart
        }
        _ => {
            warn!("previous shutdown was not clean: partitions will be recovered");
            PreviousShutdown::NotClean
        }
    }
}

/// After every shard closed all its partitions without error: write
/// `<data>/clean-shutdown` (temporary file, fsync, rename, directory
/// fsync). Blocking (main thread, after the shards stopped).
pub fn write_broker_marker(data_dir: &Path, partitions: usize) -> std::io::Result<()> {
    let path = data_dir.join(BROKER_MARKER_FILE);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let text = format!("{BROKER_MARKER_HEADER}\nat_ms={at_ms}\npartitions={partitions}\n");
    crate::runtime::file::replace_file_durable_blocking(&path, text.as_bytes())?;
    // Paired check: it reads back as written.
    assert_eq!(std::fs::read_to_string(&path)?, text);
    Ok(())
}

/// fsync a directory from a plain thread (no executor here).
fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_marker_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(take_broker_marker(dir), PreviousShutdown::FirstStart);
        std::fs::create_dir_all(dir.join("__cluster")).unwrap();
        std::fs::write(dir.join("__cluster/catalog.json"), "{}").unwrap();
        assert_eq!(take_broker_marker(dir), PreviousShutdown::NotClean);
        write_broker_marker(dir, 3).unwrap();
        assert_eq!(take_broker_marker(dir), PreviousShutdown::Clean);
        // Taken: the next start after a crash is not clean.
        assert!(!dir.join(BROKER_MARKER_FILE).exists());
        assert_eq!(take_broker_marker(dir), PreviousShutdown::NotClean);
    }
}
