//! [`Change`]: one write a tuner wants; [`plan`] collects them and [`apply`] runs or prints them.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Tuner;
use crate::host::Host;

/// Name of the file under `<etc>/sysctl.d/` that keeps applied sysctls across reboots.
pub const SYSCTL_PERSIST_FILE: &str = "sysctl.d/90-sluice.conf";

/// One change to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Set a sysctl now (write `<proc>/sys/<key with / for .>`) and record it in
    /// `<etc>/sysctl.d/90-sluice.conf` so it survives a reboot. Shown as `sysctl -w key=value`.
    Sysctl { key: String, value: String },
    /// Write `value` into a `/sys` or `/proc` file. Shown as `echo value > path`. Not persistent:
    /// run `sluice tune --apply` at boot (the systemd unit's `ExecStartPre`).
    Write { path: PathBuf, value: String },
    /// Create or replace a whole configuration file. Shown as a `cat > path <<'EOF'` heredoc.
    File { path: PathBuf, contents: String },
    /// Something the tuner cannot do itself (a systemd setting, stopping irqbalance); printed
    /// as a `#` comment and never run.
    Advice(String),
}

impl Change {
    /// The equivalent shell command, as printed before the change runs (and instead of it in a
    /// dry run).
    pub fn command(&self) -> String {
        match self {
            Change::Sysctl { key, value } => {
                if value.contains(char::is_whitespace) {
                    format!("sysctl -w {key}=\"{value}\"")
                } else {
                    format!("sysctl -w {key}={value}")
                }
            }
            Change::Write { path, value } => format!("echo {value} > {}", path.display()),
            Change::File { path, contents } => {
                format!("cat > {} <<'EOF'\n{contents}EOF", path.display())
            }
            Change::Advice(text) => format!("# {text}"),
        }
    }

    /// Makes the change. `Advice` does nothing.
    fn run(&self, host: &Host) -> Result<(), TuneError> {
        match self {
            Change::Sysctl { key, value } => write_file(&host.sysctl_path(key), value),
            Change::Write { path, value } => write_file(path, value),
            Change::File { path, contents } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| TuneError::Write {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                write_file(path, contents)
            }
            Change::Advice(_) => Ok(()),
        }
    }
}

/// A change together with the tuner that wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChange {
    /// [`Tuner::name`] of the tuner, or `persist` for the sysctl.d file.
    pub tuner: &'static str,
    /// [`Tuner::description`] of the tuner, printed as a comment above its commands.
    pub description: &'static str,
    /// What to do.
    pub change: Change,
}

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The kernel or filesystem refused the write: EACCES/EPERM when not root, EINVAL for a
    /// value the kernel does not accept, EIO for a kernel-managed IRQ affinity.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A change that failed during [`apply`].
#[derive(Debug)]
pub struct ApplyFailure {
    /// The tuner whose change failed.
    pub tuner: &'static str,
    /// The command that was attempted.
    pub command: String,
    /// Why it failed.
    pub error: TuneError,
}

