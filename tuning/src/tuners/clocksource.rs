//! Clock source: wanted `tsc` on x86 when the kernel offers it.
//!
//! The broker reads the clock for every request (timestamps, timeouts, latency histograms).
//! With `tsc` that is a vDSO read of a CPU register; `hpet` or `acpi_pm` turn it into a slow
//! device access (microseconds), `kvm-clock` is close to `tsc` in VMs. When the kernel has
//! declared the TSC unstable it does not offer it, and the finding is `Info`. Other
//! architectures have one good clock source, so there is nothing to check.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::{Evaluation, Tuner};

/// The wanted clock source on x86.
pub const CLOCKSOURCE_WANTED: &str = "tsc";
const DIR: &str = "devices/system/clocksource/clocksource0";

/// Keeps clock reads in user space (vDSO).
pub struct Clocksource;

impl Tuner for Clocksource {
    fn name(&self) -> &'static str {
        "clocksource"
    }
    fn description(&self) -> &'static str {
        "clock source = tsc on x86: cheap clock reads for timestamps and timeouts"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        let setting = format!("{DIR}/current_clocksource");
        let path = host.sys(&setting);
        let current = match sysfs::read_value(&path) {
            Ok(v) => v,
            Err(e) => {
                return vec![(
                    sysfs::unreadable(self.name(), setting, CLOCKSOURCE_WANTED, &e),
                    Vec::new(),
                )];
            }
        };
        if !matches!(host.arch, "x86_64" | "x86") {
            let f = Finding::ok(self.name(), setting, current, "-")
                .with_note(format!("nothing to tune on {}", host.arch));
            return vec![(
                Finding {
                    severity: Severity::Info,
                    ..f
                },
                Vec::new(),
            )];
        }
        if current == CLOCKSOURCE_WANTED {
            return vec![(
                Finding::ok(self.name(), setting, current, CLOCKSOURCE_WANTED),
                Vec::new(),
            )];
        }
        let available = sysfs::read_value(&host.sys(&format!("{DIR}/available_clocksource")))
            .unwrap_or_default();
        if !sysfs::choices(&available).contains(&CLOCKSOURCE_WANTED) {
            let f = Finding::ok(self.name(), setting, current, CLOCKSOURCE_WANTED)
                .with_note("tsc not offered by the kernel (unstable TSC or VM)");
            return vec![(
                Finding {
                    severity: Severity::Info,
                    ..f
                },
                Vec::new(),
            )];
        }
        vec![(
            Finding::failed(
                self.name(),
                setting,
                current,
                CLOCKSOURCE_WANTED,
                Severity::Warn,
                "clock reads leave the vDSO",
            ),
            vec![Change::Write {
                path,
                value: CLOCKSOURCE_WANTED.into(),
            }],
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    const CURRENT: &str = "sys/devices/system/clocksource/clocksource0/current_clocksource";
    const AVAILABLE: &str = "sys/devices/system/clocksource/clocksource0/available_clocksource";

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        fake.write(CURRENT, "hpet\n");
        fake.write(AVAILABLE, "tsc hpet acpi_pm\n");
        let f = &Clocksource.check(&fake.host)[0];
        assert_eq!(
            (f.current.as_str(), f.wanted.as_str(), f.severity),
            ("hpet", "tsc", Severity::Warn)
        );
        assert!(fake.apply(&Clocksource, true).contains("echo tsc > "));
        assert_eq!(fake.read(CURRENT), "hpet\n");
        fake.apply(&Clocksource, false);
        assert_eq!(fake.read(CURRENT), "tsc");
    }

    #[test]
    fn tsc_not_offered_is_info() {
        let fake = FakeHost::new();
        fake.write(CURRENT, "kvm-clock\n");
        fake.write(AVAILABLE, "kvm-clock acpi_pm\n");
        let f = &Clocksource.check(&fake.host)[0];
        assert_eq!((f.severity, f.ok), (Severity::Info, true));
        assert!(Clocksource.plan(&fake.host).is_empty());
    }

    #[test]
    fn missing_is_info() {
        let fake = FakeHost::new();
        assert_eq!(Clocksource.check(&fake.host)[0].severity, Severity::Info);
    }
}
