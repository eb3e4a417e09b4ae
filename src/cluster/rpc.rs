//! Broker-to-broker links: the Raft messages of every replica, carried in
//! [`crate::replication::wire`] frames over the RPC listener (never the Kafka port).
//!
//! Outbound: each shard keeps one connection to each peer broker ([`Links`]), so traffic is
//! batched per broker pair and per shard: a replica's messages are queued for their peer
//! (bounded: beyond [`RPC_QUEUE_MESSAGES_MAX`] new ones are dropped and counted, which Raft
//! treats as a lossy network), and the peer's writer task sends everything queued as frames
//! in one go. A peer that cannot be reached has its queue dropped; the writer reconnects with
//! a backoff.
//!
//! Inbound: every shard binds the RPC address (SO_REUSEPORT). A connection's frames are
//! checked whole ([`wire::decode`]; a bad frame closes the connection with the reason logged),
//! then each message goes to the shard that owns its partition on this broker (the sender may
//! run another number of shards), by message passing, which pushes back on the reading
//! connection when the target shard is busy.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::io::AsyncReadExt;
use tracing::{debug, info, warn};

use super::metadata::{METADATA_TOPIC_ID, metadata_tp};
use super::seeds::ClusterSpec;
use crate::constants::RPC_QUEUE_MESSAGES_MAX;
use crate::lifecycle::StopSignal;
use crate::replication::wire::{self, FrameBuilder, GroupMessage, Route};
use crate::runtime::{self, Notify, TcpListener, TcpStream};
use crate::shard::Shard;
use crate::types::{ShardId, TopicPartition};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long sent data may stay unacknowledged before the kernel closes a broker-to-broker
/// connection (TCP_USER_TIMEOUT). Raft's heartbeats keep data in flight, so a peer cut off by
/// the network is noticed within this time and the link reconnects, instead of waiting for
/// TCP's retransmissions, whose backoff grows to many seconds: without it a healed network
/// partition could go unnoticed for longer than the partition lasted.
const LINK_USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Keepalive on idle broker-to-broker connections (an inbound one only reads): probes after
/// this long idle, this often, this many.
const LINK_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(2), Duration::from_secs(1), 3);
const READ_CHUNK: usize = 256 * 1024;

/// One peer broker, as seen from one shard.
struct PeerLink {
    id: i32,
    addr: String,
    queue: RefCell<VecDeque<GroupMessage>>,
    wake: Notify,
    dropped: Cell<u64>,
    sent: Cell<u64>,
    /// False from a failed connect or write until the next successful connect.
    reachable: Cell<bool>,
}

/// A shard's outbound links to every other broker.
pub struct Links {
    me: i32,
    incarnation: u64,
    peers: HashMap<i32, Rc<PeerLink>>,
    stopped: Cell<bool>,
}

impl Links {
    /// Links to every peer of `spec`, with their writer tasks started.
    pub fn start(spec: &ClusterSpec) -> Rc<Links> {
        let peers: HashMap<i32, Rc<PeerLink>> = spec
            .peers()
            .map(|(id, addr)| {
                (
                    id,
                    Rc::new(PeerLink {
                        id,
                        addr: addr.to_string(),
                        queue: RefCell::new(VecDeque::new()),
                        wake: Notify::new(),
                        dropped: Cell::new(0),
                        sent: Cell::new(0),
                        reachable: Cell::new(true),
                    }),
                )
            })
            .collect();
        let links = Rc::new(Links {
            me: spec.node_id,
            incarnation: spec.incarnation,
            peers,
            stopped: Cell::new(false),
        });
        for peer in links.peers.values() {
            runtime::spawn_detached(write_loop(Rc::downgrade(&links), peer.clone()));
        }
        links
    }

    /// Queue `m` for broker `to`; never blocks. Dropped (counted) when `to` is unknown or its
    /// queue is full.
    pub fn send(&self, to: i32, m: GroupMessage) {
        let Some(peer) = self.peers.get(&to) else {
            debug!(to, "raft message for an unknown broker dropped");
            return;
        };
        let mut q = peer.queue.borrow_mut();
        if q.len() >= RPC_QUEUE_MESSAGES_MAX {
            peer.dropped.set(peer.dropped.get() + 1);
            return;
        }
        q.push_back(m);
        drop(q);
        peer.wake.notify_all();
    }

