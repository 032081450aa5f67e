//! Who this instance is, from IMDSv2 (through the AWS SDK's IMDS client).
//!
//! At boot the network may not be up yet, so connection failures, timeouts and 5xx answers are retried
//! with a Fibonacci backoff (250 ms → 10 s) until the IMDS deadline; a path that does not exist is
//! `None`, not an error; IMDS disabled on the instance (403) is an immediate, clear error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_config::imds::Client as ImdsClient;
use aws_config::provider_config::ProviderConfig;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde::Serialize;

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
    #[error("cannot read this instance's tags: instance metadata tags are off and ec2:DescribeTags failed: {detail}. Enable InstanceMetadataTags in the launch template or allow ec2:DescribeTags")]
    Tags { detail: String },
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
    client: ImdsClient,
    endpoint: String,
    deadline: Duration,
}

impl Imds {
    pub fn new(http: SharedHttpClient, deadline: Duration) -> Imds {
        let provider = ProviderConfig::without_region().with_http_client(http);
        let client = ImdsClient::builder()
            .configure(&provider)
            // embark retries itself, within the deadline, and classifies each failure.
            .max_attempts(1)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|_| "http://169.254.169.254".to_string());
        Imds {
            client,
            endpoint,
            deadline,
        }
    }

    /// GET a metadata path (relative to `/latest/`); `None` when IMDS says it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<String>, IdentityError> {
        let full = format!("/latest/{path}");
        let started = Instant::now();
        let mut backoff = Fibonacci::new(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            let last = match self.client.get(full.clone()).await {
                Ok(value) => return Ok(Some(value.as_ref().to_string())),
                Err(err) => match classify(&err) {
                    Class::Absent => return Ok(None),
                    Class::Forbidden => return Err(IdentityError::Disabled),
                    Class::Fatal(detail) => {
                        return Err(IdentityError::Failed { path: full, detail })
                    }
                    Class::Retry(detail) => detail,
                },
            };
            let wait = backoff.next_delay();
            if started.elapsed() + wait > self.deadline {
                return Err(IdentityError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    path: full,
                    deadline: self.deadline,
                    last,
                });
            }
            tracing::debug!(path = %full, "IMDS not ready ({last}); retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
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

enum Class {
    Absent,
    Forbidden,
    Retry(String),
    Fatal(String),
}

fn classify(err: &ImdsError) -> Class {
    match err {
        ImdsError::ErrorResponse(resp) => match resp.response().status().as_u16() {
            404 => Class::Absent,
            403 => Class::Forbidden,
            // 401: the token expired between fetch and use; the client fetches a new one.
            status @ (401 | 429 | 500..=599) => Class::Retry(format!("HTTP {status}")),
            status => Class::Fatal(format!("HTTP {status}")),
        },
        ImdsError::FailedToLoadToken(token) => {
            let source = std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>());
            let status = source
                .and_then(|s| s.raw_response())
                .map(|r| r.status().as_u16());
            match status {
                Some(403) => Class::Forbidden,
                Some(400) => Class::Fatal("the token request was refused (400)".to_string()),
                Some(s) => Class::Retry(format!("token request answered HTTP {s}")),
                None if token.is_dispatch_failure() => {
                    Class::Retry(format!("cannot connect: {}", error_chain(err)))
                }
                None => Class::Retry(error_chain(err)),
            }
        }
        ImdsError::IoError(_) => Class::Retry(error_chain(err)),
        _ => Class::Retry(error_chain(err)),
    }
}

/// The error and its sources, as one line (never Debug).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The retry strategy for boot-time calls: Fibonacci delays between `first` and `max`.
pub struct Fibonacci {
    a: Duration,
    b: Duration,
    max: Duration,
}

impl Fibonacci {
    pub fn new(first: Duration, max: Duration) -> Fibonacci {
        Fibonacci {
            a: first,
            b: first,
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.a.min(self.max);
        let next = self.a + self.b;
        self.a = self.b;
        self.b = next;
        delay
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
        mac: mac?,
        target_lifecycle_state: lifecycle?,
    })
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
            detail: crate::aws::describe(&err),
        })?;
        for tag in page.tags() {
            if let (Some(k), Some(v)) = (tag.key(), tag.value()) {
                tags.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fibonacci_backoff_is_bounded() {
        let mut f = Fibonacci::new(Duration::from_millis(250), Duration::from_secs(10));
        let delays: Vec<u64> = (0..10).map(|_| f.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            vec![250, 250, 500, 750, 1250, 2000, 3250, 5250, 8500, 10000]
        );
    }
}
