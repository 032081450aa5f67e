//! The on-disk layout of releases on this machine: `<root>/releases/<id>/`, the `current` link, embark's own bookkeeping in
//! `<root>/.embark/` (lock, manifests of local releases, the previous release), staging, switch, pruning.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::error::{io_failed, ReleaseError};
use super::format::{check_id, Manifest, Node};
use crate::fsutil::remove_tree;

pub const PARTIAL_PREFIX: &str = ".partial-";
/// What an interrupted pull fetched, kept for the next pull of the same release.
pub const SALVAGE_PREFIX: &str = ".salvage-";

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub link: String,
}

/// `<root>/.embark/state.json`: what the link points at, the release before it, and a switch whose
/// hooks have not run yet. The switch is one recoverable transaction: `hooks_due` is written before
/// the link moves and cleared after the hooks ran, so a crash in between re-runs them next time.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub current: Option<String>,
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_due: Option<String>,
    /// A rollback under way: written (with the release recorded as failed) before the link moves
    /// back, cleared once the previous release's hooks and the failure hooks ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
}

/// Going back from the release `from`, which failed for `reason`, to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// A release that failed on this machine (`.embark/failed.json`): not installed again unless asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub reason: String,
    pub time: String,
}

/// The local lock: one pull (or deploy) at a time on this machine; released when the process dies.
pub struct Lock {
    _lock: Flock<fs::File>,
}

