//! `embark release push`: walk and hash the tree, upload what the source lacks, the bundle, the
//! manifest, and last the `current` pointer, conditionally.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::stream::{self, TryStreamExt};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::bundle::upload_bundle;
use super::sign::Signer;
use crate::release::error::{io_failed, ReleaseError};
use crate::release::format::{
    new_id, sha256_hex, Manifest, ManifestDelta, Node, Pointer, Signature, POINTER_FORMAT,
};
use crate::release::manifest;
use crate::release::progress::{human_bytes, Progress};
use crate::release::rules::{check_mode, check_nodes};
use crate::release::store::{Condition, PutError, Store};

pub const IGNORE_FILE: &str = ".embarkignore";
/// New objects on the wire at once. Most are small, so a push waits on S3's per-request latency rather
/// than on bytes: 64 at once is ~3,200 requests a second at 20 ms each (fewer at S3's usual latency),
/// under S3's 3,500 PUTs a second a prefix (AWS's performance guidelines).
const UPLOADS_AT_ONCE: usize = 64;

pub struct Pushed {
    pub release: String,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_objects: usize,
    pub uploaded_bytes: u64,
    pub bundle_bytes: u64,
}

impl Pushed {
    pub fn human(&self, source: &str) -> String {
        format!(
            "pushed release {} to {source}: {} ({}); uploaded {} ({}) and the bundle ({}); it is now current\n",
            self.release,
            crate::output::count(self.files, "file", "files"),
            human_bytes(self.bytes),
            crate::output::count(self.uploaded_objects as u64, "new object", "new objects"),
            human_bytes(self.uploaded_bytes),
            human_bytes(self.bundle_bytes)
        )
    }
}

/// The tree as release nodes (files not yet hashed: empty sha256), in path order. Anything that could
/// not be recreated safely on an instance is refused here, before anything is uploaded.
pub fn walk(root: &Path) -> Result<Vec<Node>, ReleaseError> {
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReleaseError::Usage(format!(
                "{} does not exist: name the directory to publish (the build output)",
                root.display()
            )))
        }
        Err(e) => return Err(io_failed("reading", root, &e)),
    };
    if !meta.is_dir() {
        return Err(ReleaseError::Usage(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut builder = GitignoreBuilder::new(root);
    let ignore_path = root.join(IGNORE_FILE);
    if ignore_path.is_file() {
        if let Some(err) = builder.add(&ignore_path) {
            return Err(ReleaseError::Usage(format!(
                "{} cannot be read: {err}",
                ignore_path.display()
            )));
        }
    }
    let ignore = builder.build().map_err(|err| {
        ReleaseError::Usage(format!("{} is invalid: {err}", ignore_path.display()))
    })?;
    let mut nodes = Vec::new();
    walk_dir(root, root, &ignore, &mut nodes)?;
    nodes.sort_by(|a, b| a.path().cmp(b.path()));
    check_nodes(&nodes).map_err(|r| refused(root, &r.0))?;
    Ok(nodes)
}

fn refused(root: &Path, why: &str) -> ReleaseError {
    ReleaseError::Failed(format!(
        "refusing to push {}: {why}; nothing was uploaded",
        root.display()
    ))
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    ignore: &Gitignore,
    nodes: &mut Vec<Node>,
) -> Result<(), ReleaseError> {
    let entries = fs::read_dir(dir).map_err(|e| io_failed("reading", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_failed("reading", dir, &e))?;
        let path = entry.path();
        let name = entry.file_name();
        let meta = fs::symlink_metadata(&path).map_err(|e| io_failed("reading", &path, &e))?;
        if dir == root && (name == ".git" || name == IGNORE_FILE) {
            continue;
        }
        if ignore.matched(&path, meta.is_dir()).is_ignore() {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| {
                refused(
                    root,
                    &format!("the name of {} is not UTF-8", path.display()),
                )
            })?
            .to_string();
        let kind = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| io_failed("reading", &path, &e))?;
            let target = target.to_str().ok_or_else(|| {
                refused(
                    root,
                    &format!("the target of the symlink '{rel}' is not UTF-8"),
                )
            })?;
            nodes.push(Node::Symlink {
                path: rel,
                target: target.to_string(),
            });
        } else if kind.is_dir() {
            let mode = check_mode(&rel, mode).map_err(|r| refused(root, &r.0))?;
            nodes.push(Node::Dir { path: rel, mode });
            walk_dir(root, &path, ignore, nodes)?;
        } else if kind.is_file() {
            let mode = check_mode(&rel, mode).map_err(|r| refused(root, &r.0))?;
            nodes.push(Node::File {
                path: rel,
                size: meta.size(),
                sha256: String::new(),
                mode,
            });
        } else {
            return Err(refused(
                root,
                &format!("'{rel}' is a device, FIFO or socket; a release holds only files, directories and symlinks"),
            ));
        }
    }
    Ok(())
}

