//! [`Host`]: where the tuners read and write, and the broker facts they need.

use std::path::{Path, PathBuf};

/// The memlock limit (`RLIMIT_MEMLOCK`) in bytes; `u64::MAX` means unlimited
/// (`RLIM_INFINITY` on Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockLimit {
    /// The soft limit; the broker raises it up to `hard` at start when it is too low.
    pub soft_bytes: u64,
    /// The hard limit; only root (or CAP_SYS_RESOURCE) can raise it.
    pub hard_bytes: u64,
}

impl MemlockLimit {
    /// Reads the limit of the calling process.
    pub fn current() -> Self {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into the local struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
            // Cannot happen for a valid resource; treat as "no memory may be locked".
            return MemlockLimit {
                soft_bytes: 0,
                hard_bytes: 0,
            };
        }
        MemlockLimit {
            soft_bytes: r.rlim_cur,
            hard_bytes: r.rlim_max,
        }
    }
}

/// The machine being tuned. Tuners read and write only below these roots, so tests point them
/// at a fake tree in a temporary directory; [`Host::local`] uses the real `/proc`, `/sys` and
/// `/etc`.
#[derive(Clone, Debug)]
pub struct Host {
    /// Where procfs is mounted (`/proc`).
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sys_root: PathBuf,
    /// Where persistent configuration is written on apply (`/etc`): `sysctl.d/90-sluice.conf`
    /// and `security/limits.d/90-sluice.conf`.
    pub etc_root: PathBuf,
    /// The broker's data directory; it may not exist yet, in which case its nearest existing
    /// ancestor decides which block device holds it.
    pub data_dir: PathBuf,
    /// CPUs the broker may run on (its affinity mask), ascending.
    pub cores: Vec<usize>,
    /// CPUs the shards are pinned to: the first `shards` of `cores`, as the broker's runtime
    /// pins them; all of `cores` when there are more shards than cores (shards float).
    pub shard_cores: Vec<usize>,
    /// Bytes the broker locks for its io_uring rings (shards x 3 rings x io memory).
    pub memlock_need_bytes: u64,
    /// The memlock limit the broker would start with (the calling process's).
    pub memlock: MemlockLimit,
    /// True when running as root: root (CAP_IPC_LOCK) is not charged for io_uring memory, and
    /// only root can apply changes.
    pub privileged: bool,
    /// `std::env::consts::ARCH` of the host, for the clock source tuner.
    pub arch: &'static str,
}

impl Host {
    /// The local machine, as a broker with `shards` shards, this data directory and this
    /// io_uring memory need would see it.
    pub fn local(data_dir: &Path, shards: usize, memlock_need_bytes: u64) -> Self {
        let cores = affinity_cores();
        let shard_cores = shard_cores(&cores, shards);
        // SAFETY: geteuid has no preconditions.
        let privileged = unsafe { libc::geteuid() } == 0;
        Host {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            etc_root: PathBuf::from("/etc"),
            data_dir: data_dir.to_path_buf(),
            cores,
            shard_cores,
            memlock_need_bytes,
            memlock: MemlockLimit::current(),
            privileged,
            arch: std::env::consts::ARCH,
        }
    }

    /// The procfs file of a sysctl key: `vm.swappiness` -> `<proc>/sys/vm/swappiness`.
    pub fn sysctl_path(&self, key: &str) -> PathBuf {
        self.proc_root.join("sys").join(key.replace('.', "/"))
    }

    /// A path below the sysfs root: `sys("kernel/mm")` -> `<sys>/kernel/mm`.
    pub fn sys(&self, relative: &str) -> PathBuf {
        self.sys_root.join(relative)
    }

    /// Cores that run no shard: where device IRQs should go.
    pub fn spare_cores(&self) -> Vec<usize> {
        self.cores
            .iter()
            .copied()
            .filter(|c| !self.shard_cores.contains(c))
            .collect()
    }
}

/// The shard cores for `shards` shards on `cores`, mirroring the runtime's pinning: shard i on
/// `cores[i]` when there are enough cores, otherwise unpinned (every core may run a shard).
pub fn shard_cores(cores: &[usize], shards: usize) -> Vec<usize> {
    if shards <= cores.len() {
        cores[..shards].to_vec()
    } else {
        cores.to_vec()
    }
}

/// The CPUs in this process's affinity mask, ascending (what `core_affinity` reports to the
/// runtime); CPU 0 alone if the mask cannot be read.
fn affinity_cores() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}
