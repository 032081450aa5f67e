//! `embark iam-policy`: the least-privilege IAM policy for the configured features (docs/iam.md).

use serde_json::{json, Value};

use crate::config::Config;
use crate::release::format::SourceUrl;

/// What the policy must allow; from the configuration plus flags for what the group's tags enable.
#[derive(Debug, Clone)]
pub struct Features {
    pub pools: Vec<String>,
    pub file_systems: Vec<(String, bool)>,
    pub release: Option<SourceUrl>,
    pub group: Option<String>,
    pub lifecycle: bool,
    /// The failure policy may mark the instance Unhealthy (`on_failure = "abandon"`).
    pub mark_unhealthy: bool,
    pub target_groups: Vec<String>,
    pub topics: Vec<String>,
    /// The CloudWatch log groups of `[[logs.files]]` (placeholders as `*`).
    pub log_groups: Vec<String>,
    /// `aws`, `aws-cn` or `aws-us-gov`: the ARNs' partition.
    pub partition: &'static str,
    /// KMS keys of an SSE-KMS release bucket: reading (and writing) its objects uses them.
    pub kms_keys: Vec<String>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            pools: Vec::new(),
            file_systems: Vec::new(),
            release: None,
            group: None,
            lifecycle: false,
            mark_unhealthy: false,
            target_groups: Vec::new(),
            topics: Vec::new(),
            log_groups: Vec::new(),
            partition: "aws",
            kms_keys: Vec::new(),
        }
    }
}

impl Features {
    pub fn from_config(config: &Config) -> Result<Features, String> {
        let mut f = Features {
            pools: config.eip.pool.iter().cloned().collect(),
            file_systems: config
                .efs
                .iter()
                .map(|m| (m.file_system.clone(), m.iam))
                .collect(),
            release: config
                .release
                .source
                .as_deref()
                .map(SourceUrl::parse)
                .transpose()?,
            group: None,
            lifecycle: config.health.lifecycle_hook != crate::config::LifecycleHook::None
                || config.drain.lifecycle_hook != crate::config::LifecycleHook::None,
            mark_unhealthy: config.health.on_failure == crate::config::OnFailure::Abandon,
            target_groups: config
                .health
                .target_groups
                .iter()
                .chain(config.drain.target_groups.iter().flatten())
                .cloned()
                .collect(),
            topics: Vec::new(),
            log_groups: config
                .logs
                .files
                .iter()
                .map(|f| wildcard_placeholders(&f.group))
                .collect(),
            partition: "aws",
            kms_keys: Vec::new(),
        };
        f.log_groups.sort();
        f.log_groups.dedup();
        f.topics.extend(config.notify.success_topic.iter().cloned());
        f.topics.extend(config.notify.error_topic.iter().cloned());
        f.topics.dedup();
        Ok(f)
    }
}

fn statement(sid: &str, actions: &[&str], resource: Value) -> Value {
    json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource})
}

/// Is this a KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`)? An alias or a bare id would not
/// match the key S3 asks KMS to use.
pub fn check_kms_key(flag: &str, arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "kms"
        && crate::aws::is_region(parts[3])
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("key/").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{flag} {arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; an alias does not name the key a policy must)"
        ))
    }
}

/// SSE-KMS objects: S3 asks KMS on the caller's behalf to decrypt a read and to make a data key for a
/// write (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html), only through S3.
fn release_kms(keys: &[String], partition: &str) -> Option<Value> {
    if keys.is_empty() {
        return None;
    }
    let suffix = crate::aws::Partition::of_name(partition).dns_suffix;
    let mut kms = statement(
        "ReleaseKms",
        &["kms:Decrypt", "kms:GenerateDataKey"],
        json!(keys),
    );
    kms["Condition"] = json!({"StringLike": {"kms:ViaService": format!("s3.*.{suffix}")}});
    Some(kms)
}

fn s3_prefix(source: &SourceUrl) -> String {
    if source.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", source.prefix)
    }
}

/// Listing the bucket, only under the source's prefix.
fn release_list(source: &SourceUrl, partition: &str) -> Value {
    let mut list = statement(
        "ReleaseList",
        &["s3:ListBucket"],
        json!(format!("arn:{partition}:s3:::{}", source.bucket)),
    );
    list["Condition"] = json!({"StringLike": {"s3:prefix": [format!("{}*", s3_prefix(source))]}});
    list
}

