//! Releases in S3 (DESIGN.md "Releases in S3", docs/release-format.md): push, pull, verify, switch.

pub mod cli;
pub mod format;
pub mod hooks;
pub mod legacy;
pub mod local;
pub mod pull;
pub mod push;
pub mod store;
pub mod watch;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

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