/// Hash every file, on every core.
pub fn hash_all(root: &Path, nodes: &mut [Node]) -> Result<(), ReleaseError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<ReleaseError>> = Mutex::new(None);
    let slots: Vec<Mutex<&mut Node>> = nodes.iter_mut().map(Mutex::new).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(index) else {
                    break;
                };
                let Ok(mut node) = slot.lock() else { break };
                if let Node::File {
                    path, size, sha256, ..
                } = &mut **node
                {
                    let full = root.join(&*path);
                    match crate::fsutil::hash_file(&full) {
                        Ok((digest, bytes)) => {
                            *sha256 = digest;
                            *size = bytes;
                        }
                        Err(err) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(io_failed("reading", &full, &err));
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(err)) => Err(err),
        _ => Ok(()),
    }
}

pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    format!("{user}@{host}")
}

pub async fn push(
    store: &Store,
    root: &Path,
    message: &str,
    signer: Option<&Signer>,
) -> Result<Pushed, ReleaseError> {
    let root = root.to_path_buf();
    let walk_root = root.clone();
    let hashed = async {
        tokio::task::spawn_blocking(move || {
            let mut nodes = walk(&walk_root)?;
            hash_all(&walk_root, &mut nodes)?;
            Ok::<_, ReleaseError>(nodes)
        })
        .await
        .map_err(|e| ReleaseError::Failed(format!("hashing the tree stopped: {e}")))?
    };
    // While the tree is hashed: what `current` is now (the pointer is replaced only if nobody
    // changed it meanwhile) and which objects the source has.
    let (nodes, pointer, present) =
        tokio::join!(hashed, store.read_pointer(), present_objects(store));
    let (nodes, present) = (nodes?, present?);
    let (base, previous) = match pointer? {
        Some((pointer, etag)) => (Condition::Unchanged(etag), Some(pointer)),
        None => (Condition::Absent, None),
    };

    let created = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let nonce: [u8; 16] = rand::random();
    let id = new_id(&created, &nodes, &nonce);
    let manifest = Manifest::new(
        id.clone(),
        created.clone(),
        who(),
        message.to_string(),
        &nodes,
    );
    tracing::info!(
        release = %id,
        "release {id}: {} files, {}",
        manifest.files,
        human_bytes(manifest.bytes)
    );

    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the manifest: {e}")))?;
    let manifest_sha256 = sha256_hex(&manifest_bytes);
    // Signed before anything is uploaded: a key that cannot sign changes nothing.
    let signature = match signer {
        Some(signer) => Some(signer.sign(&store.source, &id, &manifest_sha256).await?),
        None => None,
    };

    // The objects (many small requests: latency) and the bundle (CPU, then a few large parts) go up
    // side by side. Both end before an error is reported: an abandoned multipart upload is aborted.
    let (objects, bundle) = tokio::join!(
        upload_objects(store, &root, &nodes, &present),
        upload_bundle(store, &root, &nodes, &id)
    );
    let (uploaded_objects, uploaded_bytes) = objects?;
    let bundle_bytes = bundle?;
    // The signature, the delta and the manifest side by side; all before the pointer names them.
    let signed = async {
        let Some(signature) = &signature else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(signature)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the signature: {e}")))?;
        put_new(store, &store.source.signature_key(&id), bytes, &id).await
    };
    let delta = async {
        match &previous {
            Some(previous) => upload_delta(store, previous, &id, &manifest_bytes).await,
            None => None,
        }
    };
    let manifest_key = store.source.manifest_key(&id);
    let (signed, delta, written) = tokio::join!(
        signed,
        delta,
        put_new(store, &manifest_key, manifest_bytes.clone(), &id)
    );
    signed?;
    written?;

    write_pointer(store, &manifest, manifest_sha256, delta, signature, base).await?;
    Ok(Pushed {
        release: id,
        files: manifest.files,
        bytes: manifest.bytes,
        uploaded_objects,
        uploaded_bytes,
        bundle_bytes,
    })
}

/// A file of release `id` that must not exist yet (`manifest.json`, `manifest.sig`).
async fn put_new(store: &Store, key: &str, bytes: Vec<u8>, id: &str) -> Result<(), ReleaseError> {
    match store.put_bytes(key, bytes, Condition::Absent).await {
        Ok(()) => Ok(()),
        Err(PutError::Conflict) => Err(ReleaseError::Failed(format!(
            "the release id {id} already exists at {}; push again",
            store.source
        ))),
        Err(PutError::Failed(err)) => Err(err),
    }
}

