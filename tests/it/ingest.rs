//! Ingest against the real binary over real TCP: round trip, idempotency across restarts, crash
//! safety under kill -9, graceful shutdown — under both io drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, DRIVERS};

// The basic promise: a 202 with an event id, and the event can be looked up afterwards.
#[test]
fn ingest_round_trip() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        server.create_endpoint("orders");
        let response =
            server.request("POST", "/ingest/orders", &[("Content-Type", "application/json")], br#"{"id":1}"#);
        assert_eq!(response.status, 202, "{driver}: {response:?}");
        let body = response.json();
        assert_eq!(body["status"], "received");
        let event_id = body["event_id"].as_str().unwrap().to_string();
        assert!(event_id.starts_with("evt_"));
        let event = server.admin("GET", &format!("/admin/events/{event_id}"), "");
        assert_eq!(event.status, 200, "{event:?}");
        // The endpoint's destination refuses connections, so the event is on its way, not done.
        let status = event.json()["status"].as_str().unwrap().to_string();
        assert!(["pending", "delivering", "retrying"].contains(&status.as_str()), "{status}");
        assert_eq!(event.json()["endpoint_id"], "orders");
        let unknown = server.request("POST", "/ingest/nobody", &[], b"{}");
        assert_eq!((unknown.status, unknown.code()), (404, "E1004".to_string()));
        assert_eq!(server.stop(), 0, "graceful shutdown exits 0");
    }
}

// Idempotency must hold across a restart: the key is rebuilt from the log.
#[test]
fn idempotency_survives_restart() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let key = [("X-Idempotency-Key", "order-42")];
        let first_id = {
            let server = Server::start(directory.path(), driver, &[]);
            server.create_endpoint("orders");
            let first = server.request("POST", "/ingest/orders", &key, b"{}");
            assert_eq!(first.status, 202);
            let repeat = server.request("POST", "/ingest/orders", &key, b"{\"other\":1}");
            assert_eq!(repeat.status, 200);
            assert_eq!(repeat.json()["status"], "duplicate");
            assert_eq!(repeat.json()["event_id"], first.json()["event_id"]);
            assert_eq!(server.stop(), 0);
            first.json()["event_id"].as_str().unwrap().to_string()
        };
        let server = Server::start(directory.path(), driver, &[]);
        let again = server.request("POST", "/ingest/orders", &key, b"{}");
        assert_eq!((again.status, again.json()["event_id"].as_str().unwrap()), (200, first_id.as_str()), "{driver}");
        let fresh = server.request("POST", "/ingest/orders", &[("X-Idempotency-Key", "order-43")], b"{}");
        assert_eq!(fresh.status, 202);
        let bad_key = server.request("POST", "/ingest/orders", &[("X-Idempotency-Key", &"k".repeat(256))], b"{}");
        assert_eq!((bad_key.status, bad_key.code()), (400, "E1005".to_string()));
    }
}

// The core promise under a crash: every event that got a 202 is still there after kill -9.
#[test]
fn every_acknowledged_event_survives_kill_9() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        let endpoints: Vec<String> = (0..4).map(|index| format!("endpoint-{index}")).collect();
        for endpoint in &endpoints {
            server.create_endpoint(endpoint);
        }
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let address = server.address;
        let writers: Vec<_> = (0..16)
            .map(|writer| {
                let (acknowledged, endpoint) = (Arc::clone(&acknowledged), endpoints[writer % 4].clone());
                std::thread::spawn(move || {
                    let path = format!("/ingest/{endpoint}");
                    // Keep sending until the server dies; record every 202.
                    while let Ok(response) = common::try_request(address, "POST", &path, &[], &[b'x'; 512]) {
                        if response.status == 202 {
                            let id = response.json()["event_id"].as_str().unwrap().to_string();
                            acknowledged.lock().unwrap().push(id);
                        }
                    }
                })
            })
            .collect();
        // Wait until a good number of events were acknowledged, then crash the server.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < 300 {
            assert!(std::time::Instant::now() < deadline, "ingest too slow to reach 300 events");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        for writer in writers {
            writer.join().unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        let server = Server::start(directory.path(), driver, &[]);
        for id in &acknowledged {
            let event = server.admin("GET", &format!("/admin/events/{id}"), "");
            assert_eq!(event.status, 200, "{driver}: acknowledged event {id} lost after kill -9");
        }
    }
}

/// Signs like a Standard Webhooks sender: `v1,base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))`.
fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

