//! The code checked against `docs/openapi.json`, the contract (ADR 15): every documented
//! operation is a route, every route is documented, a method the document does not list for a
//! path is 405 with the document's methods in `Allow`, who needs a token is what the document
//! says, and the document's error codes and statuses are the ones the code answers with.
//!
//! What the live server answers (bodies, statuses, headers) is checked against the same document
//! by schemathesis in `tests/it/openapi.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use kapsel_http::{Method, ParseError};
use serde_json::Value;

use crate::admin::route::{EndpointQuery, Route};
use crate::error::EngineError;
use crate::model::ids::EventId;
use crate::state::DeliveryCode;

/// The document as the server embeds and serves it.
fn document() -> Value {
    serde_json::from_slice(crate::admin::assets::OPENAPI).expect("docs/openapi.json is JSON")
}

const METHODS: [(Method, &str); 7] = [
    (Method::Get, "get"),
    (Method::Head, "head"),
    (Method::Post, "post"),
    (Method::Put, "put"),
    (Method::Delete, "delete"),
    (Method::Options, "options"),
    (Method::Patch, "patch"),
];

/// Every (method, path template) of the document, methods in upper case.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (template, item) in document["paths"].as_object().expect("paths") {
        for (_, name) in METHODS {
            if item.get(name).is_some() {
                operations.insert((name.to_ascii_uppercase(), template.clone()));
            }
        }
    }
    operations
}

/// A valid sample for each path parameter the document uses; a new parameter needs one here.
fn sample(parameter: &str) -> String {
    match parameter {
        "endpoint_id" => "orders".into(),
        "event_id" => EventId::new(1_764_000_000_000, 1, 7).to_string(),
        "tenant_id" => "acme".into(),
        "key_id" => format!("key_{}", &EventId::new(5, 0, 9).to_string()[4..]),
        "channel" => "orders".into(),
        "asset" => "app.js".into(),
        other => panic!("no sample for the path parameter {{{other}}}: add one to `sample`"),
    }
}

