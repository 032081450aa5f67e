//! `embark release watch`: the deploy agent. Polls the pointer, stages new releases, writes its ready
//! marker, waits for the fleet barrier, switches. `embark release rollback`: points the source back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::watch as signal_watch;

use super::error::ReleaseError;
use super::format::{sha256_hex, Manifest, Pointer, POINTER_FORMAT};
use super::pull::{read_target, stage_target, switch_to, Settings, Target};
use super::store::{Condition, Polled, PutError, Store};
use crate::aws::Aws;
use crate::config::{BarrierTimeout, ReleaseFormat, WatchConfig};
use crate::status::{Outcome, Report, RunStatus, Step};

/// Everything the agent needs, resolved before its loop starts.
pub struct Agent<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub http: &'a reqwest::Client,
    pub aws: &'a Aws,
    pub instance_id: String,
    pub group: Option<String>,
    pub watch: WatchConfig,
    pub success_topic: Option<String>,
    pub error_topic: Option<String>,
    /// Where the last deploy's report is kept.
    pub state_dir: std::path::PathBuf,
    /// Releases whose barrier timeout was already notified (once per release, not per poll).
    pub barrier_noted: std::sync::Mutex<BTreeSet<String>>,
    /// Work to do after every poll and every switch (the log streams' sync); never fails the agent.
    pub after_poll: Option<AfterPoll>,
}

/// See [`Agent::after_poll`].
pub type AfterPoll = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Set to the signal's name when SIGTERM or SIGINT arrives.
type Stop = signal_watch::Receiver<Option<&'static str>>;

/// How one deploy attempt ended.
enum Deployed {
    Current,
    Switched(String),
    /// Barrier deadline passed with `on_barrier_timeout = "hold"`.
    Held,
}

/// Ends on SIGTERM or SIGINT, between steps (a deploy being staged is dropped: `current` is untouched
/// and the next start resumes).
pub async fn run(agent: &Agent<'_>) -> Result<(), ReleaseError> {
    let mut stop = stop_on_signals();
    let key = match agent.settings.format {
        ReleaseFormat::Embark => agent.store.source.pointer_key(),
        ReleaseFormat::PullDeploy => agent.store.source.key(super::legacy::POINTER),
    };
    tracing::info!(
        instance_id = %agent.instance_id,
        "watching {} every {} (barrier {}, then {})",
        agent.store.url(&key),
        humantime::format_duration(agent.watch.interval),
        humantime::format_duration(agent.watch.barrier),
        match agent.watch.on_barrier_timeout {
            BarrierTimeout::Switch => "switch",
            BarrierTimeout::Hold => "hold",
        }
    );
    let mut poll = Poll::default();
    while stop.borrow().is_none() {
        let mut stop_deploy = stop.clone();
        let attempt = poll_once(agent, &key, &mut poll, &mut stop_deploy);
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => break,
        };
        let pause = next_poll(agent.watch.interval, matches!(result, Ok(Some(_))));
        after_poll(agent, &mut poll, result).await;
        if let Some(work) = &agent.after_poll {
            work().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = stop.changed() => break,
        }
    }
    let signal = stop.borrow().unwrap_or("a signal");
    tracing::info!("stopping: {signal}");
    Ok(())
}

/// A receiver that turns to the signal's name when SIGTERM or SIGINT arrives.
fn stop_on_signals() -> Stop {
    let (stop_tx, stop) = signal_watch::channel(None::<&'static str>);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = stop_tx.send(Some(name));
    });
    stop
}

/// What the agent remembers between polls.
#[derive(Default)]
struct Poll {
    /// The pointer's ETag once its release is current here: unchanged → a 304, nothing else.
    seen_etag: Option<String>,
    /// The failure last notified: the same failure is not sent again at every poll.
    notified_failure: Option<String>,
    said_absent: bool,
}

