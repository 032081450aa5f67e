//! Mounting EFS with the kernel's NFSv4.1 client through mount(2): no helper binary is needed.
//!
//! The mount target is found by its DNS name (`fs-id.efs.<region>.amazonaws.com`, which resolves to the
//! target in this instance's zone) or, when that name does not resolve (no VPC DNS, a custom resolver),
//! by `DescribeMountTargets` and the available target in this instance's AZ id. Stacks often create
//! mount targets at the very moment instances boot, so a missing or still-creating target is waited for
//! within the step deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::aws::{Aws, AwsError};
use crate::config::EfsMount;
use crate::context::Instance;
use crate::net::Resolver;
use crate::retry::{retry, Failure, Policy, Verdict};
use crate::status::{self, Reported};

/// The options AWS recommends for EFS over NFSv4.1.
pub const AWS_OPTIONS: &str =
    "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport";

#[derive(Debug, thiserror::Error)]
pub enum EfsError {
    #[error("the kernel has no NFSv4 client (nfs4 is not in /proc/filesystems and no nfsv4 module is installed for this kernel): install the kernel's NFS modules (e.g. nfs-common / linux-modules-extra) or use an image whose kernel has them")]
    NoNfs4,
    #[error("file system {fs} does not exist in {region}: check embark:efs / [[efs]] file_system")]
    NoFileSystem { fs: String, region: String },
    #[error("file system {fs} has no mount target in this instance's zone {zone_id} (zones with one: {others}); create a mount target in a subnet of {zone_id}")]
    NoMountTarget {
        fs: String,
        zone_id: String,
        others: String,
    },
    #[error("file system {fs} is an EFS One Zone file system in {zone}, and this instance is in {here}: mount it from instances in {zone}, or set cross_zone = true on the mount to go across zones")]
    OneZoneElsewhere {
        fs: String,
        zone: String,
        here: String,
    },
    #[error("no available mount target of {fs} in zone {zone_id} within {deadline:?} ({last})")]
    NotAvailable {
        fs: String,
        zone_id: String,
        deadline: Duration,
        last: String,
    },
    #[error("cannot reach {addr} (NFS, TCP 2049) of {fs}: {detail}; check that the mount target's security group allows TCP 2049 from this instance")]
    Unreachable {
        fs: String,
        addr: SocketAddr,
        detail: String,
    },
    #[error("{fs} asks for {what}, which needs amazon-efs-utils (mount.efs): install it, or remove tls/iam/access_point")]
    NeedsEfsUtils { fs: String, what: String },
    #[error("mount -t efs for {fs} on {mount_point} failed: {detail}")]
    EfsUtils {
        fs: String,
        mount_point: PathBuf,
        detail: String,
    },
    #[error("mounting {source_spec} on {mount_point} failed: {detail}")]
    Mount {
        source_spec: String,
        mount_point: PathBuf,
        detail: String,
    },
    #[error("cannot create the mount point {path}: {detail}")]
    MountPoint { path: PathBuf, detail: String },
    #[error("cannot update {path}: {detail}")]
    Fstab { path: PathBuf, detail: String },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl EfsError {
    /// Problems of configuration rather than of this moment: exit 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, EfsError::NoFileSystem { .. })
    }
}

/// Where this instance is.
#[derive(Debug, Clone)]
pub struct Place {
    pub region: String,
    pub zone_id: Option<String>,
    /// Try the `amazonaws.com` DNS name first. Off with a custom EFS endpoint (an emulator, a test
    /// account behind a proxy): there the AWS name means nothing.
    pub use_dns: bool,
}

/// How the mount target's address was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Dns { name: String },
    MountTarget { id: String, zone_id: String },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Dns { name } => write!(f, "DNS name {name}"),
            Found::MountTarget { id, zone_id } => {
                write!(f, "DescribeMountTargets: {id} in {zone_id}")
            }
        }
    }
}

/// The mount(2) call embark makes for one file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    pub source: String,
    pub target: PathBuf,
    pub fstype: &'static str,
    pub read_only: bool,
    pub data: String,
}

impl MountCall {
    pub fn new(mount: &EfsMount, addr: IpAddr) -> MountCall {
        MountCall {
            source: format!("{addr}:{}", mount.path),
            target: mount.mount_point.clone(),
            fstype: "nfs4",
            read_only: mount.read_only,
            data: mount_options(&mount.options, addr),
        }
    }
}

