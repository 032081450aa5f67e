//! Run-once hooks (`[[release.hooks]] once = true`, docs/deploys.md "Run-once hooks"): one instance
//! per deploy runs the hook — `php artisan migrate --force` — and the others wait for its outcome.
//!
//! At the source, per deploy (`once/<release>/<token>/`) and per hook (its place among the release
//! hooks, the same on every instance of one configuration):
//! - `hook-<n>.lease`: who runs it, until when. Taken by a conditional create (`If-None-Match: *`),
//!   renewed by its holder every sixth of `[release] once_lease` (`If-Match` on the lease it read), and
//!   taken over, with `If-Match` on the expired lease's ETag, when its holder stopped renewing it: the
//!   hook then runs again (at least once, not exactly once: the hooks must be idempotent, as Laravel's
//!   and Doctrine's migrations are).
//! - `hook-<n>.json`: its outcome (ok or failed, by whom, when, the last 2 KiB of its output). An
//!   instance that finds it does not run the hook; a failed one fails it too.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::ReleaseError;
use super::store::{Condition, PutError, Store};

/// Who asks, for which deploy: set by the agent and the boot of an instance in a group. Without it
/// (no group, `release pull` by hand) an instance is its own leader.
#[derive(Debug, Clone)]
pub struct Scope {
    pub instance: String,
    /// The deploy token (the pointer's release and time).
    pub token: String,
    pub lease: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Unix milliseconds after which another instance may take it.
    expires_ms: u64,
}

/// A run-once hook's outcome, as recorded at the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    pub hook: String,
    pub instance: String,
    pub time: String,
    /// The end of its output (at most 2 KiB); on a failure, why.
    pub output: String,
}

/// What became of the hook for this instance.
pub enum Ran {
    /// This instance was the leader: the hook ran here, with this outcome (recorded at the source).
    Here(Result<String, String>),
    /// Another instance ran it (or had run it before): its recorded outcome.
    Elsewhere(Outcome),
}

/// An outcome or a lease is a few hundred bytes; anything larger is not ours.
const RECORD_LIMIT: u64 = 64 << 10;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `once/<release>/<token>/hook-<n>` (without the extension).
fn base(store: &Store, scope: &Scope, release: &str, index: usize) -> String {
    store
        .source
        .key(&format!("once/{release}/{}/hook-{index}", scope.token))
}

/// Runs `work` here if this instance wins the lease, or waits for the leader's outcome (taking over
/// when its lease expires). Bounded: gives up when no outcome appears within three times the hook's
/// timeout and the lease.
pub async fn run<F, Fut>(
    store: &Store,
    scope: &Scope,
    release: &str,
    index: usize,
    hook: &str,
    timeout: Duration,
    work: F,
) -> Result<Ran, ReleaseError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let base = base(store, scope, release, index);
    let outcome_key = format!("{base}.json");
    let lease_key = format!("{base}.lease");
    let limit = 3 * (timeout + scope.lease);
    let started = Instant::now();
    let mut said_waiting = false;
    let mut lease_checked: Option<Instant> = None;
    loop {
        if let Some(outcome) = read_outcome(store, &outcome_key).await? {
            return Ok(Ran::Elsewhere(outcome));
        }
        // The lease is looked at first, then every sixth of it (the outcome every second).
        let look = lease_checked.is_none_or(|at| at.elapsed() >= scope.lease / 6);
        if look {
            lease_checked = Some(Instant::now());
            if let Some(previous) = take_lease(store, scope, &lease_key).await? {
                if let Some(holder) = previous {
                    tracing::warn!(
                        release = %release,
                        "the run-once hook {hook}: {holder} stopped renewing its lease; running it here"
                    );
                }
                let result = lead(store, scope, &lease_key, work).await;
                let outcome = Outcome {
                    ok: result.is_ok(),
                    hook: hook.to_string(),
                    instance: scope.instance.clone(),
                    time: crate::status::now(),
                    output: match &result {
                        Ok(out) | Err(out) => out.clone(),
                    },
                };
                record(store, &outcome_key, &outcome).await?;
                return Ok(Ran::Here(result));
            }
            if !said_waiting {
                tracing::info!(release = %release, "the run-once hook {hook} runs on another instance: waiting for its outcome");
                said_waiting = true;
            }
        }
        if started.elapsed() >= limit {
            return Err(ReleaseError::Failed(format!(
                "the run-once hook {hook} of release {release} has no outcome at {} after {}: no instance finished it",
                store.url(&outcome_key),
                humantime::format_duration(limit)
            )));
        }
        let pause = 800 + rand::random::<u64>() % 400;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn read_outcome(store: &Store, key: &str) -> Result<Option<Outcome>, ReleaseError> {
    let Some((bytes, _)) = store.get_small(key, RECORD_LIMIT).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ReleaseError::Failed(format!(
            "{} is not a run-once outcome ({e}); remove it to run the hook again",
            store.url(key)
        ))
    })
}

