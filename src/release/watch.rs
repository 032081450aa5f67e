//! `embark release watch`: the deploy agent. Polls the pointer, stages new releases, writes its ready
//! marker, waits for the fleet barrier, switches. `embark release rollback`: points the source back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::watch as signal_watch;

use super::format::{sha256_hex, Manifest, Pointer, POINTER_FORMAT};
use super::pull::{read_target, stage_target, switch_to, Settings, Target};
use super::store::{Condition, Polled, PutError, Store};
use super::ReleaseError;
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
}

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
    let (stop_tx, mut stop) = signal_watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        let _ = stop_tx.send(true);
    });
    let key = match agent.settings.format {
        ReleaseFormat::Embark => agent.store.source.pointer_key(),
        ReleaseFormat::PullDeploy => agent.store.source.key(super::legacy::POINTER),
    };
    tracing::info!(
        instance_id = %agent.instance_id,
        "watching {} every {} (barrier {}, then {:?})",
        agent.store.url(&key),
        humantime::format_duration(agent.watch.interval),
        humantime::format_duration(agent.watch.barrier),
        agent.watch.on_barrier_timeout
    );
    let mut seen_etag: Option<String> = None;
    let mut notified_failure: Option<String> = None;
    let mut said_absent = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut stop_deploy = stop.clone();
        let attempt = async {
            let polled = agent.store.changed(&key, seen_etag.as_deref()).await?;
            match polled {
                Polled::Unchanged => Ok::<_, ReleaseError>(None),
                Polled::Absent => {
                    if !said_absent {
                        tracing::info!("no release published at {} yet", agent.store.source);
                    }
                    said_absent = true;
                    Ok(None)
                }
                Polled::Changed(etag) => {
                    let target = read_target(agent.store, agent.settings.format).await?;
                    let outcome = deploy(agent, &target, &mut stop_deploy).await?;
                    Ok(Some((etag, target.id, outcome)))
                }
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => break,
        };
        match result {
            Ok(None) => {}
            Ok(Some((etag, id, outcome))) => {
                match &outcome {
                    Deployed::Current => {}
                    Deployed::Switched(previous) => {
                        let text = format!("deployed release {id} (was {previous})");
                        tracing::info!(release = %id, "{text}");
                        notify(
                            agent,
                            agent.success_topic.as_deref(),
                            &format!("deployed {id}"),
                            &text,
                        )
                        .await;
                    }
                    Deployed::Held => {}
                }
                // Remembered only once the release is current: a hold or a failure is tried again.
                if !matches!(outcome, Deployed::Held) {
                    seen_etag = Some(etag);
                    notified_failure = None;
                }
            }
            Err(err) => {
                tracing::error!("deploy failed: {err}; trying again at the next poll");
                let text = err.to_string();
                if notified_failure.as_deref() != Some(text.as_str()) {
                    notify(agent, agent.error_topic.as_deref(), "deploy failed", &text).await;
                    notified_failure = Some(text);
                }
            }
        }
        let pause = jittered(agent.watch.interval);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = stop.changed() => break,
        }
    }
    tracing::info!("stopping: SIGTERM");
    Ok(())
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
    stop: &mut signal_watch::Receiver<bool>,
) -> Result<Deployed, ReleaseError> {
    let started = Instant::now();
    let mut report = Report {
        command: format!("release watch: deploy {}", target.id),
        status: RunStatus::Running,
        instance_id: Some(agent.instance_id.clone()),
        group: agent.group.clone(),
        started: crate::status::now(),
        finished: None,
        duration_ms: 0,
        steps: Vec::new(),
        error: None,
        lifecycle_completed: false,
    };
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
    stop: &mut signal_watch::Receiver<bool>,
    steps: &mut Vec<Step>,
) -> Result<Deployed, ReleaseError> {
    let layout = &agent.settings.layout;
    let id = &target.id;
    let t = Instant::now();
    {
        let _lock = layout.prepare()?;
        let staged = match stage_target(agent.store, agent.settings, target, false).await {
            Ok(staged) => staged,
            Err(err) => {
                record(steps, "stage", t, Outcome::Failed, err.to_string());
                return Err(err);
            }
        };
        if staged.already_current {
            // Already on it (a boot pulled it): still say so, or agents switching to it now would
            // wait for this instance until their barrier deadline.
            write_marker(agent, id).await?;
            return Ok(Deployed::Current);
        }
        record(
            steps,
            "stage",
            t,
            Outcome::Ok,
            format!(
                "{} files verified; {} objects fetched, {} files reused{}",
                staged.files,
                staged.fetched_objects,
                staged.reused_files,
                if staged.bundle_bytes > 0 {
                    ", bundle fetched"
                } else {
                    ""
                }
            ),
        );
    }
    write_marker(agent, id).await?;
    tracing::info!(release = %id, "release {id} staged and verified; ready marker written");

    let t = Instant::now();
    if let Some(group) = &agent.group {
        let started = Instant::now();
        loop {
            let missing = missing_markers(agent, group, id).await?;
            if missing.is_empty() {
                tracing::info!(release = %id, "every InService instance of {group} is ready");
                record(
                    steps,
                    "barrier",
                    t,
                    Outcome::Ok,
                    format!("every InService instance of {group} is ready"),
                );
                break;
            }
            if started.elapsed() >= agent.watch.barrier {
                let list: Vec<&str> = missing.iter().map(String::as_str).collect();
                let what = format!(
                    "release {id}: the barrier deadline of {} passed; not ready: {}",
                    humantime::format_duration(agent.watch.barrier),
                    list.join(", ")
                );
                let first = agent
                    .barrier_noted
                    .lock()
                    .map(|mut noted| noted.insert(id.clone()))
                    .unwrap_or(true);
                let (outcome, action) = match agent.watch.on_barrier_timeout {
                    BarrierTimeout::Switch => ("barrier timeout, switched", "switching anyway (on_barrier_timeout = \"switch\")"),
                    BarrierTimeout::Hold => ("barrier timeout, holding", "holding on the current release until they are (on_barrier_timeout = \"hold\")"),
                };
                if first {
                    tracing::warn!("{what}; {action}");
                    notify(
                        agent,
                        agent.error_topic.as_deref(),
                        outcome,
                        &format!("{what}; {action}"),
                    )
                    .await;
                }
                let failed = format!("{what}; {action}");
                match agent.watch.on_barrier_timeout {
                    BarrierTimeout::Switch => {
                        record(steps, "barrier", t, Outcome::Ok, failed);
                        break;
                    }
                    BarrierTimeout::Hold => {
                        record(steps, "barrier", t, Outcome::Failed, failed);
                        return Ok(Deployed::Held);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                _ = stop.changed() => return Err(ReleaseError::Failed("stopped while waiting at the barrier".into())),
            }
        }
    }

    if agent.group.is_none() {
        record(
            steps,
            "barrier",
            t,
            Outcome::Skipped,
            "not in an Auto Scaling group: no barrier".into(),
        );
    }
    let t = Instant::now();
    let _lock = layout.prepare()?;
    let mut pulled = stage_target(agent.store, agent.settings, target, false).await?;
    if pulled.already_current {
        return Ok(Deployed::Current);
    }
    if let Err(err) = switch_to(agent.settings, &mut pulled, agent.http).await {
        record(steps, "switch", t, Outcome::Failed, err.to_string());
        return Err(err);
    }
    record(steps, "switch", t, Outcome::Ok, pulled.human(&layout.link));
    clean_markers(agent, id).await;
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

/// InService instances of the group without a ready marker for `id`. Instances that left the group
/// (terminated, detached, unhealthy) are not waited for.
async fn missing_markers(
    agent: &Agent<'_>,
    group: &str,
    id: &str,
) -> Result<BTreeSet<String>, ReleaseError> {
    let asg = aws_sdk_autoscaling::Client::new(&agent.aws.config);
    let answer = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|err| {
            ReleaseError::Failed(format!(
                "DescribeAutoScalingGroups {group} failed: {}",
                crate::aws::describe(&err)
            ))
        })?;
    let in_service: BTreeSet<String> = answer
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let prefix = agent.store.source.key(&format!("ready/{id}/"));
    let ready: BTreeSet<String> = agent
        .store
        .list_keys(&prefix)
        .await?
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect();
    Ok(in_service.difference(&ready).cloned().collect())
}

/// This instance's markers for other releases than `current` (each agent cleans its own).
async fn clean_markers(agent: &Agent<'_>, current: &str) {
    let prefix = agent.store.source.key("ready/");
    let Ok(keys) = agent.store.list_keys(&prefix).await else {
        return;
    };
    let mine = format!("/{}", agent.instance_id);
    for key in keys {
        if key.ends_with(&mine) && !key.contains(&format!("ready/{current}/")) {
            if let Err(err) = agent.store.delete(&key).await {
                tracing::debug!("cannot remove the old marker {key}: {err}");
            }
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
pub async fn rollback(store: &Store, to: Option<&str>) -> Result<(String, String), ReleaseError> {
    let key = store.source.pointer_key();
    let (bytes, etag) = store.get_small(&key, 1 << 20).await?.ok_or_else(|| {
        ReleaseError::Failed(format!(
            "no release has been published at {}: nothing to roll back",
            store.source
        ))
    })?;
    let current: Pointer = serde_json::from_slice(&bytes).map_err(|e| {
        ReleaseError::Failed(format!(
            "{} is not a valid embark pointer ({e})",
            store.url(&key)
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
    };
    let body = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| ReleaseError::Failed(format!("cannot encode the pointer: {e}")))?;
    match store.put_bytes(&key, body, Condition::Unchanged(etag)).await {
        Ok(()) => Ok((current.release, target)),
        Err(PutError::Conflict) => Err(ReleaseError::Failed(format!(
            "another push or rollback changed {} while this rollback ran; nothing was changed by this one: look at `embark release list` and try again",
            store.url(&key)
        ))),
        Err(PutError::Failed(err)) => Err(err),
    }
}
