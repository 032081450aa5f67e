//! The command line (the contract in DESIGN.md): parsing and dispatch, nothing else. Each command
//! calls into the module that owns it; nothing imports this module but `main`.

mod release;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::boot;
use crate::config::{Config, ConfigPath};
use crate::context::{Context, ContextError};
use crate::error::Error;
use crate::identity::Identity;
use crate::output::{print_either, say, say_line, LogFormat};
use crate::status::Reported;
use crate::{efs, eip, health};

#[derive(Debug, Parser)]
#[command(
    name = "embark",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EMBARK_COMMIT"), ")"),
    about = "Turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet",
    long_about = "Turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet.\n\n\
        Configuration comes from the TOML file, then the group's embark:* tags, then environment and flags.\n\
        AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL and AWS_EC2_METADATA_SERVICE_ENDPOINT work as with the AWS CLI.\n\n\
        Exit codes: 0 success (including \"already done\"), 1 a step failed, 2 usage or configuration error."
)]
pub struct Cli {
    /// Configuration file [default: /etc/embark/embark.toml, which may be absent: every key has its
    /// default; a file named here or in EMBARK_CONFIG must exist]
    #[arg(
        long,
        global = true,
        env = "EMBARK_CONFIG",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,

    /// State directory (status file, locks); overrides `state_dir` in the file
    #[arg(
        long,
        global = true,
        env = "EMBARK_STATE_DIR",
        help_heading = "Global options"
    )]
    pub state_dir: Option<PathBuf>,

    /// Log lines on stderr for people, or JSON for log shippers
    #[arg(
        long,
        global = true,
        value_enum,
        env = "EMBARK_LOG_FORMAT",
        default_value = "human",
        help_heading = "Global options"
    )]
    pub log_format: LogFormat,

    /// More detail in the logs (-vv includes the AWS SDK's own)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet", help_heading = "Global options")]
    pub verbose: u8,

    /// Only warnings and errors
    #[arg(short, long, global = true, help_heading = "Global options")]
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
    /// Every configured step in order: identity, Elastic IP, EFS, release, logs, health
    #[command(after_help = "EXAMPLES:
  embark boot                      from user-data or embark-boot.service
  embark boot --plan               what every step would do; nothing changes
  embark boot --plan-step efs      run efs as a plan (a machine without an NFS client)
  embark status                    the report of the last boot")]
    Boot {
        /// Run every read-only look-up and print what each step would do; change nothing
        #[arg(long)]
        plan: bool,
        /// Run only this step as --plan (repeatable; e.g. efs on a machine without an NFS client)
        #[arg(long = "plan-step", value_enum)]
        plan_steps: Vec<boot::Step>,
    },
    /// Preflight: exit 0 only if a boot could succeed here; each failed check is one line
    #[command(after_help = "EXAMPLES:
  embark check                     on a live instance, before swapping the user-data
  embark check --image             the last step of a Packer build")]
    Check {
        /// Check an image being baked instead (Packer's last step): what a boot needs, no instance state
        #[arg(long)]
        image: bool,
    },
    /// This instance's identity from IMDSv2: id, region, zone, group, addresses, tags
    #[command(after_help = "EXAMPLES:
  embark identity
  embark identity --json | jq -r .auto_scaling_group")]
    Identity {
        /// Stable JSON output (its fields are documented with the commands)
        #[arg(long)]
        json: bool,
    },
    /// Elastic IP from the group's pool
    Eip {
        #[command(subcommand)]
        command: EipCommand,
    },
    /// EFS file systems (config [[efs]] or the group's embark:efs tag)
    Efs {
        #[command(subcommand)]
        command: EfsCommand,
    },
    /// Application releases in S3: push, pull, list, rollback, the deploy agent
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Leave the fleet: target groups, stop hooks, the terminating lifecycle action, a notification
    #[command(after_help = "EXAMPLES:
  embark drain --plan              what leaving would do; nothing changes
  embark drain                     ExecStop= of embark-boot.service; the deploy agent runs it itself
                                   on scale-in, a warm pool return or a Spot notice")]
    Drain {
        /// Print what each step would do; change nothing
        #[arg(long)]
        plan: bool,
    },
    /// Local health probe, then the lifecycle action (CONTINUE) and extra target groups
    #[command(after_help = "EXAMPLES:
  embark health                    after fixing what a failed boot reported")]
    Health,
    /// The last boot's report (and the deploy agent's last deploy): each step's outcome and duration
    #[command(after_help = "EXAMPLES:
  embark status
  embark status --json | jq '.steps[] | select(.outcome == \"failed\")'")]
    Status {
        /// Stable JSON output
        #[arg(long)]
        json: bool,
    },
    /// The least-privilege IAM policy (JSON) for the configured features
    #[command(after_help = "EXAMPLES:
  embark iam-policy --pool web --group web \\
      --release s3://my-deploy-bucket/app >instance-policy.json
  embark iam-policy --publisher \\
      --release s3://my-deploy-bucket/app >ci-policy.json")]
    IamPolicy(IamPolicyArgs),
    /// CloudWatch agent configuration: one log stream per file of the [[logs.files]] globs
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
    /// Configuration helpers
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Shell completions for bash, zsh, fish, elvish or powershell, on stdout
    #[command(after_help = "EXAMPLES:
  embark completions bash > /etc/bash_completion.d/embark
  embark completions zsh > \"${fpath[1]}/_embark\"
  embark completions fish > ~/.config/fish/completions/embark.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man pages (roff), generated from these definitions: embark(1) on stdout, or every page
    #[command(after_help = "EXAMPLES:
  embark man | man -l -                       read embark(1) now
  embark man --dir /usr/local/share/man/man1  install embark(1) and one page per command")]
    Man {
        /// Write embark.1 and one page per command (embark-boot.1, embark-release-pull.1, ...) here
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Rewrite the agent's configuration if the set of log files changed, then reload the agent
    #[command(after_help = "EXAMPLES:
  embark logs sync --plan          the streams it would add and remove; nothing changes
  embark logs sync")]
    Sync {
        /// Print the streams that would be added and removed; change nothing
        #[arg(long)]
        plan: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// A complete, commented embark.toml on stdout
    #[command(after_help = "EXAMPLES:
  embark config example > /etc/embark/embark.toml")]
    Example,
}

#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    /// An Elastic IP pool the group's embark:eip-pool tag names (repeatable)
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// An EFS file system the group's embark:efs tag names (repeatable)
    #[arg(long = "efs")]
    pub file_systems: Vec<String>,
    /// The release source the group's embark:release tag names
    #[arg(long)]
    pub release: Option<String>,
    /// Narrow the lifecycle actions to this Auto Scaling group
    #[arg(long)]
    pub group: Option<String>,
    /// An SNS topic the instances notify (repeatable; adds to [notify])
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// The policy for the CI role that runs `release push` / `rollback` instead of the instance's
    #[arg(long)]
    pub publisher: bool,
    /// The KMS key of an SSE-KMS release bucket, as a key ARN (repeatable)
    #[arg(long = "kms-key")]
    pub kms_keys: Vec<String>,
    /// With --publisher: the KMS key that signs releases (`release push --sign`), as a key ARN
    /// (repeatable); instances need no KMS permission to verify
    #[arg(long = "sign-key")]
    pub sign_keys: Vec<String>,
    /// The AWS partition of the account: aws, aws-cn (China) or aws-us-gov (GovCloud)
    #[arg(long, default_value = "aws", value_parser = ["aws", "aws-cn", "aws-us-gov"])]
    pub partition: String,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Publish DIR as a new release and make it current (the pointer is written last, conditionally)
    #[command(after_help = "EXAMPLES:
  embark release push ./build --to s3://my-deploy-bucket/app -m \"v2.3.1\"
  AWS_PROFILE=deploy embark release push . --to s3://my-deploy-bucket/app
  embark release push ./build --to s3://my-deploy-bucket/app --sign kms:alias/embark-releases")]
    Push {
        /// The tree to publish (`.git` and what `.embarkignore` at its root names are left out)
        dir: PathBuf,
        /// The release source, s3://bucket/prefix
        #[arg(long)]
        to: String,
        /// A message stored with the release (shown by `release list`)
        #[arg(long, short, default_value = "")]
        message: String,
        /// Sign the release: kms:alias/NAME or kms:<key ARN> (an ECC_NIST_P256 KMS key), or the path
        /// of an ed25519 private key (PKCS#8 PEM)
        #[arg(long, value_name = "KEY")]
        sign: Option<String>,
    },
    /// Fetch, verify and switch to the current release (nothing to do when already on it)
    #[command(after_help = "EXAMPLES:
  embark release pull --plan       what would be fetched and switched
  embark release pull")]
    Pull {
        /// Show what would be fetched and switched; change nothing
        #[arg(long)]
        plan: bool,
        /// Stable JSON output
        #[arg(long)]
        json: bool,
        /// Install the current release even though it failed here or in the fleet before
        #[arg(long)]
        retry_failed: bool,
    },
    /// The deploy agent: stage new releases, wait for the fleet barrier, switch (runs until SIGTERM)
    #[command(after_help = "EXAMPLES:
  systemctl enable --now embark-watch.service   how it runs on an instance
  embark release watch -v                       in the foreground, to see each poll")]
    Watch,
    /// Point the source's `current` at an earlier release (default: the one before); agents follow
    #[command(after_help = "EXAMPLES:
  embark release rollback --from s3://my-deploy-bucket/app
  embark release rollback --to 20261126T130455Z-3fa9c1 --from s3://my-deploy-bucket/app")]
    Rollback {
        /// The release to go back to (default: the release before the current one)
        #[arg(long)]
        to: Option<String>,
        /// The release source (default: the group's embark:release tag, else [release] source)
        #[arg(long)]
        from: Option<String>,
    },
    /// Check a release's signature and manifest against [release] trusted_keys, installing nothing
    #[command(after_help = "EXAMPLES:
  embark release verify --from s3://my-deploy-bucket/app
  embark release verify --from s3://my-deploy-bucket/app 20261126T130455Z-3fa9c1")]
    Verify {
        /// The release to check (default: the current one)
        id: Option<String>,
        /// The release source (default: the group's embark:release tag, else [release] source)
        #[arg(long)]
        from: Option<String>,
    },
    /// The fleet at a glance: the current release and what every instance serves, from the source
    #[command(after_help = "EXAMPLES:
  embark release status --from s3://my-deploy-bucket/app
  embark release push ./build --to s3://my-deploy-bucket/app && \\
    embark release status --from s3://my-deploy-bucket/app --wait --timeout 15m
  embark release status --json | jq -r '.summary.verdict'

EXIT STATUS (--wait): 0 every InService instance serves and validated the pointer's release; 1 it
failed (rolled back), the pointer moved on, or the timeout passed; 2 usage.")]
    Status {
        /// The release source (default: [release] source of the configuration)
        #[arg(long)]
        from: Option<String>,
        /// Stable JSON output (docs/cli.md has its schema)
        #[arg(long)]
        json: bool,
        /// Wait until the fleet converged on the pointer's release (exit 0) or it failed (exit 1)
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most (default 30m)
        #[arg(long, requires = "wait", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Releases in the source with time, message, files and size; marks current and local ones
    #[command(after_help = "EXAMPLES:
  embark release list --from s3://my-deploy-bucket/app
  embark release list --json | jq -r '.releases[0].release'")]
    List {
        /// The release source (default: the group's embark:release tag, else [release] source)
        #[arg(long)]
        from: Option<String>,
        /// Stable JSON output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EfsCommand {
    /// Mount every configured file system (nothing to do for those already mounted)
    #[command(after_help = "EXAMPLES:
  embark efs mount --plan          the address, how it was found, the exact mount(2) call
  embark efs mount")]
    Mount {
        /// Show, for each mount, the resolved address, how it was found and the exact mount call
        #[arg(long)]
        plan: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EipCommand {
    /// Bind a free address of the pool to this instance (nothing to do if one is bound already)
    #[command(after_help = "EXAMPLES:
  embark eip bind --plan           the candidates and the first draw; nothing changes
  embark eip bind --pool web")]
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
        /// Stable JSON output
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command. Nothing imports this module: it only dispatches.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let config_path = ConfigPath::new(cli.config.as_deref());
    let load = || Context::load(&config_path, cli.state_dir.as_ref());
    match &cli.command {
        Command::Identity { json } => {
            let (identity, _) = load()?.identify().await?;
            print_either(&identity, *json, Identity::human);
        }
        Command::Check { image } => {
            crate::check::run(&config_path, cli.state_dir.as_ref(), *image).await?
        }
        Command::IamPolicy(args) => iam_policy(&config_path, args)?,
        Command::Boot { plan, plan_steps } => {
            let options = boot::Options {
                plan: *plan,
                plan_steps: plan_steps.clone(),
            };
            match load() {
                Ok(ctx) => boot::run(&ctx, &options).await?,
                // A file that is there but does not parse: the instance is given back at once. (A
                // named file that is missing stays a plain usage error: nothing is touched.)
                Err(ContextError::Config(broken @ crate::config::ConfigError::Invalid { .. })) => {
                    let mut defaults = Config::default();
                    if let Some(dir) = &cli.state_dir {
                        defaults.state_dir = dir.clone();
                    }
                    let source = crate::config::Source::Defaults(config_path.path.clone());
                    let ctx = Context::with_config(defaults, source)?;
                    boot::run_unconfigured(&ctx, &options, broken.into()).await?
                }
                Err(err) => return Err(err.into()),
            }
        }
        Command::Health => {
            let ctx = load()?;
            let instance = ctx.instance().await?;
            let done = health::run_alone(&instance, &ctx.http_client()?).await?;
            say_line(&done.detail());
        }
        Command::Status { json } => {
            // The report is read even when the configuration does not load (a boot that failed on
            // it wrote one): only the state dir is needed.
            let mut config = match Config::load(&config_path) {
                Ok((config, _)) => config,
                Err(err) => {
                    tracing::warn!("{err}; reading the status with the default state dir");
                    Config::default()
                }
            };
            if let Some(dir) = &cli.state_dir {
                config.state_dir = dir.clone();
            }
            crate::status::show(&config.state_dir, *json).map_err(Error::Failed)?;
        }
        Command::Efs {
            command: EfsCommand::Mount { plan },
        } => efs_mount(&load()?, *plan).await?,
        Command::Eip { command } => eip_command(&load()?, command).await?,
        Command::Release { command } => release_command(&load()?, command).await?,
        Command::Drain { plan } => drain_command(&load()?, *plan).await?,
        Command::Logs {
            command: LogsCommand::Sync { plan },
        } => {
            let instance = load()?.instance().await?;
            let names = crate::logs::Names::of(&instance);
            let done = crate::logs::step(&instance.config.logs, &names, *plan).await?;
            say_line(&done.detail());
        }
        Command::Config {
            command: ConfigCommand::Example,
        } => say(EXAMPLE_CONFIG),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "embark", &mut out);
            say(&String::from_utf8_lossy(&out));
        }
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            // As `--dir` renders it: no `help` pseudo-command, so every page it names exists.
            clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                .render(&mut out)
                .map_err(|e| Error::Setup(format!("cannot render the man page: {e}")))?;
            say(&String::from_utf8_lossy(&out));
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), dir).map_err(|e| {
                Error::Usage(format!(
                    "cannot write the man pages to {}: {e}",
                    dir.display()
                ))
            })?;
            say_line(&format!("man pages written to {}", dir.display()));
        }
    }
    Ok(())
}

