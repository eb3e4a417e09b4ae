//! A simulated disk for deterministic storage tests: in memory, single-threaded, driven by a
//! seeded PRNG, behind the same [`Disk`] seam as the real one.
//!
//! It behaves like a real disk where it matters for durability:
//! - **Crash** ([`SimDisk::crash`]) is a real loss of unsynced state. Each file keeps every byte
//!   that was fdatasynced, plus an arbitrary prefix (chosen by the PRNG) of the writes made
//!   since, the last of them torn at a sector boundary. Each directory keeps the entries that
//!   were made durable by a directory sync, plus an arbitrary prefix of the changes made since.
//!   Every handle opened before the crash fails afterwards.
//! - **Faults**: writes, reads and fdatasyncs fail with EIO with a configurable probability, or
//!   exactly the next N of a kind; the disk fills up (ENOSPC) at a configurable capacity;
//!   operations are slow with a configurable probability (they let other tasks run first, so
//!   completions come in other orders).
//!
//! Files are inodes, directories map names to inodes, so a rename moves content atomically
//! and a file removed while open stays readable through its handle, as on ext4.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use async_trait::async_trait;
use bytes::Bytes;

use super::index::IndexBytes;
use super::io::{Disk, DiskFile, IoBuffer, SegmentFile};

/// Sector size: the unit a torn write keeps or loses, and the write alignment.
pub const SECTOR: u64 = 512;

/// A small deterministic PRNG (SplitMix64): the same seed gives the same run.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What the disk does wrong, and how often.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability that a write, read or fdatasync fails with EIO.
    pub write_error: f64,
    pub read_error: f64,
    pub sync_error: f64,
    /// Bytes the disk holds (files' allocated sizes); `None`: unbounded.
    pub capacity_bytes: Option<u64>,
    /// Probability that an operation is slow: it lets the other tasks run (up to 32 turns)
    /// before it takes effect, so completions come in other orders.
    pub slow: f64,
}

/// One turn for the other tasks.
#[derive(Default)]
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The file operations that can fail on purpose.
#[derive(Debug, Clone, Copy)]
enum Op {
    Write,
    Sync,
    Read,
}

/// A change to a file since its last fdatasync, in the order made.
#[derive(Debug, Clone)]
enum FileOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see now.
    current: Vec<u8>,
    /// Allocated length (preallocation), at least `current.len()`.
    allocated: u64,
    /// Content as of the last successful fdatasync.
    durable: Vec<u8>,
    /// Changes since then.
    unsynced: Vec<FileOp>,
}

/// A change to a directory since its last sync.
#[derive(Debug, Clone)]
enum DirOp {
    Link(OsString, u64),
    Unlink(OsString),
}

#[derive(Debug, Default, Clone)]
struct Dir {
    current: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    unsynced: Vec<DirOp>,
}

#[derive(Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    next_inode: u64,
    /// Bumped by every crash: handles of an older generation fail.
    generation: u64,
    /// Fail exactly the next N operations of a kind (tests of one fault).
    fail_next_writes: u32,
    fail_next_syncs: u32,
    fail_next_reads: u32,
}

/// The simulated disk. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
    rng: Rc<RefCell<SimRng>>,
    faults: Rc<Cell<Faults>>,
    power: Rc<Cell<Power>>,
}

/// A power loss planned at an exact point (see [`SimDisk::crash_after`]).
#[derive(Debug, Clone, Copy, Default)]
struct Power {
    /// Operations that change the disk, counted since the disk was made.
    changes: u64,
    /// The disk crashes instead of making this many more changes; None: no plan.
    countdown: Option<u64>,
    /// It crashed that way: every operation fails until [`SimDisk::resume`] (the process
    /// that used it is gone).
    off: bool,
}

fn eio(what: &str, path: &Path) -> io::Error {
    io::Error::other(format!("simulated EIO: {what} {}", path.display()))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => Ok((d.to_path_buf(), n.to_owned())),
        _ => Err(io::Error::other(format!(
            "{}: not a file path",
            path.display()
        ))),
    }
}

impl SimDisk {
    pub fn new(seed: u64, faults: Faults) -> Self {
        SimDisk {
            state: Rc::new(RefCell::new(State::default())),
            rng: Rc::new(RefCell::new(SimRng::new(seed))),
            faults: Rc::new(Cell::new(faults)),
            power: Rc::new(Cell::new(Power::default())),
        }
    }

