//! Unpacking a release bundle (tar inside zstd) as hostile input: every entry must be what the manifest
//! says, and nothing — a header's claim, an extension record, the decompressor's window — may cost more
//! memory or disk than the manifest promises.
//!
//! The tar crate reads GNU long-name and PAX extension records whole into memory, and takes an entry's
//! size from a PAX `size` record over the header's. [`TarGuard`] sits between the decompressor and the
//! tar crate and reads every header first: extension records above [`EXTENSION_LIMIT`] are refused
//! before anything buffers them, and the bodies of all entries together may not exceed what the
//! manifest promises.
//!
//! Files up to [`HANDED_MAX`] are read whole and handed to a second thread, which checks and writes
//! them while the next entries are decompressed: a bundle of many small files is unpacked on two
//! cores. At most [`HANDED_AT_ONCE`] wait, so the memory this adds is bounded too.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::{io_failed, ReleaseError};
use super::format::{quote, Node};
use crate::fsutil::{open_new, HashingReader};

/// The largest extension record (GNU long name or link, PAX header) accepted: names are at most
/// PATH_MAX (4096) bytes, and a PAX record for one entry holds little more.
pub const EXTENSION_LIMIT: u64 = 8 * 1024;

/// zstd's window: 2^24 = 16 MiB of decoder memory at most (embark's encoder uses far less).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

const BLOCK: usize = 512;

/// The largest file handed to the writing thread; larger ones are written where they are read.
pub const HANDED_MAX: u64 = 256 << 10;

/// Files read and waiting for the writing thread: with [`HANDED_MAX`], 4 MiB at most.
pub const HANDED_AT_ONCE: usize = 16;

/// A file's entry in the manifest and its bytes, read from the bundle but not checked yet.
type Handed<'a> = (&'a Node, Vec<u8>);

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
    std::thread::scope(|scope| {
        let (hand, handed) = std::sync::mpsc::sync_channel::<Handed>(HANDED_AT_ONCE);
        let writer = scope.spawn(move || {
            handed
                .into_iter()
                .try_for_each(|(node, body)| write_checked(&body, node, dest, id))
        });
        let read = read_entries(reader, nodes, dest, id, &hand);
        drop(hand);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(corrupt(id, "the thread writing its files stopped".into())));
        // A writer that failed stopped the reading too: its error is the cause.
        written.and(read)
    })
}

/// The bundle's entries in order: directories, links and large files placed here, small files
/// handed on through `hand`.
fn read_entries<'a>(
    reader: impl Read,
    nodes: &'a HashMap<String, Node>,
    dest: &Path,
    id: &str,
    hand: &std::sync::mpsc::SyncSender<Handed<'a>>,
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
        place(&mut entry, node, &path, dest, id, hand)?;
    }
    if let Some(missing) = nodes.keys().find(|p| !seen.contains(*p)) {
        return Err(corrupt(format!("it lacks '{missing}'")));
    }
    Ok(())
}

/// One entry, written where the manifest says, only if it is the manifest's kind (and size, link).
fn place<'a, R: Read>(
    entry: &mut tar::Entry<R>,
    node: &'a Node,
    path: &str,
    dest: &Path,
    id: &str,
    hand: &std::sync::mpsc::SyncSender<Handed<'a>>,
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
            if *size > HANDED_MAX {
                return write_verified(entry, &target, node, id);
            }
            // Within HANDED_MAX: the manifest's size, so this buffer is bounded by it.
            let mut body = Vec::with_capacity(*size as usize);
            entry
                .take(size.saturating_add(1))
                .read_to_end(&mut body)
                .map_err(|e| {
                    ReleaseError::Failed(format!("reading '{path}' of release {id} failed: {e}"))
                })?;
            // A closed channel: the writer failed, and its error is reported instead.
            hand.send((node, body))
                .map_err(|_| corrupt(id, "the thread writing its files stopped".into()))
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
        return Err(ReleaseError::Corrupt {
            release: id.to_string(),
            path: quote(name),
            why: format!("expected {sha256}, got {got_sha256}"),
        });
    }
    Ok(())
}

/// A file read whole: checked against the manifest, then written with its mode.
fn write_checked(body: &[u8], node: &Node, dest: &Path, id: &str) -> Result<(), ReleaseError> {
    let Node::File {
        path: name,
        size,
        sha256,
        mode,
    } = node
    else {
        return Ok(());
    };
    let got = super::format::sha256_hex(body);
    check_content(name, id, *size, sha256, body.len() as u64, &got)?;
    let path = dest.join(name);
    let mut file = open_new(&path).map_err(|e| io_failed("writing", &path, &e))?;
    file.write_all(body)
        .map_err(|e| io_failed("writing", &path, &e))?;
    file.set_permissions(fs::Permissions::from_mode(*mode))
        .map_err(|e| io_failed("setting the mode of", &path, &e))
}

/// Copy `reader` to a new file, hashing as it goes, then check it against the manifest (a file that
/// does not match is left to the caller, which removes the partial tree).
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
    let mut file = open_new(path).map_err(|e| io_failed("writing", path, &e))?;
    let mut reader = HashingReader::new(reader.take(size.saturating_add(1)));
    // No larger than the file (+1) needs: a buffer is zeroed for every file.
    let mut buf =
        vec![0u8; usize::try_from(size.saturating_add(1)).map_or(64 << 10, |n| n.min(64 << 10))];
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

/// Parents a hand-written manifest may leave implicit (never through a link: the manifest was checked).
fn ensure_parent(path: &Path) -> Result<(), ReleaseError> {
    match path.parent() {
        Some(parent) if !parent.is_dir() => {
            fs::create_dir_all(parent).map_err(|e| io_failed("creating", parent, &e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
