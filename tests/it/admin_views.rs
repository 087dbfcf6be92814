//! What the dashboard and other clients read beyond single resources, against the real binary:
//! the endpoint listing over every shard, each endpoint's tally of attempts, an event's payload
//! preview, who a bearer is, and the open paths that serve the OpenAPI document and the
//! dashboard's files.

use crate::common::{self, create, sink::Reply, sink::Sink, Server, TOKEN};

fn as_key(server: &Server, path: &str, key: &str) -> common::Response {
    server.request("GET", path, &[("Authorization", &format!("Bearer {key}"))], b"")
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["endpoints"].as_array().unwrap().iter().map(|endpoint| endpoint["id"].as_str().unwrap().to_string()).collect()
}

// An operator with thousands of endpoints pages through them in id order across shards, each
// exactly once; a key pages through its tenant's only.
#[test]
fn the_endpoint_listing_pages_every_shard_in_id_order() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", "{}").status, 201);
    let mut expected = Vec::new();
    for n in 0..23 {
        let id = format!("ep-{n:03}");
        let tenant = if n % 3 == 0 { "acme" } else { "default" };
        let body = format!(
            r#"{{"url":"http://127.0.0.1:9/{n}","tenant_id":"{tenant}","ingest_auth":{{"type":"stripe","secret":"whsec_stripe{n}"}}}}"#
        );
        create(&server, &id, &body);
        expected.push(id);
    }
    // Both shards hold some of them, so the pages are merges.
    let shards: std::collections::BTreeSet<u64> = expected.iter().map(|id| common::shard_of(id, 2)).collect();
    assert_eq!(shards.len(), 2);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/admin/endpoints?limit=5&cursor={cursor}"),
            None => "/admin/endpoints?limit=5".to_string(),
        };
        let page = server.admin("GET", &path, "");
        assert_eq!(page.status, 200, "{page:?}");
        let page = page.json();
        let found = ids(&page);
        assert!(found.len() <= 5);
        seen.extend(found);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // Each entry is the endpoint as GET shows it, live state and tally included.
    let first = server.admin("GET", "/admin/endpoints?limit=1", "").json();
    let single = server.admin("GET", "/admin/endpoints/ep-000", "").json();
    assert_eq!(first["endpoints"][0]["url"], single["url"]);
    assert_eq!(first["endpoints"][0]["circuit_state"], "closed");
    assert_eq!(first["endpoints"][0]["stats"]["delivered"], 0);

    let key = server.admin("POST", "/admin/tenants/acme/keys", r#"{"scopes":["read"]}"#).json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let acme: Vec<String> = expected.iter().step_by(3).cloned().collect();
    // A key's listing is its tenant's whatever tenant the query names.
    for path in ["/admin/endpoints?limit=1000", "/admin/endpoints?tenant_id=default"] {
        let page = as_key(&server, path, &key);
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(ids(&page.json()), acme, "{path}");
    }
    // A key that may only read sees no secret: not the signing secret, not how ingest is
    // authenticated; one with `write` (and the operator) sees them.
    let page = as_key(&server, "/admin/endpoints?limit=1", &key).json();
    let single = as_key(&server, "/admin/endpoints/ep-000", &key).json();
    for shown in [&page["endpoints"][0], &single] {
        assert_eq!(shown["id"], "ep-000");
        assert!(!shown.to_string().contains("whsec_"), "{shown}");
        assert!(shown.get("secret").is_none() && shown["ingest_auth"].get("secret").is_none(), "{shown}");
    }
    let writer = server.admin("POST", "/admin/tenants/acme/keys", r#"{"scopes":["read","write"]}"#).json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(as_key(&server, "/admin/endpoints/ep-000", &writer).json()["secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    assert!(as_key(&server, "/admin/endpoints?limit=1", &writer).json()["endpoints"][0]["secret"].is_string());
    assert!(server.admin("GET", "/admin/endpoints?limit=1", "").json()["endpoints"][0]["secret"].is_string());
    let defaults = server.admin("GET", "/admin/endpoints?tenant_id=default&limit=1000", "").json();
    assert_eq!(ids(&defaults).len(), expected.len() - acme.len());
    for bad in ["limit=0", "limit=1001", "cursor=a%20b", "colour=red"] {
        assert_eq!(server.admin("GET", &format!("/admin/endpoints?{bad}"), "").code(), "E1005", "{bad}");
    }
    assert_eq!(server.request("GET", "/admin/endpoints", &[], b"").code(), "E1001");
}

// The dashboard's per-endpoint counts say what happened: deliveries, events that failed for
// good, failed attempts, and the last error with its code and the destination's status.
#[test]
fn endpoints_tally_their_attempts() {
    let sink = Sink::start(|_, received| if received.path == "/bad" { Reply::status(500) } else { Reply::status(204) });
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    create(&server, "good", &format!(r#"{{"url":"{}"}}"#, sink.url("/good")));
    let retry = r#""retry":{"max_attempts":2,"initial_delay_ms":10,"max_delay_ms":10,"jitter":0}"#;
    create(&server, "bad", &format!(r#"{{"url":"{}",{retry}}}"#, sink.url("/bad")));
    let delivered: Vec<String> = (0..3).map(|_| common::ingest(&server, "good", b"{}")).collect();
    let failed = common::ingest(&server, "bad", b"{}");
    for event in &delivered {
        common::wait_event(&server, event, |json| json["status"] == "delivered");
    }
    common::wait_event(&server, &failed, |json| json["status"] == "failed");

    let good = server.admin("GET", "/admin/endpoints/good", "").json();
    assert_eq!(good["stats"]["delivered"], 3, "{good}");
    assert_eq!((good["stats"]["failed"].as_u64(), good["stats"]["attempts_failed"].as_u64()), (Some(0), Some(0)));
    assert!(good["stats"]["last_error"].is_null());
    let bad = server.admin("GET", "/admin/endpoints/bad", "").json();
    let stats = &bad["stats"];
    assert_eq!((stats["delivered"].as_u64(), stats["failed"].as_u64()), (Some(0), Some(1)), "{bad}");
    assert_eq!(stats["attempts_failed"], 2);
    assert_eq!(stats["last_error"]["error_code"], "E2003");
    assert_eq!(stats["last_error"]["status_code"], 500);
    assert!(stats["since"].as_str().unwrap().ends_with('Z'));
    // A deleted endpoint made again starts from nothing.
    assert_eq!(server.admin("DELETE", "/admin/endpoints/bad", "").status, 204);
    create(&server, "bad", &format!(r#"{{"url":"{}"}}"#, sink.url("/bad")));
    assert_eq!(server.admin("GET", "/admin/endpoints/bad", "").json()["stats"]["attempts_failed"], 0);
}

// An operator reads what was sent: the payload as text when it is UTF-8, else base64, capped,
// from memory or read back from the log after a restart; a published event's too.
#[test]
fn an_event_payload_is_previewed_capped() {
    let directory = tempfile::tempdir().unwrap();
    let mut server = Server::start(directory.path(), "uring", &[]);
    create(&server, "held", r#"{"url":"http://127.0.0.1:9/never","enabled":false}"#);
    let text = common::ingest(&server, "held", br#"{"order":"<b>1</b>"}"#);
    let binary = {
        let response =
            server.request("POST", "/ingest/held", &[("Content-Type", "application/octet-stream")], &[0xff, 0, 1]);
        assert_eq!(response.status, 202, "{response:?}");
        response.json()["event_id"].as_str().unwrap().to_string()
    };
    let large_body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(40_000));
    let large = common::ingest(&server, "held", large_body.as_bytes());
    let check = |server: &Server| {
        let shown = server.admin("GET", &format!("/admin/events/{text}/payload"), "").json();
        assert_eq!(shown["preview"], r#"{"order":"<b>1</b>"}"#, "{shown}");
        assert_eq!((shown["encoding"].as_str(), shown["truncated"].as_bool()), (Some("utf-8"), Some(false)));
        assert_eq!(shown["content_type"], "application/json");
        let shown = server.admin("GET", &format!("/admin/events/{binary}/payload"), "").json();
        assert_eq!((shown["preview"].as_str(), shown["encoding"].as_str()), (Some("/wAB"), Some("base64")), "{shown}");
        let shown = server.admin("GET", &format!("/admin/events/{large}/payload"), "").json();
        assert_eq!(shown["payload_bytes"], large_body.len());
        assert_eq!(shown["truncated"], true);
        assert_eq!(shown["preview"].as_str().unwrap(), &large_body[..16 * 1024]);
    };
    check(&server);
    // After a restart the payloads come back from the log.
    assert_eq!(server.stop(), 0);
    server = Server::start(directory.path(), "uring", &[]);
    check(&server);
    let unknown = format!("evt_{}", "0".repeat(26));
    assert_eq!(server.admin("GET", &format!("/admin/events/{unknown}/payload"), "").code(), "E1004");

    create(&server, "subscriber", r#"{"url":"http://127.0.0.1:9/s","channels":["shop"],"enabled":false}"#);
    let published = server.request(
        "POST",
        "/publish/shop",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Content-Type", "application/json")],
        br#"{"type":"order.paid"}"#,
    );
    assert_eq!(published.status, 202, "{published:?}");
    let event_id = published.json()["event_id"].as_str().unwrap().to_string();
    let shown = server.admin("GET", &format!("/admin/events/{event_id}/payload"), "").json();
    assert_eq!(shown["preview"], r#"{"type":"order.paid"}"#, "{shown}");
}

// A client learns who its bearer is and what it may do; nobody unknown learns anything.
#[test]
fn the_session_names_the_bearer_and_its_scopes() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    let operator = server.admin("GET", "/admin/session", "").json();
    assert_eq!(operator["principal"], "operator");
    assert_eq!(operator["scopes"], serde_json::json!(["ingest", "read", "write"]));
    let created = server.admin("POST", "/admin/tenants/default/keys", r#"{"scopes":["ingest"]}"#).json();
    let key = created["key"].as_str().unwrap();
    let session = as_key(&server, "/admin/session", key).json();
    assert_eq!(session["principal"], "key");
    assert_eq!(
        (session["tenant_id"].as_str(), session["key_id"].clone()),
        (Some("default"), created["key_id"].clone())
    );
    assert_eq!(session["scopes"], serde_json::json!(["ingest"]));
    // Without `read` it can still ask what it is, and nothing else.
    assert_eq!(as_key(&server, "/admin/endpoints", key).code(), "E1001");
    let refused = as_key(&server, "/admin/session", "ksk_wrong");
    assert_eq!((refused.status, refused.code()), (401, "E1001".to_string()));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
}

// The document and the dashboard are served to anyone, from the binary itself, the dashboard
// under a policy that lets only its own files run; HEAD answers as GET does.
#[test]
fn the_document_and_the_dashboard_are_served_open() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    let document = server.request("GET", "/openapi.json", &[], b"");
    assert_eq!(document.status, 200);
    assert_eq!(document.body, std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap());
    assert_eq!(document.header("content-type"), Some("application/json"));
    for (path, file, content_type) in [
        ("/ui/", "index.html", "text/html"),
        ("/ui/app.js", "app.js", "text/javascript"),
        ("/ui/style.css", "style.css", "text/css"),
    ] {
        let response = server.request("GET", path, &[], b"");
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, std::fs::read(format!("{}/ui/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap());
        assert!(response.header("content-type").unwrap().starts_with(content_type), "{path}");
        let policy = response.header("content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        let head = server.request("HEAD", path, &[], b"");
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(head.header("content-length"), Some(response.body.len().to_string().as_str()));
    }
    let redirect = server.request("GET", "/ui", &[], b"");
    assert_eq!((redirect.status, redirect.header("location")), (308, Some("/ui/")));
    assert_eq!(server.request("GET", "/ui/missing.js", &[], b"").code(), "E1004");
    assert!(server.request("GET", "/ui/", &[], b"").header("date").is_some());
}
