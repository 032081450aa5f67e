//! AWS SDK configuration: embark's own HTTP client (pure-Rust DNS), the standard environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_PROFILE`, credentials), and the instance's own region as the default.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Shared SDK configuration; service clients are made from it where a step needs one.
#[derive(Clone, Debug)]
pub struct Aws {
    pub config: SdkConfig,
}

impl Aws {
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`) wins, as with the AWS CLI; else the instance's region.
    pub async fn load(http: SharedHttpClient, instance_region: &str) -> Aws {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| instance_region.to_string());
        // More attempts than the SDK's default 3: at boot, a throttled or briefly failing API must not
        // fail the instance; the standard strategy backs off with jitter between them.
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(8))
            .region(Region::new(region))
            .load()
            .await;
        Aws { config }
    }

    /// Off an instance (`release push`, `release list --from`): the region from the environment or the
    /// profile, else us-east-1; IMDS is never asked.
    pub async fn load_standalone(http: SharedHttpClient) -> Aws {
        use aws_config::environment::EnvironmentVariableRegionProvider;
        use aws_config::meta::region::RegionProviderChain;
        use aws_config::profile::ProfileFileRegionProvider;
        let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new())
            .or_else(Region::new("us-east-1"));
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(8))
            .region(region)
            .load()
            .await;
        Aws { config }
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.config)
    }

    pub fn efs(&self) -> aws_sdk_efs::Client {
        aws_sdk_efs::Client::new(&self.config)
    }

    /// A custom endpoint (an emulator, a proxy) for this service, from the standard variables.
    pub fn custom_endpoint(service: &str) -> bool {
        let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
        ["AWS_ENDPOINT_URL", specific.as_str()]
            .iter()
            .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
    }

    pub fn region(&self) -> String {
        self.config
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default()
    }
}

/// Does this look like a region name (`eu-west-1`, `us-gov-west-1`)? Lowercase words and digits joined
/// by dashes: what a config file or an S3 answer may name before embark builds a client with it.
pub fn is_region(name: &str) -> bool {
    (4..=32).contains(&name.len())
        && name.contains('-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An AWS partition: ARNs and DNS names differ in China and GovCloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// `aws`, `aws-cn`, `aws-us-gov`: the second field of an ARN.
    pub name: &'static str,
    /// `amazonaws.com` or `amazonaws.com.cn`: service DNS names end with it.
    pub dns_suffix: &'static str,
}

impl Partition {
    /// The partition of a region, by its documented name prefixes
    /// (https://docs.aws.amazon.com/whitepapers/latest/aws-fault-isolation-boundaries/partitions.html).
    pub fn of_region(region: &str) -> Partition {
        if region.starts_with("cn-") {
            Partition {
                name: "aws-cn",
                dns_suffix: "amazonaws.com.cn",
            }
        } else if region.starts_with("us-gov-") {
            Partition {
                name: "aws-us-gov",
                dns_suffix: "amazonaws.com",
            }
        } else {
            Partition::of_name("aws")
        }
    }

    /// By name, as `iam-policy --partition` takes it; anything unknown is the commercial partition.
    pub fn of_name(name: &str) -> Partition {
        match name {
            "aws-cn" => Partition::of_region("cn-north-1"),
            "aws-us-gov" => Partition::of_region("us-gov-west-1"),
            _ => Partition {
                name: "aws",
                dns_suffix: "amazonaws.com",
            },
        }
    }
}

/// A service error's code (`UnauthorizedOperation`, `Resource.AlreadyAssociated`, ...), if any.
pub fn error_code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}

/// The HTTP status of the answer, when there was one.
pub fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The error codes with which the services embark calls say "not allowed": EC2, S3, Auto Scaling,
/// ELB, EFS, SNS and KMS each spell it their own way.
pub const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Forbidden",
    "AuthorizationError",
];

/// What kind of failure an AWS call had, as far as an operator is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The credentials in use may not call this action.
    Denied,
    /// No credentials were found at all.
    NoCredentials,
    /// A profile's credentials could not be loaded (`credential_process` failed, an SSO session
    /// expired): the provider's own reason says why.
    CredentialsFailed,
    /// Anything else: the service's code and message say what.
    Other,
}

/// One failed AWS call as one sentence: the IAM action, what it was called on, the service's code and
/// message, and for a refusal the grant that is missing. Every AWS call in embark reports through this.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.sentence())]
pub struct AwsError {
    /// The IAM action, e.g. `ec2:AssociateAddress`.
    pub action: &'static str,
    /// What it was called on, as a phrase: `for group web`, `s3://bucket/key`; may be empty.
    pub target: String,
    pub code: Option<String>,
    pub status: Option<u16>,
    pub detail: String,
    pub kind: Kind,
    /// The resource the grant must name, when the caller knows it (an ARN).
    pub resource: Option<String>,
}

