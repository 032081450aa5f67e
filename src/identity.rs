//! Who this instance is, from IMDSv2 (through the AWS SDK's IMDS client).
//!
//! At boot the network may not be up yet, so connection failures, timeouts and 5xx answers are retried
//! with a Fibonacci backoff (250 ms → 10 s) until the IMDS deadline; a path that does not exist is
//! `None`, not an error; IMDS disabled on the instance (403) is an immediate, clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_config::imds::Client as ImdsClient;
use aws_config::provider_config::ProviderConfig;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde::Serialize;

use crate::aws::{Aws, AwsError};
use crate::output::error_chain;
use crate::retry::{retry, Failure, Policy, Verdict};

pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("IMDS is disabled on this instance (403 Forbidden): enable the instance metadata service (HttpEndpoint=enabled) in the launch template")]
    Disabled,
    #[error("IMDS at {endpoint} did not answer {path} within {deadline:?} ({last}); check that the instance metadata service is reachable (hop limit, endpoint, network)")]
    Unreachable {
        endpoint: String,
        path: String,
        deadline: Duration,
        last: String,
    },
    #[error("IMDS answered {path} with an error: {detail}")]
    Failed { path: String, detail: String },
    #[error("IMDS has no {what} for this instance ({path} is missing)")]
    Missing { what: &'static str, path: String },
    #[error("cannot read this instance's tags: instance metadata tags are off and {source}; or enable InstanceMetadataTags in the launch template")]
    Tags {
        #[source]
        source: AwsError,
    },
}

/// Where the instance's tags were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TagsSource {
    /// IMDS `tags/instance` (instance metadata tags enabled).
    Imds,
    /// `ec2:DescribeTags` on this instance.
    DescribeTags,
}

/// The instance, as `embark identity --json` prints it (a stable, documented shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    #[serde(flatten)]
    pub metadata: Metadata,
    pub auto_scaling_group: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub tags_source: TagsSource,
}

/// The IMDS client with embark's retry rules and deadline.
pub struct Imds {
    /// Replaced when IMDS stops accepting its session token (401): the SDK's client caches a token
    /// until the TTL it was given, and a restarted metadata proxy forgets it before then.
    client: std::sync::Mutex<ImdsClient>,
    http: SharedHttpClient,
    endpoint: String,
    deadline: Duration,
}

