//! The bundle as byte ranges on several connections, fed to the unpacker in order: its first range
//! (which may be asked for beside the manifest), the rest cut to fill whole rounds of the window, every
//! size held to what the manifest allows before it is read.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

use futures_util::future::Either;

use crate::release::error::ReleaseError;
use crate::release::format::Node;
use crate::release::progress::Progress;
use crate::release::store::{OpenRange, Store};
use crate::release::unpack::unpack;

pub(super) enum Fetch {
    /// The bundle could not be read from S3: the release can still be fetched object by object.
    Transport(String),
    /// Refused or corrupt, or this machine failed: stop.
    Fatal(ReleaseError),
}

/// Reads what the download task sends; an early end is reported by the task, not here.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            // This reader runs on a blocking thread (spawn_blocking): waiting here is allowed.
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The bundle comes as byte ranges of at most [`RANGE`] bytes, [`RANGES_AT_ONCE`] of them in flight on
/// as many connections (S3 serves one connection at a rate and scales by connections: AWS's performance
/// guidelines, "byte-range fetches"), each retried on its own, fed to the unpacker in order. Memory is
/// bounded by the window: at most `RANGES_AT_ONCE` ranges fetched or in flight, one queued and one
/// being read: (8 + 2) × 4 MiB = 40 MiB. A bundle of one range is one GET.
const RANGE: u64 = 4 << 20;
pub(super) const RANGES_AT_ONCE: usize = 8;
/// The smallest range after the first: below it, a request's latency outweighs its bytes.
const MIN_RANGE: u64 = 1 << 20;

/// The ranges after the first `RANGE` bytes of a bundle of `size`: with the first, as many as the
/// window takes in whole rounds (a multiple of [`RANGES_AT_ONCE`]), of equal length, none over
/// [`RANGE`] or, unless fewer bytes are left, under [`MIN_RANGE`]. Whole rounds keep every connection
/// busy to the end, instead of a last round of one or two ranges.
fn later_ranges(size: u64) -> Vec<(u64, u64)> {
    let rest = size.saturating_sub(RANGE);
    if rest == 0 {
        return Vec::new();
    }
    let window = RANGES_AT_ONCE as u64;
    let rounds = (rest.div_ceil(RANGE) + 1).div_ceil(window);
    let count = (rounds * window - 1).min(rest.div_ceil(MIN_RANGE));
    let len = rest.div_ceil(count);
    (0..count)
        .map(|k| (RANGE + k * len, len))
        .take_while(|(start, _)| *start < size)
        .collect()
}

/// How many GETs a bundle of `size` takes: the first range and [`later_ranges`].
pub(super) fn range_count(size: u64) -> u64 {
    1 + later_ranges(size).len() as u64
}

/// The most a bundle of `nodes` can be: every file's bytes, a tar header and padding per entry, the
/// archive's end, and zstd's worst case on incompressible data (it never grows data by more than a
/// small fraction). A `Content-Range` claiming more is refused before anything more is fetched.
pub(super) fn bundle_bound(nodes: &[Node]) -> u64 {
    let files: u64 = nodes
        .iter()
        .map(|n| match n {
            Node::File { size, .. } => *size,
            _ => 0,
        })
        .fold(0u64, u64::saturating_add);
    files
        .saturating_add(files / 64)
        .saturating_add(1024 * nodes.len() as u64)
        .saturating_add(1 << 20)
}

/// The first range of release `id`'s bundle, asked for before its manifest is read (a cold pull, which
/// fetches the bundle, asks for both at once): only the answer's head is read until the manifest bounds
/// the bundle.
pub async fn open_bundle(store: &Store, id: &str) -> Result<OpenRange, ReleaseError> {
    store
        .open_range(&store.source.bundle_key(id), (0, RANGE), None)
        .await
}

