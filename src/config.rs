//! Configuration: the TOML file, then the group's `embark:*` tags, then environment and flags.
//!
//! Every key has a default, so an absent file means "all defaults". Anything the file or a tag says that
//! embark does not understand is a usage error (exit 2) raised before any step changes anything, naming
//! the file, the line and the key, with the nearest valid key for a typo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/embark/embark.toml";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the status file, locks and run-once markers live.
    pub state_dir: PathBuf,
    /// The whole boot.
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// How long to keep retrying IMDS while the network comes up.
    #[serde(with = "duration")]
    pub imds_deadline: Duration,
    /// How long to wait for EFS mount targets (created by the same stack, often still coming up).
    #[serde(with = "duration")]
    pub efs_deadline: Duration,
    /// Free-form role (the group's `embark:role` tag wins), passed to hooks.
    pub role: Option<String>,
    pub eip: EipConfig,
    pub efs: Vec<EfsMount>,
    pub release: ReleaseConfig,
    pub watch: WatchConfig,
    pub health: HealthConfig,
    pub notify: NotifyConfig,
    pub boot: BootConfig,
    pub logs: LogsConfig,
    pub drain: DrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/embark"),
            deadline: Duration::from_secs(600),
            imds_deadline: Duration::from_secs(120),
            efs_deadline: Duration::from_secs(300),
            role: None,
            eip: EipConfig::default(),
            efs: Vec::new(),
            release: ReleaseConfig::default(),
            watch: WatchConfig::default(),
            health: HealthConfig::default(),
            notify: NotifyConfig::default(),
            boot: BootConfig::default(),
            logs: LogsConfig::default(),
            drain: DrainConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EipConfig {
    /// Bind from addresses tagged `embark:pool=<pool>`; none → no EIP step.
    pub pool: Option<String>,
    /// No free address: fail the boot (true) or warn and continue (false).
    pub required: bool,
    /// How long to wait for an address to free up.
    #[serde(with = "duration")]
    pub wait: Duration,
    /// Warn when fewer than this many addresses stay free.
    pub reserve: u32,
}

