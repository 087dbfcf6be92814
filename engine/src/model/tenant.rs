//! Tenants and their API keys: what a tenant is (its bounds), what a key may do (its scopes),
//! how a key is made, stored and recognised. Plain data and pure functions.
//!
//! A key is `ksk_` followed by 43 base64url characters (32 random bytes). It is shown once, at
//! creation; Kapsel keeps only its SHA-256. A slow password hash buys nothing here: the key is
//! 256 random bits, so its hash cannot be reversed by guessing, and a fast hash keeps checking a
//! key on every request cheap. A presented key is recognised by looking its hash up, then the
//! stored hash is compared with the presented one in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::clock::rfc3339;
use crate::limits;
use crate::model::ids::EventId;

/// The tenant every endpoint belongs to unless it names another; it always exists.
pub const DEFAULT_TENANT: &str = "default";

/// The prefix of every key.
pub const KEY_PREFIX: &str = "ksk_";

/// Random bytes in a key.
pub const KEY_RANDOM_BYTES: usize = 32;

/// What a key may do: `ingest` (ingest and publish), `read` (GETs), `write` (changes, redrives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Ingest and publish.
    Ingest,
    /// Reads.
    Read,
    /// Changes and redrives.
    Write,
}

impl Scope {
    /// Every scope, in the order they are shown.
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Write];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Ingest => 1,
            Self::Read => 2,
            Self::Write => 4,
        }
    }
}

/// A set of scopes, in one byte (as records store it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(pub u8);

impl Scopes {
    /// Whether the set holds `scope`.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The names, in [`Scope::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL.iter().filter(|scope| self.has(**scope)).map(|scope| scope.as_str()).collect()
    }

    /// Parses a non-empty list of scope names (repeats allowed, unknown names refused).
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Err("`scopes` must list at least one of ingest, read, write".into());
        }
        let mut scopes = 0;
        for name in names {
            let scope = Scope::ALL
                .iter()
                .find(|scope| scope.as_str() == name)
                .ok_or_else(|| format!("unknown scope {name:?}: the scopes are ingest, read, write"))?;
            scopes |= scope.bit();
        }
        Ok(Self(scopes))
    }
}

/// A tenant: a name and its own bounds.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Tenant {
    /// Its id.
    pub id: String,
    /// A display name.
    pub name: Option<String>,
    /// Ingest (and publish) requests per second to all its endpoints together.
    pub rate_limit_per_s: Option<u32>,
    /// Endpoints it may have.
    pub endpoints_max: Option<u32>,
    /// Events of its endpoints waiting for delivery, at most.
    pub events_waiting_max: Option<u64>,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
}

/// The body of `PUT /admin/tenants/{tenant_id}`. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct TenantInput {
    name: Option<String>,
    rate_limit_per_s: Option<u32>,
    endpoints_max: Option<u32>,
    events_waiting_max: Option<u64>,
}

impl TenantInput {
    /// Parses and checks the JSON body (an empty body is `{}`).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let input: Self = crate::model::whole_number::object_body(body, &[])?;
        if input.name.as_ref().is_some_and(|name| name.len() > limits::TENANT_NAME_BYTES_MAX) {
            return Err(format!("`name` is at most {} bytes", limits::TENANT_NAME_BYTES_MAX));
        }
        if input.rate_limit_per_s.is_some_and(|rate| !(1..=1_000_000).contains(&rate)) {
            return Err("`rate_limit_per_s` must be 1 to 1000000".into());
        }
        if input.endpoints_max.is_some_and(|count| count == 0) {
            return Err("`endpoints_max` must be at least 1".into());
        }
        if input.events_waiting_max.is_some_and(|count| count == 0) {
            return Err("`events_waiting_max` must be at least 1".into());
        }
        Ok(input)
    }

    /// The tenant to store: a create (`previous` None) or a replacement.
    pub fn into_tenant(self, id: &str, previous: Option<&Tenant>, now_ms: u64) -> Tenant {
        Tenant {
            id: id.to_string(),
            name: self.name,
            rate_limit_per_s: self.rate_limit_per_s,
            endpoints_max: self.endpoints_max,
            events_waiting_max: self.events_waiting_max,
            created_at_ms: previous.map_or(now_ms, |previous| previous.created_at_ms),
            updated_at_ms: now_ms,
        }
    }
}

