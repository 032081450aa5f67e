//! `embark boot`: the diagram in DESIGN.md. Identity → EIP → EFS → release → health, each step timed
//! and bounded by its own deadline and the boot's, the lifecycle action kept alive by heartbeats, the
//! failure policy applied, the report kept and sent. Each step lives in its own module; this one only
//! orders them and decides what a failure means.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tracing::Instrument;

use crate::config::Config;
use crate::context::{Context, ContextError, Instance};
use crate::error::Error;
use crate::health::{self, FailurePolicy, LifecycleState};
use crate::status::{self, now, Outcome, Report, Reported, RunStatus};
use crate::{efs, eip, release};

/// The boot's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Step {
    #[value(skip)]
    Identity,
    Eip,
    Efs,
    Release,
    Logs,
    Health,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Identity,
        Step::Eip,
        Step::Efs,
        Step::Release,
        Step::Logs,
        Step::Health,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Identity => "identity",
            Step::Eip => "eip",
            Step::Efs => "efs",
            Step::Release => "release",
            Step::Logs => "logs",
            Step::Health => "health",
        }
    }

    /// The step's own deadline: what it may wait for, plus room for its AWS calls. The boot's
    /// `deadline` bounds every step too.
    pub fn own_limit(self, config: &Config) -> Duration {
        let slack = |d: Duration, s: u64| d + Duration::from_secs(s);
        match self {
            Step::Identity => slack(config.imds_deadline, 60),
            Step::Eip => slack(config.eip.wait, 120),
            Step::Efs => slack(config.efs_deadline, 60),
            Step::Release => config.deadline,
            Step::Logs => Duration::from_secs(180),
            Step::Health => slack(config.health.timeout, 60),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Change nothing; print what each step would do.
    pub plan: bool,
    /// Steps to run as --plan only (e.g. `efs` on a machine without an NFS client).
    pub plan_steps: Vec<Step>,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

pub async fn run(ctx: &Context, options: &Options) -> Result<(), Error> {
    let mut boot = Boot::new(ctx, options);
    let instance = match boot.identify().await {
        Ok(instance) => instance,
        Err(failed) => return boot.finish_early(failed).await,
    };
    let heartbeat = match (&boot.lifecycle.waiting, options.plan) {
        (Some(l), false) => Some(health::start_heartbeat(instance.autoscaling(), l.clone())),
        _ => None,
    };
    let failure = if options.plan {
        boot.one_by_one(&Step::ALL[1..], &instance).await
    } else {
        match boot.overlapped(&instance).await {
            Ok(()) => {
                boot.one_by_one(&[Step::Logs, Step::Health], &instance)
                    .await
            }
            Err(failed) => Some(failed),
        }
    };
    if let Some(handle) = heartbeat {
        handle.abort();
    }
    match (options.plan, failure) {
        (true, Some((_, err))) => Err(err),
        (true, None) => Ok(()),
        (false, failure) => boot.finish(&instance, failure).await,
    }
}

/// The configuration file does not parse (a syntax error, an unknown key): the boot still identifies the
/// instance with every default and applies the failure policy (ABANDON, or Unhealthy) with the
/// configuration's error as the reason, and writes its report, so that the group replaces the
/// instance now instead of at the lifecycle hook's timeout. `ctx` holds the defaults; `broken` is the
/// error (exit 2).
pub async fn run_unconfigured(
    ctx: &Context,
    options: &Options,
    broken: Error,
) -> Result<(), Error> {
    let mut boot = Boot::new(ctx, options);
    let known = boot.identify().await.ok().map(Box::new);
    boot.finish_early(EarlyFailure { err: broken, known }).await
}

/// A boot under way: its options, its report, and what it learnt about the lifecycle action.
struct Boot<'a> {
    ctx: &'a Context,
    options: &'a Options,
    started: Instant,
    report: Report,
    state_dir: PathBuf,
    lifecycle: LifecycleState,
    /// An earlier boot of this instance succeeded: no second notification.
    rerun: bool,
}

/// The identity step failed; with `known`, far enough to apply the failure policy.
struct EarlyFailure {
    err: Error,
    known: Option<Box<Instance>>,
}

impl<'a> Boot<'a> {
    fn new(ctx: &'a Context, options: &'a Options) -> Boot<'a> {
        let steps = Step::ALL
            .iter()
            .map(|step| status::Step {
                name: step.name().to_string(),
                outcome: Outcome::NotRun,
                duration_ms: 0,
                detail: String::new(),
            })
            .collect();
        Boot {
            ctx,
            options,
            started: Instant::now(),
            report: Report {
                steps,
                ..Report::running("boot".into(), None, None)
            },
            state_dir: ctx.config.state_dir.clone(),
            lifecycle: LifecycleState::default(),
            rerun: false,
        }
    }

    /// Step 1: who this instance is, its group's launching hook, then the group's tags on the
    /// configuration. Once the instance is known, a failure (a tag typo included) can still apply
    /// the failure policy, so the group replaces the instance instead of waiting for the hook.
    async fn identify(&mut self) -> Result<Instance, EarlyFailure> {
        let t = Instant::now();
        let limit = Step::Identity
            .own_limit(&self.ctx.config)
            .min(self.ctx.config.deadline);
        let unknown = |err: Error| EarlyFailure { err, known: None };
        let (identity, aws) = match tokio::time::timeout(limit, self.ctx.identify()).await {
            Ok(found) => found.map_err(|e| unknown(e.into()))?,
            Err(_) => {
                return Err(unknown(Error::Failed(format!(
                    "the identity step did not finish within {}",
                    humantime::format_duration(limit)
                ))))
            }
        };
        self.report.instance_id = Some(identity.metadata.instance_id.clone());
        self.report.group = identity.auto_scaling_group.clone();
        let meta = &identity.metadata;
        self.lifecycle.warm = meta
            .target_lifecycle_state
            .clone()
            .filter(|state| state.starts_with("Warmed:"));
        self.report.warm = self.lifecycle.warm.is_some();
        self.remember_earlier_boot(&meta.instance_id);
        // The file's settings first: the hook lookup must not depend on tags that may be broken.
        let file_only = Instance {
            identity: identity.clone(),
            aws: aws.clone(),
            config: self.ctx.config.clone(),
        };
        match self.find_hook(&file_only).await {
            Ok(waiting) => self.lifecycle.waiting = waiting,
            Err(err) => {
                return Err(EarlyFailure {
                    err: health::HealthError::from(err).into(),
                    known: Some(Box::new(file_only)),
                })
            }
        }
        let instance = match self.ctx.instance_of(identity, aws) {
            Ok(instance) => instance,
            Err(err) => {
                return Err(EarlyFailure {
                    err: ContextError::from(err).into(),
                    known: Some(Box::new(file_only)),
                })
            }
        };
        let detail = identity_detail(&instance, self.lifecycle.waiting.as_ref());
        if let Some(gap) = instance.config.boot_gap() {
            let hint = not_propagated_hint(&instance).await;
            return Err(EarlyFailure {
                err: Error::Usage(format!("{gap}{hint}")),
                known: Some(Box::new(instance)),
            });
        }
        self.record(Step::Identity, t.elapsed(), Outcome::Ok, detail);
        Ok(instance)
    }

    /// Reads the last report: a boot of this very instance that completed the lifecycle action
    /// (or succeeded) makes this one a rerun. A warm pool's boot does not count for the boot out of
    /// the pool: that one has its own lifecycle action, and is the first to serve.
    fn remember_earlier_boot(&mut self, instance_id: &str) {
        match Report::read(&self.state_dir) {
            Ok(Some(prev)) if prev.instance_id.as_deref() == Some(instance_id) => {
                // Drained since (back into the warm pool, or a shutdown): a new lifecycle action may
                // be waiting, and this boot rejoins the fleet.
                let drained = matches!(Report::read_drain(&self.state_dir), Ok(Some(d))
                    if d.instance_id == prev.instance_id && d.started > prev.started);
                let same_phase = prev.warm == self.report.warm && !drained;
                self.lifecycle.completed_before = prev.lifecycle_completed && same_phase;
                self.rerun = prev.status == RunStatus::Done && same_phase;
            }
            Ok(Some(prev)) => tracing::info!(
                "ignoring the status left by instance {} (an image baked after a test boot?)",
                prev.instance_id.as_deref().unwrap_or("unknown")
            ),
            Ok(None) => {}
            Err(why) => tracing::warn!("{why}; starting afresh"),
        }
    }

    async fn find_hook(
        &self,
        instance: &Instance,
    ) -> Result<Option<health::Lifecycle>, health::LifecycleError> {
        match instance.group() {
            Some(group) if !self.lifecycle.completed_before => {
                let setting = &instance.config.health.lifecycle_hook;
                let launching = health::Transition::Launching;
                health::find_hook(
                    &instance.autoscaling(),
                    group,
                    instance.id(),
                    setting,
                    launching,
                )
                .await
            }
            _ => Ok(None),
        }
    }

    /// Steps one after another, until one fails.
    async fn one_by_one(&mut self, steps: &[Step], instance: &Instance) -> Option<(Step, Error)> {
        for step in steps {
            let (elapsed, result) = self
                .timed(*step, instance, self.step_outcome(*step, instance))
                .await;
            if let Err(err) = self.finished(*step, instance, elapsed, result) {
                return Some((*step, err));
            }
        }
        None
    }

    /// EIP, EFS and the release's fetch and verification need nothing from each other: they run at
    /// once, each bounded and timed as its own step. A failure does not cancel the others: a step
    /// that has changed the world (an address bound, a file system mounted) finishes within its own
    /// deadline and is reported with what it did, never as not run. Only the switch and its hooks
    /// wait, for the mounts. The release step's time is its fetch plus its switch.
    async fn overlapped(&mut self, instance: &Instance) -> Result<(), (Step, Error)> {
        let http = self
            .ctx
            .http_client()
            .map_err(|e| (Step::Release, Error::from(e)))?;
        let this = &*self;
        let eip = this.timed(Step::Eip, instance, this.step_outcome(Step::Eip, instance));
        let efs = this.timed(Step::Efs, instance, this.step_outcome(Step::Efs, instance));
        let stage = this.timed(Step::Release, instance, async {
            release::stage(instance, &http).await.map_err(Error::from)
        });
        let ((eip_took, eip), (efs_took, efs), (staging, staged)) = tokio::join!(eip, efs, stage);
        let mut first = None;
        for (step, took, result) in [(Step::Eip, eip_took, eip), (Step::Efs, efs_took, efs)] {
            if let Err(err) = self.finished(step, instance, took, result) {
                first.get_or_insert((step, err));
            }
        }
        let staged = match staged {
            Ok(staged) => staged,
            Err(err) => {
                let err = self.failed(Step::Release, instance, staging, err);
                return Err(first.unwrap_or((Step::Release, err)));
            }
        };
        if let Some(failed) = first {
            return Err(failed);
        }
        let work = async {
            let done = release::switch(staged, &http).await?;
            Ok(Box::new(done) as Box<dyn Reported + Send>)
        };
        let (switching, result) = self.timed(Step::Release, instance, work).await;
        self.finished(Step::Release, instance, staging + switching, result)
            .map_err(|e| (Step::Release, e))
    }

    /// `work` as step `step`: bounded by its own limit and what is left of the boot's deadline, timed.
    async fn timed<T>(
        &self,
        step: Step,
        instance: &Instance,
        work: impl Future<Output = Result<T, Error>>,
    ) -> (Duration, Result<T, Error>) {
        let t = Instant::now();
        let deadline = instance.config.deadline;
        let left = deadline.saturating_sub(self.started.elapsed());
        let limit = step.own_limit(&instance.config).min(left);
        let span = tracing::info_span!("step", step = step.name(), instance_id = %instance.id());
        let result = bounded(limit, step.name(), deadline, left, work)
            .instrument(span)
            .await;
        (t.elapsed(), result)
    }

    /// A step's outcome into the log and the report.
    fn finished(
        &mut self,
        step: Step,
        instance: &Instance,
        elapsed: Duration,
        result: Result<Box<dyn Reported + Send>, Error>,
    ) -> Result<(), Error> {
        match result {
            Ok(done) => {
                let (outcome, detail) = (done.status(), done.detail());
                if self.options.plan {
                    crate::output::say(&format!("{}:\n{}", step.name(), indent(&detail)));
                } else {
                    tracing::info!(step = step.name(), instance_id = %instance.id(), "{}: {} ({} ms)", step.name(), outcome.word(), millis(elapsed));
                }
                self.report.lifecycle_completed |= done.lifecycle_completed();
                self.record(step, elapsed, outcome, detail);
                Ok(())
            }
            Err(err) => Err(self.failed(step, instance, elapsed, err)),
        }
    }

    /// A failed step into the log and the report; the error back.
    fn failed(&mut self, step: Step, instance: &Instance, elapsed: Duration, err: Error) -> Error {
        tracing::error!(step = step.name(), instance_id = %instance.id(), "{} failed: {err}", step.name());
        self.record(step, elapsed, Outcome::Failed, err.to_string());
        err
    }

    /// Calls into the step's own module.
    async fn step_outcome(
        &self,
        step: Step,
        instance: &Instance,
    ) -> Result<Box<dyn Reported + Send>, Error> {
        let asked = self.options.plan_steps.contains(&step);
        let plan = self.options.plan || asked;
        if let Some(state) = &self.lifecycle.warm {
            if matches!(step, Step::Eip | Step::Efs | Step::Logs) {
                return Ok(Box::new(WarmPool(state.clone())));
            }
        }
        Ok(match step {
            Step::Identity => {
                return Err(Error::Failed(
                    "the identity step runs before every other".into(),
                ))
            }
            Step::Eip => Box::new(eip::step(instance, None, plan).await?),
            Step::Efs => {
                let paths = efs::Paths::system();
                let mut outcome = efs::step(instance, &self.ctx.resolver, &paths, plan).await?;
                if asked && !self.options.plan {
                    outcome = outcome.with_note(plan_step_note());
                }
                Box::new(outcome)
            }
            Step::Release => {
                let http = self.ctx.http_client()?;
                Box::new(release::step(instance, &http, plan).await?)
            }
            Step::Logs => {
                let names = crate::logs::Names::of(instance);
                let done = crate::logs::step(&instance.config.logs, &names, plan).await?;
                let required = instance
                    .config
                    .boot
                    .require
                    .as_ref()
                    .is_some_and(|r| r.contains(&crate::config::Requirable::Logs));
                if required && matches!(done, crate::logs::StepOutcome::AgentAbsent { .. }) {
                    return Err(Error::Failed(format!(
                        "logs are required ([boot] require or embark:require), but {}",
                        done.detail()
                    )));
                }
                Box::new(done)
            }
            Step::Health => {
                let http = self.ctx.http_client()?;
                Box::new(health::step(instance, &http, &self.lifecycle, plan).await?)
            }
        })
    }

    fn record(&mut self, step: Step, took: Duration, outcome: Outcome, detail: String) {
        if let Some(entry) = self.report.steps.iter_mut().find(|s| s.name == step.name()) {
            entry.outcome = outcome;
            entry.duration_ms = millis(took);
            entry.detail = detail.trim_end().to_string();
        }
        if !self.options.plan {
            write_status(&self.report, &self.state_dir);
        }
    }

    /// The identity step failed: record it, and where the instance is known apply the failure
    /// policy and notify.
    async fn finish_early(mut self, failed: EarlyFailure) -> Result<(), Error> {
        let t = self.started;
        self.record(
            Step::Identity,
            t.elapsed(),
            Outcome::Failed,
            failed.err.to_string(),
        );
        match failed.known {
            Some(instance) if !self.options.plan => {
                self.finish(&instance, Some((Step::Identity, failed.err)))
                    .await
            }
            _ => {
                self.report.status = RunStatus::Error;
                self.report.finished = Some(now());
                self.report.duration_ms = millis(self.started.elapsed());
                self.report.error = Some(format!(
                    "step identity failed: {}; the instance is not known, so no lifecycle action can be completed",
                    failed.err
                ));
                if !self.options.plan {
                    write_status(&self.report, &self.state_dir);
                }
                Err(failed.err)
            }
        }
    }

    /// The end of a boot that ran: the failure policy if a step failed, the report, the notification.
    async fn finish(
        mut self,
        instance: &Instance,
        failure: Option<(Step, Error)>,
    ) -> Result<(), Error> {
        self.report.duration_ms = millis(self.started.elapsed());
        self.report.finished = Some(now());
        let notify = &instance.config.notify;
        let Some((step, err)) = failure else {
            self.report.status = RunStatus::Done;
            write_status(&self.report, &self.state_dir);
            crate::output::say(&self.report.human());
            if self.rerun {
                tracing::info!(
                    "an earlier boot of this instance succeeded; no notification sent again"
                );
            } else if let Some(state) = &self.lifecycle.warm {
                tracing::info!(
                    "staged for the warm pool ({state}); the boot out of the pool binds, mounts, registers and notifies"
                );
            } else if let Some(topic) = &notify.success_topic {
                send(instance, topic, "boot succeeded", &self.report).await;
            }
            return Ok(());
        };
        let policy = FailurePolicy::decide(
            instance.config.health.on_failure,
            self.lifecycle.waiting.as_ref(),
            instance.group(),
        );
        let policy = policy.apply(&instance.autoscaling(), instance.id()).await;
        self.report.status = RunStatus::Error;
        self.report.error = Some(format!("step {} failed: {err}; {policy}", step.name()));
        write_status(&self.report, &self.state_dir);
        crate::output::say(&self.report.human());
        if let Some(topic) = &notify.error_topic {
            let outcome = format!("boot failed at {}", step.name());
            send(instance, topic, &outcome, &self.report).await;
        }
        Err(match err {
            Error::Config(_) | Error::Usage(_) | Error::Context(ContextError::Config(_)) => err,
            other => Error::Failed(format!(
                "boot failed at step {}: {other}; {policy}",
                step.name()
            )),
        })
    }
}

