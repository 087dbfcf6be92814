//! When to try again: pure, the time passed in.

use std::time::{Duration, Instant};

use crate::limits::{RETRY_DELAY_MS_MAX, RETRY_DELAY_MS_MIN};

/// The pause after failed attempt `attempt` (1 for the first): doubling from
/// [`RETRY_DELAY_MS_MIN`] up to [`RETRY_DELAY_MS_MAX`].
pub(crate) fn delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    Duration::from_millis((RETRY_DELAY_MS_MIN << doublings).min(RETRY_DELAY_MS_MAX))
}

/// The pause before the next attempt, or `None` when that attempt would start at or after
/// `deadline`.
pub(crate) fn next_pause(attempt: u32, now: Instant, deadline: Instant) -> Option<Duration> {
    let pause = delay(attempt);
    (now + pause < deadline).then_some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A retry storm during an election would load the servers electing; a long pause would keep
    // a publish waiting after the new leader arrived.
    #[test]
    fn pauses_double_to_a_ceiling_and_stop_at_the_deadline() {
        assert_eq!(delay(1), Duration::from_millis(RETRY_DELAY_MS_MIN));
        assert_eq!(delay(2), Duration::from_millis(2 * RETRY_DELAY_MS_MIN));
        assert_eq!(delay(40), Duration::from_millis(RETRY_DELAY_MS_MAX));
        let now = Instant::now();
        assert_eq!(next_pause(1, now, now + Duration::from_secs(1)), Some(delay(1)));
        assert_eq!(next_pause(1, now, now + delay(1)), None);
        assert_eq!(next_pause(30, now, now + Duration::from_millis(RETRY_DELAY_MS_MAX - 1)), None);
    }
}
