//! `embark check`: a preflight that exits 0 only when a boot could succeed here.
//!
//! Every check runs (one failure does not hide the next) and prints one line; nothing is changed.

use std::path::Path;

use std::path::PathBuf;

use crate::config::{Config, ConfigPath, Source};
use crate::context::{Context, ContextError, Instance};
use crate::efs;
use crate::eip;
use crate::error::Error;

/// How long an interactive `embark check` waits for IMDS.
pub const INTERACTIVE_IMDS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// A failure of the configuration (file or tags) rather than of the machine: exit 2.
    pub usage: bool,
    /// Works, but not as safely as it could (shown as WARN; does not fail the check).
    pub warn: bool,
}

impl CheckLine {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            name,
            ok: true,
            detail: detail.into(),
            usage: false,
            warn: false,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            warn: true,
            ..CheckLine::ok(name, detail)
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            name,
            ok: false,
            detail: detail.into(),
            usage: false,
            warn: false,
        }
    }
    fn usage(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            usage: true,
            ..CheckLine::fail(name, detail)
        }
    }
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match (self.ok, self.warn) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "ok  ",
        };
        write!(f, "{mark} {:<10} {}", self.name, self.detail)
    }
}

pub async fn run(
    config: &ConfigPath,
    state_dir: Option<&PathBuf>,
    image: bool,
) -> Result<(), Error> {
    let mut lines = Vec::new();
    let ctx = match Context::load(config, state_dir) {
        Ok(mut ctx) => {
            // Someone at a terminal (a laptop, a shell on a box) should not wait two minutes to learn
            // that IMDS is not there; user-data and Packer are not terminals and keep the deadline.
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                ctx.config.imds_deadline = ctx.config.imds_deadline.min(INTERACTIVE_IMDS_DEADLINE);
            }
            lines.push(CheckLine::ok(
                "config",
                match &ctx.source {
                    Source::File(p) => format!("{} parses", p.display()),
                    Source::Defaults(p) => format!("{} absent: all defaults", p.display()),
                },
            ));
            Some(ctx)
        }
        Err(err @ ContextError::Config(_)) => {
            lines.push(CheckLine::usage("config", err.to_string()));
            None
        }
        Err(err) => {
            lines.push(CheckLine::fail("config", err.to_string()));
            None
        }
    };
    match &ctx {
        Some(ctx) if image => lines.extend(image_checks(&ctx.config)),
        Some(ctx) => {
            lines.extend(instance_checks(ctx).await);
            lines.push(state_dir_writable(&ctx.config));
        }
        None => {}
    }
    for line in &lines {
        crate::output::say_line(&line.to_string());
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        return Ok(());
    }
    Err(Error::ChecksFailed {
        failed,
        total: lines.len(),
        usage: lines.iter().any(|l| l.usage),
    })
}

async fn instance_checks(ctx: &Context) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    match ctx.identify().await {
        Ok((identity, aws)) => {
            lines.push(CheckLine::ok(
                "imds",
                format!(
                    "token accepted; instance {} in {}",
                    identity.metadata.instance_id, identity.metadata.availability_zone
                ),
            ));
            let mut config = ctx.config.clone();
            match config.apply_tags(&identity.tags) {
                Ok(()) => {
                    lines.push(CheckLine::ok(
                        "tags",
                        match &identity.auto_scaling_group {
                            Some(group) => format!("group {group}; embark tags valid"),
                            None => "not in an Auto Scaling group".to_string(),
                        },
                    ));
                    let instance = Instance {
                        identity,
                        aws,
                        config,
                    };
                    lines.push(match instance.config.boot_gap() {
                        Some(gap) => CheckLine::usage("boot", gap),
                        None => CheckLine::ok("boot", boot_summary(&instance.config)),
                    });
                    lines.push(eip_check(&instance).await);
                    lines.push(efs_check(&instance.config));
                    lines.extend(release_check(&instance).await);
                    lines.push(logs_check(&instance.config));
                }
                Err(err) => lines.push(CheckLine::usage("tags", err.to_string())),
            }
        }
        Err(err) => lines.push(CheckLine::fail("imds", err.to_string())),
    }
    lines
}

