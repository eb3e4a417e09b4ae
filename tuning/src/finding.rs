//! What a check reports: [`Finding`] and its [`Severity`].

use std::fmt;

/// How much a finding matters, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The setting has the wanted value.
    Ok,
    /// Nothing to fix: the setting does not exist here (VM without cpufreq, no block device
    /// under the data directory), cannot be read without root, has no effect on Sluice
    /// (`fs.aio-max-nr`: apply still raises it), or cannot be better on this host (IRQs when
    /// every core runs a shard). The broker does not log these at start.
    Info,
    /// The setting differs from the wanted value; the broker runs but slower or with worse
    /// tail latency. The broker logs these at start.
    Warn,
    /// The broker will not start or will misbehave with this value (for example a memlock hard
    /// limit below what the io_uring rings need, for a non-root user).
    Error,
}

impl Severity {
    /// Lower-case label used in tables and logs.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

/// One checked setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Name of the tuner that produced it ([`crate::Tuner::name`]).
    pub tuner: &'static str,
    /// The setting, as an operator would name it: a sysctl key (`vm.swappiness`), a sysfs path
    /// relative to the root (`block/vda/queue/scheduler`), `irq 38 (eth0)`, `RLIMIT_MEMLOCK`.
    pub setting: String,
    /// The value read from the host, or `-` when it could not be read.
    pub current: String,
    /// The value the tuner wants (a bare value, or `>= N` for lower bounds).
    pub wanted: String,
    /// How much a mismatch matters; [`Severity::Ok`] when `ok`.
    pub severity: Severity,
    /// True when the current value satisfies the wanted one.
    pub ok: bool,
    /// Why the value is wanted, why it could not be checked, or what apply will do.
    pub note: String,
}

impl Finding {
    /// A finding for a setting that has the wanted value.
    pub fn ok(
        tuner: &'static str,
        setting: impl Into<String>,
        current: impl Into<String>,
        wanted: impl Into<String>,
    ) -> Self {
        Finding {
            tuner,
            setting: setting.into(),
            current: current.into(),
            wanted: wanted.into(),
            severity: Severity::Ok,
            ok: true,
            note: String::new(),
        }
    }

    /// A finding for a setting that differs from the wanted value.
    pub fn failed(
        tuner: &'static str,
        setting: impl Into<String>,
        current: impl Into<String>,
        wanted: impl Into<String>,
        severity: Severity,
        note: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            ok: false,
            note: note.into(),
            ..Finding::ok(tuner, setting, current, wanted)
        }
    }

    /// An [`Severity::Info`] finding for a setting that cannot be checked here; `ok` is true
    /// because there is nothing to apply.
    pub fn unavailable(
        tuner: &'static str,
        setting: impl Into<String>,
        wanted: impl Into<String>,
        note: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Info,
            note: note.into(),
            ..Finding::ok(tuner, setting, "-", wanted)
        }
    }

    /// Sets the note (builder style).
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Renders findings as an aligned text table with the columns TUNER, SETTING, CURRENT, WANTED,
/// SEVERITY, NOTE, followed by a one-line summary.
pub fn render_table(findings: &[Finding]) -> String {
    let headers = ["TUNER", "SETTING", "CURRENT", "WANTED", "SEVERITY"];
    let rows: Vec<[String; 5]> = findings
        .iter()
        .map(|f| {
            [
                f.tuner.to_string(),
                f.setting.clone(),
                f.current.clone(),
                f.wanted.clone(),
                f.severity.label().to_string(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5], note: &str| {
        for (cell, w) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(note);
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(headers, "NOTE");
    for (row, f) in rows.iter().zip(findings) {
        line(
            [&row[0], &row[1], &row[2], &row[3], &row[4]],
            f.note.as_str(),
        );
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&format!(
        "{} checks: {} ok, {} info, {} warn, {} error\n",
        findings.len(),
        count(Severity::Ok),
        count(Severity::Info),
        count(Severity::Warn),
        count(Severity::Error)
    ));
    out
}