/// The template with every `{parameter}` replaced by its sample.
fn fill(template: &str) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("a closed parameter") + open;
        path.push_str(&rest[..open]);
        path.push_str(&sample(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    path
}

fn parse(method: Method, path: &str) -> Result<Route, EngineError> {
    Route::parse(method, path, None, || "ep_generated".into())
}

/// The operation of the document a route is. Exhaustive on purpose: a new `Route` variant does
/// not compile until it names its documented operation here (and gets an instance in
/// `one_of_each_route`).
fn documented_as(route: &Route) -> (&'static str, &'static str) {
    match route {
        Route::Health => ("GET", "/healthz"),
        Route::Ready => ("GET", "/readyz"),
        Route::Metrics => ("GET", "/metrics"),
        Route::OpenApi => ("GET", "/openapi.json"),
        Route::Ui { asset: None } => ("GET", "/ui"),
        Route::Ui { asset: Some(asset) } if asset.is_empty() => ("GET", "/ui/"),
        Route::Ui { asset: Some(_) } => ("GET", "/ui/{asset}"),
        Route::Ingest { .. } => ("POST", "/ingest/{endpoint_id}"),
        Route::Publish { .. } => ("POST", "/publish/{channel}"),
        Route::CreateEndpoint { .. } => ("POST", "/admin/endpoints"),
        Route::ListEndpoints(_) => ("GET", "/admin/endpoints"),
        Route::PutEndpoint { .. } => ("PUT", "/admin/endpoints/{endpoint_id}"),
        Route::GetEndpoint { .. } => ("GET", "/admin/endpoints/{endpoint_id}"),
        Route::DeleteEndpoint { .. } => ("DELETE", "/admin/endpoints/{endpoint_id}"),
        Route::SetEnabled { enabled: true, .. } => ("POST", "/admin/endpoints/{endpoint_id}/enable"),
        Route::SetEnabled { enabled: false, .. } => ("POST", "/admin/endpoints/{endpoint_id}/disable"),
        Route::RetryFailed { .. } => ("POST", "/admin/endpoints/{endpoint_id}/retry-failed"),
        Route::ListEvents(_) => ("GET", "/admin/events"),
        Route::GetEvent { .. } => ("GET", "/admin/events/{event_id}"),
        Route::EventPayload { .. } => ("GET", "/admin/events/{event_id}/payload"),
        Route::EventProof { .. } => ("GET", "/admin/events/{event_id}/proof"),
        Route::RetryEvent { .. } => ("POST", "/admin/events/{event_id}/retry"),
        Route::Session => ("GET", "/admin/session"),
        Route::Cluster => ("GET", "/admin/cluster"),
        Route::AuditSegments => ("GET", "/admin/audit/segments"),
        Route::AuditChanges { .. } => ("GET", "/admin/audit/changes"),
        Route::PutTenant { .. } => ("PUT", "/admin/tenants/{tenant_id}"),
        Route::GetTenant { .. } => ("GET", "/admin/tenants/{tenant_id}"),
        Route::DeleteTenant { .. } => ("DELETE", "/admin/tenants/{tenant_id}"),
        Route::CreateKey { .. } => ("POST", "/admin/tenants/{tenant_id}/keys"),
        Route::ListKeys { .. } => ("GET", "/admin/tenants/{tenant_id}/keys"),
        Route::RevokeKey { .. } => ("DELETE", "/admin/keys/{key_id}"),
    }
}

/// One instance of every route (and of each shape `documented_as` tells apart).
fn one_of_each_route() -> Vec<Route> {
    let id = || "orders".to_string();
    let event_id = EventId::new(1_764_000_000_000, 1, 7);
    let events = crate::model::query::EventQuery::parse(None).expect("the empty query");
    let endpoints = EndpointQuery { limit: 50, cursor: None, tenant_id: None, secrets: true };
    vec![
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::OpenApi,
        Route::Ui { asset: None },
        Route::Ui { asset: Some(String::new()) },
        Route::Ui { asset: Some("app.js".into()) },
        Route::Ingest { endpoint_id: id() },
        Route::Publish { channel: "orders".into(), tenant: "default".into() },
        Route::CreateEndpoint { id: id() },
        Route::ListEndpoints(endpoints),
        Route::PutEndpoint { id: id() },
        Route::GetEndpoint { id: id() },
        Route::DeleteEndpoint { id: id() },
        Route::SetEnabled { id: id(), enabled: true },
        Route::SetEnabled { id: id(), enabled: false },
        Route::RetryFailed { id: id() },
        Route::ListEvents(events),
        Route::GetEvent { event_id },
        Route::EventPayload { event_id },
        Route::EventProof { event_id },
        Route::RetryEvent { event_id, endpoint_id: None },
        Route::Session,
        Route::Cluster,
        Route::AuditSegments,
        Route::AuditChanges { limit: 100 },
        Route::PutTenant { id: "acme".into() },
        Route::GetTenant { id: "acme".into() },
        Route::DeleteTenant { id: "acme".into() },
        Route::CreateKey { tenant_id: "acme".into() },
        Route::ListKeys { tenant_id: "acme".into() },
        Route::RevokeKey { key_id: sample("key_id") },
    ]
}

// The document is the contract: an operation it promises that the router does not know would
// answer 404 or 405 to every client generated from it.
#[test]
fn every_documented_operation_is_a_route() {
    let document = document();
    let operations = documented_operations(&document);
    assert!(operations.len() >= 30, "the document lists only {} operations", operations.len());
    for (method, template) in &operations {
        let (method_value, _) = METHODS.iter().find(|(_, name)| name.eq_ignore_ascii_case(method)).expect("a method");
        let path = fill(template);
        match parse(*method_value, &path) {
            Ok(route) => assert_eq!(
                documented_as(&route),
                (method.as_str(), template.as_str()),
                "{method} {path} routes to {route:?}, which is documented as another operation"
            ),
            Err(error) => panic!("{method} {template} (as {path}) is documented but the router answers {error:?}"),
        }
    }
}

// The other way round: a route the document does not describe is an operation no client
// generated from it can call, and that schemathesis never checks.
#[test]
fn every_route_is_documented() {
    let operations = documented_operations(&document());
    let mut seen = BTreeSet::new();
    for route in one_of_each_route() {
        let (method, template) = documented_as(&route);
        assert!(
            operations.contains(&(method.to_string(), template.to_string())),
            "{route:?} is `{method} {template}`, which docs/openapi.json does not describe"
        );
        seen.insert((method.to_string(), template.to_string()));
    }
    // Every documented operation was reached from a route instance, so the two lists agree.
    assert_eq!(seen, operations, "documented operations without a route instance in one_of_each_route");
}

// RFC 9110 §15.5.6: a method a path does not take is 405 with `Allow`. The document's methods
// for a path are exactly what `Allow` lists (with HEAD wherever GET is, as the document says).
#[test]
fn undocumented_methods_are_405_with_the_documented_allow() {
    let document = document();
    for (template, item) in document["paths"].as_object().expect("paths") {
        let path = fill(template);
        let mut allowed: BTreeSet<&str> =
            METHODS.iter().filter(|(_, name)| item.get(*name).is_some()).map(|(_, name)| *name).collect();
        assert!(!allowed.contains("head"), "{template}: HEAD is stated once for every GET, not listed");
        if allowed.contains("get") {
            allowed.insert("head");
        }
        for (method, name) in METHODS {
            match parse(method, &path) {
                Ok(_) => assert!(allowed.contains(name), "{name} {template} is a route the document does not list"),
                Err(EngineError::MethodNotAllowed { allow }) => {
                    assert!(!allowed.contains(name), "{name} {template} is documented but answers 405");
                    let listed: BTreeSet<String> = allow.split(", ").map(str::to_ascii_lowercase).collect();
                    let expected: BTreeSet<String> = allowed.iter().map(|name| name.to_string()).collect();
                    assert_eq!(listed, expected, "Allow of {template}");
                }
                Err(error) => panic!("{name} {path}: expected a route or 405, got {error:?}"),
            }
        }
    }
}

// Who needs a token is part of the contract: an admin route is bearer-only in the document, an
// open one says so, and ingest and metrics take a token without needing one.
#[test]
fn security_follows_the_routes() {
    let document = document();
    let bearer = serde_json::json!([{"bearer": []}]);
    let optional = serde_json::json!([{}, {"bearer": []}]);
    let open = serde_json::json!([]);
    for route in one_of_each_route() {
        let (method, template) = documented_as(&route);
        let security = &document["paths"][template][method.to_ascii_lowercase()]["security"];
        let expected = match route {
            _ if route.is_admin() => &bearer,
            // A publish needs a key with `ingest` or the operator token (checked after routing).
            Route::Publish { .. } => &bearer,
            // Ingest's need depends on the endpoint's `ingest_auth`; metrics show more to a token.
            Route::Ingest { .. } | Route::Metrics => &optional,
            _ => &open,
        };
        assert_eq!(security, expected, "security of {method} {template}");
    }
}

/// The (code, status) of one engine error. Exhaustive: a new variant must say its code here.
fn engine_answer(error: &EngineError) -> (&'static str, u16) {
    match error {
        EngineError::Unauthorized(_)
        | EngineError::TooLarge(_)
        | EngineError::RateLimited { .. }
        | EngineError::NotFound(_)
        | EngineError::Invalid(_)
        | EngineError::MethodNotAllowed { .. }
        | EngineError::QueueFull(_)
        | EngineError::Storage(_)
        | EngineError::IndexUnavailable(_)
        | EngineError::Unavailable(_) => (error.code(), error.status()),
    }
}

/// The code of one delivery outcome. Exhaustive for the same reason.
fn delivery_code(code: DeliveryCode) -> &'static str {
    match code {
        DeliveryCode::Timeout
        | DeliveryCode::Connection
        | DeliveryCode::Retryable
        | DeliveryCode::Permanent
        | DeliveryCode::CircuitOpen => code.as_str(),
    }
}

