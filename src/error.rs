//! The error `main` prints (its Display, never Debug) and the exit code it maps to.

use crate::config::ConfigError;
use crate::context::ContextError;
use crate::efs::EfsError;
use crate::eip::EipError;
use crate::health::HealthError;
use crate::identity::IdentityError;
use crate::release::ReleaseError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration or tags: exit 2, detected before anything changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Eip(#[from] EipError),
    #[error(transparent)]
    Efs(#[from] EfsError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Logs(#[from] crate::logs::LogsError),
    /// A boot (or health) step failed; the sentence was built by the step.
    #[error("{0}")]
    Failed(String),
    /// A usage error found after the configuration was read (e.g. a step asked for but not configured).
    #[error("{0}")]
    Usage(String),
    /// This machine cannot run embark at all (no resolver, no runtime).
    #[error("{0}")]
    Setup(String),
    /// Preflight found problems; each was already printed as its own line.
    #[error("{failed} of {total} checks failed")]
    ChecksFailed {
        failed: usize,
        total: usize,
        usage: bool,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Context(ContextError::Config(_))
            | Error::Usage(_)
            | Error::ChecksFailed { usage: true, .. } => 2,
            Error::Eip(err) if err.is_usage() => 2,
            Error::Efs(err) if err.is_usage() => 2,
            Error::Release(err) if err.is_usage() => 2,
            Error::Health(err) if err.is_usage() => 2,
            Error::Logs(err) if err.is_usage() => 2,
            _ => 1,
        }
    }
}
