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
    let guarded = r#"{"url":"http://127.0.0.1:9/g","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","ingest_auth":{"type":"hmac","header":"x-sig","algorithm":"sha256","encoding":"hex","secret":"hmac-secret-never-logged"}}"#;
    create(&server, "guarded", guarded);
    assert_eq!(server.request("POST", "/ingest/guarded", &[("x-sig", "00")], b"{}").code(), "E1001");

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
    // A new endpoint takes ingest with a key of its tenant that has `ingest` (or the operator
    // token), nothing else.
    assert_eq!(made.json()["ingest_auth"]["type"], "key");
    let (_, acme_reader) = new_key(&server, "acme", r#"["read"]"#);
    // Without a key, or with acme's read-only key: 401; with another tenant's key: as missing.
    for (token, expected) in [
        (None, (401, "E1001")),
        (Some("wrong"), (401, "E1001")),
        (Some(acme_reader.as_str()), (401, "E1001")),
        (Some(reader.as_str()), (404, "E1004")),
        (Some(writer.as_str()), (404, "E1004")),
    ] {
        let headers: Vec<(&str, String)> =
            token.map(|token| ("Authorization", format!("Bearer {token}"))).into_iter().collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let refused = server.request("POST", "/ingest/acme-hook", &headers, b"{}");
        assert_eq!((refused.status, refused.code()), (expected.0, expected.1.to_string()), "{token:?}");
    }
    let operator = server.request("POST", "/ingest/acme-hook", &[("Authorization", &format!("Bearer {TOKEN}"))], b"{}");
    assert_eq!(operator.status, 202);
    let accepted = with_key(&server, "POST", "/ingest/acme-hook", &acme_key, "{}");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let acme_event = accepted.json()["event_id"].as_str().unwrap().to_string();
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &acme_key, "").status, 200);
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &reader, "").code(), "E1004");
    let acme_listing = with_key(&server, "GET", "/admin/events", &acme_key, "").json();
    let listed: Vec<&str> =
        acme_listing["events"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    // The operator's ingest and the key's, both to acme-hook; nothing of default's.
    assert_eq!(listed.len(), 2, "{acme_listing}");
    assert_eq!(listed[0], acme_event.as_str());
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
    let secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hmac-secret-never-logged", TOKEN];
    for secret in [reader.as_str(), writer.as_str(), acme_key.as_str()].into_iter().chain(secrets) {
        assert!(!logged.contains(secret), "a key, token or secret reached the log");
    }
    assert!(logged.contains("DEBUG") || logged.contains("debug"), "the log was written at debug level");
}

