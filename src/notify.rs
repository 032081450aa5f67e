//! SNS notifications: a short subject naming the group, the instance and the outcome; the report as body.

use crate::aws::{describe, Aws};

/// Subjects are ASCII, no control characters, and fewer than 100 characters: SNS's Publish documents
/// "must be less than 100 characters long" (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html).
pub const SUBJECT_MAX: usize = 99;

/// The subject of a notification, within SNS's rules.
pub fn subject(group: Option<&str>, instance_id: &str, outcome: &str) -> String {
    let text = format!(
        "embark: {} {instance_id} {outcome}",
        group.unwrap_or("(no group)")
    );
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.chars().take(SUBJECT_MAX).collect()
}

/// Publish to `topic` (an ARN; its region is used). Failures are returned for the caller to log:
/// a notification must never turn a good boot into a failed one.
pub async fn publish(aws: &Aws, topic: &str, subject: &str, body: &str) -> Result<(), String> {
    let mut config = aws_sdk_sns::config::Builder::from(&aws.config);
    if let Some(region) = topic.split(':').nth(3).filter(|r| !r.is_empty()) {
        config = config.region(aws_sdk_sns::config::Region::new(region.to_string()));
    }
    let sns = aws_sdk_sns::Client::from_conf(config.build());
    sns.publish()
        .topic_arn(topic)
        .subject(subject)
        .message(body)
        .send()
        .await
        .map_err(|err| format!("publishing to {topic} failed: {}", describe(&err)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_short_ascii() {
        assert_eq!(
            subject(Some("web"), "i-1", "boot succeeded"),
            "embark: web i-1 boot succeeded"
        );
        let long = subject(Some(&"ü".repeat(300)), "i-1", "failed");
        assert_eq!(long.chars().count(), 99, "fewer than 100, as SNS requires");
        assert!(long.is_ascii());
    }
}
