//! `s3://bucket/prefix` URLs: one rule for release sources everywhere (the file, the tag, `--to`,
//! `--from`). What lives under a source is the release format's (`release::format`).

use std::fmt;

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