/// One conditional GET of the pointer and, when it changed, one deploy.
async fn poll_once(
    agent: &Agent<'_>,
    key: &str,
    poll: &mut Poll,
    stop: &mut Stop,
) -> Result<Option<(String, String, Deployed)>, ReleaseError> {
    match agent.store.changed(key, poll.seen_etag.as_deref()).await? {
        Polled::Unchanged => Ok(None),
        Polled::Absent => {
            if !poll.said_absent {
                tracing::info!("no release published at {} yet", agent.store.source);
            }
            poll.said_absent = true;
            Ok(None)
        }
        Polled::Changed(etag) => {
            let target = read_target(agent.store, agent.settings.format).await?;
            let outcome = deploy(agent, &target, stop).await?;
            Ok(Some((etag, target.id, outcome)))
        }
    }
}

/// Notifies a switch or a (new) failure, and remembers the pointer once its release is current.
async fn after_poll(
    agent: &Agent<'_>,
    poll: &mut Poll,
    result: Result<Option<(String, String, Deployed)>, ReleaseError>,
) {
    match result {
        Ok(None) => {}
        Ok(Some((etag, id, outcome))) => {
            if let Deployed::Switched(previous) = &outcome {
                let text = format!("deployed release {id} (was {previous})");
                tracing::info!(release = %id, "{text}");
                let subject = format!("deployed {id}");
                notify(agent, agent.success_topic.as_deref(), &subject, &text).await;
            }
            // Remembered only once the release is current: a hold or a failure is tried again.
            if !matches!(outcome, Deployed::Held) {
                poll.seen_etag = Some(etag);
                poll.notified_failure = None;
            }
        }
        Err(err) => {
            tracing::error!("deploy failed: {err}; trying again at the next poll");
            let text = err.to_string();
            if poll.notified_failure.as_deref() != Some(text.as_str()) {
                notify(agent, agent.error_topic.as_deref(), "deploy failed", &text).await;
                poll.notified_failure = Some(text);
            }
        }
    }
}

/// The pause before the next poll: the interval ± 20 %; after a deploy, anywhere within the interval.
/// The fleet's agents have just switched together (the barrier): polling an interval later, they
/// would all see the next push within the jitter of each other and stage it at once, a herd at every
/// push; a uniform pause spreads them over the interval again (a gap is still at most 1.2 intervals).
fn next_poll(interval: Duration, deployed: bool) -> Duration {
    if deployed {
        let ms = interval.as_millis() as u64;
        Duration::from_millis(rand::random::<u64>() % (ms + 1))
    } else {
        jittered(interval)
    }
}

fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 5;
    let offset = if spread == 0 {
        0
    } else {
        rand::random::<u64>() % (2 * spread + 1)
    };
    Duration::from_millis((interval.as_millis() as u64).saturating_sub(spread) + offset)
}

/// One deploy, recorded step by step in `<state_dir>/deploy.json` (shown by `embark status`).
async fn deploy(
    agent: &Agent<'_>,
    target: &Target,
    stop: &mut Stop,
) -> Result<Deployed, ReleaseError> {
    let started = Instant::now();
    let mut report = Report::running(
        format!("release watch: deploy {}", target.id),
        Some(agent.instance_id.clone()),
        agent.group.clone(),
    );
    let result = deploy_steps(agent, target, stop, &mut report.steps).await;
    if matches!(result, Ok(Deployed::Current)) {
        return result; // nothing happened: keep the last real deploy's report
    }
    report.finished = Some(crate::status::now());
    report.duration_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(Deployed::Held) => report.status = RunStatus::Held,
        Ok(_) => report.status = RunStatus::Done,
        Err(err) => {
            report.status = RunStatus::Error;
            report.error = Some(err.to_string());
        }
    }
    if let Err(why) = report.write_as(&agent.state_dir, crate::status::DEPLOY_FILE) {
        tracing::warn!("{why}");
    }
    result
}

/// Time a step and add it to the report.
fn record(steps: &mut Vec<Step>, name: &str, started: Instant, outcome: Outcome, detail: String) {
    steps.push(Step {
        name: name.into(),
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        detail,
    });
}

