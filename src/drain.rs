//! `embark drain`: the mirror of the boot when an instance leaves the fleet (scale-in, instance
//! refresh, a Spot notice, a shutdown). Leave the target groups and wait for draining, run the stop
//! hooks, complete the terminating lifecycle action (heartbeats while it runs), notify. Every step is
//! timed, bounded and reported in `drain.json`; a drain runs once per time in the fleet (docs/drain.md).

use std::time::{Duration, Instant};

use crate::context::Instance;
use crate::hooks::{self, HookEnv};
use crate::lifecycle::{self, LifecycleResult, Transition};
use crate::retry::{retry, Failure, Policy, Verdict};
use crate::status::{self, now, Outcome, Report, RunStatus};

/// Why the drain runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `embark drain` by hand, or the boot unit's ExecStop (a shutdown).
    Command,
    /// The group is terminating the instance (`target-lifecycle-state` Terminated).
    Terminating,
    /// The instance is going back to a warm pool (`Warmed:*`).
    Warmed(String),
    /// A Spot interruption notice: EC2 acts at `time` (two minutes after the notice).
    Spot {
        action: String,
        time: Option<String>,
    },
    /// A Spot rebalance recommendation.
    Rebalance,
}

impl Trigger {
    fn says(&self) -> String {
        match self {
            Trigger::Command => "embark drain".to_string(),
            Trigger::Terminating => "the group is terminating this instance".to_string(),
            Trigger::Warmed(state) => format!("the instance is going to its warm pool ({state})"),
            Trigger::Spot { action, time } => format!(
                "Spot interruption notice: {action} at {}",
                time.as_deref().unwrap_or("an unknown time")
            ),
            Trigger::Rebalance => "Spot rebalance recommendation".to_string(),
        }
    }
}

/// What IMDS says now: a reason to drain, if any. `on_spot`: Spot notices count.
pub async fn pending_trigger(
    imds: &crate::identity::Imds,
    on_spot: bool,
) -> Result<Option<Trigger>, crate::identity::IdentityError> {
    if let Some(state) = imds
        .get("meta-data/autoscaling/target-lifecycle-state")
        .await?
    {
        if state == "Terminated" {
            return Ok(Some(Trigger::Terminating));
        }
        if state.starts_with("Warmed:") {
            return Ok(Some(Trigger::Warmed(state)));
        }
    }
    if !on_spot {
        return Ok(None);
    }
    if let Some(notice) = imds.get("meta-data/spot/instance-action").await? {
        let value: serde_json::Value = serde_json::from_str(&notice).unwrap_or_default();
        return Ok(Some(Trigger::Spot {
            action: value["action"].as_str().unwrap_or("terminate").to_string(),
            time: value["time"].as_str().map(str::to_string),
        }));
    }
    if imds
        .get("meta-data/events/recommendations/rebalance")
        .await?
        .is_some()
    {
        return Ok(Some(Trigger::Rebalance));
    }
    Ok(None)
}

/// The time left before a Spot action, less a margin for the lifecycle call: the drain's deadline.
fn spot_deadline(time: Option<&str>, configured: Duration) -> Duration {
    let Some(at) = time.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
        return configured;
    };
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .saturating_sub(Duration::from_secs(15));
    configured.min(left.max(Duration::from_secs(10)))
}

/// What a drain needs beyond the instance.
pub struct Drain<'a> {
    pub instance: &'a Instance,
    pub http: &'a reqwest::Client,
    pub plan: bool,
    pub trigger: Trigger,
}

/// How a drain ended, for the caller.
pub enum Drained {
    /// An earlier drain of this instance finished: nothing to do again.
    Already,
    Done(Report),
}

/// The instance booted after this drain (a reboot, or out of its warm pool): it rejoined the fleet,
/// and the next trigger drains it again. Reports' times are RFC 3339 in UTC: they sort as text.
pub fn booted_since(state_dir: &std::path::Path, drain: &Report) -> bool {
    matches!(Report::read(state_dir), Ok(Some(boot))
        if boot.instance_id == drain.instance_id && boot.started > drain.started)
}

/// A warm-pool trigger drains an instance that served; the instance's first trip into the pool (its
/// boot staged it for the pool: nothing serves yet) has nothing to drain.
pub fn worth_draining(trigger: &Trigger, state_dir: &std::path::Path, instance_id: &str) -> bool {
    if !matches!(trigger, Trigger::Warmed(_)) {
        return true;
    }
    !matches!(Report::read(state_dir), Ok(Some(boot))
        if boot.instance_id.as_deref() == Some(instance_id) && boot.warm)
}

