//! `embark boot`: identity → EIP → EFS → release → health, each step timed and bounded, the lifecycle
//! action kept alive by heartbeats, the failure policy applied, the report kept and sent.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::cli::{efs_mount, eip_bind, Context, Instance};
use crate::config::OnFailure;
use crate::error::Error;
use crate::health::{self, Lifecycle};
use crate::status::{Outcome, Report, Step};

pub const STEPS: [&str; 5] = ["identity", "eip", "efs", "release", "health"];

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Change nothing; print what each step would do.
    pub plan: bool,
    /// Steps to run as --plan only (e.g. `efs` on a machine without an NFS client).
    pub plan_steps: Vec<String>,
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// What a step did: its outcome and a line (or a few) saying so.
type StepResult = Result<(Outcome, String), Error>;

/// What the health step needs to know about this boot.
struct Boot<'a> {
    ctx: &'a Context,
    instance: &'a Instance,
    lifecycle: Option<Lifecycle>,
    /// An earlier boot of this very instance completed the lifecycle action.
    completed_before: bool,
    plan: bool,
}

pub async fn run(ctx: &Context, options: &Options) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = ctx.config.deadline;
    let mut report = Report {
        command: "boot".into(),
        status: "running".into(),
        instance_id: None,
        group: None,
        started: now(),
        finished: None,
        duration_ms: 0,
        steps: STEPS
            .iter()
            .map(|name| Step {
                name: name.to_string(),
                outcome: Outcome::NotRun,
                duration_ms: 0,
                detail: String::new(),
            })
            .collect(),
        error: None,
        lifecycle_completed: false,
    };
    let state_dir = ctx.config.state_dir.clone();

    // 1. identity (with the group's tags applied) and the group's launching hook.
    let t = Instant::now();
    let identity_limit = (ctx.config.imds_deadline + Duration::from_secs(60)).min(deadline);
    let instance = match tokio::time::timeout(identity_limit, ctx.instance()).await {
        Ok(Ok(instance)) => instance,
        Ok(Err(err)) => return fail_early(&mut report, &state_dir, options.plan, t, err),
        Err(_) => {
            let err = Error::Failed(format!(
                "the identity step did not finish within {}",
                humantime::format_duration(identity_limit)
            ));
            return fail_early(&mut report, &state_dir, options.plan, t, err);
        }
    };
    let meta = &instance.identity.metadata;
    let instance_id = meta.instance_id.clone();
    let group = instance.identity.auto_scaling_group.clone();
    report.instance_id = Some(instance_id.clone());
    report.group = group.clone();

    let previous = match Report::read(&state_dir) {
        Ok(Some(prev)) if prev.instance_id.as_deref() == Some(instance_id.as_str()) => Some(prev),
        Ok(Some(prev)) => {
            tracing::info!(
                "ignoring the status left by instance {} (an image baked after a test boot?)",
                prev.instance_id.as_deref().unwrap_or("unknown")
            );
            None
        }
        Ok(None) => None,
        Err(why) => {
            tracing::warn!("{why}; starting afresh");
            None
        }
    };
    let completed_before = previous.as_ref().is_some_and(|p| p.lifecycle_completed);
    let rerun = previous.as_ref().is_some_and(|p| p.status == "done");

    let asg = aws_sdk_autoscaling::Client::new(&instance.aws.config);
    let lifecycle = match &group {
        Some(group) if !completed_before && instance.config.health.lifecycle_hook != "none" => {
            match health::find_hook(
                &asg,
                group,
                &instance_id,
                &instance.config.health.lifecycle_hook,
            )
            .await
            {
                Ok(found) => found,
                Err(err) => {
                    return fail_early(&mut report, &state_dir, options.plan, t, err.into());
                }
            }
        }
        _ => None,
    };
    report.steps[0].outcome = Outcome::Ok;
    report.steps[0].duration_ms = millis(t.elapsed());
    report.steps[0].detail = format!(
        "{instance_id} in {} ({}){}{}",
        meta.availability_zone,
        meta.region,
        group
            .as_ref()
            .map(|g| format!(", group {g}"))
            .unwrap_or_else(|| ", no Auto Scaling group".into()),
        lifecycle
            .as_ref()
            .map(|l| format!(", launching hook {}", l.hook))
            .unwrap_or_default()
    );
    if !options.plan {
        write_status(&report, &state_dir);
    }

    let heartbeat = match (&lifecycle, options.plan) {
        (Some(l), false) => Some(health::start_heartbeat(asg.clone(), l.clone())),
        _ => None,
    };

    let boot = Boot {
        ctx,
        instance: &instance,
        lifecycle: lifecycle.clone(),
        completed_before,
        plan: options.plan,
    };
    let config = &instance.config;
    let own_limits = [
        config.eip.wait + Duration::from_secs(120),
        config.efs_deadline + Duration::from_secs(60),
        deadline,
        config.health.timeout + Duration::from_secs(60),
    ];
    let mut failure: Option<(String, Error)> = None;
    for (index, name) in STEPS.iter().enumerate().skip(1) {
        let plan_this = options.plan || options.plan_steps.iter().any(|s| s == name);
        let left = deadline.saturating_sub(started.elapsed());
        let limit = own_limits[index - 1].min(left);
        let t = Instant::now();
        let span = tracing::info_span!("step", step = *name, instance_id = %instance_id);
        let result = bounded(limit, name, deadline, left, async {
            match *name {
                "eip" => eip_step(&boot, plan_this).await,
                "efs" => efs_step(&boot, plan_this, !options.plan && plan_this).await,
                "release" => release_step(&boot, plan_this).await,
                _ => health_step(&boot, &mut report.lifecycle_completed).await,
            }
        })
        .instrument(span)
        .await;
        let step = &mut report.steps[index];
        step.duration_ms = millis(t.elapsed());
        match result {
            Ok((outcome, detail)) => {
                step.outcome = outcome;
                step.detail = detail.trim_end().to_string();
                if options.plan {
                    println!("{name}:\n{}", indent(&step.detail));
                } else {
                    tracing::info!(step = *name, instance_id = %instance_id, "{name}: {} ({} ms)", step.outcome.word(), step.duration_ms);
                }
            }
            Err(err) => {
                step.outcome = Outcome::Failed;
                step.detail = err.to_string();
                tracing::error!(step = *name, instance_id = %instance_id, "{name} failed: {err}");
                failure = Some((name.to_string(), err));
                break;
            }
        }
        if !options.plan {
            write_status(&report, &state_dir);
        }
    }
    if let Some(handle) = heartbeat {
        handle.abort();
    }
    if options.plan {
        return match failure {
            Some((_, err)) => Err(err),
            None => Ok(()),
        };
    }

    report.duration_ms = millis(started.elapsed());
    report.finished = Some(now());
    let notify = &config.notify;
    match failure {
        None => {
            report.status = "done".into();
            write_status(&report, &state_dir);
            print!("{}", report.human());
            if rerun {
                tracing::info!(
                    "an earlier boot of this instance succeeded; no notification sent again"
                );
            } else if let Some(topic) = &notify.success_topic {
                send(&instance, topic, "boot succeeded", &report).await;
            }
            Ok(())
        }
        Some((step, err)) => {
            let policy = apply_failure_policy(&asg, &instance, lifecycle.as_ref()).await;
            report.status = "error".into();
            report.error = Some(format!("step {step} failed: {err}; {policy}"));
            write_status(&report, &state_dir);
            print!("{}", report.human());
            if let Some(topic) = &notify.error_topic {
                send(&instance, topic, &format!("boot failed at {step}"), &report).await;
            }
            match err {
                Error::Config(_) | Error::Usage(_) => Err(err),
                other => Err(Error::Failed(format!(
                    "boot failed at step {step}: {other}; {policy}"
                ))),
            }
        }
    }
}

