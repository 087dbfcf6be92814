//! The engine's only clock reads, and RFC 3339 rendering. The state machines take `now_ms` as an
//! argument; the shard loop reads the clock here and passes it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Renders Unix milliseconds as RFC 3339 UTC with millisecond precision,
/// e.g. `2026-11-29T06:09:17.123Z` (`time` does the calendar).
pub fn rfc3339(unix_ms: u64) -> String {
    let instant = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = instant.to_calendar_date();
    let (hour, minute, second, millisecond) = instant.to_hms_milli();
    format!("{year:04}-{:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millisecond:03}Z", u8::from(month))
}

/// Parses RFC 3339 (`2026-11-29T06:09:17Z`, `…17.123+01:00`; `t`/`z` and a space for `T`
/// accepted, as RFC 3339 §5.6 allows) to Unix milliseconds with `time`. `None` for anything
/// else, or an instant before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let mut normal = text.as_bytes().to_vec();
    if let Some(separator) = normal.get_mut(10).filter(|byte| matches!(**byte, b't' | b' ')) {
        *separator = b'T';
    }
    if let Some(zone) = normal.last_mut().filter(|byte| **byte == b'z') {
        *zone = b'Z';
    }
    let normal = String::from_utf8(normal).ok()?;
    let instant = time::OffsetDateTime::parse(&normal, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(instant.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Timestamps in API answers must be exact; check known instants, leap days included.
    #[test]
    fn renders_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_649_367_553_000), "2022-04-07T21:39:13.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    // Query filters take RFC 3339 from operators: every rendered instant parses back, offsets
    // shift, and anything malformed is refused rather than guessed.
    #[test]
    fn parses_rfc3339() {
        for ms in [0u64, 1_649_367_553_000, 951_782_400_123, 4_102_444_799_999, 1_796_000_000_001] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2022-04-07T23:39:13+02:00"), Some(1_649_367_553_000));
        assert_eq!(parse_rfc3339("2022-04-07 21:39:13.5z"), Some(1_649_367_553_500));
        for bad in [
            "",
            "2022-04-07",
            "2022-02-30T00:00:00Z",
            "2022-04-07T24:00:00Z",
            "2022-04-07T21:39:13",
            "2022-04-07T21:39:13+2:00",
            "2022-04-07T21:39:13.Z",
            "1969-12-31T23:59:59Z",
            "２０22-04-07T21:39:13Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
