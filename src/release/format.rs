//! The release format in S3 (docs/release-format.md): the manifest, the `current` pointer, release ids
//! and the limits a reader holds them to. The rules that keep a release inside its directory are in
//! `rules.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::s3url::SourceUrl;

pub const MANIFEST_FORMAT: &str = "embark-release/1";
pub const POINTER_FORMAT: &str = "embark-pointer/1";
/// The largest manifest embark reads (a million files of long names).
pub const MANIFEST_LIMIT: u64 = 256 << 20;
/// The largest pointer embark reads.
pub const POINTER_LIMIT: u64 = 1 << 20;

/// Where each part of a release lives under its source (docs/release-format.md).
impl SourceUrl {
    pub fn pointer_key(&self) -> String {
        self.key("current")
    }
    pub fn manifest_key(&self, id: &str) -> String {
        self.key(&format!("releases/{id}/manifest.json"))
    }
    pub fn signature_key(&self, id: &str) -> String {
        self.key(&format!("releases/{id}/manifest.sig"))
    }
    pub fn delta_key(&self, id: &str) -> String {
        self.key(&format!("releases/{id}/manifest.delta.zst"))
    }
    pub fn bundle_key(&self, id: &str) -> String {
        self.key(&format!("releases/{id}/bundle.tar.zst"))
    }
    pub fn object_key(&self, sha256: &str) -> String {
        self.key(&format!("objects/{sha256}"))
    }
}

/// The `current` pointer: which release is current. Written last, conditionally.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pointer {
    pub format: String,
    pub release: String,
    pub manifest_sha256: String,
    pub time: String,
    pub who: String,
    #[serde(default)]
    pub message: String,
    /// The manifest as a delta against an earlier release's, for instances that hold that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<ManifestDelta>,
    /// The release's signature (a copy of `releases/<id>/manifest.sig`), when it was pushed signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// Set when a deploy agent moved the pointer back because this release failed validation on its
    /// instance: agents switch back without waiting for the barrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
}

pub const SIGNATURE_FORMAT: &str = "embark-signature/1";
/// A signature object is a few hundred bytes; nothing larger is read.
pub const SIGNATURE_LIMIT: u64 = 16 << 10;

/// `releases/<id>/manifest.sig`, and its copy in the pointer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Signature {
    pub format: String,
    /// `sha256:<hex>` of the public key's SPKI DER: which trusted key verifies it.
    pub key_id: String,
    pub algorithm: String,
    /// Base64 of the signature (DER for ECDSA, 64 bytes for ed25519).
    pub value: String,
    /// Who signed, for people (a KMS key ARN or a key file's name); not trusted.
    #[serde(default)]
    pub signer: String,
}

/// `releases/<id>/manifest.delta.zst`: the manifest as zstd with the `base` release's manifest as its
/// dictionary (docs/release-format.md). Sizes and hashes are promises the pull holds it to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestDelta {
    /// The release whose manifest is the dictionary.
    pub base: String,
    /// The sha256 of that manifest.
    pub base_sha256: String,
    /// The delta object's sha256 and size.
    pub sha256: String,
    pub size: u64,
    /// The size of the manifest it rebuilds (whose sha256 is the pointer's `manifest_sha256`).
    pub manifest_size: u64,
}

impl ManifestDelta {
    fn check(&self, limit: u64) -> Result<(), String> {
        check_id(&self.base).map_err(|r| format!("its delta base: {}", r.0))?;
        if !is_sha256(&self.base_sha256) || !is_sha256(&self.sha256) {
            return Err("its delta names something that is not a sha256".into());
        }
        if self.manifest_size > limit || self.size > self.manifest_size {
            return Err(format!(
                "its delta promises {} bytes rebuilding {} (a manifest is at most {limit} bytes, a delta no larger than it)",
                self.size, self.manifest_size
            ));
        }
        Ok(())
    }
}

impl Pointer {
    /// Parses and checks a pointer: JSON of this format, with a valid release id and sha256.
    pub fn parse(bytes: &[u8]) -> Result<Pointer, String> {
        let pointer: Pointer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if pointer.format != POINTER_FORMAT {
            return Err(format!(
                "its format is '{}', and this embark reads '{POINTER_FORMAT}' (upgrade embark to read newer releases)",
                quote(&pointer.format)
            ));
        }
        check_id(&pointer.release).map_err(|r| r.0)?;
        if !is_sha256(&pointer.manifest_sha256) {
            return Err("its manifest_sha256 is not a sha256".to_string());
        }
        if let Some(delta) = &pointer.delta {
            delta.check(MANIFEST_LIMIT)?;
        }
        Ok(pointer)
    }
}

/// One entry of a manifest as stored (`type` is checked by [`Manifest::validate`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RawEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub release: String,
    pub created: String,
    #[serde(default)]
    pub who: String,
    #[serde(default)]
    pub message: String,
    /// Regular files and their total size (summary for `release list`).
    pub files: u64,
    pub bytes: u64,
    pub entries: Vec<RawEntry>,
}

