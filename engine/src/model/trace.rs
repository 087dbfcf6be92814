//! W3C Trace Context Level 2 (<https://www.w3.org/TR/trace-context-2/>), inbound side: which
//! `traceparent` and `tracestate` a request carried once the processing model has judged them,
//! and the child `traceparent` each delivery sends. Every delivery continues the sender's trace,
//! or starts a new one when the sender sent none, or one we must not trust.
//!
//! # The processing model, as applied here
//!
//! - A `traceparent` sent on more than one field line, or one that does not parse, is never an
//!   error: the request goes ahead and its deliveries start a new trace. The `tracestate` goes
//!   with it, because the spec forbids reading a `tracestate` whose `traceparent` failed ("If
//!   the vendor failed to parse `traceparent`, it MUST NOT attempt to parse `tracestate`").
//! - Version `00` is exactly 55 characters. A higher version is read by the version `00` rules
//!   on its first 55 characters, the rest left unread, and its child is written as version `00`
//!   ("Vendors MUST use these fields to construct the new `traceparent` field according to the
//!   highest version of the specification known to the implementation").
//! - The child keeps the parent's trace id and the flags the spec defines (sampled `01` and
//!   random trace id `02`), with a new span id. The other flag bits are reserved and "Vendors
//!   MUST set those to zero", so they are cleared rather than passed on with a meaning we cannot
//!   vouch for. A new trace has a random trace id, so it sets both flags (`03`).
//! - A `tracestate` split over several field lines is one list, the lines joined with commas
//!   (RFC 9110 §5.3). It is kept whole or dropped whole: the spec lets a vendor "discard the
//!   entire header" it cannot parse, and passing on part of another vendor's state would be a
//!   mutation nobody asked for.

/// Length of a version `00` `traceparent`, and of the part of a higher version that is read.
const TRACEPARENT_LENGTH: usize = 55;

/// The sampled flag: the caller may have recorded trace data.
const FLAG_SAMPLED: u8 = 0x01;

/// The random trace id flag (Level 2): at least the right-most 7 bytes of the trace id are
/// random, which lets downstream systems sample or shard on them.
const FLAG_RANDOM: u8 = 0x02;

/// The flags the specification defines; every other bit is reserved and sent as zero.
const FLAGS_KNOWN: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Most `tracestate` list members a valid list has (the specification's limit). Together with
/// [`TRACESTATE_KEY_LENGTH_MAX`] and [`TRACESTATE_VALUE_LENGTH_MAX`] it bounds what is kept to
/// about 16 KiB, within the request head limit anyway.
const TRACESTATE_MEMBERS_MAX: usize = 32;

/// Longest `tracestate` key: a simple key of 256 characters (a multi-tenant key is at most
/// 241 + 1 + 14 = 256 as well).
const TRACESTATE_KEY_LENGTH_MAX: usize = 256;

/// Longest multi-tenant key tenant id.
const TRACESTATE_TENANT_LENGTH_MAX: usize = 241;

/// Longest multi-tenant key system id.
const TRACESTATE_SYSTEM_LENGTH_MAX: usize = 14;

/// Longest `tracestate` value.
const TRACESTATE_VALUE_LENGTH_MAX: usize = 256;

// A simple key and a whole multi-tenant key share one limit.
const _: () = assert!(TRACESTATE_TENANT_LENGTH_MAX + 1 + TRACESTATE_SYSTEM_LENGTH_MAX == TRACESTATE_KEY_LENGTH_MAX);

/// Span id used in the one case in 2^64 where the random bits mix to zero, an invalid span id.
const SPAN_ID_FALLBACK: u64 = 1;

/// The inbound trace context of a request after the processing model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    /// The sender's `traceparent` as sent, if it was sent on exactly one field line and is
    /// valid ([`valid_traceparent`]); `None` means deliveries start a new trace.
    pub traceparent: Option<String>,
    /// The sender's `tracestate`, every field line combined into one list with the optional
    /// whitespace and empty members removed; `None` when there was none, when it was invalid,
    /// or when [`Inbound::traceparent`] is `None`.
    pub tracestate: Option<String>,
}