/// Runs the drain once: a drain already done for this instance is a no-op; a second trigger while one
/// runs waits for it (a lock in the state dir) and then finds it done.
pub async fn run(drain: &Drain<'_>) -> Result<Drained, String> {
    let config = &drain.instance.config;
    let state_dir = config.state_dir.clone();
    let _lock = if drain.plan {
        None
    } else {
        Some(lock(&state_dir).await?)
    };
    if let Ok(Some(last)) = Report::read_drain(&state_dir) {
        if last.instance_id.as_deref() == Some(drain.instance.id())
            && last.status != RunStatus::Running
            && !booted_since(&state_dir, &last)
        {
            return Ok(Drained::Already);
        }
    }
    let deadline = match &drain.trigger {
        Trigger::Spot { time, .. } => spot_deadline(time.as_deref(), config.drain.deadline),
        _ => config.drain.deadline,
    };
    let mut report = Report::running(
        "drain".into(),
        Some(drain.instance.id().to_string()),
        drain.instance.group().map(str::to_string),
    );
    tracing::info!(instance_id = %drain.instance.id(), "draining: {}", drain.trigger.says());
    let started = Instant::now();
    let terminating = find_action(drain).await;
    let heartbeat = match (&terminating, drain.plan) {
        (Ok(Some(l)), false) => Some(lifecycle::start_heartbeat(
            drain.instance.autoscaling(),
            l.clone(),
        )),
        _ => None,
    };
    let left = |started: Instant| deadline.saturating_sub(started.elapsed());
    record(
        &mut report,
        "trigger",
        Instant::now(),
        Ok(drain.trigger.says()),
    );
    let t = Instant::now();
    let targets = tokio::time::timeout(left(started), leave_targets(drain)).await;
    record(
        &mut report,
        "targets",
        t,
        flatten(targets, "leaving the target groups"),
    );
    let t = Instant::now();
    let hooks = tokio::time::timeout(left(started), stop_hooks(drain)).await;
    record(&mut report, "hooks", t, flatten(hooks, "the stop hooks"));
    if let Some(handle) = heartbeat {
        handle.abort();
    }
    let t = Instant::now();
    let completed = complete_action(drain, terminating).await;
    report.lifecycle_completed = completed.is_ok() && !drain.plan;
    record(&mut report, "lifecycle", t, completed);
    finish(drain, report, started).await.map(Drained::Done)
}

async fn finish(drain: &Drain<'_>, mut report: Report, started: Instant) -> Result<Report, String> {
    let failed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.outcome == Outcome::Failed)
        .map(|s| format!("{}: {}", s.name, s.detail))
        .collect();
    report.status = if failed.is_empty() {
        RunStatus::Done
    } else {
        RunStatus::Error
    };
    report.error = (!failed.is_empty()).then(|| failed.join("; "));
    report.finished = Some(now());
    report.duration_ms = started.elapsed().as_millis() as u64;
    if drain.plan {
        return Ok(report);
    }
    let state_dir = &drain.instance.config.state_dir;
    if let Err(why) = report.write_as(state_dir, status::DRAIN_FILE) {
        tracing::warn!("{why}");
    }
    let notify = &drain.instance.config.notify;
    let (topic, outcome) = if failed.is_empty() {
        (notify.success_topic.as_deref(), "drained")
    } else {
        (notify.error_topic.as_deref(), "drained with errors")
    };
    if let Some(topic) = topic {
        let subject = crate::notify::subject(report.group.as_deref(), drain.instance.id(), outcome);
        if let Err(why) =
            crate::notify::publish(&drain.instance.aws, topic, &subject, &report.human()).await
        {
            tracing::warn!("{why}");
        }
    }
    Ok(report)
}

fn flatten(
    result: Result<Result<String, String>, tokio::time::error::Elapsed>,
    what: &str,
) -> Result<String, String> {
    result.unwrap_or_else(|_| Err(format!("{what} did not finish within the drain's deadline")))
}

fn record(report: &mut Report, name: &str, started: Instant, result: Result<String, String>) {
    let (outcome, detail) = match result {
        Ok(detail) => (Outcome::Ok, detail),
        Err(why) => (Outcome::Failed, why),
    };
    let outcome = if detail.starts_with("skipped: ") {
        Outcome::Skipped
    } else {
        outcome
    };
    report.steps.push(status::Step {
        name: name.to_string(),
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        detail,
    });
}

