//! The bundle as byte ranges on several connections, fed to the unpacker in order: its first range,
//! the rest cut to fill whole rounds of the window, every size held to what the manifest allows before
//! any of it is unpacked. On a cold pull the first window is fetched beside the manifest.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use futures_util::future::{select, BoxFuture, Either};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;

use crate::release::error::ReleaseError;
use crate::release::format::Node;
use crate::release::progress::Progress;
use crate::release::store::Store;
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

/// The ranges after the first `RANGE` bytes of a bundle of `size`. The first window is whole ranges of
/// [`RANGE`], like the first (whose length is chosen before the size is known): the window moves on
/// only as its oldest range is read, so a range longer than the others beside it would hold them all
/// up. What is left after the first window is cut into equal ranges, as many as the window takes in
/// whole rounds (a multiple of [`RANGES_AT_ONCE`]), none over [`RANGE`] or (but the last) under
/// [`MIN_RANGE`]: every connection stays busy to the end, instead of a last round of one
/// or two ranges. A bundle within the first window is cut the same way into its equal rest.
fn later_ranges(size: u64) -> Vec<(u64, u64)> {
    let window = RANGES_AT_ONCE as u64;
    let whole = (size.saturating_sub(RANGE) / RANGE).min(window - 1);
    let first_window = (1..=whole).map(|k| (k * RANGE, RANGE));
    let from = RANGE * (1 + whole);
    let rest = size.saturating_sub(from);
    if rest == 0 {
        return first_window.collect();
    }
    // Room left in the first window, else whole rounds of it.
    let room = if whole < window - 1 {
        window - 1 - whole
    } else {
        rest.div_ceil(RANGE).div_ceil(window) * window
    };
    let count = room.min((rest / MIN_RANGE).max(1));
    let len = rest.div_ceil(count);
    first_window
        .chain((0..count).map(|k| (from + k * len, len)))
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

/// The bundle's ranges in flight, in order: at most [`RANGES_AT_ONCE`] fetched or being fetched. Only
/// the first is asked for by [`Window::open`]; the rest start as the window is read
/// ([`Window::next`]), or, on a cold pull, while the manifest is read ([`beside`]).
pub struct Window<'a> {
    store: &'a Store,
    key: String,
    /// The version every range is of (`If-Match`): a bundle replaced mid-fetch is refused, never mixed.
    etag: String,
    /// What the first range's `Content-Range` claims: held to the manifest's bound before a byte of it
    /// is unpacked.
    size: u64,
    rest: std::vec::IntoIter<(u64, u64)>,
    in_flight: FuturesOrdered<BoxFuture<'a, Result<Bytes, ReleaseError>>>,
    /// Ranges already in, not yet read (the window fetched while the manifest was).
    ready: VecDeque<Result<Bytes, ReleaseError>>,
}

