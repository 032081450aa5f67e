//! Fetching a release into its staging directory: the whole bundle, streamed through the unpacker, when
//! nothing is here to reuse; else each file from a local release whose copy still matches, or its
//! content-addressed object. Every byte is verified against the manifest as it arrives.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, TryStreamExt};

use super::error::{io_failed, ReleaseError};
use super::format::Node;
use super::layout::chown_tree;
use super::progress::{human_bytes, Progress};
use super::store::{Store, FETCHES_AT_ONCE};
use super::unpack::{copy_hashed, create_dir, make_symlink};
use crate::fsutil::remove_tree;

mod bundle;
pub use bundle::{beside, Window};
use bundle::{fetch_bundle, range_count, Fetch, RANGES_AT_ONCE};

/// What fetching a release took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The bundle's bytes, when the release came as one.
    pub bundle_bytes: u64,
    pub objects: usize,
    pub object_bytes: u64,
    /// Files copied from a local release.
    pub reused: usize,
}

/// How a release is fetched.
#[derive(Debug, Clone, PartialEq)]
pub enum Way {
    /// One GET of the bundle; why.
    Bundle(String),
    /// The objects this machine lacks (each content once); the rest copied from local releases.
    Objects {
        fetch: usize,
        bytes: u64,
        reuse: usize,
    },
}

/// The cost model that picks the way (docs/cli.md, `release pull`): a request costs [`REQUEST_SECONDS`]
/// (S3's first-byte latency), one connection carries [`STREAM_BYTES_PER_SECOND`] (AWS's performance
/// guidelines: ~85–90 MB/s per connection, scale by connections), and S3 serves connections in
/// parallel: the objects on [`FETCHES_AT_ONCE`], the bundle's ranges on [`RANGES_AT_ONCE`]. The bundle is
/// priced at the release's uncompressed size (it is never more) and chosen only when it is clearly
/// cheaper (half the time): the objects reuse local bytes and leave nothing to unpack.
const REQUEST_SECONDS: f64 = 0.020;
const STREAM_BYTES_PER_SECOND: f64 = 90e6;

/// Seconds to fetch `count` requests of `bytes` in all, `at_once` in parallel.
fn seconds(count: u64, bytes: u64, at_once: usize) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let streams = count.min(at_once as u64) as f64;
    count.div_ceil(at_once as u64) as f64 * REQUEST_SECONDS
        + bytes as f64 / (STREAM_BYTES_PER_SECOND * streams)
}

impl Way {
    pub fn choose(nodes: &[Node], local: &HashMap<String, PathBuf>) -> Way {
        if local.is_empty() {
            return Way::Bundle("no earlier release here".into());
        }
        let (mut fetch, mut bytes, mut reuse, mut total) = (0usize, 0u64, 0usize, 0u64);
        let mut seen = std::collections::HashSet::new();
        for node in nodes {
            if let Node::File { sha256, size, .. } = node {
                total = total.saturating_add(*size);
                if local.contains_key(sha256) {
                    reuse += 1;
                } else if seen.insert(sha256) {
                    fetch += 1;
                    bytes = bytes.saturating_add(*size);
                }
            }
        }
        let objects = seconds(fetch as u64, bytes, FETCHES_AT_ONCE);
        let ranges = range_count(total);
        let bundle = seconds(ranges, total, RANGES_AT_ONCE);
        if bundle * 2.0 < objects {
            return Way::Bundle(format!(
                "{fetch} of {} files changed ({}): the bundle (~{:.2} s, {}) is cheaper than {fetch} object GETs (~{:.2} s)",
                nodes.iter().filter(|n| matches!(n, Node::File { .. })).count(),
                human_bytes(bytes),
                bundle,
                crate::output::count(ranges, "range", "ranges"),
                objects
            ));
        }
        Way::Objects {
            fetch,
            bytes,
            reuse,
        }
    }
}

/// Fetch and verify the release `id` into `partial` (created afresh), then give it its modes and
/// `owner` and sync it. `local`: where each content already is on this machine (empty: cold).
pub async fn fill<'a>(
    store: &'a Store,
    id: &str,
    nodes: &[Node],
    partial: &Path,
    (local, head_start): (&HashMap<String, PathBuf>, Option<Window<'a>>),
    owner: Option<(u32, u32)>,
) -> Result<Fetched, ReleaseError> {
    let _ = remove_tree(partial);
    fs::create_dir(partial).map_err(|e| io_failed("creating", partial, &e))?;
    let mut fetched = Fetched::default();
    if let Way::Bundle(why) = Way::choose(nodes, local) {
        tracing::info!(release = %id, "fetching the bundle: {why}");
        match fetch_bundle(store, id, nodes, partial, head_start).await {
            Ok(bytes) => fetched.bundle_bytes = bytes,
            Err(Fetch::Fatal(err)) => return Err(err),
            Err(Fetch::Transport(why)) => {
                tracing::warn!(
                    "fetching the bundle failed ({why}); fetching the release file by file instead"
                );
                remove_tree(partial).map_err(|e| io_failed("removing", partial, &e))?;
                fs::create_dir(partial).map_err(|e| io_failed("creating", partial, &e))?;
                fetched = fetch_objects(store, id, nodes, partial, local).await?;
            }
        }
    } else {
        fetched = fetch_objects(store, id, nodes, partial, local).await?;
    }
    finish(nodes, partial, owner)?;
    Ok(fetched)
}