impl Imds {
    pub fn new(http: SharedHttpClient, deadline: Duration) -> Imds {
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|_| "http://169.254.169.254".to_string());
        Imds {
            client: std::sync::Mutex::new(Imds::client(&http)),
            http,
            endpoint,
            deadline,
        }
    }

    fn client(http: &SharedHttpClient) -> ImdsClient {
        let provider = ProviderConfig::without_region().with_http_client(http.clone());
        ImdsClient::builder()
            .configure(&provider)
            // embark retries itself, within the deadline, and classifies each failure.
            .max_attempts(1)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build()
    }

    fn current(&self) -> ImdsClient {
        match self.client.lock() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A new client, so the next call fetches a new session token.
    fn renew(&self) {
        let fresh = Imds::client(&self.http);
        match self.client.lock() {
            Ok(mut client) => *client = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// GET a metadata path (relative to `/latest/`); `None` when IMDS says it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<String>, IdentityError> {
        let full = format!("/latest/{path}");
        let policy = Policy::new(
            Duration::from_millis(250),
            Duration::from_secs(10),
            self.deadline,
        );
        let result = retry(
            policy,
            |_| async {
                match self.current().get(full.clone()).await {
                    Ok(value) => Verdict::Done(Some(value.as_ref().to_string())),
                    Err(err) => match classify(&err) {
                        Class::Absent => Verdict::Done(None),
                        Class::TokenRefused => {
                            self.renew();
                            Verdict::Retry("HTTP 401: the session token is no longer accepted; fetching a new one".to_string())
                        }
                        Class::Forbidden => Verdict::Stop(IdentityError::Disabled),
                        Class::Fatal(detail) => Verdict::Stop(IdentityError::Failed {
                            path: full.clone(),
                            detail,
                        }),
                        Class::Retry(detail) => Verdict::Retry(detail),
                    },
                }
            },
            |w| {
                // The first failures are normal while the network comes up; after that, say so.
                if w.elapsed >= Duration::from_secs(2) {
                    tracing::info!(
                        path = %full,
                        "waiting for IMDS at {} (attempt {}, {} left): {}",
                        self.endpoint,
                        w.attempt,
                        humantime::format_duration(Duration::from_secs(w.left.as_secs())),
                        w.last
                    );
                } else {
                    tracing::debug!(path = %full, "IMDS not ready ({}); retrying in {:?}", w.last, w.delay);
                }
            },
        )
        .await;
        result.map_err(|failure| match failure {
            Failure::Stopped(err) => err,
            Failure::GaveUp { last, .. } => IdentityError::Unreachable {
                endpoint: self.endpoint.clone(),
                path: full.clone(),
                deadline: self.deadline,
                last,
            },
        })
    }

    async fn require(&self, path: &str, what: &'static str) -> Result<String, IdentityError> {
        self.get(path).await?.ok_or_else(|| IdentityError::Missing {
            what,
            path: format!("/latest/{path}"),
        })
    }

    /// Instance tags from IMDS; `None` when instance metadata tags are not enabled.
    pub async fn tags(&self) -> Result<Option<BTreeMap<String, String>>, IdentityError> {
        let Some(listing) = self.get("meta-data/tags/instance").await? else {
            return Ok(None);
        };
        let mut tags = BTreeMap::new();
        for key in listing.lines().map(str::trim).filter(|k| !k.is_empty()) {
            // A tag deleted between the listing and the read is simply gone.
            if let Some(value) = self.get(&format!("meta-data/tags/instance/{key}")).await? {
                tags.insert(key.to_string(), value);
            }
        }
        Ok(Some(tags))
    }
}

/// What an IMDS answer means for the caller.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Absent,
    Forbidden,
    /// 401: the session token was refused (expired, or IMDS forgot it).
    TokenRefused,
    Retry(String),
    Fatal(String),
}

/// An IMDS answer's status: 404 is "no such path", 403 "IMDS is off", 401 a token no longer accepted
/// (fetch a new one and try again), 429 and 5xx are worth another try, anything else is final.
fn classify_status(status: u16) -> Class {
    match status {
        404 => Class::Absent,
        403 => Class::Forbidden,
        401 => Class::TokenRefused,
        429 | 500..=599 => Class::Retry(format!("HTTP {status}")),
        other => Class::Fatal(format!("HTTP {other}")),
    }
}

/// The token request's status: 403 is IMDS off, 400 a refused TTL, anything else worth another try.
fn classify_token_status(status: u16) -> Class {
    match status {
        403 => Class::Forbidden,
        400 => Class::Fatal("the token request was refused (400)".to_string()),
        other => Class::Retry(format!("token request answered HTTP {other}")),
    }
}

fn classify(err: &ImdsError) -> Class {
    match err {
        ImdsError::ErrorResponse(resp) => classify_status(resp.response().status().as_u16()),
        ImdsError::FailedToLoadToken(token) => {
            let source = std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>());
            let status = source
                .and_then(|s| s.raw_response())
                .map(|r| r.status().as_u16());
            match status {
                Some(status) => classify_token_status(status),
                None if token.is_dispatch_failure() => {
                    Class::Retry(format!("cannot connect: {}", error_chain(err)))
                }
                None => Class::Retry(error_chain(err)),
            }
        }
        // Timeouts, refused connections, a body cut short: the network may not be up yet.
        _ => Class::Retry(error_chain(err)),
    }
}