impl<'a> Window<'a> {
    /// Asks for the first range of release `id`'s bundle and reads its answer's head: how large the
    /// bundle is and which version. Its body and the other ranges are not asked for yet.
    pub async fn open(store: &'a Store, id: &str) -> Result<Window<'a>, ReleaseError> {
        let key = store.source.bundle_key(id);
        let first = store.open_range(&key, (0, RANGE), None).await?;
        let (size, etag) = (first.total, first.etag.clone());
        let mut in_flight = FuturesOrdered::new();
        let first_key = key.clone();
        in_flight.push_back(async move { store.read_range(&first_key, first).await }.boxed());
        Ok(Window {
            store,
            key,
            etag,
            size,
            rest: later_ranges(size).into_iter(),
            in_flight,
            ready: VecDeque::new(),
        })
    }

    /// Asks for more ranges while the window has room.
    fn refill(&mut self) {
        while self.ready.len() + self.in_flight.len() < RANGES_AT_ONCE {
            let Some(range) = self.rest.next() else {
                break;
            };
            let (store, key, etag) = (self.store, self.key.clone(), self.etag.clone());
            self.in_flight
                .push_back(async move { store.get_range(&key, range, &etag).await }.boxed());
        }
    }

    /// The next range in order (`None`: the bundle is all in), asking for the next one as it goes.
    async fn next(&mut self) -> Option<Result<Bytes, ReleaseError>> {
        self.refill();
        match self.ready.pop_front() {
            Some(range) => Some(range),
            None => self.in_flight.next().await,
        }
    }

    /// Fetches the first window whole, keeping what comes in; stopped at any point (it is one of two
    /// futures raced in [`beside`]), nothing fetched is lost.
    async fn fill(&mut self) {
        self.refill();
        while let Some(range) = self.in_flight.next().await {
            self.ready.push_back(range);
        }
    }
}

/// `manifest` and, beside it, release `id`'s bundle: its first window of ranges (at most
/// [`RANGES_AT_ONCE`] × 4 MiB, whatever the bundle's head claims) is fetched while the manifest is
/// read, verified, and found to bound the bundle; nothing of it is unpacked before that. A cold pull
/// fetches the bundle: this saves it a round of waiting. `None`: the bundle could not be opened (the
/// fetch asks again, and falls back to objects).
pub async fn beside<'a, T>(
    store: &'a Store,
    id: &str,
    manifest: impl Future<Output = T>,
) -> (T, Option<Window<'a>>) {
    let manifest = std::pin::pin!(manifest);
    let opening = std::pin::pin!(Window::open(store, id));
    let (opened, manifest) = match select(manifest, opening).await {
        Either::Left((read, opening)) => return (read, opening.await.ok()),
        Either::Right(opened) => opened,
    };
    let Ok(mut window) = opened else {
        return (manifest.await, None);
    };
    let read = {
        let filling = std::pin::pin!(window.fill());
        match select(manifest, filling).await {
            Either::Left((read, _)) => read,
            Either::Right(((), manifest)) => manifest.await,
        }
    };
    (read, Some(window))
}

pub(super) async fn fetch_bundle<'a>(
    store: &'a Store,
    id: &str,
    nodes: &[Node],
    partial: &Path,
    head_start: Option<Window<'a>>,
) -> Result<u64, Fetch> {
    let most = bundle_bound(nodes);
    // The first range's head says how large the bundle is and which version it is; the other ranges
    // are asked for once that size is within the manifest's bound, while the first one's body is still
    // arriving.
    let mut window = match head_start {
        Some(window) => window,
        None => Window::open(store, id)
            .await
            .map_err(|e| Fetch::Transport(e.to_string()))?,
    };
    let size = window.size;
    if size > most {
        return Err(Fetch::Fatal(ReleaseError::Failed(format!(
            "{} claims {size} bytes, more than a bundle of release {id} can hold ({most} bytes for its {} entries): refused, none of it unpacked",
            store.url(&window.key),
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
    while let Some(part) = window.next().await {
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
    drop(window);
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
            // None is short of MIN_RANGE but the last, when less is left.
            let short = ranges.iter().filter(|r| r.1 < MIN_RANGE).count();
            assert!(
                short == 0 || (short == 1 && ranges.last().unwrap().1 < MIN_RANGE),
                "{size}"
            );
            let window = RANGES_AT_ONCE as u64;
            if size >= window * (RANGE + MIN_RANGE) {
                // The first window is whole ranges, like the first; then whole rounds of the window.
                assert!(
                    ranges[..RANGES_AT_ONCE - 1].iter().all(|r| r.1 == RANGE),
                    "{size}"
                );
                assert_eq!(
                    (ranges.len() + 1) % RANGES_AT_ONCE,
                    0,
                    "{size}: {}",
                    ranges.len()
                );
            }
        }
        // The bundle: 56 MB is a window of eight 4 MiB ranges and one of eight 2.8 MB.
        let ranges = later_ranges(56_210_422);
        assert_eq!(ranges.len(), 15);
        assert_eq!(ranges[7], (8 * RANGE, 2_831_999));
        // 300 MiB: the first window, then 268 MiB in 67 ranges of 4 MiB rounded up to 72 (~3.7 MiB).
        assert_eq!(later_ranges(300 * MIB + 7).len(), 79);
        // 10 MiB: two ranges of 4 MiB, the last 2 MiB in two.
        assert_eq!(
            later_ranges(10 * MIB),
            [(RANGE, RANGE), (2 * RANGE, MIB), (2 * RANGE + MIB, MIB)]
        );
    }
}
