//! One file per tuner. Each evaluates the host once into (finding, optional change) pairs;
//! `check` keeps the findings and `plan` the changes, so the two never disagree.

use crate::Tuner;
use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;

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

/// A finding and the change that would fix it (None when ok or not fixable automatically).
pub(crate) type Evaluation = (Finding, Option<Change>);

/// The changes of `evaluations`, in order.
pub(crate) fn changes(evaluations: Vec<Evaluation>) -> Vec<Change> {
    evaluations.into_iter().filter_map(|(_, c)| c).collect()
}

/// The findings of `evaluations`, in order.
pub(crate) fn findings(evaluations: Vec<Evaluation>) -> Vec<Finding> {
    evaluations.into_iter().map(|(f, _)| f).collect()
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
        Err(e) => return (sysfs::unreadable(tuner, key, wanted_text, &e), None),
    };
    let ok = match bound {
        Bound::AtLeast(v) => current >= v,
        Bound::AtMost(v) => current <= v,
    };
    if ok {
        (
            Finding::ok(tuner, key, current.to_string(), wanted_text),
            None,
        )
    } else {
        (
            Finding::failed(tuner, key, current.to_string(), wanted_text, severity, why),
            Some(Change::Sysctl {
                key: key.to_string(),
                value: target.to_string(),
            }),
        )
    }
}