pub(super) async fn fetch_bundle(
    store: &Store,
    id: &str,
    nodes: &[Node],
    partial: &Path,
    head_start: Option<OpenRange>,
) -> Result<u64, Fetch> {
    use futures_util::StreamExt;
    let key = store.source.bundle_key(id);
    let most = bundle_bound(nodes);
    // The first range's head says how large the bundle is and which version it is; the other ranges
    // are asked for at once, while the first one's body is still arriving.
    let first = match head_start {
        Some(first) => first,
        None => open_bundle(store, id)
            .await
            .map_err(|e| Fetch::Transport(e.to_string()))?,
    };
    let size = first.total;
    if size > most {
        return Err(Fetch::Fatal(ReleaseError::Failed(format!(
            "{} claims {size} bytes, more than a bundle of release {id} can hold ({most} bytes for its {} entries): refused, nothing more fetched",
            store.url(&key),
            nodes.len()
        ))));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let by_path: HashMap<String, Node> = nodes
        .iter()
        .map(|n| (n.path().to_string(), n.clone()))
        .collect();
    let dest = partial.to_path_buf();
    let release = id.to_string();
    let unpack = tokio::task::spawn_blocking(move || {
        unpack(
            ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
            &by_path,
            &dest,
            &release,
        )
    });
    let mut progress = Progress::new("fetching the bundle", size);
    let mut received = 0u64;
    let mut transport = None;
    // The rest, of the version the first range came from (If-Match).
    let etag = first.etag.clone();
    let (key, etag) = (&key, &etag);
    let rest = later_ranges(size)
        .into_iter()
        .map(|range| Either::Right(store.get_range(key, range, etag)));
    let ranges = std::iter::once(Either::Left(store.read_range(key, first))).chain(rest);
    let mut parts = futures_util::stream::iter(ranges).buffered(RANGES_AT_ONCE);
    while let Some(part) = parts.next().await {
        match part {
            Ok(bytes) => {
                received += bytes.len() as u64;
                progress.add(bytes.len() as u64);
                if tx.send(bytes).await.is_err() {
                    break; // the unpacker stopped; its error says why
                }
            }
            Err(err) => {
                transport = Some(err.to_string());
                break;
            }
        }
    }
    drop(tx);
    progress.finish();
    let unpacked = unpack
        .await
        .map_err(|e| Fetch::Fatal(ReleaseError::Failed(format!("unpacking stopped: {e}"))))?;
    if let Some(why) = transport {
        return Err(Fetch::Transport(why));
    }
    unpacked.map_err(Fetch::Fatal)?;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_after_the_first_tile_the_bundle_in_whole_rounds_of_the_window() {
        const MIB: u64 = 1 << 20;
        for size in [
            1,
            RANGE,
            RANGE + 1,
            RANGE + MIB / 2,
            10 * MIB,
            56_210_422,
            300 * MIB + 7,
            1 << 40,
        ] {
            let ranges = later_ranges(size);
            // They follow the first range and each other without a gap or an overlap, to the end.
            let mut next = RANGE;
            for &(start, len) in &ranges {
                assert_eq!(start, next, "{size}: {ranges:?}");
                assert!(len <= RANGE, "{size}: {len}");
                next = start + len;
            }
            assert!(next >= size, "{size}: ends at {next}");
            assert_eq!(ranges.is_empty(), size <= RANGE, "{size}");
            // Only the last may run past the end (the store answers up to the end).
            if let Some(&(start, _)) = ranges.last() {
                assert!(start < size);
            }
            let rest = size.saturating_sub(RANGE);
            if rest >= RANGES_AT_ONCE as u64 * MIN_RANGE {
                assert_eq!(
                    (ranges.len() + 1) % RANGES_AT_ONCE,
                    0,
                    "{size}: {}",
                    ranges.len()
                );
                assert!(ranges.iter().all(|r| r.1 >= MIN_RANGE), "{size}");
            }
        }
        // The bundle: 56 MB is the first range and 15 more, two whole rounds of eight.
        assert_eq!(later_ranges(56_210_422).len(), 15);
        // 300 MiB: the first and 75 ranges of 4 MiB, rounded up to 80 in all (~3.75 MiB each).
        assert_eq!(later_ranges(300 * MIB + 7).len(), 79);
    }
}