impl AwsError {
    pub fn new<E>(action: &'static str, err: &SdkError<E, HttpResponse>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error_code(err).map(str::to_string);
        let status = http_status(err);
        let detail = describe(err);
        let kind = classify(code.as_deref(), status, &detail);
        AwsError {
            action,
            target: String::new(),
            code,
            status,
            detail,
            kind,
            resource: None,
        }
    }

    /// What the call was made on, for the sentence.
    pub fn on(mut self, target: impl Into<String>) -> AwsError {
        self.target = target.into();
        self
    }

    /// The resource a missing grant must name.
    pub fn resource(mut self, arn: impl Into<String>) -> AwsError {
        self.resource = Some(arn.into());
        self
    }

    pub fn is_denied(&self) -> bool {
        self.kind == Kind::Denied
    }

    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    fn sentence(&self) -> String {
        let target = if self.target.is_empty() {
            String::new()
        } else {
            format!(" {}", self.target)
        };
        match self.kind {
            Kind::Denied => format!(
                "not allowed to call {}{target}: {}. Grant {}{} to the instance role (or the credentials in use; `embark iam-policy` prints the policy)",
                self.action,
                self.detail,
                self.action,
                self.resource
                    .as_deref()
                    .map(|r| format!(" on {r}"))
                    .unwrap_or_default()
            ),
            Kind::NoCredentials => format!(
                "no AWS credentials for {}{target}: none were found in the environment (AWS_ACCESS_KEY_ID), the profile (AWS_PROFILE, ~/.aws), or the instance profile; attach an instance profile to the instance, or set AWS_PROFILE or the AWS_* variables ({})",
                self.action,
                credential_chain(&self.detail)
            ),
            Kind::CredentialsFailed => format!(
                "could not load AWS credentials for {}{target}: {}. For an SSO profile sign in again (`aws sso login`); for `credential_process`, run the program by hand",
                self.action,
                loading_reason(&self.detail)
            ),
            Kind::Other => format!("{}{target} failed: {}", self.action, self.detail),
        }
    }
}

