//! Endpoint configuration: parsed and validated from admin JSON, stored in the owning shard's
//! log (rkyv), rendered back as JSON. Defaults are documented in the README.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::limits;
use crate::model::ingest_auth::IngestAuth;
use crate::model::signature::Secret;

/// Default per-attempt request timeout.
pub const TIMEOUT_MS_DEFAULT: u32 = 15_000;
/// How long a replaced signing secret keeps signing alongside the new one.
pub const SECRET_ROTATION_MS: u64 = 24 * 60 * 60 * 1000;
/// Default concurrent attempts per endpoint.
pub const MAX_IN_FLIGHT_DEFAULT: u32 = 16;

/// Retry policy: delay_n = min(max_delay, initial_delay × multiplier^(n−1)) ± jitter.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay_ms: u64,
    /// Growth factor between delays.
    pub multiplier: f64,
    /// Cap on any delay.
    pub max_delay_ms: u64,
    /// Random spread as a fraction of the delay (0.2 = ±20%).
    pub jitter: f64,
    /// An event older than this is not retried again.
    pub max_age_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_delay_ms: 5_000,
            multiplier: 4.0,
            max_delay_ms: 10 * 60 * 60 * 1000,
            jitter: 0.2,
            max_age_ms: 3 * 24 * 60 * 60 * 1000,
        }
    }
}

/// Circuit breaker thresholds.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Failure fraction over the window that opens it.
    pub failure_rate: f64,
    /// Attempts in the failure-rate window.
    pub window: u32,
    /// First open period.
    pub cooldown_ms: u64,
    /// Longest open period (the period doubles while probes fail).
    pub cooldown_max_ms: u64,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self { consecutive_failures: 5, failure_rate: 0.5, window: 100, cooldown_ms: 30_000, cooldown_max_ms: 600_000 }
    }
}

/// An endpoint as stored in the log.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Endpoint {
    /// Endpoint id.
    pub id: String,
    /// Destination URL.
    pub url: String,
    /// Signing secret for deliveries (`whsec_…`).
    pub secret: String,
    /// The secret replaced last, still signing alongside the new one until the time given.
    pub previous_secret: Option<(String, u64)>,
    /// Secret inbound webhooks must be signed with, if any.
    pub ingest_secret: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Per-attempt timeout.
    pub timeout_ms: u32,
    /// Concurrent attempts.
    pub max_in_flight: u32,
    /// Ingest rate limit, requests per second.
    pub rate_limit_per_s: Option<u32>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Breaker thresholds.
    pub circuit: CircuitPolicy,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
    /// Channels it subscribes to (`POST /publish/{channel}`).
    pub channels: Vec<String>,
    /// Patterns of the event types it wants from its channels; empty means every type. Direct
    /// ingest ignores them.
    pub event_types: Vec<String>,
    /// The tenant it belongs to (fixed once set).
    pub tenant: String,
    /// How ingest to it is authenticated; `None` for an endpoint made before `ingest_auth`
    /// existed, which keeps open ingest (named in a warning at start).
    pub ingest_auth: Option<IngestAuth>,
    /// The key that made this version; `None` for the operator token (the audit of changes).
    pub changed_by: Option<String>,
}

/// [`Endpoint`] as kind-1 records and snapshots before subscriptions stored it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EndpointV1 {
    id: String,
    url: String,
    secret: String,
    previous_secret: Option<(String, u64)>,
    ingest_secret: Option<String>,
    enabled: bool,
    timeout_ms: u32,
    max_in_flight: u32,
    rate_limit_per_s: Option<u32>,
    retry: RetryPolicy,
    circuit: CircuitPolicy,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl From<EndpointV1> for Endpoint {
    /// An endpoint from before subscriptions subscribes to nothing.
    fn from(old: EndpointV1) -> Self {
        Self {
            id: old.id,
            url: old.url,
            secret: old.secret,
            previous_secret: old.previous_secret,
            ingest_secret: old.ingest_secret.clone(),
            enabled: old.enabled,
            timeout_ms: old.timeout_ms,
            max_in_flight: old.max_in_flight,
            rate_limit_per_s: old.rate_limit_per_s,
            retry: old.retry,
            circuit: old.circuit,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            channels: Vec::new(),
            event_types: Vec::new(),
            tenant: crate::model::tenant::DEFAULT_TENANT.to_string(),
            // Its ingest secret, if it had one, still guards it; otherwise it stays open.
            ingest_auth: old.ingest_secret.map(|secret| IngestAuth::StandardWebhooks { secret }),
            changed_by: None,
        }
    }
}