/// `efs mount [--plan]`.
async fn efs_mount(ctx: &Context, plan: bool) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    let paths = efs::Paths::system();
    match efs::step(&instance, &ctx.resolver, &paths, plan).await? {
        efs::StepOutcome::NotConfigured => say_line(
            "no file systems configured ([[efs]] or the group's embark:efs tag): nothing to do",
        ),
        done => say_line(&done.detail()),
    }
    Ok(())
}

/// `eip bind` / `eip status`.
async fn eip_command(ctx: &Context, command: &EipCommand) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    match command {
        EipCommand::Bind { pool, plan } => {
            match eip::step(&instance, pool.as_deref(), *plan).await? {
                eip::StepOutcome::NotConfigured => return Err(eip::EipError::NoPool.into()),
                done => say_line(&done.detail()),
            }
        }
        EipCommand::Status { pool, json } => {
            let status = eip::status(&instance, pool.as_deref()).await?;
            print_either(&status, *json, eip::Status::human);
        }
    }
    Ok(())
}

/// `drain [--plan]`: why IMDS says the instance is leaving, or "by hand".
async fn drain_command(ctx: &Context, plan: bool) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    let http = ctx.http_client()?;
    let trigger = crate::drain::pending_trigger(&ctx.imds(), instance.config.drain.on_spot)
        .await?
        .unwrap_or(crate::drain::Trigger::Command);
    if matches!(trigger, crate::drain::Trigger::Warmed(_)) && !plan {
        give_back_address(&instance).await;
    }
    drain_now(&instance, &http, plan, trigger).await
}

