//! CPU frequency governor: wanted `performance` on every core the broker may use.
//!
//! A shard spins briefly, then parks; with `powersave`/`schedutil` the core clocks down while
//! parked and the next request pays the ramp-up (tens to hundreds of microseconds of extra
//! latency). `performance` keeps the frequency at its maximum. VMs and some drivers have no
//! cpufreq at all: that is `Info`, the hypervisor decides.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::{Evaluation, Tuner};

/// The governor apply selects.
pub const GOVERNOR_WANTED: &str = "performance";

/// Keeps shard cores at full clock.
pub struct CpuGovernor;

impl Tuner for CpuGovernor {
    fn name(&self) -> &'static str {
        "cpu_governor"
    }
    fn description(&self) -> &'static str {
        "cpufreq governor = performance on the broker's cores: no clock ramp-up after idle"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        let mut out = Vec::new();
        let mut missing = 0;
        for &cpu in &host.cores {
            let setting = format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
            let path = host.sys(&setting);
            let current = match sysfs::read_value(&path) {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing += 1;
                    continue;
                }
                Err(e) => {
                    out.push((
                        sysfs::unreadable(self.name(), setting, GOVERNOR_WANTED, &e),
                        Vec::new(),
                    ));
                    continue;
                }
            };
            if current == GOVERNOR_WANTED {
                out.push((
                    Finding::ok(self.name(), setting, current, GOVERNOR_WANTED),
                    Vec::new(),
                ));
                continue;
            }
            let available = sysfs::read_value(&host.sys(&format!(
                "devices/system/cpu/cpu{cpu}/cpufreq/scaling_available_governors"
            )))
            .unwrap_or_default();
            if !sysfs::choices(&available).contains(&GOVERNOR_WANTED) {
                let f = Finding::ok(self.name(), setting, current, GOVERNOR_WANTED)
                    .with_note("the cpufreq driver offers no performance governor");
                out.push((
                    Finding {
                        severity: Severity::Info,
                        ..f
                    },
                    Vec::new(),
                ));
                continue;
            }
            out.push((
                Finding::failed(
                    self.name(),
                    setting,
                    current,
                    GOVERNOR_WANTED,
                    Severity::Warn,
                    "clock ramp-up after idle adds latency",
                ),
                vec![Change::Write {
                    path,
                    value: GOVERNOR_WANTED.into(),
                }],
            ));
        }
        if missing > 0 && out.is_empty() {
            out.push((
                Finding::unavailable(
                    self.name(),
                    "devices/system/cpu/cpu*/cpufreq/scaling_governor",
                    GOVERNOR_WANTED,
                    "not available here (no cpufreq: VM or fixed-frequency CPU)",
                ),
                Vec::new(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    fn governor(cpu: usize) -> String {
        format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")
    }

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        for cpu in 0..4 {
            fake.write(
                &governor(cpu),
                if cpu == 2 {
                    "performance\n"
                } else {
                    "powersave\n"
                },
            );
            fake.write(
                &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_available_governors"),
                "performance powersave\n",
            );
        }
        let found = CpuGovernor.check(&fake.host);
        assert_eq!(found.len(), 4);
        assert_eq!(
            (found[0].current.as_str(), found[0].severity),
            ("powersave", Severity::Warn)
        );
        assert!(found[2].ok);
        let out = fake.apply(&CpuGovernor, true);
        assert_eq!(out.matches("echo performance > ").count(), 3, "{out}");
        assert_eq!(fake.read(&governor(0)), "powersave\n");
        fake.apply(&CpuGovernor, false);
        for cpu in 0..4 {
            assert_eq!(fake.read(&governor(cpu)).trim(), "performance");
        }
    }

    #[test]
    fn no_cpufreq_is_one_info() {
        let fake = FakeHost::new();
        let found = CpuGovernor.check(&fake.host);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].severity, found[0].ok), (Severity::Info, true));
        assert!(found[0].note.starts_with("not available here"));
        assert!(CpuGovernor.plan(&fake.host).is_empty());
    }
}
