//! How ingest to an endpoint is authenticated (the endpoint field `ingest_auth`): the five
//! schemes of the contract, their admin JSON, and the check of one request against them.
//!
//! Plain data and pure functions: the time is passed in, request headers come through a closure,
//! nothing here reads a clock or does I/O. Every scheme signs the body bytes exactly as sent, so
//! the caller passes the raw body before anything parses it: re-encoded JSON would not match.
//!
//! What each scheme signs:
//! - `key`: nothing. A key with `ingest` scope of the endpoint's tenant, or the operator token, is
//!   checked by the caller; [`IngestAuth::verify`] lets it through.
//! - `standard_webhooks`: `webhook-signature` holds space-separated `v1,<base64>` entries, each
//!   `base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))` keyed by the decoded
//!   part of the `whsec_…` secret, with `webhook-timestamp` within
//!   [`limits::SIGNATURE_TOLERANCE_MS`] of now. Delegated to [`Secret::verify`].
//! - `hmac`: the configured header holds `prefix + encode(HMAC-algorithm(secret, body))`, keyed by
//!   the secret's UTF-8 bytes. GitHub sends `X-Hub-Signature-256: sha256=<hex>` (SHA-256, hex,
//!   prefix `sha256=`), Shopify `X-Shopify-Hmac-Sha256: <base64>` (SHA-256, base64, no prefix).
//!   These schemes carry no timestamp, so a captured request can be replayed: that is the
//!   providers' design, and the idempotency table absorbs an exact replay.
//! - `stripe`: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`, each `v1`
//!   being `hex(HMAC-SHA256(secret, "{t}.{body}"))` keyed by the whole `whsec_…` string as bytes
//!   (not base64-decoded, unlike Standard Webhooks). Any `v1` may match: Stripe sends one per
//!   active secret while a secret is rolled. Other schemes (`v0` is a test-mode signature) are
//!   ignored so that a sender cannot downgrade the check. `t` must be within
//!   [`STRIPE_TOLERANCE_MS`] of now in either direction.
//! - `none`: nothing; anyone who can reach Kapsel may ingest.
//!
//! Why constant time: the expected signature is derived from the secret. A comparison that stops
//! at the first differing byte tells a sender, through the response time, how many leading bytes
//! of a forgery are right, and lets it forge a signature one byte at a time. Given signatures are
//! decoded first (so hex case does not matter) and compared with `subtle`; only the length, which
//! is public, can end a comparison early.
//!
//! Bounded work for unauthenticated senders: a signature header longer than
//! [`SIGNATURE_HEADER_BYTES_MAX`] is refused before any HMAC, every request costs one HMAC of the
//! body at most, and at most [`limits::SIGNATURES_PER_HEADER_MAX`] signatures are compared.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use crate::limits;
use crate::model::signature::{constant_time_equal, Secret};

/// How far a `Stripe-Signature` timestamp may be from now, in either direction: 300 s, the
/// default tolerance of Stripe's own libraries. Wider lets a captured request be replayed for
/// longer; narrower refuses senders whose clocks drift or whose deliveries were queued.
pub const STRIPE_TOLERANCE_MS: u64 = 300 * 1000;

/// Longest `hmac` or `stripe` secret. HMAC hashes a key longer than its block first, so a long
/// key costs nothing per request; the bound keeps the stored endpoint small.
pub const SECRET_BYTES_MAX: usize = 256;

/// Longest header name an `hmac` scheme may read (the providers' names are under 32 bytes).
pub const HEADER_NAME_BYTES_MAX: usize = 64;

/// Longest `prefix` of an `hmac` signature (`sha256=`, `sha1=`, …).
pub const PREFIX_BYTES_MAX: usize = 32;

/// Longest signature header value examined; a longer one is refused before any HMAC, bounding
/// the parsing an unauthenticated sender can cause.
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 2048;

// A Stripe header with the most `v1` signatures examined, one `v0` and the longest timestamp must
// fit: `t=` and 19 digits and a comma, then `v1=`, 64 hex digits and a comma per signature.
const _: () = assert!(SIGNATURE_HEADER_BYTES_MAX >= 22 + (limits::SIGNATURES_PER_HEADER_MAX + 1) * 68);
// The prefix and the longest signature (SHA-512 in hex, 128 digits) must fit as well.
const _: () = assert!(SIGNATURE_HEADER_BYTES_MAX >= PREFIX_BYTES_MAX + 128);

/// The header Stripe signs with.
const STRIPE_HEADER: &str = "stripe-signature";
/// The Standard Webhooks headers: message id, timestamp, signatures.
const STANDARD_WEBHOOKS_ID_HEADER: &str = "webhook-id";
const STANDARD_WEBHOOKS_TIMESTAMP_HEADER: &str = "webhook-timestamp";
const STANDARD_WEBHOOKS_SIGNATURE_HEADER: &str = "webhook-signature";
/// Unix seconds have 10 digits until 2286; 19 digits always fit in a `u64`.
const UNIX_SECONDS_DIGITS_MAX: usize = 19;

/// How ingest to an endpoint is authenticated (endpoint field `ingest_auth`).
///
/// `Debug` leaves secrets out, so that logging a configuration never logs a secret.
#[derive(Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum IngestAuth {
    /// `{"type":"key"}`: a key with `ingest` scope of the endpoint's tenant, or the operator
    /// token (checked by the caller, not here).
    Key,
    /// `{"type":"standard_webhooks","secret":"whsec_…"}` (what `ingest_secret` does; that field
    /// stays its shorthand).
    StandardWebhooks {
        /// `whsec_` and the base64 of 24 to 64 key bytes.
        secret: String,
    },
    /// `{"type":"hmac","header":…,"algorithm":…,"encoding":…,"prefix"?:…,"secret":…}`: a
    /// signature of the raw body in one header (GitHub, Shopify and similar).
    Hmac {
        /// The header holding the signature, lower-case.
        header: String,
        /// The hash under the HMAC.
        algorithm: HmacAlgorithm,
        /// How the signature is written in the header.
        encoding: SignatureEncoding,
        /// Text before the signature in the header (`sha256=` for GitHub), if any.
        prefix: Option<String>,
        /// The shared secret, used as key bytes as it is.
        secret: String,
    },
    /// `{"type":"stripe","secret":…}`: `Stripe-Signature` with its timestamp tolerance.
    Stripe {
        /// The endpoint's signing secret (`whsec_…`), used as key bytes as it is.
        secret: String,
    },
    /// `{"type":"none"}`: open.
    None,
}

