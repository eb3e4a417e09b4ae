//! The Kafka-protocol server of one shard: the listener (every shard binds the
//! same port with SO_REUSEPORT), connections and the API handlers.

pub mod connection;
pub mod handlers;
pub mod ordering;
pub mod zero_copy;

use std::rc::Rc;

use tracing::{info, warn};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lifecycle::StopSignal;
use crate::runtime::{self, TcpListener};
use crate::shard::Shard;

/// Accept connections until the listener fails. Connections past the
/// per-shard limit are closed at once.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, stop: Arc<StopSignal>) {
    let limit = shard.config.max_connections_per_shard;
    loop {
        let accepted = stop.unless_stopped(listener.accept()).await;
        let Some(accepted) = accepted else {
            info!(shard = %shard.id, "stopped accepting connections");
            return;
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(shard = %shard.id, error = %e, "accept failed");
                runtime::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= limit {
            warn!(shard = %shard.id, limit, "connection limit reached: closing new connection");
            drop(stream);
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let s = shard.clone();
        runtime::spawn_detached(async move {
            connection::serve(s.clone(), stream).await;
            s.connections.set(s.connections.get() - 1);
        });
    }
}

/// Log that this shard is serving.
pub fn announce(shard: &Shard, listener: &TcpListener) {
    info!(shard = %shard.id, addr = ?listener.local_addr().ok(), "listening");
}

/// After accepting stopped: refuse new requests and wait (bounded) until the
/// requests in flight on this shard's connections are answered.
pub async fn drain(shard: &Shard, bound: Duration) {
    shard.begin_stop();
    let deadline = Instant::now() + bound;
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    if shard.in_flight.get() > 0 {
        warn!(shard = %shard.id, in_flight = shard.in_flight.get(), "drain timed out");
    }
}
