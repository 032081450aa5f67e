//! The release hooks of one phase, run for one release.

use super::Pipeline;
use crate::config::{Hook, HookPhase};
use crate::hooks::{self, HookEnv};
use crate::release::error::ReleaseError;
use crate::release::once;

impl Pipeline<'_> {
    /// The hooks of `phase` for this role, in order, in release `id`'s directory; the first failure
    /// stops them.
    pub(super) async fn run_hooks(
        &self,
        phase: HookPhase,
        id: &str,
        previous: Option<&str>,
        extra: &[(&'static str, String)],
    ) -> Result<usize, ReleaseError> {
        let settings = self.settings;
        let dir = settings.layout.release(id);
        let previous = previous.unwrap_or("").to_string();
        let mut vars = vec![
            ("EMBARK_RELEASE", id.to_string()),
            ("EMBARK_PREVIOUS", previous.clone()),
            ("EMBARK_PREVIOUS_RELEASE", previous),
            ("EMBARK_ROLE", settings.role.clone().unwrap_or_default()),
            ("EMBARK_RELEASE_DIR", dir.display().to_string()),
        ];
        vars.extend(extra.iter().cloned());
        let env = HookEnv { vars, dir: &dir };
        let selected: Vec<&Hook> = hooks::for_role(&settings.hooks, settings.role.as_deref())
            .into_iter()
            .filter(|hook| hook.phase == phase)
            .collect();
        for (index, hook) in selected.iter().enumerate() {
            let result = if hook.once {
                self.run_once(hook, id, &env).await?
            } else {
                tracing::info!(release = %id, "running hook {}", hooks::describe(hook));
                hooks::run(hook, &env, self.http).await.map(|_| ())
            };
            if let Err(why) = result {
                return Err(ReleaseError::HookFailed {
                    link: settings.layout.link.clone(),
                    release: id.to_string(),
                    hook: hooks::describe(hook),
                    why,
                    ran: index,
                    total: selected.len(),
                });
            }
        }
        Ok(selected.len())
    }

    /// A run-once hook: run here when this instance leads (or has no fleet to share it with), else
    /// the leader's outcome; a failure elsewhere is [`ReleaseError::OnceFailed`].
    async fn run_once(
        &self,
        hook: &Hook,
        id: &str,
        env: &HookEnv<'_>,
    ) -> Result<Result<(), String>, ReleaseError> {
        let name = hooks::describe(hook);
        let Some(scope) = self.once else {
            tracing::info!(release = %id, "running the run-once hook {name} (no fleet: this instance is its own leader)");
            return Ok(hooks::run(hook, env, self.http).await.map(|_| ()));
        };
        // Its place among every release hook: the same on every instance of one configuration.
        let index = self
            .settings
            .hooks
            .iter()
            .position(|h| h == hook)
            .unwrap_or_default();
        let work = || async {
            tracing::info!(release = %id, "running the run-once hook {name} (this instance leads)");
            hooks::run(hook, env, self.http).await
        };
        let ran = once::run(self.store, scope, id, index, &name, hook.timeout, work).await?;
        match ran {
            once::Ran::Here(result) => Ok(result.map(|_| ())),
            once::Ran::Elsewhere(outcome) if outcome.ok => {
                tracing::info!(release = %id, "the run-once hook {name} ran on {} at {}: not run here", outcome.instance, outcome.time);
                Ok(Ok(()))
            }
            once::Ran::Elsewhere(outcome) => Err(ReleaseError::OnceFailed {
                release: id.to_string(),
                hook: name,
                on: format!(
                    "{} at {}: {}",
                    outcome.instance,
                    outcome.time,
                    outcome.output.trim_end()
                ),
            }),
        }
    }
}
