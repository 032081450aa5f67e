//! The release format in S3 (docs/release-format.md): the manifest, the `current` pointer, release ids,
//! and the rules that keep a release inside its directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FORMAT: &str = "embark-release/1";
pub const POINTER_FORMAT: &str = "embark-pointer/1";

/// Where a release source lives: `s3://bucket/prefix` (the prefix may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    pub bucket: String,
    pub prefix: String,
}

impl SourceUrl {
    pub fn parse(text: &str) -> Result<SourceUrl, String> {
        let rest = text.trim().strip_prefix("s3://").ok_or_else(|| {
            format!("the release source '{text}' is not an s3://bucket/prefix URL")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!(
                "the release source '{text}' names an invalid bucket '{bucket}' (3 to 63 lowercase letters, digits, '-' or '.')"
            ));
        }
        Ok(SourceUrl {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The object key for a path under the source.
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

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

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
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
            delta.check(super::store::MANIFEST_LIMIT)?;
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

/// Linux's PATH_MAX and NAME_MAX: a longer path or name could not be created anyway.
pub const PATH_MAX: usize = 4096;
pub const NAME_MAX: usize = 255;

/// A relative path made of plain components only: no absolute path, no `.` or `..`, no empty component,
/// within PATH_MAX and NAME_MAX (checked first: nothing below is quadratic in a hostile path).
pub fn check_path(path: &str) -> Result<(), Refusal> {
    if path.is_empty() {
        return refuse("an entry has an empty path".into());
    }
    if path.len() > PATH_MAX {
        return refuse(format!("'{}' is longer than {PATH_MAX} bytes", quote(path)));
    }
    if path.starts_with('/') {
        return refuse(format!("'{}' is an absolute path", quote(path)));
    }
    if path.contains('\0') || path.contains('\\') {
        return refuse(format!(
            "'{}' contains a NUL byte or a backslash",
            quote(path)
        ));
    }
    for part in path.split('/') {
        match part {
            "" => return refuse(format!("'{}' has an empty component", quote(path))),
            "." | ".." => return refuse(format!("'{}' has a '{part}' component", quote(path))),
            long if long.len() > NAME_MAX => {
                return refuse(format!(
                    "'{}' has a component longer than {NAME_MAX} bytes",
                    quote(path)
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A symlink's target, resolved lexically from the link's directory, must stay inside the release, and
/// may not pass through another symlink of the release: the kernel follows a link in the middle of a
/// path before it applies a following `..`, so `l -> .` plus `x -> l/../../etc` would escape although
/// the text alone stays inside. (A link to a link, as the last component, is fine: that link's own
/// target is checked the same way.) `links` are the release's symlink paths.
pub fn check_link(path: &str, target: &str, links: &BTreeSet<&str>) -> Result<(), Refusal> {
    let outside = || {
        Refusal(format!(
            "the symlink '{}' points to '{}', outside the release",
            quote(path),
            quote(target)
        ))
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return Err(outside());
    }
    if target.len() > PATH_MAX {
        return refuse(format!(
            "the symlink '{}' has a target longer than {PATH_MAX} bytes",
            quote(path)
        ));
    }
    let mut at: Vec<&str> = path.split('/').collect();
    at.pop();
    let parts: Vec<&str> = target.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        match *part {
            "" | "." => continue,
            ".." => {
                at.pop().ok_or_else(outside)?;
            }
            other => at.push(other),
        }
        let last = parts[i + 1..].iter().all(|p| p.is_empty() || *p == ".");
        if !last && !at.is_empty() && links.contains(at.join("/").as_str()) {
            return refuse(format!(
                "the symlink '{}' points to '{}', through the release's own symlink '{}'; a release's links may not pass through its links",
                quote(path),
                quote(target),
                quote(&at.join("/"))
            ));
        }
    }
    Ok(())
}

/// Permission bits only; setuid and setgid are refused (the sticky bit is allowed).
pub fn check_mode(path: &str, mode: u32) -> Result<u32, Refusal> {
    if mode & 0o6000 != 0 {
        return refuse(format!(
            "'{path}' has the setuid or setgid bit ({mode:04o})"
        ));
    }
    if mode & !0o1777 != 0 {
        return refuse(format!("'{path}' has an invalid mode {mode:o}"));
    }
    Ok(mode)
}

fn parse_mode(path: &str, mode: Option<&str>) -> Result<u32, Refusal> {
    let text = mode.ok_or_else(|| Refusal(format!("'{path}' has no mode")))?;
    let mode = u32::from_str_radix(text, 8)
        .map_err(|_| Refusal(format!("'{path}' has an invalid mode '{text}'")))?;
    check_mode(path, mode)
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The checks every node list passes, whether read from S3 or walked from a tree: each path is unique
/// and plain, no path lies below a file or a symlink (nothing is ever written through a link).
pub fn check_nodes(nodes: &[Node]) -> Result<(), Refusal> {
    let mut kinds: BTreeMap<&str, bool> = BTreeMap::new(); // path -> is a directory
    let links: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| matches!(n, Node::Symlink { .. }))
        .map(Node::path)
        .collect();
    for node in nodes {
        check_path(node.path())?;
        if let Node::Symlink { path, target } = node {
            check_link(path, target, &links)?;
        }
        if kinds
            .insert(node.path(), matches!(node, Node::Dir { .. }))
            .is_some()
        {
            return refuse(format!("'{}' appears twice", node.path()));
        }
    }
    for node in nodes {
        let path = node.path();
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let ancestor = &path[..end + i];
            if kinds.get(ancestor) == Some(&false) {
                return refuse(format!(
                    "'{path}' lies below '{ancestor}', which is not a directory"
                ));
            }
            end += i + 1;
        }
    }
    Ok(())
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

    /// Every entry checked, in manifest order; the first problem refuses the whole release.
    pub fn validate(&self) -> Result<Vec<Node>, Refusal> {
        if self.format != MANIFEST_FORMAT {
            return refuse(format!(
                "the manifest's format is '{}', this embark reads '{MANIFEST_FORMAT}'",
                self.format
            ));
        }
        check_id(&self.release)?;
        let mut nodes = Vec::with_capacity(self.entries.len());
        for raw in &self.entries {
            let path = raw.path.clone();
            check_path(&path)?;
            let node = match raw.kind.as_str() {
                "file" => {
                    let sha256 = raw.sha256.clone().unwrap_or_default();
                    if !is_sha256(&sha256) {
                        return refuse(format!("'{path}' has no valid sha256"));
                    }
                    let size = raw
                        .size
                        .ok_or_else(|| Refusal(format!("'{path}' has no size")))?;
                    let mode = parse_mode(&path, raw.mode.as_deref())?;
                    Node::File {
                        path,
                        size,
                        sha256,
                        mode,
                    }
                }
                "dir" => {
                    let mode = parse_mode(&path, raw.mode.as_deref())?;
                    Node::Dir { path, mode }
                }
                "symlink" => {
                    let target = raw
                        .target
                        .clone()
                        .ok_or_else(|| Refusal(format!("the symlink '{path}' has no target")))?;
                    Node::Symlink { path, target }
                }
                other => {
                    return refuse(format!(
                    "'{path}' is a {other}; a release holds only files, directories and symlinks"
                ))
                }
            };
            nodes.push(node);
        }
        check_nodes(&nodes)?;
        let (files, bytes) = summary(&nodes);
        if (files, bytes) != (self.files, self.bytes) {
            return refuse(format!(
                "the manifest says {} files and {} bytes, but its entries hold {files} files and {bytes} bytes",
                self.files, self.bytes
            ));
        }
        Ok(nodes)
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

    fn file(path: &str) -> Node {
        Node::File {
            path: path.into(),
            size: 1,
            sha256: "a".repeat(64),
            mode: 0o644,
        }
    }

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
            (
                "manifest_size",
                serde_json::json!(super::super::store::MANIFEST_LIMIT + 1),
            ),
            ("size", serde_json::json!(101)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(Pointer::parse(pointer(bad).as_bytes()).is_err(), "{field}");
        }
    }

    #[test]
    fn paths_stay_inside() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", ""] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        check_path("vendor/ä/ß.php").unwrap();
    }

    #[test]
    fn links_stay_inside() {
        let none = BTreeSet::new();
        check_link("a/b/link", "../c", &none).unwrap();
        check_link("a/link", "../top", &none).unwrap();
        assert!(check_link("a/link", "../../etc", &none).is_err());
        assert!(check_link("link", "/etc/passwd", &none).is_err());
        assert!(check_link("link", "..", &none).is_err());
    }

    #[test]
    fn links_may_not_pass_through_links() {
        let links: BTreeSet<&str> = ["l1", "a/up", "final"].into_iter().collect();
        // The finding: `l1 -> .` and `zz-etc -> l1/../../../etc` (lexically inside after l1/..).
        let err = check_link("zz-etc", "l1/../../../etc", &links).unwrap_err();
        assert!(
            err.0.contains("through the release's own symlink 'l1'"),
            "{err}"
        );
        assert!(check_link("x", "l1/../public", &links).is_err());
        assert!(check_link("a/b", "up/x", &links).is_err());
        // A link to a link (as the last component) is fine: that link is checked on its own.
        check_link("x", "final", &links).unwrap();
        check_link("x", "final/", &links).unwrap();
        check_link("a/x", "../final", &links).unwrap();
        // Through a directory of the same name as nothing: fine.
        check_link("x", "public/index.php", &links).unwrap();
    }

    #[test]
    fn the_whole_node_list_refuses_a_chain_escape() {
        let nodes = vec![
            Node::Symlink {
                path: "l1".into(),
                target: ".".into(),
            },
            Node::Symlink {
                path: "zz-etc".into(),
                target: format!("l1/{}etc", "../".repeat(40)),
            },
        ];
        assert!(check_nodes(&nodes).is_err());
    }

    #[test]
    fn long_paths_are_refused_before_any_quadratic_work() {
        let deep = "a/".repeat(1 << 20) + "x";
        let started = std::time::Instant::now();
        let err = check_path(&deep).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(err.0.contains("longer than 4096 bytes"), "{err}");
        assert!(
            err.0.len() < 400,
            "the message quotes at most ~200 characters"
        );
        let long_name = "x".repeat(256);
        assert!(check_path(&long_name)
            .unwrap_err()
            .0
            .contains("longer than 255"));
        check_path(&"x".repeat(255)).unwrap();
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
    fn setuid_refused() {
        assert!(check_mode("x", 0o4755).is_err());
        assert!(check_mode("x", 0o2755).is_err());
        assert_eq!(check_mode("x", 0o1777).unwrap(), 0o1777);
    }

    #[test]
    fn nothing_below_a_link_or_file() {
        let nodes = vec![
            Node::Symlink {
                path: "a".into(),
                target: "b".into(),
            },
            file("a/x"),
        ];
        assert!(check_nodes(&nodes)
            .unwrap_err()
            .0
            .contains("not a directory"));
        assert!(check_nodes(&[file("x"), file("x")]).is_err());
        check_nodes(&[
            Node::Dir {
                path: "a".into(),
                mode: 0o755,
            },
            file("a/x"),
        ])
        .unwrap();
    }

    #[test]
    fn manifest_round_trip_and_unknown_type() {
        let nodes = vec![
            Node::Dir {
                path: "d".into(),
                mode: 0o755,
            },
            file("d/f"),
        ];
        let id = new_id("2026-11-26T13:04:55Z", &nodes, b"n");
        assert!(id.starts_with("20261126T130455Z-"), "{id}");
        check_id(&id).unwrap();
        let mut m = Manifest::new(id, "t".into(), "w".into(), "m".into(), &nodes);
        assert_eq!((m.files, m.bytes), (1, 1));
        assert_eq!(m.validate().unwrap(), nodes);
        m.entries[1].kind = "fifo".into();
        assert!(m.validate().unwrap_err().0.contains("fifo"));
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