/// Applies the processing model to a request's trace context fields.
///
/// `traceparents`/`tracestates`: every field line's value, in order, raw bytes. A
/// `traceparent` on more than one line or an invalid one yields no parent and no state (a new
/// trace, never an error); a valid one is kept as sent, and the `tracestate` lines are
/// validated as one list, kept normalised or dropped whole.
pub fn inbound<'a>(
    traceparents: impl IntoIterator<Item = &'a [u8]>,
    tracestates: impl IntoIterator<Item = &'a [u8]>,
) -> Inbound {
    let mut traceparents = traceparents.into_iter();
    let (Some(line), None) = (traceparents.next(), traceparents.next()) else {
        return Inbound::default();
    };
    let Some(traceparent) = std::str::from_utf8(line).ok().filter(|value| valid_traceparent(value)) else {
        return Inbound::default();
    };
    Inbound { traceparent: Some(traceparent.to_owned()), tracestate: combined_tracestate(tracestates) }
}

/// Checks a `traceparent` value by the rules in the module documentation: two lowercase hex
/// digits of version other than `ff`; then `-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`, lowercase, ids not all zero; exactly that for version `00`, and that followed by
/// nothing or by `-` and anything for a higher version.
pub fn valid_traceparent(value: &str) -> bool {
    parse_traceparent(value).is_some()
}

/// The trace id (32 lowercase hex digits) of a valid `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse_traceparent(traceparent).map(|parent| parent.trace_id)
}

/// A child `traceparent`, always version `00`: the parent's trace id and known flags with a new
/// span id, or a new trace when the parent is absent or invalid. `random` supplies the new
/// trace id (all 128 bits) and the span id (mixed from them); neither is ever all zero.
pub fn child_traceparent(parent: Option<&str>, random: u128) -> String {
    let span_id = span_id(random);
    match parent.and_then(parse_traceparent) {
        Some(parent) => format!("00-{}-{span_id:016x}-{:02x}", parent.trace_id, parent.flags & FLAGS_KNOWN),
        None => {
            // All zero is the one invalid trace id; 1 stands in for it, once in 2^128 calls.
            let trace_id = random.max(1);
            format!("00-{trace_id:032x}-{span_id:016x}-{:02x}", FLAG_SAMPLED | FLAG_RANDOM)
        }
    }
}

/// The parts of a valid `traceparent` that a child carries on.
struct Parent<'a> {
    trace_id: &'a str,
    flags: u8,
}

/// Parses a `traceparent` (see [`valid_traceparent`] for the rules).
fn parse_traceparent(value: &str) -> Option<Parent<'_>> {
    let version = value.get(..2)?;
    if !lowercase_hex(version) || version == "ff" {
        return None;
    }
    let length_valid = if version == "00" {
        value.len() == TRACEPARENT_LENGTH
    } else {
        // Later versions may only add fields after ours, each behind a dash.
        value.len() == TRACEPARENT_LENGTH || value.as_bytes().get(TRACEPARENT_LENGTH) == Some(&b'-')
    };
    let dashes = [2, 35, 52].iter().all(|index| value.as_bytes().get(*index) == Some(&b'-'));
    if !length_valid || !dashes {
        return None;
    }
    let (trace_id, parent_id, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    let not_zero = |id: &str| id.bytes().any(|byte| byte != b'0');
    if !(lowercase_hex(trace_id) && lowercase_hex(parent_id) && lowercase_hex(flags)) {
        return None;
    }
    if !(not_zero(trace_id) && not_zero(parent_id)) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent { trace_id, flags })
}

