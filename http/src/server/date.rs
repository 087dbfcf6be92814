//! The `Date` of every response (RFC 9110 §6.6.1), cached per thread.
//!
//! Each shard serves on one thread, and a busy one answers tens of thousands of requests a
//! second: the IMF-fixdate is rendered once per second of the clock and copied for every
//! response in that second. A response costs one read of the wall clock (a vDSO call, no
//! system call) and a copy of 29 bytes; nothing is allocated.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::ImfFixdate;

/// One rendering of the date and the second of the clock it renders.
#[derive(Clone, Copy)]
struct Rendered {
    unix_seconds: u64,
    date: ImfFixdate,
}

thread_local! {
    static RENDERED: Cell<Option<Rendered>> = const { Cell::new(None) };
}

/// The date to send now, or `None` when the clock reads before 1970: RFC 9110 §6.6.1 says an
/// origin server without a clock MUST NOT send `Date`, and a clock that far from UTC is not one
/// (§5.6.7 asks for "a reasonable approximation of the current instant in UTC").
pub(super) fn now() -> Option<ImfFixdate> {
    let unix_seconds = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(at(unix_seconds))
}

/// The date of `unix_seconds`, from this thread's cache when it holds that second. A clock that
/// steps back renders again too: the cache is only ever the date of the second just read.
fn at(unix_seconds: u64) -> ImfFixdate {
    RENDERED.with(|rendered| match rendered.get() {
        Some(cached) if cached.unix_seconds == unix_seconds => cached.date,
        _ => {
            let date = ImfFixdate::from_unix_seconds(unix_seconds);
            rendered.set(Some(Rendered { unix_seconds, date }));
            date
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_date_follows_the_second_asked_for() {
        // The cache must never answer with the date of another second, forwards or backwards.
        for unix_seconds in [1_700_000_000, 1_700_000_000, 1_700_000_001, 1_699_999_999, 0] {
            assert_eq!(at(unix_seconds), ImfFixdate::from_unix_seconds(unix_seconds));
        }
    }

    #[test]
    fn now_is_the_clock_to_the_second() {
        // A Date more than a second off would make caches misjudge every answer's age.
        let before = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        let date = now();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        let candidates: Vec<ImfFixdate> = (before..=after).map(ImfFixdate::from_unix_seconds).collect();
        assert!(date.is_some_and(|date| candidates.contains(&date)), "{date:?} not within {before}..={after}");
    }
}