/// Every (code, status) the server answers with, and every delivery code (no status).
fn answered_codes() -> BTreeMap<&'static str, BTreeSet<u16>> {
    let text = || "x".to_string();
    let engine = [
        EngineError::Unauthorized(text()),
        EngineError::TooLarge(text()),
        EngineError::RateLimited { retry_after_s: 1 },
        EngineError::NotFound(text()),
        EngineError::Invalid(text()),
        EngineError::MethodNotAllowed { allow: "GET, HEAD" },
        EngineError::QueueFull(text()),
        EngineError::Storage(text()),
        EngineError::IndexUnavailable(text()),
        EngineError::Unavailable(text()),
    ];
    // `ParseError` is not exhaustive outside its crate: one of each status it answers with.
    let parse = [
        ParseError::InvalidHeader,
        ParseError::UnsupportedMethod,
        ParseError::RequestLineTooLong { limit_bytes: 8192 },
        ParseError::HeadTooLarge { limit_bytes: 16384 },
        ParseError::ExpectationFailed,
        ParseError::PayloadTooLarge { limit_bytes: 1 },
    ];
    let mut codes: BTreeMap<&'static str, BTreeSet<u16>> = BTreeMap::new();
    for (code, status) in
        engine.iter().map(engine_answer).chain(parse.iter().map(|error| (error.code(), error.status())))
    {
        codes.entry(code).or_default().insert(status);
    }
    // The HTTP server's own answers (kapsel_http::server): a client too slow to send its
    // request, and a shard at its connection limit.
    codes.entry("E1005").or_default().insert(408);
    codes.entry("E3002").or_default().insert(503);
    for code in [
        DeliveryCode::Timeout,
        DeliveryCode::Connection,
        DeliveryCode::Retryable,
        DeliveryCode::Permanent,
        DeliveryCode::CircuitOpen,
    ] {
        codes.entry(delivery_code(code)).or_default();
    }
    codes
}

