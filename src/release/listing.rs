//! The releases at a source, newest first, marking the current one and those present on this machine.

use serde::Serialize;

use super::error::ReleaseError;
use super::layout::Layout;
use super::progress::human_bytes;
use super::store::Store;

#[derive(Debug, Serialize)]
pub struct Listed {
    pub release: String,
    pub created: String,
    pub who: String,
    pub message: String,
    pub files: u64,
    pub bytes: u64,
    pub current: bool,
    pub local: bool,
    /// Recorded as failed at the source: on which instance, why, when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<super::failure::FailureRecord>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub source: String,
    pub current: Option<String>,
    pub releases: Vec<Listed>,
}

impl Listing {
    pub fn human(&self) -> String {
        if self.releases.is_empty() {
            return format!("no releases at {}\n", self.source);
        }
        let mut text = format!("releases at {} (* current, L present here)\n", self.source);
        for r in &self.releases {
            text += &format!(
                "{}{} {}  {}  {:>7} files {:>10}  {}  {}\n",
                if r.current { '*' } else { ' ' },
                if r.local { 'L' } else { ' ' },
                r.release,
                r.created,
                r.files,
                human_bytes(r.bytes),
                r.who,
                r.message
            );
            if let Some(f) = &r.failed {
                text += &format!(
                    "     FAILED on {} at {}: {}{}\n",
                    f.instance,
                    f.time,
                    f.reason,
                    f.rolled_back_to
                        .as_deref()
                        .map(|to| format!(" (rolled back to {to})"))
                        .unwrap_or_default()
                );
            }
        }
        text
    }
}

pub async fn list(store: &Store, layout: &Layout) -> Result<Listing, ReleaseError> {
    let current = store.read_pointer().await?.map(|(p, _)| p.release);
    let local = layout.local_releases();
    let mut releases = remote_releases(store).await?;
    let mut failed = super::failure::all(store).await?;
    for r in &mut releases {
        r.current = current.as_deref() == Some(r.release.as_str());
        r.local = local.contains(&r.release);
        r.failed = failed.remove(&r.release);
    }
    // Newest first; ids sort by the second, `created` by the millisecond.
    releases.sort_by(|a, b| (&b.created, &b.release).cmp(&(&a.created, &a.release)));
    Ok(Listing {
        source: store.source.to_string(),
        current,
        releases,
    })
}

/// Every release with a manifest at the source (`current` and `local` left false).
pub async fn remote_releases(store: &Store) -> Result<Vec<Listed>, ReleaseError> {
    use futures_util::stream::{self, StreamExt};
    let dirs = store.list_dirs(&store.source.key("releases/")).await?;
    let ids: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.trim_end_matches('/').rsplit('/').next())
        .filter(|id| super::format::check_id(id).is_ok())
        .map(str::to_string)
        .collect();
    let manifests: Vec<Result<Option<Listed>, ReleaseError>> = stream::iter(ids)
        .map(|id| async move {
            let Some(m) = super::manifest::summary(store, &id).await? else {
                return Ok(None); // an interrupted push: no manifest, never current
            };
            Ok(Some(Listed {
                current: false,
                local: false,
                failed: None,
                release: id,
                created: m.created,
                who: m.who,
                message: m.message,
                files: m.files,
                bytes: m.bytes,
            }))
        })
        .buffered(8)
        .collect()
        .await;
    let mut releases = Vec::new();
    for m in manifests {
        if let Some(listed) = m? {
            releases.push(listed);
        }
    }
    Ok(releases)
}
