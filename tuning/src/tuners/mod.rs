//! One file per tuner. Each evaluates the host once into (finding, changes) pairs
//! ([`Tuner::evaluate`]); `check` keeps the findings and `plan` the changes, so the two never
//! disagree.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::{Evaluation, Tuner};

pub mod aio_max_nr;
pub mod clocksource;
pub mod cpu_governor;
pub mod io_scheduler;
pub mod irq_affinity;
pub mod memlock;
pub mod net;
pub mod swappiness;
pub mod transparent_hugepages;

#[cfg(test)]
pub(crate) mod fake;

/// Every tuner, in the order `check` reports and `apply` runs them.
pub fn all() -> Vec<Box<dyn Tuner>> {
    vec![
        Box::new(cpu_governor::CpuGovernor),
        Box::new(irq_affinity::IrqAffinity),
        Box::new(transparent_hugepages::TransparentHugepages),
        Box::new(swappiness::Swappiness),
        Box::new(io_scheduler::IoScheduler),
        Box::new(memlock::Memlock),
        Box::new(aio_max_nr::AioMaxNr),
        Box::new(net::Net),
        Box::new(clocksource::Clocksource),
    ]
}

/// Which way a numeric sysctl must lie relative to its wanted value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    /// Current >= wanted; apply raises it to wanted.
    AtLeast(u64),
    /// Current <= wanted; apply lowers it to wanted.
    AtMost(u64),
}

/// Checks a sysctl holding one number against `bound`; a mismatch has `severity` and `why` as
/// its note, and the change sets the bound's value.
pub(crate) fn numeric_sysctl(
    host: &Host,
    tuner: &'static str,
    key: &str,
    bound: Bound,
    severity: Severity,
    why: &str,
) -> Evaluation {
    let (wanted_text, target) = match bound {
        Bound::AtLeast(v) => (format!(">= {v}"), v),
        Bound::AtMost(v) => (format!("<= {v}"), v),
    };
    let current = match sysfs::read_u64(&host.sysctl_path(key)) {
        Ok(v) => v,
        Err(e) => return (sysfs::unreadable(tuner, key, wanted_text, &e), Vec::new()),
    };
    let ok = match bound {
        Bound::AtLeast(v) => current >= v,
        Bound::AtMost(v) => current <= v,
    };
    if ok {
        (
            Finding::ok(tuner, key, current.to_string(), wanted_text),
            Vec::new(),
        )
    } else {
        (
            Finding::failed(tuner, key, current.to_string(), wanted_text, severity, why),
            vec![Change::Sysctl {
                key: key.to_string(),
                value: target.to_string(),
            }],
        )
    }
}