/// What a boot would do here, in a few words.
fn boot_summary(config: &Config) -> String {
    use crate::config::Requirable;
    let steps: Vec<&str> = [Requirable::Eip, Requirable::Efs, Requirable::Release]
        .into_iter()
        .filter(|s| config.configures(*s))
        .map(Requirable::name)
        .collect();
    let required = match &config.boot.require {
        Some(list) if list.is_empty() => "; nothing required".to_string(),
        Some(list) => format!(
            "; required: {}",
            list.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        ),
        None => String::new(),
    };
    if steps.is_empty() {
        format!("only the lifecycle action and health{required}")
    } else {
        format!("would run {}, then health{required}", steps.join(", "))
    }
}

/// Whether a pool is configured, and whether it has an address for this instance.
async fn eip_check(instance: &Instance) -> CheckLine {
    let Some(pool) = instance.config.eip.pool.clone() else {
        return CheckLine::ok("eip", "no pool configured: no Elastic IP step");
    };
    if let Err(err) = eip::check_region(&instance.aws.region(), &instance.identity.metadata.region)
    {
        return CheckLine::usage("eip", err.to_string());
    }
    let place = eip::place(instance);
    match eip::describe_pool(&instance.aws.ec2(), &pool).await {
        Ok(found) => {
            let status = eip::Status::new(found, &place, instance.config.eip.reserve);
            let summary = format!(
                "pool '{pool}': {} of {} free ({} for this zone){}",
                status.free,
                status.total,
                status.free_here,
                status
                    .bound_here
                    .as_ref()
                    .map(|a| format!("; {} bound here", a.public_ip))
                    .unwrap_or_default()
            );
            let eip = &instance.config.eip;
            if status.bound_here.is_none()
                && status.free_here == 0
                && eip.required
                && eip.wait.is_zero()
            {
                CheckLine::fail(
                    "eip",
                    format!("{summary}: none for this instance and the pool is required"),
                )
            } else {
                CheckLine::ok("eip", summary)
            }
        }
        Err(err) if err.is_usage() => CheckLine::usage("eip", err.to_string()),
        Err(err) => CheckLine::fail("eip", err.to_string()),
    }
}

/// The release source answers and has a current release.
/// The current release at the source, and whether releases are verified (signatures).
async fn release_check(instance: &Instance) -> Vec<CheckLine> {
    use crate::release;
    if instance.config.release.source.is_none() {
        return vec![CheckLine::ok(
            "release",
            "no release source configured: no release step",
        )];
    }
    let source = match release::source_of(&instance.config) {
        Ok(source) => source,
        Err(err) => return vec![CheckLine::usage("release", err.to_string())],
    };
    let store = release::store::Store::new(&instance.aws, source)
        .in_region(instance.config.release.region.as_deref());
    let target = match release::install::read_target(&store, instance.config.release.format).await {
        Ok(target) => target,
        Err(err) => return vec![CheckLine::fail("release", err.to_string())],
    };
    let current = CheckLine::ok(
        "release",
        format!("{} is current at {}", target.id(), store.source),
    );
    vec![current, signing_check(&instance.config, &store, &target)]
}

