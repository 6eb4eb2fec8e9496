//! Token buckets keyed by a string the caller picks (`session:<id>`, `token:<index>`,
//! `addr:<ip>`, `fail:<ip>`): each holds up to `burst` requests and refills at
//! `per_second`. An empty bucket answers with how long until the next request would be
//! allowed. Buckets idle for ten minutes are forgotten once the table grows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Buckets idle this long are forgotten when the table grows.
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// Table size above which idle buckets are swept.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-caller token buckets.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// A limiter with `limit`'s refill rate and bucket size.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // both are at most 1e6
    pub fn new(limit: RateLimit) -> Self {
        Self { rate: limit.per_second as f64, burst: limit.burst as f64, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait.
    ///
    /// # Errors
    /// The bucket is empty: the `Err` is the time until it holds one request again.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Ok(mut map) = self.buckets.lock() else { return Ok(()) };
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, b| now.duration_since(b.last) < IDLE_FORGET);
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, last: now });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> Limiter {
        Limiter::new(RateLimit { per_second: 2, burst: 3 })
    }

    /// Uses up the burst of 3.
    fn exhaust(l: &Limiter, now: Instant) {
        for _ in 0..3 {
            let _ = l.check("a", now);
        }
    }

    #[test]
    fn burst_passes_then_refuses() {
        let l = limiter();
        let now = Instant::now();
        let results: Vec<bool> = (0..4).map(|_| l.check("a", now).is_ok()).collect();
        assert_eq!(results, [true, true, true, false]);
    }

    #[test]
    fn refusal_says_when_to_retry() {
        let l = limiter();
        let now = Instant::now();
        exhaust(&l, now);
        assert_eq!(l.check("a", now), Err(Duration::from_millis(500)));
    }

    #[test]
    fn bucket_refills_over_time() {
        let l = limiter();
        let now = Instant::now();
        exhaust(&l, now);
        assert!(l.check("a", now + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn callers_have_separate_buckets() {
        let l = limiter();
        let now = Instant::now();
        exhaust(&l, now);
        assert!(l.check("b", now).is_ok());
    }
}