impl std::fmt::Display for MountCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mount(\"{}\", \"{}\", \"{}\", {}, \"{}\")",
            self.source,
            self.target.display(),
            self.fstype,
            if self.read_only { "MS_RDONLY" } else { "0" },
            self.data
        )
    }
}

/// AWS's options, then the user's, then the `addr=` the kernel client needs (it does no DNS itself).
pub fn mount_options(extra: &[String], addr: IpAddr) -> String {
    let mut out = AWS_OPTIONS.to_string();
    for opt in extra.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        out.push(',');
        out.push_str(opt);
    }
    out.push_str(&format!(",addr={addr}"));
    out
}

/// `tls`, `iam`, an access point: what only amazon-efs-utils can do.
pub fn efs_utils_options(mount: &EfsMount) -> Vec<String> {
    let mut opts = Vec::new();
    if mount.tls {
        opts.push("tls".to_string());
    }
    if mount.iam {
        opts.push("iam".to_string());
    }
    if let Some(ap) = &mount.access_point {
        opts.push(format!("accesspoint={ap}"));
    }
    opts
}

/// Unescapes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let value =
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/mountinfo: (mount point, fstype, source).
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some((
                PathBuf::from(unescape(mount_point)),
                fstype.to_string(),
                unescape(source),
            ))
        })
        .collect()
}

/// Is `mount_point` already an NFSv4 mount of `path` (source `<ip or name>:<path>`)?
pub fn mounted(mountinfo: &str, mount_point: &Path, path: &str) -> bool {
    parse_mountinfo(mountinfo)
        .iter()
        .any(|(mp, fstype, source)| {
            mp == mount_point && fstype.starts_with("nfs4") && source.ends_with(&format!(":{path}"))
        })
}

/// Whether the running kernel can mount nfs4: registered, or a module present to be loaded on demand.
pub fn kernel_has_nfs4(proc_filesystems: &str, release: &str, modules_root: &Path) -> bool {
    if proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("nfs4"))
    {
        return true;
    }
    let dir = modules_root.join(release).join("kernel/fs/nfs");
    ["nfsv4.ko", "nfsv4.ko.xz", "nfsv4.ko.zst", "nfsv4.ko.gz"]
        .iter()
        .any(|m| dir.join(m).exists())
}

pub fn this_kernel_has_nfs4() -> bool {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    kernel_has_nfs4(&filesystems, &release, Path::new("/lib/modules"))
}

/// Finds the mount target's address: DNS first, then the API, waiting until `deadline` for a target
/// that is still being created.
pub async fn resolve(
    efs: &aws_sdk_efs::Client,
    resolver: &Resolver,
    place: &Place,
    fs: &str,
    deadline: Duration,
    cross_zone: bool,
) -> Result<(IpAddr, Found), EfsError> {
    let suffix = crate::aws::Partition::of_region(&place.region).dns_suffix;
    let name = format!("{fs}.efs.{}.{suffix}", place.region);
    if place.use_dns {
        // The VPC resolver answers within milliseconds; without it the name never resolves, so do
        // not spend the step's deadline on it.
        if let Ok(Ok(ips)) =
            tokio::time::timeout(Duration::from_secs(2), resolver.lookup(&name)).await
        {
            if let Some(ip) = ips.first() {
                return Ok((*ip, Found::Dns { name }));
            }
        }
        tracing::debug!(%name, "no DNS answer; asking DescribeMountTargets");
    }
    let zone_id = place.zone_id.clone().unwrap_or_default();
    let policy = Policy::new(Duration::from_secs(1), Duration::from_secs(10), deadline);
    let action = "elasticfilesystem:DescribeMountTargets";
    let attempt = |_| async {
        let targets = match efs.describe_mount_targets().file_system_id(fs).send().await {
            Ok(out) => out.mount_targets().to_vec(),
            Err(err) => {
                let err = AwsError::new(action, &err).on(format!("for {fs}"));
                return Verdict::Stop(match err.code() {
                    Some("FileSystemNotFound") => EfsError::NoFileSystem {
                        fs: fs.to_string(),
                        region: place.region.clone(),
                    },
                    _ => err.into(),
                });
            }
        };
        match pick_target(&targets, &zone_id) {
            Ok(found) => Verdict::Done(found),
            Err(waiting) if waiting.others.is_none() => Verdict::Retry(waiting),
            Err(waiting) => match elsewhere(efs, fs, &zone_id, &targets, cross_zone).await {
                Ok(Some(found)) => Verdict::Done(found),
                Ok(None) => Verdict::Retry(waiting),
                Err(err) => Verdict::Stop(err),
            },
        }
    };
    let result = retry(policy, attempt, |w| {
        tracing::info!(fs, "{}; looking again in {:?}", w.last.why, w.delay);
    })
    .await;
    match result {
        Ok(found) => Ok(found),
        Err(Failure::Stopped(err)) => Err(err),
        Err(Failure::GaveUp { last: waiting, .. }) => Err(match waiting.others {
            Some(others) => EfsError::NoMountTarget {
                fs: fs.to_string(),
                zone_id,
                others,
            },
            None => EfsError::NotAvailable {
                fs: fs.to_string(),
                zone_id,
                deadline,
                last: waiting.why,
            },
        }),
    }
}

