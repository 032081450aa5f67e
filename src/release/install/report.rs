//! What an install did: `release pull`'s output (`--json` too) and the reports' detail.

use serde::Serialize;

use super::Fetched;
use crate::release::progress::human_bytes;

/// What an install did (the `--json` of `release pull`, the reports' detail).
#[derive(Debug, Default, Serialize)]
pub struct Pulled {
    pub release: String,
    pub previous: Option<String>,
    /// Already current: nothing fetched, nothing changed.
    pub already_current: bool,
    pub files: u64,
    pub bundle_bytes: u64,
    pub fetched_objects: usize,
    pub fetched_bytes: u64,
    pub reused_files: usize,
    pub pruned: Vec<String>,
    pub hooks_run: usize,
    /// How long validation took (milliseconds), when the release was validated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated_ms: Option<u64>,
}

impl Pulled {
    pub fn human(&self, link: &str) -> String {
        if self.already_current {
            return format!(
                "already on release {}; nothing fetched, nothing changed\n",
                self.release
            );
        }
        let mut text = format!(
            "switched {link} to release {} (was {}): {} verified; ",
            self.release,
            self.previous.as_deref().unwrap_or("none"),
            crate::output::count(self.files, "file", "files")
        );
        if self.bundle_bytes > 0 {
            text += &format!("fetched the bundle ({})", human_bytes(self.bundle_bytes));
        } else {
            text += &format!(
                "fetched {} objects ({}), reused {} local files",
                self.fetched_objects,
                human_bytes(self.fetched_bytes),
                self.reused_files
            );
        }
        text.push('\n');
        if let Some(ms) = self.validated_ms {
            text += &format!("validated in {:.1} s\n", ms as f64 / 1000.0);
        }
        if self.hooks_run > 0 {
            text += &format!(
                "{} ran\n",
                crate::output::count(self.hooks_run as u64, "hook", "hooks")
            );
        }
        if !self.pruned.is_empty() {
            text += &format!("removed old releases: {}\n", self.pruned.join(", "));
        }
        text
    }

    /// One line for a report: what staging took.
    pub fn staged_detail(&self) -> String {
        format!(
            "{} files verified; {} objects fetched, {} files reused{}",
            self.files,
            self.fetched_objects,
            self.reused_files,
            if self.bundle_bytes > 0 {
                ", bundle fetched"
            } else {
                ""
            }
        )
    }

    pub(super) fn count(&mut self, fetched: Fetched) {
        self.bundle_bytes = fetched.bundle_bytes;
        self.fetched_objects = fetched.objects;
        self.fetched_bytes = fetched.object_bytes;
        self.reused_files = fetched.reused;
    }
}
