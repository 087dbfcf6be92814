//! Ingest against the real binary over real TCP: round trip, idempotency across restarts, crash
//! safety under kill -9, graceful shutdown — under both io drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
        assert_eq!(event.json()["status"], "pending");
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
