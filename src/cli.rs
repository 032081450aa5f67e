//! The command line (the contract in DESIGN.md) and the context every command starts from.

use std::path::PathBuf;

use aws_smithy_runtime_api::client::http::SharedHttpClient;
use clap::{Parser, Subcommand};

use crate::aws::Aws;
use crate::config::{self, Config, Source};
use crate::efs;
use crate::eip::{self, Outcome};
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
    Check {
        /// Check an image being baked instead (Packer's last step): what a boot needs, no instance state
        #[arg(long)]
        image: bool,
    },
    /// The least-privilege IAM policy (JSON) for the configured features (docs/iam.md)
    IamPolicy {
        /// An Elastic IP pool the group's embark:eip-pool tag names (repeatable)
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// An EFS file system the group's embark:efs tag names (repeatable)
        #[arg(long = "efs")]
        file_systems: Vec<String>,
        /// The release source the group's embark:release tag names
        #[arg(long)]
        release: Option<String>,
        /// Narrow the lifecycle actions to this Auto Scaling group
        #[arg(long)]
        group: Option<String>,
        /// The policy for the CI role that runs `release push` / `rollback` instead of the instance's
        #[arg(long)]
        publisher: bool,
    },
    /// Every configured step in order: identity, EIP, EFS, release, health (docs/cli.md)
    Boot {
        /// Run every read-only look-up and print what each step would do; change nothing
        #[arg(long)]
        plan: bool,
        /// Run only this step as --plan (repeatable; e.g. efs on a machine without an NFS client)
        #[arg(long = "plan-step", value_parser = ["eip", "efs", "release", "health"])]
        plan_steps: Vec<String>,
    },
    /// Local health probe, then the lifecycle action (CONTINUE) and extra target groups
    Health,
    /// The last boot's report: each step's outcome, duration and detail
    Status {
        /// Stable JSON output (documented in docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// EFS file systems (config [[efs]] or the group's embark:efs tag)
    Efs {
        #[command(subcommand)]
        command: EfsCommand,
    },
    /// Elastic IP from the group's pool
    Eip {
        #[command(subcommand)]
        command: EipCommand,
    },
    /// Application releases in S3 (docs/release-format.md)
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Publish DIR as a new release and make it current (the pointer is written last, conditionally)
    Push {
        /// The tree to publish (`.git` and what `.embarkignore` at its root names are left out)
        dir: PathBuf,
        /// The release source, s3://bucket/prefix
        #[arg(long)]
        to: String,
        /// A message stored with the release (shown by `release list`)
        #[arg(long, short, default_value = "")]
        message: String,
    },
    /// Fetch, verify and switch to the current release (nothing to do when already on it)
    Pull {
        /// Show what would be fetched and switched; change nothing
        #[arg(long)]
        plan: bool,
        /// Stable JSON output (documented in docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// The deploy agent: stage new releases, wait for the fleet barrier, switch (runs until SIGTERM)
    Watch,
    /// Point the source's `current` at an earlier release (default: the one before); agents follow
    Rollback {
        /// The release to go back to (default: the release before the current one)
        #[arg(long)]
        to: Option<String>,
        /// The release source (default: the group's embark:release tag, else [release] source)
        #[arg(long)]
        from: Option<String>,
    },
    /// Releases in the source with time, message, files and size; marks current and local ones
    List {
        /// The release source (default: the group's embark:release tag, else [release] source)
        #[arg(long)]
        from: Option<String>,
        /// Stable JSON output (documented in docs/cli.md)
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EfsCommand {
    /// Mount every configured file system (nothing to do for those already mounted)
    Mount {
        /// Show, for each mount, the resolved address, how it was found and the exact mount call
        #[arg(long)]
        plan: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EipCommand {
    /// Bind a free address of the pool to this instance (nothing to do if one is bound already)
    Bind {
        /// Pool name (default: the group's embark:eip-pool tag, else [eip] pool)
        #[arg(long)]
        pool: Option<String>,
        /// Show the candidates and the choice; change nothing
        #[arg(long)]
        plan: bool,
    },
    /// The pool: total, free, the address bound here, reserve
    Status {
        /// Pool name (default: the group's embark:eip-pool tag, else [eip] pool)
        #[arg(long)]
        pool: Option<String>,
        /// Stable JSON output (documented in docs/cli.md)
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Identity { json } => {
            let ctx = Context::load(&cli)?;
            let (identity, _) = ctx.identify().await?;
            print_either(&identity, json, Identity::human)
        }
        Command::Check { image } => crate::check::run(&cli, image).await,
        Command::IamPolicy {
            ref pools,
            ref file_systems,
            ref release,
            ref group,
            publisher,
        } => {
            let (config, _) = Config::load(&cli.config)?;
            let mut features = crate::iam::Features::from_config(&config).map_err(Error::Usage)?;
            features.pools.extend(pools.iter().cloned());
            features
                .file_systems
                .extend(file_systems.iter().map(|fs| (fs.clone(), false)));
            if let Some(url) = release {
                features.release =
                    Some(crate::release::format::SourceUrl::parse(url).map_err(Error::Usage)?);
            }
            features.group = group.clone();
            let policy = if publisher {
                let source = features.release.as_ref().ok_or_else(|| {
                    Error::Usage(
                        "--publisher needs the release source: --release s3://bucket/prefix or [release] source".into(),
                    )
                })?;
                crate::iam::publisher_policy(source)
            } else {
                crate::iam::instance_policy(&features)
            };
            print_either(&policy, true, |_| String::new())
        }
        Command::Boot {
            plan,
            ref plan_steps,
        } => {
            let ctx = Context::load(&cli)?;
            let options = crate::boot::Options {
                plan,
                plan_steps: plan_steps.clone(),
            };
            crate::boot::run(&ctx, &options).await
        }
        Command::Health => {
            let ctx = Context::load(&cli)?;
            crate::boot::health_only(&ctx).await
        }
        Command::Status { json } => {
            let (mut config, _) = Config::load(&cli.config)?;
            if let Some(dir) = &cli.state_dir {
                config.state_dir = dir.clone();
            }
            crate::status::show(&config.state_dir, json).map_err(Error::Failed)?;
            Ok(())
        }
        Command::Efs {
            command: EfsCommand::Mount { plan },
        } => {
            let ctx = Context::load(&cli)?;
            let instance = ctx.instance().await?;
            print!("{}", efs_mount(&ctx, &instance, plan).await?);
            Ok(())
        }
        Command::Eip { ref command } => {
            let ctx = Context::load(&cli)?;
            let instance = ctx.instance().await?;
            match command {
                EipCommand::Bind { pool, plan } => {
                    print!("{}", eip_bind(&instance, pool.as_deref(), *plan).await?);
                    Ok(())
                }
                EipCommand::Status { pool, json } => {
                    eip_status(&instance, pool.as_deref(), *json).await
                }
            }
        }
        Command::Release { ref command } => {
            let ctx = Context::load(&cli)?;
            crate::release::cli::run(&ctx, command).await
        }
    }
}

/// Bind (or plan) and say what happened, in one text for stdout or the boot report.
pub async fn eip_bind(
    instance: &Instance,
    pool: Option<&str>,
    plan: bool,
) -> Result<String, Error> {
    let settings = eip_settings(&instance.config, pool)?;
    let place = instance.place();
    eip::check_region(&instance.aws.region(), &instance.identity.metadata.region)?;
    let ec2 = instance.aws.ec2();
    if plan {
        let plan = eip::plan(&ec2, &place, &settings).await?;
        return Ok(plan.human(&place, &settings));
    }
    let text = match eip::bind(&ec2, &place, &settings).await? {
        Outcome::Bound { address, free } => {
            warn_reserve(&settings, free);
            format!(
                "bound {} ({}) from pool '{}' to {}; {free} of the pool's addresses free\n",
                address.public_ip, address.allocation_id, settings.pool, place.instance_id
            )
        }
        Outcome::AlreadyBound { address, free } => {
            warn_reserve(&settings, free);
            format!(
                "already bound: {} ({}) from pool '{}'; nothing to do\n",
                address.public_ip, address.allocation_id, settings.pool
            )
        }
        Outcome::NoneFree { total, waited } => {
            tracing::warn!(
                pool = %settings.pool,
                "no free address in pool '{}' ({total} addresses, waited {}); continuing without one because it is not required",
                settings.pool,
                humantime::format_duration(waited)
            );
            format!(
                "no free address in pool '{}'; continuing without one (not required)\n",
                settings.pool
            )
        }
    };
    Ok(text)
}

/// Where the step reads the mount table and writes fstab lines; overridable for tests and packaging.
pub fn mountinfo_path() -> PathBuf {
    std::env::var_os("EMBARK_MOUNTINFO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/mountinfo"))
}

pub fn fstab_path() -> PathBuf {
    std::env::var_os("EMBARK_FSTAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/fstab"))
}

/// Mount (or plan) every configured file system; the text says what happened to each.
pub async fn efs_mount(ctx: &Context, instance: &Instance, plan: bool) -> Result<String, Error> {
    let mut out = String::new();
    macro_rules! say {
        ($($arg:tt)*) => {{
            out.push_str(&format!($($arg)*));
            out.push('\n');
        }};
    }
    let mounts = &instance.config.efs;
    if mounts.is_empty() {
        say!("no file systems configured ([[efs]] or the group's embark:efs tag): nothing to do");
        return Ok(out);
    }
    let place = efs::Place {
        region: instance.identity.metadata.region.clone(),
        zone_id: instance.identity.metadata.availability_zone_id.clone(),
        use_dns: !Aws::custom_endpoint("efs"),
    };
    let client = instance.aws.efs();
    let mountinfo = std::fs::read_to_string(mountinfo_path()).unwrap_or_default();
    let kernel_ok = efs::this_kernel_has_nfs4();
    for mount in mounts {
        let fs = &mount.file_system;
        let target = mount.mount_point.display();
        if efs::mounted(&mountinfo, &mount.mount_point, &mount.path) {
            say!(
                "{fs}:{} on {target}: already mounted; nothing to do",
                mount.path
            );
            continue;
        }
        let helper_opts = efs::efs_utils_options(mount);
        if !helper_opts.is_empty() {
            if plan {
                say!(
                    "{fs}:{} on {target}: would run mount -t efs -o {} (amazon-efs-utils)",
                    mount.path,
                    helper_opts.join(",")
                );
            } else {
                efs::mount_with_efs_utils(mount).await?;
                say!(
                    "{fs}:{} mounted on {target} with amazon-efs-utils",
                    mount.path
                );
            }
            continue;
        }
        if !kernel_ok && !plan {
            return Err(efs::EfsError::NoNfs4.into());
        }
        let (ip, found) = efs::resolve(
            &client,
            &ctx.resolver,
            &place,
            fs,
            instance.config.efs_deadline,
        )
        .await?;
        let call = efs::MountCall::new(mount, ip);
        if plan {
            say!("{fs}:{} on {target}", mount.path);
            say!("  address: {ip} (found by {found})");
            say!("  call:    {call}");
            if mount.fstab {
                say!("  fstab:   {}", efs::fstab_line(&call));
            }
            if !kernel_ok {
                say!(
                    "  note:    this kernel has no NFSv4 client; the mount itself would fail here"
                );
            }
            continue;
        }
        efs::probe(fs, ip).await?;
        efs::create_mount_point(&mount.mount_point)?;
        efs::mount(&call)?;
        say!(
            "{fs}:{} mounted on {target} from {ip} ({found})",
            mount.path
        );
        if mount.fstab && efs::write_fstab(&fstab_path(), &efs::fstab_line(&call))? {
            say!("  fstab line written to {}", fstab_path().display());
        }
    }
    Ok(out)
}

fn warn_reserve(settings: &eip::Settings, free: usize) {
    if (free as u64) < u64::from(settings.reserve) {
        tracing::warn!(
            pool = %settings.pool,
            "pool '{}' has {free} free address(es) left, below its reserve of {}: add addresses tagged embark:pool={}",
            settings.pool,
            settings.reserve,
            settings.pool
        );
    }
}

async fn eip_status(instance: &Instance, pool: Option<&str>, json: bool) -> Result<(), Error> {
    let settings = eip_settings(&instance.config, pool)?;
    eip::check_region(&instance.aws.region(), &instance.identity.metadata.region)?;
    let pool = eip::describe_pool(&instance.aws.ec2(), &settings.pool).await?;
    let status = eip::Status::new(pool, &instance.place(), settings.reserve);
    print_either(&status, json, eip::Status::human)
}

/// The stable JSON form behind `--json`, the human one otherwise.
pub fn print_either<T: serde::Serialize>(
    value: &T,
    json: bool,
    human: impl FnOnce(&T) -> String,
) -> Result<(), Error> {
    if json {
        let text = serde_json::to_string_pretty(value)
            .map_err(|err| Error::Setup(format!("cannot encode the JSON output: {err}")))?;
        println!("{text}");
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

/// The pool from `--pool`, else the group's tag (already applied to the config), else the file.
pub fn eip_settings(config: &Config, flag: Option<&str>) -> Result<eip::Settings, Error> {
    let pool = flag
        .map(str::to_string)
        .or_else(|| config.eip.pool.clone())
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            Error::Usage(
                "no Elastic IP pool configured: set the group's embark:eip-pool tag, [eip] pool in the config file, or --pool".to_string(),
            )
        })?;
    Ok(eip::Settings {
        pool,
        required: config.eip.required,
        wait: config.eip.wait,
        reserve: config.eip.reserve,
    })
}

/// This instance: its identity, the AWS configuration for its region, and the configuration with its
/// group's tags applied.
pub struct Instance {
    pub identity: Identity,
    pub aws: Aws,
    pub config: Config,
}

impl Instance {
    pub fn place(&self) -> eip::Place<'_> {
        eip::Place {
            instance_id: &self.identity.metadata.instance_id,
            az_name: &self.identity.metadata.availability_zone,
            az_id: self.identity.metadata.availability_zone_id.as_deref(),
        }
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

    /// The identity plus the configuration with the group's tags on top (bad tags: exit 2).
    pub async fn instance(&self) -> Result<Instance, Error> {
        let (identity, aws) = self.identify().await?;
        let mut config = self.config.clone();
        config.apply_tags(&identity.tags)?;
        Ok(Instance {
            identity,
            aws,
            config,
        })
    }
}
