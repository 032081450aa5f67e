//! The one manifest reader. Pull, the deploy agent, `release verify`, `rollback` and `list` all read a
//! release's manifest here, so that each is held to the same rules: the pointer's signature when keys
//! are trusted, a size bound before any byte is kept, the sha256 the pointer (or signature) names, the
//! release id it claims, and every path rule of `rules.rs`.

use std::fs;

use super::error::ReleaseError;
use super::format::{
    check_id, sha256_hex, Manifest, Node, Pointer, MANIFEST_LIMIT, POINTER_FORMAT,
};
use super::layout::Layout;
use super::store::Store;
use super::trust::{read_signature, Trust};

/// A manifest that passed every check: its bytes (kept beside the release), and its entries.
#[derive(Debug)]
pub struct Verified {
    pub bytes: Vec<u8>,
    pub nodes: Vec<Node>,
    /// The bytes are this machine's copy of the manifest (`.embark/manifests/<id>.json`).
    pub from_local_copy: bool,
}

impl Verified {
    /// The number of regular files.
    pub fn files(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::File { .. }))
            .count() as u64
    }
}

/// The pointer at the source; no pointer is its own clear error.
pub async fn read_pointer(store: &Store) -> Result<Pointer, ReleaseError> {
    match store.read_pointer().await? {
        Some((pointer, _)) => Ok(pointer),
        None => Err(ReleaseError::NotPublished {
            source_url: store.source.to_string(),
        }),
    }
}

/// The manifest `pointer` names, checked. With a `layout`, a local copy of it (or of the base of the
/// pointer's delta) saves fetching it whole.
pub async fn read(
    store: &Store,
    pointer: &Pointer,
    trust: &Trust,
    layout: Option<&Layout>,
) -> Result<Verified, ReleaseError> {
    trust.check(&store.source, pointer)?;
    let id = &pointer.release;
    let local = layout.and_then(|layout| {
        fs::read(layout.manifest_copy(id))
            .ok()
            .filter(|b| sha256_hex(b) == pointer.manifest_sha256)
    });
    let from_local_copy = local.is_some();
    let rebuilt = match (local, layout) {
        (Some(bytes), _) => Some(bytes),
        (None, Some(layout)) => from_delta(store, pointer, layout).await,
        (None, None) => None,
    };
    let bytes = match rebuilt {
        Some(bytes) => bytes,
        None => fetch(store, id)
            .await?
            .ok_or_else(|| ReleaseError::ManifestMissing {
                url: store.url(&store.source.manifest_key(id)),
                release: id.clone(),
            })?,
    };
    let mut verified = accept(store, pointer, bytes)?;
    verified.from_local_copy = from_local_copy;
    Ok(verified)
}

/// Bytes already fetched for `pointer` (a release named by id), held to the same checks as [`read`].
pub fn read_fetched(
    store: &Store,
    pointer: &Pointer,
    trust: &Trust,
    bytes: Vec<u8>,
) -> Result<Verified, ReleaseError> {
    trust.check(&store.source, pointer)?;
    accept(store, pointer, bytes)
}

/// The sha256 the pointer names, then the manifest's own claims and rules.
fn accept(store: &Store, pointer: &Pointer, bytes: Vec<u8>) -> Result<Verified, ReleaseError> {
    let id = &pointer.release;
    if sha256_hex(&bytes) != pointer.manifest_sha256 {
        return Err(ReleaseError::ManifestMismatch {
            release: id.clone(),
        });
    }
    let refused = |why: String| ReleaseError::Refused {
        release: id.clone(),
        source_url: store.source.to_string(),
        why,
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
    Ok(Verified {
        bytes,
        nodes,
        from_local_copy: false,
    })
}

/// `releases/<id>/manifest.json` as it is at the source, bounded; `None` when there is none (an
/// interrupted push, or no such release).
pub async fn fetch(store: &Store, id: &str) -> Result<Option<Vec<u8>>, ReleaseError> {
    let key = store.source.manifest_key(id);
    Ok(store
        .get_small(&key, MANIFEST_LIMIT)
        .await?
        .map(|(bytes, _)| bytes))
}

/// A release's manifest for `release list`: parsed, not validated (a list shows what is there, and
/// installing it checks everything). `None` for an interrupted push.
pub async fn summary(store: &Store, id: &str) -> Result<Option<Manifest>, ReleaseError> {
    let Some(bytes) = fetch(store, id).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ReleaseError::Failed(format!(
            "{} is not a valid manifest: {e}",
            store.url(&store.source.manifest_key(id))
        ))
    })
}

/// What a pointer to release `id` would say (its manifest's sha256, its signature), and the manifest
/// itself: for `release verify ID` and `release rollback --to ID`.
pub async fn pointer_for(store: &Store, id: &str) -> Result<(Pointer, Vec<u8>), ReleaseError> {
    check_id(id).map_err(|r| ReleaseError::Usage(r.0))?;
    let bytes = fetch(store, id).await?.ok_or_else(|| {
        ReleaseError::Usage(format!(
            "there is no release {id} at {} (see `embark release list`)",
            store.source
        ))
    })?;
    let pointer = Pointer {
        format: POINTER_FORMAT.into(),
        release: id.to_string(),
        manifest_sha256: sha256_hex(&bytes),
        time: String::new(),
        who: String::new(),
        message: String::new(),
        delta: None,
        signature: read_signature(store, id).await?,
        rollback_of: None,
    };
    Ok((pointer, bytes))
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
