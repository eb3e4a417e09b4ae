//! I/O scheduler and `nr_requests` of the disk(s) holding the data directory.
//!
//! Wanted scheduler: `none` on non-rotational disks (NVMe, virtio, SSD): the device has deep
//! queues of its own, and the broker already orders its writes (one appender per partition,
//! sequential segments); a scheduler only adds a lock and latency on the submission path.
//! Rotational disks want `mq-deadline`, which bounds starvation of reads behind writes. Virtio
//! and Xen disks count as non-rotational even when they claim `rotational = 1` (virtio-blk
//! does by default): the hypervisor schedules the real device.
//! Wanted `nr_requests`: at least the hardware queue depth (`mq/*/nr_tags`), the largest value
//! the kernel accepts with `none`, so io_uring never waits for a request slot while the device
//! has free tags. The kernel resets `nr_requests` to the queue depth when the scheduler changes
//! to `none`, so apply writes it only when still lower, after the scheduler.

use std::path::PathBuf;

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs::{self, Disk};
use crate::{Evaluation, Tuner};

/// The scheduler wanted for non-rotational disks.
pub const SCHEDULER_FLASH: &str = "none";
/// The scheduler wanted for rotational disks.
pub const SCHEDULER_ROTATIONAL: &str = "mq-deadline";

/// Block layer settings of the data disk.
pub struct IoScheduler;

impl IoScheduler {
    fn scheduler(&self, host: &Host, disk: &Disk) -> (Finding, Vec<Change>) {
        let setting = format!("block/{}/queue/scheduler", disk.name);
        let path = queue_file(host, disk, "scheduler");
        let rotational = sysfs::read_value(&disk.dir.join("queue/rotational"))
            .is_ok_and(|v| v == "1")
            && !paravirtual(disk);
        let wanted = if rotational {
            SCHEDULER_ROTATIONAL
        } else {
            SCHEDULER_FLASH
        };
        let text = match sysfs::read_value(&path) {
            Ok(t) => t,
            Err(e) => {
                return (
                    sysfs::unreadable(self.name(), setting, wanted, &e),
                    Vec::new(),
                );
            }
        };
        let current = sysfs::selected(&text).unwrap_or(&text).to_string();
        if current == wanted {
            return (
                Finding::ok(self.name(), setting, current, wanted),
                Vec::new(),
            );
        }
        if !sysfs::choices(&text).contains(&wanted) {
            let f = Finding::ok(self.name(), setting, current, wanted)
                .with_note(format!("{wanted} is not offered by this kernel"));
            return (
                Finding {
                    severity: Severity::Info,
                    ..f
                },
                Vec::new(),
            );
        }
        (
            Finding::failed(
                self.name(),
                setting,
                current,
                wanted,
                Severity::Warn,
                if rotational {
                    "reads may starve behind writes"
                } else {
                    "a scheduler adds latency the device does not need"
                },
            ),
            vec![Change::Write {
                path,
                value: wanted.into(),
            }],
        )
    }

    fn nr_requests(&self, host: &Host, disk: &Disk) -> (Finding, Vec<Change>) {
        let setting = format!("block/{}/queue/nr_requests", disk.name);
        let path = queue_file(host, disk, "nr_requests");
        let depth = std::fs::read_dir(disk.dir.join("mq"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| sysfs::read_u64(&e.path().join("nr_tags")).ok())
                    .max()
            })
            .ok()
            .flatten();
        let Some(depth) = depth else {
            return (
                Finding::unavailable(
                    self.name(),
                    setting,
                    "hardware queue depth",
                    "not available here (no mq/*/nr_tags)",
                ),
                Vec::new(),
            );
        };
        let wanted = format!(">= {depth}");
        let current = match sysfs::read_u64(&path) {
            Ok(v) => v,
            Err(e) => {
                return (
                    sysfs::unreadable(self.name(), setting, wanted, &e),
                    Vec::new(),
                );
            }
        };
        if current >= depth {
            return (
                Finding::ok(self.name(), setting, current.to_string(), wanted),
                Vec::new(),
            );
        }
        (
            Finding::failed(
                self.name(),
                setting,
                current.to_string(),
                wanted,
                Severity::Warn,
                "fewer request slots than the device has tags",
            ),
            vec![Change::Write {
                path,
                value: depth.to_string(),
            }],
        )
    }
}

