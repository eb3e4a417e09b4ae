//! Files behind the runtime seam: direct-I/O segment files and the real
//! disk ([`RealDisk`], the production side of `storage::io::Disk`),
//! directory sync, and the glommio iopoll probe workaround (GLOMMIO.md §0).
//!
//! Storage code reaches the disk only through `storage::io::Disk`; nothing
//! under `src/storage` imports glommio.
//!
//! Contract: every value here is local to the shard (thread) that created it.
//! All I/O errors come back as `std::io::Error` with glommio's context (path,
//! operation) in the message.
//!
//! Fault injection: [`fault`] lets a test make the next writes or syncs on
//! this thread fail, so storage error paths can be tested deterministically
//! without a simulated disk.

use std::io;
use std::path::{Path, PathBuf};

use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::storage::io::{Disk, DiskFile, IoBuffer as StorageBuffer, SegmentFile};

/// Test hooks that make the next N file operations of a kind fail on the
/// current thread. Counters are thread-local, so each shard (and each test
/// executor) is independent. Zero cost when unused: one thread-local read.
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        static WRITE_FAILURES: Cell<u32> = const { Cell::new(0) };
        static SYNC_FAILURES: Cell<u32> = const { Cell::new(0) };
    }

    /// Make the next `n` [`super::DmaSegmentFile::write_at`] calls on this thread fail.
    pub fn fail_next_writes(n: u32) {
        WRITE_FAILURES.with(|c| c.set(n));
    }

    /// Make the next `n` [`super::DmaSegmentFile::fdatasync`] calls on this thread fail.
    pub fn fail_next_syncs(n: u32) {
        SYNC_FAILURES.with(|c| c.set(n));
    }

    fn take(cell: &'static std::thread::LocalKey<Cell<u32>>) -> bool {
        cell.with(|c| {
            let n = c.get();
            if n > 0 {
                c.set(n - 1);
                true
            } else {
                false
            }
        })
    }

    pub(super) fn write_should_fail() -> bool {
        take(&WRITE_FAILURES)
    }

    pub(super) fn sync_should_fail() -> bool {
        take(&SYNC_FAILURES)
    }
}

/// An aligned buffer for direct I/O, allocated by [`DmaSegmentFile::alloc_buffer`].
/// Its length is a multiple of the file's alignment.
pub struct IoBuffer(DmaBuffer);

