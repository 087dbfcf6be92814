//! Standard Webhooks signatures (v1): `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`,
//! keyed by the base64-decoded part of a `whsec_…` secret. Used to verify signed ingest and,
//! with the delivery issue, to sign outgoing deliveries.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::limits;

const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (Standard Webhooks recommends 24 to 64).
const SECRET_BYTES: usize = 32;

/// A decoded `whsec_…` secret.
#[derive(Clone)]
pub struct Secret {
    /// HMAC state keyed once at parse time and cloned per message.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(…)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`; the key must decode to 24–64 bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let key = STANDARD.decode(text.strip_prefix(SECRET_PREFIX)?).ok()?;
        if !(24..=64).contains(&key.len()) {
            return None;
        }
        Some(Self { keyed: Hmac::<Sha256>::new_from_slice(&key).ok()? })
    }

    /// A new random secret, rendered as `whsec_…`.
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut key = [0u8; SECRET_BYTES];
        getrandom::fill(&mut key)?;
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// The `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// Verifies a `webhook-signature` header value (space-separated `v1,<base64>` entries) for
    /// the message, with the timestamp within the tolerance of `now_ms`. Lengths are checked
    /// before any comparison, and the comparison itself is constant-time.
    pub fn verify(&self, id: &str, timestamp: &str, signatures: &str, body: &[u8], now_ms: u64) -> bool {
        let Ok(timestamp) = timestamp.parse::<u64>() else {
            return false;
        };
        let skew_ms = timestamp.saturating_mul(1000).abs_diff(now_ms);
        if skew_ms > limits::SIGNATURE_TOLERANCE_MS || id.is_empty() {
            return false;
        }
        let expected = self.mac(id, timestamp, body);
        signatures.split(' ').filter(|entry| !entry.is_empty()).take(limits::SIGNATURES_PER_HEADER_MAX).any(|entry| {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                return false;
            };
            match STANDARD.decode(encoded) {
                Ok(given) if given.len() == expected.len() => constant_time_equal(&given, &expected),
                _ => false,
            }
        })
    }
}

/// Compares byte strings in time that does not depend on where they differ (`subtle`); only
/// their lengths, which are not secret here, may end it early.
pub fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    left.len() == right.len() && bool::from(left.ct_eq(right))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    // The published Standard Webhooks test vector: interoperability depends on matching it.
    #[test]
    fn matches_the_specification_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, 1_649_367_553, BODY), "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    // Verification accepts the right signature among several and refuses every near miss.
    #[test]
    fn verification_accepts_valid_and_refuses_tampering() {
        let secret = Secret::parse(SECRET).unwrap();
        let now_ms = 1_649_367_553_000;
        let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert!(secret.verify(ID, "1649367553", good, BODY, now_ms));
        assert!(secret.verify(ID, "1649367553", &format!("v1,AAAA {good}"), BODY, now_ms));
        assert!(!secret.verify(ID, "1649367553", good, b"{}", now_ms));
        assert!(!secret.verify("msg_other", "1649367553", good, BODY, now_ms));
        assert!(!secret.verify(ID, "1649367554", good, BODY, now_ms));
        assert!(!secret.verify(ID, "1649367553", good, BODY, now_ms + 6 * 60 * 1000), "stale timestamp");
        assert!(!secret.verify(ID, "1649367553", "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=", BODY, now_ms));
        assert!(!secret.verify(ID, "not-a-number", good, BODY, now_ms));
        assert!(!secret.verify(ID, "1649367553", "v1,short", BODY, now_ms));
    }

    // Generated secrets must parse back and be distinct.
    #[test]
    fn generated_secrets_parse() {
        let first = Secret::generate().unwrap();
        let second = Secret::generate().unwrap();
        assert_ne!(first, second);
        assert!(Secret::parse(&first).is_some());
        assert!(Secret::parse("whsec_").is_none() && Secret::parse("nope").is_none());
    }
}
