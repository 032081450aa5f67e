//! Health and lifecycle (DESIGN.md "Health and lifecycle"): the local probe, the launching lifecycle
//! hook (heartbeats while the boot runs, CONTINUE or ABANDON), SetInstanceHealth, extra target groups.
//! The health step is the boot's last; `embark health` runs it alone.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::aws::{Aws, AwsError};
use crate::config::{LifecycleHook, OnFailure};
use crate::context::Instance;
use crate::retry::{retry, Failure, Policy, Verdict};
use crate::status::{self, Reported};

pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `[health] lifecycle_hook` names a hook the group does not have (exit 2).
    #[error("[health] lifecycle_hook names '{name}', but group {group} has no launching hook of that name; use \"auto\", \"none\" or the hook's name")]
    NoSuchHook { name: String, group: String },
    /// `lifecycle_hook = "auto"` in a group with several launching hooks (exit 2): completing the
    /// wrong one would CONTINUE another team's hook.
    #[error("group {group} has {} launching lifecycle hooks ({}); lifecycle_hook = \"auto\" would have to guess which one embark completes: set [health] lifecycle_hook to one of them", hooks.len(), hooks.join(", "))]
    SeveralHooks { group: String, hooks: Vec<String> },
    #[error("the health check {url} did not answer 2xx within {} ({attempts} attempts; last: {last})", humantime::format_duration(*timeout))]
    Unhealthy {
        url: String,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The step failed and the failure policy was applied; `policy` says what it did.
    #[error("{source}; {policy}")]
    PolicyApplied {
        #[source]
        source: Box<HealthError>,
        policy: String,
    },
}

impl HealthError {
    pub fn is_usage(&self) -> bool {
        match self {
            HealthError::NoSuchHook { .. } | HealthError::SeveralHooks { .. } => true,
            HealthError::PolicyApplied { source, .. } => source.is_usage(),
            _ => false,
        }
    }
}

/// The launching lifecycle action this instance is waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub heartbeat_timeout: Duration,
}

/// The group's launching hook: `auto` finds it, `none` means none, a name names it.
pub async fn find_hook(
    asg: &aws_sdk_autoscaling::Client,
    group: &str,
    instance_id: &str,
    setting: &LifecycleHook,
) -> Result<Option<Lifecycle>, HealthError> {
    let mut request = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(group);
    match setting {
        LifecycleHook::None => return Ok(None),
        LifecycleHook::Auto => {}
        LifecycleHook::Named(name) => request = request.lifecycle_hook_names(name),
    }
    let answer = request.send().await.map_err(|err| {
        AwsError::new("autoscaling:DescribeLifecycleHooks", &err).on(format!("for group {group}"))
    })?;
    let hooks: Vec<(String, Option<i32>)> = answer
        .lifecycle_hooks()
        .iter()
        .filter(|h| h.lifecycle_transition() == Some(LAUNCHING))
        .filter_map(|h| Some((h.lifecycle_hook_name()?.to_string(), h.heartbeat_timeout())))
        .collect();
    choose_hook(&hooks, setting, group).map(|chosen| {
        chosen.map(|(hook, timeout)| Lifecycle {
            group: group.to_string(),
            hook,
            instance_id: instance_id.to_string(),
            heartbeat_timeout: Duration::from_secs(timeout.unwrap_or(3600).max(1) as u64),
        })
    })
}

/// Which of the group's launching hooks (name, heartbeat timeout) the setting selects.
fn choose_hook(
    launching: &[(String, Option<i32>)],
    setting: &LifecycleHook,
    group: &str,
) -> Result<Option<(String, Option<i32>)>, HealthError> {
    match setting {
        LifecycleHook::None => Ok(None),
        LifecycleHook::Auto if launching.len() > 1 => Err(HealthError::SeveralHooks {
            group: group.to_string(),
            hooks: launching.iter().map(|(name, _)| name.clone()).collect(),
        }),
        LifecycleHook::Auto => Ok(launching.first().cloned()),
        LifecycleHook::Named(name) => launching
            .iter()
            .find(|(hook, _)| hook == name)
            .cloned()
            .map(Some)
            .ok_or_else(|| HealthError::NoSuchHook {
                name: name.clone(),
                group: group.to_string(),
            }),
    }
}