/// The complete, commented configuration `embark config example` prints (tested to parse).
pub const EXAMPLE_CONFIG: &str = include_str!("embark.example.toml");

async fn release_command(ctx: &Context, command: &ReleaseCommand) -> Result<(), Error> {
    use self::release as commands;
    match command {
        ReleaseCommand::Push {
            dir,
            to,
            message,
            sign,
        } => commands::push_release(ctx, dir, to, message, sign.as_deref()).await,
        ReleaseCommand::Pull {
            plan,
            json,
            retry_failed,
        } => commands::pull_release(ctx, *plan, *json, *retry_failed).await,
        ReleaseCommand::Watch => commands::run_agent(ctx, agent_after_poll(ctx)).await,
        ReleaseCommand::Rollback { to, from } => {
            commands::rollback_release(ctx, to.as_deref(), from.as_deref()).await
        }
        ReleaseCommand::Verify { id, from } => {
            commands::verify_release(ctx, id.as_deref(), from.as_deref()).await
        }
        ReleaseCommand::List { from, json } => {
            commands::list_releases(ctx, from.as_deref(), *json).await
        }
        ReleaseCommand::Status {
            from,
            json,
            wait,
            timeout,
        } => commands::fleet_status(ctx, from.as_deref(), *json, *wait, *timeout).await,
    }
}

