//! Per-endpoint rate limiting on ingest: a token bucket refilled at `rate_limit_per_s`, with a
//! burst of one second's worth. Pure: time is passed in.

/// A token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    per_second: u32,
    tokens_milli: u64,
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket for `per_second` requests per second.
    pub fn new(per_second: u32, now_ms: u64) -> Self {
        Self { per_second, tokens_milli: u64::from(per_second) * 1000, updated_ms: now_ms }
    }

    /// Takes a token at `now_ms`. `Err` carries the seconds until one is available (for
    /// `Retry-After`, at least 1).
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let capacity = u64::from(self.per_second) * 1000;
        let elapsed_ms = now_ms.saturating_sub(self.updated_ms);
        self.tokens_milli = (self.tokens_milli + elapsed_ms * u64::from(self.per_second)).min(capacity);
        self.updated_ms = now_ms;
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            return Ok(());
        }
        if self.per_second == 0 {
            return Err(1);
        }
        let missing = 1000 - self.tokens_milli;
        let wait_ms = missing.div_ceil(u64::from(self.per_second));
        Err(wait_ms.div_ceil(1000).max(1))
    }

    /// The configured rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bucket allows a burst of one second's worth, then refills at the rate.
    #[test]
    fn allows_rate_and_refills() {
        let mut bucket = TokenBucket::new(5, 0);
        for _ in 0..5 {
            assert_eq!(bucket.take(0), Ok(()));
        }
        assert_eq!(bucket.take(0), Err(1));
        assert_eq!(bucket.take(199), Err(1));
        assert_eq!(bucket.take(200), Ok(()));
        assert!(bucket.take(10_000).is_ok());
    }
}