impl Tenant {
    /// The tenant that always exists, as it is before anyone changed it.
    pub fn default_tenant() -> Self {
        Self {
            id: DEFAULT_TENANT.into(),
            name: None,
            rate_limit_per_s: None,
            endpoints_max: None,
            events_waiting_max: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// The admin JSON, with the live count of its endpoints.
    pub fn to_json(&self, endpoints: usize) -> Value {
        json!({
            "tenant_id": self.id,
            "name": self.name,
            "rate_limit_per_s": self.rate_limit_per_s,
            "endpoints_max": self.endpoints_max,
            "events_waiting_max": self.events_waiting_max,
            "endpoints": endpoints,
            "created_at": rfc3339(self.created_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
        })
    }
}

/// Checks a tenant id: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::TENANT_ID_BYTES_MAX
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

/// A key as stored: never the key itself, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoredKey {
    /// `key_…`.
    pub key_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// [`Scopes`] bits.
    pub scopes: u8,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Creation time.
    pub created_at_ms: u64,
}

impl StoredKey {
    /// The admin JSON (without the key, which is shown once, at creation); `last_used_ms` is 0
    /// when it was never used.
    pub fn to_json(&self, last_used_ms: u64) -> Value {
        json!({
            "key_id": self.key_id,
            "tenant_id": self.tenant_id,
            "scopes": Scopes(self.scopes).names(),
            "created_at": rfc3339(self.created_at_ms),
            "last_used_at": (last_used_ms > 0).then(|| rfc3339(last_used_ms)),
        })
    }
}

/// A new key: its id and the key to show once.
pub struct NewKey {
    /// `key_…`.
    pub key_id: String,
    /// `ksk_…`.
    pub key: String,
}

/// Makes a new key from the system's randomness.
pub fn generate_key() -> Result<NewKey, getrandom::Error> {
    let mut secret = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut secret)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)?;
    // The id is random too: it names the key in answers and logs and says nothing of it.
    let id = EventId(u128::from_le_bytes(id) >> 2).to_string();
    Ok(NewKey { key_id: format!("key_{}", &id[4..]), key: format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)) })
}

/// The hash a key is stored and looked up by.
pub fn key_hash(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Whether a bearer token has the shape of a key (so it is looked up as one).
pub fn looks_like_key(token: &[u8]) -> bool {
    token.starts_with(KEY_PREFIX.as_bytes()) && token.len() <= limits::KEY_BYTES_MAX
}

/// Checks a key id from a path: `key_` and 26 Crockford characters.
pub fn valid_key_id(id: &str) -> bool {
    id.strip_prefix("key_").is_some_and(|rest| EventId::parse(&format!("evt_{rest}")).is_some())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Keys are high-entropy, distinct, recognisable and stored only as a hash.
    #[test]
    fn keys_are_random_and_hashed() {
        let first = generate_key().unwrap();
        let second = generate_key().unwrap();
        assert_ne!(first.key, second.key);
        assert_ne!(first.key_id, second.key_id);
        assert!(first.key.starts_with("ksk_") && first.key.len() == 4 + 43, "{}", first.key);
        assert!(looks_like_key(first.key.as_bytes()));
        assert!(!looks_like_key(b"test-admin-token"));
        assert!(valid_key_id(&first.key_id), "{}", first.key_id);
        assert!(!valid_key_id("key_nope") && !valid_key_id(&first.key_id[1..]));
        assert_eq!(key_hash(first.key.as_bytes()), key_hash(first.key.as_bytes()));
        assert_ne!(key_hash(first.key.as_bytes()), key_hash(second.key.as_bytes()));
    }

    // Scopes are the three of the contract; anything else, or none, is refused.
    #[test]
    fn scopes_parse_as_documented() {
        let scopes = Scopes::parse(&["read".into(), "ingest".into(), "read".into()]).unwrap();
        assert!(scopes.has(Scope::Read) && scopes.has(Scope::Ingest) && !scopes.has(Scope::Write));
        assert_eq!(scopes.names(), ["ingest", "read"]);
        assert!(Scopes::parse(&[]).is_err());
        assert!(Scopes::parse(&["admin".into()]).is_err());
    }

    // Tenant bodies are checked, and a replacement keeps the creation time.
    #[test]
    fn tenant_bodies_are_checked() {
        let tenant = TenantInput::parse(br#"{"name":"Acme","rate_limit_per_s":50,"endpoints_max":10}"#)
            .unwrap()
            .into_tenant("acme", None, 5);
        assert_eq!((tenant.rate_limit_per_s, tenant.endpoints_max, tenant.created_at_ms), (Some(50), Some(10), 5));
        let replaced = TenantInput::parse(b"").unwrap().into_tenant("acme", Some(&tenant), 9);
        assert_eq!((replaced.created_at_ms, replaced.updated_at_ms, replaced.name), (5, 9, None));
        for body in [&br#"{"rate_limit_per_s":0}"#[..], br#"{"endpoints_max":0}"#, b"nope", br#"{"name":7}"#] {
            assert!(TenantInput::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        assert!(valid_tenant_id("acme-eu_1") && !valid_tenant_id("") && !valid_tenant_id("a.b"));
        assert_eq!(tenant.to_json(3)["endpoints"], 3);
    }
}
