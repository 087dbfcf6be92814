//! Names the server accepts, checked before they reach the client (whose header and subject
//! constructors would refuse or panic later), and the bucket layout: pure functions.

use crate::errors::LinkError;

/// A stream or bucket name: letters, digits, `_` and `-` (JetStream also refuses `.`, `*`, `>`
/// and spaces; the narrower set keeps names safe inside subjects and file names).
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), LinkError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(LinkError::Invalid { what, value: name.to_string() })
    }
}

/// A subject to publish to: dot-separated non-empty tokens of printable ASCII, no wildcards.
pub(crate) fn check_subject(subject: &str) -> Result<(), LinkError> {
    check_tokens("subject", subject, false)
}

/// A subject filter: as a subject, but `*` may stand for a token and `>` for the rest.
pub(crate) fn check_filter(filter: &str) -> Result<(), LinkError> {
    check_tokens("subject filter", filter, true)
}

fn check_tokens(what: &'static str, subject: &str, wildcards: bool) -> Result<(), LinkError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    let valid = tokens.iter().enumerate().all(|(index, token)| {
        let plain =
            !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'*' && byte != b'>');
        plain || (wildcards && (*token == "*" || (*token == ">" && index == last)))
    });
    if valid {
        Ok(())
    } else {
        Err(LinkError::Invalid { what, value: subject.to_string() })
    }
}

/// A header name: printable ASCII without `:` (RFC 7230 section 3.2 field-name, loosely).
pub(crate) fn check_header_name(name: &str) -> Result<(), LinkError> {
    if !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_graphic() && byte != b':') {
        Ok(())
    } else {
        Err(LinkError::Invalid { what: "header name", value: name.to_string() })
    }
}

/// A bucket key: the characters a NATS key-value key may hold (`[-/_=.a-zA-Z0-9]`), tokens
/// separated by single dots, none at either end.
pub(crate) fn check_key(key: &str) -> Result<(), LinkError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"-/_=.".contains(&byte);
    let valid = !key.is_empty() && key.bytes().all(allowed) && key.split('.').all(|token| !token.is_empty());
    if valid {
        Ok(())
    } else {
        Err(LinkError::Invalid { what: "key", value: key.to_string() })
    }
}

/// The stream that holds bucket `bucket`, as the NATS key-value convention names it.
pub(crate) fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subjects of bucket `bucket`'s stream.
pub(crate) fn bucket_subjects(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// The subject of key `key` in bucket `bucket`.
pub(crate) fn key_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// The key a subject of bucket `bucket` names, if it is one of the bucket's.
pub(crate) fn subject_key<'a>(bucket: &str, subject: &'a str) -> Option<&'a str> {
    subject.strip_prefix("$KV.")?.strip_prefix(bucket)?.strip_prefix('.')
}

/// The narrowest subject filter that holds every key starting with `prefix`: the prefix's whole
/// tokens followed by `>` when it ends with a dot (`lease.p.3.` → `$KV.b.lease.p.3.>`), else the
/// whole bucket (the caller then keeps the keys that start with the prefix).
pub(crate) fn prefix_filter(bucket: &str, prefix: &str) -> String {
    if prefix.ends_with('.') && check_key(prefix.trim_end_matches('.')).is_ok() {
        format!("$KV.{bucket}.{prefix}>")
    } else {
        bucket_subjects(bucket)
    }
}

/// Whether a key-value message is a deletion marker (written by other NATS clients' `delete` or
/// `purge`; this crate deletes by purging the key's subject instead).
pub(crate) fn is_tombstone(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(name, value)| name == "KV-Operation" && (value == "DEL" || value == "PURGE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A subject or header the client accepts late panics inside async-nats (its header
    // constructors assert), on the link thread: the handle must refuse it first.
    #[test]
    fn subjects_and_headers_are_checked_before_the_client_sees_them() {
        assert!(check_subject("kapsel.p.3.in").is_ok());
        assert!(check_subject("kapsel.p.*.in").is_err());
        assert!(check_subject("kapsel..in").is_err());
        assert!(check_subject("kapsel.p 3").is_err());
        assert!(check_subject("").is_err());
        assert!(check_filter("kapsel.p.3.>").is_ok());
        assert!(check_filter("kapsel.*.3.in").is_ok());
        assert!(check_filter("kapsel.>.in").is_err());
        assert!(check_header_name("Kapsel-Event-Id").is_ok());
        assert!(check_header_name("Bad:Name").is_err());
        assert!(check_header_name("Bad Name").is_err());
        assert!(check_name("stream", "KAPSEL_P3").is_ok());
        assert!(check_name("stream", "KAPSEL.P3").is_err());
    }

    // Leases are listed by prefix (`lease.p.3.`); the filter must not miss a key of the prefix
    // nor, for a prefix that ends inside a token, narrow to the wrong tokens.
    #[test]
    fn bucket_layout_and_prefix_filters() {
        assert_eq!(bucket_stream("kapsel_cluster"), "KV_kapsel_cluster");
        assert_eq!(key_subject("b", "lease.p.3.e.7"), "$KV.b.lease.p.3.e.7");
        assert_eq!(subject_key("b", "$KV.b.lease.p.3.e.7"), Some("lease.p.3.e.7"));
        assert_eq!(subject_key("b", "$KV.bb.x"), None);
        assert_eq!(prefix_filter("b", "lease.p.3."), "$KV.b.lease.p.3.>");
        assert_eq!(prefix_filter("b", "lease.p.3"), "$KV.b.>");
        assert_eq!(prefix_filter("b", ""), "$KV.b.>");
        assert!(check_key("lease.p.3.e.7").is_ok());
        assert!(check_key("node-a/x=1").is_ok());
        assert!(check_key(".lease").is_err());
        assert!(check_key("lease.").is_err());
        assert!(check_key("lease p").is_err());
        assert!(check_key("lease.*").is_err());
        let tombstone = vec![("KV-Operation".to_string(), "DEL".to_string())];
        assert!(is_tombstone(&tombstone));
        assert!(!is_tombstone(&[]));
    }
}
