//! Retrying within a deadline. At boot many things are "not yet": IMDS while the network comes up, a
//! mount target the same stack is still creating, an address a terminating instance is about to free,
//! an application warming up. Each is retried with a Fibonacci backoff, but at boot "eventually" must
//! still end: every retry loop in embark is this one, bounded by a deadline.
//!
//! The last wait is cut to the time that is left and one more attempt is made at the deadline, so a
//! service that comes up just before it is not missed.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Fibonacci delays between `first` and `max` (250 ms, 250 ms, 500 ms, 750 ms, ... 10 s).
#[derive(Debug, Clone)]
pub struct Fibonacci {
    a: Duration,
    b: Duration,
    max: Duration,
}

impl Fibonacci {
    pub fn new(first: Duration, max: Duration) -> Fibonacci {
        Fibonacci {
            a: first,
            b: first,
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.a.min(self.max);
        let next = self.a + self.b;
        self.a = self.b;
        self.b = next.min(self.max * 2);
        delay
    }
}

/// What one attempt found: done, not yet (`R` says why, for logs and the final error), or a failure
/// that retrying would not mend.
#[derive(Debug)]
pub enum Verdict<T, R, E> {
    Done(T),
    Retry(R),
    Stop(E),
}

/// How a retried operation ended without success.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure<R, E> {
    /// An attempt said retrying would not help.
    Stopped(E),
    /// The deadline passed; `last` is what the last attempt found.
    GaveUp {
        last: R,
        attempts: u32,
        elapsed: Duration,
    },
}

/// A wait between attempts, for the caller to log.
pub struct Waiting<'a, R> {
    /// The attempt that just failed (1-based).
    pub attempt: u32,
    pub last: &'a R,
    pub delay: Duration,
    /// Time left before the deadline, before this wait.
    pub left: Duration,
    pub elapsed: Duration,
}

/// The delays and the deadline of one retried operation.
#[derive(Debug, Clone)]
pub struct Policy {
    pub backoff: Fibonacci,
    pub deadline: Duration,
}

impl Policy {
    pub fn new(first: Duration, max: Duration, deadline: Duration) -> Policy {
        Policy {
            backoff: Fibonacci::new(first, max),
            deadline,
        }
    }
}

/// Runs `attempt` until it is done, says stop, or the deadline passes.
pub async fn retry<T, R, E, F, Fut>(
    policy: Policy,
    mut attempt: F,
    mut waiting: impl FnMut(&Waiting<'_, R>),
) -> Result<T, Failure<R, E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Verdict<T, R, E>>,
{
    let Policy {
        mut backoff,
        deadline,
    } = policy;
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match attempt(attempts).await {
            Verdict::Done(value) => return Ok(value),
            Verdict::Stop(err) => return Err(Failure::Stopped(err)),
            Verdict::Retry(err) => err,
        };
        let elapsed = started.elapsed();
        let left = deadline.saturating_sub(elapsed);
        if left.is_zero() {
            return Err(Failure::GaveUp {
                last,
                attempts,
                elapsed,
            });
        }
        let delay = backoff.next_delay().min(left);
        waiting(&Waiting {
            attempt: attempts,
            last: &last,
            delay,
            left,
            elapsed,
        });
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn fibonacci_backoff_is_bounded() {
        let mut f = Fibonacci::new(Duration::from_millis(250), Duration::from_secs(10));
        let delays: Vec<u64> = (0..12).map(|_| f.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            vec![250, 250, 500, 750, 1250, 2000, 3250, 5250, 8500, 10000, 10000, 10000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_done() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, Failure<&str, &str>> = retry(
            Policy::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
            |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Verdict::Retry("not yet")
                    } else {
                        Verdict::Done(n)
                    }
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_is_final() {
        let result: Result<(), Failure<&str, &str>> = retry(
            Policy::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
            |_| async { Verdict::Stop("forbidden") },
            |_| panic!("no wait after a stop"),
        )
        .await;
        assert_eq!(result, Err(Failure::Stopped("forbidden")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_is_at_the_deadline() {
        // 20 s deadline, 250 ms Fibonacci: the uncut delays would end at 13.9 s; the last wait is cut
        // to the time left and one more attempt is made at 20 s.
        let started = tokio::time::Instant::now();
        let mut times = Vec::new();
        let result: Result<(), Failure<&str, &str>> = retry(
            Policy::new(
                Duration::from_millis(250),
                Duration::from_secs(10),
                Duration::from_secs(20),
            ),
            |_| {
                times.push(started.elapsed());
                async { Verdict::Retry("down") }
            },
            |_| {},
        )
        .await;
        let Err(Failure::GaveUp { attempts, .. }) = result else {
            panic!("expected to give up: {result:?}");
        };
        assert_eq!(attempts as usize, times.len());
        let last = *times.last().unwrap();
        assert!(last >= Duration::from_secs(20), "{times:?}");
        assert!(last < Duration::from_millis(20_100), "{times:?}");
        assert!(
            times[times.len() - 2] < Duration::from_secs(20),
            "only one attempt at the deadline: {times:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_reported_with_the_time_left() {
        let mut seen = Vec::new();
        let _: Result<(), Failure<&str, &str>> = retry(
            Policy::new(
                Duration::from_secs(2),
                Duration::from_secs(2),
                Duration::from_secs(5),
            ),
            |_| async { Verdict::Retry("down") },
            |w| seen.push((w.attempt, w.delay.as_secs(), w.left.as_secs())),
        )
        .await;
        assert_eq!(seen, vec![(1, 2, 5), (2, 2, 3), (3, 1, 1)]);
    }
}