/// Whether `text` is lowercase hexadecimal digits only (the spec's `HEXDIGLC`).
fn lowercase_hex(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// A new span id from the random bits, never zero. The halves are mixed (the splitmix64
/// finaliser, a bijection) so that a new trace's span id does not repeat part of its trace id.
fn span_id(random: u128) -> u64 {
    // Truncation is the point: the high and the low 64 bits.
    let (high, low) = ((random >> 64) as u64, random as u64);
    let mut mixed = high ^ low.rotate_left(32);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^= mixed >> 31;
    if mixed == 0 {
        SPAN_ID_FALLBACK
    } else {
        mixed
    }
}

/// Combines the `tracestate` field lines into one list and validates it: the normalised list,
/// or `None` when it is empty or breaks any rule (then it is dropped whole).
fn combined_tracestate<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    // Each member with its key, for the duplicate check; at most 32, so a scan is enough.
    let mut members: Vec<(&[u8], &[u8])> = Vec::new();
    for line in lines {
        // Splitting each line on commas is splitting the lines joined with commas.
        for member in line.split(|byte| *byte == b',').map(trim_whitespace).filter(|member| !member.is_empty()) {
            if members.len() == TRACESTATE_MEMBERS_MAX {
                return None;
            }
            let key = tracestate_member_key(member)?;
            if members.iter().any(|(kept, _)| *kept == key) {
                return None;
            }
            members.push((key, member));
        }
    }
    if members.is_empty() {
        // The spec asks senders to avoid empty tracestate headers, so there is nothing to keep.
        return None;
    }
    let joined: Vec<u8> = members.iter().map(|(_, member)| *member).collect::<Vec<_>>().join(&b","[..]);
    // Every byte was checked to be printable ASCII, so this conversion cannot fail.
    String::from_utf8(joined).ok()
}

/// The key of a valid `key=value` list member, or `None` if the member is invalid.
fn tracestate_member_key(member: &[u8]) -> Option<&[u8]> {
    let equals = member.iter().position(|byte| *byte == b'=')?;
    let (key, value) = (member.get(..equals)?, member.get(equals + 1..)?);
    (tracestate_key(key) && tracestate_value(value)).then_some(key)
}

/// `key = simple-key / multi-tenant-key` (Trace Context Level 2):
/// `simple-key = lcalpha 0*255(keychar)`, `multi-tenant-key = tenant-id "@" system-id`,
/// `tenant-id = (lcalpha / DIGIT) 0*240(keychar)`, `system-id = lcalpha 0*13(keychar)`, where
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/"`.
fn tracestate_key(key: &[u8]) -> bool {
    let lowercase_letter = |byte: u8| byte.is_ascii_lowercase();
    let letter_or_digit = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    match key.iter().position(|byte| *byte == b'@') {
        None => identifier(key, lowercase_letter, TRACESTATE_KEY_LENGTH_MAX),
        Some(at) => {
            let (tenant, system) = (key.get(..at).unwrap_or_default(), key.get(at + 1..).unwrap_or_default());
            identifier(tenant, letter_or_digit, TRACESTATE_TENANT_LENGTH_MAX)
                && identifier(system, lowercase_letter, TRACESTATE_SYSTEM_LENGTH_MAX)
        }
    }
}