/// The admin JSON body of `PUT /admin/endpoints/{id}` and `POST /admin/endpoints`. Unknown
/// fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointInput {
    url: Option<String>,
    secret: Option<String>,
    ingest_secret: Option<String>,
    enabled: Option<bool>,
    timeout_ms: Option<u32>,
    max_in_flight: Option<u32>,
    rate_limit_per_s: Option<u32>,
    retry: Option<RetryInput>,
    circuit: Option<CircuitInput>,
    channels: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
    tenant_id: Option<String>,
    ingest_auth: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RetryInput {
    max_attempts: Option<u32>,
    initial_delay_ms: Option<u64>,
    multiplier: Option<f64>,
    max_delay_ms: Option<u64>,
    jitter: Option<f64>,
    max_age_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CircuitInput {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    window: Option<u32>,
    cooldown_ms: Option<u64>,
    cooldown_max_ms: Option<u64>,
}

/// Why an endpoint body was refused (400 E1005).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEndpoint(pub String);

fn check(condition: bool, message: &str) -> Result<(), InvalidEndpoint> {
    if condition {
        Ok(())
    } else {
        Err(InvalidEndpoint(message.to_string()))
    }
}

impl EndpointInput {
    /// Parses the JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidEndpoint> {
        crate::model::whole_number::object_body(body, &["retry", "circuit"]).map_err(InvalidEndpoint)
    }

    /// The tenant the body names, if any.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// The body with `tenant` as its tenant when it names none (a key's endpoints are its
    /// tenant's).
    pub fn or_tenant(mut self, tenant: &str) -> Self {
        self.tenant_id.get_or_insert_with(|| tenant.to_string());
        self
    }

    /// Builds the endpoint to store: a create (`previous` None) or a replacement. A missing
    /// secret is generated on create and kept on replace. The tenant is the body's `tenant_id`,
    /// else the previous one's, else `default`; it cannot change (400 E1005).
    pub fn into_endpoint(
        mut self,
        id: &str,
        previous: Option<&Endpoint>,
        now_ms: u64,
    ) -> Result<Endpoint, InvalidEndpoint> {
        let tenant = match (self.tenant_id.take(), previous) {
            (Some(tenant), Some(previous)) if tenant != previous.tenant => {
                return Err(InvalidEndpoint(format!(
                    "`tenant_id` is fixed once set: this endpoint belongs to {}",
                    previous.tenant
                )))
            }
            (Some(tenant), _) => tenant,
            (None, Some(previous)) => previous.tenant.clone(),
            (None, None) => crate::model::tenant::DEFAULT_TENANT.to_string(),
        };
        check(crate::model::tenant::valid_tenant_id(&tenant), "`tenant_id` must be 1 to 64 of A-Z a-z 0-9 _ -")?;
        let url = self.url.ok_or_else(|| InvalidEndpoint("`url` is required".into()))?;
        validate_url(&url)?;
        let secret = match (self.secret, previous) {
            (Some(secret), _) => secret,
            (None, Some(previous)) => previous.secret.clone(),
            (None, None) => {
                Secret::generate().map_err(|error| InvalidEndpoint(format!("cannot generate a secret: {error}")))?
            }
        };
        check(Secret::parse(&secret).is_some(), "`secret` must be whsec_ followed by base64 of 24 to 64 bytes")?;
        if let Some(ingest_secret) = &self.ingest_secret {
            check(
                Secret::parse(ingest_secret).is_some(),
                "`ingest_secret` must be whsec_ followed by base64 of 24 to 64 bytes",
            )?;
        }
        let ingest_auth = match (self.ingest_auth.take(), &self.ingest_secret) {
            (Some(value), ingest_secret) => {
                let auth = IngestAuth::parse(&value).map_err(InvalidEndpoint)?;
                let agrees = match (&auth, ingest_secret) {
                    (IngestAuth::StandardWebhooks { secret }, Some(shorthand)) => secret == shorthand,
                    (_, shorthand) => shorthand.is_none(),
                };
                check(
                    agrees,
                    "`ingest_secret` is the shorthand of a standard_webhooks `ingest_auth`: give one or the other",
                )?;
                Some(auth)
            }
            (None, Some(secret)) => Some(IngestAuth::StandardWebhooks { secret: secret.clone() }),
            // A new endpoint is secure by default; a replacement keeps what it had.
            (None, None) => previous.map_or(Some(IngestAuth::Key), |previous| previous.ingest_auth.clone()),
        };
        let previous_secret = match previous {
            Some(previous) if previous.secret != secret => Some((previous.secret.clone(), now_ms + SECRET_ROTATION_MS)),
            Some(previous) => previous.previous_secret.clone().filter(|(_, until_ms)| *until_ms > now_ms),
            None => None,
        };
        let endpoint = Endpoint {
            id: id.to_string(),
            url,
            secret,
            previous_secret,
            ingest_secret: self.ingest_secret,
            enabled: self.enabled.unwrap_or(true),
            timeout_ms: self.timeout_ms.unwrap_or(TIMEOUT_MS_DEFAULT),
            max_in_flight: self.max_in_flight.unwrap_or(MAX_IN_FLIGHT_DEFAULT),
            rate_limit_per_s: self.rate_limit_per_s,
            retry: self.retry.unwrap_or_default().into_policy(),
            circuit: self.circuit.unwrap_or_default().into_policy(),
            created_at_ms: previous.map_or(now_ms, |previous| previous.created_at_ms),
            updated_at_ms: now_ms,
            channels: sorted_unique(self.channels.unwrap_or_default()),
            event_types: sorted_unique(self.event_types.unwrap_or_default()),
            tenant,
            ingest_auth,
            changed_by: None,
        };
        endpoint.validate()?;
        Ok(endpoint)
    }
}

