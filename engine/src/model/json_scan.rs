//! Finding an event's type in a JSON body on the ingest path without parsing the body: a small
//! scanner walks the top-level object's members, skipping each value it does not need, and stops
//! as soon as it has read a `type` field or reached [`limits::EVENT_TYPE_SCAN_BYTES_MAX`] bytes.
//! It allocates nothing and reads no further than it must, so a large body costs what its first
//! bytes cost.
//!
//! The scanner finds a type; it does not validate the body (the body is stored as sent). Top-level
//! keys, strings, numbers and literals follow the JSON grammar (RFC 8259); inside a nested object
//! or array only strings and brackets are tracked, which is all that skipping it safely needs.
//! Choices where the rules are not obvious:
//!
//! - A key is compared as written: a key spelled with escapes (`"typ\u0065"`) is not `type`.
//!   Senders do not escape plain ASCII letters, and comparing raw bytes keeps the scan
//!   allocation-free.
//! - A value with escapes is taken as written too, so it contains a backslash and is not a valid
//!   type: a valid type's characters (`A-Z a-z 0-9 . _ : -`) never need escaping.
//! - The first string `type` decides, even when it is not a valid type (the answer is then
//!   `None`, not the `event` field): the sender named a type, and it is refused, not replaced.
//! - The answer depends only on what the scanner read: a `type` is returned as soon as it is
//!   read, and an `event` read before the scan stops (at the end of the object, at the scan
//!   bound, or at bytes that are not JSON) is returned when no `type` came before the stop.

use crate::limits;
use crate::model::event_type::valid_event_type;

/// Nesting depth of a skipped value, at most; deeper bodies are not searched. serde_json's
/// default recursion limit is the same, and 128 levels fit one `u128` of bracket kinds.
const NESTING_DEPTH_MAX: u32 = 128;

/// The value of the first top-level string field named `type`, else of one named `event`, in a
/// JSON object body; None when the body is not an object, has neither as a string, the value is
/// not a valid event type ([`valid_event_type`]), or the field lies beyond
/// [`limits::EVENT_TYPE_SCAN_BYTES_MAX`] bytes.
pub fn event_type_field(body: &[u8]) -> Option<&str> {
    let scanned_bytes = body.len().min(limits::EVENT_TYPE_SCAN_BYTES_MAX);
    let scanned = body.get(..scanned_bytes).unwrap_or(body);
    let mut scanner = Scanner { bytes: scanned, position: 0 };
    let mut event = None;
    let value = scanner.type_field(&mut event).or(event)?;
    if !valid_event_type(value) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// A cursor over the scanned bytes. Every method returns `None` when the bytes end or are not
/// JSON; none of them reads past the end.
struct Scanner<'body> {
    bytes: &'body [u8],
    position: usize,
}

