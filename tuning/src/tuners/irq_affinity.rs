//! IRQ affinity of the NIC(s) and the data disk, away from the shard cores.
//!
//! A shard owns its core: an interrupt handler (and the softirq work it schedules: TCP receive,
//! block completions) that runs there steals time from the requests of that shard and shows up
//! as tail latency. The plan depends on the cores left over:
//!
//! - **Spare cores** (the broker's CPU set is larger than its shard count): every MSI/MSI-X IRQ
//!   of the NICs and the data disk goes to the spare cores (`smp_affinity_list` = the spare
//!   list). A mismatch is `Warn`.
//! - **No spare core** (shards use every core, as with the default shard count): IRQs cannot
//!   avoid shards, so they are spread, the i-th IRQ on core i mod n, so that no single shard
//!   takes all of them (the kernel's default often lands them all on CPU 0). A mismatch is only
//!   `Info`: the gain is small. Reserve cores with `--shards` to get the first plan.
//!
//! Either way irqbalance must be off, or it moves the IRQs back within seconds; the tuner
//! reports it running as `Warn` and prints `systemctl disable --now irqbalance` (advice, never
//! run). Kernel-managed IRQs (NVMe and virtio queues on recent kernels) refuse the write with
//! EIO; apply reports that and goes on.
//!
//! IRQs are found from `/sys/class/net/<if>/device` (interfaces without a `device`, such as
//! `lo`, bridges and `ifb`, are virtual and skipped) and the data disk's `device`, walking up to
//! the first directory with `msi_irqs/`.

use std::collections::BTreeMap;

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::{Evaluation, Tuner};

/// Keeps device interrupts off the shard cores, or spreads them when every core is a shard's.
pub struct IrqAffinity;

/// What the tuner wants for the IRQs on this host.
enum Plan {
    /// Move every IRQ to these cores.
    Spare(Vec<usize>),
    /// One IRQ per core, round robin over these cores.
    Spread(Vec<usize>),
}

impl IrqAffinity {
    /// IRQ number -> the device names it serves (NIC interface or disk name).
    fn device_irqs(&self, host: &Host) -> BTreeMap<u32, String> {
        let mut irqs: BTreeMap<u32, String> = BTreeMap::new();
        let mut add = |irq: u32, name: &str| {
            irqs.entry(irq)
                .and_modify(|names| {
                    if !names.split('+').any(|n| n == name) {
                        names.push('+');
                        names.push_str(name);
                    }
                })
                .or_insert_with(|| name.to_string());
        };
        if let Ok(entries) = std::fs::read_dir(host.sys("class/net")) {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect();
            names.sort();
            for name in names {
                let device = host.sys(&format!("class/net/{name}/device"));
                for irq in sysfs::device_irqs(host, &device) {
                    add(irq, &name);
                }
            }
        }
        if let Ok(disks) = sysfs::data_disks(host) {
            for disk in disks {
                for irq in sysfs::device_irqs(host, &disk.dir.join("device")) {
                    add(irq, &disk.name);
                }
            }
        }
        irqs
    }

    fn plan_for(host: &Host) -> Plan {
        let spare = host.spare_cores();
        if spare.is_empty() {
            Plan::Spread(host.cores.clone())
        } else {
            Plan::Spare(spare)
        }
    }

    /// irqbalance rewrites affinities every few seconds; it must not run.
    fn irqbalance(&self, host: &Host) -> (Finding, Vec<Change>) {
        let running = std::fs::read_dir(&host.proc_root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                    })
                    .any(|e| {
                        sysfs::read_value(&e.path().join("comm")).is_ok_and(|c| c == "irqbalance")
                    })
            })
            .unwrap_or(false);
        if running {
            (
                Finding::failed(
                    self.name(),
                    "irqbalance",
                    "running",
                    "stopped",
                    Severity::Warn,
                    "irqbalance undoes the IRQ plan",
                ),
                vec![Change::Advice(
                    "systemctl disable --now irqbalance  # it would move the IRQs back".into(),
                )],
            )
        } else {
            (
                Finding::ok(self.name(), "irqbalance", "not running", "stopped"),
                Vec::new(),
            )
        }
    }
}