impl Default for EipConfig {
    fn default() -> Self {
        EipConfig {
            pool: None,
            required: true,
            wait: Duration::ZERO,
            reserve: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EfsMount {
    pub file_system: String,
    #[serde(default = "default_efs_path")]
    pub path: String,
    pub mount_point: PathBuf,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub fstab: bool,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub iam: bool,
    #[serde(default)]
    pub access_point: Option<String>,
    /// Mount through another zone's mount target when this zone has none (cross-zone NFS traffic
    /// costs money and survives this zone's failure less well: an explicit choice).
    #[serde(default)]
    pub cross_zone: bool,
}

fn default_efs_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseFormat {
    Embark,
    PullDeploy,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {
    /// `s3://bucket/prefix`; the group's `embark:release` tag wins. None → no release step.
    pub source: Option<String>,
    /// The bucket's region, when it is not the instance's (else learnt from S3's redirect).
    pub region: Option<String>,
    pub format: ReleaseFormat,
    /// `releases/` and the link live here.
    pub root: PathBuf,
    pub link: String,
    pub keep: u32,
    pub owner: Option<String>,
    pub hooks: Vec<Hook>,
    /// Public keys (SPKI PEM, inline or a path) whose signatures are accepted (docs/signing.md).
    pub trusted_keys: Vec<String>,
    /// Refuse releases that are not signed by a trusted key.
    pub require_signature: bool,
    /// Directories that live outside the releases and survive every deploy (uploads, `storage/`):
    /// each release's copy is replaced by a link to `<shared_root>/<path>` before it goes live.
    pub shared_dirs: Vec<String>,
    /// Files that do the same (`.env`).
    pub shared_files: Vec<String>,
    /// Where shared paths live; default `<root>/shared`.
    pub shared_root: Option<PathBuf>,
    /// How long a run-once hook's leader holds its lease without renewing it (it renews every sixth
    /// of it): when it dies, another instance runs the hook after this.
    #[serde(with = "duration")]
    pub once_lease: Duration,
}

impl ReleaseConfig {
    /// `shared_root`, or `<root>/shared`.
    pub fn shared_root(&self) -> PathBuf {
        self.shared_root
            .clone()
            .unwrap_or_else(|| self.root.join("shared"))
    }
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            source: None,
            region: None,
            format: ReleaseFormat::Embark,
            root: PathBuf::from("/var/www/app"),
            link: "current".to_string(),
            keep: 3,
            owner: None,
            hooks: Vec::new(),
            trusted_keys: Vec::new(),
            require_signature: false,
            shared_dirs: Vec::new(),
            shared_files: Vec::new(),
            shared_root: None,
            once_lease: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// argv, run without a shell.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// An URL to GET (the opcache reset pattern).
    #[serde(default)]
    pub http_get: Option<String>,
    /// Only on these roles; empty → every role.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default = "default_hook_timeout", with = "duration")]
    pub timeout: Duration,
    /// Run the command as this user.
    #[serde(default)]
    pub user: Option<String>,
    /// When a release hook runs: `prepare` (in the staged tree, before the link moves), `switch`
    /// (after it moved; the default), `failure` (after an automatic rollback).
    #[serde(default)]
    pub phase: HookPhase,
    /// Run by one instance per deploy (a lease at the source), not by every instance: migrations, a
    /// cache clear on shared storage. `prepare` and `switch` hooks only.
    #[serde(default)]
    pub once: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    Prepare,
    #[default]
    Switch,
    Failure,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BarrierTimeout {
    Switch,
    Hold,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub barrier: Duration,
    pub on_barrier_timeout: BarrierTimeout,
    /// The waves a deploy switches in, e.g. `["1", "25%", "100%"]` (default one wave: `["100%"]`).
    pub rollout: crate::rollout::Rollout,
    /// After a wave validated, how long before the next wave's go.
    #[serde(with = "duration")]
    pub bake: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            interval: Duration::from_secs(10),
            barrier: Duration::from_secs(120),
            on_barrier_timeout: BarrierTimeout::Switch,
            rollout: crate::rollout::Rollout::default(),
            bake: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Abandon,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub url: Option<String>,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// "auto" (find the group's launching hook), "none", or a hook name.
    pub lifecycle_hook: LifecycleHook,
    pub target_groups: Vec<String>,
    pub on_failure: OnFailure,
    /// After a release's switch, `url` must answer this status `successes` times in a row (within
    /// `timeout`), its body holding `expect_body` when set; else the release is rolled back.
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub successes: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            url: None,
            timeout: Duration::from_secs(300),
            lifecycle_hook: LifecycleHook::Auto,
            target_groups: Vec::new(),
            on_failure: OnFailure::Abandon,
            expect_status: 200,
            expect_body: None,
            successes: 2,
        }
    }
}

/// A step a group can require: skipped (not configured for this instance) means the boot fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirable {
    Eip,
    Efs,
    Release,
    Logs,
}

impl Requirable {
    pub fn name(self) -> &'static str {
        match self {
            Requirable::Eip => "eip",
            Requirable::Efs => "efs",
            Requirable::Release => "release",
            Requirable::Logs => "logs",
        }
    }

    pub fn parse(text: &str) -> Result<Requirable, String> {
        match text.trim() {
            "eip" => Ok(Requirable::Eip),
            "efs" => Ok(Requirable::Efs),
            "release" => Ok(Requirable::Release),
            "logs" => Ok(Requirable::Logs),
            other => Err(format!(
                "'{other}' is not a step a group can require (eip, efs, release, logs)"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootConfig {
    /// The steps this group must run (the `embark:require` tag wins). Unset: at least one of eip, efs
    /// and release must be configured, or the boot fails (a typo in a path or tags that did not
    /// propagate must not end in a healthy instance that does nothing). `[]`: nothing is required.
    pub require: Option<Vec<Requirable>>,
}

impl Config {
    /// Whether the step has what it needs to run on this instance.
    pub fn configures(&self, step: Requirable) -> bool {
        match step {
            Requirable::Eip => self.eip.pool.is_some(),
            Requirable::Efs => !self.efs.is_empty(),
            Requirable::Release => self.release.source.is_some(),
            Requirable::Logs => !self.logs.files.is_empty(),
        }
    }

    /// Why a boot with this configuration must not report success, if it must not: a required step
    /// that is not configured, or (with nothing required explicitly) no step configured at all.
    pub fn boot_gap(&self) -> Option<String> {
        const ALL: [Requirable; 3] = [Requirable::Eip, Requirable::Efs, Requirable::Release];
        match &self.boot.require {
            Some(required) => {
                let missing: Vec<&str> = required
                    .iter()
                    .filter(|s| !self.configures(**s))
                    .map(|s| s.name())
                    .collect();
                (!missing.is_empty()).then(|| format!(
                    "this group requires {} ([boot] require or the embark:require tag), but {} not configured for this instance",
                    missing.join(", "),
                    if missing.len() == 1 { "it is" } else { "they are" }
                ))
            }
            None if ALL.iter().all(|s| !self.configures(*s)) => Some(
                "nothing to do: no Elastic IP pool, no EFS file system and no release source are configured (config file or the group's embark:* tags); a boot that does nothing is not a success. Configure the steps, or set [boot] require = [] (or the tag embark:require=none) if this group needs only its lifecycle action".to_string(),
            ),
            None => None,
        }
    }
}

/// `[drain]`: leaving the fleet (docs/drain.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// The whole drain (a Spot notice shortens it to fit its two minutes).
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// Target groups to leave; default `[health] target_groups`.
    pub target_groups: Option<Vec<String>>,
    /// Drain on a Spot interruption notice or rebalance recommendation (the deploy agent watches).
    pub on_spot: bool,
    /// The terminating hook to complete: "auto", "none", or its name.
    pub lifecycle_hook: LifecycleHook,
    /// Stop hooks, in order, per role (as the release hooks): finish cron jobs, flush queues.
    pub hooks: Vec<Hook>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            deadline: Duration::from_secs(300),
            target_groups: None,
            on_spot: true,
            lifecycle_hook: LifecycleHook::Auto,
            hooks: Vec::new(),
        }
    }
}

/// `[logs]`: the CloudWatch agent's configuration, one stream per log file (docs/logs.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// The agent configuration file embark writes (and only this one).
    pub agent_config: PathBuf,
    /// Asks the agent to load it: argv; `{agent_config}` is replaced by the file's path.
    pub reload_command: Vec<String>,
    /// The preset in use (the `embark:logs` tag wins): entries with another preset are left out.
    pub preset: Option<String>,
    pub files: Vec<LogFiles>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            agent_config: PathBuf::from(
                "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/embark.json",
            ),
            reload_command: [
                "amazon-cloudwatch-agent-ctl",
                "-a",
                "fetch-config",
                "-m",
                "ec2",
                "-c",
                "file:{agent_config}",
                "-s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            preset: None,
            files: Vec::new(),
        }
    }
}

/// `[[logs.files]]`: a glob of log files, each file its own stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogFiles {
    /// A glob, e.g. `/var/www/shared/storage/logs/*.log`.
    pub path: String,
    /// Match the file name pattern in every directory below the glob's base too.
    #[serde(default)]
    pub recursive: bool,
    /// The log group; `{role}`, `{group}` and `{instance_id}` are replaced.
    pub group: String,
    /// The stream name; default the file's path relative to the glob's base directory.
    #[serde(default)]
    pub stream: Option<String>,
    /// Append the instance id and private IP to each stream name.
    #[serde(default)]
    pub per_instance: bool,
    #[serde(default)]
    pub timestamp_format: Option<String>,
    /// `UTC` or `Local`.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub multi_line_start_pattern: Option<String>,
    #[serde(default)]
    pub retention_days: Option<i32>,
    /// Only on these roles (empty: every role).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Only when this preset is in use (`[logs] preset` or the `embark:logs` tag).
    #[serde(default)]
    pub preset: Option<String>,
}

