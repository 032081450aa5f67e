//! The fleet's roster (docs/deploys.md "Watching a deploy"): every deploy agent keeps one small status
//! object at the source, `status/<instance-id>/<entry>`, where `<entry>` is the status itself (compact
//! JSON, base64url): `embark release status` learns the whole fleet from one list, whatever its size,
//! with no GET per instance. The object's last modification is when the agent was last heard from.
//!
//! An agent writes a new object at every change of state (then deletes the one before) and rewrites
//! the same object as a heartbeat when idle, at most once a minute ([`heartbeat`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::ReleaseError;
use super::store::{Condition, PutError, Store};

/// What an instance is doing, as its agent last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Idle, serving `serves` (it booted into it, or the agent started on it).
    Serving,
    /// Fetching and verifying `deploying`.
    Staging,
    /// `deploying` staged; waiting at the barrier for the fleet.
    Ready,
    /// Waiting for its wave's go.
    Waiting,
    /// Switching, running its hooks, validating.
    Switching,
    /// Switched to `serves` and validated it.
    Validated,
    /// `deploying` failed here (`reason`); `serves` is what it went back to.
    Failed,
    /// Went back to `serves` because `deploying` failed in the fleet.
    RolledBack,
    /// The barrier or its wave timed out: still on `serves`, tried again at the next poll.
    Held,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Serving => "serving",
            State::Staging => "staging",
            State::Ready => "ready",
            State::Waiting => "waiting",
            State::Switching => "switching",
            State::Validated => "validated",
            State::Failed => "failed",
            State::RolledBack => "rolled back",
            State::Held => "held",
        }
    }
}

/// One instance's status object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The release its `current` link names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
    /// The release being deployed (or that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<String>,
    pub state: State,
    /// Its wave and the number of waves, when the deploy has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<(usize, usize)>,
    /// Why it failed or was held (at most [`REASON`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When this state began (RFC 3339).
    pub since: String,
    /// The agent's version.
    pub version: String,
    /// Seconds between heartbeats: silent after three without one.
    pub heartbeat_s: u64,
}

/// The most of a reason a status object keeps (an S3 key is at most 1024 bytes).
const REASON: usize = 160;

/// How often an idle agent says it is alive: once a minute, or every twelve polls when that is rarer,
/// so that a heartbeat costs under a tenth of a request per poll interval (idle: ≤ 1.1 requests per
/// agent per interval, the pointer's conditional GET included, with room for the polls' jitter).
pub fn heartbeat(interval: Duration) -> Duration {
    (interval * 12).max(Duration::from_secs(60))
}

fn prefix(store: &Store) -> String {
    store.source.key("status/")
}

