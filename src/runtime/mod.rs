//! The seam between Sluice and its io_uring runtime (glommio 0.9).
//!
//! Everything runtime-specific lives under this module: executors and their
//! placement, tasks, timers, TCP sockets, shard-to-shard channels and files
//! (`file.rs`). Storage, protocol and handler code call only what is exported
//! here, so moving to another runtime (compio, monoio) means rewriting this
//! module and nothing else.
//!
//! Contract: every value returned here is local to the shard (thread) that
//! created it, except [`ShardSender`]s, which are handed out before the
//! executors start and connected on their owning shard.

pub mod file;

use std::future::Future;
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::task::JoinHandle;
pub use glommio::{Task, TaskQueueHandle};

use crate::types::ShardId;

/// Errors starting or driving the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start executor for {shard}: {reason}")]
    Executor { shard: ShardId, reason: String },
    #[error("shard thread panicked: {0}")]
    Panicked(String),
}

/// Spawn a task on the current shard; it runs until completion even if the
/// handle is dropped (detached).
pub fn spawn_detached<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(future).detach();
}

/// Spawn a task on the current shard and return a handle to await its output.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(future)
}

/// The system clock behind `storage::io::Clock`.
pub struct SystemClock;

impl crate::storage::io::Clock for SystemClock {
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    fn wall_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(sleep(d))
    }
}

/// Sleep for `duration` without blocking the shard.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// Run `future`, giving up after `duration`. `None` means it timed out.
pub async fn timeout<F, T>(duration: Duration, future: F) -> Option<T>
where
    F: Future<Output = T>,
{
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(duration).await;
        None
    })
    .await
}

/// Bytes of a frame zeroed at a time when its data is not there yet (see [`read_frame`]).
const READ_WAIT_CHUNK: usize = 64 << 10;