/// Run a step within its limit; running out is the step's failure, saying which deadline it was.
async fn bounded(
    limit: Duration,
    name: &str,
    deadline: Duration,
    left: Duration,
    step: impl Future<Output = StepResult>,
) -> StepResult {
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

fn fail_early(
    report: &mut Report,
    state_dir: &std::path::Path,
    plan: bool,
    t: Instant,
    err: Error,
) -> Result<(), Error> {
    report.steps[0].outcome = Outcome::Failed;
    report.steps[0].duration_ms = millis(t.elapsed());
    report.steps[0].detail = err.to_string();
    report.status = "error".into();
    report.finished = Some(now());
    report.error = Some(format!(
        "step identity failed: {err}; without an identity no lifecycle action can be completed"
    ));
    if !plan {
        write_status(report, state_dir);
    }
    Err(err)
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

/// ABANDON in a group with a hook, SetInstanceHealth Unhealthy in one without, nothing with
/// `on_failure = "keep"` or outside a group. Returns what was done, for the report.
pub async fn apply_failure_policy(
    asg: &aws_sdk_autoscaling::Client,
    instance: &Instance,
    lifecycle: Option<&Lifecycle>,
) -> String {
    if instance.config.health.on_failure == OnFailure::Keep {
        return "on_failure = \"keep\": the instance is kept for debugging".into();
    }
    let id = &instance.identity.metadata.instance_id;
    let done = match (lifecycle, &instance.identity.auto_scaling_group) {
        (Some(l), _) => health::complete(asg, l, "ABANDON")
            .await
            .map(|_| format!("lifecycle action ABANDON sent (hook {})", l.hook)),
        (None, Some(group)) => health::set_unhealthy(asg, id)
            .await
            .map(|()| format!("instance marked Unhealthy in group {group}")),
        (None, None) => Ok("not in an Auto Scaling group: nothing marked unhealthy".into()),
    };
    done.unwrap_or_else(|err| {
        tracing::error!("{err}");
        err.to_string()
    })
}

async fn eip_step(boot: &Boot<'_>, plan: bool) -> StepResult {
    if boot.instance.config.eip.pool.is_none() {
        return Ok((
            Outcome::Skipped,
            "no pool configured (embark:eip-pool tag or [eip] pool)".into(),
        ));
    }
    let text = eip_bind(boot.instance, None, plan).await?;
    Ok((if plan { Outcome::Planned } else { Outcome::Ok }, text))
}

async fn efs_step(boot: &Boot<'_>, plan: bool, asked: bool) -> StepResult {
    if boot.instance.config.efs.is_empty() {
        return Ok((
            Outcome::Skipped,
            "no file systems configured ([[efs]] or the embark:efs tag)".into(),
        ));
    }
    let text = efs_mount(boot.ctx, boot.instance, plan).await?;
    if asked {
        let why = if crate::efs::this_kernel_has_nfs4() {
            "run as --plan because --plan-step efs was given"
        } else {
            "run as --plan (--plan-step efs): this kernel has no NFSv4 client, so the mount itself cannot run here"
        };
        return Ok((Outcome::Planned, format!("{why}\n{text}")));
    }
    Ok((if plan { Outcome::Planned } else { Outcome::Ok }, text))
}

async fn release_step(boot: &Boot<'_>, plan: bool) -> StepResult {
    let config = &boot.instance.config;
    if config.release.source.is_none() {
        return Ok((
            Outcome::Skipped,
            "no release source configured (embark:release tag or [release] source)".into(),
        ));
    }
    let source = crate::release::cli::source_of(config)?;
    let settings = crate::release::cli::settings(config)?;
    let store = crate::release::store::Store::new(&boot.instance.aws, source);
    let http = crate::net::http_client(&boot.ctx.resolver).map_err(Error::Setup)?;
    let pulled = crate::release::pull::pull(&store, &settings, &http, plan).await?;
    match pulled.plan {
        Some(text) => Ok((Outcome::Planned, text)),
        None => Ok((Outcome::Ok, pulled.human(&settings.layout.link))),
    }
}

async fn health_step(boot: &Boot<'_>, completed: &mut bool) -> StepResult {
    let config = &boot.instance.config;
    let id = &boot.instance.identity.metadata.instance_id;
    let mut lines = Vec::new();
    let http = crate::net::http_client(&boot.ctx.resolver).map_err(Error::Setup)?;
    match &config.health.url {
        Some(url) if boot.plan => lines.push(format!(
            "would GET {url} until it answers 2xx (within {})",
            humantime::format_duration(config.health.timeout)
        )),
        Some(url) => lines.push(health::probe(&http, url, config.health.timeout).await?),
        None => lines.push("no health URL configured: no local probe".into()),
    }
    let asg = aws_sdk_autoscaling::Client::new(&boot.instance.aws.config);
    match (&boot.lifecycle, &boot.instance.identity.auto_scaling_group) {
        (Some(l), _) if boot.plan => lines.push(format!(
            "would complete the lifecycle action of hook {} (group {}) with CONTINUE",
            l.hook, l.group
        )),
        (Some(l), _) => {
            let waiting = health::complete(&asg, l, "CONTINUE").await?;
            *completed = true;
            lines.push(if waiting {
                format!(
                    "lifecycle action completed: CONTINUE (hook {}, group {})",
                    l.hook, l.group
                )
            } else {
                format!(
                    "no lifecycle action of hook {} waiting for this instance (completed earlier)",
                    l.hook
                )
            });
        }
        (None, Some(_)) if boot.completed_before => {
            *completed = true;
            lines.push(
                "lifecycle action already completed by an earlier boot of this instance".into(),
            );
        }
        (None, Some(group)) => lines.push(match config.health.lifecycle_hook.as_str() {
            "none" => "lifecycle_hook = \"none\": no lifecycle action".to_string(),
            _ => format!("group {group} has no launching lifecycle hook"),
        }),
        (None, None) => lines.push("not in an Auto Scaling group: no lifecycle action".into()),
    }
    let groups = &config.health.target_groups;
    if !groups.is_empty() {
        if boot.plan {
            lines.push(format!("would register {id} in {}", groups.join(", ")));
        } else {
            let done = health::register_targets(&boot.instance.aws, groups, id).await?;
            lines.push(format!(
                "target groups: registered in {} of {} ({} already)",
                done.len(),
                groups.len(),
                groups.len() - done.len()
            ));
        }
    }
    Ok((
        if boot.plan {
            Outcome::Planned
        } else {
            Outcome::Ok
        },
        lines.join("\n"),
    ))
}

/// `embark health` on its own: the health step, then the failure policy if it failed.
pub async fn health_only(ctx: &Context) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    let meta = &instance.identity.metadata;
    let asg = aws_sdk_autoscaling::Client::new(&instance.aws.config);
    let lifecycle = match &instance.identity.auto_scaling_group {
        Some(group) => {
            health::find_hook(
                &asg,
                group,
                &meta.instance_id,
                &instance.config.health.lifecycle_hook,
            )
            .await?
        }
        _ => None,
    };
    let boot = Boot {
        ctx,
        instance: &instance,
        lifecycle: lifecycle.clone(),
        completed_before: false,
        plan: false,
    };
    let mut completed = false;
    match health_step(&boot, &mut completed).await {
        Ok((_, text)) => {
            println!("{text}");
            Ok(())
        }
        Err(err) => {
            let policy = apply_failure_policy(&asg, &instance, lifecycle.as_ref()).await;
            Err(Error::Failed(format!("{err}; {policy}")))
        }
    }
}
