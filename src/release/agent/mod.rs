//! `embark release watch`: the deploy agent. Polls the pointer, stages new releases through the install
//! pipeline, writes its ready marker, waits for the fleet barrier (`barrier.rs`), switches.

mod barrier;
mod waves;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::watch as signal_watch;

use super::error::ReleaseError;
use super::install::{read_target, Pipeline, Settings, Stage, Target};
use super::once::Scope;
use super::roster::{self, Entry, Roster, State};
use super::store::{Polled, Store};
use crate::aws::Aws;
use crate::config::{BarrierTimeout, ReleaseFormat, WatchConfig};
use crate::status::{Outcome, Report, RunStatus, Step};
use barrier::{barrier_step, clean_markers, write_marker, Held};
use waves::{Plan, WaveGate};

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
    /// How long a run-once hook's leader holds its lease (`[release] once_lease`).
    pub once_lease: Duration,
    /// This instance's status object at the source.
    pub roster: Roster,
}

impl Agent<'_> {
    fn pipeline<'s>(&'s self, once: Option<&'s Scope>) -> Pipeline<'s> {
        Pipeline::new(self.store, self.settings, self.http).sharing(once)
    }

    /// The pointer's key (`current`, or pull-deploy's `latest-deploy`).
    fn pointer_key(&self) -> String {
        match self.settings.format {
            ReleaseFormat::Embark => self.store.source.pointer_key(),
            ReleaseFormat::PullDeploy => self.store.source.key(super::legacy::POINTER),
        }
    }

    /// Says what this instance is doing now, in its status object at the source.
    async fn say(&self, state: State, deploying: Option<&str>, detail: Said) {
        let entry = Entry {
            instance: self.instance_id.clone(),
            group: self.group.clone(),
            serves: self.settings.layout.current(),
            deploying: deploying.map(str::to_string),
            state,
            wave: detail.wave,
            reason: detail.reason,
            since: crate::status::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_s: roster::heartbeat(self.watch.interval).as_secs(),
        };
        self.roster.set(self.store, entry).await;
    }
}

/// The details of a status: its wave, why.
#[derive(Default)]
struct Said {
    wave: Option<(usize, usize)>,
    reason: Option<String>,
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
    /// The release failed here or in the fleet before: not tried again (it says why, once).
    Skipped(String),
    /// The pointer moved while this instance's wave waited: given up, the next poll deploys the new one.
    Superseded(String),
}

