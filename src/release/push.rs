//! `embark release push`: walk and hash the tree, upload what the source lacks, the bundle, the
//! manifest, and last the `current` pointer, conditionally.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::fsutil::HashingReader;
use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tokio::sync::mpsc;

use super::error::{io_failed, ReleaseError};
use super::format::{
    check_mode, check_nodes, new_id, sha256_hex, Manifest, ManifestDelta, Node, Pointer, Signature,
    POINTER_FORMAT,
};
use super::progress::{human_bytes, Progress};
use super::signing::Signer;
use super::store::{Condition, PutError, Store, MANIFEST_LIMIT, PART_SIZE};

pub const IGNORE_FILE: &str = ".embarkignore";
const UPLOADS_AT_ONCE: usize = 8;

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
            "pushed release {} to {source}: {} files ({}); uploaded {} new objects ({}) and the bundle ({}); it is now current\n",
            self.release,
            self.files,
            human_bytes(self.bytes),
            self.uploaded_objects,
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
    let nodes = tokio::task::spawn_blocking(move || {
        let mut nodes = walk(&walk_root)?;
        hash_all(&walk_root, &mut nodes)?;
        Ok::<_, ReleaseError>(nodes)
    })
    .await
    .map_err(|e| ReleaseError::Failed(format!("hashing the tree stopped: {e}")))??;

    // What `current` is now: the pointer is replaced only if nobody changed it meanwhile.
    let (base, previous) = match store.read_pointer().await? {
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

    let (uploaded_objects, uploaded_bytes) = upload_objects(store, &root, &nodes).await?;
    let bundle_bytes = upload_bundle(store, &root, &nodes, &id).await?;
    if let Some(signature) = &signature {
        let bytes = serde_json::to_vec_pretty(signature)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the signature: {e}")))?;
        put_new(store, &store.source.signature_key(&id), bytes, &id).await?;
    }
    let delta = match &previous {
        Some(previous) => upload_delta(store, previous, &id, &manifest_bytes).await,
        None => None,
    };
    put_new(store, &store.source.manifest_key(&id), manifest_bytes, &id).await?;

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
    let base = match store.get_small(&key, MANIFEST_LIMIT).await {
        Ok(Some((bytes, _))) if sha256_hex(&bytes) == previous.manifest_sha256 => bytes,
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
    let encoded = tokio::task::spawn_blocking(move || super::delta::encode(&base, &new)).await;
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

/// Upload the content-addressed objects the source does not have yet.
async fn upload_objects(
    store: &Store,
    root: &Path,
    nodes: &[Node],
) -> Result<(usize, u64), ReleaseError> {
    let present: BTreeSet<String> = store
        .list_keys(&store.source.key("objects/"))
        .await?
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect();
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
    tracing::info!(
        "{} of the release's objects are new ({}); uploading them",
        missing.len(),
        human_bytes(total)
    );
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

/// Stream the tree as tar.zst into a (multipart) upload; never more than a few parts in memory.
async fn upload_bundle(
    store: &Store,
    root: &Path,
    nodes: &[Node],
    id: &str,
) -> Result<u64, ReleaseError> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let root = root.to_path_buf();
    let owned: Vec<Node> = nodes.to_vec();
    let writer = tokio::task::spawn_blocking(move || write_bundle(&root, &owned, tx));
    let key = store.source.bundle_key(id);
    let mut progress = Progress::new("uploading the bundle", 0);
    let uploaded = store.upload_stream(&key, rx, |n| progress.add(n)).await;
    progress.finish();
    let written = writer
        .await
        .map_err(|e| ReleaseError::Failed(format!("writing the bundle stopped: {e}")))?;
    // The writer's error explains an upload that ended early; report it first.
    written?;
    uploaded
}

/// Sends the bytes written to it in parts of [`PART_SIZE`].
struct PartWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    sent_any: bool,
}

impl PartWriter {
    /// The last part: whatever is left (an empty object still gets its one part).
    fn finish(&mut self) -> io::Result<()> {
        if self.buf.is_empty() && self.sent_any {
            return Ok(());
        }
        self.send()
    }

    fn send(&mut self) -> io::Result<()> {
        self.sent_any = true;
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PART_SIZE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_bundle(root: &Path, nodes: &[Node], tx: mpsc::Sender<Bytes>) -> Result<(), ReleaseError> {
    let fail = |e: io::Error| ReleaseError::Failed(format!("writing the bundle failed: {e}"));
    let part = PartWriter {
        tx,
        buf: Vec::with_capacity(PART_SIZE),
        sent_any: false,
    };
    let encoder = zstd::Encoder::new(part, 3).map_err(fail)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for node in nodes {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match node {
            Node::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, path, io::empty())
                    .map_err(fail)?;
            }
            Node::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, path, target).map_err(fail)?;
            }
            Node::File {
                path,
                size,
                sha256,
                mode,
            } => {
                let full = root.join(path);
                let file = fs::File::open(&full).map_err(|e| io_failed("reading", &full, &e))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                // Hashed as it is written: a file that changed since it was hashed fails the push.
                let mut reader = HashingReader::new(file.take(*size));
                tar.append_data(&mut header, path, &mut reader)
                    .map_err(|e| {
                        ReleaseError::Failed(format!(
                            "'{path}' changed while it was being pushed ({e}); push again"
                        ))
                    })?;
                if reader.finish().0 != *sha256 {
                    return Err(ReleaseError::Failed(format!(
                        "'{path}' changed while it was being pushed; push again"
                    )));
                }
            }
        }
    }
    let encoder = tar.into_inner().map_err(fail)?;
    let mut part = encoder.finish().map_err(fail)?;
    part.finish().map_err(fail)?;
    Ok(())
}