/// The hash under an `hmac` scheme's HMAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum HmacAlgorithm {
    /// `sha1`: GitHub's older `X-Hub-Signature` and other long-lived senders. HMAC-SHA1 is still
    /// a sound MAC; SHA-1's collision attacks do not carry over to it.
    Sha1,
    /// `sha256`.
    Sha256,
    /// `sha512`.
    Sha512,
}

/// How an `hmac` scheme's signature is written in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SignatureEncoding {
    /// `hex`: either case.
    Hex,
    /// `base64`: the standard alphabet, padded (RFC 4648 §4).
    Base64,
}

/// Why a request was refused. Its text names headers and the kind of problem, never a secret or
/// a signature, so it can go to the logs as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// A header the scheme needs is absent or empty.
    #[error("header `{header}` is missing")]
    MissingHeader {
        /// The header's lower-case name.
        header: String,
    },
    /// A header is present but not in the scheme's format.
    #[error("header `{header}` {problem}")]
    MalformedHeader {
        /// The header's lower-case name.
        header: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The signed timestamp is too far from now: a replay, a queued delivery or a wrong clock.
    #[error("the timestamp in header `{header}` is outside the tolerance")]
    TimestampOutsideTolerance {
        /// The header holding the timestamp.
        header: &'static str,
    },
    /// Well-formed, but no signature matches the body under the endpoint's secret.
    #[error("no signature in header `{header}` matches")]
    SignatureMismatch {
        /// The header holding the signatures.
        header: String,
    },
    /// The stored configuration does not load (it was validated when set, so this is a bug).
    #[error("the endpoint's ingest_auth does not load")]
    InvalidConfiguration,
}

impl std::fmt::Debug for IngestAuth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key => formatter.write_str("Key"),
            Self::StandardWebhooks { .. } => formatter.debug_struct("StandardWebhooks").finish_non_exhaustive(),
            Self::Hmac { header, algorithm, encoding, prefix, .. } => formatter
                .debug_struct("Hmac")
                .field("header", header)
                .field("algorithm", algorithm)
                .field("encoding", encoding)
                .field("prefix", prefix)
                .finish_non_exhaustive(),
            Self::Stripe { .. } => formatter.debug_struct("Stripe").finish_non_exhaustive(),
            Self::None => formatter.write_str("None"),
        }
    }
}

impl HmacAlgorithm {
    /// The name in admin JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Sha1, Self::Sha256, Self::Sha512].into_iter().find(|algorithm| algorithm.name() == name)
    }

    /// The HMAC of the concatenated parts under `key`; None only if the key is refused, which
    /// HMAC never does (any key length is valid).
    fn mac(self, key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
        match self {
            Self::Sha1 => mac_with::<Hmac<Sha1>>(key, parts),
            Self::Sha256 => mac_with::<Hmac<Sha256>>(key, parts),
            Self::Sha512 => mac_with::<Hmac<Sha512>>(key, parts),
        }
    }
}

fn mac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    let mut mac = <M as Mac>::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().to_vec())
}

impl SignatureEncoding {
    /// The name in admin JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hex => "hex",
            Self::Base64 => "base64",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Hex, Self::Base64].into_iter().find(|encoding| encoding.name() == name)
    }

    fn decode(self, text: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::Hex => decode_hex(text),
            Self::Base64 => STANDARD.decode(text).ok(),
        }
    }
}

impl IngestAuth {
    /// Parses and validates the admin JSON of `ingest_auth`. Unknown fields are refused: in a
    /// security setting a misspelt field should fail loudly, not fall back to a default. The
    /// error is a sentence for a 400 answer.
    pub fn parse(value: &Value) -> Result<IngestAuth, String> {
        let object = value.as_object().ok_or("`ingest_auth` must be an object with a `type`")?;
        let kind = object.get("type").and_then(Value::as_str).unwrap_or_default();
        let fields: &[&str] = match kind {
            "key" | "none" => &["type"],
            "standard_webhooks" | "stripe" => &["type", "secret"],
            "hmac" => &["type", "header", "algorithm", "encoding", "prefix", "secret"],
            _ => return Err("`ingest_auth.type` must be key, standard_webhooks, hmac, stripe or none".into()),
        };
        if let Some(unknown) = object.keys().find(|name| !fields.contains(&name.as_str())) {
            return Err(format!("`ingest_auth` of type {kind} has no field `{unknown}`"));
        }
        match kind {
            "key" => Ok(Self::Key),
            "none" => Ok(Self::None),
            "standard_webhooks" => {
                let secret = text_field(object, "secret")?;
                if Secret::parse(secret).is_none() {
                    return Err("`ingest_auth.secret` must be whsec_ followed by base64 of 24 to 64 bytes".into());
                }
                Ok(Self::StandardWebhooks { secret: secret.to_string() })
            }
            "stripe" => Ok(Self::Stripe { secret: bounded_secret(object)? }),
            _ => parse_hmac(object),
        }
    }

