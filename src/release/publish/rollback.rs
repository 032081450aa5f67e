//! `embark release rollback`: point the source's `current` back at an earlier release, conditionally.
//! The agents follow through the barrier.

use crate::release::error::ReleaseError;
use crate::release::format::Pointer;
use crate::release::manifest;
use crate::release::store::{Condition, PutError, Store};
use crate::release::trust::Trust;

/// Point the source's `current` at `to` (default: the release before the current one), conditionally.
/// The release rolled back to keeps its own signature (`manifest.sig`), which must verify against
/// `trust` when trusted keys are configured here (and does on the instances, or they refuse it).
pub async fn rollback(
    store: &Store,
    to: Option<&str>,
    trust: &Trust,
) -> Result<(String, String), ReleaseError> {
    let (current, etag) = store.read_pointer().await?.ok_or_else(|| {
        ReleaseError::Failed(format!(
            "no release has been published at {}: nothing to roll back",
            store.source
        ))
    })?;
    let target = match to {
        Some(id) => id.to_string(),
        None => {
            let mut releases = crate::release::listing::remote_releases(store).await?;
            releases.sort_by(|a, b| (&a.created, &a.release).cmp(&(&b.created, &b.release)));
            let position = releases.iter().position(|r| r.release == current.release);
            match position {
                Some(i) if i > 0 => releases[i - 1].release.clone(),
                _ => {
                    return Err(ReleaseError::Failed(format!(
                        "there is no release before {} at {}: name one with --to",
                        current.release, store.source
                    )))
                }
            }
        }
    };
    if target == current.release {
        return Err(ReleaseError::Usage(format!(
            "{target} is already the current release"
        )));
    }
    // The release rolled back to is held to every rule a pull applies, its signature included.
    let (signed, bytes) = manifest::pointer_for(store, &target).await?;
    manifest::read_fetched(store, &signed, trust, bytes)?;
    let pointer = Pointer {
        time: crate::status::now(),
        who: super::push::who(),
        message: format!("rollback from {}", current.release),
        // Instances keep the releases they ran: the one rolled back to is usually still there.
        delta: None,
        ..signed
    };
    let body = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the pointer: {e}")))?;
    let key = store.source.pointer_key();
    match store.put_bytes(&key, body, Condition::Unchanged(etag)).await {
        Ok(()) => Ok((current.release, target)),
        Err(PutError::Conflict) => Err(ReleaseError::Failed(format!(
            "another push or rollback changed {} while this rollback ran; nothing was changed by this one: look at `embark release list` and try again",
            store.url(&key)
        ))),
        Err(PutError::Failed(err)) => Err(err),
    }
}
