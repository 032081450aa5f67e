//! The release source in S3: small reads, conditional GETs and writes, listings, and the region a
//! bucket lives in; streamed uploads and downloads are in `transfer.rs`.

use std::collections::BTreeSet;

use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

mod transfer;
pub use transfer::OpenRange;

use super::error::ReleaseError;
use super::format::{Pointer, SourceUrl, POINTER_LIMIT};
use crate::aws::{Aws, AwsError};
use crate::retry::{retry, Failure, Policy, Verdict};
use std::future::Future;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// Parts of a streamed upload. S3's minimum part size; a few of them are all the memory a push holds.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Objects fetched at once by a pull.
pub const FETCHES_AT_ONCE: usize = 16;
/// Tries of one object whose body breaks off.
pub const OBJECT_ATTEMPTS: u32 = 4;

pub struct Store {
    /// The bucket's region and a client for it: the configured region until S3 names another.
    located: RwLock<(String, aws_sdk_s3::Client)>,
    /// What a client for another region is built from.
    config: aws_sdk_s3::Config,
    pub source: SourceUrl,
}

/// How a write must relate to what is there.
pub enum Condition {
    None,
    /// Only if nothing is there (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag.
    Unchanged(String),
}

pub enum Polled {
    Unchanged,
    Absent,
    /// Changed, with its new ETag.
    Changed(String),
}

/// A failed write: someone else's write won (the condition failed), or something else went wrong.
pub enum PutError {
    Conflict,
    Failed(ReleaseError),
}

impl Store {
    pub fn new(aws: &Aws, source: SourceUrl) -> Store {
        // Emulators and proxies are reached by address: path-style requests. embark verifies every byte
        // against sha256 itself, so the SDK's optional CRC checksums are left to when S3 requires them.
        let config = aws_sdk_s3::config::Builder::from(&aws.config)
            .force_path_style(Aws::custom_endpoint("s3"))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Store::from_conf(config, source)
    }

    fn from_conf(config: aws_sdk_s3::Config, source: SourceUrl) -> Store {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        Store {
            located: RwLock::new((region, aws_sdk_s3::Client::from_conf(config.clone()))),
            config,
            source,
        }
    }

    /// A store whose S3 calls are answered by `aws-smithy-mocks` rules (unit tests).
    #[cfg(test)]
    pub fn mocked(rules: &[&aws_smithy_mocks::Rule], source: SourceUrl) -> Store {
        let builder = aws_sdk_s3::Config::builder().region(Region::new("eu-west-1"));
        Store::from_conf(crate::testing::mocked_config(builder, rules), source)
    }

    /// The bucket is in `region` (`[release] region`), not the instance's: ask there from the start.
    pub fn in_region(self, region: Option<&str>) -> Store {
        match region {
            Some(region) => {
                let config = self
                    .config
                    .to_builder()
                    .region(Region::new(region.to_string()))
                    .build();
                Store::from_conf(config, self.source)
            }
            None => self,
        }
    }

    fn client(&self) -> aws_sdk_s3::Client {
        self.located
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn region(&self) -> String {
        self.located
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// One S3 call, asked again in the bucket's region when S3 answers that the bucket lives in
    /// another (301 `PermanentRedirect` naming it in `x-amz-bucket-region`; the SDK does not follow
    /// it). The region learnt is kept for every later call of this store.
    async fn call<T, E, F, Fut>(&self, send: F) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: Fn(aws_sdk_s3::Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let (asked, client) = self
            .located
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match send(client).await {
            Err(err) if self.relocate(&err, &asked) => send(self.client()).await,
            other => other,
        }
    }

    /// Follow a redirect to the bucket's region; false when the answer is not one (or names no
    /// usable region, or the one this call asked already). Calls side by side may all be redirected:
    /// the first moves the store, the others ask again where it moved.
    fn relocate<E>(&self, err: &SdkError<E, HttpResponse>, asked: &str) -> bool {
        let Some(response) = err.raw_response() else {
            return false;
        };
        if !matches!(response.status().as_u16(), 301 | 400) {
            return false;
        }
        let Some(region) = response.headers().get("x-amz-bucket-region") else {
            return false;
        };
        if !crate::aws::is_region(region) || region == asked {
            return false;
        }
        let mut located = self.located.write().unwrap_or_else(PoisonError::into_inner);
        if located.0 == region {
            return true;
        }
        tracing::info!(
            "s3://{} is in {region}, not {}: asking there (set [release] region = \"{region}\" to save the detour)",
            self.source.bucket,
            located.0
        );
        let config = self
            .config
            .to_builder()
            .region(Region::new(region.to_string()))
            .build();
        *located = (region.to_string(), aws_sdk_s3::Client::from_conf(config));
        true
    }

    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.source.bucket)
    }

