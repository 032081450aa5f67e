//! The fleet barrier (docs/cli.md, "The barrier at fleet scale"): every InService instance of the group
//! stages a release and writes `ready/<id>/<instance-id>`; the fleet switches together once all are
//! ready, or at the barrier's deadline (switch or hold). S3 carries it; Auto Scaling is asked rarely.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{jittered, notify, record, Agent, Stop};
use crate::config::BarrierTimeout;
use crate::release::error::ReleaseError;
use crate::release::install::Target;
use crate::release::store::{Condition, PutError};
use crate::status::{Outcome, Step};

pub(super) enum Held {
    Yes,
    No,
}

/// What the barrier says now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Barrier {
    /// Every InService instance of the group has its ready marker.
    Ready,
    Wait,
    /// The deadline passed; these are not ready.
    TimedOut(Vec<String>),
}

/// Instances that left the group (or are not InService) are not waited for: a terminated instance
/// can never block a deploy.
fn barrier(
    in_service: &BTreeSet<String>,
    ready: &BTreeSet<String>,
    waited: Duration,
    deadline: Duration,
) -> Barrier {
    let missing: Vec<String> = in_service.difference(ready).cloned().collect();
    if missing.is_empty() {
        Barrier::Ready
    } else if waited >= deadline {
        Barrier::TimedOut(missing)
    } else {
        Barrier::Wait
    }
}

/// Waits until every InService instance of the group is ready, or the barrier deadline passes
/// (then switch or hold, per `on_barrier_timeout`, notified once per release). The protocol (docs/cli.md,
/// "The barrier at fleet scale"): S3 carries it, Auto Scaling is asked rarely. Also says whether this
/// agent wrote `_go` (then it cleans the fleet's stale markers after the switch), and the members the
/// waves are made of.
pub(super) async fn barrier_step(
    agent: &Agent<'_>,
    group: &str,
    target: &Target,
    stop: &mut Stop,
    steps: &mut Vec<Step>,
) -> Result<(Held, bool, BTreeSet<String>), ReleaseError> {
    let t = Instant::now();
    let id = target.id();
    let id = id.as_str();
    let mut fleet = Fleet::new(agent, group, id, target.token(), Gate::Staged);
    loop {
        match fleet.check(t.elapsed()).await? {
            Barrier::Ready => {
                let done = format!(
                    "every InService instance of {group} is ready (Auto Scaling asked {} times by this agent)",
                    fleet.asg_calls
                );
                tracing::info!(release = %id, "{done}");
                record(steps, "barrier", t, Outcome::Ok, done);
                return Ok((Held::No, fleet.wrote_go, fleet.opened_with()));
            }
            Barrier::TimedOut(missing) => {
                let held = barrier_timed_out(agent, id, &missing).await;
                let outcome = match held {
                    (Held::Yes, _) => Outcome::Failed,
                    (Held::No, _) => Outcome::Ok,
                };
                record(steps, "barrier", t, outcome, held.1);
                return Ok((held.0, false, fleet.opened_with()));
            }
            Barrier::Wait => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(GO_POLL)) => {},
            _ = stop.changed() => return Err(ReleaseError::Failed("stopped while waiting at the barrier".into())),
        }
    }
}

/// A go object is a few hundred bytes, plus the barrier's member list (20 bytes an instance).
const GO_LIMIT: u64 = 1 << 20;

/// `ready/<id>/v-<token>/`: the validated markers of one deploy.
fn validated_dir(agent: &Agent<'_>, id: &str, token: &str) -> String {
    agent.store.source.key(&format!("ready/{id}/v-{token}/"))
}

/// `ready/<id>/v-<token>/<instance-id>`: this instance validated `id` in this deploy (or serves it
/// already: it booted into it).
pub(super) async fn write_validated(
    agent: &Agent<'_>,
    id: &str,
    token: &str,
) -> Result<(), ReleaseError> {
    let key = format!("{}{}", validated_dir(agent, id, token), agent.instance_id);
    put_marker(agent, &key).await
}