/// Directory modes, the owner, and everything on disk before the rename.
pub fn finish(
    nodes: &[Node],
    partial: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), ReleaseError> {
    // Directory modes last: a read-only directory must not stop its own files being written.
    for node in nodes.iter().rev() {
        if let Node::Dir { path, mode } = node {
            let dir = partial.join(path);
            fs::set_permissions(&dir, fs::Permissions::from_mode(*mode))
                .map_err(|e| io_failed("setting the mode of", &dir, &e))?;
        }
    }
    fs::set_permissions(partial, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_failed("setting the mode of", partial, &e))?;
    if let Some((uid, gid)) = owner {
        chown_tree(partial, uid, gid)?;
    }
    let dir = fs::File::open(partial).map_err(|e| io_failed("opening", partial, &e))?;
    nix::unistd::syncfs(&dir).map_err(|e| io_failed("syncing", partial, &io::Error::from(e)))?;
    Ok(())
}

/// A file and where its content can be copied from (`None`: fetch it).
type Fill<'a> = (&'a Node, Option<PathBuf>);

/// Which files to fill first (from a local release, or fetched) and which afterwards (copies of a
/// content another file of this release brings): each content is fetched once.
fn fetch_order<'a>(
    nodes: &'a [Node],
    local: &HashMap<String, PathBuf>,
    partial: &Path,
) -> (Vec<Fill<'a>>, Vec<Fill<'a>>) {
    let mut fetched_at: HashMap<&str, PathBuf> = HashMap::new();
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for node in nodes {
        if let Node::File { path, sha256, .. } = node {
            if let Some(here) = local.get(sha256) {
                first.push((node, Some(here.clone())));
            } else if let Some(earlier) = fetched_at.get(sha256.as_str()) {
                again.push((node, Some(earlier.clone())));
            } else {
                fetched_at.insert(sha256, partial.join(path));
                first.push((node, None));
            }
        }
    }
    (first, again)
}

/// The incremental path: directories and links first, then each file from a local release whose copy
/// still matches, else from its object in S3.
async fn fetch_objects(
    store: &Store,
    id: &str,
    nodes: &[Node],
    partial: &Path,
    local: &HashMap<String, PathBuf>,
) -> Result<Fetched, ReleaseError> {
    for node in nodes {
        match node {
            Node::Dir { path, .. } => create_dir(&partial.join(path))?,
            Node::Symlink { path, target } => make_symlink(target, &partial.join(path))?,
            Node::File { .. } => {}
        }
    }
    let (first, again) = fetch_order(nodes, local, partial);
    let to_fetch: u64 = first
        .iter()
        .filter_map(|(n, from)| match n {
            Node::File { size, .. } if from.is_none() => Some(*size),
            _ => None,
        })
        .sum();
    let progress = Arc::new(Mutex::new(Progress::new("fetching objects", to_fetch)));
    let stats = Mutex::new((0usize, 0u64, 0usize)); // fetched, bytes, reused
    let id = id.to_string();
    for batch in [first, again] {
        // Local copies in one blocking pass (a thread hand-off per file cost more than the copy);
        // the ones whose local bytes changed are fetched with the rest.
        let (mut copies, mut fetches, mut jobs) = (Vec::new(), Vec::new(), Vec::new());
        for (node, from) in batch {
            match (node, from) {
                (Node::File { path, .. }, Some(source)) => {
                    jobs.push((node.clone(), source, partial.join(path)));
                    copies.push(node);
                }
                _ => fetches.push(node),
            }
        }
        let release = id.clone();
        let copied = tokio::task::spawn_blocking(move || copy_locals(&jobs, &release))
            .await
            .map_err(|e| ReleaseError::Failed(format!("copying stopped: {e}")))??;
        if let Ok(mut s) = stats.lock() {
            s.2 += copied.iter().filter(|ok| **ok).count();
        }
        fetches.extend(
            copies
                .into_iter()
                .zip(copied)
                .filter(|(_, ok)| !ok)
                .map(|(node, _)| node),
        );
        stream::iter(fetches.into_iter().map(Ok))
            .try_for_each_concurrent(FETCHES_AT_ONCE, |node| {
                let (progress, stats, id) = (progress.clone(), &stats, &id);
                async move {
                    let Node::File { path, .. } = node else {
                        return Ok(());
                    };
                    let target = partial.join(path);
                    let bytes = fetch_object(store, node, &target, id, &progress).await?;
                    if let Ok(mut s) = stats.lock() {
                        s.0 += 1;
                        s.1 += bytes;
                    }
                    Ok::<_, ReleaseError>(())
                }
            })
            .await?;
    }
    if let Ok(progress) = Arc::try_unwrap(progress) {
        if let Ok(p) = progress.into_inner() {
            p.finish();
        }
    }
    let (objects, object_bytes, reused) = stats.into_inner().unwrap_or_default();
    Ok(Fetched {
        bundle_bytes: 0,
        objects,
        object_bytes,
        reused,
    })
}