/// Which launching lifecycle hook the boot completes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum LifecycleHook {
    /// The group's launching hook, if it has one.
    Auto,
    /// None: the boot completes no lifecycle action.
    None,
    /// This hook, which must exist.
    Named(String),
}

impl From<String> for LifecycleHook {
    fn from(text: String) -> Self {
        match text.as_str() {
            "auto" => LifecycleHook::Auto,
            "none" => LifecycleHook::None,
            _ => LifecycleHook::Named(text),
        }
    }
}

impl From<LifecycleHook> for String {
    fn from(hook: LifecycleHook) -> Self {
        match hook {
            LifecycleHook::Auto => "auto".to_string(),
            LifecycleHook::None => "none".to_string(),
            LifecycleHook::Named(name) => name,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub success_topic: Option<String>,
    pub error_topic: Option<String>,
}

/// Why a configuration cannot be used. Always a usage error: exit 2, nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the config file {} does not exist (named by --config or EMBARK_CONFIG): create it, fix the path, or name no file to use {DEFAULT_PATH}", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", invalid_sentence(path, *line, key.as_deref(), message, hint.as_deref()))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        message: String,
        hint: Option<String>,
    },
    #[error("the group's tag {tag}={value:?} is not valid: {message}")]
    Tag {
        tag: String,
        value: String,
        message: String,
    },
}