async fn deploy_steps(
    agent: &Agent<'_>,
    target: &Target,
    stop: &mut Stop,
    steps: &mut Vec<Step>,
) -> Result<Deployed, ReleaseError> {
    if !stage_step(agent, target, steps).await? {
        return Ok(Deployed::Current);
    }
    write_marker(agent, &target.id).await?;
    tracing::info!(release = %target.id, "release {} staged and verified; ready marker written", target.id);
    let t = Instant::now();
    let cleaner = match &agent.group {
        Some(group) => match barrier_step(agent, group, target, stop, steps).await? {
            (Held::Yes, _) => return Ok(Deployed::Held),
            (Held::No, wrote_go) => wrote_go,
        },
        None => {
            record(
                steps,
                "barrier",
                t,
                Outcome::Skipped,
                "not in an Auto Scaling group: no barrier".into(),
            );
            false
        }
    };
    switch_step(agent, target, steps, cleaner).await
}

/// Stages the release under the lock; `false` when it is current here already (a boot pulled it):
/// the marker is still written, or agents switching to it now would wait for this instance.
async fn stage_step(
    agent: &Agent<'_>,
    target: &Target,
    steps: &mut Vec<Step>,
) -> Result<bool, ReleaseError> {
    let t = Instant::now();
    let _lock = agent.settings.layout.lock().await?;
    super::pull::finish_interrupted(agent.settings, agent.http).await?;
    let staged = match stage_target(agent.store, agent.settings, target, false).await {
        Ok(staged) => staged,
        Err(err) => {
            record(steps, "stage", t, Outcome::Failed, err.to_string());
            return Err(err);
        }
    };
    if staged.already_current {
        write_marker(agent, &target.id).await?;
        return Ok(false);
    }
    let detail = format!(
        "{} files verified; {} objects fetched, {} files reused{}",
        staged.files,
        staged.fetched_objects,
        staged.reused_files,
        if staged.bundle_bytes > 0 {
            ", bundle fetched"
        } else {
            ""
        }
    );
    record(steps, "stage", t, Outcome::Ok, detail);
    Ok(true)
}

enum Held {
    Yes,
    No,
}

