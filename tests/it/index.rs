//! The Postgres index against a real private PostgreSQL and the real binary: rows equal the
//! engine's state after a mixed load (published events and their deliveries included), exact
//! catch-up after a Postgres outage and after a Kapsel crash, the admin queries served from it
//! (every filter, cursor pages), and delivery rows that end the same whichever shard's records
//! are indexed first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, create, ingest_keyed, wait_event, wait_until};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::sink::{Reply, Sink};
use common::Server;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn start(directory: &std::path::Path, url: &str) -> Server {
    Server::start(directory, "uring", &[("DATABASE_URL", url), ("DATABASE_MAX_CONNECTIONS", "4")])
}

/// A private PostgreSQL with database `name`, and Kapsel indexing into it with an endpoint
/// `load` whose deliveries are paused.
fn paused_load(name: &str) -> Option<(Postgres, String, tempfile::TempDir, Server)> {
    let postgres = Postgres::start()?;
    let url = postgres.database(name);
    let directory = tempfile::tempdir().unwrap();
    let server = start(directory.path(), &url);
    create(&server, "load", r#"{"url":"http://127.0.0.1:9/paused","enabled":false}"#);
    Some((postgres, url, directory, server))
}

fn readiness(server: &Server) -> Value {
    let response = server.request("GET", "/readyz", &[], b"");
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

/// Waits until the index holds everything the logs hold (`/readyz` reports the lag).
fn wait_indexed(server: &Server) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = readiness(server);
        if ready["index"]["state"] == "connected" && ready["index"]["lag_records"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the index never caught up: {ready}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kapsel_index_passes_total` of `GET /metrics`.
fn index_passes(server: &Server) -> u64 {
    let text = String::from_utf8(server.request("GET", "/metrics", &[], b"").body).unwrap();
    text.lines().find_map(|line| line.strip_prefix("kapsel_index_passes_total ")?.parse().ok()).unwrap_or(0)
}

/// Every indexed event ingested for an endpoint: id → (endpoint, status, attempt count, key,
/// payload bytes, attempt rows).
fn indexed_events(postgres: &Postgres, database: &str) -> BTreeMap<String, (String, String, i64, String, i64, i64)> {
    let output = postgres.psql(
        database,
        "SELECT e.id, e.endpoint_id, e.status, e.attempt_count, coalesce(e.idempotency_key, ''), e.payload_bytes,
                (SELECT count(*) FROM attempts a WHERE a.event_id = e.id)
         FROM events e WHERE e.endpoint_id IS NOT NULL ORDER BY e.id",
    );
    output
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 7, "{line}");
            (
                fields[0].to_string(),
                (
                    fields[1].to_string(),
                    fields[2].to_string(),
                    fields[3].parse().unwrap(),
                    fields[4].to_string(),
                    fields[5].parse().unwrap(),
                    fields[6].parse().unwrap(),
                ),
            )
        })
        .collect()
}

fn count(postgres: &Postgres, database: &str, sql: &str) -> usize {
    postgres.psql(database, sql).parse().unwrap()
}

/// The first endpoint id starting with `prefix` owned by shard `shard` of two.
fn id_on_shard(prefix: &str, shard: u64) -> String {
    (0..).map(|index| format!("{prefix}-{index}")).find(|id| common::shard_of(id, 2) == shard).unwrap()
}

/// Publishes `{"type":…,"n":…}` to `channel` (with a key when given); the event id.
fn publish(server: &Server, channel: &str, event_type: &str, n: usize, key: Option<&str>) -> String {
    let authorization = format!("Bearer {}", common::TOKEN);
    let mut headers = vec![("Content-Type", "application/json"), ("Authorization", authorization.as_str())];
    if let Some(key) = key {
        headers.push(("X-Idempotency-Key", key));
    }
    let body = format!(r#"{{"type":"{event_type}","n":{n}}}"#);
    let response = server.request("POST", &format!("/publish/{channel}"), &headers, body.as_bytes());
    assert_eq!(response.status, 202, "{response:?}");
    response.json()["event_id"].as_str().unwrap().to_string()
}

/// An event's JSON without what only one side knows: the index adds `delivered_at` and
/// `trace_id`; only memory knows why an event waits and how its last response began.
fn comparable(event: &Value) -> Value {
    let mut event = event.clone();
    let object = event.as_object_mut().unwrap();
    for key in ["delivered_at", "trace_id", "waiting_reason", "last_response_excerpt"] {
        object.remove(key);
    }
    for delivery in object.get_mut("deliveries").and_then(Value::as_array_mut).into_iter().flatten() {
        let delivery = delivery.as_object_mut().unwrap();
        delivery.remove("waiting_reason");
        delivery.remove("last_response_excerpt");
        strip_excerpts(delivery.get_mut("attempts"));
    }
    strip_excerpts(object.get_mut("attempts"));
    event
}

/// Memory keeps the last failed attempt's excerpt only, the index every attempt's.
fn strip_excerpts(attempts: Option<&mut Value>) {
    for attempt in attempts.and_then(Value::as_array_mut).into_iter().flatten() {
        attempt.as_object_mut().unwrap().remove("response_excerpt");
    }
}

/// A page of `GET /admin/events?{query}`, which must come from the index.
fn listed(server: &Server, query: &str) -> Vec<Value> {
    let page = server.admin("GET", &format!("/admin/events?{query}"), "");
    assert_eq!(page.status, 200, "{query}: {page:?}");
    let page = page.json();
    assert_eq!(page["source"], "index", "{query}");
    page["events"].as_array().unwrap().clone()
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|event| event["event_id"].as_str().unwrap().to_string()).collect()
}

/// True when a published event's view lists `count` deliveries, each delivered or failed.
fn settled(event: &Value, count: usize) -> bool {
    let deliveries = event["deliveries"].as_array().map_or(&[][..], Vec::as_slice);
    deliveries.len() == count
        && deliveries.iter().all(|delivery| matches!(delivery["status"].as_str(), Some("delivered" | "failed")))
}

// After ingest, deliveries, retries, permanent failures, an operator's requeue and an endpoint
// deletion, the index holds exactly the engine's events in the engine's states.
#[test]
fn index_rows_equal_engine_state_after_a_mixed_load() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.database("mixed");
    // Path /flaky fails each event's first attempt; /broken always answers 400.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let seen_by_sink = Arc::clone(&seen);
    let sink = Sink::start(move |_, request| {
        if request.path.starts_with("/broken") {
            return Reply::status(400);
        }
        let id = request.header("webhook-id").unwrap_or_default().to_string();
        if request.path.starts_with("/flaky") && seen_by_sink.lock().unwrap().insert(id) {
            return Reply::status(503);
        }
        Reply::status(200)
    });
    let directory = tempfile::tempdir().unwrap();
    let server = start(directory.path(), &url);
    // Fast retries, and breakers that stay closed: this test is about the index, not isolation.
    let retry = r#""retry":{"initial_delay_ms":10,"max_delay_ms":20,"jitter":0},"circuit":{"consecutive_failures":1000,"window":1000}"#;
    create(&server, "good", &format!(r#"{{"url":"{}"}}"#, sink.url("/good")));
    create(&server, "flaky", &format!(r#"{{"url":"{}",{retry}}}"#, sink.url("/flaky")));
    create(&server, "broken", &format!(r#"{{"url":"{}",{retry}}}"#, sink.url("/broken")));
    // `doomed` (paused) also subscribes to channel `news`, and is deleted with its deliveries.
    create(&server, "doomed", r#"{"url":"http://127.0.0.1:9/never","enabled":false,"channels":["news"]}"#);
    // Subscribers of `news` on both shards: one takes every type, one only `order.*`, and a dead
    // one fails every delivery.
    let (every_type, orders_only, dead) = (id_on_shard("sub", 0), id_on_shard("sub", 1), id_on_shard("dead", 1));
    create(&server, &every_type, &format!(r#"{{"url":"{}","channels":["news"]}}"#, sink.url("/sub")));
    let orders = format!(r#"{{"url":"{}","channels":["news"],"event_types":["order.*"]}}"#, sink.url("/sub"));
    create(&server, &orders_only, &orders);
    create(&server, &dead, &format!(r#"{{"url":"http://127.0.0.1:9/dead","channels":["news"],{retry}}}"#));
    let mut ids = BTreeSet::new();
    let mut by_endpoint: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for n in 0..60 {
        let endpoint = ["good", "flaky", "broken"][n % 3];
        let key = format!("key-{n}");
        let id =
            ingest_keyed(&server, endpoint, (n % 2 == 0).then_some(key.as_str()), format!("{{\"n\":{n}}}").as_bytes());
        ids.insert(id.clone());
        by_endpoint.entry(endpoint).or_default().insert(id);
    }
    // A repeated key is not a new event.
    assert!(ids.contains(&ingest_keyed(&server, "good", Some("key-0"), b"{}")));
    let mut published: BTreeMap<String, &str> = BTreeMap::new();
    for n in 0..6 {
        let event_type = ["order.created", "invoice.paid"][n % 2];
        let key = format!("publish-{n}");
        published.insert(publish(&server, "news", event_type, n, (n % 3 == 0).then_some(key.as_str())), event_type);
    }
    let authorization = format!("Bearer {}", common::TOKEN);
    let again = server.request(
        "POST",
        "/publish/news",
        &[("X-Idempotency-Key", "publish-0"), ("Authorization", &authorization)],
        b"{}",
    );
    assert_eq!(again.status, 200, "a repeated key is not a new publish: {again:?}");
    assert!(published.contains_key(again.json()["event_id"].as_str().unwrap()));
    for _ in 0..5 {
        ingest_keyed(&server, "doomed", None, b"{}");
    }
    let terminal = |event: &Value| matches!(event["status"].as_str(), Some("delivered" | "failed"));
    wait_until("every event delivered or failed", || {
        ids.iter().all(|id| terminal(&server.admin("GET", &format!("/admin/events/{id}"), "").json()))
    });
    let requeued = ids
        .iter()
        .find(|id| server.admin("GET", &format!("/admin/events/{id}"), "").json()["status"] == "failed")
        .unwrap()
        .clone();
    sink.set_script(|_, _| Reply::status(200));
    assert_eq!(server.admin("POST", &format!("/admin/events/{requeued}/retry"), "").status, 202);
    wait_until("the requeued event delivered", || {
        server.admin("GET", &format!("/admin/events/{requeued}"), "").json()["status"] == "delivered"
    });
    assert_eq!(server.admin("DELETE", "/admin/endpoints/doomed", "").status, 204);
    // Orders reach all three live subscribers, invoices two; the dead one fails every one.
    let deliveries_of = |event_type: &str| if event_type == "order.created" { 3 } else { 2 };
    let mut from_memory = BTreeMap::new();
    for (id, event_type) in &published {
        let event = wait_event(&server, id, |event| settled(event, deliveries_of(event_type)));
        from_memory.insert(id.clone(), event);
    }
    wait_indexed(&server);

    let rows = indexed_events(&postgres, "mixed");
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), ids, "exactly the engine's events");
    for (id, (endpoint, status, attempt_count, key, payload_bytes, attempt_rows)) in &rows {
        let event = server.admin("GET", &format!("/admin/events/{id}"), "").json();
        assert_eq!(event["endpoint_id"], endpoint.as_str(), "{id}");
        assert_eq!(event["status"], status.as_str(), "{id}");
        assert_eq!(event["attempt_count"], *attempt_count, "{id}");
        assert_eq!(event["idempotency_key"].as_str().unwrap_or(""), key, "{id}");
        assert_eq!(event["payload_bytes"], *payload_bytes, "{id}");
        assert_eq!(event["attempts"].as_array().unwrap().len() as i64, *attempt_rows, "{id}");
    }
    assert!(rows.values().any(|row| row.1 == "failed") && rows.values().any(|row| row.2 >= 2));
    assert_eq!(rows[&requeued].1, "delivered");
    assert_eq!(count(&postgres, "mixed", "SELECT count(*) FROM endpoints WHERE deleted"), 1);
    // The index answers the same as memory for a page of everything: each direct event with its
    // type, each published event once, with its deliveries.
    let everything = listed(&server, "limit=1000");
    assert_eq!(everything.len(), ids.len() + published.len());
    for event in &everything {
        let id = event["event_id"].as_str().unwrap();
        let memory = match from_memory.get(id) {
            Some(memory) => memory.clone(),
            None => server.admin("GET", &format!("/admin/events/{id}"), "").json(),
        };
        assert_eq!(comparable(event), comparable(&memory), "{id}: the index and memory differ");
    }
    assert_published_rows(&postgres, "mixed", &from_memory);

    // Filters on types, channels and deliveries, from the index.
    let ids_of = |query: &str| {
        listed(&server, &format!("{query}&limit=1000"))
            .iter()
            .map(|event| event["event_id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    let of_type = |wanted: &str| {
        published
            .iter()
            .filter(|(_, event_type)| **event_type == wanted)
            .map(|(id, _)| id.clone())
            .collect::<BTreeSet<_>>()
    };
    let all_published: BTreeSet<String> = published.keys().cloned().collect();
    assert_eq!(ids_of("channel=news"), all_published);
    assert_eq!(ids_of("event_type=order.created"), of_type("order.created"));
    assert_eq!(ids_of("event_type=invoice.paid&channel=news"), of_type("invoice.paid"));
    assert_eq!(ids_of("event_type=event"), ids, "a direct event without a type has the default one");
    assert_eq!(ids_of(&format!("endpoint_id={orders_only}")), of_type("order.created"), "a delivery's endpoint");
    assert_eq!(ids_of(&format!("endpoint_id={dead}")), all_published);
    assert_eq!(ids_of(&format!("endpoint_id={every_type}&event_type=invoice.paid")), of_type("invoice.paid"));
    assert_eq!(ids_of("endpoint_id=doomed"), BTreeSet::new(), "a deleted endpoint's deliveries are gone");
    assert_eq!(ids_of("endpoint_id=good"), by_endpoint["good"], "an endpoint's own events");
    assert_eq!(ids_of("status=failed&channel=news"), all_published, "a published event's status is its worst");
    assert_eq!(ids_of("status=delivered&channel=news"), BTreeSet::new());
    assert_eq!(ids_of("channel=elsewhere"), BTreeSet::new());
    // Cursor pages over a delivery's endpoint: each published event once, newest first.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = server.admin("GET", &format!("/admin/events?endpoint_id={dead}&limit=4{cursor}"), "").json();
        paged.extend(event_ids(page["events"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all_published.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(server.stop(), 0);
}

/// The index's delivery rows for `published` (id → the engine's view): every one made or taken
/// over by the shard that delivers it, as many as the engine shows, each with all its attempts.
fn assert_published_rows(postgres: &Postgres, database: &str, published: &BTreeMap<String, Value>) {
    assert_eq!(
        count(postgres, database, "SELECT count(*) FROM deliveries WHERE lsn IS NULL"),
        0,
        "no placeholder left"
    );
    for (id, event) in published {
        let deliveries = event["deliveries"].as_array().unwrap();
        let rows = count(postgres, database, &format!("SELECT count(*) FROM deliveries WHERE event_id = '{id}'"));
        assert_eq!(rows, deliveries.len(), "{id}");
        let attempts: u64 = deliveries.iter().map(|delivery| delivery["attempt_count"].as_u64().unwrap()).sum();
        let attempt_rows = count(
            postgres,
            database,
            &format!(
                "SELECT count(*) FROM attempts
                 WHERE event_id IN (SELECT delivery_id FROM deliveries WHERE event_id = '{id}')"
            ),
        );
        assert_eq!(attempt_rows as u64, attempts, "{id}");
    }
}

/// Ingests from `threads` connections until `stop`; returns every acknowledged event id.
fn ingest_load(server: &Server, stop: &Arc<AtomicBool>, threads: usize) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|thread| {
            let (address, stop) = (server.address, Arc::clone(stop));
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    match common::try_request(address, "POST", "/ingest/load", &[], format!("{thread}").as_bytes()) {
                        Ok(response) if response.status == 202 => {
                            acknowledged.push(response.json()["event_id"].as_str().unwrap().to_string());
                        }
                        Ok(response) => panic!("an ingest failed: {response:?}"),
                        // Killed mid-request: the answer never came, so nothing was promised.
                        Err(_) => return acknowledged,
                    }
                }
                acknowledged
            })
        })
        .collect()
}

fn indexed_ids(postgres: &Postgres, database: &str) -> Vec<String> {
    postgres.psql(database, "SELECT id FROM events ORDER BY id").lines().map(str::to_string).collect()
}

// Postgres stops in the middle of a load and comes back: no ingest fails meanwhile, queries that
// need it answer 503 E3001, and the index then holds exactly the acknowledged events.
#[test]
fn index_catches_up_exactly_after_a_postgres_outage() {
    let Some((postgres, _url, _directory, server)) = paused_load("outage") else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let load = ingest_load(&server, &stop, 4);
    wait_until("some events indexed", || readiness(&server)["index"]["rows_indexed"].as_u64() > Some(100));
    postgres.stop_server();
    wait_until("the outage noticed", || readiness(&server)["index"]["state"] == "unavailable");
    let refused = server.admin("GET", "/admin/events", "");
    assert_eq!((refused.status, refused.code()), (503, "E3001".to_string()), "{refused:?}");
    let lag_before = readiness(&server)["index"]["lag_records"].as_u64().unwrap();
    wait_until("events acknowledged during the outage", || {
        readiness(&server)["index"]["lag_records"].as_u64().unwrap() > lag_before + 200
    });
    postgres.start_server();
    // The load goes on while the index reconnects and catches up.
    wait_until("the index reconnected", || readiness(&server)["index"]["state"] == "connected");
    stop.store(true, Ordering::Release);
    let mut acknowledged: Vec<String> = load.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    wait_indexed(&server);
    acknowledged.sort();
    let indexed = indexed_ids(&postgres, "outage");
    assert_eq!(indexed.len(), acknowledged.len(), "no missing and no duplicate rows");
    assert_eq!(indexed, acknowledged);
    let sample = &acknowledged[acknowledged.len() / 2];
    let event = server.admin("GET", &format!("/admin/events/{sample}"), "").json();
    let row = postgres
        .psql("outage", &format!("SELECT endpoint_id, status, payload_bytes FROM events WHERE id = '{sample}'"));
    assert_eq!(row, format!("load|{}|{}", event["status"].as_str().unwrap(), event["payload_bytes"]));
    assert_eq!(server.admin("GET", "/admin/events?limit=1", "").status, 200);
    assert_eq!(server.stop(), 0);
}

// Kapsel is killed while the index is behind; on restart the index resumes from its
// checkpoint and ends with every acknowledged event exactly once.
#[test]
fn a_restart_mid_indexing_resumes_from_the_checkpoint_without_duplicates() {
    let Some((postgres, url, directory, server)) = paused_load("restart") else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let load = ingest_load(&server, &stop, 8);
    wait_until("indexing under way", || readiness(&server)["index"]["rows_indexed"].as_u64() > Some(500));
    server.kill();
    let mut acknowledged: Vec<String> = load.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    let indexed_at_kill = count(&postgres, "restart", "SELECT count(*) FROM events");
    let server = start(directory.path(), &url);
    for n in 0..50 {
        acknowledged.push(ingest_keyed(&server, "load", None, format!("{n}").as_bytes()));
    }
    wait_indexed(&server);
    acknowledged.sort();
    let indexed = indexed_ids(&postgres, "restart");
    assert!(indexed_at_kill < indexed.len());
    // A record made durable but never answered (killed mid-request) is indexed too: the log is
    // the truth. Every acknowledged one must be there, each exactly once.
    let unique: BTreeSet<&String> = indexed.iter().collect();
    assert_eq!(unique.len(), indexed.len(), "no duplicates");
    assert!(acknowledged.iter().all(|id| unique.contains(id)), "every acknowledged event is indexed");
    let checkpoints = postgres.psql("restart", "SELECT sum(lsn) FROM checkpoints");
    let records = count(&postgres, "restart", "SELECT count(*) FROM events") + 1;
    assert_eq!(checkpoints.parse::<usize>().unwrap(), records, "checkpoints cover exactly the records (+1 endpoint)");
    assert_eq!(server.stop(), 0);
}

// Every filter of GET /admin/events from the index, cursor pages that stay stable while new
// events arrive, and GET /admin/events/{id} answered from the index once memory forgot it.
#[test]
fn queries_filter_and_page_from_the_index() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.database("queries");
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server =
        Server::start(directory.path(), "uring", &[("DATABASE_URL", &url), ("KAPSEL_TERMINAL_EVENTS_IN_MEMORY", "5")]);
    create(&server, "delivered", &format!(r#"{{"url":"{}"}}"#, sink.url("/")));
    create(&server, "waiting", r#"{"url":"http://127.0.0.1:9/paused","enabled":false}"#);
    let mut delivered = Vec::new();
    let mut waiting = Vec::new();
    for n in 0..20 {
        delivered.push(ingest_keyed(&server, "delivered", Some(&format!("d&{n}")), b"{}"));
        waiting.push(ingest_keyed(&server, "waiting", None, b"{}"));
    }
    let middle = server.admin("GET", &format!("/admin/events/{}", waiting[10]), "").json()["received_at"]
        .as_str()
        .unwrap()
        .to_string();
    // The next events must be received in a later millisecond than `middle`.
    let middle_ms = kapsel_engine::clock::parse_rfc3339(&middle).unwrap();
    wait_until("the clock past the middle event", || kapsel_engine::clock::now_ms() > middle_ms);
    for n in 20..25 {
        waiting.push(ingest_keyed(&server, "waiting", None, format!("{n}").as_bytes()));
    }
    sink.wait_for("every delivery", WAIT, |received| received.len() >= 20);
    wait_until("deliveries recorded", || {
        let page = server.admin("GET", "/admin/events?status=delivered&limit=100", "").json();
        page["events"].as_array().is_some_and(|events| events.len() == 20)
    });
    wait_indexed(&server);
    let ids_of = |query: &str| -> Vec<String> {
        let page = server.admin("GET", &format!("/admin/events?{query}"), "");
        assert_eq!(page.status, 200, "{query}: {page:?}");
        let page = page.json();
        assert_eq!(page["source"], "index");
        page["events"].as_array().unwrap().iter().map(|event| event["event_id"].as_str().unwrap().to_string()).collect()
    };
    let newest_first = |ids: &[String]| ids.iter().rev().cloned().collect::<Vec<_>>();
    assert_eq!(ids_of("endpoint_id=delivered&limit=100"), newest_first(&delivered));
    assert_eq!(ids_of("status=delivered&limit=100"), newest_first(&delivered));
    assert_eq!(ids_of("status=pending&limit=100"), newest_first(&waiting));
    assert_eq!(ids_of("status=failed"), Vec::<String>::new());
    assert_eq!(ids_of("idempotency_key=d%267"), vec![delivered[7].clone()]);
    assert_eq!(ids_of("idempotency_key=d%267&endpoint_id=waiting"), Vec::<String>::new());
    let encoded = middle.replace(':', "%3A");
    let after = ids_of(&format!("endpoint_id=waiting&received_after={encoded}&limit=100"));
    let before = ids_of(&format!("endpoint_id=waiting&received_before={middle}&limit=100"));
    assert!(after.contains(&waiting[10]) && !before.contains(&waiting[10]), "after is inclusive, before exclusive");
    assert_eq!(after.len() + before.len(), waiting.len(), "the two windows split the events exactly");
    assert!(after.contains(&waiting[24]) && before.contains(&waiting[0]));
    let bad = server.admin("GET", "/admin/events?received_after=yesterday", "");
    assert_eq!((bad.status, bad.code()), (400, "E1005".to_string()));

    // Cursor pages over everything, with new events arriving between pages.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("/admin/events?limit=7&cursor={cursor}"),
            None => "/admin/events?limit=7".to_string(),
        };
        let page = server.admin("GET", &query, "").json();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 7);
        paged.extend(events.iter().map(|event| event["event_id"].as_str().unwrap().to_string()));
        ingest_keyed(&server, "waiting", None, b"{\"late\":true}");
        wait_indexed(&server);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut all: Vec<String> = delivered.iter().chain(&waiting).cloned().collect();
    all.sort();
    all.reverse();
    assert_eq!(paged, all, "every event once, newest first, none of the late arrivals");

    // Memory keeps 5 terminal events per shard; the oldest delivered ones come from the index.
    let oldest = server.admin("GET", &format!("/admin/events/{}", delivered[0]), "");
    assert_eq!(oldest.status, 200, "{oldest:?}");
    let oldest = oldest.json();
    assert_eq!(oldest["status"], "delivered");
    assert_eq!(oldest["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(oldest["attempts"][0]["status_code"], 200);
    let unknown = server.admin("GET", "/admin/events/evt_00000000000000000000000000", "");
    assert_eq!((unknown.status, unknown.code()), (404, "E1004".to_string()));
    // With Postgres gone, only queries that need it fail.
    postgres.stop_server();
    wait_until("the outage noticed", || readiness(&server)["index"]["state"] == "unavailable");
    let refused = server.admin("GET", &format!("/admin/events/{}", delivered[0]), "");
    assert_eq!((refused.status, refused.code()), (503, "E3001".to_string()), "{refused:?}");
    let recent = server.admin("GET", &format!("/admin/events/{}", waiting[24]), "");
    assert_eq!(recent.status, 200, "events in memory need no index");
    assert_eq!(server.stop(), 0);
}

// Without DATABASE_URL the same filters work on the engine's memory, and say so.
#[test]
fn without_an_index_queries_answer_from_memory_and_say_so() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    create(&server, "waiting", r#"{"url":"http://127.0.0.1:9/paused","enabled":false}"#);
    let first = ingest_keyed(&server, "waiting", Some("k+1"), b"{}");
    let second = ingest_keyed(&server, "waiting", None, b"{}");
    let page = server.admin("GET", "/admin/events?idempotency_key=k%2B1", "").json();
    assert_eq!(page["source"], "memory");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["event_id"], first.as_str());
    let received =
        server.admin("GET", &format!("/admin/events/{second}"), "").json()["received_at"].as_str().unwrap().to_string();
    let page = server.admin("GET", &format!("/admin/events?received_after={received}"), "").json();
    assert_eq!(page["events"][0]["event_id"], second.as_str());
    assert!(readiness(&server).get("index").is_none());
    assert_eq!(server.stop(), 0);
}

// An index that is ahead of the logs (restored from another backup, or another data
// directory) is not written to: `/readyz` says so instead of mixing two histories.
#[test]
fn an_index_ahead_of_the_logs_is_reported_and_left_alone() {
    let Some((postgres, url, _first, server)) = paused_load("diverged") else { return };
    for n in 0..10 {
        ingest_keyed(&server, "load", None, format!("{n}").as_bytes());
    }
    wait_indexed(&server);
    assert_eq!(server.stop(), 0);
    let other = tempfile::tempdir().unwrap();
    let server = start(other.path(), &url);
    wait_until("the divergence reported", || readiness(&server)["index"]["state"] == "diverged");
    create(&server, "load", r#"{"url":"http://127.0.0.1:9/paused","enabled":false}"#);
    ingest_keyed(&server, "load", None, b"{}");
    // The new record is durable (202); once the index writer has looked for work twice since,
    // it has passed it by: it writes nothing while diverged.
    let passes = index_passes(&server);
    wait_until("two passes of the index writer", || index_passes(&server) >= passes + 2);
    assert_eq!(count(&postgres, "diverged", "SELECT count(*) FROM events"), 10, "nothing written");
    assert_eq!(server.stop(), 0);
}

// Published events the engine's memory has forgotten are answered from the index exactly as
// memory answered them, after the index caught up from the logs alone: Postgres was down while
// they were published, delivered and failed, and Kapsel was then killed with SIGKILL.
#[test]
fn published_events_are_answered_from_the_index_after_a_kill_and_once_memory_forgot_them() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.database("published");
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let window = [("DATABASE_URL", url.as_str()), ("KAPSEL_TERMINAL_EVENTS_IN_MEMORY", "20")];
    let server = Server::start(directory.path(), "uring", &window);
    let (zero, one, dead) = (id_on_shard("a", 0), id_on_shard("b", 1), id_on_shard("dead", 0));
    create(&server, &zero, &format!(r#"{{"url":"{}","channels":["orders"]}}"#, sink.url("/zero")));
    create(&server, &one, &format!(r#"{{"url":"{}","channels":["orders"]}}"#, sink.url("/one")));
    let retry = concat!(
        r#""retry":{"initial_delay_ms":10,"max_delay_ms":20,"jitter":0,"max_attempts":3},"#,
        r#""circuit":{"consecutive_failures":1000,"window":1000}"#
    );
    create(&server, &dead, &format!(r#"{{"url":"http://127.0.0.1:9/dead","channels":["orders"],{retry}}}"#));
    wait_indexed(&server);
    postgres.stop_server();
    wait_until("the outage noticed", || readiness(&server)["index"]["state"] == "unavailable");
    let mut from_memory = BTreeMap::new();
    for n in 0..3 {
        let id = publish(&server, "orders", "order.created", n, Some(&format!("order-{n}")));
        from_memory.insert(id, Value::Null);
    }
    // A channel without subscribers, owned by the shard of `orders` (channels are owned like
    // endpoint ids).
    let beside_orders = (0..)
        .map(|n| format!("quiet-{n}"))
        .find(|name| common::shard_of(name, 2) == common::shard_of("orders", 2))
        .unwrap();
    let nobody = publish(&server, &beside_orders, "note", 0, None);
    for (id, memory) in from_memory.iter_mut() {
        *memory = wait_event(&server, id, |event| settled(event, 3) && event["status"] == "failed");
    }
    let quiet = server.admin("GET", &format!("/admin/events/{nobody}"), "").json();
    assert_eq!((quiet["endpoints"].as_u64(), quiet["status"].as_str()), (Some(0), Some("delivered")), "{quiet}");
    from_memory.insert(nobody.clone(), quiet);
    server.kill();
    postgres.start_server();
    let server = Server::start(directory.path(), "uring", &window);
    wait_indexed(&server);
    assert_published_rows(&postgres, "published", &from_memory);
    // More terminal events than memory keeps, on both shards, and more publications on the
    // shard of `orders`.
    for n in 0..25 {
        publish(&server, &beside_orders, "note", n, None);
        ingest_keyed(&server, &zero, None, b"{}");
        ingest_keyed(&server, &one, None, b"{}");
    }
    sink.wait_for("the new deliveries", WAIT, |received| received.len() >= 6 + 50);
    // The index adds `trace_id`: its presence says memory no longer had the event.
    for (id, memory) in &from_memory {
        let deadline = Instant::now() + WAIT;
        let event = loop {
            let event = server.admin("GET", &format!("/admin/events/{id}"), "").json();
            if event.get("trace_id").is_some() {
                break event;
            }
            assert!(Instant::now() < deadline, "memory never forgot {id}: {event}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(comparable(&event), comparable(memory), "{id}: the index and memory differ");
        // The index keeps every failed attempt's excerpt (here the connection error's text).
        for delivery in event["deliveries"].as_array().unwrap().iter().filter(|delivery| delivery["status"] == "failed")
        {
            let attempts = delivery["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 3, "{delivery}");
            assert!(
                attempts
                    .iter()
                    .all(|attempt| attempt["response_excerpt"].as_str().is_some_and(|text| !text.is_empty())),
                "{delivery}"
            );
        }
    }
    // One delivery by its own id, as the engine shows a delivery it holds.
    let published = from_memory.keys().find(|id| **id != nobody).unwrap();
    let delivery_id = postgres.psql(
        "published",
        &format!("SELECT delivery_id FROM deliveries WHERE event_id = '{published}' AND endpoint_id = '{one}'"),
    );
    let delivery = server.admin("GET", &format!("/admin/events/{delivery_id}"), "").json();
    assert_eq!(delivery["event_id"], published.as_str());
    assert_eq!(
        (delivery["endpoint_id"].as_str(), delivery["status"].as_str()),
        (Some(one.as_str()), Some("delivered"))
    );
    assert_eq!((delivery["type"].as_str(), delivery["channel"].as_str()), (Some("order.created"), Some("orders")));
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(server.stop(), 0);
}

/// Runs `changes` against database `url` as the index writer does: one transaction per batch.
fn write_batches(url: &str, batches: &[Vec<kapsel_engine::index::Change>]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        kapsel_engine::index::schema::migrate(&mut client).await.unwrap();
        for batch in batches {
            let transaction = client.transaction().await.unwrap();
            kapsel_engine::index::rows::write(&transaction, batch, kapsel_engine::index::Ledger::Shards).await.unwrap();
            transaction.commit().await.unwrap();
        }
    });
}

// The index applies each shard's records in order but not the shards in step: a shard that
// adopted deliveries may have them indexed, attempts and all, before the channel's shard's
// publish record, or after, or in the same batch. The rows must end the same every way.
#[test]
fn delivery_rows_end_the_same_whichever_shard_is_indexed_first() {
    use kapsel_engine::ids::EventId;
    use kapsel_engine::index::{Change, Row};
    use kapsel_engine::records::{self, Delivery, Handoff, Published, Record};

    let Some(postgres) = Postgres::start() else { return };
    let id = EventId::new(1_700_000_000_000, 0, 1 << 14);
    let delivery = |number: u32, endpoint: &str| Delivery {
        delivery_id: id.delivery(number).0,
        endpoint_id: endpoint.to_string(),
    };
    let record = Published {
        event_id: id.0,
        channel: "orders".into(),
        tenant: "default".into(),
        event_type: "order.created".into(),
        received_at_ms: id.unix_ms(),
        idempotency_key: Some("k".into()),
        content_type: None,
        traceparent: None,
        tracestate: None,
        payload: b"{}".to_vec(),
        deliveries: vec![delivery(1, "here")],
        handoffs: vec![Handoff { shard: 1, deliveries: vec![delivery(2, "there"), delivery(3, "dead")] }],
    };
    let attempt = |number: u32, n: u32, outcome: u8| {
        Record::Attempt(records::Attempt {
            event_id: id.delivery(number).0,
            n,
            at_ms: id.unix_ms() + u64::from(n) * 100,
            status_code: Some(if outcome == records::OUTCOME_DELIVERED { 200 } else { 503 }),
            latency_ms: 3,
            error_code: (outcome != records::OUTCOME_DELIVERED).then(|| "E2003".to_string()),
            response_excerpt: Vec::new(),
            outcome,
            next_attempt_at_ms: (outcome == records::OUTCOME_RETRYING).then(|| id.unix_ms() + 10_000),
        })
    };
    let change = |shard: usize, lsn: u64, record: &Record| Change { shard, lsn, row: Row::from_record(record) };
    let channel_shard = vec![
        change(0, 1, &Record::Published(record.clone())),
        change(0, 2, &attempt(1, 1, records::OUTCOME_DELIVERED)),
        change(0, 3, &Record::HandedOff(records::HandedOff { event_id: id.0, shard: 1 })),
    ];
    let adopting_shard = vec![
        change(1, 1, &Record::Adopted(record.adoption(record.handoffs[0].deliveries.clone()))),
        change(1, 2, &attempt(2, 1, records::OUTCOME_RETRYING)),
        change(1, 3, &attempt(3, 1, records::OUTCOME_RETRYING)),
        change(1, 4, &attempt(2, 2, records::OUTCOME_DELIVERED)),
        change(1, 5, &attempt(3, 2, records::OUTCOME_FAILED)),
    ];
    let orders: Vec<(&str, Vec<Vec<Change>>)> = vec![
        ("channel_first", vec![channel_shard.clone(), adopting_shard.clone()]),
        ("adopting_first", vec![adopting_shard.clone(), channel_shard.clone()]),
        ("one_batch", vec![[channel_shard.clone(), adopting_shard.clone()].concat()]),
        ("one_batch_reversed", vec![[adopting_shard.clone(), channel_shard.clone()].concat()]),
        (
            "interleaved",
            vec![
                adopting_shard[..2].to_vec(),
                channel_shard[..1].to_vec(),
                [adopting_shard[2..].to_vec(), channel_shard[1..].to_vec()].concat(),
            ],
        ),
    ];
    let dump = |database: &str| {
        postgres.psql(
            database,
            "SELECT string_agg(row, E'\\n' ORDER BY row) FROM (
                 SELECT concat_ws('|', id, endpoint_id, status, attempt_count, next_attempt_at, delivered_at,
                                  updated_at, event_type, channel, endpoints) AS row FROM events
                 UNION ALL
                 SELECT concat_ws('|', delivery_id, event_id, endpoint_id, shard, lsn, status, attempt_count,
                                  next_attempt_at, delivered_at, updated_at) FROM deliveries
                 UNION ALL
                 SELECT concat_ws('|', event_id, n, at, status_code, error_code) FROM attempts) AS rows",
        )
    };
    let mut first: Option<String> = None;
    for (name, batches) in &orders {
        let url = postgres.database(name);
        write_batches(&url, batches);
        let rows = dump(name);
        let status = postgres.psql(name, &format!("SELECT status FROM events WHERE id = '{id}'"));
        assert_eq!(status, "failed", "{name}: the worst of delivered, delivered and failed");
        assert_eq!(count(&postgres, name, "SELECT count(*) FROM deliveries WHERE lsn IS NULL"), 0, "{name}");
        assert_eq!(count(&postgres, name, "SELECT count(*) FROM attempts"), 5, "{name}");
        match &first {
            None => first = Some(rows),
            Some(first) => assert_eq!(&rows, first, "{name} ends differently from {}", orders[0].0),
        }
    }
}

/// A request with a key instead of the operator token.
fn with_key(server: &Server, method: &str, path: &str, key: &str) -> common::Response {
    let authorization = format!("Bearer {key}");
    server.request(method, path, &[("Authorization", &authorization)], b"")
}

/// A new key of `tenant` with `scopes` (a JSON array); the key itself.
fn new_key(server: &Server, tenant: &str, scopes: &str) -> String {
    let created = server.admin("POST", &format!("/admin/tenants/{tenant}/keys"), &format!(r#"{{"scopes":{scopes}}}"#));
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["key"].as_str().unwrap().to_string()
}

// A key sees its own tenant's events only, wherever they are answered from: its listing comes
// from the index (the whole history, not memory's window), and an event that left memory is
// found in the index by its tenant's key and is 404 E1004 to another tenant's, exactly as a
// missing one.
#[test]
fn a_keys_listing_and_lookups_come_from_the_index_filtered_to_its_tenant() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.database("tenants");
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server =
        Server::start(directory.path(), "uring", &[("DATABASE_URL", &url), ("KAPSEL_TERMINAL_EVENTS_IN_MEMORY", "2")]);
    let created = server.admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme"}"#);
    assert!(matches!(created.status, 200 | 201), "{created:?}");
    let acme = new_key(&server, "acme", r#"["read","write","ingest"]"#);
    let home = new_key(&server, "default", r#"["read"]"#);
    create(&server, "acme-orders", &format!(r#"{{"url":"{}","tenant_id":"acme"}}"#, sink.url("/")));
    create(&server, "home-orders", &format!(r#"{{"url":"{}"}}"#, sink.url("/")));
    let mut acme_events = Vec::new();
    let mut home_events = Vec::new();
    for _ in 0..8 {
        acme_events.push(ingest_keyed(&server, "acme-orders", None, b"{}"));
        home_events.push(ingest_keyed(&server, "home-orders", None, b"{}"));
    }
    sink.wait_for("every delivery", WAIT, |received| received.len() >= 16);
    wait_until("deliveries indexed", || {
        wait_indexed(&server);
        let page = server.admin("GET", "/admin/events?status=delivered&limit=100", "").json();
        page["events"].as_array().is_some_and(|events| events.len() == 16)
    });
    assert_eq!(
        count(&postgres, "tenants", "SELECT count(*) FROM events WHERE tenant_id = 'acme'"),
        8,
        "an ingested event takes its endpoint's tenant"
    );

    let ids_for = |key: &str, query: &str| -> Vec<String> {
        let page = with_key(&server, "GET", &format!("/admin/events?{query}"), key);
        assert_eq!(page.status, 200, "{query}: {page:?}");
        let page = page.json();
        assert_eq!(page["source"], "index", "a key's listing comes from the index");
        page["events"].as_array().unwrap().iter().map(|event| event["event_id"].as_str().unwrap().to_string()).collect()
    };
    let newest_first = |ids: &[String]| ids.iter().rev().cloned().collect::<Vec<_>>();
    assert_eq!(ids_for(&acme, "limit=100"), newest_first(&acme_events), "acme's key sees acme's events only");
    assert_eq!(ids_for(&home, "limit=100"), newest_first(&home_events), "default's key sees default's only");
    assert_eq!(ids_for(&acme, "endpoint_id=home-orders"), Vec::<String>::new());
    assert_eq!(ids_for(&home, "endpoint_id=acme-orders&status=delivered"), Vec::<String>::new());
    assert_eq!(ids_for(&acme, "limit=3").len(), 3);
    let cursor = acme_events[4].clone();
    assert_eq!(ids_for(&acme, &format!("limit=100&cursor={cursor}")), newest_first(&acme_events[..4]));

    // Memory keeps 2 terminal events per shard: the oldest of each tenant come from the index.
    for (own, other, event_id) in [(&acme, &home, &acme_events[0]), (&home, &acme, &home_events[0])] {
        let found = with_key(&server, "GET", &format!("/admin/events/{event_id}"), own);
        assert_eq!(found.status, 200, "{found:?}");
        let found = found.json();
        assert_eq!(found["status"], "delivered");
        assert!(found.get("delivered_at").is_some(), "answered from the index (memory has no delivered_at): {found}");
        let hidden = with_key(&server, "GET", &format!("/admin/events/{event_id}"), other);
        assert_eq!((hidden.status, hidden.code()), (404, "E1004".to_string()), "{hidden:?}");
    }
    let unknown = with_key(&server, "GET", "/admin/events/evt_00000000000000000000000000", &acme);
    assert_eq!((unknown.status, unknown.code()), (404, "E1004".to_string()));
    assert_eq!(server.stop(), 0);
}