fn invalid_sentence(
    path: &Path,
    line: Option<usize>,
    key: Option<&str>,
    message: &str,
    hint: Option<&str>,
) -> String {
    let mut out = format!("config file {}", path.display());
    if let Some(line) = line {
        out.push_str(&format!(", line {line}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(", key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    if let Some(hint) = hint {
        out.push_str("; ");
        out.push_str(hint);
    }
    out
}

/// Where the configuration came from, for `check` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The file does not exist: every key has its default.
    Defaults(PathBuf),
}

/// The config file, and whether it was named explicitly (`--config` or `EMBARK_CONFIG`): only the
/// built-in default path may be absent; a named file that is not there is a typo, not "all defaults".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub explicit: bool,
}

impl ConfigPath {
    /// Naming the default path itself (a user-data script exporting it) is not naming another file.
    pub fn new(named: Option<&Path>) -> ConfigPath {
        match named.filter(|p| *p != Path::new(DEFAULT_PATH)) {
            Some(path) => ConfigPath {
                path: path.to_path_buf(),
                explicit: true,
            },
            None => ConfigPath {
                path: PathBuf::from(DEFAULT_PATH),
                explicit: false,
            },
        }
    }
}

impl Config {
    /// Reads the file; the built-in default path may be absent (all defaults), a named one may not.
    pub fn load(at: &ConfigPath) -> Result<(Config, Source), ConfigError> {
        let path = at.path.as_path();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((
                Config::parse(path, &text)?,
                Source::File(path.to_path_buf()),
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && at.explicit => {
                Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Ok((Config::default(), Source::Defaults(path.to_path_buf())))
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| describe(path, text, &err))?;
        config.validate(path, text)?;
        Ok(config)
    }

    /// Values that parse but cannot work; checked here so that no step starts with them.
    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of_key(text, key),
            key: Some(key.to_string()),
            message,
            hint: None,
        };
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path".to_string()));
        }
        if let Some(source) = &self.release.source {
            if let Err(message) = check_s3_url(source) {
                return Err(invalid("source", message));
            }
        }
        if let Some(region) = &self.release.region {
            if !crate::aws::is_region(region) {
                return Err(invalid(
                    "region",
                    format!("{region:?} is not an AWS region name such as \"eu-west-1\""),
                ));
            }
        }
        if let Err(message) = crate::keys::trusted_keys(&self.release.trusted_keys) {
            return Err(invalid("trusted_keys", message));
        }
        if self.release.require_signature && self.release.trusted_keys.is_empty() {
            return Err(invalid(
                "require_signature",
                "needs [release] trusted_keys: the public keys whose signatures are accepted"
                    .to_string(),
            ));
        }
        if self.release.keep < 2 {
            return Err(invalid(
                "keep",
                "must be at least 2 (the current and the previous release are always kept)"
                    .to_string(),
            ));
        }
        if let Err((key, message)) = check_shared(&self.release) {
            return Err(invalid(key, message));
        }
        if self.health.successes == 0 {
            return Err(invalid("successes", "must be at least 1".to_string()));
        }
        if !(100..=599).contains(&self.health.expect_status) {
            return Err(invalid(
                "expect_status",
                "must be an HTTP status (100 to 599)".to_string(),
            ));
        }
        if self.release.link.is_empty() || self.release.link.contains('/') {
            return Err(invalid(
                "link",
                "must be a plain file name such as \"current\"".to_string(),
            ));
        }
        for mount in &self.efs {
            if let Err(message) = check_efs_mount(mount) {
                return Err(invalid("file_system", message));
            }
        }
        for files in &self.logs.files {
            if let Err(message) = check_log_files(files) {
                return Err(invalid("files", message));
            }
        }
        for hook in self.release.hooks.iter().chain(&self.drain.hooks) {
            match (&hook.run, &hook.http_get) {
                (Some(argv), None) if argv.is_empty() => {
                    return Err(invalid("run", "needs at least the program".to_string()))
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        "hooks",
                        "each [[release.hooks]] needs exactly one of `run` or `http_get`"
                            .to_string(),
                    ))
                }
            }
        }
        for hook in &self.release.hooks {
            if hook.once && hook.phase == HookPhase::Failure {
                return Err(invalid(
                    "once",
                    "only `prepare` and `switch` hooks can run once per deploy (a failure hook \
                     undoes something on its own instance)"
                        .to_string(),
                ));
            }
        }
        if self.drain.hooks.iter().any(|h| h.once) {
            return Err(invalid(
                "once",
                "is for [[release.hooks]]: a stop hook runs on the instance that drains"
                    .to_string(),
            ));
        }
        if self.release.once_lease < Duration::from_secs(3) {
            return Err(invalid(
                "once_lease",
                "must be at least 3s (the leader renews it every sixth of it)".to_string(),
            ));
        }
        Ok(())
    }

    /// Applies the group's `embark:*` tags on top of the file. Tags outside `embark:` are ignored;
    /// an unknown `embark:` tag is an error (a typo would otherwise silently disable a step).
    pub fn apply_tags(&mut self, tags: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let from_file = self.clone();
        self.apply_tag_values(tags)?;
        for (key, file, tag) in self.overridden(&from_file) {
            tracing::info!(
                "the group's tag {tag} sets {key}, overriding {file} from the config file"
            );
        }
        Ok(())
    }

    /// Settings the file gave a value of its own (not the default) that a tag changed: (key, the
    /// file's value, the tag). Said at INFO so that nobody wonders why the file is not obeyed.
    fn overridden(&self, file: &Config) -> Vec<(&'static str, String, &'static str)> {
        let default = Config::default();
        let mut out = Vec::new();
        let mut check = |key, tag, file_v: String, default_v: String, now: String| {
            if file_v != default_v && file_v != now {
                out.push((key, file_v, tag));
            }
        };
        let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
        check(
            "[eip] pool",
            "embark:eip-pool",
            show(&file.eip.pool),
            show(&default.eip.pool),
            show(&self.eip.pool),
        );
        check(
            "[eip] required",
            "embark:eip-required",
            show(&file.eip.required),
            show(&default.eip.required),
            show(&self.eip.required),
        );
        check(
            "[eip] wait",
            "embark:eip-wait",
            show(&file.eip.wait),
            show(&default.eip.wait),
            show(&self.eip.wait),
        );
        check(
            "[eip] reserve",
            "embark:eip-reserve",
            show(&file.eip.reserve),
            show(&default.eip.reserve),
            show(&self.eip.reserve),
        );
        check(
            "[[efs]]",
            "embark:efs",
            show(&file.efs),
            show(&default.efs),
            show(&self.efs),
        );
        check(
            "[release] source",
            "embark:release",
            show(&file.release.source),
            show(&default.release.source),
            show(&self.release.source),
        );
        check(
            "role",
            "embark:role",
            show(&file.role),
            show(&default.role),
            show(&self.role),
        );
        check(
            "[logs] preset",
            "embark:logs",
            show(&file.logs.preset),
            show(&default.logs.preset),
            show(&self.logs.preset),
        );
        check(
            "[boot] require",
            "embark:require",
            show(&file.boot.require),
            show(&default.boot.require),
            show(&self.boot.require),
        );
        out
    }

    fn apply_tag_values(&mut self, tags: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for (tag, value) in tags {
            let Some(name) = tag.strip_prefix("embark:") else {
                continue;
            };
            let bad = |message: String| ConfigError::Tag {
                tag: tag.clone(),
                value: value.clone(),
                message,
            };
            match name {
                "eip-pool" => {
                    let pool = value.trim();
                    if pool.is_empty() {
                        return Err(bad("the pool name is empty".to_string()));
                    }
                    self.eip.pool = Some(pool.to_string());
                }
                "eip-required" => self.eip.required = parse_bool(value).map_err(bad)?,
                "eip-wait" => self.eip.wait = parse_duration(value).map_err(bad)?,
                "eip-reserve" => {
                    self.eip.reserve = value.trim().parse().map_err(|_| {
                        bad("expected a whole number of addresses, e.g. 2".to_string())
                    })?
                }
                "efs" => self.efs = parse_efs_tag(value).map_err(bad)?,
                "release" => {
                    check_s3_url(value).map_err(bad)?;
                    self.release.source = Some(value.trim().to_string());
                }
                "role" => {
                    let role = value.trim();
                    if role.is_empty() {
                        return Err(bad("the role is empty".to_string()));
                    }
                    self.role = Some(role.to_string());
                }
                "drain-deadline" => self.drain.deadline = parse_duration(value).map_err(bad)?,
                "logs" => {
                    let preset = value.trim();
                    if preset.is_empty() {
                        return Err(bad("the preset name is empty".to_string()));
                    }
                    self.logs.preset = Some(preset.to_string());
                }
                "require" => {
                    self.boot.require = Some(if value.trim() == "none" {
                        Vec::new()
                    } else {
                        value
                            .split(',')
                            .filter(|s| !s.trim().is_empty())
                            .map(Requirable::parse)
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(bad)?
                    })
                }
                // Set by embark itself on addresses, never on groups; harmless if propagated.
                "pool" | "az" => {}
                other => {
                    let hint = nearest(other, TAG_NAMES)
                        .map(|n| format!(" (did you mean embark:{n}?)"))
                        .unwrap_or_default();
                    return Err(bad(format!("embark does not know this tag{hint}")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn a_tag_over_a_file_setting_is_named() {
        let mut config = Config::default();
        config.eip.pool = Some("from-file".into());
        config.release.keep = 5;
        let file = config.clone();
        let tags: BTreeMap<String, String> = [
            ("embark:eip-pool".to_string(), "from-tag".to_string()),
            ("embark:role".to_string(), "web".to_string()),
        ]
        .into();
        config.apply_tag_values(&tags).unwrap();
        let said = config.overridden(&file);
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(said[0].0, "[eip] pool");
        assert!(said[0].1.contains("from-file"));
        assert_eq!(said[0].2, "embark:eip-pool");
    }
}

/// The `embark:*` tags read from the group (see docs/tags.md).
pub const TAG_NAMES: &[&str] = &[
    "require",
    "drain-deadline",
    "logs",
    "eip-pool",
    "eip-required",
    "eip-wait",
    "eip-reserve",
    "efs",
    "release",
    "role",
];

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration; write e.g. \"90s\", \"5m\" or \"1h\""))
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// `shared_dirs` and `shared_files`: plain relative paths inside a release, none inside another, and a
/// `shared_root` outside `releases/` (a release's copy of a shared path is replaced by a link to it).
fn check_shared(release: &ReleaseConfig) -> Result<(), (&'static str, String)> {
    let mut all: Vec<(&'static str, &str)> = Vec::new();
    for (key, paths) in [
        ("shared_dirs", &release.shared_dirs),
        ("shared_files", &release.shared_files),
    ] {
        for path in paths {
            let plain = !path.is_empty()
                && !path.starts_with('/')
                && path
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..");
            if !plain {
                return Err((
                    key,
                    format!(
                        "{path:?} is not a plain path inside the release (relative, no '.' or '..', not the release itself)"
                    ),
                ));
            }
            all.push((key, path.as_str()));
        }
    }
    for (i, (key, a)) in all.iter().enumerate() {
        for (_, b) in &all[i + 1..] {
            let inside = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
            if inside(a, b) || inside(b, a) {
                return Err((
                    key,
                    format!("{a:?} and {b:?} overlap: one shared path cannot hold another"),
                ));
            }
        }
    }
    let root = release.shared_root();
    if !root.is_absolute() {
        return Err((
            "shared_root",
            format!("{} must be an absolute path", root.display()),
        ));
    }
    let releases = release.root.join("releases");
    if root.starts_with(&releases) || releases.starts_with(&root) || root == release.root {
        return Err((
            "shared_root",
            format!(
                "{} must lie outside {} (and not be the release root itself)",
                root.display(),
                releases.display()
            ),
        ));
    }
    Ok(())
}

/// One rule for release sources everywhere: the file, the tag, `--to` and `--from`.
fn check_s3_url(url: &str) -> Result<(), String> {
    crate::s3url::SourceUrl::parse(url).map(|_| ())
}

/// The retention periods CloudWatch Logs accepts (the agent's schema lists the same).
pub const RETENTION_DAYS: [i32; 23] = [
    -1, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
];

fn check_log_files(files: &LogFiles) -> Result<(), String> {
    if !files.path.starts_with('/') {
        return Err(format!(
            "[[logs.files]] path {:?} must be absolute",
            files.path
        ));
    }
    if files.group.trim().is_empty() {
        return Err(format!("[[logs.files]] {} needs a group", files.path));
    }
    if let Some(tz) = &files.timezone {
        if !["UTC", "Local", "LOCAL"].contains(&tz.as_str()) {
            return Err(format!("timezone {tz:?} is not \"UTC\" or \"Local\""));
        }
    }
    if let Some(days) = files.retention_days {
        if !RETENTION_DAYS.contains(&days) {
            return Err(format!(
                "retention_days {days} is not one CloudWatch Logs accepts ({RETENTION_DAYS:?})"
            ));
        }
    }
    Ok(())
}

fn check_efs_mount(mount: &EfsMount) -> Result<(), String> {
    let id = mount.file_system.as_str();
    let valid_id = id
        .strip_prefix("fs-")
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid_id {
        return Err(format!(
            "{id:?} is not a file system id (fs- followed by hex digits)"
        ));
    }
    if !mount.path.starts_with('/') {
        return Err(format!(
            "the path {:?} on {id} must start with /",
            mount.path
        ));
    }
    if !mount.mount_point.is_absolute() {
        return Err(format!(
            "the mount point {} for {id} must be an absolute path",
            mount.mount_point.display()
        ));
    }
    Ok(())
}

/// `fs-id[:/path]=/mount/point`, comma-separated.
pub fn parse_efs_tag(value: &str) -> Result<Vec<EfsMount>, String> {
    let mut mounts = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (source, mount_point) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} lacks =/mount/point (fs-id[:/path]=/mount/point)"))?;
        let (file_system, path) = match source.split_once(':') {
            Some((fs, path)) => (fs, path),
            None => (source, "/"),
        };
        let mount = EfsMount {
            file_system: file_system.trim().to_string(),
            path: path.trim().to_string(),
            mount_point: PathBuf::from(mount_point.trim()),
            options: Vec::new(),
            read_only: false,
            fstab: false,
            tls: false,
            iam: false,
            access_point: None,
            cross_zone: false,
        };
        check_efs_mount(&mount)?;
        mounts.push(mount);
    }
    if mounts.is_empty() {
        return Err("no mount given (fs-id[:/path]=/mount/point)".to_string());
    }
    Ok(mounts)
}

/// Turns toml/serde's error into a sentence naming the line, the key and, for a typo, the nearest key.
fn describe(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().to_string();
    let line = err.span().map(|span| line_number(text, span.start));
    let line_text = line
        .and_then(|n| text.lines().nth(n - 1))
        .unwrap_or_default();
    let line_key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));

    if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default().to_string();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let section = line.and_then(|n| section_of(text, n));
        let hint = nearest(&unknown, &expected).map(|n| format!("did you mean `{n}`?"));
        // `[frobnicate]` is reported on its own header line: an unknown section, not a key in it.
        let is_section = section.as_deref() == Some(unknown.as_str())
            && line
                .and_then(|n| text.lines().nth(n.saturating_sub(1)))
                .is_some_and(|l| l.trim_start().starts_with('['));
        let message = if is_section {
            "unknown section".to_string()
        } else {
            let place = section
                .map(|s| format!(" in [{s}]"))
                .unwrap_or_else(|| " at the top level".to_string());
            format!("unknown key{place}")
        };
        return ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key: Some(unknown),
            message,
            hint,
        };
    }
    let friendly = if message.starts_with("invalid type") || message.starts_with("unknown variant")
    {
        message.replace("invalid type: ", "wrong type: ")
    } else {
        message
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key: line_key,
        message: friendly,
        hint: None,
    }
}

