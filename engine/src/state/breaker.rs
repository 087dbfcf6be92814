//! The per-endpoint circuit breaker: pure, fed with attempt outcomes in log order, time passed in.
//!
//! It opens on failure, not on noise. Two rules, each checked after a failure while closed:
//! - **A run of failures** that the endpoint's recent record makes implausible as chance. A
//!   destination that has been reliable opens after `consecutive_failures` failures in a row
//!   (default 5): a dead one is found within five attempts at any volume. A destination with a
//!   history of sporadic failures needs a longer run: the run must be less likely than
//!   [`NOISE_RUN_PROBABILITY_MAX`] under its recent failure rate (the rate over the window before
//!   the run, taken at its upper two-sigma bound), so a destination failing 20 % of attempts at
//!   random needs a run of about 14 to 20 and never opens, whether it sees one attempt a second
//!   or thousands.
//! - **A failure rate** of at least `failure_rate` over a full `window` of outcomes (defaults 50 %
//!   over 100): a destination failing most of the time opens even if successes break its runs.
//!
//! Only failures that say the destination is unwell count: timeouts, refused or broken
//! connections and retryable statuses (E2001–E2003). A permanent refusal (E2004: a 4xx such as
//! 400) is an answer from a working destination and counts as a success here.
//!
//! Open for a cool-down (`cooldown_ms`, doubling while probes fail, up to `cooldown_max_ms`).
//! The first outcome at or after the end of the cool-down is the probe's (the scheduler lets one
//! attempt through then): a success closes the breaker and forgets the window; a failure opens it
//! again for a doubled cool-down. Outcomes of attempts that were already in flight when it opened
//! arrive before the cool-down ends and are ignored. Because only outcomes and their times move
//! it, replaying the log rebuilds exactly the breaker the live shard had.

use std::collections::VecDeque;

use crate::model::endpoint::CircuitPolicy;

/// A run of failures opens the breaker only when chance would produce it less often than this
/// under the destination's recent failure rate: about once in 10¹⁰ attempts.
pub const NOISE_RUN_PROBABILITY_MAX: f64 = 1e-10;

/// Outcomes before the current run needed to judge a failure rate; with fewer, the run needed
/// is `consecutive_failures` if none of them failed, else [`NOISE_RUN_UNKNOWN_RATE`].
pub const NOISE_SAMPLE_MIN: usize = 20;

/// The run needed when a few outcomes show failures but too few to estimate their rate.
pub const NOISE_RUN_UNKNOWN_RATE: u32 = 15;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Attempts flow.
    Closed,
    /// No attempts until `until_ms`; from then on one probe may go (shown as half-open).
    Open {
        /// End of the cool-down (Unix ms).
        until_ms: u64,
    },
}

/// What an outcome did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed state.
    None,
    /// It opened (or re-opened after a failed probe) until the time given.
    Opened {
        /// End of the cool-down.
        until_ms: u64,
    },
    /// The probe succeeded: closed.
    Closed,
}

