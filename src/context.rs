//! What every command starts from: the configuration, the network clients, and — once IMDS has been
//! asked — the instance with its group's tags applied. Steps take what they need from here; nothing
//! here knows about steps.

use std::path::PathBuf;

use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::aws::Aws;
use crate::config::{Config, ConfigError, ConfigPath, Source};
use crate::identity::{self, Identity, IdentityError, Imds};
use crate::net::{self, Resolver};

/// Why a command could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Bad configuration (file or tags): exit 2, nothing changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// This machine cannot run embark at all (no resolver, no HTTP client).
    #[error("{0}")]
    Setup(String),
}

/// The configuration file and the network clients.
pub struct Context {
    pub config: Config,
    pub source: Source,
    pub resolver: Resolver,
    pub http: SharedHttpClient,
}

/// This instance: its identity, the AWS configuration for its region, and the configuration with its
/// group's tags applied.
#[derive(Clone)]
pub struct Instance {
    pub identity: Identity,
    pub aws: Aws,
    pub config: Config,
}

impl Instance {
    pub fn id(&self) -> &str {
        &self.identity.metadata.instance_id
    }

    pub fn group(&self) -> Option<&str> {
        self.identity.auto_scaling_group.as_deref()
    }

    pub fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.aws.config)
    }
}

impl Context {
    /// The file (`state_dir` overriding the file's key), and the network clients.
    pub fn load(path: &ConfigPath, state_dir: Option<&PathBuf>) -> Result<Context, ContextError> {
        let (mut config, source) = Config::load(path)?;
        if let Some(dir) = state_dir {
            config.state_dir = dir.clone();
        }
        Context::with_config(config, source)
    }

    pub fn with_config(config: Config, source: Source) -> Result<Context, ContextError> {
        let resolver = Resolver::from_system().map_err(ContextError::Setup)?;
        let http = net::aws_http_client(&resolver);
        Ok(Context {
            config,
            source,
            resolver,
            http,
        })
    }

    pub fn imds(&self) -> Imds {
        Imds::new(self.http.clone(), self.config.imds_deadline)
    }

    /// A plain HTTP client (health probes, HTTP hooks) on the same resolver.
    pub fn http_client(&self) -> Result<reqwest::Client, ContextError> {
        net::http_client(&self.resolver).map_err(ContextError::Setup)
    }

    /// The identity, and the AWS configuration for the instance's region.
    pub async fn identify(&self) -> Result<(Identity, Aws), ContextError> {
        Ok(identity::identify(&self.imds(), self.http.clone()).await?)
    }

    /// The identity plus the configuration with the group's tags on top (bad tags: exit 2).
    pub async fn instance(&self) -> Result<Instance, ContextError> {
        let (identity, aws) = self.identify().await?;
        Ok(self.instance_of(identity, aws)?)
    }

    /// [`Context::instance`] for a command that can also run without one (a workstation, CI): IMDS
    /// is asked for `deadline` at most, not the boot's `imds_deadline`.
    pub async fn instance_within(
        &self,
        deadline: std::time::Duration,
    ) -> Result<Instance, ContextError> {
        let imds = Imds::new(self.http.clone(), deadline.min(self.config.imds_deadline));
        let (identity, aws) = identity::identify(&imds, self.http.clone()).await?;
        Ok(self.instance_of(identity, aws)?)
    }

    /// The configuration with `identity`'s group tags applied.
    pub fn instance_of(&self, identity: Identity, aws: Aws) -> Result<Instance, ConfigError> {
        let mut config = self.config.clone();
        config.apply_tags(&identity.tags)?;
        Ok(Instance {
            identity,
            aws,
            config,
        })
    }
}