    /// The admin JSON, which [`IngestAuth::parse`] reads back. Secrets appear only when
    /// `reveal_secrets` is set (as the endpoint's own `secret` does in admin answers); otherwise
    /// the `secret` field is left out rather than masked, so that a view sent back unchanged is
    /// refused instead of replacing the secret with the mask.
    pub fn to_json(&self, reveal_secrets: bool) -> Value {
        let mut object = Map::new();
        let (kind, secret) = match self {
            Self::Key => ("key", None),
            Self::StandardWebhooks { secret } => ("standard_webhooks", Some(secret)),
            Self::Hmac { header, algorithm, encoding, prefix, secret } => {
                object.insert("header".into(), header.as_str().into());
                object.insert("algorithm".into(), algorithm.name().into());
                object.insert("encoding".into(), encoding.name().into());
                if let Some(prefix) = prefix {
                    object.insert("prefix".into(), prefix.as_str().into());
                }
                ("hmac", Some(secret))
            }
            Self::Stripe { secret } => ("stripe", Some(secret)),
            Self::None => ("none", None),
        };
        object.insert("type".into(), kind.into());
        if let (Some(secret), true) = (secret, reveal_secrets) {
            object.insert("secret".into(), secret.as_str().into());
        }
        Value::Object(object)
    }

    /// The lower-case names of the request headers [`IngestAuth::verify`] reads, so that the
    /// HTTP layer can keep them.
    pub fn header_names(&self) -> Vec<String> {
        let names: &[&str] = match self {
            Self::Key | Self::None => &[],
            Self::StandardWebhooks { .. } => {
                &[STANDARD_WEBHOOKS_ID_HEADER, STANDARD_WEBHOOKS_TIMESTAMP_HEADER, STANDARD_WEBHOOKS_SIGNATURE_HEADER]
            }
            Self::Hmac { header, .. } => return vec![header.clone()],
            Self::Stripe { .. } => &[STRIPE_HEADER],
        };
        names.iter().map(|name| name.to_string()).collect()
    }

    /// Checks one request: `headers` answers a header's value by lower-case name, `body` is the
    /// raw body as received, `now_ms` the current Unix time. `Key` and `None` pass here (the
    /// caller checks keys). The returned slices may borrow from the request (`'request`) rather
    /// than from the name asked for.
    pub fn verify<'request>(
        &self,
        headers: &dyn Fn(&str) -> Option<&'request [u8]>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthFailure> {
        match self {
            Self::Key | Self::None => Ok(()),
            Self::StandardWebhooks { secret } => verify_standard_webhooks(secret, headers, body, now_ms),
            Self::Hmac { header, algorithm, encoding, prefix, secret } => {
                let value = signature_header(headers, header)?;
                let signature = match prefix {
                    Some(prefix) => value
                        .strip_prefix(prefix.as_bytes())
                        .ok_or_else(|| malformed(header, "does not start with the configured prefix"))?,
                    None => value,
                };
                let given =
                    encoding.decode(signature).ok_or_else(|| malformed(header, "is not in the configured encoding"))?;
                let expected = algorithm.mac(secret.as_bytes(), &[body]).ok_or(AuthFailure::InvalidConfiguration)?;
                if constant_time_equal(&given, &expected) {
                    Ok(())
                } else {
                    Err(AuthFailure::SignatureMismatch { header: header.clone() })
                }
            }
            Self::Stripe { secret } => verify_stripe(secret, headers, body, now_ms),
        }
    }
}

fn text_field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`ingest_auth.{name}` is required and must be a string"))
}

fn bounded_secret(object: &Map<String, Value>) -> Result<String, String> {
    let secret = text_field(object, "secret")?;
    if secret.is_empty() || secret.len() > SECRET_BYTES_MAX {
        return Err(format!("`ingest_auth.secret` must be 1 to {SECRET_BYTES_MAX} bytes"));
    }
    Ok(secret.to_string())
}

fn parse_hmac(object: &Map<String, Value>) -> Result<IngestAuth, String> {
    let header = text_field(object, "header")?;
    if !valid_field_name(header) {
        return Err(format!(
            "`ingest_auth.header` must be an HTTP header name of 1 to {HEADER_NAME_BYTES_MAX} letters, digits and !#$%&'*+-.^_`|~"
        ));
    }
    let algorithm = HmacAlgorithm::from_name(text_field(object, "algorithm")?)
        .ok_or("`ingest_auth.algorithm` must be sha256, sha1 or sha512")?;
    let encoding = SignatureEncoding::from_name(text_field(object, "encoding")?)
        .ok_or("`ingest_auth.encoding` must be hex or base64")?;
    let prefix = match object.get("prefix") {
        None | Some(Value::Null) => None,
        Some(Value::String(prefix)) if valid_prefix(prefix) => Some(prefix.clone()),
        Some(_) => {
            return Err(format!(
                "`ingest_auth.prefix` must be 1 to {PREFIX_BYTES_MAX} printable ASCII characters, not starting or ending with a space"
            ))
        }
    };
    let secret = bounded_secret(object)?;
    // RFC 9110 §5.1: field names are case-insensitive; the lower-case form is what the caller's
    // lookup takes.
    Ok(IngestAuth::Hmac { header: header.to_ascii_lowercase(), algorithm, encoding, prefix, secret })
}

/// RFC 9110 §5.1: a field name is a token, and RFC 9110 §5.6.2 lists a token's characters.
fn valid_field_name(name: &str) -> bool {
    (1..=HEADER_NAME_BYTES_MAX).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Printable ASCII without surrounding spaces: a field value loses its surrounding whitespace in
/// transit (RFC 9110 §5.5), so a prefix ending in a space could never match.
fn valid_prefix(prefix: &str) -> bool {
    (1..=PREFIX_BYTES_MAX).contains(&prefix.len())
        && prefix.bytes().all(|byte| (b' '..=b'~').contains(&byte))
        && !prefix.starts_with(' ')
        && !prefix.ends_with(' ')
}

fn malformed(header: &str, problem: &'static str) -> AuthFailure {
    AuthFailure::MalformedHeader { header: header.to_string(), problem }
}

/// A signature header's value without surrounding whitespace; missing, empty or overlong is a
/// refusal before any HMAC is computed.
fn signature_header<'request>(
    headers: &dyn Fn(&str) -> Option<&'request [u8]>,
    name: &str,
) -> Result<&'request [u8], AuthFailure> {
    let value = headers(name).map(<[u8]>::trim_ascii).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthFailure::MissingHeader { header: name.to_string() });
    }
    if value.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(malformed(name, "is too long"));
    }
    Ok(value)
}

