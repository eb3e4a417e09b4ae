//! Memlock limit (`RLIMIT_MEMLOCK`): wanted at least the io_uring memory of all shards
//! (shards x 3 rings x `io_memory_bytes`), ideally unlimited.
//!
//! glommio registers each ring's buffers with the kernel, which charges them to the memlock
//! limit of a non-root user; below it the broker refuses to start (`StartError::Memlock`). The
//! broker raises its soft limit up to the hard limit by itself, so only a hard limit below the
//! need is an `Error`. Root (CAP_IPC_LOCK) is not charged.
//!
//! The limit belongs to the process, not the host: the check reads the limit of the process
//! running it, so run `sluice tune --check` as the broker's user (or read the unit's
//! `LimitMEMLOCK=`). The fix is `LimitMEMLOCK=infinity` in the systemd unit (tuning/sluice.service)
//! or, for brokers started from a login shell, `/etc/security/limits.d/90-sluice.conf`, which
//! apply writes for the `sluice` user.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::{Evaluation, Tuner};

/// File under `<etc>` that apply writes when the hard limit is too low.
pub const LIMITS_FILE: &str = "security/limits.d/90-sluice.conf";
/// Contents of [`LIMITS_FILE`]: unlimited memlock for the `sluice` user (PAM sessions only).
pub const LIMITS_CONTENTS: &str = "# Written by `sluice tune --apply`: io_uring buffers are charged to memlock.\n\
sluice soft memlock unlimited\n\
sluice hard memlock unlimited\n";
/// The advice printed with the change.
pub const UNIT_ADVICE: &str =
    "systemd: set LimitMEMLOCK=infinity in the [Service] section (see tuning/sluice.service)";

/// Lets the broker lock its io_uring buffers.
pub struct Memlock;

/// `unlimited` or a byte count with its MiB value.
fn limit_text(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".into()
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

impl Tuner for Memlock {
    fn name(&self) -> &'static str {
        "memlock"
    }
    fn description(&self) -> &'static str {
        "RLIMIT_MEMLOCK covers shards x 3 rings x io_memory_bytes (LimitMEMLOCK=infinity)"
    }
    /// The one finding and the changes that fix it (empty unless the finding is an `Error`).
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        let need = host.memlock_need_bytes;
        let (soft, hard) = (host.memlock.soft_bytes, host.memlock.hard_bytes);
        let setting = "RLIMIT_MEMLOCK";
        let current = format!("soft {} / hard {}", limit_text(soft), limit_text(hard));
        let wanted = format!(">= {} (unlimited)", limit_text(need));
        let name = self.name();
        if soft >= need {
            return vec![(Finding::ok(name, setting, current, wanted), Vec::new())];
        }
        let info = |note: &str| {
            let f = Finding::ok(name, setting, current.clone(), wanted.clone()).with_note(note);
            (
                Finding {
                    severity: Severity::Info,
                    ..f
                },
                Vec::new(),
            )
        };
        if host.privileged {
            return vec![info(
                "root (CAP_IPC_LOCK) is not charged; a non-root broker needs LimitMEMLOCK=infinity",
            )];
        }
        if hard >= need {
            return vec![info(
                "the broker raises its soft limit to the need at start",
            )];
        }
        let finding = Finding::failed(
            name,
            setting,
            current,
            wanted,
            Severity::Error,
            "the broker will not start as this user: io_uring buffers exceed the hard limit",
        );
        let changes = vec![
            Change::Advice(UNIT_ADVICE.into()),
            Change::File {
                path: host.etc_root.join(LIMITS_FILE),
                contents: LIMITS_CONTENTS.into(),
            },
        ];
        vec![(finding, changes)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemlockLimit;
    use crate::tuners::fake::FakeHost;

    #[test]
    fn hard_limit_too_low_is_error_and_apply_writes_limits_d() {
        let fake = FakeHost::new();
        let found = Memlock.check(&fake.host);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(
            (f.current.as_str(), f.wanted.as_str(), f.severity, f.ok),
            (
                "soft 8 MiB / hard 8 MiB",
                ">= 24 MiB (unlimited)",
                Severity::Error,
                false
            )
        );
        let out = fake.apply(&Memlock, true);
        assert!(
            out.contains("# systemd: set LimitMEMLOCK=infinity"),
            "{out}"
        );
        assert!(out.contains("sluice hard memlock unlimited"), "{out}");
        assert!(!fake.path("etc").join(LIMITS_FILE).exists());
        fake.apply(&Memlock, false);
        assert_eq!(fake.read(&format!("etc/{LIMITS_FILE}")), LIMITS_CONTENTS);
    }

    #[test]
    fn raisable_soft_limit_and_root_are_info() {
        let mut fake = FakeHost::new();
        fake.host.memlock = MemlockLimit {
            soft_bytes: 8 << 20,
            hard_bytes: u64::MAX,
        };
        let f = &Memlock.check(&fake.host)[0];
        assert_eq!((f.severity, f.ok), (Severity::Info, true));
        fake.host.memlock.hard_bytes = 8 << 20;
        fake.host.privileged = true;
        assert_eq!(Memlock.check(&fake.host)[0].severity, Severity::Info);
        assert!(Memlock.plan(&fake.host).is_empty());
        fake.host.memlock.soft_bytes = u64::MAX;
        assert_eq!(Memlock.check(&fake.host)[0].severity, Severity::Ok);
    }
}
