//! Unit-test helpers: SDK clients whose answers come from `aws-smithy-mocks` rules, never the network.

use aws_smithy_mocks::{create_mock_http_client, MockResponseInterceptor, Rule, RuleMode};

/// Anything the SDK's service config builders have in common that a mocked client needs.
pub trait MockableConfig: Sized {
    type Config;
    fn finish(self, interceptor: MockResponseInterceptor) -> Self::Config;
}

macro_rules! mockable {
    ($($krate:ident),*) => {$(
        impl MockableConfig for $krate::config::Builder {
            type Config = $krate::Config;
            fn finish(self, interceptor: MockResponseInterceptor) -> $krate::Config {
                self.behavior_version($krate::config::BehaviorVersion::latest())
                    .region($krate::config::Region::new("eu-west-1"))
                    .credentials_provider($krate::config::Credentials::new(
                        "AKIDTEST", "secret", None, None, "unit-test",
                    ))
                    .http_client(create_mock_http_client())
                    .interceptor(interceptor)
                    .build()
            }
        }
    )*};
}

mockable!(aws_sdk_autoscaling, aws_sdk_ec2, aws_sdk_s3, aws_sdk_efs);

/// A service config whose calls are answered by `rules` (any order); a call no rule matches fails.
pub fn mocked_config<B: MockableConfig>(builder: B, rules: &[&Rule]) -> B::Config {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    builder.finish(interceptor)
}
