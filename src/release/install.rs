//! The install pipeline: the one way a release becomes live on this machine, for the boot, `release
//! pull` and the deploy agent alike (DESIGN.md "A release's life on an instance"):
//!
//! ```text
//! begin (the lock; an interrupted switch or rollback finished) → stage (fetch + verify into
//!   releases/<id>) → prepare (prepare hooks in the staged tree) → switch (the link, the switch
//!   record, the switch hooks, pruning) → validate (the health URL) → (roll back)
//! ```
//!
//! Each phase consumes the value the one before it made ([`Locked`] → [`Stage`] → [`Staged`] →
//! [`Prepared`] → [`Live`]), so switching to something that was not staged, or without the lock, does
//! not compile. A switch hook or a validation that fails puts the previous release back (its switch
//! hooks run again, then the failure hooks) and records the release as failed here.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use super::error::{io_failed, ReleaseError};
use super::failure::{self, FailureRecord};
use super::fetch::{self, Fetched, Window};
use super::format::{Node, Pointer};
use super::layout::{Layout, Lock};
use super::legacy::Latest;
use super::manifest::{self, Verified};
use super::once::Scope;
use super::progress::human_bytes;
use super::shared::Shared;
use super::store::Store;
use super::trust::Trust;
use super::validate::{validate, Validation};
use crate::config::{Hook, HookPhase, ReleaseFormat};
use crate::fsutil::remove_tree;

/// Everything an install needs from the configuration, checked before anything changes.
pub struct Settings {
    pub layout: Layout,
    pub format: ReleaseFormat,
    pub keep: usize,
    pub owner: Option<(u32, u32)>,
    pub hooks: Vec<Hook>,
    pub role: Option<String>,
    /// Whose signatures are accepted, and whether one is required.
    pub trust: Trust,
    /// What a release must answer after its switch (`[health] url`); none: not validated.
    pub validation: Option<Validation>,
    /// Install a release even though it failed here or in the fleet before (`--retry-failed`).
    pub retry_failed: bool,
    /// Paths linked to shared storage while a release is prepared.
    pub shared: Shared,
}

/// What the source says is current: an embark pointer, or a pull-deploy `latest-deploy`.
#[derive(Debug, Clone)]
pub enum Target {
    Embark(Box<Pointer>),
    PullDeploy(Latest),
}

impl Target {
    pub fn id(&self) -> String {
        match self {
            Target::Embark(pointer) => pointer.release.clone(),
            Target::PullDeploy(latest) => latest.id(),
        }
    }

    /// Names this deploy of the release: a rollback to a release deployed before is a new deploy
    /// (its barrier, waves and run-once hooks are its own).
    pub fn token(&self) -> String {
        let stamp = match self {
            Target::Embark(pointer) => format!("{} {}", pointer.release, pointer.time),
            Target::PullDeploy(latest) => format!("{} {}", latest.stamp, latest.epoch),
        };
        super::format::sha256_hex(stamp.as_bytes())[..12].to_string()
    }

    pub fn pointer(&self) -> Option<&Pointer> {
        match self {
            Target::Embark(pointer) => Some(pointer),
            Target::PullDeploy(_) => None,
        }
    }
}

pub async fn read_target(store: &Store, format: ReleaseFormat) -> Result<Target, ReleaseError> {
    Ok(match format {
        ReleaseFormat::Embark => Target::Embark(Box::new(manifest::read_pointer(store).await?)),
        ReleaseFormat::PullDeploy => Target::PullDeploy(super::legacy::read_latest(store).await?),
    })
}

/// The target to stage, and what a machine with no release fetched of it while the fleet's failure
/// record was asked ([`Pipeline::resolve`]). From a bare target: nothing fetched yet.
pub struct Resolved<'a> {
    pub target: Target,
    early: Option<Early<'a>>,
}

/// The target's manifest (read and verified, or why not) and its bundle's first window of ranges.
struct Early<'a> {
    verified: Result<Verified, ReleaseError>,
    window: Option<Window<'a>>,
}

impl From<Target> for Resolved<'_> {
    fn from(target: Target) -> Self {
        Resolved {
            target,
            early: None,
        }
    }
}

/// What a plan found: current already, or what would be done.
pub enum Planned {
    Current(Pulled),
    Would(String),
}