/// No target in this zone: another zone's (with `cross_zone`), a clear error for a One Zone file
/// system of another zone (waiting could never help), or `None` to keep waiting (a stack may be
/// creating this zone's target right now).
async fn elsewhere(
    efs: &aws_sdk_efs::Client,
    fs: &str,
    zone_id: &str,
    targets: &[aws_sdk_efs::types::MountTargetDescription],
    cross_zone: bool,
) -> Result<Option<(IpAddr, Found)>, EfsError> {
    if cross_zone {
        let mut available: Vec<_> = targets
            .iter()
            .filter(|t| t.life_cycle_state().as_str() == "available")
            .filter_map(|t| {
                let ip = t.ip_address()?.parse::<IpAddr>().ok()?;
                Some((
                    t.availability_zone_id()?.to_string(),
                    t.mount_target_id().to_string(),
                    ip,
                ))
            })
            .collect();
        available.sort();
        if let Some((zone, id, ip)) = available.into_iter().next() {
            tracing::warn!(fs, "no mount target in {zone_id}: mounting across zones from {zone} (cross_zone = true)");
            return Ok(Some((ip, Found::MountTarget { id, zone_id: zone })));
        }
        return Ok(None);
    }
    let described = efs
        .describe_file_systems()
        .file_system_id(fs)
        .send()
        .await
        .map_err(|err| {
            AwsError::new("elasticfilesystem:DescribeFileSystems", &err).on(format!("for {fs}"))
        })?;
    let one_zone = described
        .file_systems()
        .first()
        .and_then(|d| d.availability_zone_id().map(str::to_string));
    match one_zone {
        Some(zone) if zone != zone_id => Err(EfsError::OneZoneElsewhere {
            fs: fs.to_string(),
            zone,
            here: zone_id.to_string(),
        }),
        _ => Ok(None),
    }
}

/// Why no mount target can be used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NotYet {
    why: String,
    /// No target in this zone at all: the zones that have one (or "none").
    others: Option<String>,
}

/// The available target in this zone, or why there is none yet.
fn pick_target(
    targets: &[aws_sdk_efs::types::MountTargetDescription],
    zone_id: &str,
) -> Result<(IpAddr, Found), NotYet> {
    let here = targets
        .iter()
        .find(|t| t.availability_zone_id() == Some(zone_id));
    let why = match here {
        Some(t) if t.life_cycle_state().as_str() == "available" => {
            if let Some(ip) = t.ip_address().and_then(|ip| ip.parse::<IpAddr>().ok()) {
                return Ok((
                    ip,
                    Found::MountTarget {
                        id: t.mount_target_id().to_string(),
                        zone_id: zone_id.to_string(),
                    },
                ));
            }
            "the mount target has no IPv4 address".to_string()
        }
        Some(t) => format!(
            "mount target {} is {}",
            t.mount_target_id(),
            t.life_cycle_state().as_str()
        ),
        None => "no mount target in this zone yet".to_string(),
    };
    let others = here.is_none().then(|| {
        let mut zones: Vec<&str> = targets
            .iter()
            .filter_map(|t| t.availability_zone_id())
            .collect();
        zones.sort_unstable();
        if zones.is_empty() {
            "none".to_string()
        } else {
            zones.join(", ")
        }
    });
    Err(NotYet { why, others })
}