impl Layout {
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }
    pub fn partial(&self, id: &str) -> PathBuf {
        self.releases().join(format!("{PARTIAL_PREFIX}{id}"))
    }
    pub fn link_path(&self) -> PathBuf {
        self.root.join(&self.link)
    }
    fn meta(&self) -> PathBuf {
        self.root.join(".embark")
    }
    pub fn manifest_copy(&self, id: &str) -> PathBuf {
        self.meta().join("manifests").join(format!("{id}.json"))
    }
    fn failed_path(&self) -> PathBuf {
        self.meta().join("failed.json")
    }
    fn state_path(&self) -> PathBuf {
        self.meta().join("state.json")
    }

    /// The release the link points at (`releases/<id>`), if any.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.link_path()).ok()?;
        let id = target.strip_prefix("releases").ok()?.to_str()?.to_string();
        check_id(&id).ok()?;
        Some(id)
    }

    pub fn state(&self) -> State {
        fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// [`Layout::prepare`] on a blocking thread: waiting for another pull's lock must not hold up
    /// the async runtime (heartbeats, the agent's signal handling).
    pub async fn lock(&self) -> Result<Lock, ReleaseError> {
        let layout = self.clone();
        tokio::task::spawn_blocking(move || layout.prepare())
            .await
            .map_err(|e| ReleaseError::Failed(format!("the lock task stopped: {e}")))?
    }

    /// Create the directories and take the lock (waiting for another pull to finish).
    pub fn prepare(&self) -> Result<Lock, ReleaseError> {
        for dir in [
            self.root.clone(),
            self.releases(),
            self.meta().join("manifests"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io_failed("creating", &dir, &e))?;
        }
        let path = self.meta().join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_failed("opening", &path, &e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, _)) => {
                tracing::info!(
                    "another embark is updating {}; waiting for it",
                    self.root.display()
                );
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| {
                    ReleaseError::Failed(format!("cannot lock {}: {e}", path.display()))
                })?
            }
        };
        self.clean_leftovers();
        Ok(Lock { _lock: lock })
    }

    pub fn salvage(&self, id: &str) -> PathBuf {
        self.releases().join(format!("{SALVAGE_PREFIX}{id}"))
    }

    /// Where each content of `nodes` may be in what an interrupted pull of `id` left (a file of the
    /// size the manifest promises; its bytes are checked again as it is copied).
    pub fn salvaged(&self, id: &str, nodes: &[Node]) -> HashMap<String, PathBuf> {
        let base = self.salvage(id);
        let mut found = HashMap::new();
        for node in nodes {
            if let Node::File {
                path, sha256, size, ..
            } = node
            {
                let candidate = base.join(path);
                let fits = fs::symlink_metadata(&candidate)
                    .is_ok_and(|m| m.file_type().is_file() && m.len() == *size);
                if fits {
                    found.entry(sha256.clone()).or_insert(candidate);
                }
            }
        }
        found
    }

    /// What interrupted pulls left, once a pull is done with it.
    pub fn drop_salvage(&self) {
        let Ok(entries) = fs::read_dir(self.releases()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(SALVAGE_PREFIX)
            {
                let _ = remove_tree(&entry.path());
            }
        }
    }

    /// Partial directories and temporary links an interrupted pull left behind. A partial release
    /// is kept as salvage (`.salvage-<id>`): the next pull of that release reuses what it holds.
    fn clean_leftovers(&self) {
        if let Ok(entries) = fs::read_dir(self.releases()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix(PARTIAL_PREFIX) else {
                    continue;
                };
                if check_id(id).is_ok() {
                    let salvage = self.salvage(id);
                    let _ = remove_tree(&salvage);
                    if fs::rename(entry.path(), &salvage).is_ok() {
                        tracing::info!(
                            "keeping what an interrupted pull of release {id} fetched, for this pull"
                        );
                    }
                }
            }
        }
        let temp_link = format!(".{}.tmp-", self.link);
        for (dir, prefix) in [
            (self.releases(), PARTIAL_PREFIX),
            (self.root.clone(), temp_link.as_str()),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    tracing::info!(
                        "removing {} left by an interrupted pull",
                        entry.path().display()
                    );
                    let _ = remove_tree(&entry.path());
                }
            }
        }
    }

    /// Release ids present here (complete: renamed into place, with their manifest copy), oldest
    /// first (by creation time to the millisecond, then id).
    pub fn local_releases(&self) -> Vec<String> {
        let mut ids: Vec<(String, String)> = fs::read_dir(self.releases())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| check_id(id).is_ok() && self.manifest_copy(id).is_file())
            .map(|id| {
                let created = self
                    .read_manifest_copy(&id)
                    .map(|m| m.created)
                    .unwrap_or_default();
                (created, id)
            })
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub fn read_manifest_copy(&self, id: &str) -> Option<Manifest> {
        let bytes = fs::read(self.manifest_copy(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Where each content hash can be found in a local release (for incremental pulls).
    /// Paths for which `skip` is true are left out (shared paths: not the release's own bytes).
    pub fn local_objects(&self, skip: impl Fn(&str) -> bool) -> HashMap<String, PathBuf> {
        let mut found = HashMap::new();
        for id in self.local_releases() {
            let Some(nodes) = self.read_manifest_copy(&id).and_then(|m| m.validate().ok()) else {
                continue;
            };
            let base = self.release(&id);
            for node in nodes {
                if let Node::File { path, sha256, .. } = node {
                    if skip(&path) {
                        continue;
                    }
                    found.entry(sha256).or_insert_with(|| base.join(path));
                }
            }
        }
        found
    }

    /// Keep the manifest, then move the verified, synced partial directory into place.
    pub fn commit(&self, id: &str, manifest_bytes: &[u8]) -> Result<(), ReleaseError> {
        let copy = self.manifest_copy(id);
        write_synced(&copy, manifest_bytes)?;
        let partial = self.partial(id);
        let target = self.release(id);
        if target.exists() {
            remove_tree(&target).map_err(|e| io_failed("removing", &target, &e))?;
        }
        fs::rename(&partial, &target).map_err(|e| io_failed("moving into place", &target, &e))?;
        sync_dir(&self.releases())
    }

    /// Point the link at `id` by renaming a fresh symlink over it; returns the release it left.
    /// Before the link moves, the state records that `id`'s hooks are due; [`Layout::hooks_ran`]
    /// clears that. After the link moved, a failure says the release is live.
    pub fn switch(&self, id: &str) -> Result<Option<String>, ReleaseError> {
        let previous = self.current();
        let mut state = self.state();
        state.current = previous.clone();
        state.hooks_due = Some(id.to_string());
        self.write_state(&state)?;
        let temp = self
            .root
            .join(format!(".{}.tmp-{}", self.link, std::process::id()));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &temp)
            .map_err(|e| io_failed("creating the link", &temp, &e))?;
        let link = self.link_path();
        if let Err(err) = fs::rename(&temp, &link) {
            let _ = fs::remove_file(&temp);
            return Err(io_failed("switching", &link, &err));
        }
        state.current = Some(id.to_string());
        state.previous = previous.clone().filter(|p| p != id);
        sync_dir(&self.root)
            .and_then(|()| self.write_state(&state))
            .map_err(|err| live_anyway(&self.link, id, err))?;
        Ok(previous)
    }

    /// Releases that failed here, by id.
    pub fn failures(&self) -> BTreeMap<String, Failed> {
        fs::read(self.failed_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// `id` is not to be installed again (unless the operator asks).
    pub fn record_failed(&self, id: &str, reason: &str) -> Result<(), ReleaseError> {
        let mut failures = self.failures();
        failures.insert(
            id.to_string(),
            Failed {
                reason: reason.to_string(),
                time: crate::status::now(),
            },
        );
        self.write_failures(&failures)
    }

    /// The operator retries `id` (`release pull --retry-failed`).
    pub fn forget_failed(&self, id: &str) -> Result<(), ReleaseError> {
        let mut failures = self.failures();
        if failures.remove(id).is_some() {
            self.write_failures(&failures)?;
        }
        Ok(())
    }

    fn write_failures(&self, failures: &BTreeMap<String, Failed>) -> Result<(), ReleaseError> {
        let bytes = serde_json::to_vec_pretty(failures)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the failures: {e}")))?;
        write_synced(&self.failed_path(), &bytes)
    }

    /// Before the link moves back: the release is recorded as failed and the rollback as under
    /// way, so that a crash at any later point is completed by the next run.
    pub fn begin_rollback(&self, rollback: &Rollback) -> Result<(), ReleaseError> {
        self.record_failed(&rollback.from, &rollback.reason)?;
        let mut state = self.state();
        state.rollback = Some(rollback.clone());
        self.write_state(&state)
    }

    /// The rollback under way, if a run was interrupted during one.
    pub fn rollback(&self) -> Option<Rollback> {
        self.state().rollback
    }

    pub fn end_rollback(&self) -> Result<(), ReleaseError> {
        let mut state = self.state();
        if state.rollback.take().is_some() {
            self.write_state(&state)?;
        }
        Ok(())
    }

    /// The hooks of `id` ran (or failed, which is reported): nothing is due any more.
    pub fn hooks_ran(&self, id: &str) -> Result<(), ReleaseError> {
        let mut state = self.state();
        if state.hooks_due.as_deref() == Some(id) {
            state.hooks_due = None;
            self.write_state(&state)
                .map_err(|err| live_anyway(&self.link, id, err))?;
        }
        Ok(())
    }

    /// What an earlier switch left undone: hooks due for the release that is current now, and a
    /// state that does not name the link's release (a write that failed after the link moved).
    pub fn repair(&self) -> Result<Option<String>, ReleaseError> {
        let Some(current) = self.current() else {
            return Ok(None);
        };
        let mut state = self.state();
        if state.current.as_deref() != Some(current.as_str()) {
            tracing::warn!(
                "{} points at {current} but the state says {}: repairing the state (an earlier switch was interrupted)",
                self.link,
                state.current.as_deref().unwrap_or("nothing")
            );
            state.previous = state.current.take().filter(|p| *p != current);
            state.current = Some(current.clone());
            self.write_state(&state)?;
        }
        Ok(state.hooks_due.filter(|due| *due == current))
    }

    fn write_state(&self, state: &State) -> Result<(), ReleaseError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the state: {e}")))?;
        write_synced(&self.state_path(), &bytes)
    }

    /// Whether the tree under `releases/<id>` is what `nodes` describe: every entry there, of its
    /// kind, size, mode and link target (contents are checked when they are fetched or copied).
    pub fn matches(&self, id: &str, nodes: &[Node]) -> Result<(), String> {
        let base = self.release(id);
        for node in nodes {
            let path = base.join(node.path());
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| format!("'{}' is missing ({e})", node.path()))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ok = match node {
                Node::Dir { .. } => meta.is_dir(),
                Node::File { size, mode: m, .. } => {
                    meta.is_file() && meta.len() == *size && mode == *m
                }
                Node::Symlink { target, .. } => {
                    meta.file_type().is_symlink()
                        && fs::read_link(&path).ok().as_deref() == Some(Path::new(target))
                }
            };
            if !ok {
                return Err(format!("'{}' is not what the manifest says", node.path()));
            }
        }
        Ok(())
    }

    /// Remove all but the newest `keep`, never the current or the previous release.
    pub fn prune(&self, keep: usize) -> Vec<String> {
        let state = self.state();
        let current = self.current();
        let mut ids = self.local_releases();
        ids.reverse();
        let mut removed = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            let protected = Some(id) == current.as_ref() || Some(id) == state.previous.as_ref();
            if index < keep || protected {
                continue;
            }
            // Unusable first: renamed out of `releases/<id>` (a crash leaves a partial directory that
            // the next pull removes), then its manifest copy, then the files.
            let doomed = self.partial(id);
            let result = fs::rename(self.release(id), &doomed)
                .and_then(|()| fs::remove_file(self.manifest_copy(id)))
                .and_then(|()| remove_tree(&doomed));
            match result {
                Ok(()) => removed.push(id.clone()),
                Err(err) => tracing::warn!("cannot remove the old release {id}: {err}"),
            }
        }
        removed
    }
}