/// A checked entry: a path that stays inside the release and a kind embark can create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        path: String,
        size: u64,
        sha256: String,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Node {
    pub fn path(&self) -> &str {
        match self {
            Node::File { path, .. } | Node::Dir { path, .. } | Node::Symlink { path, .. } => path,
        }
    }

    pub fn to_raw(&self) -> RawEntry {
        match self {
            Node::File {
                path,
                size,
                sha256,
                mode,
            } => RawEntry {
                path: path.clone(),
                kind: "file".into(),
                size: Some(*size),
                sha256: Some(sha256.clone()),
                mode: Some(format!("{mode:04o}")),
                target: None,
            },
            Node::Dir { path, mode } => RawEntry {
                path: path.clone(),
                kind: "dir".into(),
                size: None,
                sha256: None,
                mode: Some(format!("{mode:04o}")),
                target: None,
            },
            Node::Symlink { path, target } => RawEntry {
                path: path.clone(),
                kind: "symlink".into(),
                size: None,
                sha256: None,
                mode: None,
                target: Some(target.clone()),
            },
        }
    }
}

/// Why a release (or a tree about to become one) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(message: String) -> Result<T, Refusal> {
    Err(Refusal(message))
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    pub fn new(
        release: String,
        created: String,
        who: String,
        message: String,
        nodes: &[Node],
    ) -> Manifest {
        let (files, bytes) = summary(nodes);
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            release,
            created,
            who,
            message,
            files,
            bytes,
            entries: nodes.iter().map(Node::to_raw).collect(),
        }
    }
}

/// The number of files and their bytes.
pub fn summary(nodes: &[Node]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(n, b), node| match node {
        Node::File { size, .. } => (n + 1, b.saturating_add(*size)),
        _ => (n, b),
    })
}

/// `20261126T130455Z-3fa9c1`: sortable by time, a short digest against collisions.
pub fn check_id(id: &str) -> Result<(), Refusal> {
    let ok = id.len() == 23
        && id.as_bytes()[8] == b'T'
        && id.as_bytes()[15] == b'Z'
        && id.as_bytes()[16] == b'-'
        && id[..8].bytes().all(|b| b.is_ascii_digit())
        && id[9..15].bytes().all(|b| b.is_ascii_digit())
        && id[17..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        refuse(format!(
            "'{id}' is not a release id (like 20261126T130455Z-3fa9c1)"
        ))
    }
}

/// A new release id for a release created at `created` (RFC 3339, seconds) with this content.
pub fn new_id(created: &str, nodes: &[Node], nonce: &[u8]) -> String {
    let stamp: String = created
        .get(..19)
        .unwrap_or(created)
        .chars()
        .chain(std::iter::once('Z'))
        .filter(|c| c.is_ascii_digit() || *c == 'T' || *c == 'Z')
        .collect();
    let mut hash = Sha256::new();
    for node in nodes {
        hash.update(format!("{node:?}\n").as_bytes());
    }
    hash.update(nonce);
    let digest = hex::encode(hash.finalize());
    format!("{stamp}-{}", &digest[..6])
}

/// At most ~200 characters of a string that came from a release: enough to recognise, never megabytes.
pub fn quote(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_delta_is_held_to_sizes_and_hashes() {
        let pointer = |delta: serde_json::Value| {
            let sha = "a".repeat(64);
            serde_json::json!({"format": POINTER_FORMAT, "release": "20261127T101010Z-abcdef",
                "manifest_sha256": sha, "time": "t", "who": "w", "delta": delta})
            .to_string()
        };
        let good = serde_json::json!({"base": "20261126T101010Z-abcdef", "base_sha256": "b".repeat(64),
            "sha256": "c".repeat(64), "size": 10, "manifest_size": 100});
        assert!(Pointer::parse(pointer(good.clone()).as_bytes()).is_ok());
        for (field, value) in [
            ("base", serde_json::json!("../x")),
            ("sha256", serde_json::json!("nope")),
            ("manifest_size", serde_json::json!(MANIFEST_LIMIT + 1)),
            ("size", serde_json::json!(101)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(Pointer::parse(pointer(bad).as_bytes()).is_err(), "{field}");
        }
    }
    #[test]
    fn pointers_of_another_format_are_refused() {
        let good = serde_json::json!({
            "format": POINTER_FORMAT, "release": "20261126T130455Z-3fa9c1",
            "manifest_sha256": "a".repeat(64), "time": "t", "who": "w"
        });
        Pointer::parse(good.to_string().as_bytes()).unwrap();
        let mut v2 = good.clone();
        v2["format"] = "embark-pointer/2".into();
        let err = Pointer::parse(v2.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("embark-pointer/2"), "{err}");
        let mut garbage = good;
        garbage["format"] = "x".repeat(10_000).into();
        assert!(
            Pointer::parse(garbage.to_string().as_bytes())
                .unwrap_err()
                .len()
                < 500
        );
    }
    #[test]
    fn source_urls() {
        let s = SourceUrl::parse("s3://bucket/app/prod/").unwrap();
        assert_eq!(s.pointer_key(), "app/prod/current");
        assert_eq!(s.to_string(), "s3://bucket/app/prod");
        assert_eq!(
            SourceUrl::parse("s3://bucket").unwrap().key("current"),
            "current"
        );
        assert!(SourceUrl::parse("bucket/app").is_err());
        assert!(SourceUrl::parse("s3://Bad_Bucket/x").is_err());
    }
}
