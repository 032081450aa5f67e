//! The command line (the contract in DESIGN.md) and the context every command starts from.

use std::path::PathBuf;

use aws_smithy_runtime_api::client::http::SharedHttpClient;
use clap::{Parser, Subcommand};

use crate::aws::Aws;
use crate::config::{self, Config, Source};
use crate::error::Error;
use crate::identity::{self, Identity, Imds, TagsSource};
use crate::net::{self, Resolver};
use crate::report::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "embark",
    version,
    about = "Turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet",
    long_about = "Turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet.\n\n\
        Configuration comes from the TOML file, then the group's embark:* tags, then environment and flags.\n\
        AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL and AWS_EC2_METADATA_SERVICE_ENDPOINT work as with the AWS CLI.\n\n\
        Exit codes: 0 success (including \"already done\"), 1 a step failed, 2 usage or configuration error."
)]
pub struct Cli {
    /// Configuration file (absent file: every key has its default)
    #[arg(long, global = true, env = "EMBARK_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// State directory (status file, locks); overrides `state_dir` in the file
    #[arg(long, global = true, env = "EMBARK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Log lines on stderr for people, or JSON for log shippers
    #[arg(
        long,
        global = true,
        value_enum,
        env = "EMBARK_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: LogFormat,

    /// More detail in the logs (-vv includes the AWS SDK's own)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// This instance's identity from IMDSv2: id, region, zone, group, addresses, tags
    Identity {
        /// Stable JSON output (documented in docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// Preflight: exit 0 only if a boot could succeed here; each failed check is one line
    Check,
}

pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Identity { json } => {
            let ctx = Context::load(&cli)?;
            let (identity, _) = ctx.identify().await?;
            if json {
                let text = serde_json::to_string_pretty(&identity)
                    .map_err(|err| Error::Setup(format!("cannot encode the identity: {err}")))?;
                println!("{text}");
            } else {
                print!("{}", identity.human());
            }
            Ok(())
        }
        Command::Check => crate::check::run(&cli).await,
    }
}

/// What every command starts from: the configuration file and the network clients.
pub struct Context {
    pub config: Config,
    pub source: Source,
    pub resolver: Resolver,
    pub http: SharedHttpClient,
}

impl Context {
    pub fn load(cli: &Cli) -> Result<Context, Error> {
        let (mut config, source) = Config::load(&cli.config)?;
        if let Some(dir) = &cli.state_dir {
            config.state_dir = dir.clone();
        }
        Context::with_config(config, source)
    }

    pub fn with_config(config: Config, source: Source) -> Result<Context, Error> {
        let resolver = Resolver::from_system().map_err(Error::Setup)?;
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

    /// The identity, and the AWS configuration for the instance's region.
    pub async fn identify(&self) -> Result<(Identity, Aws), Error> {
        let imds = self.imds();
        let meta = identity::metadata(&imds).await?;
        let aws = Aws::load(self.http.clone(), &meta.region).await;
        let (tags, source) = match imds.tags().await? {
            Some(tags) => (tags, TagsSource::Imds),
            None => {
                tracing::debug!(
                    "instance metadata tags are off; reading tags with ec2:DescribeTags"
                );
                let tags = identity::tags_from_ec2(&aws.ec2(), &meta.instance_id).await?;
                (tags, TagsSource::DescribeTags)
            }
        };
        Ok((Identity::from_parts(meta, tags, source), aws))
    }
}
