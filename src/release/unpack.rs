//! Unpacking a release bundle (tar inside zstd) as hostile input: every entry must be what the manifest
//! says, and nothing — a header's claim, an extension record, the decompressor's window — may cost more
//! memory or disk than the manifest promises.
//!
//! The tar crate reads GNU long-name and PAX extension records whole into memory, and takes an entry's
//! size from a PAX `size` record over the header's. [`TarGuard`] sits between the decompressor and the
//! tar crate and reads every header first: extension records above [`EXTENSION_LIMIT`] are refused
//! before anything buffers them, and the bodies of all entries together may not exceed what the
//! manifest promises.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::{io_failed, ReleaseError};
use super::format::{quote, Node};
use super::local::{ensure_parent, open_new};
use crate::fsutil::HashingReader;

/// The largest extension record (GNU long name or link, PAX header) accepted: names are at most
/// PATH_MAX (4096) bytes, and a PAX record for one entry holds little more.
pub const EXTENSION_LIMIT: u64 = 8 * 1024;

/// zstd's window: 2^24 = 16 MiB of decoder memory at most (embark's encoder uses far less).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

const BLOCK: usize = 512;

/// Reads a tar stream block by block and checks every header before handing it on.
pub struct TarGuard<R> {
    inner: R,
    header: [u8; BLOCK],
    /// Bytes of `header` not handed on yet.
    header_left: usize,
    /// Bytes of the current entry's body (with padding) not handed on yet.
    body_left: u64,
    /// The current extension record, kept to read a PAX `size` (bounded by EXTENSION_LIMIT).
    record: Option<Vec<u8>>,
    /// A PAX `size` for the next entry.
    pax_size: Option<u64>,
    /// Body bytes of regular entries so far, and the most the manifest allows.
    bodies: u64,
    max_bodies: u64,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R, max_bodies: u64) -> TarGuard<R> {
        TarGuard {
            inner,
            header: [0; BLOCK],
            header_left: 0,
            body_left: 0,
            record: None,
            pax_size: None,
            bodies: 0,
            max_bodies,
        }
    }

    /// Reads and checks the next header; `false` at the end of the stream.
    fn next_header(&mut self) -> io::Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.inner.read(&mut self.header[filled..])?;
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(invalid("the bundle ends inside a tar header"));
            }
            filled += n;
        }
        self.header_left = BLOCK;
        if self.header.iter().all(|b| *b == 0) {
            return Ok(true); // the end-of-archive blocks
        }
        let size = header_size(&self.header)?;
        let kind = self.header[156];
        let body = match kind {
            b'L' | b'K' | b'x' | b'g' => {
                if size > EXTENSION_LIMIT {
                    return Err(invalid(&format!(
                        "an extension record of {size} bytes (type '{}'; at most {EXTENSION_LIMIT} are accepted)",
                        kind as char
                    )));
                }
                self.record = (kind == b'x').then(Vec::new);
                size
            }
            _ => {
                let size = self.pax_size.take().unwrap_or(size);
                self.bodies = self.bodies.saturating_add(size);
                if self.bodies > self.max_bodies {
                    return Err(invalid(&format!(
                        "entries holding more than the {} bytes the manifest promises",
                        self.max_bodies
                    )));
                }
                size
            }
        };
        self.body_left = body.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(true)
    }

    /// The PAX record just read: its `size`, if any, applies to the next entry.
    fn end_of_record(&mut self) {
        if let Some(record) = self.record.take() {
            self.pax_size = pax_size(&record);
        }
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.header_left == 0 && self.body_left == 0 && !self.next_header()? {
            return Ok(0);
        }
        if self.header_left > 0 {
            let start = BLOCK - self.header_left;
            let n = self.header_left.min(buf.len());
            buf[..n].copy_from_slice(&self.header[start..start + n]);
            self.header_left -= n;
            return Ok(n);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(invalid("the bundle ends inside an entry"));
        }
        if let Some(record) = &mut self.record {
            record.extend_from_slice(&buf[..n]);
        }
        self.body_left -= n as u64;
        if self.body_left == 0 {
            self.end_of_record();
        }
        Ok(n)
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// The header's size field: octal digits, or GNU's base-256 (high bit set) for large sizes.
fn header_size(header: &[u8; BLOCK]) -> io::Result<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        let mut value: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| invalid("a tar header's size does not fit in 64 bits"))?;
        }
        return Ok(value);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let digits = text.trim();
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).map_err(|_| invalid("a tar header's size is not a number"))
}

