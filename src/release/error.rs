//! How a release command fails: a variant an operator can act on, the cause kept as the source.

use std::path::PathBuf;

use crate::aws::AwsError;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Bad configuration or arguments (exit 2), found before anything changed.
    #[error("{0}")]
    Usage(String),
    /// An S3 call failed; the sentence names the action, the key and the grant that is missing.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// This machine's disk is full.
    #[error("no space left on the device while {action} {}: free some space (or lower [release] keep) and run `embark release pull` again", path.display())]
    NoSpace { action: String, path: PathBuf },
    /// A local file system is mounted read-only.
    #[error("cannot {action} {}: the file system is read-only: put [release] root (and the state dir) on a writable file system, or remount it read-write", path.display())]
    ReadOnly { action: String, path: PathBuf },
    /// Reading or writing a local file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another push changed the pointer first (conditional write refused).
    #[error("{0}")]
    Conflict(String),
    /// Nothing was ever pushed to the source.
    #[error("no release has been published at {source_url}: push one with `embark release push DIR --to {source_url}`")]
    NotPublished { source_url: String },
    /// The pointer names a release whose manifest is not there (an interrupted or partial push).
    #[error("{url} is missing: the release {release} is incomplete; push again")]
    ManifestMissing { url: String, release: String },
    /// The manifest is not the one the pointer (or the signature) names.
    #[error("the manifest of release {release} does not match the sha256 in the pointer: the source is corrupt or was changed by hand; push again")]
    ManifestMismatch { release: String },
    /// The manifest breaks a rule (not JSON, another release's, a path that escapes, ...).
    #[error("refusing release {release} from {source_url}: {why}; nothing was written")]
    Refused {
        release: String,
        source_url: String,
        why: String,
    },
    /// The release is not signed, and this instance requires a signature.
    #[error("refusing release {release} from {source_url}: it is not signed, and [release] require_signature is on (push it with `embark release push --sign KEY`); current is untouched")]
    Unsigned { release: String, source_url: String },
    /// A pull-deploy release cannot carry a signature, and this instance requires one.
    #[error("refusing release {release} from {source_url}: a pull-deploy release cannot be signed, and [release] require_signature is on; current is untouched")]
    Unsignable { release: String, source_url: String },
    /// The signature does not verify with a trusted key.
    #[error("refusing release {release} from {source_url}: {why}; current is untouched")]
    Untrusted {
        release: String,
        source_url: String,
        why: String,
    },
    /// A file's bytes are not the ones the manifest promises.
    #[error("'{path}' of release {release} does not match its sha256 in the manifest ({why}): the source is corrupt; nothing was switched")]
    Corrupt {
        release: String,
        path: String,
        why: String,
    },
    /// A prepare hook failed: nothing was switched, and the release is recorded as failed here.
    #[error("release {release} was not switched to: its prepare hook {hook} failed: {why}; nothing was switched")]
    PrepareFailed {
        release: String,
        hook: String,
        why: String,
    },
    /// The release failed after its switch (a switch hook, or validation) and the previous one is
    /// live again.
    #[error("rolled back to {to}: release {release} {reason}")]
    RolledBack {
        release: String,
        to: String,
        reason: String,
    },
    /// The release failed validation and there is no earlier release to go back to.
    #[error(
        "release {release} is live but {reason}; there is no earlier release here to roll back to"
    )]
    NotValidated { release: String, reason: String },
    /// The release failed on this machine before; it is installed again only when asked.
    #[error("release {release} failed here at {time} ({reason}); it is not installed again: push a newer release, or run `embark release pull --retry-failed` to try it once more")]
    FailedHere {
        release: String,
        reason: String,
        time: String,
    },
    /// The release failed on another instance of the fleet, and no good release is named.
    #[error("release {release} failed on {instance} ({reason}) and names no release to go back to; push a newer release, or run `embark release pull --retry-failed`")]
    FailedInFleet {
        release: String,
        instance: String,
        reason: String,
    },
    /// A run-once hook failed on the instance that ran it (its leader): this instance does not go on
    /// with the release either; the leader reports it to the fleet.
    #[error("release {release}: its run-once hook {hook} failed on {on}")]
    OnceFailed {
        release: String,
        hook: String,
        /// The leader, when, and why: "i-0abc at 2026-…: it exited with status 1".
        on: String,
    },
    /// A hook of a release that is live failed.
    #[error("switched {link} to release {release}, but the hook {hook} failed: {why} ({ran} of {total} hooks had run)")]
    HookFailed {
        link: String,
        release: String,
        hook: String,
        why: String,
        ran: usize,
        total: usize,
    },
    /// Any other failure; the sentence says what, why and what to do.
    #[error("{0}")]
    Failed(String),
}

impl ReleaseError {
    pub fn is_usage(&self) -> bool {
        matches!(self, ReleaseError::Usage(_))
    }
}

/// An I/O failure on this machine; a full disk says so plainly. `action` reads "writing", "creating".
pub fn io_failed(action: &str, path: &std::path::Path, err: &std::io::Error) -> ReleaseError {
    if err.raw_os_error() == Some(nix::libc::ENOSPC) {
        ReleaseError::NoSpace {
            action: action.to_string(),
            path: path.to_path_buf(),
        }
    } else if err.raw_os_error() == Some(nix::libc::EROFS) {
        ReleaseError::ReadOnly {
            action: infinitive(action),
            path: path.to_path_buf(),
        }
    } else {
        ReleaseError::Io {
            action: infinitive(action),
            path: path.to_path_buf(),
            source: std::io::Error::new(err.kind(), err.to_string()),
        }
    }
}

/// "writing" → "write", "creating the link" → "create the link": the sentence reads "cannot write …",
/// never "cannot writing".
fn infinitive(action: &str) -> String {
    const VERBS: [(&str, &str); 9] = [
        ("creating", "create"),
        ("moving", "move"),
        ("opening", "open"),
        ("reading", "read"),
        ("removing", "remove"),
        ("setting", "set"),
        ("switching", "switch"),
        ("syncing", "sync"),
        ("writing", "write"),
    ];
    let (verb, rest) = action.split_once(' ').unwrap_or((action, ""));
    let base = VERBS
        .iter()
        .find(|(ing, _)| *ing == verb)
        .map_or(verb, |(_, base)| base);
    if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base} {rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_sentences_read_as_english() {
        let denied = std::io::Error::from_raw_os_error(nix::libc::EACCES);
        let path = std::path::Path::new("/var/www/app");
        for (action, expected) in [
            ("writing", "cannot write /var/www/app"),
            ("creating", "cannot create /var/www/app"),
            ("reading", "cannot read /var/www/app"),
            ("moving into place", "cannot move into place /var/www/app"),
            ("setting the mode of", "cannot set the mode of /var/www/app"),
            ("syncing", "cannot sync /var/www/app"),
        ] {
            let text = io_failed(action, path, &denied).to_string();
            assert!(text.starts_with(expected), "{action}: {text}");
        }
        let read_only = std::io::Error::from_raw_os_error(nix::libc::EROFS);
        let text = io_failed("creating", path, &read_only).to_string();
        assert!(
            text.starts_with(
                "cannot create /var/www/app: the file system is read-only: put [release] root"
            ),
            "{text}"
        );
        let full = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let text = io_failed("writing", path, &full).to_string();
        assert!(
            text.starts_with("no space left on the device while writing /var/www/app"),
            "{text}"
        );
    }
}