/// A step left for the boot out of the warm pool: an Elastic IP, a mount or log shipping would be held
/// by a stopped instance.
struct WarmPool(String);

impl Reported for WarmPool {
    fn status(&self) -> Outcome {
        Outcome::Skipped
    }

    fn detail(&self) -> String {
        format!(
            "the instance is going into its warm pool ({}): this step runs when it leaves the pool",
            self.0
        )
    }
}

fn identity_detail(instance: &Instance, lifecycle: Option<&health::Lifecycle>) -> String {
    let meta = &instance.identity.metadata;
    format!(
        "{} in {} ({}){}{}",
        meta.instance_id,
        meta.availability_zone,
        meta.region,
        instance
            .group()
            .map(|g| format!(", group {g}"))
            .unwrap_or_else(|| ", no Auto Scaling group".into()),
        lifecycle
            .map(|l| format!(", launching hook {}", l.hook))
            .unwrap_or_default()
    )
}

/// When the instance carries no `embark:*` tag but its group has some that do not propagate, say so:
/// that is the usual reason for a boot with nothing to do.
async fn not_propagated_hint(instance: &Instance) -> String {
    let Some(group) = instance.group() else {
        return String::new();
    };
    if instance
        .identity
        .tags
        .keys()
        .any(|k| k.starts_with("embark:"))
    {
        return String::new();
    }
    let tags = crate::identity::unpropagated_group_tags(&instance.aws, group).await;
    if tags.is_empty() {
        return String::new();
    }
    format!(
        ". Group {group} has {} with PropagateAtLaunch=false, so its instances do not get them: set PropagateAtLaunch=true",
        tags.join(", ")
    )
}

