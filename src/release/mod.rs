//! Releases in S3 (DESIGN.md "Releases in S3", docs/release-format.md): push, pull, verify, switch.

pub mod commands;
pub mod delta;
pub mod error;
pub mod format;
pub mod legacy;
pub mod listing;
pub mod local;
pub mod progress;
pub mod pull;
pub mod push;
pub mod signing;
pub mod store;
pub mod unpack;
pub mod watch;

pub use error::{io_failed, ReleaseError};
pub use progress::{human_bytes, Progress};

use crate::config::Config;
use crate::context::Instance;
use crate::status::{self, Reported};
use format::SourceUrl;
use local::{resolve_owner, Layout};
use pull::{Pulled, Settings};
use store::Store;

/// The source from the group's `embark:release` tag (already applied) or the file.
pub fn source_of(config: &Config) -> Result<SourceUrl, ReleaseError> {
    let text = config.release.source.as_deref().ok_or_else(|| {
        ReleaseError::Usage(
            "no release source configured: set the group's embark:release tag or [release] source"
                .into(),
        )
    })?;
    SourceUrl::parse(text).map_err(ReleaseError::Usage)
}

/// The configured source's store, in the bucket's region when `[release] region` names it.
pub fn store_of(aws: &crate::aws::Aws, config: &Config) -> Result<Store, ReleaseError> {
    Ok(Store::new(aws, source_of(config)?).in_region(config.release.region.as_deref()))
}

pub fn layout(config: &Config) -> Layout {
    Layout {
        root: config.release.root.clone(),
        link: config.release.link.clone(),
    }
}

/// Everything a pull needs from the configuration, checked before anything changes.
pub fn settings(config: &Config) -> Result<Settings, ReleaseError> {
    let owner = config
        .release
        .owner
        .as_deref()
        .map(resolve_owner)
        .transpose()?;
    Ok(Settings {
        layout: layout(config),
        format: config.release.format,
        keep: config.release.keep as usize,
        owner,
        hooks: config.release.hooks.clone(),
        role: config.role.clone(),
        trust: trust(config)?,
    })
}

/// `[release] trusted_keys` and `require_signature` (checked when the file was read).
pub fn trust(config: &Config) -> Result<signing::Trust, ReleaseError> {
    Ok(signing::Trust {
        keys: signing::trusted_keys(&config.release.trusted_keys).map_err(ReleaseError::Usage)?,
        required: config.release.require_signature,
    })
}

/// What the release step did, for the report and stdout.
#[derive(Debug)]
pub enum StepOutcome {
    NotConfigured,
    Planned(String),
    Pulled { pulled: Pulled, link: String },
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        match self {
            StepOutcome::NotConfigured => status::Outcome::Skipped,
            StepOutcome::Planned(_) => status::Outcome::Planned,
            StepOutcome::Pulled { .. } => status::Outcome::Ok,
        }
    }

    fn detail(&self) -> String {
        match self {
            StepOutcome::NotConfigured => {
                "no release source configured (embark:release tag or [release] source)".to_string()
            }
            StepOutcome::Planned(text) => text.clone(),
            StepOutcome::Pulled { pulled, link } => pulled.human(link),
        }
    }
}

/// The first half of the step, which a boot runs beside the EIP and EFS steps (it needs nothing from
/// them): the release fetched, verified and staged under the lock, not yet switched to.
pub enum Staged {
    NotConfigured,
    Ready(Box<Ready>),
}

/// A staged release, its settings, and the lock held until it is switched to.
pub struct Ready {
    pulled: Pulled,
    settings: Settings,
    _lock: local::Lock,
}

/// Fetch and verify the source's current release into `releases/<id>` (nothing when already current).
pub async fn stage(instance: &Instance, http: &reqwest::Client) -> Result<Staged, ReleaseError> {
    let config = &instance.config;
    if config.release.source.is_none() {
        return Ok(Staged::NotConfigured);
    }
    let store = store_of(&instance.aws, config)?;
    let settings = settings(config)?;
    let target = pull::read_target(&store, settings.format).await?;
    let lock = settings.layout.lock().await?;
    pull::finish_interrupted(&settings, http).await?;
    let pulled = pull::stage_target(&store, &settings, &target, false).await?;
    Ok(Staged::Ready(Box::new(Ready {
        pulled,
        settings,
        _lock: lock,
    })))
}

/// The second half: switch to the staged release and run its hooks (after the mounts are up).
pub async fn switch(staged: Staged, http: &reqwest::Client) -> Result<StepOutcome, ReleaseError> {
    let Staged::Ready(ready) = staged else {
        return Ok(StepOutcome::NotConfigured);
    };
    let Ready {
        mut pulled,
        settings,
        _lock,
    } = *ready;
    if !pulled.already_current {
        pull::switch_to(&settings, &mut pulled, http).await?;
    }
    Ok(StepOutcome::Pulled {
        pulled,
        link: settings.layout.link,
    })
}

/// The step: fetch, verify and switch to the source's current release (or plan it).
pub async fn step(
    instance: &Instance,
    http: &reqwest::Client,
    plan: bool,
) -> Result<StepOutcome, ReleaseError> {
    let config = &instance.config;
    if config.release.source.is_none() {
        return Ok(StepOutcome::NotConfigured);
    }
    let store = store_of(&instance.aws, config)?;
    let settings = settings(config)?;
    let mut pulled = pull::pull(&store, &settings, http, plan).await?;
    Ok(match pulled.plan.take() {
        Some(text) => StepOutcome::Planned(text),
        None => StepOutcome::Pulled {
            pulled,
            link: settings.layout.link,
        },
    })
}
