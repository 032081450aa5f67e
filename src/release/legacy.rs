//! Compatibility with the layout aws-s3-pull-deploy writes (its push-deploy.py / pull-deploy.py pair),
//! so a fleet can move to embark without re-pushing: `<nickname>/latest-deploy` holds three lines (the
//! release's `YYYY-MM-DD_HH-MM-SS`, epoch seconds, file count) and the files lie under
//! `<nickname>/<YYYY-MM-DD_HH-MM-SS>/`. The source is `s3://bucket/<nickname>`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use futures_util::stream::{self, TryStreamExt};

use super::error::ReleaseError;
use super::format::{sha256_hex, Manifest, Node};
use super::progress::Progress;
use super::rules::check_nodes;
use super::store::Store;

pub const POINTER: &str = "latest-deploy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub stamp: String,
    pub epoch: u64,
    pub count: u64,
}

impl Latest {
    /// The local release id: the stamp's time and a digest of it (ids keep sorting by time).
    pub fn id(&self) -> String {
        let digits: String = self.stamp.chars().filter(char::is_ascii_digit).collect();
        format!(
            "{}T{}Z-{}",
            &digits[..8],
            &digits[8..14],
            &sha256_hex(self.stamp.as_bytes())[..6]
        )
    }
}

impl Latest {
    /// The stamp as RFC 3339 (how embark's own releases record their time).
    pub fn created(&self) -> String {
        format!(
            "{}T{}Z",
            &self.stamp[..10],
            self.stamp[11..].replace('-', ":")
        )
    }
}

pub fn parse_latest(text: &str) -> Result<Latest, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [stamp, epoch, count] = lines[..] else {
        return Err(format!(
            "it has {} lines; pull-deploy writes three (YYYY-MM-DD_HH-MM-SS, epoch seconds, file count)",
            lines.len()
        ));
    };
    let b = stamp.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'_',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return Err(format!(
            "its first line '{stamp}' is not YYYY-MM-DD_HH-MM-SS"
        ));
    }
    Ok(Latest {
        stamp: stamp.to_string(),
        epoch: epoch
            .parse()
            .map_err(|_| format!("its second line '{epoch}' is not epoch seconds"))?,
        count: count
            .parse()
            .map_err(|_| format!("its third line '{count}' is not a file count"))?,
    })
}

pub async fn read_latest(store: &Store) -> Result<Latest, ReleaseError> {
    let key = store.source.key(POINTER);
    let (bytes, _) = store.get_small(&key, 4096).await?.ok_or_else(|| {
        ReleaseError::Failed(format!(
            "no release has been published at {} ({} is missing; pull-deploy layout)",
            store.source,
            store.url(&key)
        ))
    })?;
    parse_latest(&String::from_utf8_lossy(&bytes)).map_err(|why| {
        ReleaseError::Failed(format!(
            "{} is not a pull-deploy pointer: {why}",
            store.url(&key)
        ))
    })
}

/// The release's keys and their paths in the tree, after checking the count and every path.
async fn listed_files(
    store: &Store,
    latest: &Latest,
) -> Result<(Vec<String>, Vec<String>), ReleaseError> {
    let prefix = store.source.key(&format!("{}/", latest.stamp));
    let keys: Vec<String> = store
        .list_keys(&prefix)
        .await?
        .into_iter()
        .filter(|k| !k.ends_with('/'))
        .collect();
    if keys.len() as u64 != latest.count {
        return Err(ReleaseError::Failed(format!(
            "refusing the pull-deploy release {}: latest-deploy says {} files, but {} holds {} (an upload still running, or an incomplete one); nothing was switched",
            latest.stamp,
            latest.count,
            store.url(&prefix),
            keys.len()
        )));
    }
    let mut paths = Vec::new();
    for key in &keys {
        let rel = key[prefix.len()..].to_string();
        super::rules::check_path(&rel).map_err(|r| {
            ReleaseError::Failed(format!(
                "refusing the pull-deploy release {}: {r}; nothing was switched",
                latest.stamp
            ))
        })?;
        paths.push(rel);
    }
    Ok((keys, paths))
}

/// Fetch every file of the release into `partial` (hashing each), after checking the file count;
/// returns the manifest embark keeps for it locally.
pub async fn stage(
    store: &Store,
    latest: &Latest,
    partial: &std::path::Path,
) -> Result<(Vec<u8>, usize, u64), ReleaseError> {
    let (keys, paths) = listed_files(store, latest).await?;
    // Directories are implied by the keys.
    let mut dirs = BTreeSet::new();
    for p in &paths {
        let mut end = 0;
        while let Some(i) = p[end..].find('/') {
            dirs.insert(p[..end + i].to_string());
            end += i + 1;
        }
    }
    let progress = Mutex::new(Progress::new("fetching files", 0));
    let files: Mutex<Vec<Node>> = Mutex::new(Vec::new());
    stream::iter(keys.iter().zip(&paths).map(Ok))
        .try_for_each_concurrent(super::store::FETCHES_AT_ONCE, |(key, rel)| {
            let (progress, files) = (&progress, &files);
            async move {
                let target = partial.join(rel);
                let (sha256, size) = store.download(key, &target, progress, None).await?;
                if let Ok(mut f) = files.lock() {
                    f.push(Node::File {
                        path: rel.clone(),
                        size,
                        sha256,
                        mode: 0o644,
                    });
                }
                Ok::<_, ReleaseError>(())
            }
        })
        .await?;
    let mut nodes: Vec<Node> = dirs
        .into_iter()
        .map(|path| Node::Dir { path, mode: 0o755 })
        .collect();
    nodes.extend(files.into_inner().unwrap_or_default());
    nodes.sort_by(|a, b| a.path().cmp(b.path()));
    check_nodes(&nodes).map_err(|r| {
        ReleaseError::Failed(format!(
            "refusing the pull-deploy release {}: {r}; nothing was switched",
            latest.stamp
        ))
    })?;
    for node in &nodes {
        if let Node::File { path, mode, .. } = node {
            let p = partial.join(path);
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                .map_err(|e| super::error::io_failed("setting the mode of", &p, &e))?;
        }
    }
    let fetched_bytes = nodes
        .iter()
        .map(|n| match n {
            Node::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let manifest = Manifest::new(
        latest.id(),
        latest.created(),
        "pull-deploy".into(),
        String::new(),
        &nodes,
    );
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the local manifest: {e}")))?;
    Ok((bytes, paths.len(), fetched_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_deploy_lines() {
        let l = parse_latest("2026-11-26_13-04-55\n1795698295\n42\n").unwrap();
        assert_eq!((l.epoch, l.count), (1795698295, 42));
        assert!(l.id().starts_with("20261126T130455Z-"));
        super::super::format::check_id(&l.id()).unwrap();
        assert!(parse_latest("2026-11-26 13:04:55\n1\n2").is_err());
        assert!(parse_latest("2026-11-26_13-04-55\n1").is_err());
        assert!(parse_latest("2026-11-26_13-04-55\nx\n2").is_err());
    }
}