/// How often a waiting agent looks for `ready/<id>/_go` (one small GET).
const GO_POLL: Duration = Duration::from_secs(1);
/// Every agent lists the markers once, right after writing its own: S3 lists are strongly consistent
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/Welcome.html#ConsistencyModel>), so of
/// agents that write then list, the last to list sees every marker, even when the last ones are ready
/// at the same moment. Listing again is a safety net for the agent that saw the fleet ready dying
/// before writing `_go`, and for members that left the group: every `LIST_EVERY` a waiting agent lists
/// with probability `SAFETY_LISTS` / members, so the whole fleet lists about twice per period (a list of
/// a large fleet's markers is the costliest request of the barrier).
const LIST_EVERY: Duration = Duration::from_secs(5);
const SAFETY_LISTS: u64 = 2;
/// The shared membership is asked of Auto Scaling again when it is older than this and the barrier
/// still waits (an instance may have left the group).
const MEMBERS_FRESH: Duration = Duration::from_secs(15);
/// An agent that did not take the lease to ask for the first membership looks for the asker's answer
/// this often, for this long.
const MEMBERS_POLL: Duration = Duration::from_millis(300);
const MEMBERS_WAIT: Duration = Duration::from_secs(5);
/// Then (or when the lease cannot be written), before asking Auto Scaling itself, an agent waits up to
/// this much per ready agent (at most [`MEMBERS_SPREAD_MAX`]).
const MEMBERS_SPREAD: Duration = Duration::from_millis(150);
const MEMBERS_SPREAD_MAX: Duration = Duration::from_secs(3);
/// Auto Scaling calls one agent makes for one deploy, at most (its Describe calls share one
/// account-wide throttle with every other tool).
const ASG_CALLS_PER_DEPLOY: u32 = 3;

/// Between `_go` being written and the fleet switching: time for every waiting agent (looking once a
/// second) to see it, so that they switch together.
const GO_LEAD: Duration = Duration::from_secs(2);

