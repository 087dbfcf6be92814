//! Event types, the patterns endpoints subscribe with, and channel names: their syntax and how a
//! pattern matches a type. Pure functions.
//!
//! A type is 1 to [`limits::EVENT_TYPE_BYTES_MAX`] characters from `A-Z a-z 0-9 . _ : -`. A
//! pattern is a type (matched exactly) or a prefix of one followed by `*` (`order.*` matches
//! `order.created` and `order.` but not `order`; `*` alone matches every type). A channel name
//! is 1 to [`limits::CHANNEL_NAME_BYTES_MAX`] characters from `a-z 0-9 _ -`.

use crate::limits;

/// The type of an event that names none: no `X-Event-Type`, and no top-level string `type` or
/// `event` field in a JSON body.
pub const EVENT_TYPE_DEFAULT: &str = "event";

fn type_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-')
}

/// Checks an event type.
pub fn valid_event_type(text: &[u8]) -> bool {
    !text.is_empty() && text.len() <= limits::EVENT_TYPE_BYTES_MAX && text.iter().all(|byte| type_byte(*byte))
}

/// Checks an `event_types` pattern: a type, or a (possibly empty) prefix of one and `*`.
pub fn valid_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.len() < limits::EVENT_TYPE_BYTES_MAX && prefix.bytes().all(type_byte),
        None => valid_event_type(pattern.as_bytes()),
    }
}

/// Checks a channel name.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::CHANNEL_NAME_BYTES_MAX
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-'))
}

/// Whether `pattern` (valid) matches `event_type`.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Whether an endpoint subscribed with `patterns` wants `event_type`: every type when it lists
/// none.
pub fn patterns_match(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|pattern| pattern_matches(pattern, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pattern table the contract promises: exact names, prefixes with `*`, and `*` for all.
    #[test]
    fn patterns_match_as_documented() {
        let cases: &[(&str, &str, bool)] = &[
            ("order.created", "order.created", true),
            ("order.created", "order.created.v2", false),
            ("order.created", "Order.created", false),
            ("order.*", "order.created", true),
            ("order.*", "order.", true),
            ("order.*", "order", false),
            ("order.*", "orders.created", false),
            ("order*", "orders.created", true),
            ("*", "anything:at-all", true),
            ("a:b*", "a:b:c", true),
            ("payment.completed", "payment.complete", false),
        ];
        for (pattern, event_type, expected) in cases {
            assert!(valid_pattern(pattern), "{pattern}");
            assert_eq!(pattern_matches(pattern, event_type), *expected, "{pattern} against {event_type}");
        }
        assert!(patterns_match(&[], "whatever"));
        assert!(!patterns_match(&["a.*".into(), "b".into()], "c"));
        assert!(patterns_match(&["a.*".into(), "b".into()], "b"));
    }

    // Types, patterns and channel names outside their grammar are refused (400 at the edge).
    #[test]
    fn syntax_is_checked() {
        assert!(valid_event_type(b"order.created:v2_x-y"));
        assert!(!valid_event_type(b""));
        assert!(!valid_event_type(b"order created"));
        assert!(!valid_event_type(b"order/created"));
        assert!(!valid_event_type(b"ordre\xc3\xa9"));
        assert!(valid_event_type(&[b'a'; 128]));
        assert!(!valid_event_type(&[b'a'; 129]));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("a*b"));
        assert!(!valid_pattern("**"));
        assert!(valid_pattern("*"));
        assert!(valid_channel("billing_v2-eu"));
        assert!(!valid_channel("Billing"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a.b"));
        assert!(valid_channel(&"a".repeat(64)));
        assert!(!valid_channel(&"a".repeat(65)));
    }
}