// Provider signatures on ingest: GitHub's published example verifies; a wrong secret, a
// changed body or a missing header is 401 E1001; Stripe's scheme with its timestamp tolerance.
#[test]
fn provider_signatures_guard_ingest() {
    use hmac::Mac as _;
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    let github = r#"{"url":"http://127.0.0.1:9/h","ingest_auth":{"type":"hmac","header":"X-Hub-Signature-256","algorithm":"sha256","encoding":"hex","prefix":"sha256=","secret":"It's a Secret to Everybody"}}"#;
    create(&server, "github", github);
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| server.request("POST", path, headers, body);
    assert_eq!(post("/ingest/github", &[("X-Hub-Signature-256", signature)], b"Hello, World!").status, 202);
    assert_eq!(post("/ingest/github", &[("X-Hub-Signature-256", signature)], b"Hello, World?").code(), "E1001");
    assert_eq!(post("/ingest/github", &[], b"Hello, World!").code(), "E1001");
    let other = "sha256=0000000eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(post("/ingest/github", &[("X-Hub-Signature-256", other)], b"Hello, World!").code(), "E1001");

    create(
        &server,
        "stripe",
        r#"{"url":"http://127.0.0.1:9/h","ingest_auth":{"type":"stripe","secret":"whsec_test_secret"}}"#,
    );
    let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    let sign = |timestamp: u64, secret: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        let hex: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
        format!("t={timestamp},v1={hex}")
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(post("/ingest/stripe", &[("Stripe-Signature", &sign(now, "whsec_test_secret"))], body).status, 202);
    assert_eq!(post("/ingest/stripe", &[("Stripe-Signature", &sign(now, "whsec_other"))], body).code(), "E1001");
    assert_eq!(
        post("/ingest/stripe", &[("Stripe-Signature", &sign(now - 600, "whsec_test_secret"))], body).code(),
        "E1001"
    );
    assert_eq!(post("/ingest/stripe", &[], body).code(), "E1001");
    // The endpoint shows how it is guarded, secret included (as its signing secret is).
    let shown = server.admin("GET", "/admin/endpoints/stripe", "").json();
    assert_eq!(shown["ingest_auth"]["type"], "stripe");
    let invalid =
        server.admin("PUT", "/admin/endpoints/bad", r#"{"url":"http://127.0.0.1:9/h","ingest_auth":{"type":"hmac"}}"#);
    assert_eq!(invalid.code(), "E1005");
}

/// Copies a directory tree (the fixture data directories are a few small files).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// An upgrade must not lock out senders: endpoints made before ingest_auth existed keep open
// ingest, and the start names them so the operator can close them. The data directory in
// tests/fixtures/before-tenants was written by the release before this change (commit 34f75fc):
// endpoint `legacy-orders` (open, with one event whose body's type is `x`) and `legacy-signed`
// (with an ingest_secret, which keeps guarding it).
#[test]
fn an_upgraded_data_directory_keeps_its_endpoints_open_and_says_so() {
    let directory = tempfile::tempdir().unwrap();
    copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/before-tenants"),
        directory.path(),
    );
    let log = directory.path().join("kapsel.log");
    let server = Server::start_logging_to(directory.path(), "legacy", &[], &log);
    let open = server.request("POST", "/ingest/legacy-orders", &[], br#"{"type":"order.created"}"#);
    assert_eq!(open.status, 202, "{open:?}");
    assert_eq!(server.admin("GET", "/admin/endpoints/legacy-orders", "").json()["ingest_auth"]["type"], "none");
    let signed = server.request("POST", "/ingest/legacy-signed", &[], b"{}");
    assert_eq!(signed.code(), "E1001");
    assert_eq!(
        server.admin("GET", "/admin/endpoints/legacy-signed", "").json()["ingest_auth"]["type"],
        "standard_webhooks"
    );
    let old = server.admin("GET", "/admin/events?endpoint_id=legacy-orders", "").json();
    let types: Vec<&str> =
        old["events"].as_array().unwrap().iter().filter_map(|event| event["type"].as_str()).collect();
    assert_eq!(types, ["order.created", "x"], "an old event's type comes from its body");
    assert_eq!(server.stop(), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    let warning =
        logged.lines().find(|line| line.contains("keep open ingest")).expect("a warning about open endpoints");
    assert!(warning.contains("legacy-orders") && !warning.contains("legacy-signed"), "{warning}");
}

// Channels belong to tenants, and publishing is authenticated: a publish needs a key with
// `ingest` (its tenant's channels) or the operator token (`default`'s); the same channel name in
// two tenants reaches each tenant's subscribers only, and each sees only its own published event.
#[test]
fn publishes_follow_their_tenant() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", "{}").status, 201);
    let (_, acme) = new_key(&server, "acme", r#"["ingest","read"]"#);
    let (_, acme_reader) = new_key(&server, "acme", r#"["read"]"#);
    let (_, default_reader) = new_key(&server, "default", r#"["read"]"#);
    let body = |tenant: &str| {
        format!(r#"{{"url":"http://127.0.0.1:9/h","enabled":false,"channels":["news"],"tenant_id":"{tenant}"}}"#)
    };
    create(&server, "default-sub", &body("default"));
    create(&server, "acme-sub-1", &body("acme"));
    create(&server, "acme-sub-2", &body("acme"));
    let anonymous = server.request("POST", "/publish/news", &[], b"{}");
    assert_eq!((anonymous.status, anonymous.code()), (401, "E1001".to_string()));
    assert_eq!(with_key(&server, "POST", "/publish/news", &acme_reader, "{}").code(), "E1001");
    let by_acme = with_key(&server, "POST", "/publish/news", &acme, "{}");
    assert_eq!((by_acme.status, by_acme.json()["endpoints"].as_u64()), (202, Some(2)), "{by_acme:?}");
    let by_operator = with_key(&server, "POST", "/publish/news", TOKEN, "{}");
    assert_eq!((by_operator.status, by_operator.json()["endpoints"].as_u64()), (202, Some(1)));
    let acme_event = by_acme.json()["event_id"].as_str().unwrap().to_string();
    let seen = with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &acme, "").json();
    let reached: Vec<&str> =
        seen["deliveries"].as_array().unwrap().iter().filter_map(|d| d["endpoint_id"].as_str()).collect();
    assert_eq!(reached, ["acme-sub-1", "acme-sub-2"], "{seen}");
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{acme_event}"), &default_reader, "").code(), "E1004");
    let operator_event = by_operator.json()["event_id"].as_str().unwrap().to_string();
    assert_eq!(with_key(&server, "GET", &format!("/admin/events/{operator_event}"), &acme, "").code(), "E1004");
    // The same key on each tenant's channel is two publishes.
    let keyed = |token: &str| {
        let authorization = format!("Bearer {token}");
        server.request(
            "POST",
            "/publish/news",
            &[("Authorization", &authorization), ("X-Idempotency-Key", "k1")],
            b"{}",
        )
    };
    assert_eq!(keyed(&acme).status, 202);
    assert_eq!(keyed(TOKEN).status, 202);
    assert_eq!(keyed(&acme).status, 200);
}

// Every admin, ingest and publish path against every kind of caller: the exact status and code
// of each cell, so a change to who may do what shows up here first.
#[test]
fn who_may_do_what_on_every_path() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/other", "{}").status, 201);
    let endpoint = r#"{"url":"http://127.0.0.1:9/h","enabled":false,"channels":["c"]}"#;
    assert_eq!(server.admin("PUT", "/admin/endpoints/e", endpoint).status, 201);
    let event = {
        let authorization = format!("Bearer {TOKEN}");
        server.request("POST", "/ingest/e", &[("Authorization", &authorization)], b"{}").json()["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, read) = new_key(&server, "default", r#"["read"]"#);
    let (_, write) = new_key(&server, "default", r#"["write"]"#);
    let (_, ingest) = new_key(&server, "default", r#"["ingest"]"#);
    let (_, other) = new_key(&server, "other", r#"["read","write","ingest"]"#);
    let (revoked_id, revoked) = new_key(&server, "default", r#"["read","write","ingest"]"#);
    assert_eq!(server.admin("DELETE", &format!("/admin/keys/{revoked_id}"), "").status, 204);
    let unknown_key = "key_00000000000000000000000000";

    // Callers, in the columns' order.
    let callers: [(&str, Option<&str>); 8] = [
        ("none", None),
        ("wrong", Some("not-the-token")),
        ("operator", Some(TOKEN)),
        ("read", Some(&read)),
        ("write", Some(&write)),
        ("ingest", Some(&ingest)),
        ("other tenant", Some(&other)),
        ("revoked", Some(&revoked)),
    ];
    const U: (u16, &str) = (401, "E1001");
    const N: (u16, &str) = (404, "E1004");
    let ok = |status: u16| (status, "");
    // Method, path, body, and what each caller gets.
    type Row<'a> = (&'a str, String, &'a str, [(u16, &'a str); 8]);
    let rows: Vec<Row> = vec![
        ("GET", "/admin/endpoints/e".into(), "", [U, U, ok(200), ok(200), U, U, N, U]),
        ("PUT", "/admin/endpoints/e".into(), endpoint, [U, U, ok(200), U, ok(200), U, N, U]),
        ("POST", "/admin/endpoints/e/disable".into(), "", [U, U, ok(200), U, ok(200), U, N, U]),
        ("GET", format!("/admin/events/{event}"), "", [U, U, ok(200), ok(200), U, U, N, U]),
        ("POST", format!("/admin/events/{event}/retry"), "", [U, U, ok(202), U, ok(202), U, N, U]),
        ("GET", "/admin/events".into(), "", [U, U, ok(200), ok(200), U, U, ok(200), U]),
        ("GET", format!("/admin/events/{event}/proof"), "", [U, U, N, N, U, U, N, U]),
        ("GET", "/admin/audit/segments".into(), "", [U, U, ok(200), ok(200), U, U, ok(200), U]),
        ("GET", "/admin/endpoints/missing".into(), "", [U, U, N, N, U, U, N, U]),
        ("POST", "/admin/endpoints".into(), endpoint, [U, U, ok(201), U, ok(201), U, ok(201), U]),
        ("POST", "/admin/endpoints/e/enable".into(), "", [U, U, ok(200), U, ok(200), U, N, U]),
        ("POST", "/admin/endpoints/e/retry-failed".into(), "", [U, U, ok(202), U, ok(202), U, N, U]),
        ("DELETE", "/admin/endpoints/missing".into(), "", [U, U, N, U, N, U, N, U]),
        ("GET", "/admin/audit/changes".into(), "", [U, U, ok(200), U, U, U, U, U]),
        ("PUT", "/admin/tenants/t".into(), "{}", [U, U, ok(201), U, U, U, U, U]),
        ("GET", "/admin/tenants/default".into(), "", [U, U, ok(200), U, U, U, U, U]),
        ("GET", "/admin/tenants/default/keys".into(), "", [U, U, ok(200), U, U, U, U, U]),
        ("POST", "/admin/tenants/t/keys".into(), r#"{"scopes":["read"]}"#, [U, U, ok(201), U, U, U, U, U]),
        ("DELETE", format!("/admin/keys/{unknown_key}"), "", [U, U, N, U, U, U, U, U]),
        ("POST", "/ingest/e".into(), "{}", [U, U, ok(202), U, U, ok(202), N, U]),
        ("POST", "/publish/c".into(), "{}", [U, U, ok(202), U, U, ok(202), ok(202), U]),
        ("DELETE", "/admin/tenants/t".into(), "", [U, U, ok(204), U, U, U, U, U]),
    ];
    for (method, path, body, expected) in &rows {
        for ((caller, token), (status, code)) in callers.iter().zip(expected) {
            let authorization = token.map(|token| format!("Bearer {token}"));
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(authorization) = &authorization {
                headers.push(("Authorization", authorization));
            }
            let response = server.request(method, path, &headers, body.as_bytes());
            let got = (response.status, if response.status >= 400 { response.code() } else { String::new() });
            assert_eq!(got, (*status, code.to_string()), "{method} {path} as {caller}: {response:?}");
            if response.status == 401 {
                assert!(response.header("www-authenticate").is_some(), "{method} {path} as {caller}");
            }
        }
    }
}

// A tenant's rate limit holds over all its endpoints together and on every shard, and another
// tenant's ingest is not limited by it.
#[test]
fn a_tenants_rate_limit_is_its_own() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/noisy", r#"{"rate_limit_per_s":5}"#).status, 201);
    for id in ["noisy-0", "noisy-1", "noisy-2"] {
        create(&server, id, r#"{"url":"http://127.0.0.1:9/h","enabled":false,"tenant_id":"noisy"}"#);
    }
    create(&server, "quiet", r#"{"url":"http://127.0.0.1:9/h","enabled":false}"#);
    // Spread over its three endpoints, the tenant gets its one second's burst (5) and then,
    // well before the loop's bound, a 429 (the refill, 5 a second, cannot keep up).
    let mut accepted = 0;
    let mut limited = None;
    for n in 0..2000 {
        let response = server.request("POST", &format!("/ingest/noisy-{}", n % 3), &[], b"{}");
        if response.status != 202 {
            limited = Some(response);
            break;
        }
        accepted += 1;
    }
    assert!(accepted >= 5, "{accepted} accepted before the first refusal");
    let limited = limited.expect("the tenant's limit answered");
    assert_eq!((limited.status, limited.code()), (429, "E1003".to_string()));
    assert!(limited.header("retry-after").is_some());
    for _ in 0..30 {
        assert_eq!(server.request("POST", "/ingest/quiet", &[], b"{}").status, 202, "another tenant is not limited");
    }
}

// A tenant whose events cannot be delivered fills its own waiting bound, on whichever shards its
// endpoints live, and then gets 503 E3002; another tenant's ingest goes on.
#[test]
fn a_tenants_waiting_bound_is_its_own() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/stuck", r#"{"events_waiting_max":6}"#).status, 201);
    for id in ["stuck-0", "stuck-1", "stuck-2", "stuck-3"] {
        create(&server, id, r#"{"url":"http://127.0.0.1:9/h","enabled":false,"tenant_id":"stuck"}"#);
    }
    create(&server, "free", r#"{"url":"http://127.0.0.1:9/h","enabled":false}"#);
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..40 {
        let response = server.request("POST", &format!("/ingest/stuck-{}", n % 4), &[], b"{}");
        if response.status == 202 {
            accepted += 1;
        } else {
            refused = Some(response);
            break;
        }
    }
    // Each shard counts the others' events as of their last report, so the bound holds exactly
    // once the reports are in; it never lets the tenant grow past it by more than a batch.
    assert!((6..=8).contains(&accepted), "{accepted} accepted");
    let refused = refused.expect("the tenant's bound answered");
    assert_eq!((refused.status, refused.code()), (503, "E3002".to_string()));
    for _ in 0..20 {
        assert_eq!(server.request("POST", "/ingest/free", &[], b"{}").status, 202, "another tenant goes on");
    }
}

// Every configuration change is a record naming who made it: the operator token or a key, and
// `GET /admin/audit/changes` lists them newest first (the operator's alone), across restarts.
#[test]
fn configuration_changes_are_audited_with_who_made_them() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", "{}").status, 201);
    let (key_id, key) = new_key(&server, "acme", r#"["write","read"]"#);
    let body = r#"{"url":"http://127.0.0.1:9/h","enabled":false}"#;
    assert_eq!(with_key(&server, "PUT", "/admin/endpoints/audited", &key, body).status, 201);
    assert_eq!(with_key(&server, "POST", "/admin/endpoints/audited/enable", &key, "").status, 200);
    assert_eq!(server.admin("DELETE", "/admin/endpoints/audited", "").status, 204);
    assert_eq!(server.admin("DELETE", &format!("/admin/keys/{key_id}"), "").status, 204);
    assert_eq!(with_key(&server, "GET", "/admin/audit/changes", &key, "").code(), "E1001");
    assert_eq!(server.stop(), 0);
    let server = Server::start(directory.path(), "uring", &[]);
    let listed = server.admin("GET", "/admin/audit/changes?limit=10", "");
    assert_eq!(listed.status, 200, "{listed:?}");
    let changes = listed.json()["changes"].as_array().unwrap().clone();
    let seen: Vec<(String, String, String)> = changes
        .iter()
        .map(|change| {
            let field = |name: &str| change[name].as_str().unwrap_or_default().to_string();
            (field("kind"), field("subject"), field("by"))
        })
        .collect();
    let expected = [
        ("key.revoked", key_id.as_str(), "operator"),
        ("endpoint.deleted", "audited", "operator"),
        ("endpoint.put", "audited", key_id.as_str()),
        ("endpoint.put", "audited", key_id.as_str()),
        ("key.created", key_id.as_str(), "operator"),
        ("tenant.put", "acme", "operator"),
    ];
    let mut expected: Vec<(String, String, String)> =
        expected.iter().map(|(kind, subject, by)| (kind.to_string(), subject.to_string(), by.to_string())).collect();
    // Newest first by time; changes of one millisecond on different shards have no order to keep,
    // so the list is compared as a set and its times checked to fall.
    let times: Vec<&str> = changes.iter().filter_map(|change| change["at"].as_str()).collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "{times:?}");
    let mut seen = seen;
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "{changes:?}");
    assert_eq!(server.admin("GET", "/admin/audit/changes?limit=0", "").code(), "E1005");
}