/// One endpoint's breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct Breaker {
    state: State,
    cooldown_ms: u64,
    /// The last outcomes while closed, oldest first; `true` is a failure.
    window: VecDeque<bool>,
    window_failures: usize,
    /// Failures in a row at the end of the window.
    run: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: &CircuitPolicy) -> Self {
        Self {
            state: State::Closed,
            cooldown_ms: policy.cooldown_ms,
            window: VecDeque::new(),
            window_failures: 0,
            run: 0,
        }
    }

    /// The state's name for the admin API: `closed`, `open`, or `half_open` once the cool-down
    /// has ended (a probe may go or is in flight).
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { until_ms } if now_ms < until_ms => "open",
            State::Open { .. } => "half_open",
        }
    }

    /// The raw state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while attempts must wait (open and cooling down).
    pub fn holds(&self, now_ms: u64) -> bool {
        matches!(self.state, State::Open { until_ms } if now_ms < until_ms)
    }

    /// True when the next attempt is the half-open probe (open, cool-down over).
    pub fn wants_probe(&self, now_ms: u64) -> bool {
        matches!(self.state, State::Open { until_ms } if now_ms >= until_ms)
    }

    /// Records an attempt's outcome that finished at `at_ms`. `failure` is true for a failure
    /// that counts against the destination (E2001–E2003).
    pub fn record(&mut self, policy: &CircuitPolicy, failure: bool, at_ms: u64) -> Transition {
        match self.state {
            // An attempt that was in flight when the breaker opened.
            State::Open { until_ms } if at_ms < until_ms => Transition::None,
            State::Open { .. } if failure => {
                self.cooldown_ms = self.cooldown_ms.saturating_mul(2).min(policy.cooldown_max_ms);
                self.open(at_ms)
            }
            State::Open { .. } => {
                *self = Self::new(policy);
                Transition::Closed
            }
            State::Closed => {
                self.remember(policy, failure);
                if failure && self.should_open(policy) {
                    self.open(at_ms)
                } else {
                    Transition::None
                }
            }
        }
    }

    fn open(&mut self, at_ms: u64) -> Transition {
        let until_ms = at_ms.saturating_add(self.cooldown_ms);
        self.state = State::Open { until_ms };
        Transition::Opened { until_ms }
    }

    fn remember(&mut self, policy: &CircuitPolicy, failure: bool) {
        self.run = if failure { self.run.saturating_add(1) } else { 0 };
        self.window.push_back(failure);
        self.window_failures += usize::from(failure);
        while self.window.len() > policy.window.max(1) as usize {
            if self.window.pop_front() == Some(true) {
                self.window_failures = self.window_failures.saturating_sub(1);
            }
        }
        self.assert_consistent();
    }

    /// The failure count is the window's, and the run is failures at the window's end.
    fn assert_consistent(&self) {
        debug_assert_eq!(
            self.window_failures,
            self.window.iter().filter(|failure| **failure).count(),
            "failures counted apart from the window"
        );
        debug_assert!(
            self.window.iter().rev().take(self.run as usize).all(|failure| *failure),
            "a run of {} failures the window does not end with",
            self.run
        );
    }

    fn should_open(&self, policy: &CircuitPolicy) -> bool {
        let full = self.window.len() >= policy.window.max(1) as usize;
        let rate = self.window_failures as f64 / self.window.len().max(1) as f64;
        (full && rate >= policy.failure_rate) || self.run >= self.run_needed(policy)
    }

    /// The run of failures that opens the breaker, given the outcomes before the current run.
    pub fn run_needed(&self, policy: &CircuitPolicy) -> u32 {
        let run = (self.run as usize).min(self.window.len());
        let calls = self.window.len() - run;
        // The run's failures are in the window (`assert_consistent`); a snapshot that says
        // otherwise gives a shorter run needed, not a wrap-around.
        let failures = self.window_failures.saturating_sub(run);
        noise_run(policy.consecutive_failures, calls, failures)
    }
}

/// A breaker as the endpoint snapshot stores it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BreakerSnapshot {
    /// End of the cool-down while open.
    pub open_until_ms: Option<u64>,
    /// The current cool-down.
    pub cooldown_ms: u64,
    /// The window of outcomes, oldest first (`true` is a failure).
    pub window: Vec<bool>,
    /// Failures in a row at its end.
    pub run: u32,
}

impl Breaker {
    /// The breaker as the snapshot stores it.
    pub fn to_snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            open_until_ms: match self.state {
                State::Closed => None,
                State::Open { until_ms } => Some(until_ms),
            },
            cooldown_ms: self.cooldown_ms,
            window: self.window.iter().copied().collect(),
            run: self.run,
        }
    }

    /// The breaker a snapshot stored.
    pub fn from_snapshot(snapshot: &BreakerSnapshot) -> Self {
        let window: VecDeque<bool> = snapshot.window.iter().copied().collect();
        Self {
            state: snapshot.open_until_ms.map_or(State::Closed, |until_ms| State::Open { until_ms }),
            cooldown_ms: snapshot.cooldown_ms,
            window_failures: window.iter().filter(|failure| **failure).count(),
            window,
            run: snapshot.run,
        }
    }
}

