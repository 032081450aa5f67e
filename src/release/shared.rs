//! Shared paths (`[release] shared_dirs`, `shared_files`): what must survive every deploy and
//! rollback (uploads, `storage/`, `.env`) lives once under `shared_root`, and each release's copy of
//! it is replaced by a link there while the release is prepared, before it goes live. A shared path
//! that does not exist yet is seeded from the first release that ships it (else created empty).
//!
//! Nothing of a release is followed: a path of the release that passes through one of its own links
//! is refused, and whatever the release ships where a shared path goes (a file, a directory, a link)
//! is removed as it is, never written through.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::{io_failed, ReleaseError};
use super::format::Node;
use super::layout::chown_tree;
use crate::fsutil::remove_tree;

/// The configured shared paths and where they live.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub root: PathBuf,
    pub dirs: Vec<String>,
    pub files: Vec<String>,
}

impl Shared {
    fn all(&self) -> impl Iterator<Item = (&String, bool)> {
        self.dirs
            .iter()
            .map(|d| (d, true))
            .chain(self.files.iter().map(|f| (f, false)))
    }

    /// Whether `path` (of a release) is a shared path or lies below one: its copy in the release
    /// is replaced, so it is neither checked against the manifest locally nor reused.
    pub fn covers(&self, path: &str) -> bool {
        self.all()
            .any(|(s, _)| path == s || path.starts_with(&format!("{s}/")))
    }

    /// The nodes a local release still holds as its manifest says.
    pub fn kept(&self, nodes: &[Node]) -> Vec<Node> {
        nodes
            .iter()
            .filter(|n| !self.covers(n.path()))
            .cloned()
            .collect()
    }

    /// In the staged release `dir`: each shared path becomes a link to its shared copy (seeded from
    /// the release's own copy when there is none yet), owned by `owner` when created.
    pub fn link_into(&self, dir: &Path, owner: Option<(u32, u32)>) -> Result<(), ReleaseError> {
        for (path, is_dir) in self.all() {
            let refused = |why: String| {
                ReleaseError::Failed(format!(
                    "the shared path '{path}' cannot be linked into {}: {why}; nothing was switched",
                    dir.display()
                ))
            };
            through_no_link(dir, path).map_err(refused)?;
            let in_release = dir.join(path);
            let shared = self.root.join(path);
            if fs::symlink_metadata(&shared).is_err() {
                seed(&in_release, &shared, is_dir, owner)?;
            }
            let kind = fs::metadata(&shared).map_err(|e| io_failed("reading", &shared, &e))?;
            if kind.is_dir() != is_dir {
                return Err(refused(format!(
                    "{} is a {}, not a {}",
                    shared.display(),
                    if kind.is_dir() { "directory" } else { "file" },
                    if is_dir { "directory" } else { "file" }
                )));
            }
            remove_tree(&in_release).map_err(|e| io_failed("removing", &in_release, &e))?;
            if let Some(parent) = in_release.parent() {
                fs::create_dir_all(parent).map_err(|e| io_failed("creating", parent, &e))?;
            }
            std::os::unix::fs::symlink(&shared, &in_release)
                .map_err(|e| io_failed("creating the link", &in_release, &e))?;
        }
        Ok(())
    }

    /// Whether the staged release `dir` has every shared path linked to its shared copy.
    pub fn linked(&self, dir: &Path) -> bool {
        self.all().all(|(path, _)| {
            fs::read_link(dir.join(path)).is_ok_and(|target| target == self.root.join(path))
        })
    }
}

/// No component above `path` in `dir` is a link (the release's own links are never followed).
fn through_no_link(dir: &Path, path: &str) -> Result<(), String> {
    let mut at = dir.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("'{part}' on the way is a link of the release"))
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("'{part}' on the way is not a directory"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The shared copy, from the release's own (a real directory or file, never a link), else empty.
fn seed(
    in_release: &Path,
    shared: &Path,
    is_dir: bool,
    owner: Option<(u32, u32)>,
) -> Result<(), ReleaseError> {
    if let Some(parent) = shared.parent() {
        fs::create_dir_all(parent).map_err(|e| io_failed("creating", parent, &e))?;
    }
    let theirs = fs::symlink_metadata(in_release).ok();
    let from_release = theirs.is_some_and(|m| m.is_dir() == is_dir && !m.file_type().is_symlink());
    let made = if from_release {
        tracing::info!(
            "seeding the shared path {} from {}",
            shared.display(),
            in_release.display()
        );
        copy_tree(in_release, shared)
    } else if is_dir {
        fs::create_dir(shared)
    } else {
        fs::File::create(shared).map(|_| ())
    };
    made.map_err(|e| io_failed("creating", shared, &e))?;
    if let Some((uid, gid)) = owner {
        chown_tree(shared, uid, gid)?;
    }
    Ok(())
}

/// A copy of a release's tree (directories, files, links as links), modes kept.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(from)?, to);
    }
    if meta.is_file() {
        fs::copy(from, to)?;
        return Ok(());
    }
    fs::create_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    fs::set_permissions(to, meta.permissions())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_paths_are_seeded_once_linked_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            root: dir.path().join("shared"),
            dirs: vec!["public/uploads".into(), "storage".into()],
            files: vec![".env".into()],
        };
        let v1 = dir.path().join("v1");
        fs::create_dir_all(v1.join("public/uploads")).unwrap();
        fs::write(v1.join("public/uploads/logo.png"), "logo").unwrap();
        fs::write(v1.join(".env"), "APP_KEY=1").unwrap();
        // Where `storage/` goes, v1 ships a link out of the release: removed, not followed.
        std::os::unix::fs::symlink("/etc", v1.join("storage")).unwrap();
        shared.link_into(&v1, None).unwrap();
        assert!(shared.linked(&v1));
        assert_eq!(
            fs::read_to_string(dir.path().join("shared/public/uploads/logo.png")).unwrap(),
            "logo"
        );
        assert!(dir.path().join("shared/storage").is_dir());
        assert_eq!(
            fs::read_dir(dir.path().join("shared/storage"))
                .unwrap()
                .count(),
            0
        );
        // An upload and an edited .env survive the next release, which ships its own copies.
        fs::write(v1.join("public/uploads/user.jpg"), "upload").unwrap();
        fs::write(v1.join(".env"), "APP_KEY=2").unwrap();
        let v2 = dir.path().join("v2");
        fs::create_dir_all(v2.join("public/uploads")).unwrap();
        fs::write(v2.join(".env"), "APP_KEY=shipped").unwrap();
        shared.link_into(&v2, None).unwrap();
        assert_eq!(
            fs::read_to_string(v2.join("public/uploads/user.jpg")).unwrap(),
            "upload"
        );
        assert_eq!(fs::read_to_string(v2.join(".env")).unwrap(), "APP_KEY=2");
        // A release whose path to a shared directory passes through its own link is refused.
        let v3 = dir.path().join("v3");
        fs::create_dir_all(&v3).unwrap();
        std::os::unix::fs::symlink("/tmp", v3.join("public")).unwrap();
        let err = shared.link_into(&v3, None).unwrap_err().to_string();
        assert!(err.contains("is a link of the release"), "{err}");
        assert!(shared.covers("public/uploads/a.jpg") && shared.covers(".env"));
        assert!(!shared.covers("public/index.php") && !shared.covers(".envrc"));
    }
}