// The error taxonomy of the contract: the document's `ErrorCode` lists exactly the codes the
// code answers or records, each with exactly the statuses it goes with.
#[test]
fn error_codes_and_statuses_match_the_code() {
    let document = document();
    let schema = &document["components"]["schemas"]["ErrorCode"];
    let listed: BTreeSet<&str> = schema["enum"].as_array().expect("enum").iter().filter_map(Value::as_str).collect();
    let answered = answered_codes();
    assert_eq!(listed, answered.keys().copied().collect(), "ErrorCode's enum against the code's E-codes");
    let statuses = schema["x-http-statuses"].as_object().expect("x-http-statuses");
    for (code, expected) in &answered {
        let documented: BTreeSet<u16> = statuses[*code]
            .as_array()
            .unwrap_or_else(|| panic!("no statuses for {code}"))
            .iter()
            .map(|status| u16::try_from(status.as_u64().expect("a status")).expect("a status"))
            .collect();
        assert_eq!(&documented, expected, "statuses of {code}");
        assert!(
            schema["description"].as_str().is_some_and(|text| text.contains(&format!("| {code} |"))),
            "ErrorCode's description has no row for {code}"
        );
    }
}

// Each operation's error answers name only statuses the taxonomy has, through the one `Error`
// schema, and a 401 promises `WWW-Authenticate`, a 429 `Retry-After`.
#[test]
fn error_answers_use_the_error_schema() {
    let document = document();
    let answered: BTreeSet<u16> = answered_codes().values().flatten().copied().collect();
    let responses = &document["components"]["responses"];
    for (template, item) in document["paths"].as_object().expect("paths") {
        for (_, method) in METHODS {
            let Some(operation) = item.get(method) else { continue };
            for (status, response) in operation["responses"].as_object().expect("responses") {
                let code: u16 = status.parse().expect("a numeric status");
                if code < 400 {
                    continue;
                }
                assert!(answered.contains(&code), "{method} {template}: {code} is no status of an E-code");
                let name = response["$ref"].as_str().and_then(|reference| reference.rsplit('/').next());
                let resolved = name.map_or(response, |name| &responses[name]);
                assert_eq!(
                    resolved["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                    "{method} {template} {code}"
                );
                let header = match code {
                    401 => Some("WWW-Authenticate"),
                    429 => Some("Retry-After"),
                    _ => None,
                };
                if let Some(header) = header {
                    assert!(resolved["headers"].get(header).is_some(), "{method} {template} {code} without {header}");
                }
            }
        }
    }
}