impl RetryInput {
    fn into_policy(self) -> RetryPolicy {
        let defaults = RetryPolicy::default();
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            initial_delay_ms: self.initial_delay_ms.unwrap_or(defaults.initial_delay_ms),
            multiplier: self.multiplier.unwrap_or(defaults.multiplier),
            max_delay_ms: self.max_delay_ms.unwrap_or(defaults.max_delay_ms),
            jitter: self.jitter.unwrap_or(defaults.jitter),
            max_age_ms: self.max_age_ms.unwrap_or(defaults.max_age_ms),
        }
    }
}

impl CircuitInput {
    fn into_policy(self) -> CircuitPolicy {
        let defaults = CircuitPolicy::default();
        CircuitPolicy {
            consecutive_failures: self.consecutive_failures.unwrap_or(defaults.consecutive_failures),
            failure_rate: self.failure_rate.unwrap_or(defaults.failure_rate),
            window: self.window.unwrap_or(defaults.window),
            cooldown_ms: self.cooldown_ms.unwrap_or(defaults.cooldown_ms),
            cooldown_max_ms: self.cooldown_max_ms.unwrap_or(defaults.cooldown_max_ms),
        }
    }
}

/// The names in order, each once: the stored form (a repeated name would cost twice and mean
/// nothing more).
fn sorted_unique(mut names: Vec<String>) -> Vec<String> {
    names.sort_unstable();
    names.dedup();
    names
}

/// Checks a destination URL's shape: `http` or `https`, a host, no whitespace, bounded length.
pub fn validate_url(url: &str) -> Result<(), InvalidEndpoint> {
    check(url.len() <= limits::URL_BYTES_MAX, "`url` is too long")?;
    check(!url.bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()), "`url` contains whitespace")?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| InvalidEndpoint("`url` must start with http:// or https://".into()))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    check(!host.is_empty() && !host.starts_with(':'), "`url` has no host")?;
    Ok(())
}