/// The instance profile's policy: only the actions the configured steps call.
pub fn instance_policy(f: &Features) -> Value {
    let mut statements = vec![statement(
        "ReadOwnTagsWhenMetadataTagsAreOff",
        &["ec2:DescribeTags"],
        json!("*"),
    )];
    statements.extend(eip_statements(f));
    statements.extend(efs_statements(f));
    if let Some(source) = &f.release {
        let prefix = s3_prefix(source);
        statements.push(release_list(source, f.partition));
        statements.push(statement(
            "ReleaseRead",
            &["s3:GetObject"],
            json!(format!(
                "arn:{}:s3:::{}/{prefix}*",
                f.partition, source.bucket
            )),
        ));
        statements.extend(release_kms(&f.kms_keys, f.partition));
        statements.push(statement(
            "DeployAgentReadyMarkers",
            &["s3:PutObject", "s3:DeleteObject"],
            json!(format!(
                "arn:{}:s3:::{}/{prefix}ready/*",
                f.partition, source.bucket
            )),
        ));
        // A release that fails validation on one instance is bad for the fleet: that agent records
        // it (`failed/<id>.json`, create-only) and moves the pointer back, conditionally on the
        // pointer it deployed (docs/deploys.md).
        statements.push(statement(
            "DeployAgentFleetRollback",
            &["s3:PutObject"],
            json!([
                format!(
                    "arn:{}:s3:::{}/{prefix}failed/*",
                    f.partition, source.bucket
                ),
                format!("arn:{}:s3:::{}/{prefix}current", f.partition, source.bucket),
            ]),
        ));
        // Each agent's status object (`status/<instance-id>/<entry>`, replaced at every change of
        // state, the one before deleted), read by `release status`; S3 cannot scope a resource to
        // the calling instance, so every agent of the source may write every status.
        statements.push(statement(
            "DeployAgentStatus",
            &["s3:PutObject", "s3:DeleteObject"],
            json!(format!(
                "arn:{}:s3:::{}/{prefix}status/*",
                f.partition, source.bucket
            )),
        ));
        // Run-once hooks: the lease (created with If-None-Match, renewed and taken over with
        // If-Match) and the outcome, under `once/<release>/<deploy>/`.
        statements.push(statement(
            "DeployAgentRunOnceLeases",
            &["s3:PutObject"],
            json!(format!(
                "arn:{}:s3:::{}/{prefix}once/*",
                f.partition, source.bucket
            )),
        ));
    }
    statements.extend(group_statements(f));
    if !f.target_groups.is_empty() {
        statements.push(statement(
            "TargetGroupRead",
            &["elasticloadbalancing:DescribeTargetHealth"],
            json!("*"),
        ));
        statements.push(statement(
            "TargetGroupRegister",
            &[
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets",
            ],
            json!(f.target_groups),
        ));
    }
    if !f.topics.is_empty() {
        statements.push(statement("Notify", &["sns:Publish"], json!(f.topics)));
    }
    statements.extend(log_statements(f));
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// `{role}`, `{group}`, `{instance_id}` in a log group name stand for any value in a policy.
fn wildcard_placeholders(group: &str) -> String {
    group
        .replace("{role}", "*")
        .replace("{group}", "*")
        .replace("{instance_id}", "*")
}

/// What the CloudWatch agent needs for the configured log groups, and nothing beyond them.
fn log_statements(f: &Features) -> Vec<Value> {
    if f.log_groups.is_empty() {
        return Vec::new();
    }
    let arn = |g: &str| format!("arn:{}:logs:*:*:log-group:{g}", f.partition);
    let groups: Vec<String> = f.log_groups.iter().map(|g| arn(g)).collect();
    let streams: Vec<String> = f
        .log_groups
        .iter()
        .map(|g| format!("{}:log-stream:*", arn(g)))
        .collect();
    vec![
        statement(
            "LogGroups",
            &[
                "logs:CreateLogGroup",
                "logs:PutRetentionPolicy",
                "logs:CreateLogStream",
                "logs:DescribeLogStreams",
            ],
            json!(groups),
        ),
        statement("LogEvents", &["logs:PutLogEvents"], json!(streams)),
    ]
}

/// Reading the pool; associating only addresses tagged with one of its pools.
fn eip_statements(f: &Features) -> Vec<Value> {
    if f.pools.is_empty() {
        return Vec::new();
    }
    let mut bind = statement(
        "ElasticIpBindFromPool",
        &["ec2:AssociateAddress"],
        json!(format!("arn:{}:ec2:*:*:elastic-ip/*", f.partition)),
    );
    bind["Condition"] = json!({"StringEquals": {"aws:ResourceTag/embark:pool": f.pools}});
    let mut give_back = statement(
        "ElasticIpGiveBackFromWarmPool",
        &["ec2:DisassociateAddress"],
        json!(format!("arn:{}:ec2:*:*:elastic-ip/*", f.partition)),
    );
    give_back["Condition"] = bind["Condition"].clone();
    vec![
        statement("ElasticIpPoolRead", &["ec2:DescribeAddresses"], json!("*")),
        bind,
        give_back,
        statement(
            "ElasticIpBindToInstance",
            &["ec2:AssociateAddress"],
            json!([
                format!("arn:{}:ec2:*:*:instance/*", f.partition),
                format!("arn:{}:ec2:*:*:network-interface/*", f.partition)
            ]),
        ),
    ]
}

/// Finding mount targets; mounting with IAM authorisation where a mount asks for it.
fn efs_statements(f: &Features) -> Vec<Value> {
    let arn = |fs: &str| format!("arn:{}:elasticfilesystem:*:*:file-system/{fs}", f.partition);
    if f.file_systems.is_empty() {
        return Vec::new();
    }
    let all: Vec<String> = f.file_systems.iter().map(|(fs, _)| arn(fs)).collect();
    let mut out = vec![statement(
        "EfsMountTargets",
        &[
            "elasticfilesystem:DescribeMountTargets",
            "elasticfilesystem:DescribeFileSystems",
        ],
        json!(all),
    )];
    let iam: Vec<String> = f
        .file_systems
        .iter()
        .filter(|(_, iam)| *iam)
        .map(|(fs, _)| arn(fs))
        .collect();
    if !iam.is_empty() {
        out.push(statement(
            "EfsIamMount",
            &[
                "elasticfilesystem:ClientMount",
                "elasticfilesystem:ClientWrite",
                // embark mounts as root; without it an IAM-authorised mount squashes root.
                "elasticfilesystem:ClientRootAccess",
            ],
            json!(iam),
        ));
    }
    out
}

/// The group: reading its hooks and members, completing the launching action, and marking the
/// instance Unhealthy (the failure policy of a group without a hook, `lifecycle_hook = "none"` too).
fn group_statements(f: &Features) -> Vec<Value> {
    let group_arn = format!(
        "arn:{}:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{}",
        f.partition,
        f.group.as_deref().unwrap_or("*")
    );
    let mut read = vec![];
    if f.lifecycle {
        read.push("autoscaling:DescribeLifecycleHooks");
    }
    if f.release.is_some() {
        read.push("autoscaling:DescribeAutoScalingGroups");
    }
    let mut out = Vec::new();
    if !read.is_empty() {
        out.push(statement("GroupRead", &read, json!("*")));
    }
    if f.lifecycle {
        out.push(statement(
            "LaunchLifecycleAndHealth",
            &[
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
                "autoscaling:SetInstanceHealth",
            ],
            json!(group_arn),
        ));
    } else if f.mark_unhealthy {
        out.push(statement(
            "MarkUnhealthyOnFailure",
            &["autoscaling:SetInstanceHealth"],
            json!(group_arn),
        ));
    }
    out
}

/// The policy for whoever publishes (`release push`, `release rollback`, `release list`): a CI role.
/// `sign_keys`: the KMS keys `release push --sign` uses (its public key names the signature).
pub fn publisher_policy(
    source: &SourceUrl,
    partition: &str,
    kms_keys: &[String],
    sign_keys: &[String],
) -> Value {
    let prefix = s3_prefix(source);
    let mut statements = vec![
        release_list(source, partition),
        statement(
            "ReleasePublish",
            &["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            json!(format!("arn:{partition}:s3:::{}/{prefix}*", source.bucket)),
        ),
    ];
    statements.extend(release_kms(kms_keys, partition));
    // `release status --wait` after a push: the group's InService instances (read-only; Describe*
    // calls cannot be scoped to one group).
    statements.push(statement(
        "ReleaseStatusGroup",
        &["autoscaling:DescribeAutoScalingGroups"],
        json!("*"),
    ));
    if !sign_keys.is_empty() {
        statements.push(statement(
            "ReleaseSign",
            &["kms:Sign", "kms:GetPublicKey"],
            json!(sign_keys),
        ));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_the_partition() {
        let f = Features {
            pools: vec!["web".into()],
            release: Some(SourceUrl::parse("s3://bucket-b/app").unwrap()),
            partition: "aws-cn",
            ..Features::default()
        };
        let text = instance_policy(&f).to_string();
        assert!(text.contains("arn:aws-cn:s3:::bucket-b/app/*"), "{text}");
        assert!(text.contains("arn:aws-cn:ec2:*:*:elastic-ip/*"), "{text}");
        assert!(!text.contains("arn:aws:"), "{text}");
        let publisher =
            publisher_policy(f.release.as_ref().unwrap(), "aws-us-gov", &[], &[]).to_string();
        assert!(
            publisher.contains("arn:aws-us-gov:s3:::bucket-b"),
            "{publisher}"
        );
    }

    #[test]
    fn an_sse_kms_bucket_adds_its_key_through_s3_only() {
        let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let f = Features {
            release: Some(SourceUrl::parse("s3://bucket-b/app").unwrap()),
            kms_keys: vec![key.into()],
            ..Features::default()
        };
        for policy in [
            instance_policy(&f),
            publisher_policy(f.release.as_ref().unwrap(), "aws", &f.kms_keys, &[]),
        ] {
            let kms = policy["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["Sid"] == "ReleaseKms")
                .cloned()
                .unwrap_or_else(|| panic!("no ReleaseKms in {policy}"));
            assert_eq!(kms["Action"], json!(["kms:Decrypt", "kms:GenerateDataKey"]));
            assert_eq!(kms["Resource"], json!([key]));
            assert_eq!(
                kms["Condition"]["StringLike"]["kms:ViaService"],
                "s3.*.amazonaws.com"
            );
        }
        let without = instance_policy(&Features {
            kms_keys: Vec::new(),
            ..f
        });
        assert!(!without.to_string().contains("kms:"), "{without}");
    }

    #[test]
    fn a_publisher_that_signs_may_sign_and_read_the_public_key_of_that_key_only() {
        let source = SourceUrl::parse("s3://deploy-bucket/app").unwrap();
        let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab".to_string();
        let policy = publisher_policy(&source, "aws", &[], std::slice::from_ref(&key));
        let sign = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "ReleaseSign")
            .expect("ReleaseSign");
        assert_eq!(sign["Action"], json!(["kms:Sign", "kms:GetPublicKey"]));
        assert_eq!(sign["Resource"], json!([key]));
        let unsigned = publisher_policy(&source, "aws", &[], &[]);
        assert!(!unsigned.to_string().contains("kms:"), "{unsigned}");
    }

    #[test]
    fn kms_keys_must_be_key_arns() {
        assert!(check_kms_key(
            "--kms-key",
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab"
        )
        .is_ok());
        assert!(check_kms_key(
            "--kms-key",
            "arn:aws-cn:kms:cn-north-1:123456789012:key/abc"
        )
        .is_ok());
        for bad in [
            "arn:aws:kms:eu-west-1:123456789012:alias/deploy",
            "1234abcd-12ab",
            "arn:aws:kms:eu-west-1:1234:key/abc",
            "arn:aws:s3:eu-west-1:123456789012:key/abc",
            "arn:aws:kms:eu-west-1:123456789012:key/a*",
        ] {
            let err = check_kms_key("--kms-key", bad).unwrap_err();
            assert!(err.contains("not a KMS key ARN"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_configured_features() {
        let bare = instance_policy(&Features::default());
        assert_eq!(bare["Statement"].as_array().unwrap().len(), 1);
        let f = Features {
            pools: vec!["web".into()],
            release: Some(SourceUrl::parse("s3://bucket-b/app").unwrap()),
            lifecycle: true,
            topics: vec!["arn:aws:sns:eu-west-1:1:t".into()],
            ..Features::default()
        };
        let text = instance_policy(&f).to_string();
        for needle in [
            "ec2:AssociateAddress",
            "aws:ResourceTag/embark:pool",
            "arn:aws:s3:::bucket-b/app/*",
            "arn:aws:s3:::bucket-b/app/ready/*",
            "arn:aws:s3:::bucket-b/app/failed/*",
            "arn:aws:s3:::bucket-b/app/current",
            "arn:aws:s3:::bucket-b/app/status/*",
            "arn:aws:s3:::bucket-b/app/once/*",
            "autoscaling:CompleteLifecycleAction",
            "sns:Publish",
        ] {
            assert!(text.contains(needle), "{needle} missing: {text}");
        }
        assert!(!text.contains("elasticfilesystem"));
        assert!(!text.contains("elasticloadbalancing"));
    }

    fn actions(policy: &Value) -> Vec<String> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn without_a_hook_the_failure_policy_may_still_mark_unhealthy() {
        let none = Features {
            lifecycle: false,
            mark_unhealthy: true,
            ..Features::default()
        };
        let got = actions(&instance_policy(&none));
        assert!(
            got.contains(&"autoscaling:SetInstanceHealth".to_string()),
            "{got:?}"
        );
        assert!(!got.contains(&"autoscaling:CompleteLifecycleAction".to_string()));
        let keep = Features {
            mark_unhealthy: false,
            ..none
        };
        assert!(!actions(&instance_policy(&keep))
            .contains(&"autoscaling:SetInstanceHealth".to_string()));
    }

    #[test]
    fn iam_authorised_mounts_get_client_mount_on_their_file_system_only() {
        let f = Features {
            file_systems: vec![("fs-1".into(), false), ("fs-2".into(), true)],
            ..Features::default()
        };
        let policy = instance_policy(&f);
        let mount = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "EfsIamMount")
            .expect("EfsIamMount");
        assert_eq!(
            mount["Resource"],
            json!(["arn:aws:elasticfilesystem:*:*:file-system/fs-2"])
        );
    }
}