impl IoBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }

    pub fn as_slice(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A segment file opened for direct I/O (O_DIRECT), read-only or
/// read+write. Writes must start at a multiple of [`DmaSegmentFile::alignment`]
/// and use buffers from [`DmaSegmentFile::alloc_buffer`]; reads may be
/// unaligned. Direct I/O bypasses the page cache: a write is on the device
/// (modulo its cache) when `fdatasync` returns.
pub struct DmaSegmentFile {
    file: DmaFile,
    path: PathBuf,
}

impl DmaSegmentFile {
    /// Open read+write, creating the file if `create` (never truncating).
    /// Call [`warm_iopoll_probe`] on this shard first.
    pub async fn open_rw(path: &Path, create: bool) -> io::Result<DmaSegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await?;
        Ok(DmaSegmentFile {
            file,
            path: path.to_owned(),
        })
    }

    /// Open read-only.
    pub async fn open_read(path: &Path) -> io::Result<DmaSegmentFile> {
        let file = OpenOptions::new().read(true).dma_open(path).await?;
        Ok(DmaSegmentFile {
            file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Required alignment of write positions and lengths (512 or 4096).
    pub fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    /// Allocate an aligned buffer of at least `len` bytes (rounded up to the
    /// alignment). Only the padding after `len` is zeroed: the caller
    /// overwrites `[0, len)`, and zeroing a 1 MiB write buffer first costs a
    /// memset per chunk for nothing.
    pub fn alloc_buffer(&self, len: usize) -> IoBuffer {
        let size = self.file.align_up(len as u64) as usize;
        let mut buf = self.file.alloc_dma_buffer(size);
        buf.as_bytes_mut()[len..].fill(0);
        IoBuffer(buf)
    }

    /// Write the whole buffer at `pos` (aligned). Short writes are retried
    /// by writing the rest; a zero-length write is an error.
    pub async fn write_at(&self, buf: IoBuffer, pos: u64) -> io::Result<()> {
        assert!(
            pos.is_multiple_of(self.alignment()),
            "unaligned write at {pos}"
        );
        if fault::write_should_fail() {
            return Err(io::Error::other(format!(
                "injected write failure: {}",
                self.path.display()
            )));
        }
        let len = buf.len();
        let buf = std::rc::Rc::new(buf.0);
        let mut done = self.file.write_rc_at(buf.clone(), pos).await?;
        // Short writes are rare (near ENOSPC): re-issue the remainder from
        // the last aligned position, copying from the retained buffer.
        while done < len {
            let from = self.file.align_down(done as u64) as usize;
            let mut rest = self.file.alloc_dma_buffer(len - from);
            rest.as_bytes_mut().copy_from_slice(&buf.as_bytes()[from..]);
            let w = self.file.write_at(rest, pos + from as u64).await?;
            if w == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write returned 0: {}", self.path.display()),
                ));
            }
            done = from + w;
        }
        Ok(())
    }

    /// Read up to `len` bytes at `pos` (any alignment); fewer at end of file.
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<bytes::Bytes> {
        if len == 0 {
            return Ok(bytes::Bytes::new());
        }
        let r = self.file.read_at(pos, len).await?;
        Ok(bytes::Bytes::copy_from_slice(&r))
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        if fault::sync_should_fail() {
            return Err(io::Error::other(format!(
                "injected fdatasync failure: {}",
                self.path.display()
            )));
        }
        Ok(self.file.fdatasync().await?)
    }

    /// `syncfs(2)` of the file system holding this file. io_uring has no syncfs, so a thread
    /// of the shard's own runs it ([`syncfs_thread`]) and signals an eventfd that the shard
    /// reads through io_uring: the shard goes on meanwhile, and no waker crosses threads
    /// (glommio's `spawn_blocking` aborted the broker with a double free in its foreign-wake
    /// path about once in ten loaded 10 s runs). Reports the file system's write-back errors
    /// since the previous call (Linux 5.8 and later).
    pub async fn syncfs(&self) -> io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
        if fault::sync_should_fail() {
            return Err(io::Error::other(format!(
                "injected syncfs failure: {}",
                self.path.display()
            )));
        }
        // Descriptors of its own, so closing the file meanwhile cannot hand its number to
        // another file.
        // SAFETY: dup of a descriptor this file holds open.
        let fd = unsafe { libc::dup(self.file.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a new descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let signal = efd.try_clone()?;
        syncfs_thread::submit(fd, signal)?;
        // SAFETY: the BufferedFile takes over `efd`, which nothing else closes.
        let waiter = unsafe { glommio::io::BufferedFile::from_raw_fd(efd.into_raw_fd()) };
        let read = waiter.read_at(0, 8).await;
        let _ = waiter.close().await;
        let value = read?;
        let code = u64::from_ne_bytes(
            value[..]
                .try_into()
                .map_err(|_| io::Error::other("short read of the syncfs eventfd"))?,
        );
        match code {
            1 => Ok(()),
            c => Err(io::Error::from_raw_os_error((c - 2) as i32)),
        }
    }

    /// Allocate blocks up to `size` bytes; the file size becomes at least
    /// `size` and the new range reads as zeros.
    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        Ok(self.file.pre_allocate(size, false).await?)
    }

    /// Write zeros over `[from, to)` (both aligned) in chunks of [`ZERO_CHUNK_BYTES`] from
    /// one shared zeroed buffer (no memset per call).
    pub async fn zero_fill(&self, from: u64, to: u64) -> io::Result<()> {
        assert!(
            from.is_multiple_of(self.alignment()) && to.is_multiple_of(self.alignment()),
            "unaligned zero fill {from}..{to}"
        );
        if fault::write_should_fail() {
            return Err(io::Error::other(format!(
                "injected write failure: {}",
                self.path.display()
            )));
        }
        let mut pos = from;
        while pos < to {
            // The largest power of two that fits (a multiple of the alignment, itself a power
            // of two): each size's zeroed buffer is allocated once per shard, so zero-filling
            // never allocates or zeroes memory again (fresh buffers cost a page fault per page).
            let n = prev_power_of_two(((to - pos) as usize).min(ZERO_CHUNK_BYTES));
            let zeros = ZEROS.with(|z| {
                z.borrow_mut()[n.trailing_zeros() as usize]
                    .get_or_insert_with(|| {
                        let mut b = self.file.alloc_dma_buffer(n);
                        b.as_bytes_mut().fill(0);
                        Rc::new(b)
                    })
                    .clone()
            });
            let done = self.file.write_rc_at(zeros, pos).await?;
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write returned 0: {}", self.path.display()),
                ));
            }
            pos += self.file.align_down(done as u64).max(self.alignment());
        }
        Ok(())
    }

    pub async fn truncate(&self, size: u64) -> io::Result<()> {
        Ok(self.file.truncate(size).await?)
    }

    pub async fn file_size(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    /// Nothing to wait for: the descriptor is closed when the last handle is dropped (every
    /// write that matters was followed by an fdatasync that reported its errors).
    pub async fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The shard's syncfs thread: runs `syncfs(fd)` and writes the outcome to the job's eventfd
/// (1: success, errno + 2: failure). One per shard, started at its first sync, ended when the
/// shard's thread exits (its channel closes).
mod syncfs_thread {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::mpsc;

    type Job = (OwnedFd, OwnedFd);

    thread_local! {
        static SENDER: std::cell::RefCell<Option<mpsc::Sender<Job>>> =
            const { std::cell::RefCell::new(None) };
    }

    pub(super) fn submit(fd: OwnedFd, signal: OwnedFd) -> io::Result<()> {
        SENDER.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_none() {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("sluice-syncfs".into())
                    .spawn(move || {
                        for (fd, signal) in rx {
                            // SAFETY: syncfs on a descriptor `fd` keeps open for the call.
                            let code: u64 = if unsafe { libc::syncfs(fd.as_raw_fd()) } == 0 {
                                1
                            } else {
                                io::Error::last_os_error().raw_os_error().unwrap_or(5) as u64 + 2
                            };
                            // SAFETY: an 8-byte write from a local to an eventfd we own.
                            unsafe {
                                libc::write(
                                    signal.as_raw_fd(),
                                    (&code as *const u64).cast(),
                                    std::mem::size_of::<u64>(),
                                );
                            }
                        }
                    })?;
                *s = Some(tx);
            }
            s.as_ref()
                .expect("started above")
                .send((fd, signal))
                .map_err(|_| io::Error::other("the syncfs thread is gone"))
        })
    }
}

