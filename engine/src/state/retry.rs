//! The retry schedule: pure functions of the policy, the attempt count, the time and a random
//! sample (passed in, so tests need neither a clock nor a seed).
//!
//! delay_n = min(max_delay, initial_delay × multiplier^(n−1)), spread by ±jitter, where n is the
//! number of attempts made so far. A `Retry-After` from a 429 or 503 replaces the computed delay,
//! capped by max_delay.

use crate::model::endpoint::RetryPolicy;

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time (Unix ms).
    RetryAt(u64),
    /// Give up: attempts or age exhausted.
    GiveUp,
}

/// The delay before the attempt after the `attempts`-th, without jitter.
pub fn base_delay_ms(policy: &RetryPolicy, attempts: u32) -> u64 {
    let exponent = attempts.saturating_sub(1).min(64) as i32;
    let delay = policy.initial_delay_ms as f64 * policy.multiplier.powi(exponent);
    if delay.is_finite() && delay < policy.max_delay_ms as f64 {
        delay as u64
    } else {
        policy.max_delay_ms
    }
}

/// Applies jitter: `sample` in [−1, 1] moves the delay by up to ±`policy.jitter` of itself; the
/// result stays within [0, max_delay].
pub fn jittered_ms(policy: &RetryPolicy, delay_ms: u64, sample: f64) -> u64 {
    let spread = policy.jitter.clamp(0.0, 1.0) * sample.clamp(-1.0, 1.0);
    let delay = delay_ms as f64 * (1.0 + spread);
    (delay.max(0.0) as u64).min(policy.max_delay_ms)
}

/// Decides the next step after a retryable failure. `attempts` counts attempts made (this one
/// included); `received_at_ms` is when the event was accepted; `retry_after_ms` is the
/// destination's `Retry-After`, if it sent one on a 429 or 503.
pub fn next_attempt(
    policy: &RetryPolicy,
    attempts: u32,
    received_at_ms: u64,
    now_ms: u64,
    retry_after_ms: Option<u64>,
    sample: f64,
) -> Next {
    if attempts >= policy.max_attempts {
        return Next::GiveUp;
    }
    let delay = match retry_after_ms {
        Some(retry_after) => retry_after.min(policy.max_delay_ms),
        None => jittered_ms(policy, base_delay_ms(policy, attempts), sample),
    };
    let due = now_ms.saturating_add(delay);
    if due.saturating_sub(received_at_ms) > policy.max_age_ms {
        return Next::GiveUp;
    }
    Next::RetryAt(due)
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date relative to `now_ms` (any of
/// the three formats RFC 9110 §5.6.7 requires a recipient to accept, parsed by `httpdate`).
/// `None` when it is neither.
pub fn parse_retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = u64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(at_ms.saturating_sub(now_ms))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    // The documented defaults: 5 s, ×4 each time, capped at 10 h.
    #[test]
    fn delays_grow_exponentially_to_the_cap() {
        let delays: Vec<u64> = (1..=8).map(|attempts| base_delay_ms(&policy(), attempts)).collect();
        assert_eq!(delays[..5], [5_000, 20_000, 80_000, 320_000, 1_280_000]);
        assert_eq!(delays[7], 36_000_000, "capped at max_delay");
        assert_eq!(base_delay_ms(&policy(), 10_000), 36_000_000, "huge exponents do not overflow");
    }

    // Attempts and age both end retrying; Retry-After replaces the delay but not the cap.
    #[test]
    fn giving_up_and_retry_after() {
        let policy = policy();
        assert_eq!(next_attempt(&policy, 10, 0, 0, None, 0.0), Next::GiveUp);
        assert_eq!(next_attempt(&policy, 1, 0, 1_000, None, 0.0), Next::RetryAt(6_000));
        assert_eq!(next_attempt(&policy, 1, 0, 1_000, Some(2_000), 0.9), Next::RetryAt(3_000));
        assert_eq!(next_attempt(&policy, 1, 0, 0, Some(u64::MAX), 0.0), Next::RetryAt(36_000_000));
        let three_days = 3 * 24 * 3_600_000;
        assert_eq!(next_attempt(&policy, 2, 0, three_days, None, 0.0), Next::GiveUp, "too old");
    }

    // Both Retry-After forms of RFC 9110 are understood; anything else is ignored.
    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after_ms("120", 0), Some(120_000));
        let date_ms = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", date_ms - 5_000), Some(5_000));
        assert_eq!(parse_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", date_ms + 5_000), Some(0));
        // RFC 850 and asctime forms too (RFC 9110 §5.6.7), and no overflow on a far-future year.
        assert_eq!(parse_retry_after_ms("Sunday, 06-Nov-94 08:49:37 GMT", date_ms - 5_000), Some(5_000));
        assert_eq!(parse_retry_after_ms("Sun Nov  6 08:49:37 1994", date_ms - 5_000), Some(5_000));
        assert_eq!(parse_retry_after_ms("Fri, 31 Dec 99999 23:59:59 GMT", 0), None);
        assert_eq!(parse_retry_after_ms("soon", 0), None);
        assert_eq!(parse_retry_after_ms("-5", 0), None);
    }

    proptest! {
        // Jitter never leaves ±jitter of the delay, nor the [0, max_delay] range.
        #[test]
        fn jitter_stays_in_bounds(attempts in 1u32..40, sample in -1.0f64..=1.0) {
            let policy = policy();
            let base = base_delay_ms(&policy, attempts);
            let delay = jittered_ms(&policy, base, sample);
            prop_assert!(delay <= policy.max_delay_ms);
            prop_assert!(delay as f64 >= base as f64 * 0.8 - 1.0);
            prop_assert!(delay as f64 <= (base as f64 * 1.2 + 1.0).min(policy.max_delay_ms as f64));
        }
    }
}