/// WARN without `require_signature`; with it, whether the current release's signature verifies.
fn signing_check(
    config: &Config,
    store: &crate::release::store::Store,
    target: &crate::release::install::Target,
) -> CheckLine {
    let trust = match crate::release::trust(config) {
        Ok(trust) => trust,
        Err(err) => return CheckLine::usage("signing", err.to_string()),
    };
    if !trust.required {
        return CheckLine::warn(
            "signing",
            "releases are not verified: whoever can write the bucket can run code here; set [release] trusted_keys and require_signature = true (docs/signing.md)",
        );
    }
    let checked = match target.pointer() {
        Some(pointer) => trust.check(&store.source, pointer),
        None => Err(crate::release::ReleaseError::Unsignable {
            release: target.id(),
            source_url: store.source.to_string(),
        }),
    };
    match checked {
        Ok(()) => CheckLine::ok(
            "signing",
            format!(
                "{} is signed by a trusted key ({} trusted)",
                target.id(),
                trust.keys.len()
            ),
        ),
        Err(err) => CheckLine::fail("signing", err.to_string()),
    }
}

/// The log files each glob matches now, and whether the CloudWatch agent is installed.
fn logs_check(config: &Config) -> CheckLine {
    let logs = &config.logs;
    let report = crate::logs::glob_report(logs, config.role.as_deref());
    if report.is_empty() {
        return CheckLine::ok("logs", "no [[logs.files]] for this instance");
    }
    let program = logs.reload_command.first().cloned().unwrap_or_default();
    let agent = crate::command::find(&program).is_ok();
    let mut parts = Vec::new();
    for (glob, count) in &report {
        match count {
            Ok(0) => parts.push(format!("{glob} matches nothing yet")),
            Ok(n) => parts.push(format!("{glob}: {n} files")),
            Err(why) => return CheckLine::usage("logs", why.clone()),
        }
    }
    let required = config
        .boot
        .require
        .as_ref()
        .is_some_and(|r| r.contains(&crate::config::Requirable::Logs));
    match (agent, required) {
        (true, _) => CheckLine::ok("logs", parts.join("; ")),
        (false, true) => CheckLine::fail(
            "logs",
            format!("logs are required but the CloudWatch agent is not installed ({program} not found)"),
        ),
        (false, false) => CheckLine::ok(
            "logs",
            format!(
                "warning: the CloudWatch agent is not installed ({program} not found): no log streams; {}",
                parts.join("; ")
            ),
        ),
    }
}

/// The kernel can mount NFSv4 (unless every mount goes through amazon-efs-utils, which needs it too
/// but says so itself) and every mount point is usable.
fn efs_check(config: &Config) -> CheckLine {
    if config.efs.is_empty() {
        return CheckLine::ok("efs", "no file systems configured");
    }
    for mount in &config.efs {
        let mp = &mount.mount_point;
        if mp.exists() && !mp.is_dir() {
            return CheckLine::fail(
                "efs",
                format!("mount point {} exists but is not a directory", mp.display()),
            );
        }
    }
    if !efs::this_kernel_has_nfs4() {
        return CheckLine::fail("efs", efs::EfsError::NoNfs4.to_string());
    }
    CheckLine::ok(
        "efs",
        format!(
            "{}; kernel NFSv4 client present",
            crate::output::count(config.efs.len() as u64, "file system", "file systems")
        ),
    )
}

/// Where the units are installed (overridable for tests and for images with another layout).
fn systemd_dir() -> std::path::PathBuf {
    std::env::var_os("EMBARK_SYSTEMD_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/systemd/system"))
}

