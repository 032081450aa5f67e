//! The error `main` prints (its Display, never Debug) and the exit code it maps to.

use crate::config::ConfigError;
use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration or tags: exit 2, detected before anything changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
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
            Error::Config(_) | Error::ChecksFailed { usage: true, .. } => 2,
            _ => 1,
        }
    }
}