/// Read exactly `len` bytes from the socket `fd` into a new buffer, without zeroing the
/// buffer first: non-blocking `recv` straight into its unfilled capacity. When nothing is
/// there yet, `reader` waits for data (glommio polls the socket) and reads into a zeroed chunk
/// of at most 64 KiB, then the direct receives resume. A frame that has arrived (the common
/// case for request frames) is never zeroed; one that trickles in is zeroed 64 KiB per wait at
/// most. `reader` must be the stream of `fd`, and nothing else may read from it meanwhile.
/// Zeroing each frame before reading into it was a sixteenth of the broker's CPU at 16
/// partitions and max rate.
pub async fn read_frame<R>(
    reader: &mut R,
    fd: std::os::fd::RawFd,
    len: usize,
) -> std::io::Result<bytes::BytesMut>
where
    R: futures::io::AsyncRead + Unpin,
{
    use futures::io::AsyncReadExt;
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    let mut buf = bytes::BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` has room for at least `want` bytes (capacity `len`); recv writes at
        // most `want` bytes there and reports how many.
        let got = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if got > 0 {
            // SAFETY: the kernel initialized `got` bytes right after the filled part.
            unsafe { buf.set_len(buf.len() + got as usize) };
            continue;
        }
        if got == 0 {
            return Err(eof());
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                let start = buf.len();
                buf.resize(start + want.min(READ_WAIT_CHUNK), 0);
                let n = reader.read(&mut buf[start..]).await?;
                if n == 0 {
                    return Err(eof());
                }
                buf.truncate(start + n);
            }
            _ => return Err(err),
        }
    }
    Ok(buf)
}

/// Write `parts` in order to the socket `fd` with vectored, non-blocking sends (`sendmsg`):
/// one system call for a response of many buffers, and no copy into one. When the socket is
/// full, the rest of the current part goes through `writer` (glommio waits for room), then the
/// vectored sends resume. `writer` must be the stream of `fd`, and nothing else may write to
/// it meanwhile.
pub async fn write_parts<W>(
    writer: &mut W,
    fd: std::os::fd::RawFd,
    parts: &[bytes::Bytes],
) -> std::io::Result<()>
where
    W: futures::io::AsyncWrite + Unpin,
{
    use futures::io::AsyncWriteExt;
    const IOVECS: usize = 64;
    let (mut i, mut off) = (0usize, 0usize);
    while i < parts.len() {
        if off == parts[i].len() {
            i += 1;
            off = 0;
            continue;
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVECS];
        let mut n = 0;
        for (k, p) in parts[i..].iter().enumerate() {
            if n == IOVECS {
                break;
            }
            let s = if k == 0 { &p[off..] } else { &p[..] };
            if s.is_empty() {
                continue;
            }
            iov[n] = libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
            n += 1;
        }
        // SAFETY: a zeroed msghdr is valid; it points at `iov`, whose entries point into
        // `parts`, all alive for the call.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n as _;
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if sent >= 0 {
            let mut left = sent as usize;
            while left > 0 {
                let room = parts[i].len() - off;
                if left < room {
                    off += left;
                    left = 0;
                } else {
                    left -= room;
                    i += 1;
                    off = 0;
                }
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                writer.write_all(&parts[i][off..]).await?;
                i += 1;
                off = 0;
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Let every other ready task of the shard run first.
pub async fn yield_now() {
    futures_lite::future::yield_now().await
}

/// Yield to other tasks if this one has run for too long.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

/// Bind `addr` with SO_REUSEPORT so that every shard can bind the same port
/// and the kernel spreads connections among them. glommio's bind sets the
/// option itself.
pub fn bind_reuseport(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Bind `addr` for one listener only (no SO_REUSEPORT, unlike
/// [`bind_reuseport`]), so a second process on the same port is an error
/// instead of a silent share. Used by the metrics endpoint.
pub fn bind_exclusive(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Rebinding right after a restart is fine (TIME_WAIT); sharing is not.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    // SAFETY: the descriptor is a listening TCP socket we own; the listener
    // takes ownership of it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// A one-shot, cross-thread reply slot: the shard that asked awaits the
/// receiver; the shard that owns the data completes the sender.
pub use futures::channel::oneshot;

/// Sending half of a shard-to-shard channel, before it is connected on its
/// shard. Created on the main thread by [`channel_matrix`].
pub type ShardSenderUnconnected<T> = glommio::channels::shared_channel::SharedSender<T>;
/// Receiving half, before connection.
pub type ShardReceiverUnconnected<T> = glommio::channels::shared_channel::SharedReceiver<T>;
/// A connected sender: usable only on the shard that connected it.
pub type ShardSender<T> = glommio::channels::shared_channel::ConnectedSender<T>;
/// A connected receiver: usable only on the shard that connected it.
pub type ShardReceiver<T> = glommio::channels::shared_channel::ConnectedReceiver<T>;

/// Connect a sender on the current shard.
pub async fn connect_sender<T: Send + 'static>(s: ShardSenderUnconnected<T>) -> ShardSender<T> {
    s.connect().await
}

/// Connect a receiver on the current shard.
pub async fn connect_receiver<T: Send + 'static>(
    r: ShardReceiverUnconnected<T>,
) -> ShardReceiver<T> {
    r.connect().await
}

/// The channels one shard takes: a sender to every other shard (None for
/// itself) and a receiver from every other shard.
pub struct ShardChannels<T: Send> {
    pub to: Vec<Option<ShardSenderUnconnected<T>>>,
    pub from: Vec<Option<ShardReceiverUnconnected<T>>>,
}

/// Build an N×N matrix of bounded single-producer single-consumer channels,
/// one per ordered pair of distinct shards. Lock-free (glommio's shared
/// channel is an SPSC ring), and fully sound, unlike cloning a mesh builder
/// inside executors (see GLOMMIO.md §3).
pub fn channel_matrix<T: Send + 'static>(shards: usize, depth: usize) -> Vec<ShardChannels<T>> {
    let mut out: Vec<ShardChannels<T>> = (0..shards)
        .map(|_| ShardChannels {
            to: (0..shards).map(|_| None).collect(),
            from: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for source in 0..shards {
        for target in 0..shards {
            if source == target {
                continue;
            }
            let (tx, rx) = glommio::channels::shared_channel::new_bounded(depth);
            out[source].to[target] = Some(tx);
            out[target].from[source] = Some(rx);
        }
    }
    out
}

/// How to start the executors.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub shards: usize,
    /// Memory registered with io_uring per ring (three rings per shard).
    pub io_memory_bytes: usize,
    /// Busy-poll this long before parking an idle shard: trades idle CPU for
    /// cross-shard wake-up latency (GLOMMIO.md §3).
    pub spin_before_park: Duration,
    /// Pin shard i to online CPU i when there are enough CPUs.
    pub pin: bool,
}

/// Start one executor thread per shard, each running `shard_main(shard_id)`,
/// and wait for all of them to finish. Shards are pinned to distinct cores
/// when there are at least as many online cores as shards.
pub fn run_shards<F, Fut>(settings: &ExecutorSettings, shard_main: F) -> Result<(), RuntimeError>
where
    F: Fn(ShardId) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut handles = Vec::with_capacity(settings.shards);
    for i in 0..settings.shards {
        let placement = if settings.pin && cpus.len() >= settings.shards {
            glommio::Placement::Fixed(cpus[i])
        } else {
            glommio::Placement::Unbound
        };
        let f = shard_main.clone();
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("sluice-shard-{i}"))
            .io_memory(settings.io_memory_bytes)
            .spin_before_park(settings.spin_before_park)
            .spawn(move || async move { f(ShardId(i)).await })
            .map_err(|e| RuntimeError::Executor {
                shard: ShardId(i),
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    for h in handles {
        // A panicking shard surfaces here as an error from join.
        h.join()
            .map_err(|e| RuntimeError::Panicked(e.to_string()))?;
    }
    Ok(())
}

/// Run `f()` to completion on a fresh executor thread (unit tests, fuzz harnesses).
pub fn block_on_test<F, Fut>(f: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("test executor")
        .join()
        .expect("test executor thread")
}

/// A shard-local "something changed" signal: tasks wait for the next
/// notification; notifying wakes all current waiters. Used to wake long-poll
/// fetches when a partition's high watermark moves.
#[derive(Default)]
pub struct Notify {
    event: event_listener::Event,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    /// A future that completes at the next [`Notify::notify_all`] after this
    /// call. Register before checking the condition to avoid a lost wake-up.
    pub fn listen(&self) -> event_listener::EventListener {
        self.event.listen()
    }

    pub fn notify_all(&self) {
        self.event.notify(usize::MAX);
    }
}

/// A bounded single-shard channel (no atomics, no locks).
pub fn local_channel<T>(depth: usize) -> (LocalSender<T>, LocalReceiver<T>) {
    glommio::channels::local_channel::new_bounded(depth)
}
pub use glommio::channels::local_channel::{LocalReceiver, LocalSender};

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// A frame that arrives in pieces with pauses between them (the reader waits for data in
    /// between) is read whole and in order; a frame cut by the peer closing is an EOF error.
    #[test]
    fn read_frame_takes_a_frame_that_trickles_in_and_reports_a_cut() {
        block_on_test(|| async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let sent = data.clone();
            let peer = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                for piece in sent.chunks(70_000) {
                    s.write_all(piece).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                s.write_all(&[1, 2, 3]).unwrap();
            });
            let stream = listener.accept().await.unwrap();
            let fd = stream.as_raw_fd();
            let (mut reader, _writer) = futures::io::AsyncReadExt::split(stream);
            let got = read_frame(&mut reader, fd, data.len()).await.unwrap();
            assert_eq!(got.len(), data.len());
            assert!(got[..] == data[..], "the frame's bytes, in order");
            peer.join().unwrap();
            let cut = read_frame(&mut reader, fd, 10).await.unwrap_err();
            assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof);
        });
    }
}