/// What IMDS says about the instance, except its tags; read concurrently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub availability_zone_id: Option<String>,
    pub instance_type: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv4: Option<String>,
    pub mac: Option<String>,
    /// The primary network interface (device 0), read only when the instance has several: an address
    /// is then associated with it, because EC2 refuses an instance id alone for such an instance.
    pub interface_id: Option<String>,
    pub target_lifecycle_state: Option<String>,
}

pub async fn metadata(imds: &Imds) -> Result<Metadata, IdentityError> {
    // The first call fetches the session token; the rest reuse it concurrently.
    let instance_id = imds.require("meta-data/instance-id", "instance id").await?;
    let (region, az, az_id, itype, private, public, mac, lifecycle) = tokio::join!(
        imds.require("meta-data/placement/region", "region"),
        imds.require("meta-data/placement/availability-zone", "availability zone"),
        imds.get("meta-data/placement/availability-zone-id"),
        imds.get("meta-data/instance-type"),
        imds.get("meta-data/local-ipv4"),
        imds.get("meta-data/public-ipv4"),
        imds.get("meta-data/mac"),
        imds.get("meta-data/autoscaling/target-lifecycle-state"),
    );
    Ok(Metadata {
        instance_id,
        region: region?,
        availability_zone: az?,
        availability_zone_id: az_id?,
        instance_type: itype?,
        private_ipv4: private?,
        public_ipv4: public?,
        interface_id: match mac.as_ref().ok().and_then(|m| m.as_deref()) {
            Some(mac) => primary_interface(imds, mac).await?,
            None => None,
        },
        mac: mac?,
        target_lifecycle_state: lifecycle?,
    })
}

/// The primary interface's id when the instance has several (an Elastic IP must then name it; with
/// one interface the instance id is enough, and one IMDS call is saved).
async fn primary_interface(imds: &Imds, mac: &str) -> Result<Option<String>, IdentityError> {
    let listing = imds.get("meta-data/network/interfaces/macs/").await?;
    let interfaces = listing
        .as_deref()
        .map(|l| l.lines().filter(|m| !m.trim().is_empty()).count())
        .unwrap_or(0);
    if interfaces <= 1 {
        return Ok(None);
    }
    imds.get(&format!(
        "meta-data/network/interfaces/macs/{mac}/interface-id"
    ))
    .await
}

impl Identity {
    pub fn from_parts(
        metadata: Metadata,
        tags: BTreeMap<String, String>,
        source: TagsSource,
    ) -> Self {
        Identity {
            auto_scaling_group: tags.get(GROUP_TAG).cloned(),
            metadata,
            tags,
            tags_source: source,
        }
    }

    /// `key: value` lines for people.
    pub fn human(&self) -> String {
        let m = &self.metadata;
        let none = || "-".to_string();
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
        line("instance id", m.instance_id.clone());
        line("region", m.region.clone());
        line(
            "availability zone",
            match &m.availability_zone_id {
                Some(id) => format!("{} ({id})", m.availability_zone),
                None => m.availability_zone.clone(),
            },
        );
        line(
            "instance type",
            m.instance_type.clone().unwrap_or_else(none),
        );
        line("private ipv4", m.private_ipv4.clone().unwrap_or_else(none));
        line("public ipv4", m.public_ipv4.clone().unwrap_or_else(none));
        line("mac", m.mac.clone().unwrap_or_else(none));
        line(
            "auto scaling group",
            self.auto_scaling_group
                .clone()
                .unwrap_or_else(|| "- (not in a group)".to_string()),
        );
        line(
            "lifecycle target",
            m.target_lifecycle_state.clone().unwrap_or_else(none),
        );
        let source = match self.tags_source {
            TagsSource::Imds => "from IMDS",
            TagsSource::DescribeTags => "from ec2:DescribeTags",
        };
        line(&format!("tags ({source})"), String::new());
        for (k, v) in &self.tags {
            out.push_str(&format!("  {k} = {v}\n"));
        }
        out
    }
}