/// The `size` of a PAX extended header ("<len> size=<n>\n" records).
fn pax_size(record: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(record).ok()?;
    text.lines()
        .filter_map(|line| line.split_once(' ').map(|(_, kv)| kv))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "size")
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn corrupt(id: &str, why: String) -> ReleaseError {
    ReleaseError::Failed(format!(
        "the bundle of release {id} is corrupt: {why}; nothing was switched"
    ))
}

fn refused(id: &str, why: String) -> ReleaseError {
    ReleaseError::Failed(format!(
        "refusing release {id}: its bundle {why}; nothing was switched"
    ))
}

/// Unpacks a `bundle.tar.zst` read from `reader` into `dest`: every entry must be the manifest's
/// entry of that path and kind, every file's bytes its size and sha256; anything else is refused.
pub fn unpack(
    reader: impl Read,
    nodes: &HashMap<String, Node>,
    dest: &Path,
    id: &str,
) -> Result<(), ReleaseError> {
    let corrupt = |why: String| corrupt(id, why);
    let refused = |why: String| refused(id, why);
    let mut decoder = zstd::Decoder::new(reader).map_err(|e| corrupt(e.to_string()))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| corrupt(e.to_string()))?;
    let promised: u64 = nodes
        .values()
        .map(|n| match n {
            Node::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let mut archive = tar::Archive::new(TarGuard::new(decoder, promised));
    let mut seen = HashSet::new();
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue; // a pax global header (what `git archive` writes) names no entry
        }
        let raw = entry.path_bytes();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| refused("holds a name that is not UTF-8".into()))?
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let node = nodes.get(&path).ok_or_else(|| {
            refused(format!(
                "holds '{}', which the manifest does not list",
                quote(&path)
            ))
        })?;
        if !seen.insert(path.clone()) {
            return Err(refused(format!("repeats the entry '{}'", quote(&path))));
        }
        place(&mut entry, node, &path, dest, id)?;
    }
    if let Some(missing) = nodes.keys().find(|p| !seen.contains(*p)) {
        return Err(corrupt(format!("it lacks '{missing}'")));
    }
    Ok(())
}

/// One entry, written where the manifest says, only if it is the manifest's kind (and size, link).
fn place<R: Read>(
    entry: &mut tar::Entry<R>,
    node: &Node,
    path: &str,
    dest: &Path,
    id: &str,
) -> Result<(), ReleaseError> {
    let target = dest.join(path);
    match (entry.header().entry_type(), node) {
        (tar::EntryType::Directory, Node::Dir { .. }) => create_dir(&target),
        (tar::EntryType::Symlink, Node::Symlink { target: want, .. }) => {
            let link = entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default();
            if link != want.as_bytes() {
                return Err(refused(
                    id,
                    format!("has the symlink '{path}' pointing elsewhere than the manifest says"),
                ));
            }
            make_symlink(want, &target)
        }
        (tar::EntryType::Regular | tar::EntryType::Continuous, Node::File { size, .. }) => {
            // The entry's own size, a PAX `size` record included: what the tar crate will read.
            if entry.size() != *size {
                return Err(corrupt(
                    id,
                    format!("'{path}' has another size than the manifest says"),
                ));
            }
            write_verified(entry, &target, node, id)
        }
        (kind, _) if !kind.is_file() && !kind.is_dir() && !kind.is_symlink() => Err(refused(
            id,
            format!(
                "holds '{path}' as a {}; a release holds only files, directories and symlinks",
                kind_name(kind)
            ),
        )),
        _ => Err(refused(
            id,
            format!("holds '{path}' as another kind of entry than the manifest says"),
        )),
    }
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::Link => "hard link",
        _ => "special entry",
    }
}

pub(super) fn create_dir(path: &Path) -> Result<(), ReleaseError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io_failed("creating", path, &e)),
    }
}

pub(super) fn make_symlink(target: &str, path: &Path) -> Result<(), ReleaseError> {
    ensure_parent(path)?;
    std::os::unix::fs::symlink(target, path).map_err(|e| io_failed("creating the link", path, &e))
}