    /// Whether this shard's link to broker `id` works, as far as it knows (true until a
    /// connect or a write fails, and again after a connect succeeds; true for itself and
    /// unknown ids).
    pub fn reachable(&self, id: i32) -> bool {
        self.peers.get(&id).is_none_or(|p| p.reachable.get())
    }

    /// Messages dropped and sent, summed over peers.
    pub fn counts(&self) -> (u64, u64) {
        self.peers
            .values()
            .fold((0, 0), |(d, s), p| (d + p.dropped.get(), s + p.sent.get()))
    }

    /// Stop the writer tasks.
    pub fn stop(&self) {
        self.stopped.set(true);
        for p in self.peers.values() {
            p.wake.notify_all();
        }
    }
}

/// Failure detection on a broker-to-broker connection: [`LINK_USER_TIMEOUT`] and
/// [`LINK_KEEPALIVE`]. Best effort: a socket that refuses them keeps the kernel's defaults.
fn set_link_timeouts(stream: &TcpStream) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    // SAFETY: `fd` is the open socket of `stream`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    let (idle, interval, retries) = LINK_KEEPALIVE;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(retries);
    if let Err(e) = sock
        .set_tcp_user_timeout(Some(LINK_USER_TIMEOUT))
        .and_then(|()| sock.set_tcp_keepalive(&keepalive))
    {
        debug!(error = %e, "broker-to-broker socket timeouts not set");
    }
}

async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    match runtime::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Some(Ok(s)) => {
            let _ = s.set_nodelay(true);
            set_link_timeouts(&s);
            Ok(s)
        }
        Some(Err(e)) => Err(e.into()),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Send what is queued for `peer`, as frames, for as long as the links live.
async fn write_loop(links: Weak<Links>, peer: Rc<PeerLink>) {
    let (me, incarnation) = match links.upgrade() {
        Some(l) => (l.me, l.incarnation),
        None => return,
    };
    let route = Route {
        from: me as u32,
        incarnation,
        to: peer.id as u32,
        // The receiver routes each message to its partition's owner itself.
        shard: 0,
    };
    let mut conn: Option<TcpStream> = None;
    let mut failing = false;
    loop {
        let listener = peer.wake.listen();
        match links.upgrade() {
            Some(l) if !l.stopped.get() => {}
            _ => return,
        }
        if peer.queue.borrow().is_empty() {
            listener.await;
            continue;
        }
        if conn.is_none() {
            match connect(&peer.addr).await {
                Ok(s) => {
                    if failing {
                        info!(peer = peer.id, addr = %peer.addr, "connected to peer broker");
                    }
                    failing = false;
                    peer.reachable.set(true);
                    conn = Some(s);
                }
                Err(e) => {
                    if !failing {
                        warn!(peer = peer.id, addr = %peer.addr, error = %e, "cannot reach peer broker; retrying");
                    }
                    failing = true;
                    peer.reachable.set(false);
                    // Stale Raft messages are worth nothing later: drop them.
                    let n = peer.queue.borrow().len() as u64;
                    peer.queue.borrow_mut().clear();
                    peer.dropped.set(peer.dropped.get() + n);
                    runtime::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            }
        }
        let msgs: Vec<GroupMessage> = peer.queue.borrow_mut().drain(..).collect();
        let mut builder = FrameBuilder::new(route);
        let mut frames = Vec::new();
        for m in &msgs {
            match builder.push(m) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {}
                Err(e) => {
                    warn!(peer = peer.id, error = %e, "raft message cannot be framed: dropped")
                }
            }
        }
        frames.extend(builder.finish());
        let stream = conn.as_mut().expect("connected above");
        // The frames as they are, in one vectored send: no copy into one buffer.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*stream);
        if let Err(e) = runtime::write_parts(stream, fd, &frames).await {
            warn!(peer = peer.id, error = %e, "lost the connection to peer broker");
            peer.reachable.set(false);
            conn = None;
            peer.dropped.set(peer.dropped.get() + msgs.len() as u64);
        } else {
            peer.sent.set(peer.sent.get() + msgs.len() as u64);
        }
    }
}

