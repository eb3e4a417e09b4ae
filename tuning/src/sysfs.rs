//! Reading `/proc` and `/sys`: values, bracketed choices, CPU lists, the block device under the
//! data directory, and the MSI IRQs of a device.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::finding::Finding;
use crate::host::Host;

/// Reads a small procfs/sysfs file and trims surrounding whitespace.
pub fn read_value(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// Reads a sysfs file holding one unsigned number.
pub fn read_u64(path: &Path) -> io::Result<u64> {
    let text = read_value(path)?;
    text.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds {text:?}, not a number", path.display()),
        )
    })
}

/// The [`Finding`] for a setting whose file could not be read: a missing file means the host
/// does not have the setting ("not available here"); any other error (EACCES as non-root) is
/// reported as such. Both are `Info`: there is nothing to apply.
pub fn unreadable(
    tuner: &'static str,
    setting: impl Into<String>,
    wanted: impl Into<String>,
    error: &io::Error,
) -> Finding {
    let note = match error.kind() {
        io::ErrorKind::NotFound => "not available here".to_string(),
        io::ErrorKind::PermissionDenied => "cannot read (permission denied); run as root".into(),
        _ => format!("cannot read: {error}"),
    };
    Finding::unavailable(tuner, setting, wanted, note)
}

/// The selected entry of a sysfs choice list: `always [madvise] never` -> `madvise`. A file
/// holding a single bare word (some kernels' `scheduler` with one choice) yields that word.
pub fn selected(text: &str) -> Option<&str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if let Some(w) = words
        .iter()
        .find(|w| w.starts_with('[') && w.ends_with(']'))
    {
        return Some(&w[1..w.len() - 1]);
    }
    match words.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// Every entry of a sysfs choice list, brackets removed.
pub fn choices(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('[').trim_end_matches(']'))
        .collect()
}

/// Parses a kernel CPU list (`0-3,6,8-9`) into ascending CPU numbers; None if malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats ascending CPU numbers as a kernel CPU list: `[0, 1, 2, 5]` -> `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// A whole disk (not a partition) found under `<sys>/block` or `<sys>/devices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`, `nvme0n1`, `sda`).
    pub name: String,
    /// The disk's sysfs directory (canonical), holding `queue/` and `device`.
    pub dir: PathBuf,
}

/// The whole disks that hold the data directory: stat its nearest existing ancestor, follow
/// `<sys>/dev/block/MAJ:MIN`, walk up from a partition to its disk, and down from a device-mapper
/// or md device to the disks under it (`slaves/`). Err with a reason when the directory is not
/// on a block device (overlayfs, tmpfs, a fake tree without the device).
pub fn data_disks(host: &Host) -> Result<Vec<Disk>, String> {
    let existing = nearest_existing(&host.data_dir)
        .ok_or_else(|| format!("no existing ancestor of {}", host.data_dir.display()))?;
    let meta = std::fs::metadata(&existing)
        .map_err(|e| format!("cannot stat {}: {e}", existing.display()))?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = host.sys(&format!("dev/block/{major}:{minor}"));
    let dir = std::fs::canonicalize(&link).map_err(|_| {
        format!(
            "{} is on device {major}:{minor}, which is not a block device (overlay, tmpfs?)",
            existing.display()
        )
    })?;
    let mut disks = Vec::new();
    collect_disks(&dir, &mut disks, 0);
    if disks.is_empty() {
        return Err(format!("no disk found under {}", dir.display()));
    }
    Ok(disks)
}

/// Adds the whole disk(s) behind the block device directory `dir`; `depth` bounds recursion
/// through stacked device-mapper/md devices.
fn collect_disks(dir: &Path, disks: &mut Vec<Disk>, depth: usize) {
    const STACK_DEPTH_MAX: usize = 4;
    let disk_dir = if dir.join("partition").exists() {
        match dir.parent() {
            Some(parent) => parent.to_path_buf(),
            None => return,
        }
    } else {
        dir.to_path_buf()
    };
    let slaves: Vec<PathBuf> = std::fs::read_dir(disk_dir.join("slaves"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if !slaves.is_empty() && depth < STACK_DEPTH_MAX {
        for slave in slaves {
            collect_disks(&slave, disks, depth + 1);
        }
        return;
    }
    let Some(name) = disk_dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let disk = Disk {
        name: name.to_string(),
        dir: disk_dir.clone(),
    };
    if !disks.contains(&disk) {
        disks.push(disk);
    }
}

/// The nearest ancestor of `path` (itself included) that exists; `.` for a relative path with
/// no existing component.
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut candidate = Some(path);
    while let Some(p) = candidate {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if p.exists() {
            return Some(p.to_path_buf());
        }
        candidate = p.parent();
    }
    None
}

/// The MSI/MSI-X IRQ numbers of the device behind `device_link` (a `device` symlink in sysfs):
/// the first directory at or above it, below the sysfs root, that has an `msi_irqs/` listing.
/// Virtio devices keep it on their PCI parent; NVMe controllers on their PCI function.
pub fn device_irqs(host: &Host, device_link: &Path) -> Vec<u32> {
    let Ok(mut dir) = std::fs::canonicalize(device_link) else {
        return Vec::new();
    };
    let root = std::fs::canonicalize(&host.sys_root).unwrap_or_else(|_| host.sys_root.clone());
    loop {
        if let Ok(entries) = std::fs::read_dir(dir.join("msi_irqs")) {
            let mut irqs: Vec<u32> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            irqs.sort_unstable();
            return irqs;
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(&root) && parent != root => {
                dir = parent.to_path_buf()
            }
            _ => return Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_lists() {
        assert_eq!(selected("always [madvise] never"), Some("madvise"));
        assert_eq!(selected("none"), Some("none"));
        assert_eq!(selected("a b"), None);
        assert_eq!(choices("[none] mq-deadline"), vec!["none", "mq-deadline"]);
    }

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_cpu_list(&[3]), "3");
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