/// Ends on SIGTERM or SIGINT, between steps (a deploy being staged is dropped: `current` is untouched
/// and the next start resumes).
pub async fn run(agent: &Agent<'_>) -> Result<(), ReleaseError> {
    let mut stop = stop_on_signals();
    let key = agent.pointer_key();
    agent.roster.clear(agent.store, &agent.instance_id).await;
    agent.say(State::Serving, None, Said::default()).await;
    let heartbeat = roster::heartbeat(agent.watch.interval);
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
        agent.roster.beat_if_due(agent.store, heartbeat).await;
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
            if let Some(why) = failed_in_fleet(agent, &target).await? {
                return Ok(Some((etag, target.id(), Deployed::Skipped(why))));
            }
            let outcome = deploy(agent, &target, &etag, stop).await?;
            Ok(Some((etag, target.id(), outcome)))
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
            if let Deployed::Skipped(why) = &outcome {
                tracing::warn!(release = %id, "not deploying release {id}: {why}");
            }
            if let Deployed::Switched(previous) = &outcome {
                let text = format!("deployed release {id} (was {previous})");
                tracing::info!(release = %id, "{text}");
                let subject = format!("deployed {id}");
                notify(agent, agent.success_topic.as_deref(), &subject, &text).await;
            }
            // Remembered only once the release is current: a hold or a failure is tried again.
            if !matches!(outcome, Deployed::Held | Deployed::Superseded(_)) {
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
    etag: &str,
    stop: &mut Stop,
) -> Result<Deployed, ReleaseError> {
    let started = Instant::now();
    let mut report = Report::running(
        format!("release watch: deploy {}", target.id()),
        Some(agent.instance_id.clone()),
        agent.group.clone(),
    );
    let pointer = (agent.pointer_key(), etag.to_string());
    let pointer = (pointer.0.as_str(), pointer.1.as_str());
    let mut result = deploy_steps(agent, target, pointer, stop, &mut report.steps).await;
    if let Err(err) = &result {
        if let Some(failure) = fleet_failure(agent, err) {
            // The release is bad for the fleet: say so at the source, and move the pointer back.
            let t = Instant::now();
            let published = super::failure::publish(agent.store, &failure, Some(etag)).await;
            let (outcome, detail) = match published {
                Ok(done) => (Outcome::Ok, done),
                Err(why) => (Outcome::Failed, why.to_string()),
            };
            tracing::info!(release = %failure.release, "{detail}");
            record(&mut report.steps, "fleet rollback", t, outcome, detail);
        }
    }
    if let Err(ReleaseError::FailedHere { reason, time, .. }) = &result {
        result = Ok(Deployed::Skipped(format!(
            "it failed here at {time} ({reason})"
        )));
    }
    let id = target.id();
    if let Err(err @ ReleaseError::OnceFailed { .. }) = &result {
        // Its leader reports it to the fleet (one notification); here, nothing switched.
        let why = err.to_string();
        let reason = Some(why.clone());
        agent
            .say(
                State::Failed,
                Some(&id),
                Said {
                    reason,
                    ..Said::default()
                },
            )
            .await;
        result = Ok(Deployed::Skipped(why));
    }
    match &result {
        Ok(Deployed::Held) => agent.say(State::Held, Some(&id), Said::default()).await,
        Ok(Deployed::Superseded(why)) => {
            let reason = Some(why.clone());
            agent
                .say(
                    State::Serving,
                    None,
                    Said {
                        reason,
                        ..Said::default()
                    },
                )
                .await
        }
        Err(err) => {
            let reason = Some(err.to_string());
            agent
                .say(
                    State::Failed,
                    Some(&id),
                    Said {
                        reason,
                        ..Said::default()
                    },
                )
                .await
        }
        Ok(_) => {}
    }
    if matches!(result, Ok(Deployed::Current) | Ok(Deployed::Skipped(_))) {
        return result; // nothing happened: keep the last real deploy's report
    }
    report.finished = Some(crate::status::now());
    report.duration_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(Deployed::Held) | Ok(Deployed::Superseded(_)) => report.status = RunStatus::Held,
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

/// The record a failure of this instance's leaves at the source: a failed validation or switch hook
/// (rolled back to the release before), or a failed prepare hook (nothing switched).
fn fleet_failure(agent: &Agent<'_>, err: &ReleaseError) -> Option<super::failure::FailureRecord> {
    let (release, reason, rolled_back_to) = match err {
        ReleaseError::RolledBack {
            release,
            to,
            reason,
        } => (release, reason.clone(), Some(to.clone())),
        ReleaseError::PrepareFailed {
            release, hook, why, ..
        } => (
            release,
            format!("failed its prepare hook {hook}: {why}"),
            agent.settings.layout.current(),
        ),
        ReleaseError::NotValidated { release, reason } => (release, reason.clone(), None),
        _ => return None,
    };
    Some(super::failure::FailureRecord {
        release: release.clone(),
        instance: agent.instance_id.clone(),
        reason,
        time: crate::status::now(),
        rolled_back_to,
    })
}

/// Why not to deploy `target`, when the fleet recorded it as failed (one small GET per deploy).
async fn failed_in_fleet(
    agent: &Agent<'_>,
    target: &Target,
) -> Result<Option<String>, ReleaseError> {
    if agent.settings.retry_failed || target.pointer().is_none() {
        return Ok(None);
    }
    Ok(super::failure::read(agent.store, &target.id())
        .await?
        .map(|r| format!("it failed on {} at {} ({})", r.instance, r.time, r.reason)))
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
    (pointer_key, etag): (&str, &str),
    stop: &mut Stop,
    steps: &mut Vec<Step>,
) -> Result<Deployed, ReleaseError> {
    let id = target.id();
    if agent.settings.layout.current().as_deref() != Some(id.as_str()) {
        agent.say(State::Staging, Some(&id), Said::default()).await;
    }
    if !stage_step(agent, target, steps).await? {
        return Ok(Deployed::Current);
    }
    write_marker(agent, &id).await?;
    tracing::info!(release = %id, "release {id} staged and verified; ready marker written");
    agent.say(State::Ready, Some(&id), Said::default()).await;
    let t = Instant::now();
    let rollback = target.pointer().and_then(|p| p.rollback_of.clone());
    let mut plan = None;
    let cleaner = match (&agent.group, &rollback) {
        (_, Some(failed)) => {
            record(
                steps,
                "barrier",
                t,
                Outcome::Skipped,
                format!("a rollback from the failed release {failed}: no barrier"),
            );
            false
        }
        (Some(group), None) => match barrier_step(agent, group, target, stop, steps).await? {
            (Held::Yes, _, _) => return Ok(Deployed::Held),
            (Held::No, wrote_go, members) => {
                if agent.watch.rollout.is_staged() {
                    let waves = Plan::new(agent, target, &members);
                    let wave = Some((waves.wave, waves.total));
                    if waves.wave > 1 {
                        agent
                            .say(
                                State::Waiting,
                                Some(&id),
                                Said {
                                    wave,
                                    ..Said::default()
                                },
                            )
                            .await;
                    }
                    let pointer = (pointer_key, etag);
                    match waves::wait_for_wave(agent, group, target, pointer, &waves, stop, steps)
                        .await?
                    {
                        WaveGate::Open => {}
                        WaveGate::Held => return Ok(Deployed::Held),
                        WaveGate::Superseded(why) => return Ok(Deployed::Superseded(why)),
                    }
                    plan = Some((group.clone(), waves));
                }
                wrote_go
            }
        },
        (None, None) => {
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
    let wave = plan.as_ref().map(|(_, p)| (p.wave, p.total));
    agent
        .say(
            State::Switching,
            Some(&id),
            Said {
                wave,
                ..Said::default()
            },
        )
        .await;
    let once = agent.group.as_ref().map(|_| Scope {
        instance: agent.instance_id.clone(),
        token: target.token(),
        lease: agent.once_lease,
    });
    let deployed = switch_step(agent, target, steps, cleaner, once.as_ref()).await?;
    match &rollback {
        Some(failed) => {
            let reason = Some(format!("release {failed} failed in the fleet"));
            let said = Said { wave, reason };
            agent.say(State::RolledBack, Some(failed), said).await
        }
        None => {
            agent
                .say(
                    State::Validated,
                    None,
                    Said {
                        wave,
                        ..Said::default()
                    },
                )
                .await
        }
    }
    if let Some((group, waves)) = &plan {
        waves::validated(agent, group, target, waves).await;
    }
    Ok(deployed)
}

/// Stages the release under the lock; `false` when it is current here already (a boot pulled it):
/// the marker is still written, or agents switching to it now would wait for this instance.
async fn stage_step(
    agent: &Agent<'_>,
    target: &Target,
    steps: &mut Vec<Step>,
) -> Result<bool, ReleaseError> {
    let t = Instant::now();
    let pipeline = agent.pipeline(None);
    let locked = pipeline.begin().await?;
    let staged = match pipeline.stage(locked, target.clone().into()).await {
        Ok(Stage::Staged(staged)) => staged,
        Ok(Stage::Current(_)) => {
            write_marker(agent, &target.id()).await?;
            if agent.group.is_some() && agent.watch.rollout.is_staged() {
                // Serving it already (it booted into it): the waves do not wait for it.
                barrier::write_validated(agent, &target.id(), &target.token()).await?;
            }
            return Ok(false);
        }
        Err(err) => {
            record(steps, "stage", t, Outcome::Failed, err.to_string());
            return Err(err);
        }
    };
    let detail = staged.pulled().staged_detail();
    record(steps, "stage", t, Outcome::Ok, detail);
    Ok(true)
}

/// Switches under the lock (staging again is a no-op when nothing changed) and cleans old markers.
async fn switch_step(
    agent: &Agent<'_>,
    target: &Target,
    steps: &mut Vec<Step>,
    cleaner: bool,
    once: Option<&Scope>,
) -> Result<Deployed, ReleaseError> {
    let t = Instant::now();
    let pipeline = agent.pipeline(once);
    let locked = pipeline.begin().await?;
    let staged = match pipeline.stage(locked, target.clone().into()).await? {
        Stage::Current(_) => return Ok(Deployed::Current),
        Stage::Staged(staged) => staged,
    };
    let switched = match pipeline.prepare(staged).await {
        Ok(prepared) => match pipeline.switch(prepared).await {
            Ok(live) => pipeline.validate(live).await,
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    let pulled = match switched {
        Ok(pulled) => pulled,
        Err(err) => {
            record(steps, "switch", t, Outcome::Failed, err.to_string());
            return Err(err);
        }
    };
    record(
        steps,
        "switch",
        t,
        Outcome::Ok,
        pulled.human(&agent.settings.layout.link),
    );
    let id = target.id();
    clean_markers(agent, &id, pulled.previous.as_deref(), cleaner).await;
    Ok(Deployed::Switched(
        pulled.previous.unwrap_or_else(|| "none".into()),
    ))
}

async fn notify(agent: &Agent<'_>, topic: Option<&str>, outcome: &str, body: &str) {
    let Some(topic) = topic else { return };
    let subject = crate::notify::subject(agent.group.as_deref(), &agent.instance_id, outcome);
    if let Err(why) = crate::notify::publish(agent.aws, topic, &subject, body).await {
        tracing::warn!("{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
