//! The status file: the last boot's report (each step's outcome, duration and detail), and
//! `embark status`, shown like `cloud-init status --long`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "status.json";
/// The deploy agent's last deploy (`release watch`).
pub const DEPLOY_FILE: &str = "deploy.json";
/// The last drain (`embark drain`).
pub const DRAIN_FILE: &str = "drain.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Skipped,
    Planned,
    NotRun,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Planned => "planned",
            Outcome::NotRun => "not run",
        }
    }
}

/// What a step reports about itself: its outcome and a line (or a few) saying what it did. Each step
/// module's typed outcome implements this; the report renders it.
pub trait Reported {
    fn status(&self) -> Outcome;
    fn detail(&self) -> String;
    /// The boot's lifecycle action is done with (only the health step completes it).
    fn lifecycle_completed(&self) -> bool {
        false
    }
}

/// Where a boot (or deploy) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Done,
    /// A deploy whose barrier timed out with `on_barrier_timeout = "hold"`.
    Held,
    Error,
}

impl RunStatus {
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Held => "held",
            RunStatus::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    pub status: RunStatus,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub started: String,
    pub finished: Option<String>,
    pub duration_ms: u64,
    pub steps: Vec<Step>,
    pub error: Option<String>,
    /// The lifecycle action was completed (CONTINUE) by this boot.
    #[serde(default)]
    pub lifecycle_completed: bool,
    /// This boot ran as the instance went into its warm pool (`Warmed:*`): its lifecycle action was
    /// the warm pool's, and the boot out of the pool has its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

/// The time now, as the reports write it (RFC 3339, milliseconds).
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Report {
    /// A run that starts now: no steps recorded yet, nothing completed.
    pub fn running(command: String, instance_id: Option<String>, group: Option<String>) -> Report {
        Report {
            command,
            status: RunStatus::Running,
            instance_id,
            group,
            started: now(),
            finished: None,
            duration_ms: 0,
            steps: Vec::new(),
            error: None,
            lifecycle_completed: false,
            warm: false,
        }
    }

    pub fn read(state_dir: &Path) -> Result<Option<Report>, String> {
        Report::read_from(&path(state_dir))
    }

    pub fn read_deploy(state_dir: &Path) -> Result<Option<Report>, String> {
        Report::read_from(&state_dir.join(DEPLOY_FILE))
    }

    pub fn read_drain(state_dir: &Path) -> Result<Option<Report>, String> {
        Report::read_from(&state_dir.join(DRAIN_FILE))
    }

    fn read_from(file: &Path) -> Result<Option<Report>, String> {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("the status file {} is not valid ({e})", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read the status file {}: {e}",
                file.display()
            )),
        }
    }

    /// Atomically (write, fsync, rename): a reader never sees half a report.
    pub fn write(&self, state_dir: &Path) -> Result<(), String> {
        self.write_as(state_dir, FILE)
    }

    pub fn write_as(&self, state_dir: &Path, name: &str) -> Result<(), String> {
        let file = state_dir.join(name);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(state_dir)
            .and_then(|()| crate::fsutil::atomic_write(&file, &bytes, 0o644))
            .map_err(|e| format!("cannot write the status file {}: {e}", file.display()))
    }

    pub fn human(&self) -> String {
        let mut text = format!("status: {}\n", self.status.word());
        text += &format!("command: embark {}\n", self.command);
        if let Some(id) = &self.instance_id {
            text += &format!(
                "instance: {id}{}\n",
                self.group
                    .as_ref()
                    .map(|g| format!(" (group {g})"))
                    .unwrap_or_default()
            );
        }
        text += &format!("started: {}\n", self.started);
        if let Some(finished) = &self.finished {
            text += &format!("finished: {finished} ({})\n", seconds(self.duration_ms));
        }
        text += "steps:\n";
        for step in &self.steps {
            let duration = if matches!(step.outcome, Outcome::NotRun) {
                "-".to_string()
            } else {
                seconds(step.duration_ms)
            };
            let detail = step
                .detail
                .trim()
                .replace('\n', "\n                                ");
            text += &format!(
                "  {:<9} {:<8} {:>8}  {}\n",
                step.name,
                step.outcome.word(),
                duration,
                detail
            );
        }
        if let Some(error) = &self.error {
            text += &format!("error: {error}\n");
        }
        text
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// `embark status`: the last boot's report and, where the deploy agent runs, its last deploy. An error
/// when the last boot failed (exit 1), after printing the report.
pub fn show(state_dir: &Path, json: bool) -> Result<(), String> {
    let boot = Report::read(state_dir)?;
    let deploy = Report::read_deploy(state_dir)?;
    let drain = Report::read_drain(state_dir)?;
    if json {
        let mut value = match &boot {
            Some(report) => serde_json::to_value(report).map_err(|e| e.to_string())?,
            None => serde_json::json!({"status": "not run"}),
        };
        value["last_deploy"] = serde_json::to_value(&deploy).map_err(|e| e.to_string())?;
        value["last_drain"] = serde_json::to_value(&drain).map_err(|e| e.to_string())?;
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        crate::output::say_line(&text);
    } else {
        match &boot {
            Some(report) => crate::output::say(&report.human()),
            None => crate::output::say_line(&format!(
                "status: not run (no report in {})",
                state_dir.display()
            )),
        }
        for (title, report) in [("last deploy", &deploy), ("last drain", &drain)] {
            if let Some(report) = report {
                let mut text = format!("\n{title}:\n");
                for line in report.human().lines() {
                    text += &format!("  {line}\n");
                }
                crate::output::say(&text);
            }
        }
    }
    match boot {
        Some(report) if report.status == RunStatus::Error => {
            Err("the last boot failed (its report is above)".into())
        }
        _ => Ok(()),
    }
}
