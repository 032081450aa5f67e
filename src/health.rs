//! Health and lifecycle (DESIGN.md "Health and lifecycle"): the local probe, the launching lifecycle
//! hook (heartbeats while the boot runs, CONTINUE or ABANDON), SetInstanceHealth, extra target groups.
//! The health step is the boot's last; `embark health` runs it alone.

use std::time::Duration;

use crate::aws::{Aws, AwsError};
use crate::config::{LifecycleHook, OnFailure};
use crate::context::Instance;
pub use crate::lifecycle::{
    complete, find_hook, set_unhealthy, start_heartbeat, Lifecycle, LifecycleError,
    LifecycleResult, Transition,
};
use crate::retry::{retry, Failure, Policy, Verdict};
use crate::status::{self, Reported};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
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
            HealthError::Lifecycle(err) => err.is_usage(),
            HealthError::PolicyApplied { source, .. } => source.is_usage(),
            _ => false,
        }
    }
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
/// Registers the instance in every group at once. RegisterTargets is idempotent (a target already
/// registered stays as it is), so there is no read before it: one round trip, not two.
pub async fn register_targets(
    aws: &Aws,
    arns: &[String],
    instance_id: &str,
) -> Result<(), HealthError> {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&aws.config);
    let calls = arns
        .iter()
        .map(|arn| crate::targets::register(&elb, arn, instance_id));
    futures_util::future::try_join_all(calls).await?;
    Ok(())
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
    /// The group is taking the instance into its warm pool (`target-lifecycle-state` `Warmed:*`):
    /// only the lifecycle action is completed; no probe, no target groups.
    pub warm: Option<String>,
}

/// The local probe's part of the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    NotConfigured,
    /// Going into the warm pool: probed when it leaves.
    Warm,
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
    /// Going into the warm pool (this state): registered when it leaves.
    Warm(String),
    Planned {
        instance_id: String,
        arns: Vec<String>,
    },
    /// Registered in this many target groups (RegisterTargets leaves a registered target as it is).
    Registered(usize),
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
            Probe::Warm => "no local probe: the instance is going into the warm pool".to_string(),
            Probe::Planned { url, timeout } => format!(
                "would GET {url} until it answers 2xx (within {})",
                humantime::format_duration(*timeout)
            ),
            Probe::Healthy {
                url,
                status,
                attempts,
            } => format!(
                "{url} answered {status} after {}",
                crate::output::count(*attempts, "attempt", "attempts")
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
            Targets::Warm(state) => lines.push(format!(
                "target groups: none registered in {state} (the boot out of the warm pool registers them)"
            )),
            Targets::Planned { instance_id, arns } => lines.push(format!(
                "would register {instance_id} in {}",
                arns.join(", ")
            )),
            Targets::Registered(total) => {
                lines.push(format!("target groups: registered in {total}"))
            }
        }
        lines.join("\n")
    }

    fn lifecycle_completed(&self) -> bool {
        StepOutcome::lifecycle_completed(self)
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
        _ if lifecycle.warm.is_some() => Probe::Warm,
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
    // The lifecycle action and the target groups need nothing from each other: both at once.
    let (action, targets) = futures_util::future::try_join(
        lifecycle_action(instance, lifecycle, plan),
        target_groups(instance, lifecycle, plan),
    )
    .await?;
    Ok(StepOutcome {
        planned: plan,
        probe,
        action,
        targets,
    })
}

async fn lifecycle_action(
    instance: &Instance,
    lifecycle: &LifecycleState,
    plan: bool,
) -> Result<Action, HealthError> {
    let config = &instance.config.health;
    Ok(match (&lifecycle.waiting, instance.group()) {
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
    })
}

async fn target_groups(
    instance: &Instance,
    lifecycle: &LifecycleState,
    plan: bool,
) -> Result<Targets, HealthError> {
    let arns = &instance.config.health.target_groups;
    Ok(if arns.is_empty() {
        Targets::None
    } else if let Some(state) = &lifecycle.warm {
        Targets::Warm(state.clone())
    } else if plan {
        Targets::Planned {
            instance_id: instance.id().to_string(),
            arns: arns.clone(),
        }
    } else {
        register_targets(&instance.aws, arns, instance.id()).await?;
        Targets::Registered(arns.len())
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
                Transition::Launching,
            )
            .await?
        }
        None => None,
    };
    let state = LifecycleState {
        waiting,
        completed_before: false,
        warm: None,
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

    fn lifecycle() -> Lifecycle {
        Lifecycle::sample()
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
            targets: Targets::Registered(2),
        };
        assert!(outcome.lifecycle_completed());
        assert_eq!(outcome.status(), status::Outcome::Ok);
        assert_eq!(
            outcome.detail(),
            "http://127.0.0.1/health answered 200 after 1 attempt\n\
             lifecycle action completed: CONTINUE (hook boot, group web)\n\
             target groups: registered in 2"
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