/// One drain at a time on this machine.
async fn lock(state_dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = state_dir.join("drain.lock");
    let dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("the lock task stopped: {e}"))?
}

/// Deregister from each target group, then wait until the target has left `draining`.
async fn leave_targets(drain: &Drain<'_>) -> Result<String, String> {
    let config = &drain.instance.config;
    let arns = config
        .drain
        .target_groups
        .clone()
        .unwrap_or_else(|| config.health.target_groups.clone());
    if arns.is_empty() {
        return Ok("skipped: no target groups ([drain] or [health] target_groups)".into());
    }
    let id = drain.instance.id();
    if drain.plan {
        return Ok(format!("would deregister {id} from {}", arns.join(", ")));
    }
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&drain.instance.aws.config);
    for arn in &arns {
        deregister(&elb, arn, id).await?;
    }
    Ok(format!(
        "left {} and waited for draining",
        crate::output::count(arns.len() as u64, "target group", "target groups")
    ))
}

async fn deregister(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    arn: &str,
    id: &str,
) -> Result<(), String> {
    // Not registered (never was, or an earlier drain left already): nothing to leave. Deregistering
    // an unknown target is an error (InvalidTarget).
    let registered = crate::targets::state(elb, arn, id)
        .await
        .map_err(|e| e.to_string())?;
    if registered.is_none() {
        return Ok(());
    }
    crate::targets::deregister(elb, arn, id)
        .await
        .map_err(|e| e.to_string())?;
    // The target stays `draining` for the group's deregistration delay; the drain's deadline bounds
    // the wait.
    let policy = Policy::new(
        Duration::from_millis(500),
        Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    let result = retry(
        policy,
        |_| async {
            match crate::targets::state(elb, arn, id).await {
                Ok(Some(state)) if state == "draining" => Verdict::Retry(state),
                Ok(_) => Verdict::Done(()),
                Err(err) => Verdict::Stop(err.to_string()),
            }
        },
        |w| tracing::info!("{id} is still {} in {arn}; waiting", w.last),
    )
    .await;
    result.map_err(|failure| match failure {
        Failure::Stopped(err) => err,
        Failure::GaveUp { last, .. } => format!("{id} is still {last} in {arn}"),
    })
}

/// The stop hooks for this role, in order; each bounded by its timeout. A failing hook is reported
/// and the next one still runs: the instance is leaving either way.
async fn stop_hooks(drain: &Drain<'_>) -> Result<String, String> {
    let config = &drain.instance.config;
    let selected = hooks::for_role(&config.drain.hooks, config.role.as_deref());
    if selected.is_empty() {
        return Ok("skipped: no [[drain.hooks]] for this role".into());
    }
    if drain.plan {
        let list: Vec<String> = selected.iter().map(|h| hooks::describe(h)).collect();
        return Ok(format!("would run {}", list.join(", then ")));
    }
    let current = config.release.root.join(&config.release.link);
    let dir = if current.is_dir() {
        current
    } else {
        std::path::PathBuf::from("/")
    };
    let env = HookEnv {
        vars: vec![
            ("EMBARK_ROLE", config.role.clone().unwrap_or_default()),
            ("EMBARK_DRAIN_REASON", drain.trigger.says()),
            ("EMBARK_INSTANCE_ID", drain.instance.id().to_string()),
        ],
        dir: &dir,
    };
    let mut failures = Vec::new();
    for hook in &selected {
        tracing::info!("running stop hook {}", hooks::describe(hook));
        if let Err(why) = hooks::run(hook, &env, drain.http).await {
            failures.push(format!("{}: {why}", hooks::describe(hook)));
        }
    }
    if failures.is_empty() {
        Ok(format!(
            "ran {}",
            crate::output::count(selected.len() as u64, "stop hook", "stop hooks")
        ))
    } else {
        Err(format!("stop hook failed: {}", failures.join("; ")))
    }
}

/// The transition whose action this drain completes: going back into a warm pool is a launching
/// transition (`Warmed:Pending:Wait`), leaving the group a terminating one.
fn transition(trigger: &Trigger) -> Transition {
    match trigger {
        Trigger::Warmed(_) => Transition::Launching,
        _ => Transition::Terminating,
    }
}

fn word(transition: Transition) -> &'static str {
    match transition {
        Transition::Launching => "launching (warm pool)",
        Transition::Terminating => "terminating",
    }
}