/// What the barrier says now.
#[derive(Debug, PartialEq, Eq)]
enum Barrier {
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
/// agent wrote `_go` (then it cleans the fleet's stale markers after the switch).
async fn barrier_step(
    agent: &Agent<'_>,
    group: &str,
    target: &Target,
    stop: &mut Stop,
    steps: &mut Vec<Step>,
) -> Result<(Held, bool), ReleaseError> {
    let t = Instant::now();
    let id = target.id.as_str();
    let mut fleet = Fleet::new(agent, group, id, deploy_token(target));
    loop {
        match fleet.check(t.elapsed()).await? {
            Barrier::Ready => {
                let done = format!(
                    "every InService instance of {group} is ready (Auto Scaling asked {} times by this agent)",
                    fleet.asg_calls
                );
                tracing::info!(release = %id, "{done}");
                record(steps, "barrier", t, Outcome::Ok, done);
                return Ok((Held::No, fleet.wrote_go));
            }
            Barrier::TimedOut(missing) => {
                let held = barrier_timed_out(agent, id, &missing).await;
                let outcome = match held {
                    (Held::Yes, _) => Outcome::Failed,
                    (Held::No, _) => Outcome::Ok,
                };
                record(steps, "barrier", t, outcome, held.1);
                return Ok((held.0, false));
            }
            Barrier::Wait => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(GO_POLL)) => {},
            _ = stop.changed() => return Err(ReleaseError::Failed("stopped while waiting at the barrier".into())),
        }
    }
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
/// Before asking Auto Scaling for a membership nobody shared yet, an agent waits up to this much per
/// ready agent (at most [`MEMBERS_SPREAD_MAX`]).
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

/// Names this deploy of a release: a rollback to a release deployed before is a new deploy, whose
/// barrier must not find the old one's `_go`.
fn deploy_token(target: &Target) -> String {
    let stamp = match (&target.pointer, &target.legacy) {
        (Some(pointer), _) => format!("{} {}", pointer.release, pointer.time),
        (None, Some(latest)) => format!("{} {}", latest.stamp, latest.epoch),
        (None, None) => target.id.clone(),
    };
    sha256_hex(stamp.as_bytes())[..12].to_string()
}

/// One agent's view of the barrier for one release.
struct Fleet<'a, 'b> {
    agent: &'a Agent<'b>,
    group: &'a str,
    id: &'a str,
    token: String,
    members: Option<Members>,
    asg_calls: u32,
    /// When the markers were last listed or a safety-net list was drawn for (None: never listed).
    listed: Option<Instant>,
    wrote_go: bool,
}

impl<'a, 'b> Fleet<'a, 'b> {
    fn new(agent: &'a Agent<'b>, group: &'a str, id: &'a str, token: String) -> Self {
        Fleet {
            agent,
            group,
            id,
            token,
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

    /// `_go-<token>` / `_members-<token>`: this deploy's.
    fn shared(&self, name: &str) -> String {
        self.key(&format!("_{name}-{}", self.token))
    }

    /// `_go` there → ready; else, when a list is due (at once, then now and then: [`LIST_EVERY`]; and
    /// at the deadline), the markers against the members, writing `_go` when every member is ready.
    async fn check(&mut self, waited: Duration) -> Result<Barrier, ReleaseError> {
        if self.listed.is_some() {
            if let Some((bytes, _)) = self.agent.store.get_small(&self.shared("go"), 4096).await? {
                // The fleet switches together at the moment `_go` names (bounded by GO_LEAD: the
                // object is not trusted to hold anyone back longer).
                let at = serde_json::from_slice::<Go>(&bytes).map_or(0, |go| go.switch_at_ms);
                let wait = at.saturating_sub(unix_ms()).min(GO_LEAD.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                return Ok(Barrier::Ready);
            }
        }
        let due = match self.listed {
            None => true,
            Some(_) if waited >= self.agent.watch.barrier => true,
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
            let members = self.members(waited, ready.len()).await?;
            self.listed = Some(Instant::now());
            let state = barrier(&members, &ready, waited, self.agent.watch.barrier);
            if state == Barrier::Ready {
                let go = Go {
                    by: self.agent.instance_id.clone(),
                    switch_at_ms: unix_ms() + GO_LEAD.as_millis() as u64,
                };
                let body = serde_json::to_vec(&go).unwrap_or_default();
                let key = self.shared("go");
                match self
                    .agent
                    .store
                    .put_bytes(&key, body, Condition::None)
                    .await
                {
                    Ok(()) => {
                        self.wrote_go = true;
                        tokio::time::sleep(GO_LEAD).await
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

    /// The instances with a marker for this release.
    async fn ready(&self) -> Result<BTreeSet<String>, ReleaseError> {
        let prefix = self.key("");
        Ok(self
            .agent
            .store
            .list_keys(&prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .filter(|name| !name.starts_with('_'))
            .collect())
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
            // Agents that staged together would all ask at once: each waits a moment, scaled by how
            // many are ready, and looks again; the first to ask answers for the others.
            let window = (MEMBERS_SPREAD * ready as u32).min(MEMBERS_SPREAD_MAX);
            let pause = rand::random::<u64>() % (window.as_millis() as u64 + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            shared = self.read_members(&key).await?;
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
    let asg = aws_sdk_autoscaling::Client::new(&agent.aws.config);
    let answer = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|err| {
            crate::aws::AwsError::new("autoscaling:DescribeAutoScalingGroups", &err)
                .on(format!("for {group}"))
        })?;
    Ok(answer
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
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

/// Switches under the lock (staging again is a no-op when nothing changed) and cleans old markers.
async fn switch_step(
    agent: &Agent<'_>,
    target: &Target,
    steps: &mut Vec<Step>,
    cleaner: bool,
) -> Result<Deployed, ReleaseError> {
    let t = Instant::now();
    let _lock = agent.settings.layout.lock().await?;
    let mut pulled = stage_target(agent.store, agent.settings, target, false).await?;
    if pulled.already_current {
        return Ok(Deployed::Current);
    }
    if let Err(err) = switch_to(agent.settings, &mut pulled, agent.http).await {
        record(steps, "switch", t, Outcome::Failed, err.to_string());
        return Err(err);
    }
    record(
        steps,
        "switch",
        t,
        Outcome::Ok,
        pulled.human(&agent.settings.layout.link),
    );
    clean_markers(agent, &target.id, pulled.previous.as_deref(), cleaner).await;
    Ok(Deployed::Switched(
        pulled.previous.unwrap_or_else(|| "none".into()),
    ))
}

/// `ready/<id>/<instance-id>`: this instance has `id` staged (or current).
async fn write_marker(agent: &Agent<'_>, id: &str) -> Result<(), ReleaseError> {
    let marker = agent
        .store
        .source
        .key(&format!("ready/{id}/{}", agent.instance_id));
    let body = format!("{{\"time\": \"{}\"}}", crate::status::now());
    match agent
        .store
        .put_bytes(&marker, body.into_bytes(), Condition::None)
        .await
    {
        Ok(()) | Err(PutError::Conflict) => Ok(()),
        Err(PutError::Failed(err)) => Err(err),
    }
}

/// After a switch: this instance's marker for the release it left (deleted by name, no listing); and,
/// by the one agent that wrote this deploy's `_go`, everything under `ready/` that is not `current`'s
/// (markers left behind, earlier barriers' `_members-…` and `_go-…`).
async fn clean_markers(agent: &Agent<'_>, current: &str, previous: Option<&str>, cleaner: bool) {
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

async fn notify(agent: &Agent<'_>, topic: Option<&str>, outcome: &str, body: &str) {
    let Some(topic) = topic else { return };
    let subject = crate::notify::subject(agent.group.as_deref(), &agent.instance_id, outcome);
    if let Err(why) = crate::notify::publish(agent.aws, topic, &subject, body).await {
        tracing::warn!("{why}");
    }
}

/// Point the source's `current` at `to` (default: the release before the current one), conditionally.
/// The release rolled back to keeps its own signature (`manifest.sig`), which must verify against
/// `trust` when trusted keys are configured here (and does on the instances, or they refuse it).
pub async fn rollback(
    store: &Store,
    to: Option<&str>,
    trust: &super::signing::Trust,
) -> Result<(String, String), ReleaseError> {
    let (current, etag) = store.read_pointer().await?.ok_or_else(|| {
        ReleaseError::Failed(format!(
            "no release has been published at {}: nothing to roll back",
            store.source
        ))
    })?;
    let target = match to {
        Some(id) => {
            super::format::check_id(id).map_err(|r| ReleaseError::Usage(r.0))?;
            id.to_string()
        }
        None => {
            let mut releases = super::listing::remote_releases(store).await?;
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
    let manifest_key = store.source.manifest_key(&target);
    let (manifest_bytes, _) = store
        .get_small(&manifest_key, 256 << 20)
        .await?
        .ok_or_else(|| {
            ReleaseError::Usage(format!(
                "there is no release {target} at {} (see `embark release list`)",
                store.source
            ))
        })?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        ReleaseError::Failed(format!(
            "{} is not a valid manifest ({e})",
            store.url(&manifest_key)
        ))
    })?;
    manifest
        .validate()
        .map_err(|r| ReleaseError::Failed(format!("refusing to roll back to {target}: {r}")))?;
    let pointer = Pointer {
        format: POINTER_FORMAT.into(),
        release: target.clone(),
        manifest_sha256: sha256_hex(&manifest_bytes),
        time: crate::status::now(),
        who: super::push::who(),
        message: format!("rollback from {}", current.release),
        // Instances keep the releases they ran: the one rolled back to is usually still there.
        delta: None,
        signature: super::signing::read(store, &target).await?,
    };
    trust.check(&store.source, &pointer)?;
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

    #[test]
    fn polls_are_jittered_within_a_fifth() {
        for _ in 0..100 {
            let d = next_poll(Duration::from_secs(10), false).as_millis();
            assert!((8000..=12000).contains(&d), "{d}");
        }
    }

    #[test]
    fn after_a_deploy_the_next_poll_is_anywhere_within_the_interval() {
        let pauses: Vec<u128> = (0..400)
            .map(|_| next_poll(Duration::from_secs(10), true).as_millis())
            .collect();
        assert!(pauses.iter().all(|d| *d <= 10_000), "{pauses:?}");
        // Spread over the whole interval, not within the ± 20 % of a steady poll (each half holds
        // some: the chance that one of them is empty is 2^-399).
        assert!(pauses.iter().any(|d| *d < 5_000), "{pauses:?}");
        assert!(pauses.iter().any(|d| *d >= 5_000), "{pauses:?}");
    }
}
