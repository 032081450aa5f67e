//! A bad release is bad for the fleet (DESIGN.md "The deploy agent"): the instance whose validation
//! failed records it at the source (`failed/<id>.json`, first writer wins) and moves the pointer back
//! to the release it rolled back to, conditionally on the pointer it deployed (a newer push wins).
//! Agents then switch back without waiting for the barrier, boots and pulls install the good release,
//! and `release list` shows the failure. See docs/deploys.md for the failure modes.

use serde::{Deserialize, Serialize};

use super::error::ReleaseError;
use super::format::Pointer;
use super::manifest;
use super::store::{Condition, PutError, Store};

/// What the source says about a release that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub release: String,
    pub instance: String,
    pub reason: String,
    pub time: String,
    /// The release the failing instance went back to (and the pointer was moved to).
    pub rolled_back_to: Option<String>,
}

/// A failure record is a few hundred bytes; nothing larger is read.
const RECORD_LIMIT: u64 = 64 << 10;

fn key(store: &Store, id: &str) -> String {
    store.source.key(&format!("failed/{id}.json"))
}

/// The record of `id`'s failure, if any (an unreadable one counts as none: it only saves work).
/// Asked with a list of its exact key (a 200 either way, as cheap as a GET), and read only if there.
pub async fn read(store: &Store, id: &str) -> Result<Option<FailureRecord>, ReleaseError> {
    let key = key(store, id);
    if !store.list_keys(&key).await?.contains(&key) {
        return Ok(None);
    }
    let Some((bytes, _)) = store.get_small(&key, RECORD_LIMIT).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Every failure recorded at the source (for `release list`), by release.
pub async fn all(
    store: &Store,
) -> Result<std::collections::BTreeMap<String, FailureRecord>, ReleaseError> {
    let keys = store.list_keys(&store.source.key("failed/")).await?;
    let mut found = std::collections::BTreeMap::new();
    for key in keys {
        let Some(id) = key
            .rsplit('/')
            .next()
            .and_then(|name| name.strip_suffix(".json"))
        else {
            continue;
        };
        if super::format::check_id(id).is_err() {
            continue;
        }
        if let Some(record) = read(store, id).await? {
            found.insert(id.to_string(), record);
        }
    }
    Ok(found)
}

/// Records the failure at the source (the first instance's record stays) and moves the pointer back
/// to `record.rolled_back_to` if it still names the failed release with `etag`. Returns what was
/// done, for the report.
pub async fn publish(
    store: &Store,
    record: &FailureRecord,
    pointer_etag: Option<&str>,
) -> Result<String, ReleaseError> {
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the failure record: {e}")))?;
    match store
        .put_bytes(&key(store, &record.release), body, Condition::Absent)
        .await
    {
        Ok(()) | Err(PutError::Conflict) => {}
        Err(PutError::Failed(err)) => return Err(err),
    }
    let (Some(to), Some(etag)) = (&record.rolled_back_to, pointer_etag) else {
        return Ok(format!(
            "release {} recorded as failed at {}",
            record.release, store.source
        ));
    };
    let (pointer, _) = manifest::pointer_for(store, to).await?;
    let pointer = super::format::Pointer {
        time: crate::status::now(),
        who: record.instance.clone(),
        message: format!(
            "automatic rollback from {}: {}",
            record.release, record.reason
        ),
        rollback_of: Some(record.release.clone()),
        ..pointer
    };
    let bytes = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the pointer: {e}")))?;
    let condition = Condition::Unchanged(etag.to_string());
    match store
        .put_bytes(&store.source.pointer_key(), bytes, condition)
        .await
    {
        Ok(()) => Ok(format!(
            "release {} recorded as failed at {}; the pointer moved back to {to}",
            record.release, store.source
        )),
        // A newer push (or another instance's rollback) came first: it stands.
        Err(PutError::Conflict) => Ok(format!(
            "release {} recorded as failed at {}; the pointer had already moved on",
            record.release, store.source
        )),
        Err(PutError::Failed(err)) => Err(err),
    }
}

/// What a record means for its release: nothing (none), a refusal (no instance went back anywhere),
/// or the pointer of the release its instance went back to, said in a warning (a boot after a bad
/// deploy installs the good release). Whether a record is worth asking is the install pipeline's
/// (`Pipeline::avoid`).
pub async fn instead(
    store: &Store,
    record: Option<FailureRecord>,
) -> Result<Option<Pointer>, ReleaseError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let Some(to) = &record.rolled_back_to else {
        return Err(ReleaseError::FailedInFleet {
            release: record.release,
            instance: record.instance,
            reason: record.reason,
        });
    };
    tracing::warn!(
        release = %record.release,
        "release {} failed on {} at {} ({}): installing {to}, the release it went back to",
        record.release,
        record.instance,
        record.time,
        record.reason
    );
    let (pointer, _) = manifest::pointer_for(store, to).await?;
    Ok(Some(pointer))
}