impl<'body> Scanner<'body> {
    /// Walks the top-level object's members: returns the first string `type` value, and records
    /// the first string `event` value in `event` on the way. `None` when the scan stopped first.
    fn type_field(&mut self, event: &mut Option<&'body [u8]>) -> Option<&'body [u8]> {
        self.skip_whitespace();
        self.expect(b'{')?;
        self.skip_whitespace();
        loop {
            self.expect(b'"')?;
            let key = self.string_rest()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            if self.peek() == Some(b'"') {
                self.position += 1;
                let value = self.string_rest()?;
                if key == b"type" {
                    return Some(value);
                }
                if key == b"event" && event.is_none() {
                    *event = Some(value);
                }
            } else {
                self.skip_value()?;
            }
            self.skip_whitespace();
            // A `}` ends the object, and anything but a `,` ends the scan just the same.
            self.expect(b',')?;
            self.skip_whitespace();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    /// Consumes `wanted` when it is next; says whether it was.
    fn eat(&mut self, wanted: u8) -> bool {
        let found = self.peek() == Some(wanted);
        if found {
            self.position += 1;
        }
        found
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    /// Reads a string whose opening quote is consumed; returns its contents as written (escapes
    /// included) and leaves the cursor after the closing quote.
    fn string_rest(&mut self) -> Option<&'body [u8]> {
        let start = self.position;
        loop {
            // The next quote or backslash, found a word at a time: most of a body is the
            // contents of strings. (Control characters inside a string, which RFC 8259 section 7
            // says must be escaped, are not looked for: the scanner finds a type, it does not
            // validate, and a valid type has none.)
            let rest = self.bytes.get(self.position..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            self.position += found;
            match self.next()? {
                b'"' => return self.bytes.get(start..self.position.saturating_sub(1)),
                _ => self.escape_rest()?,
            }
        }
    }

    /// Checks the escape after a backslash: one of `" \ / b f n r t`, or `u` and 4 hex digits.
    fn escape_rest(&mut self) -> Option<()> {
        match self.next()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                for _ in 0..4 {
                    if !self.next()?.is_ascii_hexdigit() {
                        return None;
                    }
                }
                Some(())
            }
            _ => None,
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.position += 1;
                self.string_rest().map(|_| ())
            }
            b'{' | b'[' => self.skip_nested(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Skips an object or array, tracking strings (whose brackets do not count) and which kind
    /// of bracket each level opened, so `[}` is refused.
    fn skip_nested(&mut self) -> Option<()> {
        // Bit n is 1 when level n + 1 (from the innermost) is an object, 0 when an array.
        let mut kinds: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            match self.next()? {
                b'"' => {
                    self.string_rest()?;
                }
                opening @ (b'{' | b'[') => {
                    if depth == NESTING_DEPTH_MAX {
                        return None;
                    }
                    kinds = (kinds << 1) | u128::from(opening == b'{');
                    depth += 1;
                }
                closing @ (b'}' | b']') => {
                    if depth == 0 || (kinds & 1 == 1) != (closing == b'}') {
                        return None;
                    }
                    kinds >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.position.checked_add(word.len())?;
        if self.bytes.get(self.position..end)? != word {
            return None;
        }
        self.position = end;
        Some(())
    }

    /// RFC 8259 section 6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        if !self.eat(b'0') {
            self.digits()?;
        }
        if self.eat(b'.') {
            self.digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.digits()?;
        }
        Some(())
    }

    /// Skips one or more digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.position;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.position += 1;
        }
        (self.position > start).then_some(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    // The documented cases: what a sender writes decides where its event is routed, so each rule
    // (which field wins, what is skipped, what is refused) is pinned here.
    #[test]
    fn finds_the_top_level_type_as_documented() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"event": "payment.completed", "data": {"amount": 12}}"#, Some("payment.completed")),
            (r#"{"type":"order.created"}"#, Some("order.created")),
            (r#"{"type":"a.b","event":"c.d"}"#, Some("a.b")),
            (r#"{"event":"c.d","type":"a.b"}"#, Some("a.b")),
            (r#"{"event":"c.d","event":"e.f"}"#, Some("c.d")),
            (r#"{"type":"a.b","type":"c.d"}"#, Some("a.b")),
            (r#"{"type":1,"event":"c.d"}"#, Some("c.d")),
            (r#"{"type":null,"type":"a.b"}"#, Some("a.b")),
            (r#"{"data":{"type":"inner"},"event":"outer"}"#, Some("outer")),
            (r#"{"data":{"type":"inner"}}"#, None),
            (r#"{"list":[{"type":"inner"}],"x":[[1,2],[]],"type":"t"}"#, Some("t")),
            (r#"{"s":"}{\"type\":\"fake\"","type":"real"}"#, Some("real")),
            (r#"{"s":"\\","type":"real"}"#, Some("real")),
            (r#"{"n":[-1.5e+3,0,2E-2,true,false,null,"]"],"type":"t"}"#, Some("t")),
            (r#"{"a":-0.0,"b":1e9,"c":true,"d":false,"e":null,"type":"t"}"#, Some("t")),
            (" \n\t{ \r\"type\" \n:\t \"spaced.out\" \n} \n", Some("spaced.out")),
            (" {\n  \"a\" : [ 1 , { } ] ,\n  \"event\" : \"e\"\n}", Some("e")),
            (r#"{"type":"ünicode"}"#, None),
            (r#"{"type":"has space","event":"fallback"}"#, None),
            (r#"{"type":"","event":"fallback"}"#, None),
            (r#"{"type":"a\u002eb"}"#, None),
            (r#"{"typ\u0065":"a.b"}"#, None),
            (r#"{"Type":"a.b","EVENT":"c"}"#, None),
            (r#"{}"#, None),
            (r#"[{"type":"a"}]"#, None),
            (r#""type""#, None),
            (r#"12"#, None),
            (r#"null"#, None),
            ("", None),
            ("   ", None),
            (r#"{"a":01,"type":"t"}"#, None),
            (r#"{"a":[1}],"type":"t"}"#, None),
            (r#"{"a":tru,"type":"t"}"#, None),
            (r#"{"a":"x\q","type":"t"}"#, None),
            // A raw tab inside a string is not valid JSON, but the scanner finds types, it does not
            // validate: the type after it is found.
            ("{\"a\":\"tab\there\",\"type\":\"t\"}", Some("t")),
            (r#"{"a" "type":"t"}"#, None),
            (r#"{"a":1 "type":"t"}"#, None),
            (r#"{,"type":"t"}"#, None),
        ];
        for (body, expected) in cases {
            assert_eq!(event_type_field(body.as_bytes()), *expected, "{body}");
        }
    }

    // A body cut short (a truncated upload, a sender's bug) must never be read past its end, and
    // yields the type only when the whole field was read before the cut.
    #[test]
    fn truncated_bodies_yield_only_complete_fields() {
        let body = r#"{"data":{"k":[1,"}"]},"type":"order.created","more":1}"#;
        let field_end = body.find(r#""order.created""#).unwrap() + r#""order.created""#.len();
        for cut in 0..body.len() {
            let expected = (cut >= field_end).then_some("order.created");
            assert_eq!(event_type_field(&body.as_bytes()[..cut]), expected, "cut at {cut}");
        }
        assert_eq!(event_type_field(br#"{"event":"e.f","data":[1,2"#), Some("e.f"));
    }

    // The scan bound is what keeps a large body as cheap as a small one: a field beyond it is
    // not seen, while an `event` before it still counts.
    #[test]
    fn fields_beyond_the_scan_bound_are_ignored() {
        let padding = "x".repeat(limits::EVENT_TYPE_SCAN_BYTES_MAX);
        let late_type = format!(r#"{{"pad":"{padding}","type":"late"}}"#);
        assert_eq!(event_type_field(late_type.as_bytes()), None);
        let early_event = format!(r#"{{"event":"early","pad":"{padding}","type":"late"}}"#);
        assert_eq!(event_type_field(early_event.as_bytes()), Some("early"));
        let early_type = format!(r#"{{"type":"early","pad":"{padding}"}}"#);
        assert_eq!(event_type_field(early_type.as_bytes()), Some("early"));
        // A field ending exactly at the bound is read; one byte further is not.
        let prefix = r#"{"pad":""#;
        let suffix = r#"","type":"t""#;
        let fill = limits::EVENT_TYPE_SCAN_BYTES_MAX - prefix.len() - suffix.len();
        let at_bound = format!("{prefix}{}{suffix}}}", "x".repeat(fill));
        assert_eq!(event_type_field(at_bound.as_bytes()), Some("t"));
        let past_bound = format!("{prefix}{}{suffix}}}", "x".repeat(fill + 1));
        assert_eq!(event_type_field(past_bound.as_bytes()), None);
    }

    // Nesting is bounded like serde_json's: deep values are given up on, not recursed into.
    #[test]
    fn nesting_deeper_than_the_bound_is_not_searched() {
        let depth = NESTING_DEPTH_MAX as usize;
        let within = format!(r#"{{"a":{}{},"type":"t"}}"#, "[".repeat(depth), "]".repeat(depth));
        assert_eq!(event_type_field(within.as_bytes()), Some("t"));
        let beyond = format!(r#"{{"a":{}{},"type":"t"}}"#, "[".repeat(depth + 1), "]".repeat(depth + 1));
        assert_eq!(event_type_field(beyond.as_bytes()), None);
    }

    fn type_text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z.]{1,6}", "[A-Za-z0-9._:-]{1,12}", "[a-z ]{0,3}", "\\PC{0,4}", Just("x".repeat(129))]
    }

    fn key_text() -> impl Strategy<Value = String> {
        prop_oneof![Just("type".to_string()), Just("event".to_string()), "[a-z\"\\\\{}]{0,6}", "\\PC{0,4}"]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            type_text().prop_map(Value::String),
            // Brackets, quotes and backslashes inside strings must not disturb the skipping.
            "[\\[\\]{}\"\\\\:, ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key_text(), inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// A top-level value: mostly a string that may be a type, so that objects where both `type`
    /// and `event` are candidates are common.
    fn member_value() -> impl Strategy<Value = Value> {
        prop_oneof![2 => type_text().prop_map(Value::String), 1 => json_value()]
    }

    /// Members with distinct keys (serde_json keeps the last of duplicates, the scanner the first)
    /// and the whitespace around each token.
    fn json_object() -> impl Strategy<Value = (Vec<(String, Value)>, Vec<String>)> {
        let members = prop::collection::vec((key_text(), member_value()), 0..6).prop_map(|mut members| {
            let mut seen = std::collections::HashSet::new();
            members.retain(|(key, _)| seen.insert(key.clone()));
            members
        });
        (members, prop::collection::vec("[ \t\n\r]{0,2}", 32))
    }

    fn render(members: &[(String, Value)], spaces: &[String], pretty: bool) -> String {
        let mut space = spaces.iter().cycle();
        let mut text = format!("{}{{", space.next().unwrap());
        for (index, (key, value)) in members.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            let value_text =
                if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) }.unwrap();
            let key_text = serde_json::to_string(key).unwrap();
            let gaps: Vec<&String> = space.by_ref().take(4).collect();
            text.push_str(&format!("{}{key_text}{}:{}{value_text}{}", gaps[0], gaps[1], gaps[2], gaps[3]));
        }
        text.push('}');
        text.push_str(space.next().unwrap());
        text
    }

    fn expected_type(object: &serde_json::Map<String, Value>) -> Option<&str> {
        let field = |name: &str| object.get(name).and_then(Value::as_str);
        field("type").or_else(|| field("event")).filter(|value| valid_event_type(value.as_bytes()))
    }

    proptest! {
        // The scanner replaces a full parse on the hot path, so on well-formed objects within the
        // scan bound it must give exactly what a parse would.
        #[test]
        fn agrees_with_serde_json((members, spaces) in json_object(), pretty in any::<bool>()) {
            let body = render(&members, &spaces, pretty);
            prop_assume!(body.len() <= limits::EVENT_TYPE_SCAN_BYTES_MAX);
            let parsed: Value = serde_json::from_str(&body).unwrap();
            let object = parsed.as_object().unwrap();
            prop_assert_eq!(event_type_field(body.as_bytes()), expected_type(object), "{}", body);
        }

        // Bodies come from anyone: arbitrary bytes never panic or read out of bounds.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = event_type_field(&body);
        }

        // Damaged JSON reaches the deeper paths that random bytes rarely do: cutting or changing
        // one byte of a real object never panics, and whatever is found is a valid type.
        #[test]
        fn damaged_objects_never_panic(
            (members, spaces) in json_object(),
            cut in any::<prop::sample::Index>(),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut body = render(&members, &spaces, false).into_bytes();
            body.truncate(cut.index(body.len() + 1));
            if !body.is_empty() {
                let index = position.index(body.len());
                body[index] = byte;
            }
            if let Some(found) = event_type_field(&body) {
                prop_assert!(valid_event_type(found.as_bytes()));
            }
        }
    }
}
