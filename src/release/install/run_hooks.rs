//! The release hooks of one phase, run for one release.

use super::Pipeline;
use crate::config::{Hook, HookPhase};
use crate::hooks::{self, HookEnv};
use crate::release::error::ReleaseError;

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
            tracing::info!(release = %id, "running hook {}", hooks::describe(hook));
            if let Err(why) = hooks::run(hook, &env, self.http).await {
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
}
