//! The value of the `Date` header field: an IMF-fixdate (RFC 9110 §5.6.7) rendered from Unix
//! seconds into a fixed array. Pure: the server reads the clock and keeps one rendering per
//! thread for the current second, so a response costs a copy of 29 bytes, not a formatting.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of every IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const IMF_FIXDATE_BYTES: usize = 29;

/// A date as the `Date` header sends it (RFC 9110 §6.6.1): an IMF-fixdate such as
/// `Sun, 06 Nov 1994 08:49:37 GMT`, always in GMT, always [`IMF_FIXDATE_BYTES`] ASCII bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ImfFixdate([u8; IMF_FIXDATE_BYTES]);

impl ImfFixdate {
    /// The last second a four-digit year can name: 9999-12-31T23:59:59Z. Later times are sent as
    /// this one (the `httpdate` crate would panic on them).
    pub const UNIX_SECONDS_MAX: u64 = 253_402_300_799;

    /// The IMF-fixdate of `unix_seconds` after 1970-01-01T00:00:00Z, clamped to
    /// [`Self::UNIX_SECONDS_MAX`].
    #[must_use]
    pub fn from_unix_seconds(unix_seconds: u64) -> Self {
        let unix_seconds = unix_seconds.min(Self::UNIX_SECONDS_MAX);
        let time = UNIX_EPOCH.checked_add(Duration::from_secs(unix_seconds)).unwrap_or(UNIX_EPOCH);
        Self::render(time)
    }

    fn render(time: SystemTime) -> Self {
        // `time` is within 1970..=9999, where `HttpDate` neither panics nor writes anything but
        // the 29 bytes of an IMF-fixdate.
        let mut bytes = [b' '; IMF_FIXDATE_BYTES];
        let mut unwritten: &mut [u8] = &mut bytes;
        let written = write!(unwritten, "{}", httpdate::HttpDate::from(time));
        debug_assert!(written.is_ok() && unwritten.is_empty(), "an IMF-fixdate is {IMF_FIXDATE_BYTES} bytes");
        Self(bytes)
    }

    /// The date as sent, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; IMF_FIXDATE_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for ImfFixdate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(unix_seconds: u64) -> String {
        String::from_utf8_lossy(ImfFixdate::from_unix_seconds(unix_seconds).as_bytes()).into_owned()
    }

    #[test]
    fn renders_the_rfc_example_and_the_epoch() {
        // RFC 9110 §5.6.7's own example, and the first second there is: clients and proxies
        // parse this format byte for byte.
        assert_eq!(text(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(text(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(text(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn far_future_clocks_are_clamped_instead_of_panicking() {
        // A clock set wildly wrong must not take down a shard: the date saturates at the last
        // four-digit year.
        let last = "Fri, 31 Dec 9999 23:59:59 GMT";
        assert_eq!(text(ImfFixdate::UNIX_SECONDS_MAX), last);
        assert_eq!(text(ImfFixdate::UNIX_SECONDS_MAX + 1), last);
        assert_eq!(text(u64::MAX), last);
    }

    #[test]
    fn every_rendering_round_trips_through_an_http_date_parser() {
        // Whatever second it is, the text is an IMF-fixdate of exactly that second.
        for unix_seconds in (0..ImfFixdate::UNIX_SECONDS_MAX).step_by(7_919_993_777).chain([1_700_000_000]) {
            let rendered = text(unix_seconds);
            assert_eq!(rendered.len(), IMF_FIXDATE_BYTES);
            assert!(rendered.ends_with(" GMT"), "{rendered}");
            let parsed = httpdate::parse_http_date(&rendered).map(|time| time.duration_since(UNIX_EPOCH));
            assert_eq!(parsed.ok().and_then(Result::ok), Some(Duration::from_secs(unix_seconds)), "{rendered}");
        }
    }
}