/// Whether `text` is one character accepted by `first` followed by `keychar`s, at most
/// `length_max` characters in all. A second `@` is not a `keychar`, so it fails here.
fn identifier(text: &[u8], first: impl Fn(u8) -> bool, length_max: usize) -> bool {
    let keychar = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-*/".contains(byte);
    match text.split_first() {
        Some((head, rest)) => text.len() <= length_max && first(*head) && rest.iter().all(keychar),
        None => false,
    }
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`, `chr = %x20 /
/// nblk-chr`: 1 to 256 printable ASCII characters without `,` or `=`, not ending in a space.
fn tracestate_value(value: &[u8]) -> bool {
    let character = |byte: &u8| (0x20..=0x7E).contains(byte) && *byte != b',' && *byte != b'=';
    (1..=TRACESTATE_VALUE_LENGTH_MAX).contains(&value.len())
        && value.iter().all(character)
        && value.last() != Some(&b' ')
}

/// `value` without leading and trailing optional whitespace (SP and HTAB, RFC 9110 §5.6.3).
fn trim_whitespace(value: &[u8]) -> &[u8] {
    let is_whitespace = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|byte| !is_whitespace(byte)).unwrap_or(value.len());
    let end = value.iter().rposition(|byte| !is_whitespace(byte)).map_or(start, |last| last + 1);
    value.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example parent, sampled.
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    fn traceparent(version: &str, trace_id: &str, parent_id: &str, flags: &str) -> String {
        format!("{version}-{trace_id}-{parent_id}-{flags}")
    }

    fn inbound_lines(traceparents: &[&str], tracestates: &[&str]) -> Inbound {
        inbound(traceparents.iter().map(|line| line.as_bytes()), tracestates.iter().map(|line| line.as_bytes()))
    }

    /// The tracestate kept with the example parent.
    fn tracestate(lines: &[&str]) -> Option<String> {
        let inbound = inbound_lines(&[PARENT], lines);
        assert_eq!(inbound.traceparent.as_deref(), Some(PARENT), "a tracestate must never affect the traceparent");
        inbound.tracestate
    }

    #[test]
    fn traceparents_are_judged_by_the_specification() {
        // An invalid parent passed on would break every tracer downstream, and a valid parent
        // of a later version refused would break the sender's trace for no reason.
        let zeros_32 = "0".repeat(32);
        let cases: Vec<(String, bool, &str)> = vec![
            (PARENT.to_owned(), true, "the specification's example"),
            (traceparent("00", TRACE_ID, PARENT_ID, "00"), true, "not sampled"),
            (traceparent("00", TRACE_ID, PARENT_ID, "ff"), true, "reserved flags still parse"),
            (traceparent("00", &TRACE_ID.to_uppercase(), PARENT_ID, "01"), false, "uppercase trace id"),
            (traceparent("00", TRACE_ID, &PARENT_ID.to_uppercase(), "01"), false, "uppercase parent id"),
            (traceparent("00", TRACE_ID, PARENT_ID, "0A"), false, "uppercase flags"),
            (traceparent("0A", TRACE_ID, PARENT_ID, "01"), false, "uppercase version"),
            (traceparent("00", &zeros_32, PARENT_ID, "01"), false, "all-zero trace id"),
            (traceparent("00", TRACE_ID, "0000000000000000", "01"), false, "all-zero parent id"),
            (traceparent("ff", TRACE_ID, PARENT_ID, "01"), false, "version ff is forbidden"),
            (format!("{PARENT}-"), false, "version 00 with an empty suffix"),
            (format!("{PARENT}-future"), false, "version 00 with a suffix"),
            (traceparent("cc", TRACE_ID, PARENT_ID, "01"), true, "a higher version, 55 characters"),
            (format!("{}-what-comes-next", traceparent("cc", TRACE_ID, PARENT_ID, "01")), true, "higher, suffix"),
            (format!("{}-", traceparent("cc", TRACE_ID, PARENT_ID, "01")), true, "higher, empty suffix"),
            (format!("{}x-next", traceparent("cc", TRACE_ID, PARENT_ID, "01")), false, "higher, no dash"),
            (format!("{}.next", traceparent("cc", TRACE_ID, PARENT_ID, "01")), false, "higher, other separator"),
            (traceparent("cc", TRACE_ID, PARENT_ID, "1"), false, "higher version, 54 characters"),
            (traceparent("cc", &TRACE_ID.to_uppercase(), PARENT_ID, "01"), false, "higher version, uppercase"),
            (traceparent("cc", &zeros_32, PARENT_ID, "01"), false, "higher version, zero trace id"),
            (traceparent("01", TRACE_ID, PARENT_ID, "03"), true, "version 01"),
            (traceparent("fe", TRACE_ID, PARENT_ID, "03"), true, "version fe, the highest"),
            (traceparent("00", TRACE_ID, PARENT_ID, "1"), false, "one-digit flags"),
            (traceparent("00", TRACE_ID, PARENT_ID, "001"), false, "three-digit flags"),
            (traceparent("00", &TRACE_ID[1..], PARENT_ID, "01"), false, "31-digit trace id"),
            (traceparent("00", &format!("{TRACE_ID}0"), PARENT_ID, "01"), false, "33-digit trace id"),
            (traceparent("00", TRACE_ID, &PARENT_ID[1..], "01"), false, "15-digit parent id"),
            (traceparent("0", TRACE_ID, PARENT_ID, "01"), false, "one-digit version"),
            (traceparent("000", TRACE_ID, PARENT_ID, "01"), false, "three-digit version"),
            (traceparent("00", &TRACE_ID.replace('f', "g"), PARENT_ID, "01"), false, "non-hex trace id"),
            (traceparent("00", TRACE_ID, &PARENT_ID.replace('a', "z"), "01"), false, "non-hex parent id"),
            (traceparent("00", TRACE_ID, PARENT_ID, "0x"), false, "non-hex flags"),
            (traceparent("0g", TRACE_ID, PARENT_ID, "01"), false, "non-hex version"),
            (PARENT.replace('-', "_"), false, "another delimiter"),
            (format!(" {}", &PARENT[..54]), false, "leading space"),
            (PARENT.replacen('4', "é", 1), false, "non-ASCII where a digit belongs"),
            (String::new(), false, "empty"),
            ("garbage".to_owned(), false, "garbage"),
        ];
        for (value, valid, why) in &cases {
            assert_eq!(valid_traceparent(value), *valid, "{why}: {value}");
            assert_eq!(trace_id(value).is_some(), *valid, "{why}: {value}");
            let expected = valid.then(|| value.clone());
            assert_eq!(inbound_lines(&[value], &[]).traceparent, expected, "{why}: {value}");
        }
    }

    #[test]
    fn the_trace_id_is_read_from_any_accepted_version() {
        // The ingest span logs the trace id, whatever version the sender speaks.
        assert_eq!(trace_id(PARENT), Some(TRACE_ID));
        let later = format!("{}-more", traceparent("cc", TRACE_ID, PARENT_ID, "01"));
        assert_eq!(trace_id(&later), Some(TRACE_ID));
        assert_eq!(trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"), None);
    }

    #[test]
    fn a_repeated_traceparent_starts_a_new_trace_and_drops_the_tracestate() {
        // Two traceparents cannot both be the parent; the specification starts a new trace
        // rather than guess, and a tracestate describes a parent we no longer have.
        let other = traceparent("00", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01");
        for lines in [[PARENT, PARENT], [PARENT, other.as_str()]] {
            assert_eq!(inbound_lines(&lines, &["rojo=00f067aa0ba902b7"]), Inbound::default(), "{lines:?}");
        }
        assert_eq!(inbound_lines(&[PARENT, PARENT, PARENT], &[]), Inbound::default());
    }

    #[test]
    fn a_tracestate_without_a_valid_traceparent_is_dropped() {
        // The specification forbids reading a tracestate whose traceparent failed: its
        // entries describe a position in a trace that deliveries will not continue.
        let state = ["rojo=00f067aa0ba902b7"];
        assert_eq!(inbound_lines(&[], &state), Inbound::default());
        assert_eq!(inbound_lines(&["00-garbage"], &state), Inbound::default());
        assert_eq!(inbound(vec![&b"\xff\xfe"[..]], vec![&b"a=1"[..]]), Inbound::default());
        let expected = Inbound { traceparent: Some(PARENT.to_owned()), tracestate: Some(state[0].to_owned()) };
        assert_eq!(inbound_lines(&[PARENT], &state), expected);
        assert_eq!(inbound_lines(&[], &[]), Inbound::default());
    }

    #[test]
    fn children_keep_the_trace_id_and_the_flags() {
        // Deliveries continue the sender's trace: same trace id, the sender's sampling and
        // random-trace-id decisions, and a span id of our own.
        for flags in ["00", "01", "02", "03"] {
            let parent = traceparent("00", TRACE_ID, PARENT_ID, flags);
            for random in [0, 7, 42, u128::MAX, 1 << 64] {
                let child = child_traceparent(Some(&parent), random);
                assert!(valid_traceparent(&child), "{child}");
                assert_eq!(child.len(), 55, "{child}");
                assert_eq!(&child[..35], &parent[..35], "{child}");
                assert_ne!(&child[36..52], PARENT_ID, "{child}");
                assert_eq!(&child[53..], flags, "{child}");
            }
        }
    }

    #[test]
    fn children_of_a_later_version_are_written_as_version_00() {
        // We may only write the version we know; the trace id and known flags carry over and
        // the fields we cannot read are left behind.
        let parent = format!("{}-future-fields", traceparent("cc", TRACE_ID, PARENT_ID, "03"));
        let child = child_traceparent(Some(&parent), 9);
        assert!(valid_traceparent(&child), "{child}");
        assert_eq!(child.len(), 55);
        assert!(child.starts_with(&format!("00-{TRACE_ID}-")), "{child}");
        assert!(child.ends_with("-03"), "{child}");
    }

    #[test]
    fn children_clear_the_reserved_flags() {
        // The specification reserves every flag but sampled and random and tells vendors to
        // send them as zero; passing them on would vouch for meanings we do not know.
        for (flags, kept) in [("ff", "03"), ("05", "01"), ("fe", "02"), ("04", "00")] {
            let child = child_traceparent(Some(&traceparent("00", TRACE_ID, PARENT_ID, flags)), 3);
            assert!(child.ends_with(&format!("-{kept}")), "{flags}: {child}");
        }
    }

    #[test]
    fn a_new_trace_uses_the_random_bits_and_is_sampled_and_random() {
        // Without a usable parent a delivery still gets a trace, and since its trace id is
        // random the random-trace-id flag lets downstream sample on it.
        for parent in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            for random in [1_u128, 7, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX, 1 << 64] {
                let child = child_traceparent(parent, random);
                assert!(valid_traceparent(&child), "{child}");
                assert_eq!(trace_id(&child), Some(format!("{random:032x}").as_str()), "{child}");
                assert!(child.ends_with("-03"), "{child}");
            }
        }
        // Zero random bits would be the one invalid trace id.
        let child = child_traceparent(None, 0);
        assert!(valid_traceparent(&child), "{child}");
    }

    #[test]
    fn span_ids_are_never_zero_and_follow_the_random_bits() {
        // A zero span id is invalid and would make every downstream tracer drop the trace.
        let low: u64 = 0x1234_5678_9abc_def0;
        let cancelling = (u128::from(low.rotate_left(32)) << 64) | u128::from(low);
        for random in [0, cancelling, 1, u128::MAX] {
            assert_ne!(span_id(random), 0, "{random:x}");
            assert!(valid_traceparent(&child_traceparent(Some(PARENT), random)));
        }
        let spans: std::collections::HashSet<u64> = (1..=1000_u128).map(|random| span_id(random << 64)).collect();
        assert_eq!(spans.len(), 1000);
    }

    #[test]
    fn tracestate_lines_combine_in_order_into_one_list() {
        // A list split over field lines is the lines joined with commas (RFC 9110 §5.3); the
        // order carries meaning (the left-most entry belongs to the parent's tracer).
        assert_eq!(
            tracestate(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(tracestate(&["a=1,b=2", "c=3"]).as_deref(), Some("a=1,b=2,c=3"));
        assert_eq!(tracestate(&[" a=1 ,\tb=2\t, ,,c=3", ",", "d=4,"]).as_deref(), Some("a=1,b=2,c=3,d=4"));
        assert_eq!(tracestate(&["", " , \t,"]), None, "only empty members: nothing to pass on");
        assert_eq!(tracestate(&[]), None);
    }

    #[test]
    fn tracestate_holds_at_most_32_members() {
        // The specification's limit bounds what every hop carries; empty members don't count.
        let members: Vec<String> = (0..33).map(|index| format!("k{index}=v")).collect();
        let first_16 = members[..16].join(",");
        let next_16 = members[16..32].join(", ,");
        let expected = members[..32].join(",");
        assert_eq!(tracestate(&[&first_16, &next_16, ","]), Some(expected));
        assert_eq!(tracestate(&[&first_16, &next_16, &members[32]]), None);
        assert_eq!(tracestate(&[&members.join(",")]), None);
    }

    #[test]
    fn tracestate_keys_follow_the_grammar() {
        // The key names the tracer that owns an entry; a malformed one means the header was
        // not produced by a conforming tracer and none of it can be trusted.
        let simple_256 = format!("a{}", "b".repeat(255));
        let tenant_241 = format!("0{}", "t".repeat(240));
        let system_14 = format!("s{}", "y".repeat(13));
        let valid = [
            "a=1".to_owned(),
            "a0_-*/=1".to_owned(),
            "tenant@system=1".to_owned(),
            "0tenant@s=1".to_owned(),
            "t@s0_-*/=1".to_owned(),
            format!("{simple_256}=1"),
            format!("{tenant_241}@{system_14}=1"),
        ];
        for member in &valid {
            assert_eq!(tracestate(&[member]).as_deref(), Some(member.as_str()), "{member}");
        }
        let invalid = [
            "A=1".to_owned(),
            "aB=1".to_owned(),
            "0abc=1".to_owned(),
            "_a=1".to_owned(),
            "a.b=1".to_owned(),
            "a b=1".to_owned(),
            "=1".to_owned(),
            "a".to_owned(),
            "@s=1".to_owned(),
            "t@=1".to_owned(),
            "t@0s=1".to_owned(),
            "t@s@x=1".to_owned(),
            "T@s=1".to_owned(),
            format!("{simple_256}b=1"),
            format!("{tenant_241}t@s=1"),
            format!("t@{system_14}y=1"),
        ];
        for member in &invalid {
            assert_eq!(tracestate(&["ok=1", member]), None, "{member}");
        }
    }

    #[test]
    fn tracestate_values_follow_the_grammar() {
        // Values are opaque to us, but a value with `,` or `=` or a control character would
        // be read differently by the next hop, so the whole header is dropped instead.
        let value_256 = "v".repeat(256);
        for member in [format!("k={value_256}"), "k=!~ +<>".to_owned(), "k= leading".to_owned(), "k=a b".to_owned()] {
            assert_eq!(tracestate(&[&member]).as_deref(), Some(member.as_str()), "{member}");
        }
        for member in
            [format!("k={value_256}v"), "k=a=b".to_owned(), "k=".to_owned(), "k=a\tb".to_owned(), "k=é".to_owned()]
        {
            assert_eq!(tracestate(&[&member]), None, "{member}");
        }
        // A space at the end of a value is optional whitespace between members, not the value.
        assert!(!tracestate_value(b"v "));
        assert!(!tracestate_value(b" "));
        assert_eq!(tracestate(&["k=v  ,x=1"]).as_deref(), Some("k=v,x=1"));
    }

    #[test]
    fn a_duplicated_tracestate_key_invalidates_the_list() {
        // Two entries for one tracer are ambiguous; which one it reads is not ours to guess.
        assert_eq!(tracestate(&["a=1,a=2"]), None);
        assert_eq!(tracestate(&["a=1", "b=2,a=1"]), None);
        assert_eq!(tracestate(&["t@s=1,t@s=2"]), None);
        assert_eq!(tracestate(&["t@s=1,s=1,t@x=1"]).as_deref(), Some("t@s=1,s=1,t@x=1"));
    }
}