/// Largest zero write of [`DmaSegmentFile::zero_fill`].
pub const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Powers of two up to [`ZERO_CHUNK_BYTES`]: the slots of the zero-buffer cache.
const ZERO_SIZES: usize = ZERO_CHUNK_BYTES.trailing_zeros() as usize + 1;

thread_local! {
    /// The shard's zeroed buffers for [`DmaSegmentFile::zero_fill`], one per power of two up
    /// to [`ZERO_CHUNK_BYTES`] (under 2 MiB in all, each made on first use), indexed by
    /// log2 of the size.
    static ZEROS: std::cell::RefCell<[Option<Rc<glommio::io::DmaBuffer>>; ZERO_SIZES]> =
        const { std::cell::RefCell::new([const { None }; ZERO_SIZES]) };
}

/// The largest power of two not above `n` (`n > 0`).
fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The real disk behind `storage::io::Disk`: glommio direct I/O for files, `std::fs` for
/// directory operations (rare, small), glommio for directory syncs.
pub struct RealDisk;

#[async_trait::async_trait(?Send)]
impl DiskFile for DmaSegmentFile {
    fn path(&self) -> &Path {
        DmaSegmentFile::path(self)
    }

    fn alignment(&self) -> u64 {
        DmaSegmentFile::alignment(self)
    }

