//! W3C trace context (`traceparent`, version 00): each delivery carries a child of the sender's
//! trace, or starts a new trace when the sender sent none.

/// Checks a `traceparent` value: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids
/// not all zero.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts.as_slice() else {
        return false;
    };
    let hex = |text: &str, length: usize| {
        text.len() == length && text.bytes().all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase())
    };
    *version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|byte| byte != b'0')
        && parent_id.bytes().any(|byte| byte != b'0')
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    valid_traceparent(traceparent).then(|| &traceparent[3..35])
}

/// A child `traceparent`: the parent's trace id and flags with a new span id, or a new trace.
pub fn child_traceparent(parent: Option<&str>, random: u64) -> String {
    let span = format!("{:016x}", random | 1);
    match parent.filter(|value| valid_traceparent(value)) {
        Some(parent) => format!("{}-{span}-{}", &parent[..35], &parent[53..]),
        None => {
            let trace =
                format!("{:016x}{:016x}", random.rotate_left(17) | 1, random.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            format!("00-{trace}-{span}-01")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Deliveries continue the sender's trace, and start one when there is none.
    #[test]
    fn children_keep_the_trace_id() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent), 42);
        assert!(valid_traceparent(&child), "{child}");
        assert_eq!(&child[..35], &parent[..35]);
        assert_ne!(&child[36..52], &parent[36..52]);
        let fresh = child_traceparent(None, 7);
        assert!(valid_traceparent(&fresh), "{fresh}");
        assert!(valid_traceparent(&child_traceparent(Some("garbage"), 7)));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
    }
}