/// Serve the RPC listener on this shard until the broker stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, stop: Arc<StopSignal>) {
    loop {
        let accepted = stop.unless_stopped(listener.accept()).await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok(stream) => {
                set_link_timeouts(&stream);
                let s = shard.clone();
                runtime::spawn_detached(async move {
                    if let Err(why) = serve_connection(&s, stream).await {
                        warn!(shard = %s.id, reason = %why, "closed a broker-to-broker connection");
                    }
                });
            }
            Err(e) => {
                warn!(shard = %shard.id, error = %e, "rpc accept failed");
                runtime::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Read frames until the peer closes; Err says why the connection was closed.
async fn serve_connection(shard: &Rc<Shard>, mut stream: TcpStream) -> Result<(), String> {
    let me = shard.config.node_id as u32;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        while let Some(len) = wire::frame_len(&buf).map_err(|e| e.to_string())? {
            if buf.len() < len {
                break;
            }
            let frame = buf.split_to(len);
            let (route, msgs) = wire::decode(&frame).map_err(|e| e.to_string())?;
            if route.to != me {
                return Err(format!(
                    "frame from broker {} is for broker {}, this is {me}",
                    route.from, route.to
                ));
            }
            dispatch(shard, route, msgs).await;
        }
        if shard.stopping.get() {
            return Ok(());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether a Raft message is a vote, a vote request, or an answer to one (pre-votes too).
fn is_vote(m: &raft::eraftpb::Message) -> bool {
    use raft::eraftpb::MessageType::*;
    matches!(
        m.get_msg_type(),
        MsgRequestVote | MsgRequestVoteResponse | MsgRequestPreVote | MsgRequestPreVoteResponse
    )
}

/// Hand each message to the shard that owns its partition here. A broker rejoining with a
/// wiped data directory (its frames carry another incarnation than it registered with) has
/// its votes and vote requests dropped: it lost what it voted for and acknowledged, so it
/// must not count toward any quorum until it caught up and registered again.
async fn dispatch(shard: &Rc<Shard>, route: Route, msgs: Vec<GroupMessage>) {
    let catalog = shard.catalog();
    let registered = catalog
        .brokers
        .get(&(route.from as i32))
        .map_or(0, |b| b.incarnation);
    let rejoining = super::incarnation::rejoining(registered, route.incarnation);
    let mut by_shard: Vec<Vec<GroupMessage>> = (0..shard.count).map(|_| Vec::new()).collect();
    for m in msgs {
        if rejoining && is_vote(&m.message) {
            if let Some(c) = shard.cluster() {
                c.note_ignored_vote(route.from as i32);
            }
            continue;
        }
        let tp = if m.topic_id == METADATA_TOPIC_ID {
            metadata_tp()
        } else {
            match catalog.name_of(&m.topic_id) {
                Some(name) => TopicPartition::new(name.to_string(), m.partition),
                // A topic this broker has not applied yet: Raft sends again.
                None => continue,
            }
        };
        by_shard[shard.owner_of(&tp).0].push(m);
    }
    for (target, msgs) in by_shard.into_iter().enumerate() {
        if msgs.is_empty() {
            continue;
        }
        let rejoining = rejoining.then_some(route.incarnation);
        let sent = shard
            .send_on(ShardId(target), move |s| {
                // Delivered when the job is called (in arrival order), not in its future.
                deliver_all(&s, msgs, rejoining);
                async {}
            })
            .await;
        if let Err(e) = sent {
            debug!(error = %e, "raft messages not handed to their shard");
        }
    }
}

fn deliver_all(shard: &Rc<Shard>, msgs: Vec<GroupMessage>, rejoining: Option<u64>) {
    if let Some(cluster) = shard.cluster() {
        for m in msgs {
            cluster.deliver(m, rejoining);
        }
    }
}
