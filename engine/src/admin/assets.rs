//! What Kapsel serves that is not an operation: the OpenAPI document (`GET /openapi.json`) and
//! the dashboard's static files (`GET /ui/…`), embedded in the binary at build time so they need
//! no files beside it and no network.

use kapsel_http::Response;

/// `docs/openapi.json`, the contract for machines.
pub const OPENAPI: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"));

/// One file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/", $name)),
        }
    };
}

/// The dashboard's files (`ui/` in the repository), by name under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    // The modules app.js imports: one per view, the API client, DOM helpers, metrics arithmetic.
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("endpoints.js", "text/javascript; charset=utf-8"),
    asset!("events.js", "text/javascript; charset=utf-8"),
    asset!("event.js", "text/javascript; charset=utf-8"),
    asset!("metrics.js", "text/javascript; charset=utf-8"),
    asset!("overview.js", "text/javascript; charset=utf-8"),
];

/// The dashboard's content security policy: its own scripts, styles and API only. Every value
/// the dashboard shows comes from senders and destinations (URLs, payloads, response excerpts),
/// so nothing inline may run even if a value were ever rendered as markup, and no page may
/// frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `name` (the path after `/ui/`; empty for the index) is a dashboard file.
pub fn is_asset(name: &str) -> bool {
    find(name).is_some()
}

fn find(name: &str) -> Option<&'static Asset> {
    let name = if name.is_empty() { "index.html" } else { name };
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The answer to `GET /ui/{name}`, or `None` for a file the dashboard does not have.
pub fn ui(name: &str) -> Option<Response> {
    let asset = find(name)?;
    let mut response = Response::empty(200);
    response.content_type = Some(asset.content_type);
    response.body = asset.bytes.to_vec();
    Some(
        response
            .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY.to_string())
            .with_header("X-Content-Type-Options", "nosniff".to_string())
            .with_header("Referrer-Policy", "no-referrer".to_string())
            // A new binary brings new files under the same names: a browser asks again.
            .with_header("Cache-Control", "no-cache".to_string()),
    )
}

/// The answer to `GET /openapi.json`.
pub fn openapi() -> Response {
    Response::json(200, OPENAPI.to_vec()).with_header("X-Content-Type-Options", "nosniff".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The document served is valid JSON of OpenAPI 3.1: a broken file would be served as is.
    #[test]
    fn openapi_document_is_json_of_version_3_1() {
        let document: serde_json::Value = serde_json::from_slice(OPENAPI).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    // Every dashboard file is served with the policy that keeps inline scripts from running.
    #[test]
    fn every_asset_carries_the_policy() {
        for name in ["", "index.html", "app.js", "style.css"] {
            let response = ui(name).unwrap();
            assert!(!response.body.is_empty(), "{name}");
            assert!(response
                .headers
                .iter()
                .any(|(header, value)| *header == "Content-Security-Policy" && value.contains("script-src 'self'")));
        }
        assert!(ui("../Cargo.toml").is_none());
        assert!(ui("missing.js").is_none());
    }
}