/// The manifest as a delta against the release it replaces, uploaded next to it, for the instances
/// that run that release. Only an optimisation: when the base cannot be read or the delta would not
/// save much, the release goes without one (and instances fetch the whole manifest).
async fn upload_delta(
    store: &Store,
    previous: &Pointer,
    id: &str,
    manifest: &[u8],
) -> Option<ManifestDelta> {
    let key = store.source.manifest_key(&previous.release);
    let base = match manifest::fetch(store, &previous.release).await {
        Ok(Some(bytes)) if sha256_hex(&bytes) == previous.manifest_sha256 => bytes,
        Ok(_) => {
            tracing::warn!(
                "{} is missing or not the manifest its pointer named: no manifest delta for release {id}",
                store.url(&key)
            );
            return None;
        }
        Err(err) => {
            tracing::warn!("no manifest delta for release {id}: {err}");
            return None;
        }
    };
    let (base_sha256, manifest_size, new) =
        (sha256_hex(&base), manifest.len() as u64, manifest.to_vec());
    let encoded =
        tokio::task::spawn_blocking(move || crate::release::delta::encode(&base, &new)).await;
    let bytes = match encoded {
        Ok(Ok(bytes)) if (bytes.len() as u64) * 2 < manifest_size => bytes,
        _ => return None,
    };
    let delta = ManifestDelta {
        base: previous.release.clone(),
        base_sha256,
        sha256: sha256_hex(&bytes),
        size: bytes.len() as u64,
        manifest_size,
    };
    match store
        .put_bytes(&store.source.delta_key(id), bytes, Condition::Absent)
        .await
    {
        Ok(()) => Some(delta),
        Err(PutError::Conflict) => None,
        Err(PutError::Failed(err)) => {
            tracing::warn!("no manifest delta for release {id}: {err}");
            None
        }
    }
}

/// `current`, last and conditionally: a push that raced another is told, not silently overwritten.
async fn write_pointer(
    store: &Store,
    manifest: &Manifest,
    manifest_sha256: String,
    delta: Option<ManifestDelta>,
    signature: Option<Signature>,
    base: Condition,
) -> Result<(), ReleaseError> {
    let pointer = Pointer {
        format: POINTER_FORMAT.to_string(),
        release: manifest.release.clone(),
        manifest_sha256,
        time: manifest.created.clone(),
        who: manifest.who.clone(),
        message: manifest.message.clone(),
        delta,
        signature,
        rollback_of: None,
    };
    let pointer_bytes = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the pointer: {e}")))?;
    match store
        .put_bytes(&store.source.pointer_key(), pointer_bytes, base)
        .await
    {
        Ok(()) => {}
        Err(PutError::Conflict) => {
            let now = match store.read_pointer().await {
                // Our own write: an earlier attempt of this PUT succeeded and its answer was lost, so
                // the SDK's retry met our new ETag. The release is current; nothing raced us.
                Ok(Some((p, _)))
                    if p.release == pointer.release
                        && p.manifest_sha256 == pointer.manifest_sha256 =>
                {
                    return Ok(());
                }
                Ok(Some((p, _))) => format!("{} (pushed by {})", p.release, p.who),
                _ => "another release".into(),
            };
            return Err(ReleaseError::Conflict(format!(
                "another push changed {}/current while this one ran: {now} is current; this push's release {} was uploaded but is NOT current (push again to make it current)",
                store.source, manifest.release
            )));
        }
        Err(PutError::Failed(err)) => return Err(err),
    }
    Ok(())
}

/// The content addresses of the objects the source has.
async fn present_objects(store: &Store) -> Result<BTreeSet<String>, ReleaseError> {
    Ok(store
        .list_keys(&store.source.key("objects/"))
        .await?
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect())
}

/// Upload the content-addressed objects the source does not have yet (`present`: those it has).
async fn upload_objects(
    store: &Store,
    root: &Path,
    nodes: &[Node],
    present: &BTreeSet<String>,
) -> Result<(usize, u64), ReleaseError> {
    let mut seen = BTreeSet::new();
    let missing: Vec<(PathBuf, String, u64)> = nodes
        .iter()
        .filter_map(|n| match n {
            Node::File {
                path, sha256, size, ..
            } if !present.contains(sha256) && seen.insert(sha256.clone()) => {
                Some((root.join(path), sha256.clone(), *size))
            }
            _ => None,
        })
        .collect();
    let total: u64 = missing.iter().map(|m| m.2).sum();
    match missing.len() {
        0 => tracing::info!("every object of the release is at the source already"),
        n => tracing::info!(
            "{} new ({}); uploading {}",
            crate::output::count(n as u64, "object is", "objects are"),
            human_bytes(total),
            if n == 1 { "it" } else { "them" }
        ),
    }
    let progress = Mutex::new(Progress::new("uploading objects", total));
    let count = missing.len();
    stream::iter(missing.iter().map(Ok))
        .try_for_each_concurrent(UPLOADS_AT_ONCE, |(path, sha256, size)| {
            let progress = &progress;
            async move {
                store
                    .put_file(&store.source.object_key(sha256), path, sha256)
                    .await?;
                if let Ok(mut p) = progress.lock() {
                    p.add(*size);
                }
                Ok::<_, ReleaseError>(())
            }
        })
        .await?;
    if let Ok(p) = progress.into_inner() {
        p.finish();
    }
    Ok((count, total))
}