/// `Some(None)`: the lease was free and is ours; `Some(Some(holder))`: taken over from `holder`, whose
/// lease expired (or our own, left by an earlier run of this instance); `None`: someone holds it.
async fn take_lease(
    store: &Store,
    scope: &Scope,
    key: &str,
) -> Result<Option<Option<String>>, ReleaseError> {
    let ours = serde_json::to_vec(&Lease {
        holder: scope.instance.clone(),
        expires_ms: unix_ms() + scope.lease.as_millis() as u64,
    })
    .map_err(|e| ReleaseError::Failed(format!("cannot encode a lease: {e}")))?;
    let (condition, holder) = match store.get_small(key, RECORD_LIMIT).await? {
        None => (Condition::Absent, None),
        Some((bytes, etag)) => match serde_json::from_slice::<Lease>(&bytes) {
            Ok(lease) if lease.holder != scope.instance && lease.expires_ms > unix_ms() => {
                return Ok(None)
            }
            Ok(lease) => (Condition::Unchanged(etag), Some(lease.holder)),
            Err(_) => (
                Condition::Unchanged(etag),
                Some("(unreadable lease)".into()),
            ),
        },
    };
    match store.put_bytes(key, ours, condition).await {
        Ok(()) => Ok(Some(holder)),
        Err(PutError::Conflict) => Ok(None),
        Err(PutError::Failed(err)) => Err(err),
    }
}

/// Runs `work` while renewing the lease every sixth of it. A renewal that finds the lease taken over
/// (this instance was thought dead) is said, and the hook goes on: at least once.
async fn lead<F, Fut>(store: &Store, scope: &Scope, key: &str, work: F) -> Result<String, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let renew = async {
        loop {
            tokio::time::sleep(scope.lease / 6).await;
            if let Err(why) = renew(store, scope, key).await {
                tracing::warn!("renewing the run-once lease {}: {why}", store.url(key));
            }
        }
    };
    tokio::select! {
        result = work() => result,
        () = renew => Err("the lease's renewal stopped".into()),
    }
}

async fn renew(store: &Store, scope: &Scope, key: &str) -> Result<(), String> {
    let Some((bytes, etag)) = store
        .get_small(key, RECORD_LIMIT)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err("it is gone".into());
    };
    match serde_json::from_slice::<Lease>(&bytes) {
        Ok(lease) if lease.holder == scope.instance => {}
        Ok(lease) => {
            return Err(format!(
                "{} took it over (the hook may run twice)",
                lease.holder
            ))
        }
        Err(e) => return Err(format!("it is unreadable ({e})")),
    }
    let ours = serde_json::to_vec(&Lease {
        holder: scope.instance.clone(),
        expires_ms: unix_ms() + scope.lease.as_millis() as u64,
    })
    .map_err(|e| e.to_string())?;
    match store.put_bytes(key, ours, Condition::Unchanged(etag)).await {
        Ok(()) => Ok(()),
        Err(PutError::Conflict) => Err("it was taken over while being renewed".into()),
        Err(PutError::Failed(err)) => Err(err.to_string()),
    }
}

async fn record(store: &Store, key: &str, outcome: &Outcome) -> Result<(), ReleaseError> {
    let body = serde_json::to_vec_pretty(outcome)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode an outcome: {e}")))?;
    match store.put_bytes(key, body, Condition::None).await {
        Ok(()) | Err(PutError::Conflict) => Ok(()),
        Err(PutError::Failed(err)) => Err(err),
    }
}
