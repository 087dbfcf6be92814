//! Tenants and scoped keys against the real binary: keys are shown once and kept as hashes,
//! carry only their scopes, see only their tenant, are refused on every shard the moment they are
//! revoked, and survive a restart; tenants and keys are the operator's to manage.

use crate::common::{self, create, Server, TOKEN};

fn with_key(server: &Server, method: &str, path: &str, key: &str, body: &str) -> common::Response {
    let authorization = format!("Bearer {key}");
    server.request(
        method,
        path,
        &[("Authorization", &authorization), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn new_key(server: &Server, tenant: &str, scopes: &str) -> (String, String) {
    let created = server.admin("POST", &format!("/admin/tenants/{tenant}/keys"), &format!(r#"{{"scopes":{scopes}}}"#));
    assert_eq!(created.status, 201, "{created:?}");
    let json = created.json();
    (json["key_id"].as_str().unwrap().to_string(), json["key"].as_str().unwrap().to_string())
}

// The whole life of tenants and keys: create, use within scopes and tenant, list without the key,
// revoke (refused at once, on every shard), survive a restart; keys never reach the log.
#[test]
fn tenants_and_keys_from_creation_to_revocation() {
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("kapsel.log");
    let server = Server::start_logging_to(directory.path(), "legacy", &[("RUST_LOG", "debug")], &log);
    // The default tenant always exists; others are the operator's to create.
    assert_eq!(server.admin("GET", "/admin/tenants/default", "").status, 200);
    assert_eq!(server.admin("GET", "/admin/tenants/acme", "").code(), "E1004");
    let acme = server.admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme","rate_limit_per_s":100}"#);
    assert_eq!(acme.status, 201, "{acme:?}");
    assert_eq!(acme.json()["name"], "Acme");
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme Inc"}"#).status, 200);
    assert_eq!(server.admin("PUT", "/admin/tenants/bad.id", "{}").code(), "E1005");
    create(&server, "orders", r#"{"url":"http://127.0.0.1:9/hook"}"#);
    let event_id = common::ingest(&server, "orders", b"{}");

    let (reader_id, reader) = new_key(&server, "default", r#"["read"]"#);
    let (_, writer) = new_key(&server, "default", r#"["write","read"]"#);
    let (_, acme_key) = new_key(&server, "acme", r#"["read","write","ingest"]"#);
    assert!(reader.starts_with("ksk_") && reader.len() >= 4 + 43);
    assert_eq!(server.admin("POST", "/admin/tenants/default/keys", r#"{"scopes":["admin"]}"#).code(), "E1005");
    assert_eq!(server.admin("POST", "/admin/tenants/nobody/keys", r#"{"scopes":["read"]}"#).code(), "E1004");

    // Scopes: read reads, write changes; neither manages tenants or keys.
    for _ in 0..4 {
        assert_eq!(with_key(&server, "GET", "/admin/endpoints/orders", &reader, "").status, 200);
        assert_eq!(with_key(&server, "GET", &format!("/admin/events/{event_id}"), &reader, "").status, 200);
    }
    let refused = with_key(&server, "PUT", "/admin/endpoints/orders", &reader, r#"{"url":"http://127.0.0.1:9/h"}"#);
    assert_eq!((refused.status, refused.code()), (401, "E1001".to_string()));
    assert!(refused.header("www-authenticate").is_some());
    assert_eq!(
        with_key(&server, "PUT", "/admin/endpoints/orders", &writer, r#"{"url":"http://127.0.0.1:9/h"}"#).status,
        200
    );
    for (method, path) in [
        ("GET", "/admin/tenants/default"),
        ("POST", "/admin/tenants/default/keys"),
        ("GET", "/admin/tenants/default/keys"),
    ] {
        let response = with_key(&server, method, path, &writer, r#"{"scopes":["read"]}"#);
        assert_eq!((response.status, response.code()), (401, "E1001".to_string()), "{method} {path}");
    }
    // Another tenant's key finds nothing: the same 404 as for what does not exist.
    let hidden = with_key(&server, "GET", "/admin/endpoints/orders", &acme_key, "");
    let missing = with_key(&server, "GET", "/admin/endpoints/nothing-here", &acme_key, "");
    assert_eq!((hidden.status, hidden.code()), (404, "E1004".to_string()));
    assert_eq!(hidden.json()["error"]["code"], missing.json()["error"]["code"]);
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{event_id}"), &acme_key, "").code(), "E1004");
    let listing = with_key(&server, "GET", "/admin/events", &acme_key, "").json();
    assert_eq!(listing["events"], serde_json::json!([]), "{listing}");
    assert!(!with_key(&server, "GET", "/admin/events", &reader, "").json()["events"].as_array().unwrap().is_empty());

    // A key's endpoints are its tenant's; each tenant sees only its own.
    let made = with_key(&server, "PUT", "/admin/endpoints/acme-hook", &acme_key, r#"{"url":"http://127.0.0.1:9/a"}"#);
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(made.json()["tenant_id"], "acme");
    let elsewhere = with_key(
        &server,
        "PUT",
        "/admin/endpoints/x",
        &acme_key,
        r#"{"url":"http://127.0.0.1:9/a","tenant_id":"default"}"#,
    );
    assert_eq!(elsewhere.code(), "E1005");
    assert_eq!(with_key(&server, "GET", "/admin/endpoints/acme-hook", &reader, "").code(), "E1004");
    assert_eq!(
        with_key(&server, "PUT", "/admin/endpoints/orders", &acme_key, r#"{"url":"http://127.0.0.1:9/a"}"#).code(),
        "E1004"
    );
    let acme_event = common::ingest(&server, "acme-hook", b"{}");
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &acme_key, "").status, 200);
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &reader, "").code(), "E1004");
    let acme_listing = with_key(&server, "GET", "/admin/events", &acme_key, "").json();
    let listed: Vec<&str> =
        acme_listing["events"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(listed, [acme_event.as_str()]);
    // The tenant is fixed once set, must exist, and its endpoints_max holds.
    let moved =
        server.admin("PUT", "/admin/endpoints/acme-hook", r#"{"url":"http://127.0.0.1:9/a","tenant_id":"default"}"#);
    assert_eq!(moved.code(), "E1005");
    assert_eq!(
        server.admin("PUT", "/admin/endpoints/ghost", r#"{"url":"http://127.0.0.1:9/a","tenant_id":"ghost"}"#).code(),
        "E1005"
    );
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme Inc","endpoints_max":1}"#).status, 200);
    let over = server.admin("PUT", "/admin/endpoints/acme-two", r#"{"url":"http://127.0.0.1:9/a","tenant_id":"acme"}"#);
    assert_eq!((over.status, over.code()), (503, "E3002".to_string()));
    assert_eq!(server.admin("GET", "/admin/tenants/acme", "").json()["endpoints"], 1);
    assert_eq!(server.admin("DELETE", "/admin/tenants/acme", "").code(), "E1005", "a tenant with endpoints stays");

    // Listing keys shows ids, scopes and last use, never the key.
    let keys = server.admin("GET", "/admin/tenants/default/keys", "");
    assert_eq!(keys.status, 200);
    let text = String::from_utf8_lossy(&keys.body).to_string();
    assert!(!text.contains(&reader) && !text.contains(&writer), "{text}");
    let listed = keys.json();
    let entry =
        listed["keys"].as_array().unwrap().iter().find(|key| key["key_id"] == reader_id.as_str()).unwrap().clone();
    assert_eq!(entry["scopes"], serde_json::json!(["read"]));
    assert!(entry["last_used_at"].is_string(), "{entry}");

    // A tenant with endpoints cannot go; one without can.
    assert_eq!(server.admin("DELETE", "/admin/tenants/default", "").code(), "E1005");
    // Revoked: refused by the next request, whichever shard takes it.
    assert_eq!(server.admin("DELETE", &format!("/admin/keys/{reader_id}"), "").status, 204);
    for _ in 0..8 {
        assert_eq!(with_key(&server, "GET", "/admin/endpoints/orders", &reader, "").code(), "E1001");
    }
    assert_eq!(server.admin("DELETE", &format!("/admin/keys/{reader_id}"), "").code(), "E1004");
    assert_eq!(server.stop(), 0);

    // Tenants and keys come back with the log.
    let server = Server::start(directory.path(), "uring", &[]);
    assert_eq!(server.admin("GET", "/admin/tenants/acme", "").json()["name"], "Acme Inc");
    assert_eq!(with_key(&server, "GET", "/admin/endpoints/orders", &writer, "").status, 200);
    assert_eq!(with_key(&server, "GET", "/admin/endpoints/orders", &reader, "").code(), "E1001");
    assert_eq!(with_key(&server, "GET", "/admin/endpoints/acme-hook", &acme_key, "").json()["tenant_id"], "acme");
    assert_eq!(server.admin("DELETE", "/admin/endpoints/acme-hook", "").status, 204);
    assert_eq!(server.admin("DELETE", "/admin/tenants/acme", "").status, 204);
    assert_eq!(
        with_key(&server, "GET", "/admin/events", &acme_key, "").code(),
        "E1001",
        "a deleted tenant's keys go with it"
    );
    assert_eq!(server.stop(), 0);

    let logged = std::fs::read_to_string(&log).unwrap();
    for secret in [&reader, &writer, &acme_key, &TOKEN.to_string()] {
        assert!(!logged.contains(secret.as_str()), "a key or token reached the log");
    }
}