/// Keeps the lifecycle action alive while long steps run: a heartbeat every third of its timeout.
pub fn start_heartbeat(asg: aws_sdk_autoscaling::Client, lifecycle: Lifecycle) -> JoinHandle<()> {
    let every = (lifecycle.heartbeat_timeout / 3).max(Duration::from_millis(500));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let sent = asg
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&lifecycle.group)
                .lifecycle_hook_name(&lifecycle.hook)
                .instance_id(&lifecycle.instance_id)
                .send()
                .await;
            match sent {
                Ok(_) => tracing::debug!(hook = %lifecycle.hook, "lifecycle heartbeat sent"),
                Err(err) => tracing::warn!(
                    hook = %lifecycle.hook,
                    "lifecycle heartbeat failed: {}",
                    AwsError::new("autoscaling:RecordLifecycleActionHeartbeat", &err)
                ),
            }
        }
    })
}

/// The result of a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// Completes the action; `false` when none was waiting (an earlier run completed it).
pub async fn complete(
    asg: &aws_sdk_autoscaling::Client,
    lifecycle: &Lifecycle,
    result: LifecycleResult,
) -> Result<bool, HealthError> {
    let sent = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&lifecycle.group)
        .lifecycle_hook_name(&lifecycle.hook)
        .instance_id(&lifecycle.instance_id)
        .lifecycle_action_result(result.as_str())
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(err) => {
            let err = AwsError::new("autoscaling:CompleteLifecycleAction", &err).on(format!(
                "{} for hook {} of group {}",
                result.as_str(),
                lifecycle.hook,
                lifecycle.group
            ));
            if no_action_waiting(&err) {
                Ok(false)
            } else {
                Err(err.into())
            }
        }
    }
}

/// Auto Scaling's answer when the action was completed already (or timed out): a ValidationError
/// "No active Lifecycle Action found with instance ID …".
fn no_action_waiting(err: &AwsError) -> bool {
    err.detail.contains("No active Lifecycle Action")
}

pub async fn set_unhealthy(
    asg: &aws_sdk_autoscaling::Client,
    instance_id: &str,
) -> Result<(), HealthError> {
    asg.set_instance_health()
        .instance_id(instance_id)
        .health_status("Unhealthy")
        .should_respect_grace_period(false)
        .send()
        .await
        .map_err(|err| {
            AwsError::new("autoscaling:SetInstanceHealth", &err)
                .on(format!("Unhealthy for {instance_id}"))
        })?;
    Ok(())
}

/// GET `url` until it answers 2xx, within `timeout`; returns the status and the attempts it took.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(u16, u32), HealthError> {
    let policy = Policy::new(Duration::from_millis(250), Duration::from_secs(5), timeout);
    let started = tokio::time::Instant::now();
    let result = retry(
        policy,
        |attempt| {
            let per_request = timeout
                .saturating_sub(started.elapsed())
                .min(Duration::from_secs(10))
                .max(Duration::from_millis(100));
            async move {
                match http.get(url).timeout(per_request).send().await {
                    Ok(response) if response.status().is_success() => {
                        Verdict::Done((response.status().as_u16(), attempt))
                    }
                    Ok(response) => Verdict::Retry(format!("HTTP {}", response.status())),
                    Err(err) => Verdict::Retry(crate::output::error_chain(&err)),
                }
            }
        },
        |w| tracing::debug!("health check {url}: {}; again in {:?}", w.last, w.delay),
    )
    .await;
    result.map_err(
        |failure: Failure<String, std::convert::Infallible>| match failure {
            Failure::Stopped(never) => match never {},
            Failure::GaveUp { last, attempts, .. } => HealthError::Unhealthy {
                url: url.to_string(),
                timeout,
                attempts,
                last,
            },
        },
    )
}