/// Every tuner's changes in tuner order, followed by the `sysctl.d` file that persists the
/// sysctls among them (merged with the file's existing lines, so settings applied earlier stay).
pub fn plan<'a>(
    host: &Host,
    tuners: impl IntoIterator<Item = &'a dyn Tuner>,
) -> Vec<PlannedChange> {
    let mut planned: Vec<PlannedChange> = tuners
        .into_iter()
        .flat_map(|t| {
            t.plan(host).into_iter().map(|change| PlannedChange {
                tuner: t.name(),
                description: t.description(),
                change,
            })
        })
        .collect();
    let sysctls: Vec<(String, String)> = planned
        .iter()
        .filter_map(|p| match &p.change {
            Change::Sysctl { key, value } => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect();
    if !sysctls.is_empty() {
        let path = host.etc_root.join(SYSCTL_PERSIST_FILE);
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        planned.push(PlannedChange {
            tuner: "persist",
            description: "keep the sysctls above across reboots (systemd-sysctl reads sysctl.d)",
            change: Change::File {
                contents: merge_sysctl_file(&existing, &sysctls),
                path,
            },
        });
    }
    planned
}

/// Runs `planned` in order, printing each change's command to `out` first; with `dry_run` only
/// prints. A failed change is printed as a `# failed:` line and returned; later changes still
/// run. Err only when writing to `out` fails.
pub fn apply(
    host: &Host,
    planned: &[PlannedChange],
    dry_run: bool,
    out: &mut dyn Write,
) -> io::Result<Vec<ApplyFailure>> {
    let mut failures = Vec::new();
    let mut tuner = "";
    for p in planned {
        if p.tuner != tuner {
            tuner = p.tuner;
            writeln!(out, "# {tuner}: {}", p.description)?;
        }
        let command = p.change.command();
        writeln!(out, "{command}")?;
        if dry_run {
            continue;
        }
        if let Err(error) = p.change.run(host) {
            writeln!(out, "# failed: {error}")?;
            failures.push(ApplyFailure {
                tuner: p.tuner,
                command,
                error,
            });
        }
    }
    Ok(failures)
}

/// The sysctl.d file with `sysctls` set: existing `key = value` lines for the same keys are
/// replaced, others kept, new keys appended.
fn merge_sysctl_file(existing: &str, sysctls: &[(String, String)]) -> String {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for line in existing.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    for (key, value) in sysctls {
        values.insert(key.clone(), value.clone());
    }
    let mut text = String::from("# Written by `sluice tune --apply`; see tuning/README.md.\n");
    for (key, value) in values {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

fn write_file(path: &Path, value: &str) -> Result<(), TuneError> {
    std::fs::write(path, value).map_err(|source| TuneError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shell() {
        let c = Change::Sysctl {
            key: "vm.swappiness".into(),
            value: "1".into(),
        };
        assert_eq!(c.command(), "sysctl -w vm.swappiness=1");
        let c = Change::Sysctl {
            key: "net.ipv4.tcp_rmem".into(),
            value: "4096 131072 16777216".into(),
        };
        assert_eq!(
            c.command(),
            "sysctl -w net.ipv4.tcp_rmem=\"4096 131072 16777216\""
        );
        let c = Change::Write {
            path: "/sys/block/vda/queue/scheduler".into(),
            value: "none".into(),
        };
        assert_eq!(c.command(), "echo none > /sys/block/vda/queue/scheduler");
    }

    #[test]
    fn sysctl_file_merges() {
        let merged = merge_sysctl_file(
            "# old\nvm.swappiness = 10\nnet.core.somaxconn=8192\n",
            &[("vm.swappiness".into(), "1".into())],
        );
        assert!(merged.contains("vm.swappiness = 1\n"));
        assert!(merged.contains("net.core.somaxconn = 8192\n"));
        assert!(!merged.contains("= 10"));
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;
    use crate::host::MemlockLimit;

    /// A failed write (here: its directory does not exist, as EACCES would be for non-root) is
    /// reported and printed, and the following changes still run.
    #[test]
    fn a_failed_change_is_reported_and_the_rest_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host {
            proc_root: dir.path().join("proc"),
            sys_root: dir.path().join("sys"),
            etc_root: dir.path().join("etc"),
            data_dir: dir.path().to_path_buf(),
            cores: vec![0],
            shard_cores: vec![0],
            memlock_need_bytes: 0,
            memlock: MemlockLimit {
                soft_bytes: 0,
                hard_bytes: 0,
            },
            privileged: false,
            arch: "x86_64",
        };
        std::fs::create_dir_all(dir.path().join("ok")).expect("mkdir");
        let planned = [
            PlannedChange {
                tuner: "a",
                description: "first",
                change: Change::Write {
                    path: dir.path().join("missing/file"),
                    value: "1".into(),
                },
            },
            PlannedChange {
                tuner: "b",
                description: "second",
                change: Change::Write {
                    path: dir.path().join("ok/file"),
                    value: "2".into(),
                },
            },
        ];
        let mut out = Vec::new();
        let failures = apply(&host, &planned, false, &mut out).expect("print");
        let out = String::from_utf8(out).expect("utf-8");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].tuner, "a");
        assert!(out.contains("# failed: writing "), "{out}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ok/file")).expect("read"),
            "2"
        );
    }
}