const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// `check --image`: what a boot from this image needs, and that nothing of an instance was baked in.
/// IMDS is not asked (the builder is not the fleet).
fn image_checks(config: &Config) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    lines.push(if efs::this_kernel_has_nfs4() {
        CheckLine::ok("nfs", "kernel NFSv4 client present")
    } else if config.efs.is_empty() {
        CheckLine::ok(
            "nfs",
            "no kernel NFSv4 client; fine while no group sets embark:efs (install nfs-utils / nfs-common otherwise)",
        )
    } else {
        CheckLine::fail("nfs", efs::EfsError::NoNfs4.to_string())
    });
    let program = config
        .logs
        .reload_command
        .first()
        .cloned()
        .unwrap_or_default();
    lines.push(match crate::command::find(&program) {
        Ok(path) => CheckLine::ok("cw_agent", format!("CloudWatch agent installed ({})", path.display())),
        Err(_) => CheckLine::ok(
            "cw_agent",
            format!("CloudWatch agent not installed ({program}): fine unless a group uses [[logs.files]]"),
        ),
    });
    let bundle = std::env::var("SSL_CERT_FILE")
        .ok()
        .filter(|p| Path::new(p).is_file())
        .or_else(|| {
            CA_BUNDLES
                .iter()
                .find(|p| Path::new(p).is_file())
                .map(|p| p.to_string())
        });
    lines.push(match bundle {
        Some(path) => CheckLine::ok("ca_certs", format!("{path} present")),
        None => CheckLine::fail(
            "ca_certs",
            "no CA certificate bundle (ca-certificates): HTTPS to AWS will fail",
        ),
    });
    lines.push(state_dir_writable(config));
    let status = crate::status::path(&config.state_dir);
    lines.push(match crate::status::Report::read(&config.state_dir) {
        Ok(None) => CheckLine::ok("no_state", "no instance state in the image"),
        Ok(Some(report)) => CheckLine::fail(
            "no_state",
            format!(
                "instance state baked in: {} (from instance {}); remove it before creating the image",
                status.display(),
                report.instance_id.as_deref().unwrap_or("unknown")
            ),
        ),
        Err(why) => CheckLine::fail("no_state", why),
    });
    lines.extend(unit_checks());
    let releases = config.release.root.join("releases");
    let baked = std::fs::read_dir(&releases).map(|d| d.count()).unwrap_or(0);
    if baked > 0 {
        lines.push(CheckLine::ok(
            "releases",
            format!(
                "{} under {} baked in: the first pull fetches only what changed",
                crate::output::count(baked as u64, "release", "releases"),
                releases.display()
            ),
        ));
    }
    lines
}

/// The image's systemd units: installed and enabled.
fn unit_checks() -> Vec<CheckLine> {
    let dir = systemd_dir();
    ["embark-boot.service", "embark-watch.service"]
        .into_iter()
        .map(|unit| {
            let file = dir.join(unit);
            let wanted = dir.join("multi-user.target.wants").join(unit);
            if !file.is_file() {
                CheckLine::fail("units", format!("{} is not installed", file.display()))
            } else if !wanted.exists() {
                CheckLine::fail(
                    "units",
                    format!("{unit} is installed but not enabled (systemctl enable {unit})"),
                )
            } else {
                CheckLine::ok("units", format!("{unit} installed and enabled"))
            }
        })
        .collect()
}

/// Writable without writing anything lasting: a probe file is created and removed; a state dir that
/// does not exist yet must be creatable (its nearest existing parent writable).
fn state_dir_writable(config: &Config) -> CheckLine {
    let dir = &config.state_dir;
    match probe_writable(dir) {
        Ok(detail) => CheckLine::ok("state_dir", detail),
        Err(detail) => CheckLine::fail("state_dir", detail),
    }
}

fn probe_writable(dir: &Path) -> Result<String, String> {
    if dir.is_dir() {
        let probe = dir.join(format!(".embark-check-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .map_err(|err| format!("{} is not writable: {err}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(format!("{} writable", dir.display()));
    }
    if dir.exists() {
        return Err(format!("{} exists but is not a directory", dir.display()));
    }
    let parent = dir
        .ancestors()
        .skip(1)
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("no existing parent directory for {}", dir.display()))?;
    nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).map_err(|err| {
        format!(
            "{} does not exist and {} is not writable: {err}",
            dir.display(),
            parent.display()
        )
    })?;
    Ok(format!("{} will be created", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_existing_missing_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(probe_writable(tmp.path()).unwrap().contains("writable"));
        assert!(probe_writable(&tmp.path().join("a/b"))
            .unwrap()
            .contains("will be created"));
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(probe_writable(&file)
            .unwrap_err()
            .contains("not a directory"));
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