fn line_number(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|before| before.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// The `[table]` or `[[array]]` header above line `line` (1-based).
fn section_of(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
                .map(|s| s.trim().to_string())
        })
        .last()
}

fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The closest name within a small edit distance, for "did you mean".
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `"90s"`, `"5m"` in the file; the same form when written back.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/embark/embark.toml"), text)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
state_dir = "/var/lib/embark"
deadline = "10m"
imds_deadline = "2m"

[eip]
pool = "web"
required = true
wait = "0s"
reserve = 0

[[efs]]
file_system = "fs-0123456789abcdef0"
path = "/"
mount_point = "/efs"
options = []
fstab = false

[release]
source = "s3://my-deploy-bucket/myapp"
format = "embark"
root = "/var/www/myapp"
link = "current"
keep = 3
owner = "www-data"

[[release.hooks]]
run = ["systemctl", "reload", "php8.2-fpm"]
roles = ["web"]
timeout = "60s"
[[release.hooks]]
http_get = "http://127.0.0.1/opcache-reset.php"

[watch]
interval = "10s"
barrier = "2m"
on_barrier_timeout = "switch"

[health]
url = "http://127.0.0.1/aws-health-check/"
timeout = "5m"
lifecycle_hook = "auto"
target_groups = []
on_failure = "abandon"