/// The shortest run of failures that `calls` earlier outcomes with `failures` among them make
/// implausible as chance, and never less than `consecutive_failures`.
pub fn noise_run(consecutive_failures: u32, calls: usize, failures: usize) -> u32 {
    if failures == 0 {
        return consecutive_failures;
    }
    if calls < NOISE_SAMPLE_MIN {
        return consecutive_failures.max(NOISE_RUN_UNKNOWN_RATE);
    }
    let rate = failures as f64 / calls as f64;
    let upper = (rate + 2.0 * (rate * (1.0 - rate) / calls as f64).sqrt()).min(0.99);
    let run = (NOISE_RUN_PROBABILITY_MAX.ln() / upper.ln()).ceil();
    // Finite and positive: `upper` lies in (0, 0.99].
    consecutive_failures.max(run as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy::default()
    }

    /// A tiny deterministic generator for the statistical tests (xorshift).
    struct Sequence(u64);

    impl Sequence {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    // Five failures in a row open a breaker that has seen no failure; the cool-down blocks
    // attempts; the first outcome after it is the probe, and its success closes.
    #[test]
    fn a_dead_destination_opens_within_five_attempts_then_probes() {
        let policy = policy();
        let mut breaker = Breaker::new(&policy);
        for at in 0..30 {
            assert_eq!(breaker.record(&policy, false, at), Transition::None);
        }
        for at in 30..34 {
            assert_eq!(breaker.record(&policy, true, at), Transition::None);
        }
        assert_eq!(breaker.record(&policy, true, 34), Transition::Opened { until_ms: 30_034 });
        assert!(breaker.holds(30_000));
        assert_eq!(breaker.state_name(30_000), "open");
        assert_eq!(breaker.record(&policy, true, 35), Transition::None, "an attempt in flight when it opened");
        assert!(breaker.wants_probe(30_034));
        assert_eq!(breaker.state_name(30_034), "half_open");
        assert_eq!(breaker.record(&policy, false, 30_100), Transition::Closed);
        assert_eq!(breaker.state_name(30_100), "closed");
    }

    // A failing probe doubles the cool-down, up to its maximum; a success resets it.
    #[test]
    fn failing_probes_back_off() {
        let policy = policy();
        let mut breaker = Breaker::new(&policy);
        for _ in 0..5 {
            breaker.record(&policy, true, 0);
        }
        let mut cooldowns = Vec::new();
        for _ in 0..6 {
            let State::Open { until_ms } = breaker.state() else { panic!("expected open") };
            let now = until_ms;
            let Transition::Opened { until_ms } = breaker.record(&policy, true, now) else { panic!("reopens") };
            cooldowns.push(until_ms - now);
        }
        assert_eq!(cooldowns, [60_000, 120_000, 240_000, 480_000, 600_000, 600_000]);
        let State::Open { until_ms } = breaker.state() else { panic!("expected open") };
        assert_eq!(breaker.record(&policy, false, until_ms), Transition::Closed);
        assert_eq!(breaker, Breaker::new(&policy), "closing forgets the window and the doubled cool-down");
    }

    // Permanent failures spread among successes still open on the rate rule.
    #[test]
    fn a_high_failure_rate_opens_without_a_long_run() {
        let policy = CircuitPolicy { window: 20, ..policy() };
        let mut breaker = Breaker::new(&policy);
        let mut opened = None;
        for at in 0..40u64 {
            // fail, fail, ok, fail, fail, ok …: runs of two, two thirds failing.
            let failure = at % 3 != 2;
            if let Transition::Opened { .. } = breaker.record(&policy, failure, at) {
                opened = Some(at);
                break;
            }
        }
        assert!(opened.is_some_and(|at| at >= 19), "opens once the window is full: {opened:?}");
    }

    // The run needed grows with the recent failure rate: 5 for a reliable destination, about
    // 14 to 20 for one failing a fifth of the time, and a few failures among few calls ask for
    // a long run rather than guessing.
    #[test]
    fn the_run_needed_follows_the_recent_failure_rate() {
        assert_eq!(noise_run(5, 100, 0), 5);
        assert_eq!(noise_run(5, 0, 0), 5);
        assert_eq!(noise_run(5, 10, 2), NOISE_RUN_UNKNOWN_RATE);
        let noisy = noise_run(5, 100, 20);
        assert!((14..=20).contains(&noisy), "{noisy}");
        assert!(noise_run(5, 100, 1) <= 7);
        assert!(noise_run(5, 100, 60) > 40);
        assert_eq!(noise_run(50, 100, 1), 50, "never below the configured run");
    }

    // The promise, checked over long seeded runs: a destination failing 20 % of
    // attempts at random never opens the breaker with the defaults (after the first window,
    // where five failures out of the first five attempts are indistinguishable from a dead
    // destination), and a dead one opens within five attempts after any history.
    #[test]
    fn noise_never_opens_and_death_always_does() {
        let policy = policy();
        for seed in 1..=20u64 {
            let mut random = Sequence(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut breaker = Breaker::new(&policy);
            for at in 0..policy.window as u64 {
                breaker.record(&policy, false, at);
            }
            for at in 0..200_000u64 {
                let failure = random.unit() < 0.2;
                let transition = breaker.record(&policy, failure, 1_000 + at);
                assert_eq!(transition, Transition::None, "seed {seed}: opened by noise after {at} attempts");
            }
            // Then it dies: open within five attempts.
            let opened_after = (1..=30u64)
                .find(|n| matches!(breaker.record(&policy, true, 300_000 + n), Transition::Opened { .. }))
                .unwrap();
            // A noisy destination's death takes a longer run to believe, never much longer.
            assert!(opened_after <= 30, "seed {seed}: a noisy destination that dies opens after {opened_after}");
            let mut reliable = Breaker::new(&policy);
            for at in 0..1000 {
                reliable.record(&policy, false, at);
            }
            let opened_after = (1..=30u64)
                .find(|n| matches!(reliable.record(&policy, true, 2_000 + n), Transition::Opened { .. }))
                .unwrap();
            assert_eq!(opened_after, 5, "a reliable destination that dies opens within five attempts");
        }
    }
}
