//! Host tuning for dedicated Sluice hosts, after Redpanda's `rpk redpanda tune`: one small tuner
//! per setting, each able to *check* the host (current value, wanted value, severity) and to
//! *plan* the changes that bring it to the wanted value. [`apply`] runs a plan, printing the
//! equivalent shell command before each change; with `dry_run` it prints the commands only.
//!
//! # Layout
//! - [`host`]: [`Host`], the roots of `/proc`, `/sys` and `/etc` (a fake tree in tests) and the
//!   broker facts the tuners need (data directory, shard cores, io_uring memory).
//! - [`finding`]: [`Finding`] and [`Severity`], what a check reports.
//! - [`change`]: [`Change`], one write a tuner wants, and [`apply`], which runs or prints them.
//! - [`sysfs`]: reading and parsing `/proc` and `/sys` files, finding the data disk and CPU lists.
//! - [`tuners`]: one file per tuner; [`tuners::all`] lists them in the order they run.
//!
//! # Contracts
//! - A check only reads files under the host's roots (plus `getrlimit`); it never fails: a
//!   setting this host does not have is an [`Severity::Info`] finding "not available here", an
//!   unreadable one (non-root) is `Info` too, with the reason in the note.
//! - A tuner plans only changes for findings that are not ok, so applying twice is a no-op.
//! - [`apply`] never panics on I/O: every failed change (EACCES as non-root, EINVAL from the
//!   kernel) is returned and printed, and the remaining changes still run.

pub mod change;
pub mod finding;
pub mod host;
pub mod sysfs;
pub mod tuners;

pub use change::{ApplyFailure, Change, PlannedChange, TuneError, apply, plan};
pub use finding::{Finding, Severity, render_table};
pub use host::{Host, MemlockLimit};

/// One tunable: how to check it and how to change it.
///
/// Implementations are stateless; everything they look at comes from the [`Host`].
pub trait Tuner {
    /// Short stable name, used in tables, logs and `--only`-style selections (`swappiness`).
    fn name(&self) -> &'static str;
    /// One line saying what the tuner checks and why it matters for the broker.
    fn description(&self) -> &'static str;
    /// Reads the host once: one finding per setting (or per device/core/IRQ), each with the
    /// changes that would fix it, in the order they must run (empty when it is ok or nothing
    /// can be done automatically). Never fails and never writes; see the crate-level contract.
    /// [`Tuner::check`] and [`Tuner::plan`] both come from it, so they never disagree.
    fn evaluate(&self, host: &Host) -> Vec<Evaluation>;
    /// The findings of [`Tuner::evaluate`].
    fn check(&self, host: &Host) -> Vec<Finding> {
        self.evaluate(host).into_iter().map(|(f, _)| f).collect()
    }
    /// The changes of [`Tuner::evaluate`], in order.
    fn plan(&self, host: &Host) -> Vec<Change> {
        self.evaluate(host)
            .into_iter()
            .flat_map(|(_, c)| c)
            .collect()
    }
}

/// A finding and the changes that would fix it (empty when ok or not fixable automatically).
pub type Evaluation = (Finding, Vec<Change>);

/// Runs every tuner's check against `host`.
pub fn check_all(host: &Host) -> Vec<Finding> {
    tuners::all().iter().flat_map(|t| t.check(host)).collect()
}

/// The broker's start-up check: runs every tuner's check (reads of `/proc` and `/sys` only),
/// logs each finding at [`Severity::Warn`] or above as one `warn!` line and a one-line `info!`
/// summary. Never fails: a badly tuned host is slower, not broken (the checks that stop the
/// broker live in the broker itself).
pub fn log_startup_checks(host: &Host) -> Vec<Finding> {
    let findings = check_all(host);
    let mut failed = 0;
    for f in findings.iter().filter(|f| f.severity >= Severity::Warn) {
        failed += 1;
        tracing::warn!(
            tuner = f.tuner,
            setting = %f.setting,
            current = %f.current,
            wanted = %f.wanted,
            note = %f.note,
            "host tuning check failed"
        );
    }
    tracing::info!(
        checks = findings.len(),
        failed,
        "host tuning checked; `sluice tune --check` explains, `sluice tune --apply` fixes"
    );
    findings
}