/// The content read for `name` is what the manifest promises: its size first (a different size says
/// more than two different hashes would), then its sha256.
pub(super) fn check_content(
    name: &str,
    id: &str,
    size: u64,
    sha256: &str,
    got_size: u64,
    got_sha256: &str,
) -> Result<(), ReleaseError> {
    if got_size != size {
        return Err(ReleaseError::Failed(format!(
            "'{}' of release {id} holds {}{got_size} bytes where the manifest promises {size}: the source is corrupt; nothing was switched",
            quote(name),
            if got_size > size { "more than " } else { "" }
        )));
    }
    if got_sha256 != sha256 {
        return Err(ReleaseError::Failed(format!(
            "'{}' of release {id} does not match its sha256 in the manifest (expected {sha256}, got {got_sha256}): the source is corrupt; nothing was switched",
            quote(name)
        )));
    }
    Ok(())
}

/// Copy `reader` to a new file, hashing as it goes; the file is kept only if it matches the manifest.
pub(super) fn write_verified(
    reader: &mut impl Read,
    path: &Path,
    node: &Node,
    id: &str,
) -> Result<(), ReleaseError> {
    let Node::File {
        path: name,
        size,
        sha256,
        mode,
    } = node
    else {
        return Ok(());
    };
    let (got, total) = copy_hashed(reader, path, *size, name, id)?;
    check_content(name, id, *size, sha256, total, &got)?;
    fs::set_permissions(path, fs::Permissions::from_mode(*mode))
        .map_err(|e| io_failed("setting the mode of", path, &e))
}