/// The instance's tags with `ec2:DescribeTags`, for instances without metadata tags.
pub async fn tags_from_ec2(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<BTreeMap<String, String>, IdentityError> {
    use aws_sdk_ec2::types::Filter;
    let mut tags = BTreeMap::new();
    let mut pages = ec2
        .describe_tags()
        .filters(
            Filter::builder()
                .name("resource-id")
                .values(instance_id)
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| IdentityError::Tags {
            source: AwsError::new("ec2:DescribeTags", &err).on(format!("for {instance_id}")),
        })?;
        for tag in page.tags() {
            if let (Some(k), Some(v)) = (tag.key(), tag.value()) {
                tags.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(tags)
}

/// Who this instance is: metadata, the AWS configuration for its region, and its tags (from IMDS
/// when instance metadata tags are on, else from `ec2:DescribeTags`).
pub async fn identify(
    imds: &Imds,
    http: SharedHttpClient,
) -> Result<(Identity, Aws), IdentityError> {
    let meta = metadata(imds).await?;
    let aws = Aws::load(http, &meta.region).await;
    let (tags, source) = match imds.tags().await? {
        Some(tags) => (tags, TagsSource::Imds),
        None => {
            tracing::debug!("instance metadata tags are off; reading tags with ec2:DescribeTags");
            let tags = tags_from_ec2(&aws.ec2(), &meta.instance_id).await?;
            (tags, TagsSource::DescribeTags)
        }
    };
    Ok((Identity::from_parts(meta, tags, source), aws))
}

/// The group's `embark:*` tags that are not propagated to its instances (`PropagateAtLaunch=false`):
/// they configure nothing. Best effort: a refused or failed look-up gives none.
pub async fn unpropagated_group_tags(aws: &Aws, group: &str) -> Vec<String> {
    let asg = aws_sdk_autoscaling::Client::new(&aws.config);
    let Ok(answer) = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
    else {
        return Vec::new();
    };
    answer
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.tags())
        .filter(|t| t.propagate_at_launch() == Some(false))
        .filter_map(|t| t.key())
        .filter(|k| k.starts_with("embark:"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_statuses_are_classified() {
        assert_eq!(classify_status(404), Class::Absent);
        assert_eq!(classify_status(403), Class::Forbidden);
        assert_eq!(classify_status(401), Class::TokenRefused);
        for retried in [429, 500, 503, 599] {
            assert!(
                matches!(classify_status(retried), Class::Retry(_)),
                "{retried}"
            );
        }
        for fatal in [400, 405, 302] {
            assert!(matches!(classify_status(fatal), Class::Fatal(_)), "{fatal}");
        }
        assert_eq!(classify_token_status(403), Class::Forbidden);
        assert!(matches!(classify_token_status(400), Class::Fatal(_)));
        assert!(matches!(classify_token_status(503), Class::Retry(_)));
    }

    #[test]
    fn the_group_comes_from_its_tag() {
        let meta = Metadata {
            instance_id: "i-1".into(),
            region: "eu-west-1".into(),
            availability_zone: "eu-west-1a".into(),
            availability_zone_id: None,
            instance_type: None,
            private_ipv4: None,
            public_ipv4: None,
            mac: None,
            interface_id: None,
            target_lifecycle_state: None,
        };
        let mut tags = BTreeMap::new();
        let alone = Identity::from_parts(meta.clone(), tags.clone(), TagsSource::Imds);
        assert_eq!(alone.auto_scaling_group, None);
        tags.insert(GROUP_TAG.to_string(), "web".to_string());
        let grouped = Identity::from_parts(meta, tags, TagsSource::DescribeTags);
        assert_eq!(grouped.auto_scaling_group.as_deref(), Some("web"));
        assert!(grouped.human().contains("from ec2:DescribeTags"));
    }
}
