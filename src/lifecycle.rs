//! Process lifecycle: SIGTERM/SIGINT start a graceful stop.
//!
//! The main thread blocks both signals before the shard threads start (so
//! they inherit the mask) and a small thread waits for them with `sigwait`.
//! A signal sets [`StopSignal`]; every shard polls it from a timer, stops
//! accepting, lets in-flight requests finish (bounded), waits for the other
//! shards to drain too, then flushes and closes its partitions. A second
//! signal exits at once.

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