/// A short TCP connect to the mount target: a blocked security group is a clear sentence, not a mount
/// that hangs for minutes.
pub async fn probe(fs: &str, ip: IpAddr) -> Result<(), EfsError> {
    probe_addr(fs, SocketAddr::new(ip, NFS_PORT)).await
}

/// NFS: EFS mount targets answer on TCP 2049 only.
pub const NFS_PORT: u16 = 2049;

async fn probe_addr(fs: &str, addr: SocketAddr) -> Result<(), EfsError> {
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(EfsError::Unreachable {
            fs: fs.to_string(),
            addr,
            detail: err.to_string(),
        }),
        Err(_) => Err(EfsError::Unreachable {
            fs: fs.to_string(),
            addr,
            detail: "no answer within 3 s".to_string(),
        }),
    }
}

/// mount(2). ENODEV means the kernel has no such file system type.
pub fn mount(call: &MountCall) -> Result<(), EfsError> {
    use nix::mount::MsFlags;
    let flags = if call.read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    nix::mount::mount(
        Some(call.source.as_str()),
        &call.target,
        Some(call.fstype),
        flags,
        Some(call.data.as_str()),
    )
    .map_err(|errno| match errno {
        nix::errno::Errno::ENODEV if call.fstype.starts_with("nfs") => EfsError::NoNfs4,
        other => EfsError::Mount {
            source_spec: call.source.clone(),
            mount_point: call.target.clone(),
            detail: other.desc().to_string(),
        },
    })
}

pub fn create_mount_point(path: &Path) -> Result<(), EfsError> {
    std::fs::create_dir_all(path).map_err(|err| EfsError::MountPoint {
        path: path.to_path_buf(),
        detail: err.to_string(),
    })
}