/// Each `(node, local source, target)`: reused when the local copy still has the right bytes
/// (somebody may have edited a release in place), checked as it is copied (one read); else the
/// partial copy is removed and the file is fetched (false). A failure to set the mode is an error.
fn copy_locals(jobs: &[(Node, PathBuf, PathBuf)], id: &str) -> Result<Vec<bool>, ReleaseError> {
    let mut copied = Vec::with_capacity(jobs.len());
    for (node, source, target) in jobs {
        let Node::File {
            path,
            sha256,
            size,
            mode,
        } = node
        else {
            copied.push(false);
            continue;
        };
        let same = fs::File::open(source)
            .map_err(|e| io_failed("reading", source, &e))
            .and_then(|mut file| copy_hashed(&mut file, target, *size, path, id))
            .map(|(got, total)| got == *sha256 && total == *size);
        if !matches!(same, Ok(true)) {
            tracing::debug!("{} changed locally; fetching it", source.display());
            let _ = fs::remove_file(target);
            copied.push(false);
            continue;
        }
        fs::set_permissions(target, fs::Permissions::from_mode(*mode))
            .map_err(|e| io_failed("setting the mode of", target, &e))?;
        copied.push(true);
    }
    Ok(copied)
}

async fn fetch_object(
    store: &Store,
    node: &Node,
    target: &Path,
    id: &str,
    progress: &Mutex<Progress>,
) -> Result<u64, ReleaseError> {
    let Node::File {
        path,
        size,
        sha256,
        mode,
    } = node
    else {
        return Ok(0);
    };
    let key = store.source.object_key(sha256);
    let (got, total) = store.download(&key, target, progress, Some(*size)).await?;
    if total > *size {
        return Err(ReleaseError::Corrupt {
            release: id.to_string(),
            path: path.clone(),
            why: format!(
                "{} holds more than the {size} bytes the manifest promises",
                store.url(&key)
            ),
        });
    }
    if got != *sha256 || total != *size {
        return Err(ReleaseError::Corrupt {
            release: id.to_string(),
            path: path.clone(),
            why: format!("{} holds {got}", store.url(&key)),
        });
    }
    fs::set_permissions(target, fs::Permissions::from_mode(*mode))
        .map_err(|e| io_failed("setting the mode of", target, &e))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    use aws_sdk_s3::primitives::ByteStream;
    use aws_smithy_mocks::{mock, Rule};

    use super::bundle::bundle_bound;
    use super::*;
    use crate::release::format::{sha256_hex, SourceUrl};

    /// A rule serving `body` at `key`, as often as asked (its calls are counted).
    fn serve(key: String, body: &'static [u8]) -> Rule {
        mock!(aws_sdk_s3::Client::get_object)
            .match_requests(move |r| r.key() == Some(key.as_str()))
            .sequence()
            .output(move || {
                GetObjectOutput::builder()
                    .content_length(body.len() as i64)
                    .body(ByteStream::from_static(body))
                    .build()
            })
            .repeatedly()
            .build()
    }

    fn file(path: &str, body: &[u8]) -> Node {
        Node::File {
            path: path.into(),
            size: body.len() as u64,
            sha256: sha256_hex(body),
            mode: 0o640,
        }
    }

    #[test]
    fn the_bundle_is_chosen_when_it_is_clearly_cheaper_than_the_objects() {
        let files = |n: usize, size: usize| -> Vec<Node> {
            (0..n)
                .map(|i| file(&format!("f{i}.php"), format!("{i:0size$}").as_bytes()))
                .collect()
        };
        let local_of = |nodes: &[Node]| -> HashMap<String, PathBuf> {
            nodes
                .iter()
                .filter_map(|n| match n {
                    Node::File { sha256, .. } => Some((sha256.clone(), PathBuf::from("/x"))),
                    _ => None,
                })
                .collect()
        };
        let old = files(20_000, 40);
        // Nothing here: the bundle.
        assert!(matches!(Way::choose(&old, &HashMap::new()), Way::Bundle(_)));
        // Every one of 20,000 small files changed: 1,250 rounds of GETs against one GET.
        let new = files(20_000, 41);
        let Way::Bundle(why) = Way::choose(&new, &local_of(&old)) else {
            panic!("20,000 changed small files must take the bundle");
        };
        assert!(why.contains("20000 of 20000 files changed"), "{why}");
        // The tree: 4,000 files, 92 MB, every one changed: the bundle's ranges (~0.25 s)
        // against 250 rounds of object GETs (~5 s).
        let big = files(4_000, 23_000);
        let changed = files(4_000, 23_001);
        let Way::Bundle(why) = Way::choose(&changed, &local_of(&big)) else {
            panic!("4,000 changed files of 23 KB must take the bundle");
        };
        // The ranges the fetch asks for: the first and 23 more, three whole rounds of eight.
        assert!(why.contains("24 ranges"), "{why}");
        // 1% of 10,000 files of 9 KB changed: the objects (the bundle would be ~90 MB).
        let mut tree = files(10_000, 9_000);
        let local = local_of(&tree);
        for node in tree.iter_mut().step_by(100) {
            if let Node::File { path, .. } = node {
                *node = file(path, b"changed");
            }
        }
        assert_eq!(
            Way::choose(&tree, &local),
            Way::Objects {
                fetch: 1,
                bytes: 7,
                reuse: 9_900
            }
        );
    }

    #[tokio::test]
    async fn a_bundle_whose_size_claim_exceeds_the_manifest_is_refused_before_more_is_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let body: &'static [u8] = b"\x28\xb5\x2f\xfd";
        let bundle = mock!(aws_sdk_s3::Client::get_object)
            .match_requests(|r| {
                r.key() == Some("app/releases/20261206T000000Z-000001/bundle.tar.zst")
            })
            .sequence()
            .output(move || {
                GetObjectOutput::builder()
                    .content_length(body.len() as i64)
                    .content_range("bytes 0-3/999999999999")
                    .body(ByteStream::from_static(body))
                    .build()
            })
            .repeatedly()
            .build();
        let store = Store::mocked(
            &[&bundle],
            SourceUrl::parse("s3://deploy-bucket/app").unwrap(),
        );
        let nodes = vec![file("index.php", b"<?php echo 1;")];
        let partial = dir.path().join(".partial-x");
        let err = fill(
            &store,
            "20261206T000000Z-000001",
            &nodes,
            &partial,
            (&HashMap::new(), None),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("claims 999999999999 bytes"), "{err}");
        assert_eq!(bundle.num_calls(), 1, "nothing more was fetched");
        assert!(bundle_bound(&nodes) < 2 << 20);
    }

    #[tokio::test]
    async fn each_content_is_fetched_once_and_intact_local_copies_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("old-index.php");
        fs::write(&here, b"kept").unwrap();
        let edited = dir.path().join("old-lib.php");
        fs::write(&edited, b"edited in place").unwrap();
        let local = HashMap::from([(sha256_hex(b"kept"), here), (sha256_hex(b"lib"), edited)]);
        let kept = serve(format!("app/objects/{}", sha256_hex(b"kept")), b"kept");
        let lib = serve(format!("app/objects/{}", sha256_hex(b"lib")), b"lib");
        let shared = serve(format!("app/objects/{}", sha256_hex(b"same")), b"same");
        let store = Store::mocked(
            &[&kept, &lib, &shared],
            SourceUrl::parse("s3://deploy-bucket/app").unwrap(),
        );
        let nodes = vec![
            Node::Dir {
                path: "src".into(),
                mode: 0o750,
            },
            file("index.php", b"kept"),
            file("src/lib.php", b"lib"),
            file("src/a.php", b"same"),
            file("src/b.php", b"same"),
        ];
        let partial = dir.path().join(".partial-x");
        let fetched = fill(
            &store,
            "20261202T000000Z-000002",
            &nodes,
            &partial,
            (&local, None),
            None,
        )
        .await
        .unwrap();
        // Reused: index.php from the local release, and b.php copied from a.php once it arrived.
        assert_eq!(
            (fetched.objects, fetched.reused, fetched.bundle_bytes),
            (2, 2, 0)
        );
        assert_eq!(kept.num_calls(), 0, "an intact local copy is not fetched");
        assert_eq!(
            lib.num_calls(),
            1,
            "a local copy edited in place is fetched"
        );
        assert_eq!(shared.num_calls(), 1, "one content, one GET, two files");
        for (path, body) in [
            ("index.php", &b"kept"[..]),
            ("src/lib.php", b"lib"),
            ("src/a.php", b"same"),
            ("src/b.php", b"same"),
        ] {
            assert_eq!(fs::read(partial.join(path)).unwrap(), body, "{path}");
            let mode = fs::metadata(partial.join(path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o640, "{path}");
        }
        let mode = fs::metadata(partial.join("src"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }
}