async fn find_action(drain: &Drain<'_>) -> Result<Option<lifecycle::Lifecycle>, String> {
    let instance = drain.instance;
    let Some(group) = instance.group() else {
        return Ok(None);
    };
    let transition = transition(&drain.trigger);
    let setting = match transition {
        Transition::Launching => &instance.config.health.lifecycle_hook,
        Transition::Terminating => &instance.config.drain.lifecycle_hook,
    };
    lifecycle::find_hook(
        &instance.autoscaling(),
        group,
        instance.id(),
        setting,
        transition,
    )
    .await
    .map_err(|e| e.to_string())
}

/// CONTINUE the action (ABANDON would do the same for a terminating hook: the instance is terminated
/// either way).
async fn complete_action(
    drain: &Drain<'_>,
    found: Result<Option<lifecycle::Lifecycle>, String>,
) -> Result<String, String> {
    let word = word(transition(&drain.trigger));
    let Some(action) = found? else {
        return Ok(match drain.instance.group() {
            Some(group) => format!("skipped: group {group} has no {word} lifecycle hook"),
            None => "skipped: not in an Auto Scaling group".to_string(),
        });
    };
    if drain.plan {
        return Ok(format!(
            "would complete the {word} action of hook {} with CONTINUE",
            action.hook
        ));
    }
    let asg = drain.instance.autoscaling();
    match lifecycle::complete(&asg, &action, LifecycleResult::Continue).await {
        Ok(true) => Ok(format!(
            "{word} action completed: CONTINUE (hook {})",
            action.hook
        )),
        Ok(false) => Ok(format!(
            "skipped: no {word} action of hook {} is waiting ({})",
            action.hook,
            match transition(&drain.trigger) {
                Transition::Launching => "completed earlier, or timed out",
                Transition::Terminating => "not being terminated by the group",
            }
        )),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(command: &str, started: &str, warm: bool) -> Report {
        Report {
            status: RunStatus::Done,
            started: started.into(),
            lifecycle_completed: true,
            warm,
            ..Report::running(command.into(), Some("i-0abc".into()), None)
        }
    }

    #[test]
    fn the_first_trip_into_the_warm_pool_has_nothing_to_drain() {
        let dir = tempfile::tempdir().unwrap();
        let warmed = Trigger::Warmed("Warmed:Stopped".into());
        assert!(worth_draining(&warmed, dir.path(), "i-0abc"), "no boot yet");
        report("boot", "2026-11-27T09:00:00.000Z", true)
            .write(dir.path())
            .unwrap();
        assert!(!worth_draining(&warmed, dir.path(), "i-0abc"));
        assert!(worth_draining(&Trigger::Terminating, dir.path(), "i-0abc"));
        assert!(worth_draining(&warmed, dir.path(), "i-0other"));
        report("boot", "2026-11-27T09:05:00.000Z", false)
            .write(dir.path())
            .unwrap();
        assert!(
            worth_draining(&warmed, dir.path(), "i-0abc"),
            "it served since"
        );
    }

    #[test]
    fn a_boot_after_a_drain_makes_the_next_trigger_drain_again() {
        let dir = tempfile::tempdir().unwrap();
        let drained = report("drain", "2026-11-27T09:10:00.000Z", false);
        report("boot", "2026-11-27T09:00:00.000Z", false)
            .write(dir.path())
            .unwrap();
        assert!(!booted_since(dir.path(), &drained));
        report("boot", "2026-11-27T09:20:00.000Z", false)
            .write(dir.path())
            .unwrap();
        assert!(booted_since(dir.path(), &drained));
    }

    #[test]
    fn a_spot_notice_shortens_the_deadline_to_fit() {
        let in_two_minutes = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(120),
        )
        .to_string();
        let d = spot_deadline(Some(&in_two_minutes), Duration::from_secs(300));
        assert!(
            d <= Duration::from_secs(106) && d >= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(
            spot_deadline(None, Duration::from_secs(300)),
            Duration::from_secs(300)
        );
        let past = "2020-01-01T00:00:00Z";
        assert_eq!(
            spot_deadline(Some(past), Duration::from_secs(300)),
            Duration::from_secs(10)
        );
        assert_eq!(
            spot_deadline(Some(&in_two_minutes), Duration::from_secs(30)),
            Duration::from_secs(30),
            "a shorter configured deadline wins"
        );
    }

    #[test]
    fn triggers_say_why() {
        assert!(Trigger::Spot {
            action: "terminate".into(),
            time: Some("2026-11-27T08:00:00Z".into())
        }
        .says()
        .contains("terminate at 2026-11-27T08:00:00Z"));
        assert!(Trigger::Warmed("Warmed:Stopped".into())
            .says()
            .contains("warm pool"));
    }
}
