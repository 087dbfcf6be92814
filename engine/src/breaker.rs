//! The per-endpoint circuit breaker: pure, time passed in.
//!
//! Closed → open after `consecutive_failures` failures in a row, or when at least
//! `failure_rate` of the last `window` attempts failed. Open for a cool-down (`cooldown_ms`,
//! doubling while probes fail, up to `cooldown_max_ms`); then half-open: one probe goes through;
//! its success closes the breaker, its failure opens it again. While open, events wait in their
//! queue and no attempt is spent.

use std::collections::VecDeque;

use crate::endpoint::CircuitPolicy;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Attempts flow.
    Closed,
    /// No attempts until the time given.
    Open {
        /// End of the cool-down (Unix ms).
        until_ms: u64,
    },
    /// One probe may go (or is in flight).
    HalfOpen {
        /// Whether the probe has been sent.
        probing: bool,
    },
}

/// What the scheduler may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Make a normal attempt.
    Attempt,
    /// Make the single half-open probe; report it with `probe = true`.
    Probe,
    /// Wait; the breaker is open (or its probe is in flight). `until_ms` is when to look again.
    Wait {
        /// When to ask again.
        until_ms: u64,
    },
}

/// One endpoint's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    recent_failures: u32,
    cooldown_ms: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: &CircuitPolicy) -> Self {
        Self {
            state: State::Closed,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(policy.window as usize),
            recent_failures: 0,
            cooldown_ms: policy.cooldown_ms,
        }
    }

    /// The state's name for the admin API: `closed`, `open` or `half_open` (an open breaker
    /// whose cool-down has ended reads as half-open).
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { until_ms } if now_ms < until_ms => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half_open",
        }
    }

    /// The raw state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Asks whether an attempt may be made now.
    pub fn permit(&mut self, now_ms: u64) -> Permit {
        match self.state {
            State::Closed => Permit::Attempt,
            State::Open { until_ms } if now_ms < until_ms => Permit::Wait { until_ms },
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Permit::Probe
            }
            // The probe's outcome will decide; look again after a short while in case it is lost.
            State::HalfOpen { probing: true } => Permit::Wait { until_ms: now_ms.saturating_add(self.cooldown_ms) },
        }
    }

    /// Records an attempt's outcome. `probe` marks the half-open probe; other outcomes that arrive
    /// while the breaker is open or half-open (attempts that were already in flight) are counted
    /// in the window but do not move the state.
    pub fn record(&mut self, policy: &CircuitPolicy, success: bool, probe: bool, now_ms: u64) {
        if probe {
            if success {
                self.close(policy);
            } else {
                self.cooldown_ms = self.cooldown_ms.saturating_mul(2).min(policy.cooldown_max_ms);
                self.state = State::Open { until_ms: now_ms.saturating_add(self.cooldown_ms) };
            }
            return;
        }
        self.remember(policy, success);
        if self.state == State::Closed && self.should_open(policy) {
            self.state = State::Open { until_ms: now_ms.saturating_add(self.cooldown_ms) };
        }
    }

    fn remember(&mut self, policy: &CircuitPolicy, success: bool) {
        self.consecutive_failures = if success { 0 } else { self.consecutive_failures.saturating_add(1) };
        self.recent.push_back(success);
        if !success {
            self.recent_failures += 1;
        }
        while self.recent.len() > policy.window.max(1) as usize {
            if self.recent.pop_front() == Some(false) {
                self.recent_failures -= 1;
            }
        }
    }

    fn should_open(&self, policy: &CircuitPolicy) -> bool {
        let window_full = self.recent.len() >= policy.window.max(1) as usize;
        let rate = f64::from(self.recent_failures) / self.recent.len().max(1) as f64;
        self.consecutive_failures >= policy.consecutive_failures || (window_full && rate >= policy.failure_rate)
    }

    fn close(&mut self, policy: &CircuitPolicy) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.recent.clear();
        self.recent_failures = 0;
        self.cooldown_ms = policy.cooldown_ms;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy::default()
    }

    // Five failures in a row open the breaker; the cool-down blocks attempts; then one probe goes.
    #[test]
    fn consecutive_failures_open_then_probe() {
        let policy = policy();
        let mut breaker = Breaker::new(&policy);
        for _ in 0..4 {
            breaker.record(&policy, false, false, 0);
        }
        assert_eq!(breaker.permit(0), Permit::Attempt);
        breaker.record(&policy, false, false, 0);
        assert_eq!(breaker.state_name(0), "open");
        assert_eq!(breaker.permit(10), Permit::Wait { until_ms: 30_000 });
        assert_eq!(breaker.state_name(30_000), "half_open");
        assert_eq!(breaker.permit(30_000), Permit::Probe);
        assert!(matches!(breaker.permit(30_001), Permit::Wait { .. }), "only one probe at a time");
        breaker.record(&policy, true, true, 30_100);
        assert_eq!((breaker.state_name(30_100), breaker.permit(30_100)), ("closed", Permit::Attempt));
    }

    // A failing probe doubles the cool-down, up to its maximum; a success resets it.
    #[test]
    fn failing_probes_back_off() {
        let policy = policy();
        let mut breaker = Breaker::new(&policy);
        for _ in 0..5 {
            breaker.record(&policy, false, false, 0);
        }
        let mut now = 0;
        let mut cooldowns = Vec::new();
        for _ in 0..6 {
            let Permit::Wait { until_ms } = breaker.permit(now) else { panic!("expected open") };
            now = until_ms;
            assert_eq!(breaker.permit(now), Permit::Probe);
            breaker.record(&policy, false, true, now);
            let State::Open { until_ms } = breaker.state() else { panic!("expected open") };
            cooldowns.push(until_ms - now);
        }
        assert_eq!(cooldowns, [60_000, 120_000, 240_000, 480_000, 600_000, 600_000]);
    }

    // Half the window failing opens the breaker even without a long streak.
    #[test]
    fn failure_rate_over_the_window_opens() {
        let policy = policy();
        let mut breaker = Breaker::new(&policy);
        for index in 0..19 {
            breaker.record(&policy, index % 2 == 0, false, 0);
        }
        assert_eq!(breaker.state_name(0), "closed", "window not full yet");
        breaker.record(&policy, false, false, 0);
        assert_eq!(breaker.state_name(0), "open");
    }
}
