//! AWS SDK configuration: embark's own HTTP client (pure-Rust DNS), the standard environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_PROFILE`, credentials), and the instance's own region as the default.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

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

/// A service error's code (`UnauthorizedOperation`, `Resource.AlreadyAssociated`, ...), if any.
pub fn error_code<E, R>(
    err: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> Option<&str>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}

/// One sentence for an SDK error: the service's code and message when there is one, else the chain.
pub fn describe<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_string(),
            _ => crate::identity::error_chain(err),
        },
        None => crate::identity::error_chain(err),
    }
}