/// `ready/<id>/_go-<token>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Go {
    by: String,
    switch_at_ms: u64,
    /// The barrier's go: the members it saw ready, from which every agent computes the same waves.
    #[serde(default)]
    members: BTreeSet<String>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ready/<id>/_members`: the group's InService instances as one agent asked Auto Scaling, for all.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Members {
    group: String,
    /// Unix seconds when Auto Scaling was asked.
    asked: u64,
    in_service: BTreeSet<String>,
}

/// What a [`Fleet`] waits for.
#[derive(Debug, Clone)]
pub(super) enum Gate {
    /// Every InService instance staged the release (`ready/<id>/<instance>`): the barrier.
    Staged,
    /// Wave `wave`'s go (2 and up): every member of the waves before it that is still InService
    /// (`expect`) validated the release (`ready/<id>/v-<token>/<instance>`), `bake` ago.
    Wave {
        wave: usize,
        expect: BTreeSet<String>,
    },
}

/// One agent's view of one gate of one deploy: the barrier, or a wave's go.
pub(super) struct Fleet<'a, 'b> {
    agent: &'a Agent<'b>,
    group: &'a str,
    id: &'a str,
    token: String,
    gate: Gate,
    /// The go that opened the gate (the barrier's names the members the waves are made of).
    go: Option<Go>,
    members: Option<Members>,
    asg_calls: u32,
    /// When the markers were last listed or a safety-net list was drawn for (None: never listed).
    listed: Option<Instant>,
    wrote_go: bool,
}

impl<'a, 'b> Fleet<'a, 'b> {
    pub(super) fn new(
        agent: &'a Agent<'b>,
        group: &'a str,
        id: &'a str,
        token: String,
        gate: Gate,
    ) -> Self {
        Fleet {
            agent,
            group,
            id,
            token,
            gate,
            go: None,
            members: None,
            asg_calls: 0,
            listed: None,
            wrote_go: false,
        }
    }

    fn key(&self, name: &str) -> String {
        self.agent
            .store
            .source
            .key(&format!("ready/{}/{name}", self.id))
    }

    /// `_go-<token>` / `_members-<token>` / `_asking-<token>`: this deploy's.
    fn shared(&self, name: &str) -> String {
        self.key(&format!("_{name}-{}", self.token))
    }

    /// The gate's go: `_go-<token>`, or `_go-<token>-w<wave>`.
    fn go_key(&self) -> String {
        match &self.gate {
            Gate::Staged => self.shared("go"),
            Gate::Wave { wave, .. } => self.shared(&format!("go-w{wave}")),
        }
    }

    /// Where the markers this gate counts are: `ready/<id>/` (staged) or `ready/<id>/v-<token>/`
    /// (validated).
    fn marker_dir(&self) -> String {
        match &self.gate {
            Gate::Staged => self.key(""),
            Gate::Wave { .. } => validated_dir(self.agent, self.id, &self.token),
        }
    }

    /// The members the barrier's go named (empty before the gate opened, or when it timed out: then
    /// the membership this agent knows).
    pub(super) fn opened_with(&self) -> BTreeSet<String> {
        match &self.go {
            Some(go) if !go.members.is_empty() => go.members.clone(),
            _ => self
                .members
                .as_ref()
                .map(|m| m.in_service.clone())
                .unwrap_or_default(),
        }
    }

    /// Waiting agents do not list at once (the members of the wave before list as they validate).
    pub(super) fn without_first_list(mut self) -> Self {
        self.listed = Some(Instant::now());
        self
    }

    /// `_go` there → ready; else, when a list is due (at once, then now and then: [`LIST_EVERY`]; and
    /// at the deadline), the markers against the members, writing `_go` when every member is ready.
    pub(super) async fn check(&mut self, waited: Duration) -> Result<Barrier, ReleaseError> {
        if self.listed.is_some() {
            if let Some((bytes, _)) = self.agent.store.get_small(&self.go_key(), GO_LIMIT).await? {
                // The fleet switches together at the moment `_go` names (bounded by GO_LEAD and
                // the bake: the object is not trusted to hold anyone back longer).
                let go = serde_json::from_slice::<Go>(&bytes).ok();
                let at = go.as_ref().map_or(0, |go| go.switch_at_ms);
                let most = GO_LEAD + self.bake();
                let wait = at.saturating_sub(unix_ms()).min(most.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                self.go = go;
                return Ok(Barrier::Ready);
            }
        }
        let due = match self.listed {
            None => true,
            Some(_) if waited >= self.deadline() => true,
            Some(at) if at.elapsed() >= LIST_EVERY => {
                self.listed = Some(Instant::now()); // the next draw is a period later
                let members = self
                    .members
                    .as_ref()
                    .map_or(1, |m| m.in_service.len().max(1));
                rand::random::<u64>() % (members as u64) < SAFETY_LISTS
            }
            Some(_) => false,
        };
        if due {
            let ready = self.ready().await?;
            let mut members = self.members(waited, ready.len()).await?;
            if let Gate::Wave { expect, .. } = &self.gate {
                members = members.intersection(expect).cloned().collect();
            }
            self.listed = Some(Instant::now());
            let state = barrier(&members, &ready, waited, self.deadline());
            if state == Barrier::Ready {
                let lead = GO_LEAD + self.bake();
                let go = Go {
                    by: self.agent.instance_id.clone(),
                    switch_at_ms: unix_ms() + lead.as_millis() as u64,
                    members: match self.gate {
                        Gate::Staged => members.clone(),
                        Gate::Wave { .. } => BTreeSet::new(),
                    },
                };
                let body = serde_json::to_vec(&go).unwrap_or_default();
                let key = self.go_key();
                match self
                    .agent
                    .store
                    .put_bytes(&key, body, Condition::None)
                    .await
                {
                    Ok(()) => {
                        self.wrote_go = true;
                        self.go = Some(go);
                        // The writer of the barrier's go switches with the fleet; a wave's go is
                        // written by a member of the wave before, which has nothing to wait for.
                        if matches!(self.gate, Gate::Staged) {
                            tokio::time::sleep(lead).await
                        }
                    }
                    Err(PutError::Conflict) => {}
                    Err(PutError::Failed(err)) => {
                        tracing::debug!("cannot write the barrier's _go: {err}")
                    }
                }
            }
            return Ok(state);
        }
        Ok(Barrier::Wait)
    }

    async fn read_members(&self, key: &str) -> Result<Option<Members>, ReleaseError> {
        Ok(match self.agent.store.get_small(key, 1 << 20).await? {
            Some((bytes, _)) => serde_json::from_slice::<Members>(&bytes).ok(),
            None => None,
        })
    }

    /// How long this gate waits: the barrier's deadline; a wave's, that plus a validation and the bake
    /// per wave before it (counted from the barrier's go).
    fn deadline(&self) -> Duration {
        match &self.gate {
            Gate::Staged => self.agent.watch.barrier,
            Gate::Wave { wave, .. } => {
                let validation = self
                    .agent
                    .settings
                    .validation
                    .as_ref()
                    .map_or(Duration::ZERO, |v| v.timeout);
                (self.agent.watch.barrier + validation + self.agent.watch.bake) * (*wave as u32 - 1)
            }
        }
    }

    fn bake(&self) -> Duration {
        match self.gate {
            Gate::Staged => Duration::ZERO,
            Gate::Wave { .. } => self.agent.watch.bake,
        }
    }

    /// The instances with a marker in this gate's directory (directly in it: validated markers live
    /// one level down from the staged ones).
    async fn ready(&self) -> Result<BTreeSet<String>, ReleaseError> {
        let prefix = self.marker_dir();
        Ok(self
            .agent
            .store
            .list_keys(&prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .filter(|name| !name.starts_with('_') && !name.contains('/'))
            .collect())
    }

    /// The deploy's first membership, when none is shared yet: one agent asks for the fleet, the one
    /// that creates `_asking-<token>` (`If-None-Match: *`; `None` here: this agent asks). The others
    /// look for its answer for up to [`MEMBERS_WAIT`] (an asker that died is not waited for longer),
    /// then, like agents that could not write the lease, wait a moment scaled by how many are ready
    /// and look once more before they ask themselves.
    async fn first_members(
        &self,
        key: &str,
        ready: usize,
    ) -> Result<Option<Members>, ReleaseError> {
        let lease = self.shared("asking");
        let mine = self.agent.instance_id.as_bytes().to_vec();
        match self
            .agent
            .store
            .put_bytes(&lease, mine, Condition::Absent)
            .await
        {
            Ok(()) => return Ok(None),
            Err(PutError::Conflict) => {
                let deadline = Instant::now() + MEMBERS_WAIT;
                while Instant::now() < deadline {
                    tokio::time::sleep(jittered(MEMBERS_POLL)).await;
                    if let Some(members) = self.read_members(key).await? {
                        return Ok(Some(members));
                    }
                }
            }
            Err(PutError::Failed(err)) => {
                tracing::debug!("cannot write the membership's lease {lease}: {err}");
            }
        }
        let window = (MEMBERS_SPREAD * ready as u32).min(MEMBERS_SPREAD_MAX);
        let pause = rand::random::<u64>() % (window.as_millis() as u64 + 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        self.read_members(key).await
    }

    /// The shared membership: read from `_members`; asked of Auto Scaling by the first agent to need
    /// it (written with If-None-Match, so one answer serves the fleet), and again when it is stale and
    /// the barrier still waits — by the agents that list again ([`SAFETY_LISTS`] per period across the
    /// fleet), never more than [`ASG_CALLS_PER_DEPLOY`] times per agent.
    async fn members(
        &mut self,
        waited: Duration,
        ready: usize,
    ) -> Result<BTreeSet<String>, ReleaseError> {
        let key = self.shared("members");
        let mut shared = self.read_members(&key).await?;
        if shared.is_none() && self.members.is_none() {
            shared = self.first_members(&key, ready).await?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stale = |m: &Members| now.saturating_sub(m.asked) >= MEMBERS_FRESH.as_secs();
        let may_ask = self.asg_calls < ASG_CALLS_PER_DEPLOY;
        let ask = match &shared {
            None => may_ask,
            Some(m) => {
                // Safety-net lists are already few across the fleet (SAFETY_LISTS per period).
                may_ask && waited >= MEMBERS_FRESH && stale(m)
            }
        };
        if !ask {
            if let Some(m) = shared {
                self.members = Some(m);
            }
            return self.members.as_ref().map(|m| m.in_service.clone()).ok_or_else(|| {
                ReleaseError::Failed(format!(
                    "the barrier's membership {} cannot be read, and this agent asked Auto Scaling {} times already",
                    self.agent.store.url(&key),
                    self.asg_calls
                ))
            });
        }
        self.asg_calls += 1;
        let in_service = in_service(self.agent, self.group).await?;
        let fresh = Members {
            group: self.group.to_string(),
            asked: now,
            in_service: in_service.clone(),
        };
        let condition = if shared.is_none() {
            Condition::Absent
        } else {
            Condition::None
        };
        let body = serde_json::to_vec(&fresh)
            .map_err(|e| ReleaseError::Failed(format!("cannot encode the membership: {e}")))?;
        match self.agent.store.put_bytes(&key, body, condition).await {
            // Another agent wrote it first: theirs serves; this answer is as good for this check.
            Ok(()) | Err(PutError::Conflict) => {}
            Err(PutError::Failed(err)) => tracing::debug!("cannot share the membership: {err}"),
        }
        self.members = Some(fresh);
        Ok(in_service)
    }
}

/// The group's InService instances. Instances that left the group (terminated, detached, unhealthy)
/// are not waited for.
async fn in_service(agent: &Agent<'_>, group: &str) -> Result<BTreeSet<String>, ReleaseError> {
    Ok(crate::lifecycle::in_service(agent.aws, group).await?)
}

/// Switch or hold, per `on_barrier_timeout`; the error topic hears of it once per release.
async fn barrier_timed_out(agent: &Agent<'_>, id: &str, missing: &[String]) -> (Held, String) {
    let what = format!(
        "release {id}: the barrier deadline of {} passed; not ready: {}",
        humantime::format_duration(agent.watch.barrier),
        missing.join(", ")
    );
    let (held, outcome, action) = match agent.watch.on_barrier_timeout {
        BarrierTimeout::Switch => (
            Held::No,
            "barrier timeout, switched",
            "switching anyway (on_barrier_timeout = \"switch\")",
        ),
        BarrierTimeout::Hold => (
            Held::Yes,
            "barrier timeout, holding",
            "holding on the current release until they are (on_barrier_timeout = \"hold\")",
        ),
    };
    let text = format!("{what}; {action}");
    let first = agent
        .barrier_noted
        .lock()
        .map(|mut noted| noted.insert(id.to_string()))
        .unwrap_or(true);
    if first {
        tracing::warn!("{text}");
        notify(agent, agent.error_topic.as_deref(), outcome, &text).await;
    }
    (held, text)
}

/// `ready/<id>/<instance-id>`: this instance has `id` staged (or current).
pub(super) async fn write_marker(agent: &Agent<'_>, id: &str) -> Result<(), ReleaseError> {
    let marker = agent
        .store
        .source
        .key(&format!("ready/{id}/{}", agent.instance_id));
    put_marker(agent, &marker).await
}

async fn put_marker(agent: &Agent<'_>, key: &str) -> Result<(), ReleaseError> {
    let body = format!("{{\"time\": \"{}\"}}", crate::status::now());
    match agent
        .store
        .put_bytes(key, body.into_bytes(), Condition::None)
        .await
    {
        Ok(()) | Err(PutError::Conflict) => Ok(()),
        Err(PutError::Failed(err)) => Err(err),
    }
}

/// After a switch: this instance's marker for the release it left (deleted by name, no listing); and,
/// by the one agent that wrote this deploy's `_go`, everything under `ready/` that is not `current`'s
/// (markers left behind, earlier barriers' `_members-…` and `_go-…`).
pub(super) async fn clean_markers(
    agent: &Agent<'_>,
    current: &str,
    previous: Option<&str>,
    cleaner: bool,
) {
    let mut stale = Vec::new();
    if let Some(previous) = previous.filter(|p| *p != current) {
        stale.push(
            agent
                .store
                .source
                .key(&format!("ready/{previous}/{}", agent.instance_id)),
        );
    }
    if cleaner {
        // The previous release's markers are their agents' to delete (each just did, or will).
        let here = format!("ready/{current}/");
        let theirs = previous.map(|p| format!("ready/{p}/i-"));
        if let Ok(keys) = agent
            .store
            .list_keys(&agent.store.source.key("ready/"))
            .await
        {
            stale.extend(keys.into_iter().filter(|k| {
                !k.contains(&here) && !theirs.as_ref().is_some_and(|t| k.contains(t.as_str()))
            }));
        }
    }
    stale.sort();
    stale.dedup();
    for key in stale {
        if let Err(err) = agent.store.delete(&key).await {
            tracing::debug!("cannot remove the old marker {key}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_barrier_waits_for_in_service_instances_only() {
        let s = Duration::from_secs;
        let fleet = set(&["i-1", "i-2"]);
        assert_eq!(
            barrier(&fleet, &set(&["i-1", "i-2"]), s(0), s(120)),
            Barrier::Ready
        );
        assert_eq!(
            barrier(&fleet, &set(&["i-1", "i-2", "i-gone"]), s(0), s(120)),
            Barrier::Ready,
            "a marker of an instance that left the group changes nothing"
        );
        assert_eq!(barrier(&fleet, &set(&["i-1"]), s(5), s(120)), Barrier::Wait);
        assert_eq!(
            barrier(&fleet, &set(&["i-1"]), s(120), s(120)),
            Barrier::TimedOut(vec!["i-2".into()])
        );
        assert_eq!(
            barrier(&set(&[]), &set(&[]), s(0), s(120)),
            Barrier::Ready,
            "an empty group (every instance terminated) never blocks"
        );
    }
}