[notify]
success_topic = "arn:aws:sns:eu-west-1:123456789012:deploy-ok"
error_topic = "arn:aws:sns:eu-west-1:123456789012:deploy-error"
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.deadline, Duration::from_secs(600));
        assert_eq!(config.eip.pool.as_deref(), Some("web"));
        assert_eq!(config.efs[0].file_system, "fs-0123456789abcdef0");
        assert_eq!(config.release.hooks.len(), 2);
        assert_eq!(config.release.hooks[1].timeout, Duration::from_secs(60));
        assert_eq!(config.watch.barrier, Duration::from_secs(120));
        assert_eq!(config.health.on_failure, OnFailure::Abandon);
    }

    #[test]
    fn written_defaults_read_back_identically() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_line_and_nearest() {
        let err = parse("deadline = \"5m\"\nstat_dir = \"/tmp\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("`stat_dir`"), "{text}");
        assert!(text.contains("did you mean `state_dir`"), "{text}");
    }

    #[test]
    fn unknown_key_in_section_names_section() {
        let err = parse("[eip]\npool = \"web\"\nrequird = false\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("in [eip]"), "{text}");
        assert!(text.contains("did you mean `required`"), "{text}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("[eip]\nrequired = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("`required`"), "{err}");
        assert!(err.contains("wrong type"), "{err}");
    }

    #[test]
    fn bad_duration_names_key() {
        let err = parse("[watch]\ninterval = \"often\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("`interval`"), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn malformed_toml_names_line() {
        let err = parse("deadline = \"5m\"\n[eip\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn semantic_errors() {
        for (text, key) in [
            ("state_dir = \"relative\"", "state_dir"),
            ("[release]\nsource = \"http://x\"", "source"),
            ("[release]\nkeep = 1", "keep"),
            (
                "[[efs]]\nfile_system = \"nfs-1\"\nmount_point = \"/efs\"",
                "file_system",
            ),
            ("[[release.hooks]]\nroles = [\"web\"]", "hooks"),
            (
                "[[release.hooks]]\nrun = [\"true\"]\nphase = \"failure\"\nonce = true",
                "once",
            ),
            ("[[drain.hooks]]\nrun = [\"true\"]\nonce = true", "once"),
            ("[release]\nonce_lease = \"1s\"", "once_lease"),
            ("[watch]\nrollout = [\"1\", \"50%\"]", "rollout"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tags_override_file() {
        let mut config = parse("[eip]\npool = \"file\"\nrequired = true\n").unwrap();
        config
            .apply_tags(&tags(&[
                ("embark:eip-pool", "web"),
                ("embark:eip-required", "false"),
                ("embark:eip-wait", "2m"),
                ("embark:eip-reserve", "2"),
                ("embark:efs", "fs-12ab:/shared=/efs, fs-34cd=/data"),
                ("embark:release", "s3://bucket/app"),
                ("embark:role", "cron"),
                ("Name", "anything"),
                ("aws:autoscaling:groupName", "web"),
            ]))
            .unwrap();
        assert_eq!(config.eip.pool.as_deref(), Some("web"));
        assert!(!config.eip.required);
        assert_eq!(config.eip.wait, Duration::from_secs(120));
        assert_eq!(config.eip.reserve, 2);
        assert_eq!(config.efs.len(), 2);
        assert_eq!(config.efs[0].path, "/shared");
        assert_eq!(config.efs[1].path, "/");
        assert_eq!(config.efs[1].mount_point, PathBuf::from("/data"));
        assert_eq!(config.release.source.as_deref(), Some("s3://bucket/app"));
        assert_eq!(config.role.as_deref(), Some("cron"));
    }

    #[test]
    fn bad_tags_are_named() {
        for (tag, value, needle) in [
            ("embark:eip-required", "yes", "true or false"),
            ("embark:eip-wait", "soon", "not a duration"),
            ("embark:eip-reserve", "-1", "whole number"),
            ("embark:efs", "fs-12=relative", "absolute"),
            ("embark:efs", "fs-12", "lacks"),
            ("embark:release", "bucket/app", "s3://"),
            ("embark:eip-pol", "web", "did you mean embark:eip-pool"),
            ("embark:eip-pool", " ", "empty"),
        ] {
            let mut config = Config::default();
            let err = config.apply_tags(&tags(&[(tag, value)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(tag), "{text}");
            assert!(text.contains(needle), "{tag}={value}: {text}");
        }
    }
}