impl Endpoint {
    fn validate(&self) -> Result<(), InvalidEndpoint> {
        check((1..=300_000).contains(&self.timeout_ms), "`timeout_ms` must be 1 to 300000")?;
        check((1..=1024).contains(&self.max_in_flight), "`max_in_flight` must be 1 to 1024")?;
        check(
            self.rate_limit_per_s.is_none_or(|rate| (1..=1_000_000).contains(&rate)),
            "`rate_limit_per_s` must be 1 to 1000000",
        )?;
        let retry = &self.retry;
        check((1..=100).contains(&retry.max_attempts), "`retry.max_attempts` must be 1 to 100")?;
        check((1.0..=100.0).contains(&retry.multiplier), "`retry.multiplier` must be 1 to 100")?;
        check((0.0..=1.0).contains(&retry.jitter), "`retry.jitter` must be 0 to 1")?;
        check(
            retry.initial_delay_ms <= retry.max_delay_ms,
            "`retry.initial_delay_ms` must not exceed `retry.max_delay_ms`",
        )?;
        check(retry.max_age_ms > 0, "`retry.max_age_ms` must be positive")?;
        let circuit = &self.circuit;
        check(circuit.consecutive_failures >= 1, "`circuit.consecutive_failures` must be at least 1")?;
        check(circuit.failure_rate > 0.0 && circuit.failure_rate <= 1.0, "`circuit.failure_rate` must be in (0, 1]")?;
        check((1..=1000).contains(&circuit.window), "`circuit.window` must be 1 to 1000")?;
        check(
            circuit.cooldown_ms >= 1 && circuit.cooldown_ms <= circuit.cooldown_max_ms,
            "`circuit.cooldown_ms` must be at least 1 and at most `circuit.cooldown_max_ms`",
        )?;
        check(self.channels.len() <= limits::ENDPOINT_CHANNELS_MAX, "`channels` lists more than 64 channels")?;
        check(
            self.channels.iter().all(|channel| crate::model::event_type::valid_channel(channel)),
            "`channels` entries must be 1 to 64 of a-z 0-9 _ -",
        )?;
        check(self.event_types.len() <= limits::ENDPOINT_EVENT_TYPES_MAX, "`event_types` lists more than 64 patterns")?;
        check(
            self.event_types.iter().all(|pattern| crate::model::event_type::valid_pattern(pattern)),
            "`event_types` entries must be event types (1 to 128 of A-Z a-z 0-9 . _ : -), optionally ending in *",
        )?;
        Ok(())
    }

    /// The tenant it belongs to.
    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    /// Takes the secrets out of an endpoint's JSON ([`Endpoint::to_json`]): the signing
    /// `secret`, `ingest_secret` and `ingest_auth`'s secret. For a key without `write`: reading
    /// an endpoint must not hand out what signs its deliveries or authenticates its ingest.
    pub fn hide_secrets(json: &mut Value) {
        if let Some(object) = json.as_object_mut() {
            object.remove("secret");
            object.remove("ingest_secret");
            if let Some(auth) = object.get_mut("ingest_auth").and_then(Value::as_object_mut) {
                auth.remove("secret");
            }
        }
    }

    /// The admin JSON view: configuration plus the live state the caller passes in.
    pub fn to_json(&self, live: &LiveState) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "secret": self.secret,
            "ingest_secret": self.ingest_secret,
            "enabled": self.enabled,
            "timeout_ms": self.timeout_ms,
            "max_in_flight": self.max_in_flight,
            "rate_limit_per_s": self.rate_limit_per_s,
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "initial_delay_ms": self.retry.initial_delay_ms,
                "multiplier": self.retry.multiplier,
                "max_delay_ms": self.retry.max_delay_ms,
                "jitter": self.retry.jitter,
                "max_age_ms": self.retry.max_age_ms,
            },
            "circuit": {
                "consecutive_failures": self.circuit.consecutive_failures,
                "failure_rate": self.circuit.failure_rate,
                "window": self.circuit.window,
                "cooldown_ms": self.circuit.cooldown_ms,
                "cooldown_max_ms": self.circuit.cooldown_max_ms,
            },
            "tenant_id": self.tenant,
            "ingest_auth": self.ingest_auth.as_ref().map_or_else(|| json!({"type": "none"}), |auth| auth.to_json(true)),
            "channels": self.channels,
            "event_types": self.event_types,
            "circuit_state": live.circuit_state,
            "queue_depth": live.queue_depth,
            "in_flight": live.in_flight,
            "created_at": rfc3339(self.created_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
        })
    }
}