impl Tuner for IrqAffinity {
    fn name(&self) -> &'static str {
        "irq_affinity"
    }
    fn description(&self) -> &'static str {
        "NIC and data-disk IRQs on spare cores (or spread one per core when there are none)"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        let name = self.name();
        let plan = Self::plan_for(host);
        let shard_list = sysfs::format_cpu_list(&host.shard_cores);
        let (plan_wanted, plan_note) = match &plan {
            Plan::Spare(spare) => (
                format!("IRQs on {}", sysfs::format_cpu_list(spare)),
                "spare cores take every NIC and data-disk IRQ".to_string(),
            ),
            Plan::Spread(cores) => (
                format!("spread over {}", sysfs::format_cpu_list(cores)),
                "every core runs a shard: one IRQ per core round robin, irqbalance off; \
                 reserve cores with --shards to move IRQs off shards"
                    .to_string(),
            ),
        };
        let plan_finding =
            Finding::ok(name, "plan", format!("shards on {shard_list}"), plan_wanted)
                .with_note(plan_note);
        let mut out = vec![(
            Finding {
                severity: Severity::Info,
                ..plan_finding
            },
            Vec::new(),
        )];
        let irqs = self.device_irqs(host);
        if irqs.is_empty() {
            out.push((
                Finding::unavailable(
                    name,
                    "device IRQs",
                    "-",
                    "not available here: no MSI IRQs found for a NIC or the data disk",
                ),
                Vec::new(),
            ));
        }
        for (i, (irq, devices)) in irqs.iter().enumerate() {
            let setting = format!("irq {irq} ({devices})");
            let (wanted, severity) = match &plan {
                Plan::Spare(spare) => (spare.clone(), Severity::Warn),
                Plan::Spread(cores) if !cores.is_empty() => {
                    (vec![cores[i % cores.len()]], Severity::Info)
                }
                Plan::Spread(_) => continue,
            };
            let wanted_text = sysfs::format_cpu_list(&wanted);
            let path = host.proc_root.join(format!("irq/{irq}/smp_affinity_list"));
            let text = match sysfs::read_value(&path) {
                Ok(t) => t,
                Err(e) => {
                    out.push((
                        sysfs::unreadable(name, setting, wanted_text, &e),
                        Vec::new(),
                    ));
                    continue;
                }
            };
            let current = sysfs::parse_cpu_list(&text).unwrap_or_default();
            let ok = match &plan {
                Plan::Spare(spare) => {
                    !current.is_empty() && current.iter().all(|c| spare.contains(c))
                }
                Plan::Spread(_) => current == wanted,
            };
            if ok {
                out.push((Finding::ok(name, setting, text, wanted_text), Vec::new()));
            } else {
                let note = match plan {
                    Plan::Spare(_) => "interrupts land on shard cores",
                    Plan::Spread(_) => "not spread (no spare core to move it to)",
                };
                out.push((
                    Finding::failed(name, setting, text, wanted_text.clone(), severity, note),
                    vec![Change::Write {
                        path,
                        value: wanted_text,
                    }],
                ));
            }
        }
        out.push(self.irqbalance(host));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    /// eth0 (virtio, IRQs 37-39 on its PCI parent), lo and ifb0 (virtual), IRQ affinity 0-3.
    fn fake_nic(fake: &FakeHost) {
        let pci = "sys/devices/pci0000:00/0000:00:03.0";
        for irq in [37, 38, 39] {
            fake.write(&format!("{pci}/msi_irqs/{irq}"), "msix\n");
            fake.write(&format!("proc/irq/{irq}/smp_affinity_list"), "0-3\n");
        }
        fake.mkdir(&format!("{pci}/virtio2/net/eth0"));
        fake.symlink(
            &format!("{pci}/virtio2"),
            &format!("{pci}/virtio2/net/eth0/device"),
        );
        fake.symlink(&format!("{pci}/virtio2/net/eth0"), "sys/class/net/eth0");
        fake.mkdir("sys/devices/virtual/net/lo");
        fake.symlink("sys/devices/virtual/net/lo", "sys/class/net/lo");
        fake.mkdir("sys/devices/virtual/net/ifb0");
        fake.symlink("sys/devices/virtual/net/ifb0", "sys/class/net/ifb0");
    }

    #[test]
    fn spare_cores_take_the_irqs() {
        let fake = FakeHost::new();
        fake_nic(&fake);
        let found = IrqAffinity.check(&fake.host);
        assert_eq!(found[0].setting, "plan");
        assert_eq!(found[0].wanted, "IRQs on 2-3");
        let irqs: Vec<_> = found
            .iter()
            .filter(|f| f.setting.starts_with("irq "))
            .collect();
        assert_eq!(irqs.len(), 3, "{found:?}");
        assert_eq!(irqs[0].setting, "irq 37 (eth0)");
        assert_eq!(
            (
                irqs[0].current.as_str(),
                irqs[0].wanted.as_str(),
                irqs[0].severity
            ),
            ("0-3", "2-3", Severity::Warn)
        );
        assert!(found.iter().any(|f| f.setting == "irqbalance" && f.ok));

        let out = fake.apply(&IrqAffinity, true);
        assert_eq!(out.matches("echo 2-3 > ").count(), 3, "{out}");
        assert_eq!(fake.read("proc/irq/38/smp_affinity_list"), "0-3\n");
        fake.apply(&IrqAffinity, false);
        assert_eq!(fake.read("proc/irq/38/smp_affinity_list"), "2-3");
        assert!(IrqAffinity.plan(&fake.host).is_empty());
    }

    #[test]
    fn no_spare_core_spreads_as_info() {
        let mut fake = FakeHost::new();
        fake_nic(&fake);
        fake.host.cores = vec![0, 1];
        fake.host.shard_cores = vec![0, 1];
        let found = IrqAffinity.check(&fake.host);
        assert_eq!(found[0].wanted, "spread over 0-1");
        assert!(found[0].note.contains("irqbalance off"));
        let irqs: Vec<_> = found
            .iter()
            .filter(|f| f.setting.starts_with("irq "))
            .collect();
        assert_eq!(
            irqs.iter().map(|f| f.wanted.as_str()).collect::<Vec<_>>(),
            ["0", "1", "0"]
        );
        assert!(irqs.iter().all(|f| f.severity == Severity::Info));
        fake.apply(&IrqAffinity, false);
        assert_eq!(fake.read("proc/irq/38/smp_affinity_list"), "1");
    }

    #[test]
    fn irqbalance_running_is_advice_only() {
        let fake = FakeHost::new();
        fake.write("proc/4242/comm", "irqbalance\n");
        let found = IrqAffinity.check(&fake.host);
        let f = found
            .iter()
            .find(|f| f.setting == "irqbalance")
            .expect("irqbalance");
        assert_eq!(
            (f.current.as_str(), f.severity),
            ("running", Severity::Warn)
        );
        let out = fake.apply(&IrqAffinity, false);
        assert!(
            out.contains("# systemctl disable --now irqbalance"),
            "{out}"
        );
    }

    #[test]
    fn no_devices_is_info() {
        let fake = FakeHost::new();
        let found = IrqAffinity.check(&fake.host);
        assert!(
            found.iter().all(|f| f.severity <= Severity::Info),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.note.starts_with("not available here"))
        );
    }
}
