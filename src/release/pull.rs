//! `embark release pull`: fetch the current release (bundle when cold, changed objects when warm),
//! verify every byte, stage it in a partial directory, move it into place and switch the link.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, TryStreamExt};
use serde::Serialize;

use super::error::{io_failed, ReleaseError};
use super::format::{sha256_hex, Manifest, Node, Pointer};
use super::local::{chown_tree, remove_tree, Layout};
use super::progress::{human_bytes, Progress};
use super::store::Store;
use super::unpack::{copy_hashed, create_dir, make_symlink, unpack};
use crate::config::{Hook, ReleaseFormat};
use crate::hooks::{self, HookEnv};

use super::store::FETCHES_AT_ONCE;
pub use super::store::MANIFEST_LIMIT;

pub struct Settings {
    pub layout: Layout,
    pub format: ReleaseFormat,
    pub keep: usize,
    pub owner: Option<(u32, u32)>,
    pub hooks: Vec<Hook>,
    pub role: Option<String>,
    /// Whose signatures are accepted, and whether one is required.
    pub trust: super::signing::Trust,
}

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
    /// `--plan`: what would happen.
    #[serde(skip)]
    pub plan: Option<String>,
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
}

/// The pointer at the source; no pointer is its own clear error.
pub async fn read_pointer(store: &Store) -> Result<Pointer, ReleaseError> {
    match store.read_pointer().await? {
        Some((pointer, _)) => Ok(pointer),
        None => Err(ReleaseError::Failed(format!(
            "no release has been published at {}: push one with `embark release push DIR --to {}`",
            store.source, store.source
        ))),
    }
}

/// The manifest of a release, checked against the pointer's sha256 and validated.
pub async fn read_manifest(
    store: &Store,
    pointer: &Pointer,
    layout: &Layout,
) -> Result<(Vec<u8>, Vec<Node>), ReleaseError> {
    let id = &pointer.release;
    let local = fs::read(layout.manifest_copy(id))
        .ok()
        .filter(|b| sha256_hex(b) == pointer.manifest_sha256);
    let rebuilt = match local {
        Some(bytes) => Some(bytes),
        None => from_delta(store, pointer, layout).await,
    };
    let bytes = match rebuilt {
        Some(bytes) => bytes,
        None => {
            let key = store.source.manifest_key(id);
            let (bytes, _) = store
                .get_small(&key, MANIFEST_LIMIT)
                .await?
                .ok_or_else(|| {
                    ReleaseError::Failed(format!(
                        "{} is missing: the release {id} is incomplete; push again",
                        store.url(&key)
                    ))
                })?;
            if sha256_hex(&bytes) != pointer.manifest_sha256 {
                return Err(ReleaseError::Failed(format!(
                    "the manifest of release {id} does not match the sha256 in the pointer: the source is corrupt or was changed by hand; push again"
                )));
            }
            bytes
        }
    };
    let refused = |why: String| {
        ReleaseError::Failed(format!(
            "refusing release {id} from {}: {why}; nothing was written",
            store.source
        ))
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| refused(format!("its manifest is not valid ({e})")))?;
    if manifest.release != *id {
        return Err(refused(format!(
            "its manifest names release {}",
            manifest.release
        )));
    }
    let nodes = manifest.validate().map_err(|r| refused(r.0))?;
    Ok((bytes, nodes))
}

/// The manifest rebuilt from the pointer's delta, when this instance holds the delta's base manifest.
/// None (and a warning when the delta is bad) sends the pull to the whole manifest: a delta only
/// saves bytes, and what it rebuilds must still be the manifest the pointer names.
async fn from_delta(store: &Store, pointer: &Pointer, layout: &Layout) -> Option<Vec<u8>> {
    let delta = pointer.delta.as_ref()?;
    let base = fs::read(layout.manifest_copy(&delta.base))
        .ok()
        .filter(|b| sha256_hex(b) == delta.base_sha256)?;
    let key = store.source.delta_key(&pointer.release);
    let bad = |why: String| {
        tracing::warn!(
            "the manifest delta {} is not usable ({why}); fetching the whole manifest",
            store.url(&key)
        );
        None
    };
    let bytes = match store.get_small(&key, delta.size).await {
        Ok(Some((bytes, _))) => bytes,
        Ok(None) => return bad("it is missing".into()),
        Err(err) => return bad(err.to_string()),
    };
    if sha256_hex(&bytes) != delta.sha256 {
        return bad("it does not match the sha256 in the pointer".into());
    }
    let size = delta.manifest_size;
    let rebuilt = tokio::task::spawn_blocking(move || super::delta::decode(&base, &bytes, size))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    match rebuilt {
        Ok(manifest) if sha256_hex(&manifest) == pointer.manifest_sha256 => Some(manifest),
        Ok(_) => bad("what it rebuilds is not the manifest the pointer names".into()),
        Err(err) => bad(err.to_string()),
    }
}

