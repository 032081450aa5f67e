//! Releases in S3 (DESIGN.md "Releases in S3", docs/release-format.md): push, pull, verify, switch.

pub mod commands;
pub mod format;
pub mod hooks;
pub mod legacy;
pub mod listing;
pub mod local;
pub mod pull;
pub mod push;
pub mod store;
pub mod watch;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::context::Instance;
use crate::status::{self, Reported};
use format::SourceUrl;
use local::{resolve_owner, Layout};
use pull::{Pulled, Settings};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Bad configuration or arguments (exit 2), found before anything changed.
    #[error("{0}")]
    Usage(String),
    /// A step failed (exit 1); the sentence says what, why and what to do.
    #[error("{0}")]
    Failed(String),
}

impl ReleaseError {
    pub fn is_usage(&self) -> bool {
        matches!(self, ReleaseError::Usage(_))
    }
}

/// An I/O failure on this machine as one sentence; a full disk says so plainly.
pub fn io_failed(action: &str, path: &std::path::Path, err: &std::io::Error) -> ReleaseError {
    if err.raw_os_error() == Some(nix::libc::ENOSPC) {
        ReleaseError::Failed(format!(
            "no space left on the device while {action} {}: free some space (or lower [release] keep) and run `embark release pull` again",
            path.display()
        ))
    } else {
        ReleaseError::Failed(format!("cannot {action} {}: {err}", path.display()))
    }
}

/// The source from the group's `embark:release` tag (already applied) or the file.
pub fn source_of(config: &Config) -> Result<SourceUrl, ReleaseError> {
    let text = config.release.source.as_deref().ok_or_else(|| {
        ReleaseError::Usage(
            "no release source configured: set the group's embark:release tag or [release] source"
                .into(),
        )
    })?;
    SourceUrl::parse(text).map_err(ReleaseError::Usage)
}

pub fn layout(config: &Config) -> Layout {
    Layout {
        root: config.release.root.clone(),
        link: config.release.link.clone(),
    }
}

/// Everything a pull needs from the configuration, checked before anything changes.
pub fn settings(config: &Config) -> Result<Settings, ReleaseError> {
    let owner = config
        .release
        .owner
        .as_deref()
        .map(resolve_owner)
        .transpose()?;
    Ok(Settings {
        layout: layout(config),
        format: config.release.format,
        keep: config.release.keep as usize,
        owner,
        hooks: config.release.hooks.clone(),
        role: config.role.clone(),
    })
}

/// What the release step did, for the report and stdout.
#[derive(Debug)]
pub enum StepOutcome {
    NotConfigured,
    Planned(String),
    Pulled { pulled: Pulled, link: String },
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        match self {
            StepOutcome::NotConfigured => status::Outcome::Skipped,
            StepOutcome::Planned(_) => status::Outcome::Planned,
            StepOutcome::Pulled { .. } => status::Outcome::Ok,
        }
    }

    fn detail(&self) -> String {
        match self {
            StepOutcome::NotConfigured => {
                "no release source configured (embark:release tag or [release] source)".to_string()
            }
            StepOutcome::Planned(text) => text.clone(),
            StepOutcome::Pulled { pulled, link } => pulled.human(link),
        }
    }
}

/// The step: fetch, verify and switch to the source's current release (or plan it).
pub async fn step(
    instance: &Instance,
    http: &reqwest::Client,
    plan: bool,
) -> Result<StepOutcome, ReleaseError> {
    let config = &instance.config;
    if config.release.source.is_none() {
        return Ok(StepOutcome::NotConfigured);
    }
    let store = Store::new(&instance.aws, source_of(config)?);
    let settings = settings(config)?;
    let mut pulled = pull::pull(&store, &settings, http, plan).await?;
    Ok(match pulled.plan.take() {
        Some(text) => StepOutcome::Planned(text),
        None => StepOutcome::Pulled {
            pulled,
            link: settings.layout.link,
        },
    })
}

/// Progress of a long transfer: a bar on a terminal, a plain line every few seconds otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    total: u64,
    done: u64,
    last: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        });
        Progress {
            bar,
            what,
            total,
            done: 0,
            last: Instant::now(),
        }
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.last.elapsed() >= PLAIN_EVERY => {
                self.last = Instant::now();
                tracing::info!("{}: {} of {} bytes", self.what, self.done, self.total);
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Sizes for people: 1.5 MiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