fn plan_step_note() -> String {
    if efs::this_kernel_has_nfs4() {
        "run as --plan because --plan-step efs was given".into()
    } else {
        "run as --plan (--plan-step efs): this kernel has no NFSv4 client, so the mount itself cannot run here".into()
    }
}

/// Run a step within its limit; running out is the step's failure, saying which deadline it was.
async fn bounded<T>(
    limit: Duration,
    name: &str,
    deadline: Duration,
    left: Duration,
    step: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    if left.is_zero() {
        return Err(Error::Failed(format!(
            "the boot's deadline of {} passed before the {name} step",
            humantime::format_duration(deadline)
        )));
    }
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result,
        Err(_) if limit >= left => Err(Error::Failed(format!(
            "the boot's deadline of {} passed during the {name} step",
            humantime::format_duration(deadline)
        ))),
        Err(_) => Err(Error::Failed(format!(
            "the {name} step did not finish within its own deadline of {}",
            humantime::format_duration(limit)
        ))),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn write_status(report: &Report, state_dir: &std::path::Path) {
    if let Err(why) = report.write(state_dir) {
        tracing::warn!("{why}");
    }
}

async fn send(instance: &Instance, topic: &str, outcome: &str, report: &Report) {
    let subject = crate::notify::subject(
        report.group.as_deref(),
        report.instance_id.as_deref().unwrap_or("unknown"),
        outcome,
    );
    if let Err(why) = crate::notify::publish(&instance.aws, topic, &subject, &report.human()).await
    {
        tracing::warn!("{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sleep_then(d: Duration) -> Result<&'static str, Error> {
        tokio::time::sleep(d).await;
        Ok("done")
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_runs_out_of_its_own_deadline_or_the_boots() {
        let s = Duration::from_secs;
        let ok = bounded(s(5), "eip", s(600), s(600), sleep_then(s(1))).await;
        assert_eq!(ok.unwrap(), "done");
        let own = bounded(s(5), "eip", s(600), s(600), sleep_then(s(10)))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            own,
            "the eip step did not finish within its own deadline of 5s"
        );
        let boots = bounded(s(5), "release", s(600), s(5), sleep_then(s(10)))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            boots,
            "the boot's deadline of 10m passed during the release step"
        );
        let before = bounded(s(5), "health", s(600), Duration::ZERO, sleep_then(s(0)))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            before,
            "the boot's deadline of 10m passed before the health step"
        );
    }

    #[test]
    fn each_step_has_its_own_limit_from_the_config() {
        let mut config = Config::default();
        config.eip.wait = Duration::from_secs(30);
        config.health.timeout = Duration::from_secs(10);
        let limits: Vec<(&str, u64)> = Step::ALL
            .iter()
            .map(|s| (s.name(), s.own_limit(&config).as_secs()))
            .collect();
        assert_eq!(
            limits,
            vec![
                ("identity", 180),
                ("eip", 150),
                ("efs", 360),
                ("release", 600),
                ("logs", 180),
                ("health", 70)
            ]
        );
    }

    #[test]
    fn plan_steps_parse_by_name_and_identity_is_not_one() {
        assert_eq!(Step::from_str("efs", false), Ok(Step::Efs));
        assert!(Step::from_str("identity", false).is_err());
        assert_eq!(indent("a\nb"), "  a\n  b\n");
    }
}