/// One drain, reported on stdout; a drain with a failed step is exit 1 (after doing every other step).
async fn drain_now(
    instance: &crate::context::Instance,
    http: &reqwest::Client,
    plan: bool,
    trigger: crate::drain::Trigger,
) -> Result<(), Error> {
    let drain = crate::drain::Drain {
        instance,
        http,
        plan,
        trigger,
    };
    match crate::drain::run(&drain).await.map_err(Error::Failed)? {
        crate::drain::Drained::Already => {
            say_line("already drained: an earlier drain of this instance finished; nothing to do")
        }
        crate::drain::Drained::Done(report) => {
            say(&report.human());
            if let Some(error) = report.error {
                return Err(Error::Failed(format!(
                    "the drain finished with errors: {error}"
                )));
            }
        }
    }
    Ok(())
}

/// After every poll and every switch the deploy agent keeps the log streams in step with the files,
/// and drains the instance when IMDS says it is leaving (scale-in, warm pool, Spot notice).
fn agent_after_poll(
    ctx: &Context,
) -> impl FnOnce(&crate::context::Instance) -> Option<crate::release::agent::AfterPoll> + '_ {
    move |instance| {
        let instance = std::sync::Arc::new(instance.clone());
        let imds = std::sync::Arc::new(ctx.imds());
        let http = ctx.http_client().ok()?;
        Some(Box::new(move || {
            let (instance, imds, http) = (instance.clone(), imds.clone(), http.clone());
            Box::pin(async move {
                sync_logs(&instance).await;
                let on_spot = instance.config.drain.on_spot;
                let state_dir = &instance.config.state_dir;
                match crate::drain::pending_trigger(&imds, on_spot).await {
                    Ok(Some(trigger))
                        if !crate::drain::worth_draining(&trigger, state_dir, instance.id()) => {}
                    Ok(Some(trigger)) => {
                        if matches!(trigger, crate::drain::Trigger::Warmed(_)) {
                            give_back_address(&instance).await;
                        }
                        let drain = crate::drain::Drain {
                            instance: &instance,
                            http: &http,
                            plan: false,
                            trigger,
                        };
                        match crate::drain::run(&drain).await {
                            Ok(crate::drain::Drained::Already) => {}
                            Ok(crate::drain::Drained::Done(report)) => match report.error {
                                Some(error) => tracing::error!("drained with errors: {error}"),
                                None => tracing::info!("drained: this instance left the fleet"),
                            },
                            Err(err) => tracing::error!("the drain failed: {err}"),
                        }
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!("cannot read the lifecycle state from IMDS: {err}"),
                }
            })
        }))
    }
}