    /// Crash (as [`SimDisk::crash`]) instead of making the `n`th change from now (a write,
    /// fdatasync, truncation, preallocation, creation, rename, removal or directory sync);
    /// from then on every operation fails until [`SimDisk::resume`]. Tests crash a procedure
    /// at each of its steps this way.
    pub fn crash_after(&self, n: u64) {
        let mut p = self.power.get();
        p.countdown = Some(n);
        self.power.set(p);
    }

    /// Whether a planned crash happened (and the disk refuses everything).
    pub fn crashed_as_planned(&self) -> bool {
        self.power.get().off
    }

    /// Take operations again after a planned crash (a new process).
    pub fn resume(&self) {
        let mut p = self.power.get();
        p.off = false;
        p.countdown = None;
        self.power.set(p);
    }

    /// Changes made since the disk was made.
    pub fn changes(&self) -> u64 {
        self.power.get().changes
    }

    /// Before any operation: fails while off; `change`: one more change, or the planned crash.
    fn power_check(&self, change: bool, path: &Path) -> io::Result<()> {
        let mut p = self.power.get();
        if p.off {
            return Err(io::Error::other(format!(
                "simulated power loss: {}",
                path.display()
            )));
        }
        if change {
            if p.countdown == Some(0) {
                p.off = true;
                p.countdown = None;
                self.power.set(p);
                self.crash();
                return Err(io::Error::other(format!(
                    "simulated power loss at {}",
                    path.display()
                )));
            }
            p.changes += 1;
            p.countdown = p.countdown.map(|n| n - 1);
        }
        self.power.set(p);
        Ok(())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.faults.set(faults);
    }

    pub fn faults(&self) -> Faults {
        self.faults.get()
    }

    /// Make exactly the next `n` writes (or syncs, or reads) fail.
    pub fn fail_next(&self, writes: u32, syncs: u32, reads: u32) {
        let mut st = self.state.borrow_mut();
        st.fail_next_writes = writes;
        st.fail_next_syncs = syncs;
        st.fail_next_reads = reads;
    }

    /// Bytes allocated by all files that some directory links.
    pub fn used_bytes(&self) -> u64 {
        let st = self.state.borrow();
        let linked: BTreeSet<u64> = st
            .dirs
            .values()
            .flat_map(|d| d.current.values().copied())
            .collect();
        linked
            .iter()
            .filter_map(|i| st.inodes.get(i))
            .map(|i| i.allocated.max(i.current.len() as u64))
            .sum()
    }

    /// Power loss: every file keeps its synced content and a random prefix of what was written
    /// since (the last write kept torn at a sector boundary); every directory keeps its synced
    /// entries and a random prefix of the changes since. Open handles fail from now on.
    pub fn crash(&self) {
        let mut rng = self.rng.borrow_mut();
        let mut st = self.state.borrow_mut();
        st.generation += 1;
        for inode in st.inodes.values_mut() {
            let mut content = inode.durable.clone();
            let keep = rng.below(inode.unsynced.len() as u64 + 1) as usize;
            for (i, op) in inode.unsynced.iter().take(keep).enumerate() {
                match op {
                    FileOp::SetLen(len) => content.resize(*len as usize, 0),
                    FileOp::Write(pos, data) => {
                        // The last write kept may be torn: only its first sectors landed.
                        let len = if i + 1 == keep {
                            let sectors = (data.len() as u64).div_ceil(SECTOR);
                            (rng.below(sectors + 1) * SECTOR).min(data.len() as u64) as usize
                        } else {
                            data.len()
                        };
                        let end = *pos as usize + len;
                        if content.len() < end {
                            content.resize(end, 0);
                        }
                        content[*pos as usize..end].copy_from_slice(&data[..len]);
                    }
                }
            }
            inode.current = content.clone();
            inode.durable = content;
            inode.allocated = inode.current.len() as u64;
            inode.unsynced.clear();
        }
        for dir in st.dirs.values_mut() {
            let mut entries = dir.durable.clone();
            let keep = rng.below(dir.unsynced.len() as u64 + 1) as usize;
            for op in dir.unsynced.iter().take(keep) {
                match op {
                    DirOp::Link(name, inode) => {
                        entries.insert(name.clone(), *inode);
                    }
                    DirOp::Unlink(name) => {
                        entries.remove(name);
                    }
                }
            }
            dir.current = entries.clone();
            dir.durable = entries;
            dir.unsynced.clear();
        }
        // Inodes no directory links are gone.
        let linked: BTreeSet<u64> = st
            .dirs
            .values()
            .flat_map(|d| d.current.values().copied())
            .collect();
        st.inodes.retain(|i, _| linked.contains(i));
    }

