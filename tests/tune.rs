//! `sluice tune` against this real host, read-only: `--check` as root and as an unprivileged
//! user, and `--apply --dry-run`, which must print commands and change nothing. No test here
//! runs `--apply` without `--dry-run`: the tuners' writes are tested on a fake tree in the
//! `sluice-tune` crate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest one `sluice tune` run may take (it only reads /proc and /sys).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Drops every privilege: uid/gid nobody, no supplementary groups.
const SETPRIV: &str = "/usr/bin/setpriv";

/// What one run printed and how it ended.
struct Run {
    /// Exit code; None when killed by a signal (or by the timeout).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion or kills it after [`RUN_TIMEOUT`].
fn run(mut command: Command) -> Run {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    eprintln!(
        "$ {described}\n{}{}(exit {:?})",
        run.stdout, run.stderr, run.code
    );
    run
}

fn sluice(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args);
    command
}

/// A world-readable temporary directory to use as (the parent of) the data directory.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn assert_reports_every_tuner(stdout: &str) {
    for tuner in sluice_tune::tuners::all() {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(tuner.name())),
            "no row for tuner {}:\n{stdout}",
            tuner.name()
        );
    }
    assert!(stdout.contains(" checks: "), "no summary line:\n{stdout}");
}

#[test]
fn check_reports_every_tuner() {
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let run = run(sluice(&[
        "tune",
        "--check",
        "--shards",
        "1",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ]));
    // 0: nothing at error level; 1: some finding at error level (documented). Anything else
    // (a panic is 101, a signal is None) is a failure.
    assert!(matches!(run.code, Some(0 | 1)), "exit {:?}", run.code);
    assert_reports_every_tuner(&run.stdout);
    if run.code == Some(1) {
        assert!(
            run.stdout.contains(" error "),
            "exit 1 without an error row"
        );
    }
    assert!(
        run.stdout.starts_with("TUNER"),
        "table header:\n{}",
        run.stdout
    );
}

/// Whether `nobody` can run `path`: every ancestor searchable and the file readable and
/// executable by others.
fn others_can_run(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.permissions().mode() & 0o005 != 0o005 {
        return false;
    }
    path.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The binary, or a 0755 copy of it in `dir` when `nobody` could not run it in place.
fn binary_for_nobody(dir: &Path) -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    if others_can_run(&binary) {
        return binary;
    }
    let copy = dir.join("sluice");
    std::fs::copy(&binary, &copy).expect("copy binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// As `nobody`, reads that need root fail: they must be reported, not abort the check, and the
/// dry run must still print its plan.
#[test]
fn check_and_dry_run_as_nobody_report_instead_of_failing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new(SETPRIV).exists() {
        eprintln!("skipped: needs root and {SETPRIV} to switch to nobody");
        return;
    }
    let dir = open_tempdir();
    let binary = binary_for_nobody(dir.path());
    let data = dir.path().join("data");
    let as_nobody = |args: &[&str]| {
        let mut command = Command::new(SETPRIV);
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&binary)
            .args(args)
            .args(["--shards", "1", "--data-dir"])
            .arg(&data)
            // Whatever the caller's cwd, nobody must be able to resolve it.
            .current_dir("/");
        run(command)
    };

    let check = as_nobody(&["tune", "--check"]);
    assert!(matches!(check.code, Some(0 | 1)), "exit {:?}", check.code);
    assert_reports_every_tuner(&check.stdout);
    assert!(!check.stderr.contains("panicked"), "{}", check.stderr);

    let dry_run = as_nobody(&["tune", "--apply", "--dry-run"]);
    assert_eq!(
        dry_run.code,
        Some(0),
        "a dry run changes nothing, so cannot fail"
    );
    assert!(
        dry_run
            .stdout
            .starts_with("# sluice tune --apply --dry-run")
    );
    assert!(!dry_run.stdout.contains("# failed:"), "{}", dry_run.stdout);
}

/// Host values the dry run must leave alone.
fn snapshot() -> Vec<(String, Option<String>)> {
    let mut paths: Vec<String> = [
        "/proc/sys/vm/swappiness",
        "/proc/sys/fs/aio-max-nr",
        "/proc/sys/net/core/rmem_max",
        "/proc/sys/net/core/somaxconn",
        "/proc/sys/net/ipv4/tcp_wmem",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/etc/sysctl.d/90-sluice.conf",
        "/etc/security/limits.d/90-sluice.conf",
    ]
    .map(String::from)
    .to_vec();
    if let Ok(entries) = std::fs::read_dir("/proc/irq") {
        for e in entries.filter_map(|e| e.ok()) {
            paths.push(format!("{}/smp_affinity_list", e.path().display()));
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let value = std::fs::read_to_string(&p).ok();
            (p, value)
        })
        .collect()
}

#[test]
fn dry_run_prints_commands_and_changes_nothing() {
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let before = snapshot();
    let run = run(sluice(&[
        "tune",
        "--apply",
        "--dry-run",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ]));
    let after = snapshot();
    assert_eq!(run.code, Some(0), "exit {:?}", run.code);
    assert_eq!(before, after, "the dry run changed the host");

    let out = &run.stdout;
    assert!(out.starts_with("# sluice tune --apply --dry-run: nothing below was run"));
    let commands: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("sysctl -w ") || l.starts_with("echo "))
        .collect();
    assert!(
        !commands.is_empty() || out.contains("# nothing to change"),
        "neither commands nor 'nothing to change':\n{out}"
    );
    // This host's swappiness decides whether its command must appear.
    let swappiness: u64 = std::fs::read_to_string("/proc/sys/vm/swappiness")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if swappiness > 1 {
        assert!(commands.contains(&"sysctl -w vm.swappiness=1"), "{out}");
        assert!(
            out.contains("cat > /etc/sysctl.d/90-sluice.conf <<'EOF'"),
            "{out}"
        );
    }
    for line in out.lines().filter(|l| l.starts_with("echo ")) {
        let (_, target) = line.split_once(" > ").expect("echo VALUE > PATH");
        assert!(
            target.starts_with("/proc/") || target.starts_with("/sys/"),
            "{line}"
        );
    }
}
