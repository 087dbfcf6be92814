//! Event types, channels and fan-out against the real binary and real sinks on 127.0.0.1: one
//! publish reaches every subscribed endpoint whose patterns match, on every shard, with the same
//! `webhook-id`, each delivery on its own (retries, breaker, status, redrive); idempotent
//! publishes across restarts; and the all-or-none promise under `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::sink::{Reply, Sink};
use crate::common::{self, create, wait_event, wait_until, Server, DRIVERS};

const FAST_RETRY: &str =
    r#""retry":{"initial_delay_ms":100,"multiplier":2,"jitter":0,"max_attempts":50,"max_delay_ms":400}"#;

/// `count` endpoint ids starting with `prefix` owned by shard `shard` of two.
fn ids_on_shard(prefix: &str, shard: u64, count: usize) -> Vec<String> {
    (0..).map(|index| format!("{prefix}-{index}")).filter(|id| common::shard_of(id, 2) == shard).take(count).collect()
}

/// `POST /publish/{channel}` with the operator token (a publish needs it, or a key with `ingest`).
fn publish(server: &Server, channel: &str, headers: &[(&str, &str)], body: &[u8]) -> common::Response {
    let authorization = format!("Bearer {}", common::TOKEN);
    let mut headers = headers.to_vec();
    headers.push(("Authorization", &authorization));
    server.request("POST", &format!("/publish/{channel}"), &headers, body)
}

/// Deliveries the sink got, by the body they carried.
fn bodies(sink: &Sink) -> Vec<String> {
    sink.received().iter().map(|received| String::from_utf8_lossy(&received.body).into_owned()).collect()
}