/// The pipeline over one source, one configuration and the client the HTTP hooks use.
#[derive(Clone, Copy)]
pub struct Pipeline<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub http: &'a reqwest::Client,
    /// The deploy whose run-once hooks are shared with the fleet; none: this instance leads.
    pub once: Option<&'a Scope>,
}

/// This machine's releases are ours: the lock is held, and an interrupted switch was finished.
pub struct Locked {
    lock: Lock,
}

/// What staging found.
pub enum Stage {
    /// The target is current here already, and its tree is intact: nothing to do.
    Current(Pulled),
    /// Fetched and verified into `releases/<id>` (or found there); nothing live changed.
    Staged(Staged),
}

/// A release fetched and verified into `releases/<id>`, the lock still held.
pub struct Staged {
    lock: Lock,
    pulled: Pulled,
}

/// A staged release made ready to go live (its prepare hooks ran).
pub struct Prepared {
    lock: Lock,
    pulled: Pulled,
}

/// A release the link points at, its switch hooks run, not validated yet.
pub struct Live {
    lock: Lock,
    pulled: Pulled,
}

impl Staged {
    pub fn pulled(&self) -> &Pulled {
        &self.pulled
    }
}

impl<'a> Pipeline<'a> {
    pub fn new(store: &'a Store, settings: &'a Settings, http: &'a reqwest::Client) -> Self {
        Pipeline {
            store,
            settings,
            http,
            once: None,
        }
    }

    /// Run-once hooks shared with the fleet through `scope`'s leases (the agent, a boot in a group).
    pub fn sharing(self, scope: Option<&'a Scope>) -> Self {
        Pipeline {
            once: scope,
            ..self
        }
    }

    /// Takes the lock (waiting for another pull), then finishes what an interrupted run left undone:
    /// a rollback completed, the record repaired, the hooks of the current release run if they never
    /// did (a failing one is still due at the next run).
    pub async fn begin(&self) -> Result<Locked, ReleaseError> {
        let lock = self.settings.layout.lock().await?;
        let layout = &self.settings.layout;
        if let Some(rollback) = layout.rollback() {
            tracing::warn!(
                release = %rollback.from,
                "the rollback from {} to {} was interrupted: completing it",
                rollback.from,
                rollback.to
            );
            self.complete_rollback(&rollback).await?;
        }
        if let Some(due) = layout.repair()? {
            tracing::warn!(
                release = %due,
                "the hooks of release {due} did not run after its switch (interrupted, or one failed): running them now"
            );
            let previous = layout.state().previous;
            self.run_hooks(HookPhase::Switch, &due, previous.as_deref(), &[])
                .await?;
            layout.hooks_ran(&due)?;
        }
        Ok(Locked { lock })
    }

