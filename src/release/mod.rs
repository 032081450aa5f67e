//! Releases in S3 (DESIGN.md "Releases in S3", docs/release-format.md), in rooms by job:
//!
//! - the format: `format` (pointer, manifest, ids, limits), `rules` (nothing escapes the release
//!   directory), `delta` (manifest deltas), `legacy` (the pull-deploy layout);
//! - reading it: `store` (S3), `manifest` (the one manifest reader), `trust` (signatures);
//! - installing it on this machine: `install` (the pipeline: begin → stage → prepare → switch),
//!   `fetch` (objects or the bundle into staging), `unpack` (the bundle's tar, bounded), `layout`
//!   (`releases/<id>`, the link, the switch record);
//! - `agent` (the deploy agent and its fleet barrier), `publish` (push, sign, rollback), `listing`.
//!
//! This file holds the release step that `boot` runs and the settings read from the configuration.

pub mod agent;
pub mod delta;
pub mod error;
pub mod failure;
pub mod fetch;
pub mod format;
pub mod install;
pub mod layout;
pub mod legacy;
pub mod listing;
pub mod manifest;
pub mod once;
pub mod overview;
pub mod progress;
pub mod publish;
pub mod roster;
pub mod rules;
pub mod shared;
pub mod store;
pub mod trust;
pub mod unpack;
pub mod validate;

pub use error::{io_failed, ReleaseError};
pub use progress::{human_bytes, Progress};

use crate::config::Config;
use crate::context::Instance;
use crate::status::{self, Reported};
use format::SourceUrl;
use install::{Pipeline, Planned, Pulled, Settings, Stage, Target};
use layout::{resolve_owner, Layout};
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

/// Everything an install needs from the configuration, checked before anything changes.
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
        validation: validation(config),
        retry_failed: false,
        shared: shared::Shared {
            root: config.release.shared_root(),
            dirs: config.release.shared_dirs.clone(),
            files: config.release.shared_files.clone(),
        },
    })
}

/// `[health] url` and what it must answer after a switch; none without a URL.
pub fn validation(config: &Config) -> Option<validate::Validation> {
    let health = &config.health;
    health.url.as_ref().map(|url| validate::Validation {
        url: url.clone(),
        expect_status: health.expect_status,
        expect_body: health.expect_body.clone(),
        successes: health.successes,
        timeout: health.timeout,
    })
}

/// `[release] trusted_keys` and `require_signature` (checked when the file was read).
pub fn trust(config: &Config) -> Result<trust::Trust, ReleaseError> {
    Ok(trust::Trust {
        keys: trust::trusted_keys(&config.release.trusted_keys).map_err(ReleaseError::Usage)?,
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

/// A staged release (holding the lock until it is switched to), and what switching it needs.
pub struct Ready {
    store: Store,
    settings: Settings,
    stage: Stage,
    once: Option<once::Scope>,
}

/// A boot in a group shares its release's run-once hooks with the fleet (the deploy named by the
/// pointer it installs); alone, it is its own leader.
fn once_scope(instance: &Instance, target: &Target) -> Option<once::Scope> {
    instance.group().map(|_| once::Scope {
        instance: instance.id().to_string(),
        token: target.token(),
        lease: instance.config.release.once_lease,
    })
}

/// The boot's store, settings and target; none without a source. The boot does not validate here:
/// its health step probes the same URL before CONTINUE. The target is resolved against the fleet's
/// failure record by the pipeline (`Pipeline::resolve`).
async fn boot_release(
    instance: &Instance,
) -> Result<Option<(Store, Settings, Target)>, ReleaseError> {
    let config = &instance.config;
    if config.release.source.is_none() {
        return Ok(None);
    }
    let store = store_of(&instance.aws, config)?;
    let settings = Settings {
        validation: None,
        ..settings(config)?
    };
    let target = install::read_target(&store, settings.format).await?;
    Ok(Some((store, settings, target)))
}

/// Fetch and verify the source's current release into `releases/<id>` (nothing when already current).
pub async fn stage(instance: &Instance, http: &reqwest::Client) -> Result<Staged, ReleaseError> {
    let Some((store, settings, target)) = boot_release(instance).await? else {
        return Ok(Staged::NotConfigured);
    };
    let pipeline = Pipeline::new(&store, &settings, http);
    let resolved = pipeline.resolve(target).await?;
    let once = once_scope(instance, &resolved.target);
    let locked = pipeline.begin().await?;
    let stage = pipeline.stage(locked, resolved).await?;
    Ok(Staged::Ready(Box::new(Ready {
        once,
        store,
        settings,
        stage,
    })))
}

/// The second half: switch to the staged release and run its hooks (after the mounts are up).
pub async fn switch(staged: Staged, http: &reqwest::Client) -> Result<StepOutcome, ReleaseError> {
    let Staged::Ready(ready) = staged else {
        return Ok(StepOutcome::NotConfigured);
    };
    let Ready {
        store,
        settings,
        stage,
        once,
    } = *ready;
    let pipeline = Pipeline::new(&store, &settings, http).sharing(once.as_ref());
    let pulled = match stage {
        Stage::Current(pulled) => pulled,
        Stage::Staged(staged) => {
            let live = pipeline.switch(pipeline.prepare(staged).await?).await?;
            pipeline.validate(live).await?
        }
    };
    Ok(StepOutcome::Pulled {
        pulled,
        link: settings.layout.link,
    })
}

/// The step on its own: fetch, verify and switch to the source's current release (or plan it).
pub async fn step(
    instance: &Instance,
    http: &reqwest::Client,
    plan: bool,
) -> Result<StepOutcome, ReleaseError> {
    if !plan {
        return switch(stage(instance, http).await?, http).await;
    }
    let Some((store, settings, target)) = boot_release(instance).await? else {
        return Ok(StepOutcome::NotConfigured);
    };
    let pipeline = Pipeline::new(&store, &settings, http);
    let target = pipeline.avoid(target).await?;
    let pulled = match pipeline.plan(&target).await? {
        Planned::Would(text) => return Ok(StepOutcome::Planned(text)),
        Planned::Current(pulled) => pulled,
    };
    Ok(StepOutcome::Pulled {
        pulled,
        link: settings.layout.link,
    })
}