/// What the source says is current: an embark pointer, or a pull-deploy `latest-deploy`.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub pointer: Option<Pointer>,
    pub legacy: Option<super::legacy::Latest>,
}

pub async fn read_target(store: &Store, format: ReleaseFormat) -> Result<Target, ReleaseError> {
    match format {
        ReleaseFormat::Embark => {
            let pointer = read_pointer(store).await?;
            Ok(Target {
                id: pointer.release.clone(),
                pointer: Some(pointer),
                legacy: None,
            })
        }
        ReleaseFormat::PullDeploy => {
            let latest = super::legacy::read_latest(store).await?;
            Ok(Target {
                id: latest.id(),
                pointer: None,
                legacy: Some(latest),
            })
        }
    }
}

pub async fn pull(
    store: &Store,
    settings: &Settings,
    http: &reqwest::Client,
    plan: bool,
) -> Result<Pulled, ReleaseError> {
    let target = read_target(store, settings.format).await?;
    let _lock = if plan {
        None
    } else {
        Some(settings.layout.lock().await?)
    };
    if !plan {
        finish_interrupted(settings, http).await?;
    }
    let mut pulled = stage_target(store, settings, &target, plan).await?;
    if pulled.already_current || pulled.plan.is_some() {
        return Ok(pulled);
    }
    switch_to(settings, &mut pulled, http).await?;
    Ok(pulled)
}

/// What an interrupted switch left undone (the caller holds the lock): the record repaired, and the
/// hooks of the current release run if they never did.
pub async fn finish_interrupted(
    settings: &Settings,
    http: &reqwest::Client,
) -> Result<(), ReleaseError> {
    let layout = &settings.layout;
    let Some(due) = layout.repair()? else {
        return Ok(());
    };
    tracing::warn!(
        release = %due,
        "the hooks of release {due} did not run after its switch (interrupted): running them now"
    );
    let previous = layout.state().previous;
    let ran = run_hooks(settings, &due, previous.as_deref(), http).await;
    layout.hooks_ran(&due)?;
    ran.map(|_| ())
}

/// A release already under `releases/<id>` is used only when its manifest copy is the one the pointer
/// names and its tree matches that manifest; otherwise it is fetched again.
fn verified_local(layout: &Layout, id: &str, pointer: &Pointer) -> bool {
    let check = || -> Result<(), String> {
        let bytes = fs::read(layout.manifest_copy(id)).map_err(|e| e.to_string())?;
        if sha256_hex(&bytes) != pointer.manifest_sha256 {
            return Err("its manifest copy is not the one the pointer names".into());
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let nodes = manifest.validate().map_err(|r| r.0)?;
        layout.matches(id, &nodes)
    };
    match check() {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(release = %id, "the local copy of release {id} cannot be used ({why}); fetching it again");
            false
        }
    }
}

/// The pull-deploy layout: every file fetched and hashed (it has no hashes to reuse anything by).
async fn stage_legacy(
    store: &Store,
    settings: &Settings,
    latest: &super::legacy::Latest,
    mut pulled: Pulled,
    staged: bool,
    plan: bool,
) -> Result<Pulled, ReleaseError> {
    let layout = &settings.layout;
    if plan {
        pulled.plan = Some(format!(
            "would switch {} from {} to the pull-deploy release {} ({} files): fetch every file",
            layout.link,
            pulled.previous.as_deref().unwrap_or("nothing"),
            latest.stamp,
            latest.count
        ));
        return Ok(pulled);
    }
    if staged {
        return Ok(pulled);
    }
    let partial = layout.partial(&pulled.release);
    let _ = remove_tree(&partial);
    let result = async {
        fs::create_dir(&partial).map_err(|e| io_failed("creating", &partial, &e))?;
        let (manifest, files, bytes) = super::legacy::stage(store, latest, &partial).await?;
        pulled.fetched_objects = files;
        pulled.fetched_bytes = bytes;
        finish_stage(settings, &[], &partial)?;
        layout.commit(&pulled.release, &manifest)
    }
    .await;
    if let Err(err) = result {
        let _ = remove_tree(&partial);
        return Err(err);
    }
    Ok(pulled)
}

