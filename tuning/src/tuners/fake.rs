//! A fake `/proc`, `/sys` and `/etc` tree in a temporary directory, for the tuners' tests.

use std::path::PathBuf;

use crate::Tuner;
use crate::host::{Host, MemlockLimit};

/// A [`Host`] whose roots live in a temporary directory, removed on drop.
pub(crate) struct FakeHost {
    /// Keeps the tree alive.
    pub dir: tempfile::TempDir,
    /// Four cores, shards on 0 and 1, 24 MiB io_uring need, 8 MiB memlock, not root, x86_64.
    pub host: Host,
}

impl FakeHost {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("data")).expect("data dir");
        let host = Host {
            proc_root: root.join("proc"),
            sys_root: root.join("sys"),
            etc_root: root.join("etc"),
            data_dir: root.join("data"),
            cores: vec![0, 1, 2, 3],
            shard_cores: vec![0, 1],
            memlock_need_bytes: 24 << 20,
            memlock: MemlockLimit {
                soft_bytes: 8 << 20,
                hard_bytes: 8 << 20,
            },
            privileged: false,
            arch: "x86_64",
        };
        FakeHost { dir, host }
    }

    /// Absolute path of `relative` inside the tree.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Creates `relative` (and its parents) with `contents`.
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write fake file");
    }

    /// Contents of `relative`.
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).expect("read fake file")
    }

    /// Creates the directory `relative`.
    pub fn mkdir(&self, relative: &str) {
        std::fs::create_dir_all(self.path(relative)).expect("mkdir");
    }

    /// Makes `link` (relative) a symlink to `target` (relative to the tree).
    pub fn symlink(&self, target: &str, link: &str) {
        let link = self.path(link);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(self.path(target), link).expect("symlink");
    }

    /// Plans and applies `tuner`'s changes; returns what was printed.
    pub fn apply(&self, tuner: &dyn Tuner, dry_run: bool) -> String {
        let planned = crate::plan(&self.host, [tuner]);
        let mut out = Vec::new();
        let failures = crate::apply(&self.host, &planned, dry_run, &mut out).expect("print");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(failures.is_empty(), "{failures:?}\n{out}");
        out
    }
}