    /// The target, unless the fleet recorded it as failed ([`Pipeline::avoid`]): then the release
    /// its instance went back to. On a machine with no release yet the bundle will be fetched, so
    /// the record is asked beside the manifest and the bundle's first window, which the stage then
    /// uses: a first boot waits on one round of requests, not two. Nothing here changes.
    pub async fn resolve(&self, target: Target) -> Result<Resolved<'a>, ReleaseError> {
        let pointer = match &target {
            Target::Embark(pointer) if self.bare(&pointer.release) => pointer.clone(),
            _ => return Ok(self.avoid(target).await?.into()),
        };
        let asked = async { tokio::join!(self.recorded(&target), self.manifest(&pointer)) };
        let ((record, verified), window) = fetch::beside(self.store, &pointer.release, asked).await;
        // A release the fleet went back from: what was fetched of it goes unused.
        if let Some(instead) = failure::instead(self.store, record?).await? {
            return Ok(Target::Embark(Box::new(instead)).into());
        }
        Ok(Resolved {
            target,
            early: Some(Early { verified, window }),
        })
    }

    /// The target, unless the fleet recorded it as failed: then the release the failing instance
    /// went back to, said in a warning; with no release to go back to, a refusal.
    pub async fn avoid(&self, target: Target) -> Result<Target, ReleaseError> {
        let record = self.recorded(&target).await?;
        Ok(match failure::instead(self.store, record).await? {
            Some(pointer) => Target::Embark(Box::new(pointer)),
            None => target,
        })
    }

    /// The fleet's record of the target's failure, if one is worth asking: not for a release current
    /// here already (an up-to-date pull stays one GET), nor for one tried again on purpose.
    async fn recorded(&self, target: &Target) -> Result<Option<FailureRecord>, ReleaseError> {
        let Target::Embark(pointer) = target else {
            return Ok(None);
        };
        let current = self.settings.layout.current();
        if self.settings.retry_failed || current.as_deref() == Some(pointer.release.as_str()) {
            return Ok(None);
        }
        failure::read(self.store, &pointer.release).await
    }

    /// No release is current here and `id` is not staged: its bundle will be fetched.
    fn bare(&self, id: &str) -> bool {
        let layout = &self.settings.layout;
        layout.current().is_none() && !present(layout, id)
    }

    /// Fetches and verifies the target into `releases/<id>`, unless it is current already or staged
    /// already. A failure leaves nothing behind and nothing switched.
    pub async fn stage(
        &self,
        locked: Locked,
        resolved: Resolved<'a>,
    ) -> Result<Stage, ReleaseError> {
        let Resolved { target, early } = resolved;
        let layout = &self.settings.layout;
        let id = target.id();
        let current = layout.current();
        if let Some(failed) = layout.failures().remove(&id) {
            if !self.settings.retry_failed {
                return Err(ReleaseError::FailedHere {
                    release: id,
                    reason: failed.reason,
                    time: failed.time,
                });
            }
            tracing::info!(release = %id, "trying release {id} again, which failed here at {} ({})", failed.time, failed.reason);
            layout.forget_failed(&id)?;
        }
        let present = present(layout, &id);
        let mut pulled = Pulled {
            release: id.clone(),
            previous: current.clone(),
            ..Pulled::default()
        };
        let pointer = match &target {
            Target::PullDeploy(latest) => {
                self.refuse_unsigned(&id)?;
                pulled.files = latest.count;
                if current.as_deref() == Some(id.as_str()) && present {
                    return Ok(Stage::Current(already_current(id)));
                }
                if !present {
                    self.stage_legacy(latest, &mut pulled).await?;
                }
                return Ok(Stage::Staged(Staged {
                    lock: locked.lock,
                    pulled,
                }));
            }
            Target::Embark(pointer) => pointer,
        };
        // Nothing here yet (a first boot): the bundle will be fetched, so its first window of ranges
        // comes beside the manifest (or came while the target was resolved); none of it is unpacked
        // before the manifest bounds it.
        let (verified, head_start) = match early {
            Some(Early { verified, window }) => (verified?, window),
            None if current.is_none() && !present => {
                let (verified, window) =
                    fetch::beside(self.store, &id, self.manifest(pointer)).await;
                (verified?, window)
            }
            None => (self.manifest(pointer).await?, None),
        };
        let staged = present && intact(layout, &self.settings.shared, &id, &verified);
        if current.as_deref() == Some(id.as_str()) && staged {
            return Ok(Stage::Current(already_current(id)));
        }
        pulled.files = verified.files();
        if !staged {
            // Where each content already is here: read from every local manifest, so only when
            // needed (a release already staged, as the agent finds it after its barrier, needs none).
            let mut local = layout.local_objects(|p| self.settings.shared.covers(p));
            for (sha256, path) in layout.salvaged(&id, &verified.nodes) {
                local.entry(sha256).or_insert(path);
            }
            let partial = layout.partial(&id);
            let owner = self.settings.owner;
            let filled = fetch::fill(
                self.store,
                &id,
                &verified.nodes,
                &partial,
                (&local, head_start),
                owner,
            )
            .await
            .and_then(|fetched| {
                pulled.count(fetched);
                layout.commit(&id, &verified.bytes)
            });
            layout.drop_salvage();
            if let Err(err) = filled {
                let _ = remove_tree(&partial);
                return Err(err);
            }
        }
        Ok(Stage::Staged(Staged {
            lock: locked.lock,
            pulled,
        }))
    }

    /// Makes the staged tree ready to go live: its prepare hooks run in it (`config:cache`,
    /// `cache:warmup`). A failure switches nothing and records the release as failed here.
    pub async fn prepare(&self, staged: Staged) -> Result<Prepared, ReleaseError> {
        let Staged { lock, pulled } = staged;
        let layout = &self.settings.layout;
        let id = &pulled.release;
        let dir = layout.release(id);
        if let Err(err) = self.settings.shared.link_into(&dir, self.settings.owner) {
            layout.record_failed(id, &err.to_string())?;
            return Err(err);
        }
        if let Err(err) = self
            .run_hooks(HookPhase::Prepare, id, layout.current().as_deref(), &[])
            .await
        {
            let (hook, why) = match err {
                ReleaseError::HookFailed { hook, why, .. } => (hook, why),
                ReleaseError::OnceFailed { .. } => {
                    layout.record_failed(id, &err.to_string())?;
                    return Err(err);
                }
                other => ("(none)".to_string(), other.to_string()),
            };
            layout.record_failed(id, &format!("its prepare hook {hook} failed: {why}"))?;
            return Err(ReleaseError::PrepareFailed {
                release: id.clone(),
                hook,
                why,
            });
        }
        Ok(Prepared { lock, pulled })
    }

    /// Switches the link to the prepared release and runs its switch hooks, then prunes old
    /// releases. A failing hook rolls back to the previous release; with none, the release stays and
    /// its hooks are due at the next run.
    pub async fn switch(&self, prepared: Prepared) -> Result<Live, ReleaseError> {
        let Prepared { lock, mut pulled } = prepared;
        let layout = &self.settings.layout;
        let id = pulled.release.clone();
        pulled.previous = layout.switch(&id)?;
        tracing::info!(release = %id, "switched {} to release {id}", layout.link);
        match self
            .run_hooks(HookPhase::Switch, &id, pulled.previous.as_deref(), &[])
            .await
        {
            Ok(ran) => pulled.hooks_run = ran,
            Err(err) => {
                let reason = match &err {
                    ReleaseError::HookFailed { hook, why, .. } => {
                        format!("failed its switch hook {hook}: {why}")
                    }
                    other => format!("failed its switch hooks: {other}"),
                };
                return Err(match pulled.previous.clone() {
                    Some(to) => self.roll_back(&id, &to, reason).await,
                    None => err,
                });
            }
        }
        layout.hooks_ran(&id)?;
        pulled.pruned = layout.prune(self.settings.keep);
        Ok(Live { lock, pulled })
    }

    /// Probes the live release (when `[health] url` is set); a failure rolls back to the previous
    /// release. The lock is released when this returns.
    pub async fn validate(&self, live: Live) -> Result<Pulled, ReleaseError> {
        let Live { lock, mut pulled } = live;
        let Some(validation) = &self.settings.validation else {
            return Ok(pulled);
        };
        match validate(self.http, validation).await {
            Ok(took) => {
                tracing::info!(release = %pulled.release, "release {} validated in {:.1} s", pulled.release, took.as_secs_f64());
                pulled.validated_ms = Some(took.as_millis() as u64);
                drop(lock);
                Ok(pulled)
            }
            Err(why) => {
                let reason = format!("failed validation: {why}");
                Err(match pulled.previous.clone() {
                    Some(to) => self.roll_back(&pulled.release, &to, reason).await,
                    None => ReleaseError::NotValidated {
                        release: pulled.release,
                        reason,
                    },
                })
            }
        }
    }

    /// Every phase in order: the target installed, live and validated (or current already).
    pub async fn install(&self, resolved: Resolved<'a>) -> Result<Pulled, ReleaseError> {
        let locked = self.begin().await?;
        match self.stage(locked, resolved).await? {
            Stage::Current(pulled) => Ok(pulled),
            Stage::Staged(staged) => {
                let live = self.switch(self.prepare(staged).await?).await?;
                self.validate(live).await
            }
        }
    }

    /// What [`Pipeline::install`] would do; nothing changes and no lock is taken.
    pub async fn plan(&self, target: &Target) -> Result<Planned, ReleaseError> {
        let layout = &self.settings.layout;
        let id = target.id();
        let current = layout.current();
        let from = current.as_deref().unwrap_or("nothing");
        let present = present(layout, &id);
        let pointer = match target {
            Target::PullDeploy(latest) => {
                self.refuse_unsigned(&id)?;
                if current.as_deref() == Some(id.as_str()) && present {
                    return Ok(Planned::Current(already_current(id)));
                }
                return Ok(Planned::Would(format!(
                    "would switch {} from {from} to the pull-deploy release {} ({} files): fetch every file",
                    layout.link, latest.stamp, latest.count
                )));
            }
            Target::Embark(pointer) => pointer,
        };
        let verified = self.manifest(pointer).await?;
        let staged = present && intact(layout, &self.settings.shared, &id, &verified);
        if current.as_deref() == Some(id.as_str()) && staged {
            return Ok(Planned::Current(already_current(id)));
        }
        let head = format!(
            "would switch {} from {from} to release {id} ({} files)",
            layout.link,
            verified.files()
        );
        Ok(Planned::Would(if staged {
            format!("{head}: already staged here, nothing to fetch")
        } else {
            format!(
                "{head}: {}",
                fetch_plan(
                    &verified.nodes,
                    &layout.local_objects(|p| self.settings.shared.covers(p)),
                )
            )
        }))
    }

    /// The target's manifest, held to this machine's trust (a local copy saves the fetch).
    async fn manifest(&self, pointer: &Pointer) -> Result<Verified, ReleaseError> {
        let layout = Some(&self.settings.layout);
        manifest::read(self.store, pointer, &self.settings.trust, layout).await
    }

    fn refuse_unsigned(&self, id: &str) -> Result<(), ReleaseError> {
        if self.settings.trust.required {
            return Err(ReleaseError::Unsignable {
                release: id.to_string(),
                source_url: self.store.source.to_string(),
            });
        }
        Ok(())
    }

    /// The pull-deploy layout: every file fetched and hashed (it has no hashes to reuse anything by).
    async fn stage_legacy(&self, latest: &Latest, pulled: &mut Pulled) -> Result<(), ReleaseError> {
        let layout = &self.settings.layout;
        let partial = layout.partial(&pulled.release);
        let _ = remove_tree(&partial);
        let result = async {
            fs::create_dir(&partial).map_err(|e| io_failed("creating", &partial, &e))?;
            let (manifest, files, bytes) =
                super::legacy::stage(self.store, latest, &partial).await?;
            pulled.fetched_objects = files;
            pulled.fetched_bytes = bytes;
            fetch::finish(&[], &partial, self.settings.owner)?;
            layout.commit(&pulled.release, &manifest)
        }
        .await;
        if result.is_err() {
            let _ = remove_tree(&partial);
        }
        result
    }
}

