//! Validation after a switch: the `[health]` URL must answer the expected status (and body) several
//! times in a row within the timeout. One success is not enough: PHP-FPM and OPcache warm up, and a
//! release that answers once and then fails is the one to catch.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::retry::{retry, Failure, Policy, Verdict};

/// What a live release must answer (`[health] url`, `expect_status`, `expect_body`, `successes`,
/// `timeout`).
#[derive(Debug, Clone)]
pub struct Validation {
    pub url: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub successes: u32,
    pub timeout: Duration,
}

/// The most of a body that is read, and the most of it a report quotes.
const BODY_LIMIT: usize = 64 << 10;
const QUOTED: usize = 200;

/// Probes until `successes` answers in a row are as expected: how long it took; else why not (the
/// last status and the start of its body, or the connection error).
pub async fn validate(http: &reqwest::Client, v: &Validation) -> Result<Duration, String> {
    let started = Instant::now();
    let streak = AtomicU32::new(0);
    let policy = Policy::new(
        Duration::from_millis(200),
        Duration::from_secs(2),
        v.timeout,
    );
    let result: Result<(), Failure<String, std::convert::Infallible>> = retry(
        policy,
        |_| {
            let streak = &streak;
            async move {
                match answer(http, v).await {
                    Ok(()) => {
                        let now = streak.fetch_add(1, Ordering::SeqCst) + 1;
                        if now >= v.successes {
                            Verdict::Done(())
                        } else {
                            Verdict::Retry(format!("{now} of {} answers as expected", v.successes))
                        }
                    }
                    Err(why) => {
                        streak.store(0, Ordering::SeqCst);
                        Verdict::Retry(why)
                    }
                }
            }
        },
        |w| tracing::debug!("validating {}: {}; again in {:?}", v.url, w.last, w.delay),
    )
    .await;
    match result {
        Ok(()) => Ok(started.elapsed()),
        Err(Failure::Stopped(never)) => match never {},
        Err(Failure::GaveUp { last, .. }) => Err(format!(
            "{} did not answer {}{} {} times in a row within {}: {last}",
            v.url,
            v.expect_status,
            v.expect_body
                .as_deref()
                .map(|b| format!(" with {b:?} in its body"))
                .unwrap_or_default(),
            v.successes,
            humantime::format_duration(v.timeout)
        )),
    }
}

/// One GET: as expected, or what it answered.
async fn answer(http: &reqwest::Client, v: &Validation) -> Result<(), String> {
    let response = http
        .get(&v.url)
        .timeout(v.timeout.min(Duration::from_secs(10)))
        .send()
        .await
        .map_err(|e| crate::output::error_chain(&e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut response = response;
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= BODY_LIMIT {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let ok = status == v.expect_status && v.expect_body.as_deref().is_none_or(|b| text.contains(b));
    if ok {
        return Ok(());
    }
    let mut quoted: String = text.chars().take(QUOTED).collect();
    quoted = quoted.split_whitespace().collect::<Vec<_>>().join(" ");
    Err(format!("HTTP {status}: {quoted:?}"))
}