/// Register this instance in each target group where it is not registered yet; returns those where
/// it was registered now.
pub async fn register_targets(
    aws: &Aws,
    arns: &[String],
    instance_id: &str,
) -> Result<Vec<String>, HealthError> {
    use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&aws.config);
    let mut registered = Vec::new();
    for arn in arns {
        let health = elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|err| {
                AwsError::new("elasticloadbalancing:DescribeTargetHealth", &err)
                    .on(format!("for {arn}"))
            })?;
        let present = health
            .target_health_descriptions()
            .iter()
            .any(|d| d.target().and_then(|t| t.id()) == Some(instance_id));
        if present {
            continue;
        }
        let target = TargetDescription::builder().id(instance_id).build();
        elb.register_targets()
            .target_group_arn(arn)
            .targets(target)
            .send()
            .await
            .map_err(|err| {
                AwsError::new("elasticloadbalancing:RegisterTargets", &err)
                    .on(format!("{instance_id} in {arn}"))
            })?;
        registered.push(arn.clone());
    }
    Ok(registered)
}

/// What a failed boot does to the instance, decided from the setting and where the instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailurePolicy {
    /// `on_failure = "keep"`: nothing, the instance is kept for debugging.
    Keep,
    /// The launching hook waits: ABANDON it (the group terminates and replaces the instance).
    Abandon(Lifecycle),
    /// A group without a hook: SetInstanceHealth Unhealthy.
    MarkUnhealthy { group: String },
    /// Outside a group there is nobody to tell.
    Nothing,
}

impl FailurePolicy {
    pub fn decide(
        on_failure: OnFailure,
        lifecycle: Option<&Lifecycle>,
        group: Option<&str>,
    ) -> FailurePolicy {
        match (on_failure, lifecycle, group) {
            (OnFailure::Keep, _, _) => FailurePolicy::Keep,
            (OnFailure::Abandon, Some(l), _) => FailurePolicy::Abandon(l.clone()),
            (OnFailure::Abandon, None, Some(group)) => FailurePolicy::MarkUnhealthy {
                group: group.to_string(),
            },
            (OnFailure::Abandon, None, None) => FailurePolicy::Nothing,
        }
    }

    /// Carries the policy out; returns what was done, for the report (a failure to do it is said too).
    pub async fn apply(&self, asg: &aws_sdk_autoscaling::Client, instance_id: &str) -> String {
        let done = match self {
            FailurePolicy::Keep => {
                Ok("on_failure = \"keep\": the instance is kept for debugging".to_string())
            }
            FailurePolicy::Abandon(l) => complete(asg, l, LifecycleResult::Abandon)
                .await
                .map(|_| format!("lifecycle action ABANDON sent (hook {})", l.hook)),
            FailurePolicy::MarkUnhealthy { group } => set_unhealthy(asg, instance_id)
                .await
                .map(|()| format!("instance marked Unhealthy in group {group}")),
            FailurePolicy::Nothing => {
                Ok("not in an Auto Scaling group: nothing marked unhealthy".to_string())
            }
        };
        done.unwrap_or_else(|err| {
            tracing::error!("{err}");
            err.to_string()
        })
    }
}

/// What the health step knows of the lifecycle action when it starts.
#[derive(Debug, Clone, Default)]
pub struct LifecycleState {
    /// The launching action waiting for this instance, if any.
    pub waiting: Option<Lifecycle>,
    /// An earlier boot of this very instance completed the action.
    pub completed_before: bool,
}

/// The local probe's part of the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    NotConfigured,
    Planned {
        url: String,
        timeout: Duration,
    },
    Healthy {
        url: String,
        status: u16,
        attempts: u32,
    },
}

/// The lifecycle action's part of the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Planned {
        hook: String,
        group: String,
    },
    Completed {
        hook: String,
        group: String,
    },
    /// The action was no longer waiting (completed by an earlier run, or timed out).
    NoneWaiting {
        hook: String,
    },
    CompletedByEarlierBoot,
    SettingNone,
    NoHook {
        group: String,
    },
    NoGroup,
}

/// The target groups' part of the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    None,
    Planned {
        instance_id: String,
        arns: Vec<String>,
    },
    Registered {
        now: usize,
        total: usize,
    },
}

/// What the health step did, for the report and stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub planned: bool,
    pub probe: Probe,
    pub action: Action,
    pub targets: Targets,
}