/// Release `id` is in `releases/` with its manifest's copy (whether intact is asked separately).
fn present(layout: &Layout, id: &str) -> bool {
    layout.release(id).is_dir() && layout.manifest_copy(id).is_file()
}

fn already_current(release: String) -> Pulled {
    Pulled {
        release,
        already_current: true,
        ..Pulled::default()
    }
}

/// A release already under `releases/<id>` is used only when its manifest copy is the one the pointer
/// names and its tree matches that manifest; otherwise it is fetched again.
fn intact(layout: &Layout, shared: &Shared, id: &str, verified: &Verified) -> bool {
    // Read from the copy already (the usual case): no second read of a manifest that may be large.
    let same = verified.from_local_copy
        || fs::read(layout.manifest_copy(id)).is_ok_and(|bytes| bytes == verified.bytes);
    let check = if same {
        layout.matches(id, &shared.kept(&verified.nodes))
    } else {
        Err("its manifest copy is not the one the pointer names".to_string())
    };
    match check {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(release = %id, "the local copy of release {id} cannot be used ({why}); fetching it again");
            false
        }
    }
}

/// What fetching `nodes` takes, given what is here already, and why.
fn fetch_plan(nodes: &[Node], local: &HashMap<String, PathBuf>) -> String {
    match fetch::Way::choose(nodes, local) {
        fetch::Way::Bundle(why) => format!("fetch the bundle ({why})"),
        fetch::Way::Objects {
            fetch,
            bytes,
            reuse,
        } => format!(
            "fetch {fetch} objects ({}), reuse {reuse} local files",
            human_bytes(bytes)
        ),
    }
}

mod report;
mod rollback;
mod run_hooks;

pub use report::Pulled;

#[cfg(test)]
mod tests;
