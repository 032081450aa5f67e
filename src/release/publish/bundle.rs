//! The bundle a push publishes: the whole tree as one tar.zst, streamed into a multipart upload as it
//! is written (never more than a few parts in memory), each file hashed again as it goes in.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;
use tokio::sync::mpsc::{self, OwnedPermit};

use crate::fsutil::HashingReader;
use crate::release::error::{io_failed, ReleaseError};
use crate::release::format::Node;
use crate::release::progress::Progress;
use crate::release::store::{Store, PART_SIZE};

/// zstd's level: fast, and a bundle about the size `tar | zstd` makes.
const LEVEL: i32 = 3;
/// zstd's job size with worker threads; its smallest is 512 KiB.
const JOB_SIZE: u32 = 1024 * 1024;
/// At most this many compressing threads, whatever the machine: memory is about
/// workers × 2 × (JOB_SIZE + the window) on top of the parts being uploaded.
const MAX_WORKERS: usize = 4;

/// Stream the tree as tar.zst into a (multipart) upload; never more than a few parts in memory.
pub async fn upload_bundle(
    store: &Store,
    root: &Path,
    nodes: &[Node],
    id: &str,
) -> Result<u64, ReleaseError> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let root = root.to_path_buf();
    let owned: Vec<Node> = nodes.to_vec();
    let runtime = tokio::runtime::Handle::current();
    let writer = tokio::task::spawn_blocking(move || write_bundle(&root, &owned, tx, &runtime));
    let key = store.source.bundle_key(id);
    let mut progress = Progress::new("uploading the bundle", 0);
    let uploaded = store.upload_stream(&key, rx, |n| progress.add(n)).await;
    progress.finish();
    let written = writer
        .await
        .map_err(|e| ReleaseError::Failed(format!("writing the bundle stopped: {e}")))?;
    // The writer's error explains an upload that ended early; report it first.
    written?;
    uploaded
}

/// Sends the bytes written to it in parts of [`PART_SIZE`]. A part is started only once the upload
/// has taken the one before (a slot of the channel is reserved first): the parts uploading and one
/// more are all the parts in memory, never one waiting in the channel and another one full here.
struct PartWriter<'a> {
    slot: Option<OwnedPermit<Bytes>>,
    runtime: &'a tokio::runtime::Handle,
    buf: Vec<u8>,
    sent_any: bool,
}

impl<'a> PartWriter<'a> {
    fn new(tx: mpsc::Sender<Bytes>, runtime: &'a tokio::runtime::Handle) -> io::Result<Self> {
        let slot = runtime
            .block_on(tx.reserve_owned())
            .map_err(|_| stopped())?;
        Ok(PartWriter {
            slot: Some(slot),
            runtime,
            buf: Vec::with_capacity(PART_SIZE),
            sent_any: false,
        })
    }

    /// The last part: whatever is left (an empty object still gets its one part).
    fn finish(&mut self) -> io::Result<()> {
        if self.buf.is_empty() && self.sent_any {
            return Ok(());
        }
        self.send()
    }

    fn send(&mut self) -> io::Result<()> {
        self.sent_any = true;
        let slot = self.slot.take().ok_or_else(stopped)?;
        let tx = slot.send(Bytes::from(std::mem::take(&mut self.buf)));
        // This blocking thread waits for the upload to take the part before starting the next one.
        self.slot = Some(
            self.runtime
                .block_on(tx.reserve_owned())
                .map_err(|_| stopped())?,
        );
        self.buf = Vec::with_capacity(PART_SIZE);
        Ok(())
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
}

impl Write for PartWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PART_SIZE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_bundle(
    root: &Path,
    nodes: &[Node],
    tx: mpsc::Sender<Bytes>,
    runtime: &tokio::runtime::Handle,
) -> Result<(), ReleaseError> {
    let fail = |e: io::Error| ReleaseError::Failed(format!("writing the bundle failed: {e}"));
    let part = PartWriter::new(tx, runtime).map_err(fail)?;
    let mut encoder = zstd::Encoder::new(part, LEVEL).map_err(fail)?;
    // Every core compresses (zstd's own worker threads), in jobs of JOB_SIZE: each worker holds one
    // job's input and its compressed output, so the encoder's memory is bounded by the cores, not the
    // tree. One core: no workers, as before.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    if workers > 1 {
        encoder.multithread(workers as u32).map_err(fail)?;
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE))
            .map_err(fail)?;
    }
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for node in nodes {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match node {
            Node::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, path, io::empty())
                    .map_err(fail)?;
            }
            Node::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, path, target).map_err(fail)?;
            }
            Node::File {
                path,
                size,
                sha256,
                mode,
            } => {
                let full = root.join(path);
                let file = fs::File::open(&full).map_err(|e| io_failed("reading", &full, &e))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                // Hashed as it is written: a file that changed since it was hashed fails the push.
                let mut reader = HashingReader::new(file.take(*size));
                tar.append_data(&mut header, path, &mut reader)
                    .map_err(|e| {
                        ReleaseError::Failed(format!(
                            "'{path}' changed while it was being pushed ({e}); push again"
                        ))
                    })?;
                if reader.finish().0 != *sha256 {
                    return Err(ReleaseError::Failed(format!(
                        "'{path}' changed while it was being pushed; push again"
                    )));
                }
            }
        }
    }
    let encoder = tar.into_inner().map_err(fail)?;
    let mut part = encoder.finish().map_err(fail)?;
    part.finish().map_err(fail)?;
    Ok(())
}