    fn alloc_buffer(&self, len: usize) -> StorageBuffer {
        StorageBuffer::Dma(DmaSegmentFile::alloc_buffer(self, len))
    }

    async fn write_at(&self, buf: StorageBuffer, pos: u64) -> io::Result<()> {
        match buf {
            StorageBuffer::Dma(b) => DmaSegmentFile::write_at(self, b, pos).await,
            StorageBuffer::Heap(v) => {
                let mut b = DmaSegmentFile::alloc_buffer(self, v.len());
                b.as_mut_slice()[..v.len()].copy_from_slice(&v);
                DmaSegmentFile::write_at(self, b, pos).await
            }
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<bytes::Bytes> {
        DmaSegmentFile::read_at(self, pos, len).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        DmaSegmentFile::fdatasync(self).await
    }

    async fn sync_filesystem(&self) -> io::Result<()> {
        DmaSegmentFile::syncfs(self).await
    }

    async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        DmaSegmentFile::pre_allocate(self, size).await
    }

    async fn zero_fill(&self, from: u64, to: u64) -> io::Result<()> {
        DmaSegmentFile::zero_fill(self, from, to).await
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        DmaSegmentFile::truncate(self, size).await
    }

    async fn size(&self) -> io::Result<u64> {
        self.file_size().await
    }

    async fn close(&self) -> io::Result<()> {
        DmaSegmentFile::close(self).await
    }
}

#[async_trait::async_trait(?Send)]
impl Disk for RealDisk {
    async fn open_rw(&self, path: &Path, create: bool) -> io::Result<SegmentFile> {
        Ok(Rc::new(DmaSegmentFile::open_rw(path, create).await?))
    }

    async fn open_read(&self, path: &Path) -> io::Result<SegmentFile> {
        Ok(Rc::new(DmaSegmentFile::open_read(path).await?))
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    async fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    /// Map `path` read-only (memmap2). An empty file gives an empty in-memory index
    /// (zero-length maps are not portable).
    async fn map_index(&self, path: &Path) -> io::Result<crate::storage::index::IndexBytes> {
        use crate::storage::index::IndexBytes;
        let f = std::fs::File::open(path)?;
        if f.metadata()?.len() == 0 {
            return Ok(IndexBytes::Memory(Vec::new()));
        }
        // SAFETY: index files of sealed segments are written once, before they are mapped,
        // and never modified while the log is open (only recovery rewrites them, before
        // mapping).
        let m = unsafe { memmap2::Mmap::map(&f)? };
        Ok(IndexBytes::Mapped(m))
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }
}

/// `storage::io::Env::replace_file_durable` without an executor (plain `std::fs`, blocking): for the
/// main thread and for the controller's rare metadata writes (catalog, producer ids, the
/// broker-wide clean-shutdown marker). Creates the parent directory if absent.
pub fn replace_file_durable_blocking(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Make the directory entries of `dir` durable (after creating, renaming or
/// removing files in it).
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await?;
    d.sync().await?;
    Ok(d.close().await?)
}

/// Work around glommio 0.9's iopoll mis-probe (GLOMMIO.md §0, issue #670):
/// the first DmaFile a shard opens on a device must be a non-empty file, or
/// every later read fails with EOPNOTSUPP. Call once per shard per data
/// device before any other file in `dir` is opened. Idempotent.
pub async fn warm_iopoll_probe(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let p = dir.join(".iopoll-probe");
    if std::fs::metadata(&p)
        .map(|m| m.len() < 4096)
        .unwrap_or(true)
    {
        std::fs::write(&p, [0u8; 4096])?;
    }
    DmaFile::open(&p).await?.close().await?;
    Ok(())
}