    /// A slow operation waits a few turns first (see [`Faults::slow`]).
    async fn delay(&self) {
        let p = self.faults.get().slow;
        let turns = if p > 0.0 && self.rng.borrow_mut().chance(p) {
            1 + self.rng.borrow_mut().below(32)
        } else {
            0
        };
        for _ in 0..turns {
            YieldNow::default().await;
        }
    }

    /// EIO if an injected fault of this kind is due: one of the next N armed by
    /// [`SimDisk::fail_next`], or by the kind's probability in [`Faults`].
    fn inject(&self, op: Op, path: &Path) -> io::Result<()> {
        let armed = {
            let mut st = self.state.borrow_mut();
            let counter = match op {
                Op::Write => &mut st.fail_next_writes,
                Op::Sync => &mut st.fail_next_syncs,
                Op::Read => &mut st.fail_next_reads,
            };
            let armed = *counter > 0;
            *counter = counter.saturating_sub(1);
            armed
        };
        let faults = self.faults.get();
        let p = match op {
            Op::Write => faults.write_error,
            Op::Sync => faults.sync_error,
            Op::Read => faults.read_error,
        };
        if armed || (p > 0.0 && self.rng.borrow_mut().chance(p)) {
            let what = match op {
                Op::Write => "write",
                Op::Sync => "fdatasync",
                Op::Read => "read",
            };
            return Err(eio(what, path));
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        let st = self.state.borrow();
        st.dirs
            .get(&dir)
            .and_then(|d| d.current.get(&name).copied())
            .ok_or_else(|| not_found(path))
    }

    fn link(st: &mut State, path: &Path, inode: u64) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let d = st.dirs.get_mut(&dir).ok_or_else(|| not_found(&dir))?;
        d.current.insert(name.clone(), inode);
        d.unsynced.push(DirOp::Link(name, inode));
        Ok(())
    }

    fn open(&self, path: &Path, create: bool, writable: bool) -> io::Result<SegmentFile> {
        let inode = match self.lookup(path) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let mut st = self.state.borrow_mut();
                let i = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(i, Inode::default());
                Self::link(&mut st, path, i)?;
                i
            }
            Err(e) => return Err(e),
        };
        let generation = self.state.borrow().generation;
        Ok(Rc::new(SimFile {
            disk: self.clone(),
            inode,
            generation,
            writable,
            path: path.to_path_buf(),
        }))
    }
}

/// A handle to one simulated file.
struct SimFile {
    disk: SimDisk,
    inode: u64,
    /// The disk generation it was opened in; after a crash it fails.
    generation: u64,
    writable: bool,
    path: PathBuf,
}

