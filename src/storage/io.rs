//! The seam between storage and the machine: every file operation and every clock read that
//! storage and recovery make go through [`Disk`] and [`Clock`], so the same code runs on the
//! real disk (glommio direct I/O, `runtime::file`) or on a simulated one that a seeded test
//! can crash, fill up or make fail on purpose (`storage::sim`).
//!
//! Contract: shard-local (`Rc`, `!Send`), like everything in storage. Paths are the real
//! paths under the data directory; the simulated disk keeps them as names only.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

pub use super::group_sync::{GroupSync, SyncScope};

/// A buffer for [`DiskFile::write_at`], allocated by [`DiskFile::alloc_buffer`]: aligned DMA
/// memory on the real disk, plain memory on the simulated one. Its length is a multiple of
/// the file's alignment.
pub enum IoBuffer {
    Dma(crate::runtime::file::IoBuffer),
    Heap(Vec<u8>),
}

impl IoBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuffer::Dma(b) => b.as_mut_slice(),
            IoBuffer::Heap(v) => v,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuffer::Dma(b) => b.as_slice(),
            IoBuffer::Heap(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One open file. Writes start at a multiple of [`DiskFile::alignment`] and use buffers from
/// [`DiskFile::alloc_buffer`]; reads may be unaligned. A write is durable once a later
/// `fdatasync` returned Ok; a failed `fdatasync` leaves the unsynced writes in doubt (the
/// caller must not retry it on the same file and count on the data: the fsyncgate lesson).
#[async_trait(?Send)]
pub trait DiskFile {
    /// The path it was opened at (for messages).
    fn path(&self) -> &Path;
    /// Required alignment of write positions and lengths.
    fn alignment(&self) -> u64;
    /// A buffer of at least `len` bytes, rounded up to the alignment: the caller fills
    /// `[0, len)` (its content is unspecified: not zeroed, since it is overwritten), the
    /// padding after it is zeros.
    fn alloc_buffer(&self, len: usize) -> IoBuffer;
    /// Write the whole buffer at `pos` (aligned).
    async fn write_at(&self, buf: IoBuffer, pos: u64) -> io::Result<()>;
    /// Up to `len` bytes at `pos`; fewer at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    async fn fdatasync(&self) -> io::Result<()>;
    /// Make every write that completed before the call, to any file of the file system holding
    /// this one, durable as an fdatasync of each would (`syncfs(2)`): the group commit's sync
    /// (`storage::group_sync`). An error leaves every unsynced write on it in doubt.
    async fn sync_filesystem(&self) -> io::Result<()>;
    /// Make the file at least `size` bytes long, the new range reading as zeros, with its
    /// blocks allocated (ENOSPC here, not at a later write).
    async fn pre_allocate(&self, size: u64) -> io::Result<()>;
    /// Write zeros over `[from, to)` (both aligned; the file grows to at least `to`), so
    /// that later writes there overwrite written blocks: on ext4 a direct write into
    /// preallocated (unwritten) space needs an extent conversion and runs on an io_uring worker
    /// thread, an overwrite runs inline. ENOSPC here, not at a later write.
    async fn zero_fill(&self, from: u64, to: u64) -> io::Result<()>;
    async fn truncate(&self, size: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn close(&self) -> io::Result<()>;
}

/// Opened files are shared by the segment that reads and the writer that appends.
pub type SegmentFile = Rc<dyn DiskFile>;

/// The file system of one data directory.
#[async_trait(?Send)]
pub trait Disk {
    /// Open read+write, creating the file if `create` (never truncating).
    async fn open_rw(&self, path: &Path, create: bool) -> io::Result<SegmentFile>;
    /// Open read-only.
    async fn open_read(&self, path: &Path) -> io::Result<SegmentFile>;
    /// The whole content of a small file (indexes, markers, snapshots).
    async fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The length of a file.
    async fn len(&self, path: &Path) -> io::Result<u64>;
    /// A sealed segment's index file, read-only: memory-mapped on the real disk.
    async fn map_index(&self, path: &Path) -> io::Result<super::index::IndexBytes>;
    /// Names of the entries of `dir`.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Atomic replace of `to` by `from` (durable after [`Disk::sync_dir`]).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file (durable after [`Disk::sync_dir`]); NotFound if absent.
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Make the entries of `dir` durable (files created, renamed, removed in it).
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Create `dir` and its parents if absent.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Remove `dir` and everything in it.
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// Time as storage sees it: monotonic for ages and intervals, wall-clock milliseconds for
/// record timestamps and retention, and sleeps (the writer's periodic fdatasync).
pub trait Clock {
    fn now(&self) -> Instant;
    fn wall_ms(&self) -> i64;
    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
}

/// What a partition log runs on.
#[derive(Clone)]
pub struct Env {
    pub disk: Rc<dyn Disk>,
    pub clock: Rc<dyn Clock>,
    /// The group commit shared by every log opened with this environment.
    pub group_sync: Rc<GroupSync>,
    /// The shard's journal (`storage::journal`): rounds of every partition in one write, and
    /// what earlier starts left to replay. None: no journal (nothing to replay either).
    pub journal: Option<Rc<super::journal::Journal>>,
}

thread_local! {
    /// The shard's production environment: one group commit for all its partitions.
    static PRODUCTION: std::cell::RefCell<Option<Env>> = const { std::cell::RefCell::new(None) };
}

impl Env {
    /// `disk` and `clock` with a group commit of their own.
    pub fn new(disk: Rc<dyn Disk>, clock: Rc<dyn Clock>, scope: SyncScope) -> Self {
        Env {
            disk,
            clock,
            group_sync: GroupSync::new(scope),
            journal: None,
        }
    }

    /// This environment with a journal of its own.
    pub fn with_journal(mut self, cfg: super::journal::JournalConfig) -> Self {
        self.journal = Some(super::journal::Journal::new(
            self.disk.clone(),
            self.group_sync.clone(),
            cfg,
        ));
        self
    }

    /// The same disk and clock with a group commit of its own: what a restarted process
    /// sees (a failed file-system sync fails its group commit for good).
    pub fn restarted(&self) -> Self {
        let mut env = Self::new(
            self.disk.clone(),
            self.clock.clone(),
            self.group_sync.scope(),
        );
        env.journal = self
            .journal
            .as_ref()
            .map(|j| j.restarted(env.group_sync.clone()));
        env
    }

    /// The real disk and the system clock, with the shard's group commit (one per shard:
    /// every log of the shard shares it). Its scope is set once by
    /// [`Env::init_production`], else the default.
    pub fn production() -> Self {
        PRODUCTION.with(|p| {
            p.borrow_mut()
                .get_or_insert_with(|| Self::real(SyncScope::default()))
                .clone()
        })
    }

    /// Set this shard's production environment, before it opens any log: its sync scope and
    /// its journal.
    pub fn init_production(scope: SyncScope, journal: Option<super::journal::JournalConfig>) {
        let env = Self::real(scope);
        let env = match journal {
            Some(cfg) => env.with_journal(cfg),
            None => env,
        };
        PRODUCTION.with(|p| *p.borrow_mut() = Some(env));
    }

    fn real(scope: SyncScope) -> Self {
        Self::new(
            Rc::new(crate::runtime::file::RealDisk),
            Rc::new(crate::runtime::SystemClock),
            scope,
        )
    }

    /// Write `data` as the whole content of `path` (created or replaced in place), then
    /// fdatasync it. Not atomic: a crash in the middle leaves a damaged file, which recovery
    /// detects (index files are checked and rebuilt).
    pub async fn write_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let file = self.disk.open_rw(path, true).await?;
        if !data.is_empty() {
            let mut buf = file.alloc_buffer(data.len());
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            file.write_at(buf, 0).await?;
        }
        file.truncate(data.len() as u64).await?;
        file.fdatasync().await?;
        file.close().await
    }

    /// Replace `path` atomically and durably with `data`: write `<path>.tmp`, fdatasync it,
    /// rename it over `path`, sync the directory. After a crash `path` holds the old content
    /// (or nothing) or `data`, never a mix.
    pub async fn replace_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = parent(path)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        self.write_file_durable(&tmp, data).await?;
        self.disk.rename(&tmp, path).await?;
        self.disk.sync_dir(dir).await
    }

    /// Remove `path` if it exists and make the removal durable. Returns whether there was a
    /// file.
    pub async fn remove_file_durable(&self, path: &Path) -> io::Result<bool> {
        match self.disk.remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        self.disk.sync_dir(parent(path)?).await?;
        Ok(true)
    }

    /// The content of `path`, or None if it does not exist.
    pub async fn read_if_exists(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.disk.read(path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))
}

/// A clock that moves only when told to (simulation): starts at a fixed wall time; its sleeps
/// end when [`ManualClock::advance`] moves it past their deadline.
pub struct ManualClock {
    inner: Rc<ManualInner>,
}

struct ManualInner {
    base: Instant,
    elapsed: std::cell::Cell<Duration>,
    wall_base_ms: i64,
    /// Sleeps waiting for the clock to move: (deadline, waker).
    sleepers: std::cell::RefCell<Vec<(Duration, std::task::Waker)>>,
}

impl ManualClock {
    pub fn new(wall_base_ms: i64) -> Self {
        ManualClock {
            inner: Rc::new(ManualInner {
                base: Instant::now(),
                elapsed: std::cell::Cell::new(Duration::ZERO),
                wall_base_ms,
                sleepers: std::cell::RefCell::new(Vec::new()),
            }),
        }
    }

    pub fn advance(&self, by: Duration) {
        let now = self.inner.elapsed.get() + by;
        self.inner.elapsed.set(now);
        let due: Vec<std::task::Waker> = {
            let mut sleepers = self.inner.sleepers.borrow_mut();
            let (due, later): (Vec<_>, Vec<_>) = sleepers.drain(..).partition(|(at, _)| *at <= now);
            *sleepers = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(std::task::Waker::wake);
    }
}

/// A sleep on a [`ManualClock`].
struct ManualSleep {
    clock: Rc<ManualInner>,
    deadline: Duration,
}

impl std::future::Future for ManualSleep {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.clock.elapsed.get() >= self.deadline {
            return std::task::Poll::Ready(());
        }
        self.clock
            .sleepers
            .borrow_mut()
            .push((self.deadline, cx.waker().clone()));
        std::task::Poll::Pending
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.inner.base + self.inner.elapsed.get()
    }

    fn wall_ms(&self) -> i64 {
        self.inner.wall_base_ms + self.inner.elapsed.get().as_millis() as i64
    }

    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(ManualSleep {
            clock: self.inner.clone(),
            deadline: self.inner.elapsed.get() + d,
        })
    }
}
