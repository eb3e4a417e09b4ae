//! Group commit across the partitions of a shard: one file-system sync makes the writes of
//! every partition durable at once.
//!
//! Each partition's flusher writes its queued batches to its own segment file, then needs them
//! durable. With one `fdatasync` per partition, a shard with a thousand busy partitions issues
//! a thousand syncs per round (each a metadata write and a device cache flush, run on io_uring's
//! worker threads), and the cost of a message grows with the partition count. Under
//! [`SyncScope::Filesystem`] (the default) the flushers instead ask the shard's [`GroupSync`]:
//! the first caller starts one `syncfs(2)` of the data directory's file system, which writes
//! back the metadata of every file (the extent conversions of the direct-I/O writes into
//! preallocated space) and flushes the device cache once; the callers that arrive while it
//! runs wait for it and then share the next one. Measured on this host, for 1,024 files with
//! a 4 KiB direct write each: one syncfs 2.8 ms, 1,024 fdatasyncs 94 ms one after the other
//! and 58 ms from 64 threads (16 files: 0.2 / 1.9 / 1.1 ms).
//!
//! Safety: a sync *started* after a caller's write completed covers that write, so a caller
//! never counts on a sync that was already running when it asked. A failed sync fails every
//! caller it was to cover and every later one: as with a failed fdatasync (the fsyncgate
//! lesson), nothing written to this file system since the previous good sync can be trusted,
//! and the logs that ask go offline. syncfs reports the file system's write-back errors
//! since Linux 5.8; the broker checks the kernel at start and falls back to
//! [`SyncScope::File`] on older ones. Writes by other programs to the same file system are
//! written back too: give the data directory its own file system (as for Kafka).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use super::io::SegmentFile;
use crate::runtime::Notify;

/// How a log's writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncScope {
    /// One `fdatasync` per file (portable; its cost grows with the partitions written).
    File,
    /// One `syncfs` per round for every partition of the shard (the default).
    #[default]
    Filesystem,
}

impl SyncScope {
    pub fn parse(s: &str) -> Option<SyncScope> {
        match s {
            "file" => Some(SyncScope::File),
            "filesystem" => Some(SyncScope::Filesystem),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    /// Syncs started so far; the one running, if any, is number `started`.
    started: u64,
    /// Every sync up to this number completed successfully.
    completed: u64,
    running: bool,
    /// A sync failed: this and every later request fails.
    failed: Option<(io::ErrorKind, String)>,
    /// Callers served by the syncs so far (metrics: callers per sync).
    callers: u64,
}

/// The shard's group commit (one per shard and data directory).
pub struct GroupSync {
    scope: SyncScope,
    state: RefCell<State>,
    done: Notify,
}

impl GroupSync {
    pub fn new(scope: SyncScope) -> Rc<GroupSync> {
        Rc::new(GroupSync {
            scope,
            state: RefCell::new(State::default()),
            done: Notify::new(),
        })
    }

    pub fn scope(&self) -> SyncScope {
        self.scope
    }

    /// Syncs run so far and callers they served (callers per sync is the batching factor).
    pub fn stats(&self) -> (u64, u64) {
        let st = self.state.borrow();
        (st.completed, st.callers)
    }

    /// Make every write to `file` that completed before this call durable: its own fdatasync
    /// under [`SyncScope::File`], else a file-system sync started after this call, shared with
    /// every other caller it covers.
    pub async fn sync(self: &Rc<Self>, file: &SegmentFile) -> io::Result<()> {
        if self.scope == SyncScope::File {
            return file.fdatasync().await;
        }
        // A sync already running may have started before this caller's write completed: the
        // caller needs the next one.
        let need = self.state.borrow().started + 1;
        loop {
            let listener = self.done.listen();
            {
                let mut st = self.state.borrow_mut();
                if let Some((kind, msg)) = &st.failed {
                    return Err(io::Error::new(
                        *kind,
                        format!("an earlier file-system sync failed: {msg}"),
                    ));
                }
                if st.completed >= need {
                    st.callers += 1;
                    return Ok(());
                }
                if !st.running {
                    st.running = true;
                    st.started += 1;
                    let number = st.started;
                    drop(st);
                    // Detached, so that a caller dropped mid-sync cannot leave `running` set.
                    let file = file.clone();
                    let me = self.clone();
                    crate::runtime::spawn_detached(async move {
                        // Let the flushers whose writes complete in this same turn join in.
                        crate::runtime::yield_now().await;
                        let r = file.sync_filesystem().await;
                        let mut st = me.state.borrow_mut();
                        st.running = false;
                        match r {
                            Ok(()) => st.completed = number,
                            Err(e) => st.failed = Some((e.kind(), e.to_string())),
                        }
                        drop(st);
                        me.done.notify_all();
                    });
                }
            }
            listener.await;
        }
    }
}