/// A failure after the link moved: the release is live, and the next run repairs the bookkeeping.
fn live_anyway(link: &str, id: &str, err: ReleaseError) -> ReleaseError {
    ReleaseError::Failed(format!(
        "{link} now points at release {id} (it is live), but recording the switch failed: {err}; the next `embark release pull` repairs the record and runs the hooks that are due"
    ))
}

/// Atomically (temporary file, fsync, rename, directory fsync).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    crate::fsutil::atomic_write(path, bytes, 0o644).map_err(|e| io_failed("writing", path, &e))
}

pub fn sync_dir(path: &Path) -> Result<(), ReleaseError> {
    crate::fsutil::sync_dir(path).map_err(|e| io_failed("syncing", path, &e))
}

/// `[release] owner` as uid and gid (a configuration error when the user or group is unknown).
pub fn resolve_owner(owner: &str) -> Result<(u32, u32), ReleaseError> {
    crate::command::resolve_owner(owner)
        .map_err(|why| ReleaseError::Usage(format!("[release] owner names {why}")))
}

/// Give every entry of the tree to `uid:gid` (symlinks themselves, not their targets).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), ReleaseError> {
    use nix::unistd::{fchownat, Gid, Uid};
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ReleaseError::Failed(format!("cannot chown {}: {e}", path.display())))?;
    let meta = fs::symlink_metadata(path).map_err(|e| io_failed("reading", path, &e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| io_failed("reading", path, &e))? {
            let entry = entry.map_err(|e| io_failed("reading", path, &e))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_or_name_what_is_unknown() {
        assert_eq!(resolve_owner("1000:1001").unwrap(), (1000, 1001));
        assert!(resolve_owner("no-such-user-here")
            .unwrap_err()
            .to_string()
            .contains("[release] owner names the user 'no-such-user-here'"));
        assert!(resolve_owner("no-such-user-here").unwrap_err().is_usage());
    }

    #[test]
    fn switch_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().to_path_buf(),
            link: "current".into(),
        };
        let _lock = layout.prepare().unwrap();
        let ids: Vec<String> = (0..5)
            .map(|i| format!("2026010{i}T000000Z-00000{i}"))
            .collect();
        for id in &ids {
            fs::create_dir_all(layout.partial(id)).unwrap();
            layout.commit(id, b"{}").unwrap();
            layout.switch(id).unwrap();
        }
        assert_eq!(layout.current().as_deref(), Some(ids[4].as_str()));
        assert_eq!(layout.state().previous.as_deref(), Some(ids[3].as_str()));
        // Go back to an old one: it and the one just left are protected.
        layout.switch(&ids[0]).unwrap();
        let removed = layout.prune(2);
        assert_eq!(removed, vec![ids[2].clone(), ids[1].clone()]);
        assert_eq!(
            layout.local_releases(),
            vec![ids[0].clone(), ids[3].clone(), ids[4].clone()]
        );
    }
}
