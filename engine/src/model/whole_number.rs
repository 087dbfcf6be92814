//! Admin JSON bodies as objects, with whole numbers however they are written: `5`, `5.0` and
//! `5e0` are the same number to JSON Schema (and to JavaScript and Python clients that write
//! floats), so `"timeout_ms": 5000.0` means 5000. A fraction stays a fraction, and an integer
//! field then refuses it (400 E1005), as it refuses a negative number or one out of range.

use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

/// Largest float taken as a whole number: beyond 2^53 a float no longer holds every integer.
const EXACT_FLOAT_MAX: f64 = 9_007_199_254_740_992.0;

/// Reads an admin body into `T`: it must be a JSON object, and so must each member named in
/// `objects` when present and not null (serde would otherwise take an array for a struct, its
/// fields in order). Whole floats become integers first.
pub fn object_body<T: DeserializeOwned>(body: &[u8], objects: &[&str]) -> Result<T, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|error| format!("invalid JSON body: {error}"))?;
    let Some(members) = value.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    for name in objects {
        if members.get(*name).is_some_and(|member| !member.is_object() && !member.is_null()) {
            return Err(format!("`{name}` must be an object"));
        }
    }
    whole_numbers(&mut value);
    serde_json::from_value(value).map_err(|error| format!("invalid JSON body: {error}"))
}

/// Replaces every float with a zero fraction (within 0 to 2^53) by the same integer.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(number) if !number.is_u64() && !number.is_i64() => {
            let whole = number.as_f64().filter(|float| float.fract() == 0.0 && (0.0..=EXACT_FLOAT_MAX).contains(float));
            if let Some(whole) = whole {
                // Exact: a whole float within 2^53.
                *number = Number::from(whole as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(members) => members.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Body {
        n: Option<u32>,
        inner: Option<Inner>,
        rate: Option<f64>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        m: Option<u64>,
    }

    fn read(json: &str) -> Result<Body, String> {
        super::object_body(json.as_bytes(), &["inner"])
    }

    // A whole number is one however it is written; a fraction, a negative number, one out of
    // range or a string is refused by an integer field; a float field takes either.
    #[test]
    fn whole_numbers_however_written() {
        for (json, expected) in [(r#"{"n":5}"#, 5), (r#"{"n":5.0}"#, 5), (r#"{"n":5e0}"#, 5), (r#"{"n":5E3}"#, 5000)] {
            assert_eq!(read(json).unwrap().n, Some(expected), "{json}");
        }
        assert_eq!(read(r#"{"inner":{"m":7.0}}"#).unwrap().inner.unwrap().m, Some(7));
        assert_eq!(read(r#"{"rate":2.0}"#).unwrap().rate, Some(2.0));
        assert_eq!(read(r#"{"rate":0.5}"#).unwrap().rate, Some(0.5));
        assert!(read("{}").unwrap().n.is_none());
        for json in
            [r#"{"n":5.5}"#, r#"{"n":-1}"#, r#"{"n":-1.0}"#, r#"{"n":4294967296}"#, r#"{"n":1e300}"#, r#"{"n":"5"}"#]
        {
            assert!(read(json).is_err(), "{json}");
        }
    }

    // Serde takes an array for a struct (its fields in order): the body and its nested objects
    // must be objects.
    #[test]
    fn arrays_are_not_objects() {
        assert_eq!(read("[5]").unwrap_err(), "the body must be a JSON object");
        assert_eq!(read(r#"{"inner":[5]}"#).unwrap_err(), "`inner` must be an object");
        assert!(read(r#"{"inner":null}"#).unwrap().inner.is_none());
    }
}