// An endpoint with an ingest secret accepts only correctly signed, fresh webhooks.
#[test]
fn signed_ingest_is_verified() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let created = server.admin(
        "PUT",
        "/admin/endpoints/signed",
        &format!(r#"{{"url":"https://example.com/h","ingest_secret":"{secret}"}}"#),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let body = br#"{"amount":10}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let good = sign(secret, "msg_1", now, body);
    let timestamp = now.to_string();
    let signed = |signature: &str, timestamp: &str| {
        server.request(
            "POST",
            "/ingest/signed",
            &[("webhook-id", "msg_1"), ("webhook-timestamp", timestamp), ("webhook-signature", signature)],
            body,
        )
    };
    assert_eq!(signed(&good, &timestamp).status, 202);
    let unsigned = server.request("POST", "/ingest/signed", &[], body);
    assert_eq!((unsigned.status, unsigned.code()), (401, "E1001".to_string()));
    let tampered = sign(secret, "msg_1", now, b"{}");
    assert_eq!(signed(&tampered, &timestamp).code(), "E1001");
    let stale = now - 600;
    assert_eq!(signed(&sign(secret, "msg_1", stale, body), &stale.to_string()).code(), "E1001");
    assert_eq!(signed(&format!("v1,AAAA {good}"), &timestamp).status, 202, "any valid signature in the list");
}

// A rate-limited endpoint answers 429 E1003 with Retry-After once its budget is spent.
#[test]
fn rate_limit_answers_429_with_retry_after() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    let created = server.admin(
        "PUT",
        "/admin/endpoints/slow",
        &common::open_ingest(r#"{"url":"https://example.com/h","rate_limit_per_s":2}"#),
    );
    assert_eq!(created.status, 201);
    let statuses: Vec<u16> = (0..4).map(|_| server.request("POST", "/ingest/slow", &[], b"{}").status).collect();
    assert_eq!(&statuses[..2], &[202, 202]);
    let limited = server.request("POST", "/ingest/slow", &[], b"{}");
    assert_eq!((limited.status, limited.code()), (429, "E1003".to_string()));
    assert!(limited.header("Retry-After").is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1));
}

// The endpoint lifecycle through the admin API: create (generated id), read, replace, delete,
// and it all survives a restart.
#[test]
fn endpoint_lifecycle_persists() {
    let directory = tempfile::tempdir().unwrap();
    let generated_id = {
        let server = Server::start(directory.path(), "uring", &[]);
        let created = server.admin("POST", "/admin/endpoints", r#"{"url":"https://example.com/a","max_in_flight":4}"#);
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.json()["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("ep_"));
        let secret = created.json()["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_"));
        let replaced = server.admin("PUT", &format!("/admin/endpoints/{id}"), r#"{"url":"https://example.com/b"}"#);
        assert_eq!(replaced.status, 200);
        assert_eq!(replaced.json()["secret"], secret.as_str(), "a replace without a secret keeps it");
        server.create_endpoint("doomed");
        assert_eq!(server.admin("DELETE", "/admin/endpoints/doomed", "").status, 204);
        assert_eq!(server.admin("GET", "/admin/endpoints/doomed", "").status, 404);
        assert_eq!(server.stop(), 0);
        id
    };
    let server = Server::start(directory.path(), "legacy", &[]);
    let endpoint = server.admin("GET", &format!("/admin/endpoints/{generated_id}"), "");
    assert_eq!(endpoint.status, 200);
    let json = endpoint.json();
    assert_eq!(json["url"], "https://example.com/b");
    assert_eq!(json["circuit_state"], "closed");
    assert_eq!((json["queue_depth"].as_u64(), json["in_flight"].as_u64()), (Some(0), Some(0)));
    assert_eq!(server.admin("GET", "/admin/endpoints/doomed", "").code(), "E1004");
    assert_eq!(server.request("POST", "/ingest/doomed", &[], b"{}").status, 404);
}

// Endpoints hash to different shards and connections land on any shard: every ingest must reach
// its owner, and every event must be found from any connection.
#[test]
fn requests_reach_their_owner_shard_from_any_connection() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[("KAPSEL_SHARDS", "2")]);
    let endpoints: Vec<String> = (0..8).map(|index| format!("tenant-{index}")).collect();
    for endpoint in &endpoints {
        server.create_endpoint(endpoint);
    }
    let mut ids = Vec::new();
    for round in 0..5 {
        for endpoint in &endpoints {
            let response = server.request("POST", &format!("/ingest/{endpoint}"), &[], format!("{round}").as_bytes());
            assert_eq!(response.status, 202);
            ids.push((endpoint.clone(), response.json()["event_id"].as_str().unwrap().to_string()));
        }
    }
    for (endpoint, id) in &ids {
        let event = server.admin("GET", &format!("/admin/events/{id}"), "");
        assert_eq!(event.json()["endpoint_id"], endpoint.as_str());
    }
    let unique: std::collections::HashSet<&String> = ids.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), ids.len(), "event ids are unique across shards");
}
