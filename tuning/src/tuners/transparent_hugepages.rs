//! Transparent huge pages: `enabled` and `defrag` wanted `madvise` (`never` is also fine).
//!
//! With `always`, every anonymous mapping may be backed by 2 MiB pages: khugepaged and direct
//! compaction in the page-fault path add millisecond stalls, and sparse heaps (one per shard)
//! bloat. Sluice does not ask for huge pages (`madvise(MADV_HUGEPAGE)`), so under `madvise` it
//! gets none of the stalls while other programs that ask still benefit. This is the setting
//! Kafka, MongoDB and Redis operators use; Redpanda's Seastar allocator, unlike Sluice's, wants
//! huge pages and so `rpk` differs here.

use crate::change::Change;
use crate::finding::{Finding, Severity};
use crate::host::Host;
use crate::sysfs;
use crate::{Evaluation, Tuner};

/// The value apply writes to both files.
pub const THP_WANTED: &str = "madvise";

/// Keeps transparent huge pages (and their compaction stalls) opt-in.
pub struct TransparentHugepages;

/// (file under `kernel/mm/transparent_hugepage/`, values that are fine)
const SETTINGS: [(&str, &[&str]); 2] = [
    ("enabled", &["madvise", "never"]),
    ("defrag", &["madvise", "never", "defer", "defer+madvise"]),
];

impl Tuner for TransparentHugepages {
    fn name(&self) -> &'static str {
        "transparent_hugepages"
    }
    fn description(&self) -> &'static str {
        "THP enabled/defrag = madvise: no khugepaged or compaction stalls in the broker"
    }
    fn evaluate(&self, host: &Host) -> Vec<Evaluation> {
        SETTINGS
            .iter()
            .map(|(file, fine)| {
                let setting = format!("kernel/mm/transparent_hugepage/{file}");
                let path = host.sys(&setting);
                let text = match sysfs::read_value(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        return (
                            sysfs::unreadable(self.name(), setting, THP_WANTED, &e),
                            Vec::new(),
                        );
                    }
                };
                let current = sysfs::selected(&text).unwrap_or(&text).to_string();
                if fine.contains(&current.as_str()) {
                    (
                        Finding::ok(self.name(), setting, current, THP_WANTED),
                        Vec::new(),
                    )
                } else {
                    (
                        Finding::failed(
                            self.name(),
                            setting,
                            current,
                            THP_WANTED,
                            Severity::Warn,
                            "huge-page compaction stalls page faults",
                        ),
                        vec![Change::Write {
                            path,
                            value: THP_WANTED.into(),
                        }],
                    )
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuners::fake::FakeHost;

    const ENABLED: &str = "sys/kernel/mm/transparent_hugepage/enabled";
    const DEFRAG: &str = "sys/kernel/mm/transparent_hugepage/defrag";

    #[test]
    fn check_apply_dry_run() {
        let fake = FakeHost::new();
        fake.write(ENABLED, "[always] madvise never\n");
        fake.write(DEFRAG, "always defer defer+madvise [madvise] never\n");
        let found = TransparentHugepages.check(&fake.host);
        assert_eq!(
            (found[0].current.as_str(), found[0].severity),
            ("always", Severity::Warn)
        );
        assert_eq!((found[1].current.as_str(), found[1].ok), ("madvise", true));
        let out = fake.apply(&TransparentHugepages, true);
        assert!(out.contains("echo madvise > "), "{out}");
        let echoes: Vec<&str> = out.lines().filter(|l| l.starts_with("echo ")).collect();
        assert_eq!(echoes.len(), 1, "{out}");
        assert!(echoes[0].ends_with("/enabled"), "{out}");
        assert_eq!(fake.read(ENABLED), "[always] madvise never\n");
        fake.apply(&TransparentHugepages, false);
        assert_eq!(fake.read(ENABLED), "madvise");
    }

    #[test]
    fn missing_is_info() {
        let fake = FakeHost::new();
        for f in TransparentHugepages.check(&fake.host) {
            assert_eq!((f.severity, f.ok), (Severity::Info, true));
        }
    }
}