impl StepOutcome {
    /// The lifecycle action is done with (by this run or an earlier one).
    pub fn lifecycle_completed(&self) -> bool {
        matches!(
            self.action,
            Action::Completed { .. } | Action::NoneWaiting { .. } | Action::CompletedByEarlierBoot
        )
    }
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        if self.planned {
            status::Outcome::Planned
        } else {
            status::Outcome::Ok
        }
    }

    fn detail(&self) -> String {
        let mut lines = vec![match &self.probe {
            Probe::NotConfigured => "no health URL configured: no local probe".to_string(),
            Probe::Planned { url, timeout } => format!(
                "would GET {url} until it answers 2xx (within {})",
                humantime::format_duration(*timeout)
            ),
            Probe::Healthy {
                url,
                status,
                attempts,
            } => format!(
                "{url} answered {status} after {attempts} {}",
                plural(*attempts as usize, "attempt")
            ),
        }];
        lines.push(match &self.action {
            Action::Planned { hook, group } => format!(
                "would complete the lifecycle action of hook {hook} (group {group}) with CONTINUE"
            ),
            Action::Completed { hook, group } => {
                format!("lifecycle action completed: CONTINUE (hook {hook}, group {group})")
            }
            Action::NoneWaiting { hook } => {
                format!("no lifecycle action of hook {hook} waiting for this instance (completed earlier)")
            }
            Action::CompletedByEarlierBoot => {
                "lifecycle action already completed by an earlier boot of this instance".to_string()
            }
            Action::SettingNone => "lifecycle_hook = \"none\": no lifecycle action".to_string(),
            Action::NoHook { group } => format!("group {group} has no launching lifecycle hook"),
            Action::NoGroup => "not in an Auto Scaling group: no lifecycle action".to_string(),
        });
        match &self.targets {
            Targets::None => {}
            Targets::Planned { instance_id, arns } => lines.push(format!(
                "would register {instance_id} in {}",
                arns.join(", ")
            )),
            Targets::Registered { now, total } => lines.push(format!(
                "target groups: registered in {now} of {total} ({} already)",
                total - now
            )),
        }
        lines.join("\n")
    }
}

/// `1 attempt`, `2 attempts`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// The step: the local probe, then the lifecycle action (CONTINUE), then extra target groups.
pub async fn step(
    instance: &Instance,
    http: &reqwest::Client,
    lifecycle: &LifecycleState,
    plan: bool,
) -> Result<StepOutcome, HealthError> {
    let config = &instance.config.health;
    let probe = match &config.url {
        None => Probe::NotConfigured,
        Some(url) if plan => Probe::Planned {
            url: url.clone(),
            timeout: config.timeout,
        },
        Some(url) => {
            let (status, attempts) = probe(http, url, config.timeout).await?;
            Probe::Healthy {
                url: url.clone(),
                status,
                attempts,
            }
        }
    };
    let action = match (&lifecycle.waiting, instance.group()) {
        (Some(l), _) if plan => Action::Planned {
            hook: l.hook.clone(),
            group: l.group.clone(),
        },
        (Some(l), _) => {
            if complete(&instance.autoscaling(), l, LifecycleResult::Continue).await? {
                Action::Completed {
                    hook: l.hook.clone(),
                    group: l.group.clone(),
                }
            } else {
                Action::NoneWaiting {
                    hook: l.hook.clone(),
                }
            }
        }
        (None, Some(_)) if lifecycle.completed_before => Action::CompletedByEarlierBoot,
        (None, Some(group)) => match config.lifecycle_hook {
            LifecycleHook::None => Action::SettingNone,
            _ => Action::NoHook {
                group: group.to_string(),
            },
        },
        (None, None) => Action::NoGroup,
    };
    let arns = &config.target_groups;
    let targets = if arns.is_empty() {
        Targets::None
    } else if plan {
        Targets::Planned {
            instance_id: instance.id().to_string(),
            arns: arns.clone(),
        }
    } else {
        let now = register_targets(&instance.aws, arns, instance.id()).await?;
        Targets::Registered {
            now: now.len(),
            total: arns.len(),
        }
    };
    Ok(StepOutcome {
        planned: plan,
        probe,
        action,
        targets,
    })
}