/// Unix seconds as decimal digits without a sign or leading zeros, so that the number and the
/// text a sender signed cannot disagree.
fn parse_unix_seconds(text: &[u8]) -> Option<u64> {
    let canonical = text == b"0" || text.first().is_some_and(|first| (b'1'..=b'9').contains(first));
    if !canonical || text.len() > UNIX_SECONDS_DIGITS_MAX || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn within_tolerance(timestamp_s: u64, now_ms: u64, tolerance_ms: u64) -> bool {
    timestamp_s.saturating_mul(1000).abs_diff(now_ms) <= tolerance_ms
}

fn verify_standard_webhooks<'request>(
    secret: &str,
    headers: &dyn Fn(&str) -> Option<&'request [u8]>,
    body: &[u8],
    now_ms: u64,
) -> Result<(), AuthFailure> {
    let text = |name: &str| {
        let value = signature_header(headers, name)?;
        std::str::from_utf8(value).map_err(|_| malformed(name, "is not UTF-8"))
    };
    let (id, timestamp, signatures) = (
        text(STANDARD_WEBHOOKS_ID_HEADER)?,
        text(STANDARD_WEBHOOKS_TIMESTAMP_HEADER)?,
        text(STANDARD_WEBHOOKS_SIGNATURE_HEADER)?,
    );
    // `Secret::verify` checks the timestamp too, but answers only yes or no; checking it here
    // first lets the log tell a stale or replayed request from a wrong secret.
    let timestamp_s = parse_unix_seconds(timestamp.as_bytes())
        .ok_or_else(|| malformed(STANDARD_WEBHOOKS_TIMESTAMP_HEADER, "is not Unix seconds"))?;
    if !within_tolerance(timestamp_s, now_ms, limits::SIGNATURE_TOLERANCE_MS) {
        return Err(AuthFailure::TimestampOutsideTolerance { header: STANDARD_WEBHOOKS_TIMESTAMP_HEADER });
    }
    let key = Secret::parse(secret);
    debug_assert!(key.is_some(), "a standard_webhooks secret is validated when it is set");
    match key {
        Some(key) if key.verify(id, timestamp, signatures, body, now_ms) => Ok(()),
        Some(_) => Err(AuthFailure::SignatureMismatch { header: STANDARD_WEBHOOKS_SIGNATURE_HEADER.to_string() }),
        None => Err(AuthFailure::InvalidConfiguration),
    }
}

/// A parsed `Stripe-Signature` value: the timestamp as sent and as a number, and the decoded
/// `v1` signatures.
struct StripeSignature<'request> {
    timestamp_text: &'request [u8],
    timestamp_s: u64,
    signatures: Vec<Vec<u8>>,
}

impl<'request> StripeSignature<'request> {
    /// Elements are `key=value`, separated by commas. `t` must appear once; `v1` at least once
    /// and at most [`limits::SIGNATURES_PER_HEADER_MAX`] times (a `v1` that is not hex is kept
    /// out, as Stripe's libraries do); other keys are ignored.
    fn parse(value: &'request [u8]) -> Result<Self, &'static str> {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        let mut signatures_seen = 0;
        for element in value.split(|byte| *byte == b',').map(<[u8]>::trim_ascii) {
            let Some(equals) = element.iter().position(|byte| *byte == b'=') else {
                return Err("has an element that is not key=value");
            };
            let (key, value) = (&element[..equals], &element[equals + 1..]);
            match key {
                b"t" if timestamp.is_some() => return Err("has two timestamps"),
                b"t" => {
                    timestamp =
                        Some((value, parse_unix_seconds(value).ok_or("has a timestamp that is not Unix seconds")?))
                }
                b"v1" => {
                    signatures_seen += 1;
                    if signatures_seen > limits::SIGNATURES_PER_HEADER_MAX {
                        return Err("has too many v1 signatures");
                    }
                    signatures.extend(decode_hex(value));
                }
                _ => {}
            }
        }
        let (timestamp_text, timestamp_s) = timestamp.ok_or("has no timestamp")?;
        if signatures_seen == 0 {
            return Err("has no v1 signature");
        }
        Ok(Self { timestamp_text, timestamp_s, signatures })
    }
}

fn verify_stripe<'request>(
    secret: &str,
    headers: &dyn Fn(&str) -> Option<&'request [u8]>,
    body: &[u8],
    now_ms: u64,
) -> Result<(), AuthFailure> {
    let value = signature_header(headers, STRIPE_HEADER)?;
    let signature = StripeSignature::parse(value).map_err(|problem| malformed(STRIPE_HEADER, problem))?;
    if !within_tolerance(signature.timestamp_s, now_ms, STRIPE_TOLERANCE_MS) {
        return Err(AuthFailure::TimestampOutsideTolerance { header: STRIPE_HEADER });
    }
    let expected = HmacAlgorithm::Sha256
        .mac(secret.as_bytes(), &[signature.timestamp_text, b".", body])
        .ok_or(AuthFailure::InvalidConfiguration)?;
    // Every candidate is compared, so the time does not tell which one matched.
    let matched = signature
        .signatures
        .iter()
        .fold(false, |matched, candidate| matched | constant_time_equal(candidate, &expected));
    if matched {
        Ok(())
    } else {
        Err(AuthFailure::SignatureMismatch { header: STRIPE_HEADER.to_string() })
    }
}