/// Going into a warm pool: the Elastic IP goes back to the pool (a stopped instance must not hold one;
/// the boot out of the pool binds one again).
async fn give_back_address(instance: &crate::context::Instance) {
    match eip::give_back(instance).await {
        Ok(Some(address)) => tracing::info!(
            "gave {} ({}) back to the pool: the instance is going into its warm pool",
            address.public_ip,
            address.allocation_id
        ),
        Ok(None) => {}
        Err(err) => tracing::error!("cannot give the Elastic IP back to the pool: {err}"),
    }
}

async fn sync_logs(instance: &crate::context::Instance) {
    let names = crate::logs::Names::of(instance);
    if crate::logs::applicable(&instance.config.logs, names.role.as_deref()).is_empty() {
        return;
    }
    match crate::logs::step(&instance.config.logs, &names, false).await {
        Ok(done @ crate::logs::StepOutcome::Changed { .. }) => {
            tracing::info!("logs: {}", done.detail())
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("logs: {err}"),
    }
}

fn iam_policy(config_path: &ConfigPath, args: &IamPolicyArgs) -> Result<(), Error> {
    let (config, _) = Config::load(config_path)?;
    let mut features = crate::iam::Features::from_config(&config).map_err(Error::Usage)?;
    features.pools.extend(args.pools.iter().cloned());
    features
        .file_systems
        .extend(args.file_systems.iter().map(|fs| (fs.clone(), false)));
    if let Some(url) = &args.release {
        features.release =
            Some(crate::release::format::SourceUrl::parse(url).map_err(Error::Usage)?);
    }
    features.group = args.group.clone();
    features.topics.extend(args.topics.iter().cloned());
    features.topics.sort();
    features.topics.dedup();
    features.partition = crate::aws::Partition::of_name(&args.partition).name;
    for key in &args.kms_keys {
        crate::iam::check_kms_key("--kms-key", key).map_err(Error::Usage)?;
    }
    for key in &args.sign_keys {
        crate::iam::check_kms_key("--sign-key", key).map_err(Error::Usage)?;
    }
    if !args.sign_keys.is_empty() && !args.publisher {
        return Err(Error::Usage(
            "--sign-key is for the publisher's policy (--publisher): instances verify signatures with public keys and need no KMS permission".into(),
        ));
    }
    features.kms_keys = args.kms_keys.clone();
    let policy = if args.publisher {
        let source = features.release.as_ref().ok_or_else(|| {
            Error::Usage(
                "--publisher needs the release source: --release s3://bucket/prefix or [release] source".into(),
            )
        })?;
        crate::iam::publisher_policy(
            source,
            features.partition,
            &features.kms_keys,
            &args.sign_keys,
        )
    } else {
        crate::iam::instance_policy(&features)
    };
    print_either(&policy, true, |_| String::new());
    Ok(())
}