/// `embark health` on its own: the step, then the failure policy if it failed.
pub async fn run_alone(
    instance: &Instance,
    http: &reqwest::Client,
) -> Result<StepOutcome, HealthError> {
    let asg = instance.autoscaling();
    let waiting = match instance.group() {
        Some(group) => {
            find_hook(
                &asg,
                group,
                instance.id(),
                &instance.config.health.lifecycle_hook,
            )
            .await?
        }
        None => None,
    };
    let state = LifecycleState {
        waiting,
        completed_before: false,
    };
    match step(instance, http, &state, false).await {
        Ok(outcome) => Ok(outcome),
        Err(err) => {
            let policy = FailurePolicy::decide(
                instance.config.health.on_failure,
                state.waiting.as_ref(),
                instance.group(),
            );
            let policy = policy.apply(&asg, instance.id()).await;
            Err(HealthError::PolicyApplied {
                source: Box::new(err),
                policy,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_autoscaling::operation::complete_lifecycle_action::{
        CompleteLifecycleActionError, CompleteLifecycleActionOutput,
    };
    use aws_sdk_autoscaling::operation::describe_lifecycle_hooks::DescribeLifecycleHooksOutput;
    use aws_sdk_autoscaling::types::LifecycleHook as Hook;
    use aws_smithy_mocks::{mock, Rule};
    use aws_smithy_types::error::ErrorMetadata;

    fn client(rules: &[&Rule]) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::from_conf(crate::testing::mocked_config(
            aws_sdk_autoscaling::Config::builder(),
            rules,
        ))
    }

    fn hooks(list: &[(&str, &str, i32)]) -> Rule {
        let hooks: Vec<Hook> = list
            .iter()
            .map(|(name, transition, timeout)| {
                Hook::builder()
                    .lifecycle_hook_name(*name)
                    .lifecycle_transition(*transition)
                    .heartbeat_timeout(*timeout)
                    .build()
            })
            .collect();
        mock!(aws_sdk_autoscaling::Client::describe_lifecycle_hooks).then_output(move || {
            DescribeLifecycleHooksOutput::builder()
                .set_lifecycle_hooks(Some(hooks.clone()))
                .build()
        })
    }

    const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

    #[tokio::test]
    async fn the_launching_hook_is_chosen() {
        let none = hooks(&[]);
        let one = hooks(&[("dns", TERMINATING, 60), ("boot", LAUNCHING, 300)]);
        type Case<'a> = (&'a Rule, LifecycleHook, Option<(&'a str, u64)>);
        let cases: Vec<Case> = vec![
            (&none, LifecycleHook::Auto, None),
            (&one, LifecycleHook::Auto, Some(("boot", 300))),
            (
                &one,
                LifecycleHook::Named("boot".into()),
                Some(("boot", 300)),
            ),
            (&one, LifecycleHook::None, None),
        ];
        for (rule, setting, expected) in cases {
            let asg = client(&[rule]);
            let found = find_hook(&asg, "web", "i-1", &setting).await.unwrap();
            assert_eq!(
                found.map(|l| (l.hook, l.heartbeat_timeout.as_secs())),
                expected.map(|(h, t)| (h.to_string(), t)),
                "{setting:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_named_hook_that_is_not_there_is_a_usage_error() {
        let only_terminating = hooks(&[("dns", TERMINATING, 60)]);
        let asg = client(&[&only_terminating]);
        let err = find_hook(&asg, "web", "i-1", &LifecycleHook::Named("dns".into()))
            .await
            .unwrap_err();
        assert!(err.is_usage());
        assert!(
            err.to_string().contains("no launching hook of that name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_denied_lookup_names_the_action() {
        let denied = mock!(aws_sdk_autoscaling::Client::describe_lifecycle_hooks).then_error(|| {
            aws_sdk_autoscaling::operation::describe_lifecycle_hooks::DescribeLifecycleHooksError::generic(
                ErrorMetadata::builder().code("AccessDenied").message("not authorized").build(),
            )
        });
        let asg = client(&[&denied]);
        let err = find_hook(&asg, "web", "i-1", &LifecycleHook::Auto)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not allowed to call autoscaling:DescribeLifecycleHooks"),
            "{text}"
        );
        assert!(!err.is_usage());
    }

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            group: "web".into(),
            hook: "boot".into(),
            instance_id: "i-1".into(),
            heartbeat_timeout: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn no_active_action_means_completed_earlier() {
        let gone = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action).then_error(|| {
            CompleteLifecycleActionError::generic(
                ErrorMetadata::builder()
                    .code("ValidationError")
                    .message("No active Lifecycle Action found with instance ID i-1")
                    .build(),
            )
        });
        let asg = client(&[&gone]);
        assert!(!complete(&asg, &lifecycle(), LifecycleResult::Continue)
            .await
            .unwrap());

        let ok = mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action)
            .match_requests(|r| r.lifecycle_action_result() == Some("ABANDON"))
            .then_output(|| CompleteLifecycleActionOutput::builder().build());
        let asg = client(&[&ok]);
        assert!(complete(&asg, &lifecycle(), LifecycleResult::Abandon)
            .await
            .unwrap());

        let throttled =
            mock!(aws_sdk_autoscaling::Client::complete_lifecycle_action).then_error(|| {
                CompleteLifecycleActionError::generic(
                    ErrorMetadata::builder()
                        .code("ValidationError")
                        .message("bad token")
                        .build(),
                )
            });
        let asg = client(&[&throttled]);
        let err = complete(&asg, &lifecycle(), LifecycleResult::Continue)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("CONTINUE for hook boot of group web failed"),
            "{err}"
        );
    }

    #[test]
    fn the_failure_policy_follows_the_setting_and_the_place() {
        let l = lifecycle();
        let cases = [
            (OnFailure::Keep, Some(&l), Some("web"), FailurePolicy::Keep),
            (OnFailure::Keep, None, None, FailurePolicy::Keep),
            (
                OnFailure::Abandon,
                Some(&l),
                Some("web"),
                FailurePolicy::Abandon(l.clone()),
            ),
            (
                OnFailure::Abandon,
                None,
                Some("web"),
                FailurePolicy::MarkUnhealthy {
                    group: "web".into(),
                },
            ),
            (OnFailure::Abandon, None, None, FailurePolicy::Nothing),
        ];
        for (setting, lifecycle, group, expected) in cases {
            assert_eq!(FailurePolicy::decide(setting, lifecycle, group), expected);
        }
    }

    #[test]
    fn several_launching_hooks_need_a_name() {
        let launching = vec![("a".to_string(), Some(60)), ("b".to_string(), None)];
        assert_eq!(
            choose_hook(&launching, &LifecycleHook::Named("b".into()), "g").unwrap(),
            Some(("b".to_string(), None))
        );
        let err = choose_hook(&launching, &LifecycleHook::Auto, "g").unwrap_err();
        assert!(err.is_usage());
        assert!(
            err.to_string()
                .contains("2 launching lifecycle hooks (a, b)"),
            "{err}"
        );
        assert_eq!(
            choose_hook(&launching[..1], &LifecycleHook::Auto, "g").unwrap(),
            Some(("a".to_string(), Some(60)))
        );
    }

    #[test]
    fn the_report_says_what_was_done() {
        let outcome = StepOutcome {
            planned: false,
            probe: Probe::Healthy {
                url: "http://127.0.0.1/health".into(),
                status: 200,
                attempts: 1,
            },
            action: Action::Completed {
                hook: "boot".into(),
                group: "web".into(),
            },
            targets: Targets::Registered { now: 1, total: 2 },
        };
        assert!(outcome.lifecycle_completed());
        assert_eq!(outcome.status(), status::Outcome::Ok);
        assert_eq!(
            outcome.detail(),
            "http://127.0.0.1/health answered 200 after 1 attempt\n\
             lifecycle action completed: CONTINUE (hook boot, group web)\n\
             target groups: registered in 1 of 2 (1 already)"
        );
        let none = StepOutcome {
            action: Action::NoGroup,
            ..outcome
        };
        assert!(!none.lifecycle_completed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_fails_at_its_deadline() {
        // Nothing listens on this port: every attempt is refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let http = crate::net::http_client(&crate::net::Resolver::hosts_only().unwrap()).unwrap();
        let err = probe(
            &http,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
        match err {
            HealthError::Unhealthy { attempts, .. } => assert!(attempts >= 3, "{attempts}"),
            other => panic!("{other}"),
        }
    }
}
