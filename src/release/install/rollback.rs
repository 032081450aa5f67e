//! Rolling an instance back: the previous release live again, its switch hooks run again, then the
//! failure hooks, the release recorded as failed here; crash-safe (the next `begin` completes it).

use super::Pipeline;
use crate::config::HookPhase;
use crate::release::error::ReleaseError;
use crate::release::layout::Rollback;

impl Pipeline<'_> {
    /// `from` failed for `reason`: the link goes back to `to`, crash-safely (the rollback is recorded
    /// first and completed by the next run if this one dies). The error says what happened.
    pub(super) async fn roll_back(&self, from: &str, to: &str, reason: String) -> ReleaseError {
        let rollback = Rollback {
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.clone(),
        };
        tracing::error!(release = %from, "release {from} {reason}: rolling back to {to}");
        if let Err(err) = self.settings.layout.begin_rollback(&rollback) {
            return err;
        }
        if let Err(err) = self.complete_rollback(&rollback).await {
            if self.settings.layout.current().as_deref() != Some(to) {
                return ReleaseError::Failed(format!(
                    "release {from} {reason}; rolling back to {to} did not complete: {err}"
                ));
            }
            // The link is back; what failed is a hook of the release rolled back to (due again).
            return ReleaseError::RolledBack {
                release: from.to_string(),
                to: to.to_string(),
                reason: format!(
                    "{reason}; then a hook of {to} failed too ({err}): it is due at the next run"
                ),
            };
        }
        ReleaseError::RolledBack {
            release: from.to_string(),
            to: to.to_string(),
            reason,
        }
    }

    /// The link back on `to`, its switch hooks run again (OPcache must forget the bad code), then the
    /// failure hooks; the rollback record cleared. Each step is safe to repeat.
    pub(super) async fn complete_rollback(&self, rollback: &Rollback) -> Result<(), ReleaseError> {
        let layout = &self.settings.layout;
        let to = &rollback.to;
        if layout.current().as_deref() != Some(to.as_str()) {
            layout.switch(to)?;
        }
        let hooks = self
            .run_hooks(HookPhase::Switch, to, Some(&rollback.from), &[])
            .await;
        if hooks.is_ok() {
            layout.hooks_ran(to)?;
        }
        let failure_env = [
            ("EMBARK_FAILED_RELEASE", rollback.from.clone()),
            ("EMBARK_FAILURE", rollback.reason.clone()),
        ];
        let failure = self
            .run_hooks(HookPhase::Failure, to, Some(&rollback.from), &failure_env)
            .await;
        layout.end_rollback()?;
        hooks?;
        failure.map(|_| ())
    }
}