/// `mount -t efs` from amazon-efs-utils, for TLS, IAM and access points.
pub async fn mount_with_efs_utils(mount: &EfsMount) -> Result<(), EfsError> {
    let opts = efs_utils_options(mount);
    let helper = [
        "/sbin/mount.efs",
        "/usr/sbin/mount.efs",
        "/usr/bin/mount.efs",
    ]
    .iter()
    .find(|p| Path::new(p).exists());
    if helper.is_none() {
        return Err(EfsError::NeedsEfsUtils {
            fs: mount.file_system.clone(),
            what: opts.join(", "),
        });
    }
    create_mount_point(&mount.mount_point)?;
    let mut all = opts;
    all.extend(mount.options.iter().cloned());
    if mount.read_only {
        all.push("ro".to_string());
    }
    let out = tokio::process::Command::new("mount")
        .args(["-t", "efs", "-o", &all.join(",")])
        .arg(format!("{}:{}", mount.file_system, mount.path))
        .arg(&mount.mount_point)
        .output()
        .await
        .map_err(|err| EfsError::EfsUtils {
            fs: mount.file_system.clone(),
            mount_point: mount.mount_point.clone(),
            detail: err.to_string(),
        })?;
    if !out.status.success() {
        return Err(EfsError::EfsUtils {
            fs: mount.file_system.clone(),
            mount_point: mount.mount_point.clone(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The fstab line for a mount: `_netdev,nofail` so a reboot without the network (or without embark)
/// does not hang the boot.
pub fn fstab_line(call: &MountCall) -> String {
    let mut opts = call.data.clone();
    if call.read_only {
        opts.push_str(",ro");
    }
    format!(
        "{} {} nfs4 {opts},_netdev,nofail 0 0",
        call.source,
        call.target.display()
    )
}

/// The fstab text with `line` for its mount point: replaced if one is there, appended otherwise; every
/// other line kept byte for byte. `None` when nothing would change.
pub fn fstab_with(current: &str, line: &str) -> Option<String> {
    let mount_point = line.split_whitespace().nth(1)?;
    let mut found = false;
    let mut changed = false;
    let mut out = String::with_capacity(current.len() + line.len() + 1);
    for l in current.split_inclusive('\n') {
        let body = l.trim_end_matches('\n');
        let is_ours = !body.trim_start().starts_with('#')
            && body.split_whitespace().nth(1) == Some(mount_point)
            && body
                .split_whitespace()
                .nth(2)
                .is_some_and(|t| t.starts_with("nfs"));
        if is_ours && !found {
            found = true;
            if body != line {
                changed = true;
            }
            out.push_str(line);
            out.push('\n');
        } else if is_ours {
            changed = true; // a duplicate line for the same mount point: dropped
        } else {
            out.push_str(l);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
        changed = true;
    }
    changed.then_some(out)
}

/// Writes the fstab line atomically (temporary file + rename in the same directory).
pub fn write_fstab(path: &Path, line: &str) -> Result<bool, EfsError> {
    let fail = |detail: String| EfsError::Fstab {
        path: path.to_path_buf(),
        detail,
    };
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(fail(err.to_string())),
    };
    let Some(next) = fstab_with(&current, line) else {
        return Ok(false);
    };
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0o644);
    crate::fsutil::atomic_write(path, next.as_bytes(), mode).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// Where the step reads the mount table and writes fstab lines.
#[derive(Debug, Clone)]
pub struct Paths {
    pub mountinfo: PathBuf,
    pub fstab: PathBuf,
}

impl Paths {
    /// The system's, unless `EMBARK_MOUNTINFO` / `EMBARK_FSTAB` name others: the integration tests of
    /// the real binary (and image builds that prepare another root) need that; unit tests pass paths.
    pub fn system() -> Paths {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Paths {
            mountinfo: var("EMBARK_MOUNTINFO", "/proc/self/mountinfo"),
            fstab: var("EMBARK_FSTAB", "/etc/fstab"),
        }
    }
}

/// What happened to one configured mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountResult {
    Already,
    /// TLS / IAM / access point: amazon-efs-utils did (or would do) the mount.
    EfsUtils {
        options: Vec<String>,
        planned: bool,
    },
    Planned {
        ip: IpAddr,
        found: Found,
        call: MountCall,
        fstab: Option<String>,
        kernel_ok: bool,
    },
    Mounted {
        ip: IpAddr,
        found: Found,
        fstab_written: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountReport {
    pub file_system: String,
    pub path: String,
    pub mount_point: PathBuf,
    pub result: MountResult,
}

impl MountReport {
    fn human(&self) -> String {
        let (fs, path, target) = (&self.file_system, &self.path, self.mount_point.display());
        match &self.result {
            MountResult::Already => {
                format!("{fs}:{path} on {target}: already mounted; nothing to do")
            }
            MountResult::EfsUtils {
                options,
                planned: true,
            } => format!(
                "{fs}:{path} on {target}: would run mount -t efs -o {} (amazon-efs-utils)",
                options.join(",")
            ),
            MountResult::EfsUtils { .. } => {
                format!("{fs}:{path} mounted on {target} with amazon-efs-utils")
            }
            MountResult::Planned {
                ip,
                found,
                call,
                fstab,
                kernel_ok,
            } => {
                let mut out = format!(
                    "{fs}:{path} on {target}\n  address: {ip} (found by {found})\n  call:    {call}"
                );
                if let Some(line) = fstab {
                    out.push_str(&format!("\n  fstab:   {line}"));
                }
                if !kernel_ok {
                    out.push_str(
                        "\n  note:    this kernel has no NFSv4 client; the mount itself would fail here",
                    );
                }
                out
            }
            MountResult::Mounted {
                ip,
                found,
                fstab_written,
            } => {
                let mut out = format!("{fs}:{path} mounted on {target} from {ip} ({found})");
                if let Some(file) = fstab_written {
                    out.push_str(&format!("\n  fstab line written to {}", file.display()));
                }
                out
            }
        }
    }
}

/// What the step did, for the report and stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    NotConfigured,
    Done {
        mounts: Vec<MountReport>,
        planned: bool,
        /// Why the step ran as a plan (boot's `--plan-step efs`).
        note: Option<String>,
    },
}

impl StepOutcome {
    /// The same outcome, with a line saying why it ran as it did.
    pub fn with_note(self, why: String) -> StepOutcome {
        match self {
            StepOutcome::Done {
                mounts, planned, ..
            } => StepOutcome::Done {
                mounts,
                planned,
                note: Some(why),
            },
            other => other,
        }
    }
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        match self {
            StepOutcome::NotConfigured => status::Outcome::Skipped,
            StepOutcome::Done { planned: true, .. } => status::Outcome::Planned,
            StepOutcome::Done { .. } => status::Outcome::Ok,
        }
    }

    fn detail(&self) -> String {
        match self {
            StepOutcome::NotConfigured => {
                "no file systems configured ([[efs]] or the embark:efs tag)".to_string()
            }
            StepOutcome::Done { mounts, note, .. } => note
                .iter()
                .cloned()
                .chain(mounts.iter().map(MountReport::human))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The step: mount (or plan) every configured file system, in order.
pub async fn step(
    instance: &Instance,
    resolver: &Resolver,
    paths: &Paths,
    plan: bool,
) -> Result<StepOutcome, EfsError> {
    let mounts = &instance.config.efs;
    if mounts.is_empty() {
        return Ok(StepOutcome::NotConfigured);
    }
    let place = Place {
        region: instance.identity.metadata.region.clone(),
        zone_id: instance.identity.metadata.availability_zone_id.clone(),
        use_dns: !Aws::custom_endpoint("efs"),
    };
    let client = instance.aws.efs();
    let mountinfo = std::fs::read_to_string(&paths.mountinfo).unwrap_or_default();
    let kernel_ok = this_kernel_has_nfs4();
    let mut done = Vec::new();
    for mount in mounts {
        let result = if mounted(&mountinfo, &mount.mount_point, &mount.path) {
            MountResult::Already
        } else {
            mount_one(MountOne {
                mount,
                client: &client,
                resolver,
                place: &place,
                deadline: instance.config.efs_deadline,
                fstab: &paths.fstab,
                kernel_ok,
                plan,
            })
            .await?
        };
        done.push(MountReport {
            file_system: mount.file_system.clone(),
            path: mount.path.clone(),
            mount_point: mount.mount_point.clone(),
            result,
        });
    }
    Ok(StepOutcome::Done {
        mounts: done,
        planned: plan,
        note: None,
    })
}

struct MountOne<'a> {
    mount: &'a EfsMount,
    client: &'a aws_sdk_efs::Client,
    resolver: &'a Resolver,
    place: &'a Place,
    deadline: Duration,
    fstab: &'a Path,
    kernel_ok: bool,
    plan: bool,
}

async fn mount_one(one: MountOne<'_>) -> Result<MountResult, EfsError> {
    let mount = one.mount;
    let helper_opts = efs_utils_options(mount);
    if !helper_opts.is_empty() {
        if !one.plan {
            mount_with_efs_utils(mount).await?;
        }
        return Ok(MountResult::EfsUtils {
            options: helper_opts,
            planned: one.plan,
        });
    }
    if !one.kernel_ok && !one.plan {
        return Err(EfsError::NoNfs4);
    }
    let fs = &mount.file_system;
    let (ip, found) = resolve(
        one.client,
        one.resolver,
        one.place,
        fs,
        one.deadline,
        mount.cross_zone,
    )
    .await?;
    let call = MountCall::new(mount, ip);
    if one.plan {
        return Ok(MountResult::Planned {
            ip,
            found,
            fstab: mount.fstab.then(|| fstab_line(&call)),
            call,
            kernel_ok: one.kernel_ok,
        });
    }
    probe(fs, ip).await?;
    create_mount_point(&mount.mount_point)?;
    self::mount(&call)?;
    let fstab_written = if mount.fstab && write_fstab(one.fstab, &fstab_line(&call))? {
        Some(one.fstab.to_path_buf())
    } else {
        None
    };
    Ok(MountResult::Mounted {
        ip,
        found,
        fstab_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_cfg(opts: &[&str], read_only: bool) -> EfsMount {
        EfsMount {
            file_system: "fs-12ab".into(),
            path: "/shared".into(),
            mount_point: PathBuf::from("/efs"),
            options: opts.iter().map(|s| s.to_string()).collect(),
            read_only,
            fstab: false,
            tls: false,
            iam: false,
            access_point: None,
            cross_zone: false,
        }
    }

    #[test]
    fn options_are_awss_then_users_then_addr() {
        let ip: IpAddr = "10.0.1.5".parse().unwrap();
        assert_eq!(
            mount_options(&[], ip),
            "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,addr=10.0.1.5"
        );
        assert_eq!(
            mount_options(&["noatime".into(), " ".into()], ip),
            format!("{AWS_OPTIONS},noatime,addr=10.0.1.5")
        );
        let call = MountCall::new(&mount_cfg(&["noatime"], true), ip);
        assert_eq!(call.source, "10.0.1.5:/shared");
        assert_eq!(
            call.to_string(),
            format!("mount(\"10.0.1.5:/shared\", \"/efs\", \"nfs4\", MS_RDONLY, \"{AWS_OPTIONS},noatime,addr=10.0.1.5\")")
        );
    }

    #[tokio::test]
    async fn blocked_nfs_port_is_a_sentence_about_the_security_group() {
        // A port that was free a moment ago: the connection is refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = probe_addr("fs-12ab", addr).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("security group allows TCP 2049"), "{text}");
        // And one that answers is reachable.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe_addr("fs-12ab", open.local_addr().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn efs_utils_options_only_when_asked() {
        let mut m = mount_cfg(&[], false);
        assert!(efs_utils_options(&m).is_empty());
        m.tls = true;
        m.access_point = Some("fsap-1".into());
        assert_eq!(efs_utils_options(&m), vec!["tls", "accesspoint=fsap-1"]);
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:50 / /efs rw,relatime shared:40 - nfs4 10.0.1.5:/ rw,vers=4.1,addr=10.0.1.5
99 22 0:51 / /mnt/with\\040space rw shared:41 - nfs4 fs-12ab.efs.eu-west-1.amazonaws.com:/shared rw
100 22 0:52 / /data rw shared:42 - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_shows_what_is_mounted() {
        let entries = parse_mountinfo(MOUNTINFO);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].0, PathBuf::from("/mnt/with space"));
        assert!(mounted(MOUNTINFO, Path::new("/efs"), "/"));
        assert!(mounted(MOUNTINFO, Path::new("/mnt/with space"), "/shared"));
        assert!(!mounted(MOUNTINFO, Path::new("/mnt/with space"), "/other"));
        assert!(!mounted(MOUNTINFO, Path::new("/data"), "/"));
        assert!(!mounted(MOUNTINFO, Path::new("/other"), "/"));
        assert_eq!(
            unescape("a\\777b\\04"),
            "a\\777b\\04",
            "not octal bytes: kept"
        );
    }

    #[test]
    fn nfs4_support_from_proc_or_module() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(kernel_has_nfs4(
            "nodev\tsysfs\nnodev\tnfs4\n",
            "6.1",
            tmp.path()
        ));
        assert!(!kernel_has_nfs4("nodev\tsysfs\next4\n", "6.1", tmp.path()));
        let dir = tmp.path().join("6.1/kernel/fs/nfs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nfsv4.ko.xz"), b"").unwrap();
        assert!(kernel_has_nfs4("ext4\n", "6.1", tmp.path()));
    }

    #[test]
    fn fstab_written_once_and_unrelated_lines_kept() {
        let ip: IpAddr = "10.0.1.5".parse().unwrap();
        let line = fstab_line(&MountCall::new(&mount_cfg(&[], false), ip));
        assert!(line.ends_with(",_netdev,nofail 0 0"), "{line}");
        let original = "# /etc/fstab\nUUID=abc /  ext4  defaults\t0 1\n\n/dev/vdb none swap sw 0 0";
        let first = fstab_with(original, &line).unwrap();
        assert!(first.starts_with(
            "# /etc/fstab\nUUID=abc /  ext4  defaults\t0 1\n\n/dev/vdb none swap sw 0 0\n"
        ));
        assert_eq!(first.matches(&line).count(), 1);
        assert_eq!(fstab_with(&first, &line), None, "a rerun changes nothing");
        // A changed address replaces the line instead of adding a second one.
        let moved = fstab_line(&MountCall::new(
            &mount_cfg(&[], false),
            "10.0.2.9".parse().unwrap(),
        ));
        let second = fstab_with(&first, &moved).unwrap();
        assert_eq!(second.matches("/efs nfs4").count(), 1);
        assert!(second.contains("10.0.2.9:/shared"));
    }

    #[test]
    fn fstab_file_is_replaced_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("fstab");
        std::fs::write(&path, "UUID=abc / ext4 defaults 0 1\n").unwrap();
        let line = "10.0.1.5:/ /efs nfs4 x,_netdev,nofail 0 0";
        assert!(write_fstab(&path, line).unwrap());
        assert!(!write_fstab(&path, line).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("UUID=abc / ext4 defaults 0 1\n{line}\n")
        );
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
