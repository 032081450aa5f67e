//! Target groups (Elastic Load Balancing v2): where this instance stands in one, joining it and leaving
//! it. The health step registers, the drain deregisters; both use these.

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use aws_sdk_elasticloadbalancingv2::Client;

use crate::aws::AwsError;

/// The target's state in the group (`healthy`, `initial`, `draining`, …), `None` when not registered.
pub async fn state(elb: &Client, arn: &str, id: &str) -> Result<Option<String>, AwsError> {
    let health = elb
        .describe_target_health()
        .target_group_arn(arn)
        .send()
        .await
        .map_err(|err| {
            AwsError::new("elasticloadbalancing:DescribeTargetHealth", &err)
                .on(format!("for {arn}"))
        })?;
    Ok(health
        .target_health_descriptions()
        .iter()
        .find(|d| d.target().and_then(|t| t.id()) == Some(id))
        .map(|d| {
            d.target_health()
                .and_then(|h| h.state())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "registered".to_string())
        }))
}

pub async fn register(elb: &Client, arn: &str, id: &str) -> Result<(), AwsError> {
    elb.register_targets()
        .target_group_arn(arn)
        .targets(TargetDescription::builder().id(id).build())
        .send()
        .await
        .map_err(|err| {
            AwsError::new("elasticloadbalancing:RegisterTargets", &err).on(format!("{id} in {arn}"))
        })?;
    Ok(())
}

pub async fn deregister(elb: &Client, arn: &str, id: &str) -> Result<(), AwsError> {
    elb.deregister_targets()
        .target_group_arn(arn)
        .targets(TargetDescription::builder().id(id).build())
        .send()
        .await
        .map_err(|err| {
            AwsError::new("elasticloadbalancing:DeregisterTargets", &err)
                .on(format!("{id} from {arn}"))
        })?;
    Ok(())
}