    /// A failed S3 call as one sentence: the action, the object, and for a refusal the grant (on
    /// this source's keys) that is missing.
    fn failed<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
    ) -> ReleaseError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let err = AwsError::new(operation, err)
            .on(self.url(key))
            .resource(format!(
                "arn:{}:s3:::{}/{}",
                crate::aws::Partition::of_region(&self.region()).name,
                self.source.bucket,
                self.source.key("*")
            ));
        match err.code() {
            Some("NoSuchBucket") => ReleaseError::Failed(format!(
                "{err}: the bucket {} does not exist (or is not reachable with these credentials): check the bucket's name in the source, its region (`[release] region`, asked in {}), and that the credentials belong to the account that owns it",
                self.source.bucket,
                self.region()
            )),
            _ => err.into(),
        }
    }

    /// GetObject; `None` when there is no such key.
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, ReleaseError> {
        let bucket = &self.source.bucket;
        match self
            .call(|c| async move { c.get_object().bucket(bucket).key(key).send().await })
            .await
        {
            Ok(response) => Ok(Some(response)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(self.failed("s3:GetObject", key, &err)),
        }
    }

    /// A whole small object and its ETag; `None` when there is no such key.
    pub async fn get_small(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, String)>, ReleaseError> {
        let Some(response) = self.get(key).await? else {
            return Ok(None);
        };
        if response.content_length().unwrap_or(0) as u64 > limit {
            return Err(ReleaseError::Failed(format!(
                "{} is larger than the {limit} bytes embark accepts for it",
                self.url(key)
            )));
        }
        let etag = response.e_tag().unwrap_or_default().to_string();
        let mut body = response.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| {
                ReleaseError::Failed(format!(
                    "reading {} failed: {}",
                    self.url(key),
                    crate::output::error_chain(&err)
                ))
            })?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(ReleaseError::Failed(format!(
                    "{} is larger than the {limit} bytes embark accepts for it",
                    self.url(key)
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some((bytes, etag)))
    }

    /// The `current` pointer and its ETag; `None` when nothing was ever pushed. A pointer that is not
    /// embark's (unknown format, invalid id, not JSON) is refused here, for every reader.
    pub async fn read_pointer(&self) -> Result<Option<(Pointer, String)>, ReleaseError> {
        let key = self.source.pointer_key();
        let Some((bytes, etag)) = self.get_small(&key, POINTER_LIMIT).await? else {
            return Ok(None);
        };
        let pointer = Pointer::parse(&bytes).map_err(|why| {
            ReleaseError::Failed(format!(
                "{} is not a valid embark pointer ({why}); push a release again",
                self.url(&key)
            ))
        })?;
        Ok(Some((pointer, etag)))
    }

    /// Has `key` changed since `etag`? A conditional GET: cheap when it has not (304).
    pub async fn changed(&self, key: &str, etag: Option<&str>) -> Result<Polled, ReleaseError> {
        let bucket = &self.source.bucket;
        let answer = self
            .call(|c| async move {
                c.get_object()
                    .bucket(bucket)
                    .key(key)
                    .set_if_none_match(etag.map(str::to_string))
                    .send()
                    .await
            })
            .await;
        match answer {
            Ok(response) => Ok(Polled::Changed(
                response.e_tag().unwrap_or_default().to_string(),
            )),
            Err(err) if status(&err) == Some(304) => Ok(Polled::Unchanged),
            Err(err) if is_not_found(&err) => Ok(Polled::Absent),
            Err(err) => Err(self.failed("s3:GetObject", key, &err)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), ReleaseError> {
        let bucket = &self.source.bucket;
        self.call(|c| async move { c.delete_object().bucket(bucket).key(key).send().await })
            .await
            .map_err(|err| self.failed("s3:DeleteObject", key, &err))?;
        Ok(())
    }

    /// The body of an object, to be read as a stream, and its size.
    pub async fn get_stream(&self, key: &str) -> Result<(ByteStream, u64), ReleaseError> {
        let response = self.get(key).await?.ok_or_else(|| {
            ReleaseError::Failed(format!(
                "{} is missing from the source: the release is incomplete; push it again",
                self.url(key)
            ))
        })?;
        let size = response.content_length().unwrap_or(0).max(0) as u64;
        Ok((response.body, size))
    }

    /// A write, conditional or not. S3 answers a conditional write that raced another write to the
    /// same key with 409 `ConditionalRequestConflict`, which means "retry" (not "you lost"): it is
    /// retried here, with backoff, for up to ten seconds. 412 `PreconditionFailed` is the lost race.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> Result<(), PutError> {
        let policy = Policy::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        let result = retry(
            policy,
            |_| async {
                let sent = self.call(|c| {
                    let mut request = c
                        .put_object()
                        .bucket(&self.source.bucket)
                        .key(key)
                        .content_type(if key.ends_with(".json") || key.ends_with("current") {
                            "application/json"
                        } else {
                            "application/octet-stream"
                        })
                        .body(ByteStream::from(bytes.clone()));
                    request = match &condition {
                        Condition::None => request,
                        Condition::Absent => request.if_none_match("*"),
                        Condition::Unchanged(etag) => request.if_match(etag),
                    };
                    request.send()
                });
                match sent.await {
                    Ok(_) => Verdict::Done(()),
                    Err(err) if is_busy(&err) => Verdict::Retry(()),
                    Err(err) if is_conflict(&err) => Verdict::Stop(PutError::Conflict),
                    Err(err) => {
                        Verdict::Stop(PutError::Failed(self.failed("s3:PutObject", key, &err)))
                    }
                }
            },
            |w| {
                tracing::info!(
                    "{} is being written by another request (409); again in {:?}",
                    self.url(key),
                    w.delay
                )
            },
        )
        .await;
        result.map_err(|failure| match failure {
            Failure::Stopped(err) => err,
            Failure::GaveUp { .. } => PutError::Failed(ReleaseError::Failed(format!(
                "{} stayed in conflict with other writes (409 ConditionalRequestConflict) for ten seconds; push again",
                self.url(key)
            ))),
        })
    }

    /// Every key under `prefix` (paginated).
    pub async fn list_keys(&self, prefix: &str) -> Result<BTreeSet<String>, ReleaseError> {
        Ok(self.list(prefix, false).await?.into_iter().collect())
    }

    /// The "directories" directly under `prefix` (common prefixes with delimiter `/`).
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, ReleaseError> {
        self.list(prefix, true).await
    }

    /// Every key under `prefix` with its last modification (paginated).
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Option<SystemTime>)>, ReleaseError> {
        let bucket = &self.source.bucket;
        self.call(|c| async move { list_pages(c, bucket, prefix, false).await })
            .await
            .map_err(|err| self.failed("s3:ListObjectsV2", prefix, &err))
    }

    /// ListObjectsV2 over every page (asked again from the start after a redirect).
    async fn list(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, ReleaseError> {
        let bucket = &self.source.bucket;
        self.call(|c| async move { list_pages(c, bucket, prefix, dirs).await })
            .await
            .map(|found| found.into_iter().map(|(key, _)| key).collect())
            .map_err(|err| self.failed("s3:ListObjectsV2", prefix, &err))
    }
}

/// ListObjectsV2 over every page: the keys and their times, or with `dirs` the common prefixes at `/`.
async fn list_pages(
    client: aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    dirs: bool,
) -> Result<Vec<(String, Option<SystemTime>)>, SdkError<ListObjectsV2Error, HttpResponse>> {
    let mut found = Vec::new();
    let mut request = client.list_objects_v2().bucket(bucket).prefix(prefix);
    if dirs {
        request = request.delimiter("/");
    }
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page?;
        if dirs {
            found.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|c| c.prefix())
                    .map(|p| (p.to_string(), None)),
            );
        } else {
            found.extend(page.contents().iter().filter_map(|o| {
                let modified = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok());
                o.key().map(|k| (k.to_string(), modified))
            }));
        }
    }
    Ok(found)
}

fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    crate::aws::http_status(err)
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    not_found(crate::aws::error_code(err), status(err))
}

fn is_conflict<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    conflict(crate::aws::error_code(err), status(err))
}

fn is_busy<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    busy(crate::aws::error_code(err), status(err))
}

/// No such key: S3 says `NoSuchKey` on GET, a bare 404 on HEAD. A missing bucket is a 404 too, but
/// `NoSuchBucket` is not "nothing published yet": it is said as such.
fn not_found(code: Option<&str>, status: Option<u16>) -> bool {
    match code {
        Some("NoSuchKey" | "NotFound") => true,
        Some(_) => false,
        None => status == Some(404),
    }
}

/// A conditional write that lost: 412 `PreconditionFailed` (If-Match / If-None-Match failed).
/// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html)
fn conflict(code: Option<&str>, status: Option<u16>) -> bool {
    code == Some("PreconditionFailed") || (code.is_none() && status == Some(412))
}

/// 409 `ConditionalRequestConflict`: another write to the key was in progress; AWS says retry.
fn busy(code: Option<&str>, status: Option<u16>) -> bool {
    code == Some("ConditionalRequestConflict") || (code.is_none() && status == Some(409))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_write_conflicts_are_recognised() {
        // (code, status, lost the race, retry)
        let cases = [
            (Some("PreconditionFailed"), Some(412), true, false),
            (Some("ConditionalRequestConflict"), Some(409), false, true),
            (None, Some(412), true, false),
            (None, Some(409), false, true),
            (Some("AccessDenied"), Some(403), false, false),
            (Some("SlowDown"), Some(503), false, false),
            (None, None, false, false),
        ];
        for (code, status, lost, again) in cases {
            assert_eq!(conflict(code, status), lost, "{code:?} {status:?}");
            assert_eq!(busy(code, status), again, "{code:?} {status:?}");
        }
    }

    #[test]
    fn missing_keys_are_recognised() {
        assert!(not_found(Some("NoSuchKey"), Some(404)));
        assert!(not_found(None, Some(404)));
        assert!(!not_found(Some("NoSuchBucket"), Some(404)));
        assert!(!not_found(Some("AccessDenied"), Some(403)));
    }

    #[tokio::test]
    async fn a_denied_read_names_the_grant_on_the_source() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_smithy_mocks::mock;
        let denied = mock!(aws_sdk_s3::Client::get_object).then_error(|| {
            GetObjectError::generic(
                aws_smithy_types::error::metadata::ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("Access Denied")
                    .build(),
            )
        });
        let store = Store::mocked(
            &[&denied],
            SourceUrl::parse("s3://deploy-bucket/app").unwrap(),
        );
        let err = store.get_small("app/current", 1024).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not allowed to call s3:GetObject s3://deploy-bucket/app/current"),
            "{text}"
        );
        assert!(
            text.contains("on arn:aws:s3:::deploy-bucket/app/*"),
            "{text}"
        );
    }
}