/// Copy `reader` to a new file at `path`, hashing as it goes: the sha256 and length of what was
/// copied. Never more than `size` (+1 byte, to notice a body that is too long): a header or an object
/// that claims less than it holds cannot fill the disk.
pub(super) fn copy_hashed(
    reader: &mut impl Read,
    path: &Path,
    size: u64,
    name: &str,
    id: &str,
) -> Result<(String, u64), ReleaseError> {
    let mut file = open_new(path)?;
    let mut reader = HashingReader::new(reader.take(size.saturating_add(1)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            ReleaseError::Failed(format!("reading '{name}' of release {id} failed: {e}"))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| io_failed("writing", path, &e))?;
    }
    Ok(reader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::Hasher;
    use proptest::prelude::*;

    /// One tar entry as a test writes it: the header's claims and the body actually sent.
    #[derive(Debug, Clone)]
    struct Raw {
        path: String,
        kind: tar::EntryType,
        header_size: u64,
        body: Vec<u8>,
        link: Option<String>,
        pax_size: Option<u64>,
    }

    fn file(path: &str, body: &[u8]) -> Raw {
        Raw {
            path: path.into(),
            kind: tar::EntryType::Regular,
            header_size: body.len() as u64,
            body: body.to_vec(),
            link: None,
            pax_size: None,
        }
    }

    fn node(path: &str, body: &[u8]) -> Node {
        let mut h = Hasher::new();
        h.update(body);
        let (sha256, size) = h.finish();
        Node::File {
            path: path.into(),
            size,
            sha256,
            mode: 0o644,
        }
    }

    /// The tar stream, written header by header so that a test can lie in any field.
    fn tar_stream(entries: &[Raw]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            if let Some(size) = e.pax_size {
                let record = format!("size={size}\n");
                let line = format!(
                    "{} {record}",
                    record.len() + 3 + size.to_string().len() - size.to_string().len()
                );
                push_raw(
                    &mut out,
                    "PaxHeader",
                    tar::EntryType::XHeader,
                    line.as_bytes(),
                    None,
                    line.len() as u64,
                );
            }
            push_raw(
                &mut out,
                &e.path,
                e.kind,
                &e.body,
                e.link.as_deref(),
                e.header_size,
            );
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn push_raw(
        out: &mut Vec<u8>,
        path: &str,
        kind: tar::EntryType,
        body: &[u8],
        link: Option<&str>,
        claimed: u64,
    ) {
        let mut header = tar::Header::new_gnu();
        {
            let name = &mut header.as_old_mut().name;
            let n = path.len().min(name.len());
            name[..n].copy_from_slice(&path.as_bytes()[..n]);
        }
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(claimed);
        if let Some(link) = link {
            let _ = header.set_link_name(link);
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn bundle(entries: &[Raw]) -> Vec<u8> {
        zstd::encode_all(&tar_stream(entries)[..], 3).unwrap()
    }

    fn manifest(nodes: Vec<Node>) -> HashMap<String, Node> {
        nodes
            .into_iter()
            .map(|n| (n.path().to_string(), n))
            .collect()
    }

    /// Unpacks into `<tmp>/partial`; returns the result and the temporary directory to inspect.
    fn run(entries: &[Raw], nodes: Vec<Node>) -> (Result<(), ReleaseError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("partial");
        fs::create_dir(&dest).unwrap();
        let result = unpack(
            &bundle(entries)[..],
            &manifest(nodes),
            &dest,
            "20261126T130455Z-3fa9c1",
        );
        (result, tmp)
    }

    fn disk_bytes(dir: &Path) -> u64 {
        walk(dir)
            .iter()
            .filter_map(|p| fs::symlink_metadata(p).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                out.push(p.clone());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.extend(walk(&p));
                }
            }
        }
        out
    }

    #[test]
    fn a_bundle_that_matches_its_manifest_unpacks() {
        let (result, tmp) = run(
            &[file("index.php", b"<?php")],
            vec![node("index.php", b"<?php")],
        );
        result.unwrap();
        assert_eq!(
            fs::read(tmp.path().join("partial/index.php")).unwrap(),
            b"<?php"
        );
    }

    #[test]
    fn a_pax_size_larger_than_the_manifest_writes_nothing_beyond_it() {
        // The finding: header size 1, PAX size 8 MiB; the tar crate believes the PAX record.
        let mut liar = file("a.bin", &vec![0u8; 8 << 20]);
        liar.header_size = 1;
        liar.pax_size = Some(8 << 20);
        let (result, tmp) = run(&[liar], vec![node("a.bin", b"x")]);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("more than the 1 bytes the manifest promises"),
            "{err}"
        );
        assert!(
            disk_bytes(tmp.path()) <= 2,
            "{} bytes written",
            disk_bytes(tmp.path())
        );
    }

    #[test]
    fn a_huge_long_name_record_is_refused_before_it_is_read() {
        // A GNU long-name record claiming 1 GiB: refused from its header, never buffered.
        let mut stream = Vec::new();
        push_raw(
            &mut stream,
            "././@LongLink",
            tar::EntryType::GNULongName,
            &[],
            None,
            1 << 30,
        );
        let compressed = zstd::encode_all(&stream[..], 3).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack(
            &compressed[..],
            &HashMap::new(),
            tmp.path(),
            "20261126T130455Z-3fa9c1",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("an extension record of 1073741824 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_repeated_member_says_so() {
        let (result, _tmp) = run(
            &[file("a.php", b""), file("a.php", b"")],
            vec![node("a.php", b"")],
        );
        let err = result.unwrap_err().to_string();
        assert!(err.contains("repeats the entry 'a.php'"), "{err}");
        assert!(!err.contains("cannot"), "{err}");
    }

    #[test]
    fn a_pax_global_header_is_skipped() {
        let global = Raw {
            path: "pax_global_header".into(),
            kind: tar::EntryType::XGlobalHeader,
            header_size: 52,
            body: b"52 comment=0123456789abcdef0123456789abcdef01234567\n".to_vec(),
            link: None,
            pax_size: None,
        };
        let (result, _tmp) = run(&[global, file("a.php", b"1")], vec![node("a.php", b"1")]);
        result.unwrap();
    }

    #[test]
    fn a_file_whose_size_differs_is_refused_by_size() {
        let (result, tmp) = run(&[file("a.php", b"12345")], vec![node("a.php", b"1")]);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("another size") || err.contains("more than"),
            "{err}"
        );
        assert!(disk_bytes(tmp.path()) <= 2);
    }

    #[test]
    fn devices_and_hard_links_are_refused() {
        for kind in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
            tar::EntryType::Link,
        ] {
            let entry = Raw {
                path: "dev".into(),
                kind,
                header_size: 0,
                body: Vec::new(),
                link: Some("a.php".into()),
                pax_size: None,
            };
            let (result, tmp) = run(&[entry], vec![node("dev", b"")]);
            assert!(result.is_err(), "{kind:?}");
            assert!(!tmp.path().join("partial/dev").exists(), "{kind:?}");
        }
    }

    #[test]
    fn header_sizes_in_octal_and_base_256() {
        let mut h = [0u8; BLOCK];
        h[124..135].copy_from_slice(b"00000000017");
        assert_eq!(header_size(&h).unwrap(), 15);
        let mut big = [0u8; BLOCK];
        big[124] = 0x80;
        big[135] = 1;
        big[134] = 2;
        assert_eq!(header_size(&big).unwrap(), 513);
        assert_eq!(pax_size(b"20 size=1073741824\n"), Some(1 << 30));
        assert_eq!(pax_size(b"20 path=x\n"), None);
    }

    fn arb_entry() -> impl Strategy<Value = Raw> {
        let name = prop::sample::select(vec![
            "a", "b", "d/a", "d", "..", "../x", "/etc/x", ".", "d/../a", "ä.php", "l",
        ]);
        let kind = prop::sample::select(vec![
            tar::EntryType::Regular,
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Link,
            tar::EntryType::Char,
            tar::EntryType::Fifo,
            tar::EntryType::GNULongName,
            tar::EntryType::XHeader,
        ]);
        let link = prop::option::of(prop::sample::select(vec![
            "a",
            "../../etc",
            "/etc",
            "l/..",
            "d",
        ]));
        (
            name,
            kind,
            prop::collection::vec(any::<u8>(), 0..64),
            0u64..80,
            link,
            prop::option::of(0u64..200),
        )
            .prop_map(|(path, kind, body, header_size, link, pax_size)| Raw {
                path: path.to_string(),
                kind,
                header_size,
                body,
                link: link.map(str::to_string),
                pax_size,
            })
    }

    fn arb_manifest_node() -> impl Strategy<Value = Node> {
        let name = prop::sample::select(vec!["a", "b", "d/a", "d", "ä.php", "l"]);
        (name, prop::collection::vec(any::<u8>(), 0..64), 0u8..3).prop_map(|(path, body, kind)| {
            match kind {
                0 => node(path, &body),
                1 => Node::Dir {
                    path: path.into(),
                    mode: 0o755,
                },
                _ => Node::Symlink {
                    path: path.into(),
                    target: "a".into(),
                },
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the stream and the manifest: nothing appears outside the staging directory, no
        /// more bytes are written than the manifest promises (+1 per file, the overrun detector),
        /// and a stream that unpacks leaves exactly the manifest's tree.
        #[test]
        fn hostile_streams_stay_inside_and_bounded(
            entries in prop::collection::vec(arb_entry(), 0..8),
            nodes in prop::collection::vec(arb_manifest_node(), 0..6),
        ) {
            let mut unique: HashMap<String, Node> = HashMap::new();
            for n in nodes {
                unique.entry(n.path().to_string()).or_insert(n);
            }
            // Parents of listed paths are directories, as check_nodes demands of a real manifest.
            if unique.contains_key("d/a") {
                unique.insert("d".into(), Node::Dir { path: "d".into(), mode: 0o755 });
            }
            let nodes: Vec<Node> = unique.into_values().collect();
            let promised: u64 = nodes.iter().map(|n| match n { Node::File { size, .. } => *size + 1, _ => 0 }).sum();
            let (result, tmp) = run(&entries, nodes.clone());
            let inside = tmp.path().join("partial");
            for p in walk(tmp.path()) {
                prop_assert!(p.starts_with(&inside), "{} outside the staging dir", p.display());
            }
            prop_assert!(disk_bytes(tmp.path()) <= promised);
            if result.is_ok() {
                let mut found: Vec<String> = walk(&inside)
                    .iter()
                    .map(|p| p.strip_prefix(&inside).unwrap().display().to_string())
                    .collect();
                found.sort();
                let mut listed: Vec<String> = nodes.iter().map(|n| n.path().to_string()).collect();
                listed.sort();
                prop_assert_eq!(found, listed);
                for n in &nodes {
                    if let Node::File { path, sha256, .. } = n {
                        let (got, _) = crate::fsutil::hash_file(&inside.join(path)).unwrap();
                        prop_assert_eq!(&got, sha256);
                    }
                }
            }
        }
    }
}
