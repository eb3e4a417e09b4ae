//! Replaying the shard journal at open: what earlier starts journaled for this partition and
//! its segments may lack (they are written behind the journal, without a sync per round).

use std::rc::Rc;

use tracing::{info, warn};

use super::PartitionLog;
use crate::storage::error::StorageError;
use crate::storage::journal::Replay;
use crate::types::Offset;

impl PartitionLog {
    /// Bring the log in line with the journal's run of batches `r.start..r.end`: the segments
    /// must reach `r.start` (what is before it was written and synced before its journal file
    /// went); from there, batches the segments hold byte for byte are kept, the first that
    /// differs or is missing is where the log is cut back, and the journal's batches from
    /// there are appended (at their offsets, as a follower appends, transactional ones too) and made durable. A run
    /// that ends with a cut (a truncation journaled last) also cuts what the segments hold
    /// past it.
    pub(super) async fn replay_journal(self: &Rc<Self>, r: Replay) -> Result<(), StorageError> {
        let (log_start, log_end, replay_floor) = {
            let st = self.state.borrow();
            (st.log_start, st.log_end, st.replay_floor)
        };
        if log_end < r.start {
            return Err(StorageError::CorruptBatch(format!(
                "{}: the journal continues the log at offset {} but its segments end at {log_end}",
                self.dir.display(),
                r.start
            )));
        }
        // Batches below the log start were deleted (retention, DeleteRecords), those below
        // the cleaner's replay floor are in segments it fsynced before it could swap them
        // (`clean`): skipped.
        let mut i = r
            .batches
            .partition_point(|b| b.1 <= log_start.max(replay_floor.min(log_end)));
        let mut cut: Option<i64> = None;
        'compare: while i < r.batches.len() && r.batches[i].0 < log_end {
            let at = r.batches[i].0.max(log_start);
            let data = self.read(Offset(at), 1 << 20).await?.records;
            if data.is_empty() {
                cut = Some(r.batches[i].0);
                break;
            }
            let mut off = 0usize;
            while off < data.len() {
                let Some((base, _, bytes)) = r.batches.get(i) else {
                    break 'compare;
                };
                let same =
                    data.len() - off >= bytes.len() && data[off..off + bytes.len()] == bytes[..];
                if !same {
                    cut = Some(*base);
                    break 'compare;
                }
                off += bytes.len();
                i += 1;
            }
        }
        let cut = match cut {
            Some(c) => Some(c),
            // Everything compared matched; a run ending with a cut also cuts what follows.
            None => r.cut_to.filter(|c| log_end > *c),
        };
        if let Some(c) = cut {
            if c < log_start {
                warn!(dir = %self.dir.display(), cut = c, log_start,
                    "journal differs from the segments below the log start: the segments are kept");
                return Ok(());
            }
            let end = self.truncate_to(Offset(c)).await?.0;
            if end != c {
                return Err(StorageError::CorruptBatch(format!(
                    "{}: cutting the log at {c} for the journal's replay left it ending at {end}",
                    self.dir.display()
                )));
            }
            i = r.batches.partition_point(|b| b.0 < c);
        }
        let rest = &r.batches[i..];
        if rest.is_empty() {
            return Ok(());
        }
        let appends: Vec<_> = rest
            .iter()
            .map(|(_, _, bytes)| self.append_from_journal(bytes.clone()))
            .collect();
        let mut last = None;
        for a in appends {
            last = Some(a.await?);
        }
        if let Some(info) = last {
            self.wait_durable(&info).await?;
        }
        info!(dir = %self.dir.display(), from = rest[0].0, to = r.end, batches = rest.len(),
            "replayed from the journal");
        Ok(())
    }
}
