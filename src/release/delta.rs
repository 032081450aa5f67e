//! A manifest as a delta against an earlier release's manifest (docs/release-format.md, "Manifest
//! deltas"): zstd with the earlier manifest as its dictionary, so that an instance holding that
//! manifest fetches only what changed. What the delta rebuilds is checked against the pointer's
//! `manifest_sha256`, as a whole manifest is: the delta adds no trust, only saves bytes.

use std::io::{self, Read};

/// zstd level for deltas: they are small and written once, read by every instance.
const LEVEL: i32 = 19;

/// The window a delta needs: the base and the manifest together (zstd's "patch-from" rule), at least
/// zstd's minimum. Both sides derive it from sizes the pointer promises, so a hostile delta cannot
/// make an instance reserve more.
fn window_log(base: usize, manifest: u64) -> u32 {
    let span = (base as u64).saturating_add(manifest).max(1 << 10);
    (64 - (span - 1).leading_zeros()).clamp(10, 30)
}

/// `manifest` as a delta against `base`.
pub fn encode(base: &[u8], manifest: &[u8]) -> io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::with_dictionary(LEVEL, base)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::WindowLog(window_log(
        base.len(),
        manifest.len() as u64,
    )))?;
    compressor.compress(manifest)
}

/// The manifest `delta` rebuilds from `base`: at most `manifest_size` bytes (more is an error), read
/// as it comes (nothing is reserved on the delta's word).
pub fn decode(base: &[u8], delta: &[u8], manifest_size: u64) -> io::Result<Vec<u8>> {
    let mut decoder = zstd::stream::read::Decoder::with_dictionary(delta, base)?;
    decoder.window_log_max(window_log(base.len(), manifest_size))?;
    let mut out = Vec::new();
    decoder
        .take(manifest_size.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 != manifest_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it rebuilds {} bytes, not the {manifest_size} the pointer promises",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: usize, changed: usize, seed: &str) -> Vec<u8> {
        let mut text = String::from("{\"entries\": [\n");
        for i in 0..files {
            let tag = if i < changed { seed } else { "base" };
            let hash = format!("{:x}", md5ish(&format!("{tag}{i}")));
            text.push_str(&format!(
                "  {{\"path\": \"public/dir{}/file{i}.php\", \"sha256\": \"{hash}{hash}\", \"size\": {}}},\n",
                i % 97,
                i * 37 % 5000
            ));
        }
        text.push_str("]}\n");
        text.into_bytes()
    }

    /// A cheap stand-in for a content hash (distinct per input).
    fn md5ish(s: &str) -> u128 {
        s.bytes()
            .fold(0x6c62272e07bb014262b821756295c58d_u128, |h, b| {
                (h ^ b as u128).wrapping_mul(0x0000000001000000000000000000013B)
            })
    }

    #[test]
    fn a_small_change_is_a_small_delta_that_rebuilds_the_manifest_exactly() {
        let base = manifest(10_000, 0, "v1");
        let next = manifest(10_000, 100, "v2");
        let delta = encode(&base, &next).unwrap();
        assert!(
            delta.len() < next.len() / 50,
            "{} of {}",
            delta.len(),
            next.len()
        );
        assert_eq!(decode(&base, &delta, next.len() as u64).unwrap(), next);
    }

    #[test]
    fn the_promised_size_bounds_what_is_rebuilt() {
        let base = manifest(100, 0, "v1");
        let next = manifest(100, 10, "v2");
        let delta = encode(&base, &next).unwrap();
        let short = decode(&base, &delta, next.len() as u64 - 1).unwrap_err();
        assert!(short.to_string().contains("not the"), "{short}");
        assert!(decode(&base, &delta, next.len() as u64 + 1).is_err());
    }

    #[test]
    fn another_base_or_garbage_is_an_error_not_a_manifest() {
        let base = manifest(100, 0, "v1");
        let next = manifest(100, 10, "v2");
        let delta = encode(&base, &next).unwrap();
        let other = manifest(100, 50, "other");
        if let Ok(out) = decode(&other, &delta, next.len() as u64) {
            assert_ne!(out, next, "a wrong base cannot rebuild the manifest");
        }
        assert!(decode(&base, b"not zstd at all", 100).is_err());
    }
}
