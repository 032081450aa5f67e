//! Auto Scaling lifecycle actions, launching and terminating: finding the group's hook, keeping the
//! action alive with heartbeats, completing it. The health step completes the launching action, the
//! drain the terminating one; both use this.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::aws::AwsError;
use crate::config::LifecycleHook;

pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// Which transition a hook pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Launching,
    Terminating,
}

impl Transition {
    pub fn api_name(self) -> &'static str {
        match self {
            Transition::Launching => LAUNCHING,
            Transition::Terminating => TERMINATING,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Transition::Launching => "launching",
            Transition::Terminating => "terminating",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Transition::Launching => "[health] lifecycle_hook",
            Transition::Terminating => "[drain] lifecycle_hook",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The setting names a hook the group does not have (exit 2).
    #[error("{} names '{name}', but group {group} has no {} hook of that name; use \"auto\", \"none\" or the hook's name", transition.setting(), transition.word())]
    NoSuchHook {
        name: String,
        group: String,
        transition: Transition,
    },
    /// `auto` in a group with several hooks of the transition (exit 2): completing the wrong one would
    /// CONTINUE another team's hook.
    #[error("group {group} has {} {} lifecycle hooks ({}); lifecycle_hook = \"auto\" would have to guess which one embark completes: set {} to one of them", hooks.len(), transition.word(), hooks.join(", "), transition.setting())]
    SeveralHooks {
        group: String,
        hooks: Vec<String>,
        transition: Transition,
    },
    /// Boxed: an AWS error is large, and this one travels inside the health step's error.
    #[error(transparent)]
    Aws(Box<AwsError>),
}

impl From<AwsError> for LifecycleError {
    fn from(err: AwsError) -> Self {
        LifecycleError::Aws(Box::new(err))
    }
}

impl LifecycleError {
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LifecycleError::NoSuchHook { .. } | LifecycleError::SeveralHooks { .. }
        )
    }
}

/// The lifecycle action this instance is waiting on (launching or terminating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub heartbeat_timeout: Duration,
}

/// The group's hook for `transition`: `auto` finds it, `none` means none, a name names it.
pub async fn find_hook(
    asg: &aws_sdk_autoscaling::Client,
    group: &str,
    instance_id: &str,
    setting: &LifecycleHook,
    transition: Transition,
) -> Result<Option<Lifecycle>, LifecycleError> {
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
        .filter(|h| h.lifecycle_transition() == Some(transition.api_name()))
        .filter_map(|h| Some((h.lifecycle_hook_name()?.to_string(), h.heartbeat_timeout())))
        .collect();
    choose_hook(&hooks, setting, group, transition).map(|chosen| {
        chosen.map(|(hook, timeout)| Lifecycle {
            group: group.to_string(),
            hook,
            instance_id: instance_id.to_string(),
            heartbeat_timeout: Duration::from_secs(timeout.unwrap_or(3600).max(1) as u64),
        })
    })
}

/// Which of the group's hooks of the transition (name, heartbeat timeout) the setting selects.
fn choose_hook(
    launching: &[(String, Option<i32>)],
    setting: &LifecycleHook,
    group: &str,
    transition: Transition,
) -> Result<Option<(String, Option<i32>)>, LifecycleError> {
    match setting {
        LifecycleHook::None => Ok(None),
        LifecycleHook::Auto if launching.len() > 1 => Err(LifecycleError::SeveralHooks {
            group: group.to_string(),
            hooks: launching.iter().map(|(name, _)| name.clone()).collect(),
            transition,
        }),
        LifecycleHook::Auto => Ok(launching.first().cloned()),
        LifecycleHook::Named(name) => launching
            .iter()
            .find(|(hook, _)| hook == name)
            .cloned()
            .map(Some)
            .ok_or_else(|| LifecycleError::NoSuchHook {
                name: name.clone(),
                group: group.to_string(),
                transition,
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
) -> Result<bool, LifecycleError> {
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
) -> Result<(), LifecycleError> {
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

#[cfg(test)]
impl Lifecycle {
    /// The action of hook `boot` of group `web` for `i-1`, for unit tests.
    pub(crate) fn sample() -> Lifecycle {
        Lifecycle {
            group: "web".into(),
            hook: "boot".into(),
            instance_id: "i-1".into(),
            heartbeat_timeout: Duration::from_secs(300),
        }
    }
}

/// The group's InService instances (one `DescribeAutoScalingGroups`): the deploy barrier's members, and
/// the instances `release status` expects on the pointer's release.
pub async fn in_service(
    aws: &crate::aws::Aws,
    group: &str,
) -> Result<std::collections::BTreeSet<String>, AwsError> {
    let asg = aws_sdk_autoscaling::Client::new(&aws.config);
    let answer = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|err| {
            AwsError::new("autoscaling:DescribeAutoScalingGroups", &err).on(format!("for {group}"))
        })?;
    Ok(answer
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
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
    use aws_smithy_types::error::metadata::ErrorMetadata;

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

    fn lifecycle() -> Lifecycle {
        Lifecycle::sample()
    }

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
            let found = find_hook(&asg, "web", "i-1", &setting, Transition::Launching)
                .await
                .unwrap();
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
        let err = find_hook(
            &asg,
            "web",
            "i-1",
            &LifecycleHook::Named("dns".into()),
            Transition::Launching,
        )
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
        let err = find_hook(
            &asg,
            "web",
            "i-1",
            &LifecycleHook::Auto,
            Transition::Launching,
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not allowed to call autoscaling:DescribeLifecycleHooks"),
            "{text}"
        );
        assert!(!err.is_usage());
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
    fn several_launching_hooks_need_a_name() {
        let launching = vec![("a".to_string(), Some(60)), ("b".to_string(), None)];
        assert_eq!(
            choose_hook(
                &launching,
                &LifecycleHook::Named("b".into()),
                "g",
                Transition::Launching
            )
            .unwrap(),
            Some(("b".to_string(), None))
        );
        let err =
            choose_hook(&launching, &LifecycleHook::Auto, "g", Transition::Launching).unwrap_err();
        assert!(err.is_usage());
        assert!(
            err.to_string()
                .contains("2 launching lifecycle hooks (a, b)"),
            "{err}"
        );
        assert_eq!(
            choose_hook(
                &launching[..1],
                &LifecycleHook::Auto,
                "g",
                Transition::Launching
            )
            .unwrap(),
            Some(("a".to_string(), Some(60)))
        );
    }
}
