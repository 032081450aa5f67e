//! Health and lifecycle (DESIGN.md "Health and lifecycle"): the local probe, the launching lifecycle
//! hook (heartbeats while the boot runs, CONTINUE or ABANDON), SetInstanceHealth, extra target groups.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::aws::{describe, Aws};
use crate::identity::Fibonacci;

pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl HealthError {
    pub fn is_usage(&self) -> bool {
        matches!(self, HealthError::Usage(_))
    }
}

/// The launching lifecycle action this instance is waiting on.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub heartbeat_timeout: Duration,
}

/// The group's launching hook: "auto" finds it, "none" means none, anything else names it.
pub async fn find_hook(
    asg: &aws_sdk_autoscaling::Client,
    group: &str,
    instance_id: &str,
    setting: &str,
) -> Result<Option<Lifecycle>, HealthError> {
    if setting == "none" {
        return Ok(None);
    }
    let mut request = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(group);
    if setting != "auto" {
        request = request.lifecycle_hook_names(setting);
    }
    let answer = request.send().await.map_err(|err| {
        HealthError::Failed(format!(
            "DescribeLifecycleHooks for group {group} failed: {}{}",
            describe(&err),
            denied_hint(&err, "autoscaling:DescribeLifecycleHooks")
        ))
    })?;
    let hook = answer.lifecycle_hooks().iter().find(|h| {
        h.lifecycle_transition() == Some(LAUNCHING)
            && (setting == "auto" || h.lifecycle_hook_name() == Some(setting))
    });
    match (hook, setting) {
        (Some(h), _) => Ok(Some(Lifecycle {
            group: group.to_string(),
            hook: h.lifecycle_hook_name().unwrap_or_default().to_string(),
            instance_id: instance_id.to_string(),
            heartbeat_timeout: Duration::from_secs(h.heartbeat_timeout().unwrap_or(3600).max(1) as u64),
        })),
        (None, "auto") => Ok(None),
        (None, name) => Err(HealthError::Usage(format!(
            "[health] lifecycle_hook names '{name}', but group {group} has no launching hook of that name; use \"auto\", \"none\" or the hook's name"
        ))),
    }
}

fn denied_hint<E, R>(
    err: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
    action: &str,
) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    match crate::aws::error_code(err) {
        Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation") => {
            format!(" (the instance role needs {action})")
        }
        _ => String::new(),
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
                    describe(&err)
                ),
            }
        }
    })
}

/// CONTINUE or ABANDON; false when no action was waiting (an earlier run completed it).
pub async fn complete(
    asg: &aws_sdk_autoscaling::Client,
    lifecycle: &Lifecycle,
    result: &str,
) -> Result<bool, HealthError> {
    let sent = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&lifecycle.group)
        .lifecycle_hook_name(&lifecycle.hook)
        .instance_id(&lifecycle.instance_id)
        .lifecycle_action_result(result)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(err)
            if err
                .as_service_error()
                .and_then(|e| aws_smithy_types::error::metadata::ProvideErrorMetadata::message(e))
                .is_some_and(|m| m.contains("No active Lifecycle Action")) =>
        {
            Ok(false)
        }
        Err(err) => Err(HealthError::Failed(format!(
            "CompleteLifecycleAction {result} for hook {} of group {} failed: {}{}",
            lifecycle.hook,
            lifecycle.group,
            describe(&err),
            denied_hint(&err, "autoscaling:CompleteLifecycleAction")
        ))),
    }
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
            HealthError::Failed(format!(
                "SetInstanceHealth Unhealthy for {instance_id} failed: {}{}",
                describe(&err),
                denied_hint(&err, "autoscaling:SetInstanceHealth")
            ))
        })?;
    Ok(())
}

/// GET `url` until it answers 2xx, within `timeout`.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<String, HealthError> {
    let started = Instant::now();
    let mut backoff = Fibonacci::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut last;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = timeout.saturating_sub(started.elapsed());
        let per_request = left
            .min(Duration::from_secs(10))
            .max(Duration::from_millis(100));
        match http.get(url).timeout(per_request).send().await {
            Ok(response) if response.status().is_success() => {
                return Ok(format!(
                    "{url} answered {} after {attempts} attempt(s)",
                    response.status()
                ))
            }
            Ok(response) => last = format!("HTTP {}", response.status()),
            Err(err) => last = crate::identity::error_chain(&err),
        }
        let delay = backoff.next_delay();
        if started.elapsed() + delay >= timeout {
            return Err(HealthError::Failed(format!(
                "the health check {url} did not answer 2xx within {} ({attempts} attempts; last: {last})",
                humantime::format_duration(timeout)
            )));
        }
        tracing::debug!("health check {url}: {last}; again in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// Register this instance in each target group where it is not registered yet.
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
                HealthError::Failed(format!(
                    "DescribeTargetHealth for {arn} failed: {}{}",
                    describe(&err),
                    denied_hint(&err, "elasticloadbalancing:DescribeTargetHealth")
                ))
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
                HealthError::Failed(format!(
                    "RegisterTargets {instance_id} in {arn} failed: {}{}",
                    describe(&err),
                    denied_hint(&err, "elasticloadbalancing:RegisterTargets")
                ))
            })?;
        registered.push(arn.clone());
    }
    Ok(registered)
}
