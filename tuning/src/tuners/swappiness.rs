//! `vm.swappiness`: wanted 1.
//!
//! The broker's memory is its page cache and its io_uring buffers; swapping out a shard's heap
//! turns a microsecond request into a disk read. 1 (not 0) still lets the kernel swap in a real
//! memory emergency instead of invoking the OOM killer at once.

use crate::finding::Severity;
use crate::host::Host;
use crate::tuners::{Bound, numeric_sysctl};
use crate::{Evaluation, Tuner};

/// Wanted upper bound of `vm.swappiness`.
pub const SWAPPINESS_MAX: u64 = 1;

/// Keeps anonymous memory out of swap.
pub struct Swappiness;

impl Tuner for Swappiness {
    fn name(&self) -> &'static str {
        "swappiness"
    }
    fn description(&self) -> &'static str {
        "vm.swappiness <= 1: keep the broker's memory out of swap"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        vec![numeric_sysctl(
            host,
            self.name(),
            "vm.swappiness",
            Bound::AtMost(SWAPPINESS_MAX),
            Severity::Warn,
            "swapping a shard's memory stalls every connection on that core",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        fake.write("proc/sys/vm/swappiness", "60\n");
        let f = &Swappiness.check(&fake.host)[0];
        assert_eq!(
            (f.current.as_str(), f.wanted.as_str(), f.severity, f.ok),
            ("60", "<= 1", Severity::Warn, false)
        );
        let out = fake.apply(&Swappiness, true);
        assert!(out.contains("sysctl -w vm.swappiness=1"), "{out}");
        assert_eq!(fake.read("proc/sys/vm/swappiness"), "60\n");
        fake.apply(&Swappiness, false);
        assert_eq!(fake.read("proc/sys/vm/swappiness"), "1");
        assert!(
            fake.read("etc/sysctl.d/90-sluice.conf")
                .contains("vm.swappiness = 1")
        );
        assert!(Swappiness.check(&fake.host)[0].ok);
        assert!(Swappiness.plan(&fake.host).is_empty());
    }

    #[test]
    fn missing_is_info() {
        let fake = FakeHost::new();
        let f = &Swappiness.check(&fake.host)[0];
        assert_eq!((f.severity, f.ok), (Severity::Info, true));
        assert_eq!(f.note, "not available here");
    }
}
