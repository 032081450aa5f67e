//! The rules that keep a release inside its directory (DESIGN.md "Releases in S3"): plain relative
//! paths, links that stay inside (also through a chain of the release's own links), no device files,
//! no setuid or setgid bits. Every manifest read from S3 and every tree about to be pushed passes them.

use std::collections::{BTreeMap, BTreeSet};

use super::format::{
    check_id, is_sha256, quote, summary, Manifest, Node, Refusal, MANIFEST_FORMAT,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::format::new_id;

    fn file(path: &str) -> Node {
        Node::File {
            path: path.into(),
            size: 1,
            sha256: "a".repeat(64),
            mode: 0o644,
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
}