// The contract's core: one publish, every matching subscriber on every shard gets it once with
// the publish's id as `webhook-id`; a dead one retries alone while the others are done; the
// event's view lists each delivery with its own status, the event's status the worst of them.
#[test]
fn fan_out_reaches_every_shard_and_a_dead_endpoint_retries_alone() {
    for driver in DRIVERS {
        let sink = Sink::start(|_, _| Reply::status(200));
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        let (on_zero, on_one) = (ids_on_shard("fan", 0, 2), ids_on_shard("fan", 1, 2));
        let (alive_zero, dead_zero, alive_one) = (&on_zero[0], &on_zero[1], &on_one[0]);
        let unmatched = &on_one[1];
        let url = |path: &str| sink.url(path);
        for (id, body) in [
            (alive_zero, format!(r#"{{"url":"{}","channels":["orders"]}}"#, url("/a"))),
            (
                alive_one,
                format!(r#"{{"url":"{}","channels":["orders","billing"],"event_types":["order.*"]}}"#, url("/b")),
            ),
            (dead_zero, format!(r#"{{"url":"http://127.0.0.1:9/dead","channels":["orders"],{FAST_RETRY}}}"#)),
            (unmatched, format!(r#"{{"url":"{}","channels":["orders"],"event_types":["invoice.*"]}}"#, url("/u"))),
        ] {
            create(&server, id, &body);
        }
        create(&server, "not-subscribed", &format!(r#"{{"url":"{}"}}"#, url("/n")));
        let response =
            publish(&server, "orders", &[("Content-Type", "application/json")], br#"{"type":"order.created","n":1}"#);
        assert_eq!(response.status, 202, "{driver}: {response:?}");
        let answer = response.json();
        assert_eq!((answer["status"].as_str(), answer["endpoints"].as_u64()), (Some("received"), Some(3)), "{answer}");
        let event_id = answer["event_id"].as_str().unwrap().to_string();
        let received = sink.wait_for("both live deliveries", common::WAIT, |received| received.len() >= 2);
        let paths: BTreeSet<&str> = received.iter().map(|received| received.path.as_str()).collect();
        assert_eq!(paths, BTreeSet::from(["/a", "/b"]), "{driver}: only the matching subscribers");
        for delivery in &received {
            assert_eq!(delivery.header("webhook-id"), Some(event_id.as_str()), "{driver}: the same id everywhere");
        }
        let event = wait_event(&server, &event_id, |event| {
            let deliveries = event["deliveries"].as_array().map_or(0, Vec::len);
            let dead = event["deliveries"]
                .as_array()
                .and_then(|all| all.iter().find(|delivery| delivery["endpoint_id"] == dead_zero.as_str()).cloned());
            deliveries == 3 && dead.is_some_and(|dead| dead["attempt_count"].as_u64().unwrap_or(0) >= 2)
        });
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["channel"], "orders");
        assert_eq!(event["status"], "retrying", "{driver}: the worst delivery's status: {event}");
        for delivery in event["deliveries"].as_array().unwrap() {
            let expected = if delivery["endpoint_id"] == dead_zero.as_str() { "retrying" } else { "delivered" };
            assert_eq!(delivery["status"], expected, "{driver}: {delivery}");
        }
        // The dead one's retries touch nobody else.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(sink.received().len(), 2, "{driver}: the live endpoints were not sent it again");
        // Listing by endpoint finds the delivery under the published event's id; by type and channel too.
        for query in [format!("endpoint_id={alive_one}"), "event_type=order.created".into(), "channel=orders".into()] {
            let page = server.admin("GET", &format!("/admin/events?{query}"), "").json();
            let ids: Vec<&str> =
                page["events"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
            assert!(ids.contains(&event_id.as_str()), "{driver}: {query}: {page}");
        }
        assert_eq!(server.stop(), 0);
    }
}

// Redrive one delivery of a published event: only that endpoint is sent it again, with the same
// `webhook-id`.
#[test]
fn one_delivery_is_redriven_alone() {
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    let (first, second) = (&ids_on_shard("re", 0, 1)[0], &ids_on_shard("re", 1, 1)[0]);
    create(&server, first, &format!(r#"{{"url":"{}","channels":["c"]}}"#, sink.url("/first")));
    create(&server, second, &format!(r#"{{"url":"{}","channels":["c"]}}"#, sink.url("/second")));
    let event_id = publish(&server, "c", &[], b"{}").json()["event_id"].as_str().unwrap().to_string();
    wait_event(&server, &event_id, |event| {
        event["status"] == "delivered" && event["deliveries"].as_array().map_or(0, Vec::len) == 2
    });
    let redrive = server.admin("POST", &format!("/admin/events/{event_id}/retry?endpoint_id={second}"), "");
    assert_eq!(redrive.status, 202, "{redrive:?}");
    let received = sink.wait_for("the redriven delivery", common::WAIT, |received| received.len() >= 3);
    let paths: Vec<&str> = received.iter().map(|received| received.path.as_str()).collect();
    assert_eq!(paths.iter().filter(|path| **path == "/second").count(), 2, "{paths:?}");
    assert_eq!(paths.iter().filter(|path| **path == "/first").count(), 1, "{paths:?}");
    assert!(received.iter().all(|received| received.header("webhook-id") == Some(event_id.as_str())));
    let unknown = server.admin("POST", &format!("/admin/events/{event_id}/retry?endpoint_id=nobody"), "");
    assert_eq!((unknown.status, unknown.code()), (404, "E1004".to_string()));
}

// Which subscribers a type reaches: exact names, prefixes with `*`, no patterns for every type,
// other channels never; and the type comes from the header, else the body's `type`, else its
// `event`, else `event`.
#[test]
fn patterns_and_types_choose_the_subscribers() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    let subscribers = [
        ("exact", r#"["order.created"]"#),
        ("prefix", r#"["order.*"]"#),
        ("everything", r#"[]"#),
        ("star", r#"["*"]"#),
        ("two", r#"["invoice.paid","payment.*"]"#),
    ];
    for (id, patterns) in subscribers {
        create(
            &server,
            id,
            &format!(
                r#"{{"url":"http://127.0.0.1:9/h","enabled":false,"channels":["shop"],"event_types":{patterns}}}"#
            ),
        );
    }
    create(&server, "elsewhere", r#"{"url":"http://127.0.0.1:9/h","enabled":false,"channels":["other"]}"#);
    // Headers, body, the type it gets, the subscribers it reaches.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a [&'a str]);
    let cases: &[Case] = &[
        (&[], r#"{"type":"order.created"}"#, "order.created", &["everything", "exact", "prefix", "star"]),
        (&[], r#"{"type":"order.shipped"}"#, "order.shipped", &["everything", "prefix", "star"]),
        (
            &[],
            r#"{"event":"payment.completed","data":{"type":"nested"}}"#,
            "payment.completed",
            &["everything", "star", "two"],
        ),
        (&[], r#"{"event":"x","type":"invoice.paid"}"#, "invoice.paid", &["everything", "star", "two"]),
        (
            &[("X-Event-Type", "order.created")],
            r#"{"type":"invoice.paid"}"#,
            "order.created",
            &["everything", "exact", "prefix", "star"],
        ),
        (&[], "not json", "event", &["everything", "star"]),
        (&[], r#"{"type":"has space"}"#, "event", &["everything", "star"]),
        (&[], r#"{"type":"orders"}"#, "orders", &["everything", "star"]),
    ];
    for (headers, body, expected_type, expected) in cases {
        let response = publish(&server, "shop", headers, body.as_bytes());
        assert_eq!(response.status, 202, "{body}: {response:?}");
        let answer = response.json();
        assert_eq!(answer["endpoints"].as_u64(), Some(expected.len() as u64), "{body}");
        let event = server.admin("GET", &format!("/admin/events/{}", answer["event_id"].as_str().unwrap()), "").json();
        assert_eq!(event["type"], *expected_type, "{body}");
        let reached: Vec<&str> =
            event["deliveries"].as_array().unwrap().iter().filter_map(|d| d["endpoint_id"].as_str()).collect();
        assert_eq!(&reached, expected, "{body}");
    }
    let nobody = publish(&server, "empty-channel", &[], b"{}");
    assert_eq!((nobody.status, nobody.json()["endpoints"].as_u64()), (202, Some(0)));
    let bad_type = publish(&server, "shop", &[("X-Event-Type", "bad type")], b"{}");
    assert_eq!((bad_type.status, bad_type.code()), (400, "E1005".to_string()));
    let bad_channel = publish(&server, "Shop", &[], b"{}");
    assert_eq!((bad_channel.status, bad_channel.code()), (400, "E1005".to_string()));
    let direct = server.request("POST", "/ingest/exact", &[("X-Event-Type", "order.created")], b"{}");
    assert_eq!(direct.status, 202);
    let direct_event =
        server.admin("GET", &format!("/admin/events/{}", direct.json()["event_id"].as_str().unwrap()), "");
    assert_eq!(direct_event.json()["type"], "order.created");
    let bad_direct = server.request("POST", "/ingest/exact", &[("X-Event-Type", "")], b"{}");
    assert_eq!((bad_direct.status, bad_direct.code()), (400, "E1005".to_string()));
}

// A repeated key on a channel answers the first publish, before and after a restart, and no
// endpoint gets the event twice; the same key on another channel is another publish.
#[test]
fn idempotent_publish_survives_a_restart() {
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    for id in [&ids_on_shard("key", 0, 1)[0], &ids_on_shard("key", 1, 1)[0]] {
        create(&server, id, &format!(r#"{{"url":"{}","channels":["orders","refunds"]}}"#, sink.url("/h")));
    }
    let keyed = [("X-Idempotency-Key", "order-77")];
    let first = publish(&server, "orders", &keyed, b"{}");
    assert_eq!(first.status, 202);
    let event_id = first.json()["event_id"].as_str().unwrap().to_string();
    let repeat = publish(&server, "orders", &keyed, b"{}");
    assert_eq!((repeat.status, repeat.json()["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(repeat.json()["event_id"].as_str(), Some(event_id.as_str()));
    let other_channel = publish(&server, "refunds", &keyed, b"{}");
    assert_eq!(other_channel.status, 202, "keys are scoped to their channel");
    sink.wait_for("four deliveries", common::WAIT, |received| received.len() >= 4);
    assert_eq!(server.stop(), 0);
    let server = Server::start(directory.path(), "legacy", &[]);
    let after = publish(&server, "orders", &keyed, b"{}");
    assert_eq!((after.status, after.json()["event_id"].as_str()), (200, Some(event_id.as_str())), "{after:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 4, "nothing delivered again");
}

// All or none under a crash: every publish that got a 202 reaches every matched endpoint after
// kill -9 and a restart, and a publish that got no answer reaches all of them or none.
#[test]
fn kill_9_during_publishes_leaves_all_or_none() {
    for driver in DRIVERS {
        let sink = Sink::start(|_, _| Reply::status(200));
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        let mut endpoints = ids_on_shard("crash", 0, 3);
        endpoints.extend(ids_on_shard("crash", 1, 3));
        for id in &endpoints {
            create(&server, id, &format!(r#"{{"url":"{}","channels":["load"]}}"#, sink.url(&format!("/{id}"))));
        }
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let address = server.address;
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let acknowledged = Arc::clone(&acknowledged);
                std::thread::spawn(move || {
                    for sequence in 0.. {
                        let body = format!(r#"{{"type":"load.tick","marker":"{writer}-{sequence}"}}"#);
                        let authorization = [("Authorization", format!("Bearer {}", common::TOKEN))];
                        let headers: Vec<(&str, &str)> = authorization.iter().map(|(n, v)| (*n, v.as_str())).collect();
                        match common::try_request(address, "POST", "/publish/load", &headers, body.as_bytes()) {
                            Ok(response) if response.status == 202 => {
                                acknowledged.lock().unwrap().insert(format!("{writer}-{sequence}"));
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + common::WAIT;
        while acknowledged.lock().unwrap().len() < 200 {
            assert!(Instant::now() < deadline, "{driver}: publishes too slow to reach 200");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        for writer in writers {
            writer.join().unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        let server = Server::start(directory.path(), driver, &[]);
        let marker = |body: &str| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["marker"].as_str().unwrap().to_string()
        };
        wait_until("every acknowledged publish at every endpoint", || {
            let mut reached: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for received in sink.received() {
                reached.entry(marker(&String::from_utf8_lossy(&received.body))).or_default().insert(received.path);
            }
            acknowledged.iter().all(|marker| reached.get(marker).is_some_and(|paths| paths.len() == endpoints.len()))
        });
        // Handoffs of unacknowledged publishes that made it to the log finish too; then all or none.
        wait_until("every handoff done", || common::metric(&server, "kapsel_publish_handoffs_pending") == 0.0);
        wait_until("nothing waiting", || common::metric(&server, "kapsel_events_waiting") == 0.0);
        let mut reached: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for received in sink.received() {
            reached.entry(marker(&String::from_utf8_lossy(&received.body))).or_default().insert(received.path);
        }
        for (marker, paths) in &reached {
            assert_eq!(paths.len(), endpoints.len(), "{driver}: publish {marker} reached a subset: {paths:?}");
        }
        assert!(bodies(&sink).len() >= acknowledged.len() * endpoints.len());
        assert_eq!(server.stop(), 0);
    }
}
