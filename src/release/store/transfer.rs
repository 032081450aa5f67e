//! The store's streamed transfers: a file under its content address, a stream as a multipart upload
//! (a few parts in memory), and a download written to a new file, hashed and bounded as it arrives,
//! each retried on its own; and one byte range of an object (the bundle's parallel fetch).

use std::path::Path;
use std::sync::Mutex;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::*;
use crate::release::progress::Progress;

/// Parts of a multipart upload on the wire at once: (this + 1) × [`PART_SIZE`] in memory (the
/// bundle's writer starts a part only once the one before is taken).
pub const PARTS_AT_ONCE: usize = 4;

impl Store {
    /// Upload one file under its content address; S3 checks the body against the sha256.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        sha256_hex: &str,
    ) -> Result<(), ReleaseError> {
        let cannot_read = |err: aws_smithy_types::byte_stream::error::Error| {
            ReleaseError::Failed(format!(
                "cannot read {}: {}",
                path.display(),
                crate::output::error_chain(&err)
            ))
        };
        let body = ByteStream::from_path(path).await.map_err(cannot_read)?;
        let body = Mutex::new(Some(body));
        let checksum =
            aws_smithy_types::base64::encode(hex::decode(sha256_hex).unwrap_or_default());
        let bucket = &self.source.bucket;
        let checksum = &checksum;
        let body = &body;
        self.call(|c| async move {
            // The body opened above; opened again only for a second try in the bucket's region.
            let opened = body.lock().unwrap_or_else(PoisonError::into_inner).take();
            let body = match opened {
                Some(body) => body,
                None => ByteStream::from_path(path)
                    .await
                    .map_err(SdkError::construction_failure)?,
            };
            c.put_object()
                .bucket(bucket)
                .key(key)
                .checksum_sha256(checksum)
                .body(body)
                .send()
                .await
        })
        .await
        .map_err(|err| self.failed("s3:PutObject", key, &err))?;
        Ok(())
    }

    /// Upload what arrives on `chunks` (each at least [`PART_SIZE`] except the last) as one object:
    /// one PutObject when it all fits in one part, else a multipart upload, aborted on failure.
    pub async fn upload_stream(
        &self,
        key: &str,
        mut chunks: mpsc::Receiver<Bytes>,
        mut sent: impl FnMut(u64),
    ) -> Result<u64, ReleaseError> {
        let first = chunks.recv().await.unwrap_or_default();
        let Some(second) = chunks.recv().await else {
            let size = first.len() as u64;
            let (bucket, first) = (&self.source.bucket, &first);
            self.call(|c| async move {
                c.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(first.clone()))
                    .send()
                    .await
            })
            .await
            .map_err(|err| self.failed("s3:PutObject", key, &err))?;
            sent(size);
            return Ok(size);
        };
        let bucket = &self.source.bucket;
        let upload = self
            .call(|c| async move {
                c.create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
            })
            .await
            .map_err(|err| self.failed("s3:CreateMultipartUpload", key, &err))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(key, &upload_id, [first, second], &mut chunks, &mut sent)
            .await;
        if result.is_err() {
            let _ = self
                .client()
                .abort_multipart_upload()
                .bucket(&self.source.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// The parts, [`PARTS_AT_ONCE`] on the wire at once (S3 scales by connections), completed in
    /// their order. In memory: the parts in flight, and one waiting in the channel or being written.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        head: [Bytes; 2],
        chunks: &mut mpsc::Receiver<Bytes>,
        sent: &mut impl FnMut(u64),
    ) -> Result<u64, ReleaseError> {
        let rest = stream::unfold(chunks, |chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        });
        let mut uploads = std::pin::pin!(stream::iter(head)
            .chain(rest)
            .enumerate()
            .map(|(index, chunk)| self.upload_part(key, upload_id, index as i32 + 1, chunk))
            .buffer_unordered(PARTS_AT_ONCE));
        let mut parts = Vec::new();
        let mut total = 0u64;
        while let Some(done) = uploads.next().await {
            let (part, size) = done?;
            parts.push(part);
            total += size;
            sent(size);
        }
        parts.sort_by_key(|p| p.part_number());
        self.client()
            .complete_multipart_upload()
            .bucket(&self.source.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| self.failed("s3:CompleteMultipartUpload", key, &err))?;
        Ok(total)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        chunk: Bytes,
    ) -> Result<(CompletedPart, u64), ReleaseError> {
        let size = chunk.len() as u64;
        let part = self
            .client()
            .upload_part()
            .bucket(&self.source.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk))
            .send()
            .await
            .map_err(|err| self.failed("s3:UploadPart", key, &err))?;
        let done = CompletedPart::builder()
            .part_number(number)
            .set_e_tag(part.e_tag().map(str::to_string))
            .build();
        Ok((done, size))
    }

    /// GET `key` into a new file at `target`, hashing as it goes (a body that breaks off is fetched
    /// again), never writing more than `limit` bytes: a longer body returns a size above the limit and
    /// leaves no file. Returns the sha256 and the size.
    pub async fn download(
        &self,
        key: &str,
        target: &Path,
        progress: &Mutex<Progress>,
        limit: Option<u64>,
    ) -> Result<(String, u64), ReleaseError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let _ = std::fs::remove_file(target);
            let file = crate::fsutil::open_new(target)
                .map_err(|e| crate::release::error::io_failed("writing", target, &e))?;
            let mut file = tokio::fs::File::from_std(file);
            let (mut body, _) = self.get_stream(key).await?;
            let mut hash = crate::fsutil::Hasher::new();
            let mut broken = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) => {
                        hash.update(&chunk);
                        if limit.is_some_and(|l| hash.bytes() > l) {
                            // More than promised: stop here, write nothing of it; the caller sees
                            // a size above the limit and says so.
                            drop(file);
                            let _ = std::fs::remove_file(target);
                            return Ok(hash.finish());
                        }
                        file.write_all(&chunk)
                            .await
                            .map_err(|e| crate::release::error::io_failed("writing", target, &e))?;
                        if let Ok(mut p) = progress.lock() {
                            p.add(chunk.len() as u64);
                        }
                    }
                    Err(err) => {
                        broken = Some(crate::output::error_chain(&err));
                        break;
                    }
                }
            }
            if let Some(why) = broken {
                if attempt < OBJECT_ATTEMPTS {
                    tracing::debug!("reading {key} broke off ({why}); again");
                    continue;
                }
                return Err(ReleaseError::Failed(format!(
                    "reading {} failed {attempt} times: {why}",
                    self.url(key)
                )));
            }
            file.flush()
                .await
                .map_err(|e| crate::release::error::io_failed("writing", target, &e))?;
            return Ok(hash.finish());
        }
    }

    /// Bytes `start..start + len` of `key` (fewer at its end), of the version `if_match` names: see
    /// [`Store::open_range`] and [`Store::read_range`].
    pub async fn get_range(
        &self,
        key: &str,
        range: (u64, u64),
        if_match: &str,
    ) -> Result<Bytes, ReleaseError> {
        let opened = self.open_range(key, range, Some(if_match)).await?;
        self.read_range(key, opened).await
    }

    /// Asks for bytes `start..start + len` of `key` and reads the answer's head only: the object's
    /// whole size (from `Content-Range`) and its ETag; with `if_match`, only of that version (a bundle
    /// replaced mid-fetch is refused, never mixed). The body is left to [`Store::read_range`]: the
    /// caller holds the size to what it expects before any of it is read.
    pub async fn open_range(
        &self,
        key: &str,
        (start, len): (u64, u64),
        if_match: Option<&str>,
    ) -> Result<OpenRange, ReleaseError> {
        let bucket = &self.source.bucket;
        let range = range_header(start, len);
        let answer = self
            .call(|c| {
                let range = range.clone();
                async move {
                    c.get_object()
                        .bucket(bucket)
                        .key(key)
                        .range(range)
                        .set_if_match(if_match.map(str::to_string))
                        .send()
                        .await
                }
            })
            .await
            .map_err(|err| self.failed("s3:GetObject", key, &err))?;
        let total = answer
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| {
                ReleaseError::Failed(format!(
                    "{} answered a range request without a usable Content-Range ({:?})",
                    self.url(key),
                    answer.content_range()
                ))
            })?;
        let etag = answer.e_tag().unwrap_or_default().to_string();
        Ok(OpenRange {
            total,
            etag,
            range: (start, len),
            body: answer.body,
        })
    }

    /// The body of an opened range, read bounded by its length. A body that breaks off or comes
    /// short is asked for again (of the same version, by its ETag), [`OBJECT_ATTEMPTS`] tries in all.
    pub async fn read_range(&self, key: &str, opened: OpenRange) -> Result<Bytes, ReleaseError> {
        let OpenRange {
            total,
            etag,
            range: (start, len),
            mut body,
        } = opened;
        let range = range_header(start, len);
        let expected = len.min(total.saturating_sub(start));
        let mut attempt = 1;
        loop {
            let mut bytes = bytes::BytesMut::with_capacity(expected as usize);
            let mut broken = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) if (bytes.len() + chunk.len()) as u64 > len => {
                        return Err(ReleaseError::Failed(format!(
                            "{} sent more than the {len} bytes of the range asked for",
                            self.url(key)
                        )))
                    }
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(err) => {
                        broken = Some(crate::output::error_chain(&err));
                        break;
                    }
                }
            }
            let why = match broken {
                None if bytes.len() as u64 == expected => return Ok(bytes.freeze()),
                None => format!("it came with {} bytes, not {expected}", bytes.len()),
                Some(why) => why,
            };
            if attempt >= OBJECT_ATTEMPTS {
                return Err(ReleaseError::Failed(format!(
                    "reading {} ({range}) failed {attempt} times: {why}",
                    self.url(key)
                )));
            }
            tracing::debug!("reading {key} {range} broke off ({why}); again");
            attempt += 1;
            let again = self.open_range(key, (start, len), Some(&etag)).await?;
            if again.total != total {
                return Err(ReleaseError::Failed(format!(
                    "{} changed size while it was read ({total} then {} bytes)",
                    self.url(key),
                    again.total
                )));
            }
            body = again.body;
        }
    }
}

/// A range asked for, its head read: the object's size and ETag, and the body still to read.
pub struct OpenRange {
    pub total: u64,
    pub etag: String,
    range: (u64, u64),
    body: ByteStream,
}

/// HTTP's `Range` for bytes `start..start + len`.
fn range_header(start: u64, len: u64) -> String {
    format!("bytes={start}-{}", start + len.max(1) - 1)
}
