//! The `embark release` commands: configuration in, a report out.

use serde::Serialize;

use super::format::{Manifest, SourceUrl};
use super::local::{resolve_owner, Layout};
use super::pull::{self, Settings};
use super::store::Store;
use super::{human_bytes, push, ReleaseError};
use crate::aws::Aws;
use crate::cli::{print_either, Context, ReleaseCommand};
use crate::config::Config;
use crate::error::Error;

pub async fn run(ctx: &Context, command: &ReleaseCommand) -> Result<(), Error> {
    match command {
        ReleaseCommand::Push { dir, to, message } => {
            let source = SourceUrl::parse(to).map_err(ReleaseError::Usage)?;
            let aws = Aws::load_standalone(ctx.http.clone()).await;
            let store = Store::new(&aws, source);
            let pushed = push::push(&store, dir, message).await?;
            print!("{}", pushed.human(&store.source.to_string()));
            Ok(())
        }
        ReleaseCommand::Pull { plan, json } => {
            let instance = ctx.instance().await?;
            let store = Store::new(&instance.aws, source_of(&instance.config)?);
            let settings = settings(&instance.config)?;
            let http = crate::net::http_client(&ctx.resolver).map_err(Error::Setup)?;
            let pulled = pull::pull(&store, &settings, &http, *plan).await?;
            if let Some(text) = &pulled.plan {
                println!("{text}");
                return Ok(());
            }
            print_either(&pulled, *json, |p| p.human(&settings.layout.link))
        }
        ReleaseCommand::Watch => {
            let instance = ctx.instance().await?;
            let config = &instance.config;
            let store = Store::new(&instance.aws, source_of(config)?);
            let settings = settings(config)?;
            let http = crate::net::http_client(&ctx.resolver).map_err(Error::Setup)?;
            let agent = super::watch::Agent {
                store: &store,
                settings: &settings,
                http: &http,
                aws: &instance.aws,
                instance_id: instance.identity.metadata.instance_id.clone(),
                group: instance.identity.auto_scaling_group.clone(),
                watch: config.watch.clone(),
                success_topic: config.notify.success_topic.clone(),
                error_topic: config.notify.error_topic.clone(),
                barrier_noted: Default::default(),
                state_dir: ctx.config.state_dir.clone(),
            };
            super::watch::run(&agent).await?;
            Ok(())
        }
        ReleaseCommand::Rollback { to, from } => {
            let store = match from {
                Some(url) => {
                    let source = SourceUrl::parse(url).map_err(ReleaseError::Usage)?;
                    let aws = Aws::load_standalone(ctx.http.clone()).await;
                    Store::new(&aws, source)
                }
                None => {
                    let instance = ctx.instance().await?;
                    Store::new(&instance.aws, source_of(&instance.config)?)
                }
            };
            let (from_id, to_id) = super::watch::rollback(&store, to.as_deref()).await?;
            println!(
                "{} now points at {to_id} (was {from_id}); the agents switch the fleet through the barrier",
                store.source
            );
            Ok(())
        }
        ReleaseCommand::List { from, json } => {
            let (store, config) = match from {
                Some(url) => {
                    let source = SourceUrl::parse(url).map_err(ReleaseError::Usage)?;
                    let aws = Aws::load_standalone(ctx.http.clone()).await;
                    (Store::new(&aws, source), ctx.config.clone())
                }
                None => {
                    let instance = ctx.instance().await?;
                    let source = source_of(&instance.config)?;
                    (Store::new(&instance.aws, source), instance.config)
                }
            };
            let listing = list(&store, &layout(&config)).await?;
            print_either(&listing, *json, Listing::human)
        }
    }
}

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
    })
}

#[derive(Debug, Serialize)]
pub struct Listed {
    pub release: String,
    pub created: String,
    pub who: String,
    pub message: String,
    pub files: u64,
    pub bytes: u64,
    pub current: bool,
    pub local: bool,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub source: String,
    pub current: Option<String>,
    pub releases: Vec<Listed>,
}

impl Listing {
    pub fn human(&self) -> String {
        if self.releases.is_empty() {
            return format!("no releases at {}\n", self.source);
        }
        let mut text = format!("releases at {} (* current, L present here)\n", self.source);
        for r in &self.releases {
            text += &format!(
                "{}{} {}  {}  {:>7} files {:>10}  {}  {}\n",
                if r.current { '*' } else { ' ' },
                if r.local { 'L' } else { ' ' },
                r.release,
                r.created,
                r.files,
                human_bytes(r.bytes),
                r.who,
                r.message
            );
        }
        text
    }
}

pub async fn list(store: &Store, layout: &Layout) -> Result<Listing, ReleaseError> {
    let current = match store
        .get_small(&store.source.pointer_key(), 1 << 20)
        .await?
    {
        Some((bytes, _)) => serde_json::from_slice::<super::format::Pointer>(&bytes)
            .ok()
            .map(|p| p.release),
        None => None,
    };
    let local = layout.local_releases();
    let mut releases = remote_releases(store).await?;
    for r in &mut releases {
        r.current = current.as_deref() == Some(r.release.as_str());
        r.local = local.contains(&r.release);
    }
    // Newest first; ids sort by the second, `created` by the millisecond.
    releases.sort_by(|a, b| (&b.created, &b.release).cmp(&(&a.created, &a.release)));
    Ok(Listing {
        source: store.source.to_string(),
        current,
        releases,
    })
}

/// Every release with a manifest at the source (`current` and `local` left false).
pub async fn remote_releases(store: &Store) -> Result<Vec<Listed>, ReleaseError> {
    use futures_util::stream::{self, StreamExt};
    let dirs = store.list_dirs(&store.source.key("releases/")).await?;
    let ids: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.trim_end_matches('/').rsplit('/').next())
        .filter(|id| super::format::check_id(id).is_ok())
        .map(str::to_string)
        .collect();
    let manifests: Vec<Result<Option<Listed>, ReleaseError>> = stream::iter(ids)
        .map(|id| async move {
            let key = store.source.manifest_key(&id);
            let Some((bytes, _)) = store.get_small(&key, 256 << 20).await? else {
                return Ok(None); // an interrupted push: no manifest, never current
            };
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                ReleaseError::Failed(format!("{} is not a valid manifest: {e}", store.url(&key)))
            })?;
            Ok(Some(Listed {
                current: false,
                local: false,
                release: id,
                created: m.created,
                who: m.who,
                message: m.message,
                files: m.files,
                bytes: m.bytes,
            }))
        })
        .buffered(8)
        .collect()
        .await;
    let mut releases = Vec::new();
    for m in manifests {
        if let Some(listed) = m? {
            releases.push(listed);
        }
    }
    Ok(releases)
}