impl SimFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.disk.state.borrow_mut();
        if st.generation != self.generation {
            return Err(io::Error::other(format!(
                "{}: handle from before a crash",
                self.path.display()
            )));
        }
        let inode = st
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| not_found(&self.path))?;
        f(inode)
    }

    /// Growing this file to `size` bytes must fit the disk (ENOSPC otherwise).
    fn ensure_space(&self, size: u64) -> io::Result<()> {
        let Some(cap) = self.disk.faults.get().capacity_bytes else {
            return Ok(());
        };
        let st = self.disk.state.borrow();
        let mine = st
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.allocated.max(i.current.len() as u64));
        if size <= mine {
            return Ok(());
        }
        drop(st);
        if self.disk.used_bytes() - mine + size > cap {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("simulated ENOSPC: {}", self.path.display()),
            ));
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl DiskFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn alignment(&self) -> u64 {
        SECTOR
    }

    fn alloc_buffer(&self, len: usize) -> IoBuffer {
        // The caller's part starts as garbage, as on the real disk (not zeroed there: it is
        // overwritten), so a caller counting on zeros writes garbage here and a test sees it.
        let size = (len as u64).div_ceil(SECTOR) as usize * SECTOR as usize;
        let mut v = vec![0xA5; size];
        v[len..].fill(0);
        IoBuffer::Heap(v)
    }

    async fn write_at(&self, buf: IoBuffer, pos: u64) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.disk.delay().await;
        assert!(pos.is_multiple_of(SECTOR), "unaligned write at {pos}");
        assert!(self.writable, "write to a read-only handle");
        let data = buf.as_slice().to_vec();
        let end = pos + data.len() as u64;
        self.ensure_space(end)?;
        self.disk.inject(Op::Write, &self.path)?;
        self.with_inode(|inode| {
            if inode.current.len() < end as usize {
                inode.current.resize(end as usize, 0);
            }
            inode.current[pos as usize..end as usize].copy_from_slice(&data);
            inode.allocated = inode.allocated.max(end);
            inode.unsynced.push(FileOp::Write(pos, data));
            Ok(())
        })
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        self.disk.power_check(false, &self.path)?;
        self.disk.delay().await;
        self.disk.inject(Op::Read, &self.path)?;
        self.with_inode(|inode| {
            let start = (pos as usize).min(inode.current.len());
            let end = (start + len).min(inode.current.len());
            Ok(Bytes::copy_from_slice(&inode.current[start..end]))
        })
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.disk.delay().await;
        // On failure the writes stay unsynced: a crash may keep or lose them.
        self.disk.inject(Op::Sync, &self.path)?;
        self.with_inode(|inode| {
            inode.durable = inode.current.clone();
            inode.unsynced.clear();
            Ok(())
        })
    }

    async fn sync_filesystem(&self) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.disk.delay().await;
        // On failure every unsynced write stays in doubt, as for a failed fdatasync. Directory
        // entries are not made durable (syncfs would; the code never counts on it).
        self.disk.inject(Op::Sync, &self.path)?;
        self.with_inode(|_| Ok(()))?; // a handle from before a crash fails
        let mut st = self.disk.state.borrow_mut();
        for inode in st.inodes.values_mut() {
            inode.durable = inode.current.clone();
            inode.unsynced.clear();
        }
        Ok(())
    }

    async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.disk.delay().await;
        self.ensure_space(size)?;
        self.with_inode(|inode| {
            if (inode.current.len() as u64) < size {
                inode.current.resize(size as usize, 0);
                inode.unsynced.push(FileOp::SetLen(size));
            }
            inode.allocated = inode.allocated.max(size);
            Ok(())
        })
    }

    async fn zero_fill(&self, from: u64, to: u64) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.disk.delay().await;
        assert!(
            from.is_multiple_of(SECTOR) && to.is_multiple_of(SECTOR),
            "unaligned zero fill {from}..{to}"
        );
        assert!(self.writable, "zero fill of a read-only handle");
        self.disk.inject(Op::Write, &self.path)?;
        self.ensure_space(to)?;
        self.with_inode(|inode| {
            let from = from as usize;
            let to = to as usize;
            if inode.current.len() < to {
                inode.current.resize(to, 0);
            }
            inode.current[from..to].fill(0);
            inode
                .unsynced
                .push(FileOp::Write(from as u64, vec![0; to - from]));
            inode.allocated = inode.allocated.max(to as u64);
            Ok(())
        })
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.disk.power_check(true, &self.path)?;
        self.with_inode(|inode| {
            inode.current.resize(size as usize, 0);
            inode.allocated = size;
            inode.unsynced.push(FileOp::SetLen(size));
            Ok(())
        })
    }

    async fn size(&self) -> io::Result<u64> {
        // As glommio does it: by the path the file was opened with (a renamed file's old path
        // is gone, or names another file).
        if self.disk.lookup(&self.path)? != self.inode {
            return Err(not_found(&self.path));
        }
        self.with_inode(|inode| Ok(inode.current.len() as u64))
    }

    async fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

#[async_trait(?Send)]
impl Disk for SimDisk {
    async fn open_rw(&self, path: &Path, create: bool) -> io::Result<SegmentFile> {
        self.power_check(create && self.lookup(path).is_err(), path)?;
        self.open(path, create, true)
    }

    async fn open_read(&self, path: &Path) -> io::Result<SegmentFile> {
        self.power_check(false, path)?;
        self.open(path, false, false)
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.power_check(false, path)?;
        let inode = self.lookup(path)?;
        self.inject(Op::Read, path)?;
        let st = self.state.borrow();
        Ok(st
            .inodes
            .get(&inode)
            .map(|i| i.current.clone())
            .unwrap_or_default())
    }

    async fn len(&self, path: &Path) -> io::Result<u64> {
        let inode = self.lookup(path)?;
        let st = self.state.borrow();
        Ok(st.inodes.get(&inode).map_or(0, |i| i.current.len() as u64))
    }

