//! A broker's incarnation: a random number made with its data directory, kept in
//! `<data>/__cluster/incarnation`, and carried by every broker-to-broker frame and by the
//! broker's registration in the metadata log.
//!
//! Raft's safety rests on stable storage: a replica that voted or acknowledged an entry must
//! remember it. A broker whose data directory was wiped (a lost disk) comes back with a new
//! incarnation, so its peers can tell: while the incarnation a broker's frames carry differs
//! from the one it registered with, they ignore its votes and vote requests (in every Raft
//! group, the metadata one included), and it takes part as a non-voting member, catching up
//! from its leaders. Once each of its replicas has caught up with a leader's commit index,
//! it registers its new incarnation, and from then on it votes again (see ARCHITECTURE.md
//! "Cluster").

use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

const FILE: &str = "incarnation";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("__cluster").join(FILE)
}

/// This data directory's incarnation, made (durably, before the broker sends anything) if
/// the directory has none: a new directory, a wiped one, or one from before incarnations.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<u64> {
    let p = path(data_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) if n != 0 => return Ok(n),
            _ => warn!(file = %p.display(), "unreadable incarnation: making a new one"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let n = new_incarnation();
    let dir = p.parent().expect("under __cluster");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{n}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    info!(incarnation = n, "new data directory incarnation");
    Ok(n)
}

fn new_incarnation() -> u64 {
    loop {
        let n = uuid::Uuid::new_v4().as_u64_pair().0;
        if n != 0 {
            return n;
        }
    }
}

/// Whether a broker that registered with `registered` and now sends frames carrying `seen`
/// is rejoining with a wiped data directory: both known, and different.
pub fn rejoining(registered: u64, seen: u64) -> bool {
    registered != 0 && seen != 0 && registered != seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("sluice-inc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = load_or_create(&dir).unwrap();
        assert_ne!(a, 0);
        assert_eq!(load_or_create(&dir).unwrap(), a, "kept across starts");
        // A wiped directory gets another one.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_ne!(a, b);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(rejoining(a, b));
        assert!(!rejoining(a, a));
        assert!(!rejoining(0, b), "never registered: a new broker");
        assert!(!rejoining(a, 0), "an older broker's frames: unknown");
    }
}