/// Fetch, verify and move the target release into `releases/<id>` (the caller holds the lock), unless
/// it is current already or staged already. Nothing is switched.
pub async fn stage_target(
    store: &Store,
    settings: &Settings,
    target: &Target,
    plan: bool,
) -> Result<Pulled, ReleaseError> {
    let layout = &settings.layout;
    let id = target.id.clone();
    match &target.pointer {
        Some(pointer) => settings.trust.check(&store.source, pointer)?,
        None if settings.trust.required => {
            return Err(ReleaseError::Failed(format!(
                "refusing release {id} from {}: a pull-deploy release cannot be signed, and [release] require_signature is on; current is untouched",
                store.source
            )))
        }
        None => {}
    }
    let current = layout.current();
    let present = layout.release(&id).is_dir() && layout.manifest_copy(&id).is_file();
    let staged = match &target.pointer {
        Some(pointer) => present && verified_local(layout, &id, pointer),
        None => present,
    };
    if current.as_deref() == Some(id.as_str()) && staged {
        return Ok(Pulled {
            release: id,
            already_current: true,
            ..Pulled::default()
        });
    }
    if let Some(latest) = &target.legacy {
        let pulled = Pulled {
            release: id,
            previous: current,
            files: latest.count,
            ..Pulled::default()
        };
        return stage_legacy(store, settings, latest, pulled, staged, plan).await;
    }
    let pointer = target
        .pointer
        .as_ref()
        .ok_or_else(|| ReleaseError::Failed("no pointer to stage".into()))?;
    let (manifest_bytes, nodes) = read_manifest(store, pointer, layout).await?;
    let files = nodes
        .iter()
        .filter(|n| matches!(n, Node::File { .. }))
        .count() as u64;
    // Where each content already is here: read from every local manifest, so only when needed (a
    // release already staged, as the deploy agent finds it after its barrier, needs none of it).
    let local = if plan || !staged {
        layout.local_objects()
    } else {
        HashMap::new()
    };
    let mut pulled = Pulled {
        release: id.clone(),
        previous: current,
        files,
        ..Pulled::default()
    };
    if plan {
        pulled.plan = Some(plan_text(&pulled, &nodes, &local, staged, &layout.link));
        return Ok(pulled);
    }
    if !staged {
        let partial = layout.partial(&id);
        let result = stage(store, settings, &nodes, &partial, &local, &mut pulled).await;
        if let Err(err) = result {
            let _ = remove_tree(&partial);
            return Err(err);
        }
        if let Err(err) = layout.commit(&id, &manifest_bytes) {
            let _ = remove_tree(&partial);
            return Err(err);
        }
    }
    Ok(pulled)
}

/// Switch the link to the staged release, run the hooks, prune (the caller holds the lock).
pub async fn switch_to(
    settings: &Settings,
    pulled: &mut Pulled,
    http: &reqwest::Client,
) -> Result<(), ReleaseError> {
    let layout = &settings.layout;
    let id = pulled.release.clone();
    pulled.previous = layout.switch(&id)?;
    tracing::info!(release = %id, "switched {} to release {id}", layout.link);
    let hook_result = run_hooks(settings, &id, pulled.previous.as_deref(), http).await;
    layout.hooks_ran(&id)?;
    pulled.hooks_run = hook_result.as_ref().map_or(0, |n| *n);
    pulled.pruned = layout.prune(settings.keep);
    hook_result?;
    Ok(())
}

fn plan_text(
    pulled: &Pulled,
    nodes: &[Node],
    local: &HashMap<String, PathBuf>,
    staged: bool,
    link: &str,
) -> String {
    let head = format!(
        "would switch {link} from {} to release {} ({} files)",
        pulled.previous.as_deref().unwrap_or("nothing"),
        pulled.release,
        pulled.files
    );
    if staged {
        return format!("{head}: already staged here, nothing to fetch");
    }
    if local.is_empty() {
        return format!("{head}: fetch the bundle (no earlier release here)");
    }
    let (mut fetch, mut bytes, mut reuse) = (0, 0, 0);
    let mut seen = HashSet::new();
    for node in nodes {
        if let Node::File { sha256, size, .. } = node {
            if local.contains_key(sha256) {
                reuse += 1;
            } else if seen.insert(sha256) {
                fetch += 1;
                bytes += size;
            }
        }
    }
    format!(
        "{head}: fetch {fetch} objects ({}), reuse {reuse} local files",
        human_bytes(bytes)
    )
}

async fn run_hooks(
    settings: &Settings,
    id: &str,
    previous: Option<&str>,
    http: &reqwest::Client,
) -> Result<usize, ReleaseError> {
    let dir = settings.layout.release(id);
    let env = HookEnv {
        vars: vec![
            ("EMBARK_RELEASE", id.to_string()),
            (
                "EMBARK_PREVIOUS_RELEASE",
                previous.unwrap_or("").to_string(),
            ),
            ("EMBARK_ROLE", settings.role.clone().unwrap_or_default()),
            ("EMBARK_RELEASE_DIR", dir.display().to_string()),
        ],
        dir: &dir,
    };
    let selected = hooks::for_role(&settings.hooks, settings.role.as_deref());
    for (index, hook) in selected.iter().enumerate() {
        tracing::info!(release = %id, "running hook {}", hooks::describe(hook));
        if let Err(why) = hooks::run(hook, &env, http).await {
            return Err(ReleaseError::Failed(format!(
                "switched {} to release {id}, but the hook {} failed: {why} ({index} of {} hooks had run)",
                settings.layout.link,
                hooks::describe(hook),
                selected.len()
            )));
        }
    }
    Ok(selected.len())
}