/// Hex digits of either case to bytes; None for an odd length or any other character.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    fn digit(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A header lookup over owned pairs, the way the HTTP layer will hand them over.
    fn lookup<'pairs>(pairs: &'pairs [(String, Vec<u8>)]) -> impl Fn(&str) -> Option<&'pairs [u8]> + 'pairs {
        move |name| pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_slice())
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect()
    }

    fn check(auth: &IngestAuth, pairs: &[(&str, &str)], body: &[u8], now_ms: u64) -> Result<(), AuthFailure> {
        let owned = headers(pairs);
        let outcome = auth.verify(&lookup(&owned), body, now_ms);
        outcome
    }

    fn parsed(value: Value) -> IngestAuth {
        IngestAuth::parse(&value).unwrap()
    }

    // GitHub's published test values ("Validating webhook deliveries"): secret "It's a Secret
    // to Everybody", payload "Hello, World!".
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE_256: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn github() -> IngestAuth {
        parsed(json!({"type": "hmac", "header": "X-Hub-Signature-256", "algorithm": "sha256", "encoding": "hex",
            "prefix": "sha256=", "secret": GITHUB_SECRET}))
    }

    // Interoperability with GitHub depends on matching its published vector byte for byte,
    // including the configured header name arriving in any case.
    #[test]
    fn github_published_test_vector_verifies() {
        let auth = github();
        assert_eq!(auth.header_names(), vec!["x-hub-signature-256".to_string()]);
        assert_eq!(check(&auth, &[("x-hub-signature-256", GITHUB_SIGNATURE_256)], GITHUB_BODY, 0), Ok(()));
        let upper_case = format!("sha256={}", GITHUB_SIGNATURE_256["sha256=".len()..].to_ascii_uppercase());
        assert_eq!(
            check(&auth, &[("x-hub-signature-256", &upper_case)], GITHUB_BODY, 0),
            Ok(()),
            "hex is case-insensitive"
        );
        assert_eq!(
            check(&auth, &[("x-hub-signature-256", &format!(" {GITHUB_SIGNATURE_256} "))], GITHUB_BODY, 0),
            Ok(())
        );
    }

    // Every near miss of a GitHub signature must be refused, with a reason fit for a log.
    #[test]
    fn hmac_refuses_wrong_secret_tampered_body_and_malformed_headers() {
        let auth = github();
        let header = "x-hub-signature-256";
        let mismatch = Err(AuthFailure::SignatureMismatch { header: header.into() });
        let wrong_secret = parsed(json!({"type": "hmac", "header": header, "algorithm": "sha256", "encoding": "hex",
            "prefix": "sha256=", "secret": "It's a Secret to Everybody!"}));
        assert_eq!(check(&wrong_secret, &[(header, GITHUB_SIGNATURE_256)], GITHUB_BODY, 0), mismatch);
        assert_eq!(check(&auth, &[(header, GITHUB_SIGNATURE_256)], b"Hello, World?", 0), mismatch);
        assert_eq!(check(&auth, &[(header, GITHUB_SIGNATURE_256)], b"Hello, World! ", 0), mismatch);
        assert_eq!(check(&auth, &[], GITHUB_BODY, 0), Err(AuthFailure::MissingHeader { header: header.into() }));
        assert_eq!(
            check(&auth, &[(header, "  ")], GITHUB_BODY, 0),
            Err(AuthFailure::MissingHeader { header: header.into() })
        );
        let without_prefix = &GITHUB_SIGNATURE_256["sha256=".len()..];
        assert!(matches!(
            check(&auth, &[(header, without_prefix)], GITHUB_BODY, 0),
            Err(AuthFailure::MalformedHeader { .. })
        ));
        let sha1_prefix = format!("sha1={without_prefix}");
        assert!(matches!(
            check(&auth, &[(header, &sha1_prefix)], GITHUB_BODY, 0),
            Err(AuthFailure::MalformedHeader { .. })
        ));
        let not_hex = format!("sha256={}zz", &without_prefix[2..]);
        assert!(matches!(
            check(&auth, &[(header, &not_hex)], GITHUB_BODY, 0),
            Err(AuthFailure::MalformedHeader { .. })
        ));
        let truncated = &GITHUB_SIGNATURE_256[..GITHUB_SIGNATURE_256.len() - 2];
        assert_eq!(check(&auth, &[(header, truncated)], GITHUB_BODY, 0), mismatch);
        let overlong = format!("{GITHUB_SIGNATURE_256}{}", "0".repeat(SIGNATURE_HEADER_BYTES_MAX));
        assert!(matches!(
            check(&auth, &[(header, &overlong)], GITHUB_BODY, 0),
            Err(AuthFailure::MalformedHeader { .. })
        ));
        // Another header of the same family does not stand in for the configured one.
        assert!(matches!(
            check(&auth, &[("x-hub-signature", GITHUB_SIGNATURE_256)], GITHUB_BODY, 0),
            Err(AuthFailure::MissingHeader { .. })
        ));
    }

    // Shopify signs the raw body with HMAC-SHA256 in base64 and no prefix. Shopify publishes no
    // fixed vector; this one was computed independently with
    // `openssl dgst -sha256 -hmac hush -binary | base64`.
    #[test]
    fn shopify_base64_signature_verifies() {
        let auth = parsed(json!({"type": "hmac", "header": "X-Shopify-Hmac-Sha256", "algorithm": "sha256",
            "encoding": "base64", "secret": "hush"}));
        let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
        let signature = "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8=";
        assert_eq!(check(&auth, &[("x-shopify-hmac-sha256", signature)], body, 0), Ok(()));
        assert_eq!(
            check(&auth, &[("x-shopify-hmac-sha256", signature)], &body[1..], 0),
            Err(AuthFailure::SignatureMismatch { header: "x-shopify-hmac-sha256".into() })
        );
        // The hex of the same MAC is not accepted where base64 is configured.
        let as_hex: String = STANDARD.decode(signature).unwrap().iter().map(|byte| format!("{byte:02x}")).collect();
        assert!(check(&auth, &[("x-shopify-hmac-sha256", &as_hex)], body, 0).is_err());
    }

    // SHA-1 (GitHub's older X-Hub-Signature) and SHA-512 in both encodings, over GitHub's test
    // payload; expected values computed independently with `openssl dgst -sha1|-sha512 -hmac`.
    #[test]
    fn sha1_and_sha512_variants_verify() {
        let configure = |algorithm: &str, encoding: &str, prefix: Option<&str>| {
            let mut value = json!({"type": "hmac", "header": "x-signature", "algorithm": algorithm,
                "encoding": encoding, "secret": GITHUB_SECRET});
            if let Some(prefix) = prefix {
                value["prefix"] = prefix.into();
            }
            parsed(value)
        };
        let sha1 = configure("sha1", "hex", Some("sha1="));
        assert_eq!(
            check(&sha1, &[("x-signature", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59")], GITHUB_BODY, 0),
            Ok(())
        );
        let sha512_hex = "11ed355a617e98134e842012a7944ccf59c10256cb182357bd7e3a42013ff07c\
                          376f8c14cf5cc1923da20b51d64256b2fb8ebbf100aa67a61326f61fea8111bc";
        let sha512 = configure("sha512", "hex", None);
        assert_eq!(check(&sha512, &[("x-signature", sha512_hex)], GITHUB_BODY, 0), Ok(()));
        let sha512_base64 = "Ee01WmF+mBNOhCASp5RMz1nBAlbLGCNXvX46QgE/8Hw3b4wUz1zBkj2iC1HWQlay+4678QCqZ6YTJvYf6oERvA==";
        let sha512_encoded = configure("sha512", "base64", Some("v1="));
        assert_eq!(check(&sha512_encoded, &[("x-signature", &format!("v1={sha512_base64}"))], GITHUB_BODY, 0), Ok(()));
        // A SHA-256 signature under a SHA-512 configuration is refused.
        assert!(check(&sha512, &[("x-signature", &GITHUB_SIGNATURE_256[7..])], GITHUB_BODY, 0).is_err());
    }

    const STRIPE_SECRET: &str = "whsec_test_secret";
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;
    const STRIPE_TIMESTAMP_S: u64 = 1_492_774_577;
    const STRIPE_NOW_MS: u64 = STRIPE_TIMESTAMP_S * 1000;

    /// Stripe's v1 signature computed with the hmac crate directly, as Stripe documents it:
    /// hex(HMAC-SHA256(secret as bytes, "{t}.{body}")).
    fn stripe_v1(secret: &str, timestamp_s: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp_s}.").as_bytes());
        mac.update(body);
        mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn stripe() -> IngestAuth {
        parsed(json!({"type": "stripe", "secret": STRIPE_SECRET}))
    }

    // Stripe publishes no fixed vector. The independent computation must agree with one made by
    // `openssl dgst -sha256 -hmac whsec_test_secret` over "1492774577.{body}", and verify.
    #[test]
    fn stripe_signature_verifies() {
        let signature = stripe_v1(STRIPE_SECRET, STRIPE_TIMESTAMP_S, STRIPE_BODY);
        assert_eq!(signature, "691252e266ce41cb94d709c84e9580d4172b117a510bbc81723f657d2cd5d215");
        let header = format!(
            "t={STRIPE_TIMESTAMP_S},v1={signature},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
        );
        assert_eq!(check(&stripe(), &[("stripe-signature", &header)], STRIPE_BODY, STRIPE_NOW_MS), Ok(()));
        assert_eq!(stripe().header_names(), vec!["stripe-signature".to_string()]);
    }

    // The refusals Stripe's documentation asks for: a wrong secret, a changed body, a replay
    // outside 300 s either way, no header, a header that does not parse.
    #[test]
    fn stripe_refuses_wrong_secret_tampering_stale_timestamps_and_bad_headers() {
        let auth = stripe();
        let mismatch = Err(AuthFailure::SignatureMismatch { header: "stripe-signature".into() });
        let signed = |secret: &str, timestamp_s: u64| {
            format!("t={timestamp_s},v1={}", stripe_v1(secret, timestamp_s, STRIPE_BODY))
        };
        let header = signed(STRIPE_SECRET, STRIPE_TIMESTAMP_S);
        let verify =
            |header: &str, body: &[u8], now_ms: u64| check(&auth, &[("stripe-signature", header)], body, now_ms);

        assert_eq!(verify(&signed("whsec_other_secret", STRIPE_TIMESTAMP_S), STRIPE_BODY, STRIPE_NOW_MS), mismatch);
        assert_eq!(verify(&header, br#"{"id":"evt_test","object":"event "}"#, STRIPE_NOW_MS), mismatch);

        let outside = Err(AuthFailure::TimestampOutsideTolerance { header: "stripe-signature" });
        assert_eq!(verify(&header, STRIPE_BODY, STRIPE_NOW_MS + 301_000), outside, "301 s old");
        assert_eq!(verify(&header, STRIPE_BODY, STRIPE_NOW_MS - 301_000), outside, "301 s ahead");
        assert_eq!(verify(&header, STRIPE_BODY, STRIPE_NOW_MS + 300_000), Ok(()), "300 s old is within");
        assert_eq!(verify(&header, STRIPE_BODY, STRIPE_NOW_MS - 300_000), Ok(()), "300 s ahead is within");
        // A timestamp moved into the window without re-signing breaks the signature.
        let moved = header.replace(&STRIPE_TIMESTAMP_S.to_string(), &(STRIPE_TIMESTAMP_S + 1).to_string());
        assert_eq!(verify(&moved, STRIPE_BODY, STRIPE_NOW_MS), mismatch);

        assert_eq!(
            check(&auth, &[("x-stripe-signature", &header)], STRIPE_BODY, STRIPE_NOW_MS),
            Err(AuthFailure::MissingHeader { header: "stripe-signature".into() })
        );
        let v1 = stripe_v1(STRIPE_SECRET, STRIPE_TIMESTAMP_S, STRIPE_BODY);
        for malformed in [
            format!("v1={v1}"),
            format!("t={STRIPE_TIMESTAMP_S}"),
            format!("t={STRIPE_TIMESTAMP_S},v0={v1}"),
            format!("t={STRIPE_TIMESTAMP_S},t={STRIPE_TIMESTAMP_S},v1={v1}"),
            format!("t=+{STRIPE_TIMESTAMP_S},v1={v1}"),
            format!("t=0{STRIPE_TIMESTAMP_S},v1={v1}"),
            format!("t=-1,v1={v1}"),
            format!("t={STRIPE_TIMESTAMP_S};v1={v1}"),
            format!("t={STRIPE_TIMESTAMP_S},v1={v1},"),
            format!(
                "t={STRIPE_TIMESTAMP_S},{}",
                vec![format!("v1={v1}"); limits::SIGNATURES_PER_HEADER_MAX + 1].join(",")
            ),
            "garbage".to_string(),
        ] {
            assert!(
                matches!(verify(&malformed, STRIPE_BODY, STRIPE_NOW_MS), Err(AuthFailure::MalformedHeader { .. })),
                "{malformed}"
            );
        }
    }

    // While a secret is rolled Stripe sends one v1 per active secret; one match is enough, and
    // a v1 that is not hex is skipped rather than failing the request.
    #[test]
    fn stripe_accepts_any_matching_v1_among_several() {
        let v1 = stripe_v1(STRIPE_SECRET, STRIPE_TIMESTAMP_S, STRIPE_BODY);
        let old = stripe_v1("whsec_old_secret", STRIPE_TIMESTAMP_S, STRIPE_BODY);
        let header = format!("t={STRIPE_TIMESTAMP_S},v1={old},v1=not-hex,v1={},v0={v1}", v1.to_ascii_uppercase());
        assert_eq!(check(&stripe(), &[("stripe-signature", &header)], STRIPE_BODY, STRIPE_NOW_MS), Ok(()));
        let most = format!(
            "t={STRIPE_TIMESTAMP_S},{},v1={v1}",
            vec![format!("v1={old}"); limits::SIGNATURES_PER_HEADER_MAX - 1].join(",")
        );
        assert_eq!(check(&stripe(), &[("stripe-signature", &most)], STRIPE_BODY, STRIPE_NOW_MS), Ok(()));
        // A matching v0 is never enough: only v1 counts.
        let only_v0 = format!("t={STRIPE_TIMESTAMP_S},v1={old},v0={v1}");
        assert!(check(&stripe(), &[("stripe-signature", &only_v0)], STRIPE_BODY, STRIPE_NOW_MS).is_err());
    }

    // The Standard Webhooks specification's test vector, through the `ingest_auth` form of
    // what `ingest_secret` does.
    #[test]
    fn standard_webhooks_delegates_to_the_signature_module() {
        let auth = parsed(json!({"type": "standard_webhooks", "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}));
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let good = [
            ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
            ("webhook-timestamp", "1649367553"),
            ("webhook-signature", "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="),
        ];
        let now_ms = 1_649_367_553_000;
        assert_eq!(check(&auth, &good, body, now_ms), Ok(()));
        assert_eq!(auth.header_names(), vec!["webhook-id", "webhook-timestamp", "webhook-signature"]);
        assert_eq!(
            check(&auth, &good, b"{}", now_ms),
            Err(AuthFailure::SignatureMismatch { header: "webhook-signature".into() })
        );
        assert_eq!(
            check(&auth, &good, body, now_ms + limits::SIGNATURE_TOLERANCE_MS + 1000),
            Err(AuthFailure::TimestampOutsideTolerance { header: "webhook-timestamp" })
        );
        assert_eq!(
            check(&auth, &good[1..], body, now_ms),
            Err(AuthFailure::MissingHeader { header: "webhook-id".into() })
        );
        let bad_timestamp = [good[0], ("webhook-timestamp", "+1649367553"), good[2]];
        assert!(matches!(check(&auth, &bad_timestamp, body, now_ms), Err(AuthFailure::MalformedHeader { .. })));
    }

    // `key` is checked by the caller and `none` is open: neither needs a header.
    #[test]
    fn key_and_none_pass_verification_without_headers() {
        for auth in [parsed(json!({"type": "key"})), parsed(json!({"type": "none"}))] {
            assert_eq!(check(&auth, &[], b"anything", 0), Ok(()));
            assert!(auth.header_names().is_empty());
        }
    }

    // Bad configuration must be refused when it is set, not discovered on the first request.
    #[test]
    fn parse_refuses_invalid_configurations() {
        let hmac = |changes: Value| {
            let mut value = json!({"type": "hmac", "header": "x-signature", "algorithm": "sha256",
                "encoding": "hex", "secret": "s"});
            for (key, change) in changes.as_object().unwrap() {
                value[key] = change.clone();
            }
            value
        };
        let long_secret = "s".repeat(SECRET_BYTES_MAX + 1);
        let cases = [
            ("not an object", json!("key")),
            ("no type", json!({})),
            ("unknown type", json!({"type": "github"})),
            ("type not a string", json!({"type": 1})),
            ("field of another type", json!({"type": "key", "secret": "s"})),
            ("standard_webhooks without secret", json!({"type": "standard_webhooks"})),
            ("standard_webhooks secret not whsec", json!({"type": "standard_webhooks", "secret": "abc"})),
            ("standard_webhooks key too short", json!({"type": "standard_webhooks", "secret": "whsec_AAAA"})),
            ("stripe without secret", json!({"type": "stripe"})),
            ("stripe empty secret", json!({"type": "stripe", "secret": ""})),
            ("stripe secret too long", json!({"type": "stripe", "secret": long_secret})),
            ("stripe secret not a string", json!({"type": "stripe", "secret": 7})),
            ("stripe misspelt field", json!({"type": "stripe", "secret": "s", "tolerance": 10})),
            ("hmac without header", json!({"type": "hmac", "algorithm": "sha256", "encoding": "hex", "secret": "s"})),
            ("hmac empty header", hmac(json!({"header": ""}))),
            ("hmac header with a space", hmac(json!({"header": "x signature"}))),
            ("hmac header with a colon", hmac(json!({"header": "x-signature:"}))),
            ("hmac header not ASCII", hmac(json!({"header": "x-sïgnature"}))),
            ("hmac header too long", hmac(json!({"header": "x".repeat(HEADER_NAME_BYTES_MAX + 1)}))),
            ("hmac unknown algorithm", hmac(json!({"algorithm": "md5"}))),
            ("hmac algorithm in capitals", hmac(json!({"algorithm": "SHA256"}))),
            ("hmac unknown encoding", hmac(json!({"encoding": "base32"}))),
            ("hmac empty secret", hmac(json!({"secret": ""}))),
            ("hmac secret too long", hmac(json!({"secret": long_secret}))),
            ("hmac empty prefix", hmac(json!({"prefix": ""}))),
            ("hmac prefix too long", hmac(json!({"prefix": "p".repeat(PREFIX_BYTES_MAX + 1)}))),
            ("hmac prefix ending in a space", hmac(json!({"prefix": "sha256= "}))),
            ("hmac prefix with a control character", hmac(json!({"prefix": "sha\t256="}))),
            ("hmac prefix not a string", hmac(json!({"prefix": 1}))),
            ("hmac misspelt field", hmac(json!({"prefx": "sha256="}))),
        ];
        for (case, value) in cases {
            let error = IngestAuth::parse(&value).expect_err(case);
            assert!(error.contains("ingest_auth"), "{case}: {error}");
            assert!(!error.contains(&long_secret), "{case}: the error must not echo a secret");
        }
        let longest = hmac(json!({"header": "x".repeat(HEADER_NAME_BYTES_MAX), "secret": "s".repeat(SECRET_BYTES_MAX),
            "prefix": "p".repeat(PREFIX_BYTES_MAX)}));
        assert!(IngestAuth::parse(&longest).is_ok(), "every bound is inclusive");
        assert_eq!(
            IngestAuth::parse(&hmac(json!({"prefix": null}))).map(|auth| auth.to_json(true).get("prefix").cloned()),
            Ok(None)
        );
    }

    // What `to_json` shows must read back as the same configuration, or a GET followed by a PUT
    // would change it; without secrets the view must not parse at all.
    #[test]
    fn to_json_round_trips_through_parse_and_hides_secrets_on_request() {
        let configurations = [
            json!({"type": "key"}),
            json!({"type": "none"}),
            json!({"type": "standard_webhooks", "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}),
            json!({"type": "stripe", "secret": STRIPE_SECRET}),
            json!({"type": "hmac", "header": "x-hub-signature-256", "algorithm": "sha256", "encoding": "hex",
                "prefix": "sha256=", "secret": GITHUB_SECRET}),
            json!({"type": "hmac", "header": "x-shopify-hmac-sha256", "algorithm": "sha512", "encoding": "base64",
                "secret": "hush"}),
            json!({"type": "hmac", "header": "x-hub-signature", "algorithm": "sha1", "encoding": "hex", "secret": "s"}),
        ];
        for configuration in configurations {
            let auth = parsed(configuration.clone());
            assert_eq!(auth.to_json(true), configuration, "the view is the configuration as given");
            assert_eq!(parsed(auth.to_json(true)), auth);
            let hidden = auth.to_json(false);
            assert!(hidden.get("secret").is_none(), "{hidden}");
            assert_eq!(hidden["type"], configuration["type"]);
            assert_eq!(IngestAuth::parse(&hidden).is_ok(), configuration.get("secret").is_none());
        }
        let mixed_case = parsed(json!({"type": "hmac", "header": "X-Hub-Signature-256", "algorithm": "sha256",
            "encoding": "hex", "secret": "s"}));
        assert_eq!(mixed_case.to_json(false)["header"], "x-hub-signature-256");
    }

    // Configuration goes into the log as rkyv and must come back unchanged.
    #[test]
    fn configurations_survive_the_log_encoding() {
        for auth in
            [IngestAuth::Key, IngestAuth::None, github(), stripe(), IngestAuth::StandardWebhooks { secret: "s".into() }]
        {
            let bytes = kapsel_wal::codec::encode(&auth).unwrap();
            assert_eq!(kapsel_wal::codec::decode::<IngestAuth>(&bytes).unwrap(), auth);
        }
    }

    // Secrets must never reach a log through `{:?}` or a failure's text.
    #[test]
    fn debug_and_failures_never_show_secrets() {
        for auth in [
            github(),
            stripe(),
            parsed(json!({"type": "standard_webhooks", "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"})),
        ] {
            let shown = format!("{auth:?}");
            assert!(!shown.contains("Secret to Everybody") && !shown.contains("whsec_"), "{shown}");
        }
        let failure = check(&github(), &[("x-hub-signature-256", "sha256=00")], GITHUB_BODY, 0).unwrap_err();
        assert_eq!(failure.to_string(), "no signature in header `x-hub-signature-256` matches");
    }

    /// Header values close to each scheme's format, so that the parsers' deeper paths run too.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop::sample::select(vec![
            "t=",
            "v1=",
            "v0=",
            "sha256=",
            "1492774577",
            "0",
            ",",
            "=",
            " ",
            "v1,",
            "ab",
            "AB",
            "zz",
            "+/",
            "==",
            "691252e266ce41cb94d709c84e9580d4172b117a510bbc81723f657d2cd5d215",
            "\u{00e9}",
        ]);
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(fragment, 0..24).prop_map(|fragments| fragments.concat().into_bytes()),
        ]
    }

    proptest! {
        // Signature headers come from anyone who can reach the port: no value may panic a
        // verifier, and none but a correct signature may pass.
        #[test]
        fn arbitrary_header_bytes_never_panic(
            values in prop::collection::vec(header_value(), 5),
            body in prop::collection::vec(any::<u8>(), 0..64),
            now_ms in any::<u64>(),
        ) {
            let names = ["stripe-signature", "x-hub-signature-256", "webhook-id", "webhook-timestamp", "webhook-signature"];
            let pairs: Vec<(String, Vec<u8>)> = names.iter().map(|name| name.to_string()).zip(values).collect();
            let base64 = parsed(json!({"type": "hmac", "header": "x-hub-signature-256", "algorithm": "sha512",
                "encoding": "base64", "secret": "s"}));
            let standard = parsed(json!({"type": "standard_webhooks", "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}));
            for auth in [github(), base64, stripe(), standard] {
                let outcome = auth.verify(&lookup(&pairs), &body, now_ms);
                prop_assert!(outcome.is_err(), "{auth:?} accepted an unsigned request");
            }
        }
    }
}