/// `<sys>/block/<disk>/queue/<file>` (the path operators know) when that link exists, else the
/// file in the disk's canonical directory.
fn queue_file(host: &Host, disk: &Disk, file: &str) -> PathBuf {
    let short = host.sys(&format!("block/{}/queue/{file}", disk.name));
    if short.exists() {
        short
    } else {
        disk.dir.join("queue").join(file)
    }
}

/// True for disks whose host does the real scheduling: virtio (`vd*`) and Xen (`xvd*`) disks
/// often report `rotational = 1` whatever backs them, and NVMe never needs a scheduler.
fn paravirtual(disk: &Disk) -> bool {
    ["vd", "xvd", "nvme"]
        .iter()
        .any(|prefix| disk.name.starts_with(prefix))
}

impl Tuner for IoScheduler {
    fn name(&self) -> &'static str {
        "io_scheduler"
    }
    fn description(&self) -> &'static str {
        "data disk: scheduler none (mq-deadline if rotational), nr_requests >= queue depth"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        match sysfs::data_disks(host) {
            Ok(disks) => disks
                .iter()
                .flat_map(|d| [self.scheduler(host, d), self.nr_requests(host, d)])
                .collect(),
            Err(reason) => vec![(
                Finding::unavailable(
                    self.name(),
                    "block/<data disk>/queue/scheduler",
                    SCHEDULER_FLASH,
                    format!("not available here: {reason}"),
                ),
                Vec::new(),
            )],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::tuners::fake::FakeHost;

    /// Fakes `sys/dev/block/MAJ:MIN` of the data directory as partition `vda1` of disk `vda`.
    fn fake_disk(
        fake: &FakeHost,
        name: &str,
        scheduler: &str,
        nr_requests: &str,
        rotational: &str,
    ) {
        let dev = std::fs::metadata(&fake.host.data_dir).expect("stat").dev();
        let disk = format!("sys/devices/pci0000:00/0000:00:02.0/virtio1/block/{name}");
        fake.write(&format!("{disk}/queue/scheduler"), scheduler);
        fake.write(&format!("{disk}/queue/nr_requests"), nr_requests);
        fake.write(&format!("{disk}/queue/rotational"), rotational);
        fake.write(&format!("{disk}/mq/0/nr_tags"), "128\n");
        fake.write(&format!("{disk}/mq/1/nr_tags"), "64\n");
        fake.write(&format!("{disk}/{name}1/partition"), "1\n");
        fake.symlink(
            &format!("{disk}/{name}1"),
            &format!("sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)),
        );
    }

    #[test]
    fn check_apply_dry_run_from_a_partition() {
        let fake = FakeHost::new();
        fake_disk(
            &fake,
            "vda",
            "none [mq-deadline] kyber bfq\n",
            "64\n",
            "1\n",
        );
        let found = IoScheduler.check(&fake.host);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].setting, "block/vda/queue/scheduler");
        assert_eq!(
            (
                found[0].current.as_str(),
                found[0].wanted.as_str(),
                found[0].severity
            ),
            ("mq-deadline", "none", Severity::Warn)
        );
        assert_eq!(
            (
                found[1].current.as_str(),
                found[1].wanted.as_str(),
                found[1].ok
            ),
            ("64", ">= 128", false)
        );
        let out = fake.apply(&IoScheduler, true);
        let scheduler_at = out.find("echo none > ").expect(&out);
        let nr_at = out.find("echo 128 > ").expect(&out);
        assert!(scheduler_at < nr_at, "{out}");
        let disk = "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda";
        assert_eq!(fake.read(&format!("{disk}/queue/nr_requests")), "64\n");
        fake.apply(&IoScheduler, false);
        assert_eq!(fake.read(&format!("{disk}/queue/scheduler")), "none");
        assert_eq!(fake.read(&format!("{disk}/queue/nr_requests")), "128");
    }

    #[test]
    fn rotational_wants_mq_deadline() {
        let fake = FakeHost::new();
        fake_disk(&fake, "sda", "[none] mq-deadline\n", "256\n", "1\n");
        let found = IoScheduler.check(&fake.host);
        assert_eq!(found[0].wanted, "mq-deadline");
        assert!(!found[0].ok);
        assert!(found[1].ok);
    }

    #[test]
    fn no_block_device_is_info() {
        let fake = FakeHost::new();
        let found = IoScheduler.check(&fake.host);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].severity, found[0].ok), (Severity::Info, true));
        assert!(found[0].note.starts_with("not available here"));
    }
}