/// Live delivery state shown with an endpoint (the delivery issue fills it in).
#[derive(Clone, Debug)]
pub struct LiveState {
    /// `closed`, `open` or `half_open`.
    pub circuit_state: &'static str,
    /// Events waiting.
    pub queue_depth: usize,
    /// Attempts in flight.
    pub in_flight: usize,
}

impl Default for LiveState {
    fn default() -> Self {
        Self { circuit_state: "closed", queue_depth: 0, in_flight: 0 }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // A minimal body gets documented defaults and a generated secret.
    #[test]
    fn minimal_body_gets_defaults() {
        let input = EndpointInput::parse(br#"{"url":"https://example.com/hook"}"#).unwrap();
        let endpoint = input.into_endpoint("ep1", None, 1000).unwrap();
        assert!(endpoint.secret.starts_with("whsec_"));
        assert_eq!(endpoint.retry, RetryPolicy::default());
        assert_eq!(endpoint.circuit, CircuitPolicy::default());
        assert!(endpoint.enabled);
        let mut json = endpoint.to_json(&LiveState::default());
        assert_eq!(json["circuit_state"], "closed");
        Endpoint::hide_secrets(&mut json);
        assert!(json.get("secret").is_none() && json.get("ingest_secret").is_none());
        assert!(!json.to_string().contains("whsec_"), "{json}");
        assert_eq!(json["retry"]["max_attempts"], 10);
    }

    // Subscriptions are stored in one order without repeats, and shown as given.
    #[test]
    fn subscriptions_are_kept() {
        let input = EndpointInput::parse(
            br#"{"url":"https://example.com/hook","channels":["orders","billing","orders"],"event_types":["order.*","invoice.paid"]}"#,
        )
        .unwrap();
        let endpoint = input.into_endpoint("ep1", None, 1000).unwrap();
        assert_eq!(endpoint.channels, ["billing", "orders"]);
        assert_eq!(endpoint.event_types, ["invoice.paid", "order.*"]);
        let json = endpoint.to_json(&LiveState::default());
        assert_eq!(json["channels"], serde_json::json!(["billing", "orders"]));
    }

    // Replacing an endpoint without a secret keeps the old one and the creation time.
    #[test]
    fn replacement_keeps_secret_and_creation_time() {
        let first =
            EndpointInput::parse(br#"{"url":"http://a.example"}"#).unwrap().into_endpoint("e", None, 1).unwrap();
        let second = EndpointInput::parse(br#"{"url":"http://b.example"}"#)
            .unwrap()
            .into_endpoint("e", Some(&first), 2)
            .unwrap();
        assert_eq!((second.secret.as_str(), second.created_at_ms, second.updated_at_ms), (first.secret.as_str(), 1, 2));
        assert_eq!(second.tenant, "default");
        let moved = EndpointInput::parse(br#"{"url":"http://b.example","tenant_id":"acme"}"#).unwrap().into_endpoint(
            "e",
            Some(&first),
            3,
        );
        assert!(moved.is_err(), "the tenant is fixed once set");
    }

    // Bad bodies are refused with a message, never accepted half-valid.
    #[test]
    fn invalid_bodies_are_refused() {
        for body in [
            &br#"{"url":"ftp://x"}"#[..],
            br#"{"url":"http://"}"#,
            br#"{}"#,
            br#"{"url":"http://x","secret":"nope"}"#,
            br#"{"url":"http://x","timeout_ms":0}"#,
            br#"{"url":"http://x","retry":{"jitter":2}}"#,
            br#"{"url":"http://x","circuit":{"failure_rate":0}}"#,
            br#"{"url":"http://x","max_in_flight":"many"}"#,
            br#"not json"#,
            br#"{"url":"http://x y"}"#,
            br#"{"url":"http://x","channels":["Orders"]}"#,
            br#"{"url":"http://x","channels":"orders"}"#,
            br#"{"url":"http://x","event_types":["order.*.x*"]}"#,
            br#"{"url":"http://x","event_types":["order created"]}"#,
        ] {
            let outcome = EndpointInput::parse(body).and_then(|input| input.into_endpoint("e", None, 0));
            assert!(outcome.is_err(), "accepted {}", String::from_utf8_lossy(body));
        }
    }
}