    async fn map_index(&self, path: &Path) -> io::Result<IndexBytes> {
        Ok(IndexBytes::Memory(self.read(path).await?))
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.power_check(false, dir)?;
        let st = self.state.borrow();
        let d = st.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        let mut names: Vec<OsString> = d.current.keys().cloned().collect();
        // Subdirectories too, as readdir lists them.
        names.extend(
            st.dirs
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_owned())),
        );
        Ok(names)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.power_check(true, from)?;
        let inode = self.lookup(from)?;
        let (from_dir, from_name) = split(from)?;
        let mut st = self.state.borrow_mut();
        let d = st
            .dirs
            .get_mut(&from_dir)
            .ok_or_else(|| not_found(&from_dir))?;
        d.current.remove(&from_name);
        // One directory op pair, link then unlink, as a journal would order it.
        Self::link(&mut st, to, inode)?;
        st.dirs
            .get_mut(&from_dir)
            .expect("checked")
            .unsynced
            .push(DirOp::Unlink(from_name));
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.power_check(true, path)?;
        self.lookup(path)?;
        let (dir, name) = split(path)?;
        let mut st = self.state.borrow_mut();
        let d = st.dirs.get_mut(&dir).expect("looked up");
        d.current.remove(&name);
        d.unsynced.push(DirOp::Unlink(name));
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.power_check(true, dir)?;
        self.delay().await;
        let mut st = self.state.borrow_mut();
        let d = st.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.durable = d.current.clone();
        d.unsynced.clear();
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are durable at once: the simulation is about file and entry
        // loss inside them.
        let mut st = self.state.borrow_mut();
        for d in dir.ancestors() {
            st.dirs.entry(d.to_path_buf()).or_default();
        }
        Ok(())
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.dirs.retain(|d, _| !d.starts_with(dir));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        crate::runtime::block_on_test(f);
    }

    async fn write(file: &SegmentFile, pos: u64, bytes: &[u8]) {
        let mut buf = file.alloc_buffer(bytes.len());
        buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        file.write_at(buf, pos).await.unwrap();
    }

    /// Synced bytes and synced entries survive every crash; unsynced ones may not.
    #[test]
    fn a_crash_keeps_what_was_synced() {
        run(|| async {
            for seed in 0..200 {
                let disk = SimDisk::new(seed, Faults::default());
                let dir = Path::new("/d");
                disk.create_dir_all(dir).await.unwrap();
                let f = disk.open_rw(&dir.join("a"), true).await.unwrap();
                write(&f, 0, &[1u8; 1024]).await;
                f.fdatasync().await.unwrap();
                disk.sync_dir(dir).await.unwrap();
                write(&f, 1024, &[2u8; 1024]).await;
                let g = disk.open_rw(&dir.join("b"), true).await.unwrap();
                write(&g, 0, &[3u8; 512]).await;
                disk.crash();
                assert!(f.size().await.is_err(), "handles fail after a crash");
                let back = disk.read(&dir.join("a")).await.unwrap();
                assert!(back.len() >= 1024 && back[..1024] == [1u8; 1024]);
                // Whatever of the unsynced write survived is a sector-aligned prefix of it.
                let kept = back.len() - 1024;
                assert!(kept % SECTOR as usize == 0 && back[1024..].iter().all(|b| *b == 2));
                // "b" was never made durable in its directory: present only by chance.
                if let Ok(b) = disk.read(&dir.join("b")).await {
                    assert!(b.len() <= 512);
                }
            }
        });
    }

    /// A rename made durable replaces the old content atomically.
    #[test]
    fn rename_then_sync_dir_is_atomic() {
        run(|| async {
            for seed in 0..100 {
                let disk = SimDisk::new(seed, Faults::default());
                let env = crate::storage::io::Env::new(
                    Rc::new(disk.clone()),
                    Rc::new(crate::storage::io::ManualClock::new(0)),
                    crate::storage::io::SyncScope::default(),
                );
                let dir = Path::new("/d");
                disk.create_dir_all(dir).await.unwrap();
                env.replace_file_durable(&dir.join("m"), b"old")
                    .await
                    .unwrap();
                disk.crash();
                assert_eq!(disk.read(&dir.join("m")).await.unwrap(), b"old");
                env.replace_file_durable(&dir.join("m"), b"new!")
                    .await
                    .unwrap();
                disk.crash();
                assert_eq!(disk.read(&dir.join("m")).await.unwrap(), b"new!");
            }
        });
    }

    #[test]
    fn a_full_disk_refuses_growth_and_injected_faults_fail_once() {
        run(|| async {
            let disk = SimDisk::new(
                7,
                Faults {
                    capacity_bytes: Some(4096),
                    ..Faults::default()
                },
            );
            let dir = Path::new("/d");
            disk.create_dir_all(dir).await.unwrap();
            let f = disk.open_rw(&dir.join("a"), true).await.unwrap();
            f.pre_allocate(4096).await.unwrap();
            let e = f.pre_allocate(8192).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            write(&f, 0, &[9u8; 512]).await;
            disk.fail_next(0, 1, 0);
            assert!(f.fdatasync().await.is_err());
            f.fdatasync().await.unwrap();
        });
    }
}