fn encode(entry: &Entry) -> Result<String, ReleaseError> {
    let json = serde_json::to_vec(entry)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode a status: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

fn decode(name: &str) -> Option<Entry> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(name)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Cuts `text` to at most `most` bytes, at a character boundary.
fn cut(text: &str, most: usize) -> String {
    let mut end = text.len().min(most);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// One agent's status object: the key written last, and when.
#[derive(Default)]
pub struct Roster {
    last: Mutex<Option<(String, Instant)>>,
}

impl Roster {
    /// Writes `entry` as this instance's status (the one before removed). Never fails the agent: a
    /// status not written is said in the log.
    pub async fn set(&self, store: &Store, mut entry: Entry) {
        if let Some(reason) = &entry.reason {
            entry.reason = Some(cut(reason, REASON));
        }
        let key = match encode(&entry) {
            Ok(name) => format!("{}{}/{name}", prefix(store), entry.instance),
            Err(err) => return tracing::warn!("{err}"),
        };
        let before = self.last.lock().ok().and_then(|last| last.clone());
        if before.as_ref().is_some_and(|(k, _)| *k == key) {
            return self.beat(store, &key).await;
        }
        self.beat(store, &key).await;
        if let Some((old, _)) = before {
            if let Err(err) = store.delete(&old).await {
                tracing::debug!("cannot remove the old status {old}: {err}");
            }
        }
    }

    /// The heartbeat: the same object written again when [`heartbeat`] has passed since the last write.
    pub async fn beat_if_due(&self, store: &Store, every: Duration) {
        let due = self
            .last
            .lock()
            .ok()
            .and_then(|last| last.clone())
            .filter(|(_, at)| at.elapsed() >= every);
        if let Some((key, _)) = due {
            self.beat(store, &key).await;
        }
    }

    async fn beat(&self, store: &Store, key: &str) {
        match store.put_bytes(key, Vec::new(), Condition::None).await {
            Ok(()) | Err(PutError::Conflict) => {
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((key.to_string(), Instant::now()));
                }
            }
            Err(PutError::Failed(err)) => {
                tracing::warn!("cannot write this instance's status: {err}")
            }
        }
    }

    /// At the agent's start: removes what an earlier run of this instance left (one list).
    pub async fn clear(&self, store: &Store, instance: &str) {
        let mine = format!("{}{instance}/", prefix(store));
        if let Ok(keys) = store.list_keys(&mine).await {
            for key in keys {
                let _ = store.delete(&key).await;
            }
        }
    }
}

/// An instance's last status and when it was written.
#[derive(Debug, Clone)]
pub struct Heard {
    pub entry: Entry,
    pub at: Option<SystemTime>,
}

impl Heard {
    /// Not heard from for three heartbeats.
    pub fn silent(&self, now: SystemTime) -> bool {
        let limit = Duration::from_secs(3 * self.entry.heartbeat_s.max(1));
        self.at
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|ago| ago > limit)
    }
}

/// Every instance's last status, from one list (paginated past 1,000 instances). Objects that are not
/// status entries are ignored; of two for one instance (a delete that failed), the later one counts.
pub async fn read(store: &Store) -> Result<BTreeMap<String, Heard>, ReleaseError> {
    let prefix = prefix(store);
    let mut fleet: BTreeMap<String, Heard> = BTreeMap::new();
    for (key, at) in store.list_modified(&prefix).await? {
        let Some((instance, name)) = key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let Some(entry) = decode(name).filter(|e| e.instance == instance) else {
            continue;
        };
        let newer = fleet
            .get(instance)
            .is_none_or(|seen| (seen.at, &seen.entry.since) < (at, &entry.since));
        if newer {
            fleet.insert(instance.to_string(), Heard { entry, at });
        }
    }
    Ok(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: Option<String>) -> Entry {
        Entry {
            instance: "i-0123456789abcdef0".into(),
            group: Some("web-production-eu-west-1".into()),
            serves: Some("20261206T101010Z-a1b2c3d4".into()),
            deploying: Some("20261206T111111Z-e5f6a7b8".into()),
            state: State::Failed,
            wave: Some((2, 3)),
            reason,
            since: "2026-12-06T11:12:13.456Z".into(),
            version: "0.9.0".into(),
            heartbeat_s: 100,
        }
    }

    #[test]
    fn an_entry_survives_its_key_and_fits_in_one() {
        let long = "é".repeat(400);
        let mut e = entry(Some(long));
        e.reason = e.reason.map(|r| cut(&r, REASON));
        let name = encode(&e).unwrap();
        assert!(name.len() < 900, "{}", name.len());
        assert!(!name.contains('/') && !name.contains('+'));
        assert_eq!(decode(&name), Some(e.clone()));
        assert_eq!(e.reason.unwrap().len(), REASON);
        assert_eq!(decode("not base64!"), None);
        assert_eq!(
            decode("aGVsbG8"),
            None,
            "base64 of something that is not an entry"
        );
    }

    #[test]
    fn silence_is_three_heartbeats() {
        let now = SystemTime::now();
        let heard = |ago: u64| Heard {
            entry: entry(None),
            at: Some(now - Duration::from_secs(ago)),
        };
        assert!(!heard(299).silent(now));
        assert!(heard(301).silent(now));
        assert_eq!(heartbeat(Duration::from_secs(2)), Duration::from_secs(60));
        assert_eq!(heartbeat(Duration::from_secs(10)), Duration::from_secs(120));
    }
}