/// The SDK's account of the providers it tried, on one line, without its transport wording.
fn credential_chain(detail: &str) -> String {
    let start = detail.find("no credentials found").unwrap_or(0);
    detail[start..]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

const LOADING: &str = "an error occurred while loading credentials: ";

/// The provider's reason, without the SDK's repeated preamble.
fn loading_reason(detail: &str) -> &str {
    let reason = detail.rsplit(LOADING).next().unwrap_or(detail).trim();
    reason.strip_prefix("service error: ").unwrap_or(reason)
}

/// Denied, no credentials, or anything else, from the code, the status and the error chain.
pub fn classify(code: Option<&str>, status: Option<u16>, chain: &str) -> Kind {
    if code.is_some_and(|c| DENIED_CODES.contains(&c)) || (code.is_none() && status == Some(403)) {
        Kind::Denied
    } else if status.is_none()
        && (chain.contains("no credentials") || chain.contains("credentials provider"))
    {
        Kind::NoCredentials
    } else if status.is_none() && chain.contains(LOADING) {
        Kind::CredentialsFailed
    } else {
        Kind::Other
    }
}

/// One sentence for an SDK error: the service's code and message when there is one, else the chain.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_string(),
            _ => crate::output::error_chain(err),
        },
        None => crate::output::error_chain(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_checked() {
        for good in ["eu-west-1", "us-gov-west-1", "cn-north-1", "ap-southeast-5"] {
            assert!(is_region(good), "{good}");
        }
        for bad in [
            "",
            "eu",
            "EU-WEST-1",
            "eu-west-1.evil.com",
            "eu west 1",
            "-eu-1",
            "eu-west-",
            "eu/west-1",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!(Partition::of_region("eu-west-1").name, "aws");
        assert_eq!(Partition::of_region("cn-northwest-1").name, "aws-cn");
        assert_eq!(
            Partition::of_region("cn-north-1").dns_suffix,
            "amazonaws.com.cn"
        );
        assert_eq!(Partition::of_region("us-gov-east-1").name, "aws-us-gov");
        assert_eq!(
            Partition::of_region("us-gov-east-1").dns_suffix,
            "amazonaws.com"
        );
        assert_eq!(
            Partition::of_name("aws-cn"),
            Partition::of_region("cn-north-1")
        );
    }

    #[test]
    fn every_services_refusal_is_denied() {
        for code in DENIED_CODES {
            assert_eq!(classify(Some(code), Some(403), ""), Kind::Denied, "{code}");
        }
        assert_eq!(
            classify(None, Some(403), "service error"),
            Kind::Denied,
            "a HEAD answered 403 has no code"
        );
        assert_eq!(classify(Some("NoSuchKey"), Some(404), ""), Kind::Other);
        assert_eq!(
            classify(Some("Throttling"), Some(400), "no credentials"),
            Kind::Other,
            "a service answered: credentials were there"
        );
    }

    #[test]
    fn the_credential_chain_is_one_line() {
        let detail = "dispatch failure: other: the credential provider was not enabled: no credentials found in chain. Attempted:\n  Environment: not set\n  Profile: not enabled";
        assert_eq!(
            credential_chain(detail),
            "no credentials found in chain. Attempted: Environment: not set Profile: not enabled"
        );
    }

    #[test]
    fn a_profile_whose_credentials_fail_to_load_says_why() {
        let chain = "dispatch failure: other: an error occurred while loading credentials: service error: UnauthorizedException: Session token not found or invalid";
        assert_eq!(classify(None, None, chain), Kind::CredentialsFailed);
        assert_eq!(
            loading_reason(chain),
            "UnauthorizedException: Session token not found or invalid"
        );
        assert_eq!(
            classify(Some("ExpiredToken"), Some(400), chain),
            Kind::Other,
            "a service answered: the credentials loaded"
        );
    }

    #[test]
    fn missing_credentials_are_named_as_such() {
        let chain = "dispatch failure: other: the credential provider was not enabled: no credentials found in chain";
        assert_eq!(classify(None, None, chain), Kind::NoCredentials);
        assert_eq!(classify(None, None, "connection refused"), Kind::Other);
    }

    #[test]
    fn sentences_name_the_action_and_the_grant() {
        let err = AwsError {
            action: "s3:GetObject",
            target: "s3://b/app/current".into(),
            code: Some("AccessDenied".into()),
            status: Some(403),
            detail: "AccessDenied: Access Denied".into(),
            kind: Kind::Denied,
            resource: Some("arn:aws:s3:::b/app/*".into()),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("not allowed to call s3:GetObject s3://b/app/current: AccessDenied"),
            "{text}"
        );
        assert!(
            text.contains("Grant s3:GetObject on arn:aws:s3:::b/app/*"),
            "{text}"
        );
        let other = AwsError {
            kind: Kind::Other,
            ..err
        };
        assert_eq!(
            other.to_string(),
            "s3:GetObject s3://b/app/current failed: AccessDenied: Access Denied"
        );
    }
}