/// Fetch and verify the release into `partial`, then give it its modes and owner and sync it.
async fn stage(
    store: &Store,
    settings: &Settings,
    nodes: &[Node],
    partial: &Path,
    local: &HashMap<String, PathBuf>,
    pulled: &mut Pulled,
) -> Result<(), ReleaseError> {
    let _ = remove_tree(partial);
    fs::create_dir(partial).map_err(|e| io_failed("creating", partial, &e))?;
    if local.is_empty() {
        match fetch_bundle(store, &pulled.release, nodes, partial).await {
            Ok(bytes) => pulled.bundle_bytes = bytes,
            Err(Fetch::Fatal(err)) => return Err(err),
            Err(Fetch::Transport(why)) => {
                tracing::warn!(
                    "fetching the bundle failed ({why}); fetching the release file by file instead"
                );
                remove_tree(partial).map_err(|e| io_failed("removing", partial, &e))?;
                fs::create_dir(partial).map_err(|e| io_failed("creating", partial, &e))?;
                fetch_objects(store, nodes, partial, local, pulled).await?;
            }
        }
    } else {
        fetch_objects(store, nodes, partial, local, pulled).await?;
    }
    finish_stage(settings, nodes, partial)
}

/// Directory modes, the owner, and everything on disk before the rename.
fn finish_stage(settings: &Settings, nodes: &[Node], partial: &Path) -> Result<(), ReleaseError> {
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
    if let Some((uid, gid)) = settings.owner {
        chown_tree(partial, uid, gid)?;
    }
    let dir = fs::File::open(partial).map_err(|e| io_failed("opening", partial, &e))?;
    nix::unistd::syncfs(&dir).map_err(|e| io_failed("syncing", partial, &io::Error::from(e)))?;
    Ok(())
}

enum Fetch {
    /// The bundle could not be read from S3: the release can still be fetched object by object.
    Transport(String),
    /// Refused or corrupt, or this machine failed: stop.
    Fatal(ReleaseError),
}

/// Reads what the download task sends; an early end is reported by the task, not here.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            // This reader runs on a blocking thread (spawn_blocking): waiting here is allowed.
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

async fn fetch_bundle(
    store: &Store,
    id: &str,
    nodes: &[Node],
    partial: &Path,
) -> Result<u64, Fetch> {
    let key = store.source.bundle_key(id);
    let (mut body, size) = store
        .get_stream(&key)
        .await
        .map_err(|e| Fetch::Transport(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let by_path: HashMap<String, Node> = nodes
        .iter()
        .map(|n| (n.path().to_string(), n.clone()))
        .collect();
    let dest = partial.to_path_buf();
    let release = id.to_string();
    let unpack = tokio::task::spawn_blocking(move || {
        unpack(
            ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
            &by_path,
            &dest,
            &release,
        )
    });
    let mut progress = Progress::new("fetching the bundle", size);
    let mut received = 0u64;
    let mut transport = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break; // the unpacker stopped; its error says why
                }
            }
            Err(err) => {
                transport = Some(crate::output::error_chain(&err));
                break;
            }
        }
    }
    drop(tx);
    progress.finish();
    let unpacked = unpack
        .await
        .map_err(|e| Fetch::Fatal(ReleaseError::Failed(format!("unpacking stopped: {e}"))))?;
    if let Some(why) = transport {
        return Err(Fetch::Transport(why));
    }
    unpacked.map_err(Fetch::Fatal)?;
    Ok(received)
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
    nodes: &[Node],
    partial: &Path,
    local: &HashMap<String, PathBuf>,
    pulled: &mut Pulled,
) -> Result<(), ReleaseError> {
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
    let id = pulled.release.clone();
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
    if let Ok((fetched, bytes, reused)) = stats.into_inner() {
        pulled.fetched_objects = fetched;
        pulled.fetched_bytes = bytes;
        pulled.reused_files = reused;
    }
    Ok(())
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
        return Err(ReleaseError::Failed(format!(
            "'{path}' of release {id} does not match its sha256 in the manifest ({} holds more than the {size} bytes the manifest promises): the source is corrupt; nothing was switched",
            store.url(&key)
        )));
    }
    if got != *sha256 || total != *size {
        return Err(ReleaseError::Failed(format!(
            "'{path}' of release {id} does not match its sha256 in the manifest ({} holds {got}): the source is corrupt; nothing was switched",
            store.url(&key)
        )));
    }
    fs::set_permissions(target, fs::Permissions::from_mode(*mode))
        .map_err(|e| io_failed("setting the mode of", target, &e))?;
    Ok(total)
}
