//! Postgres chaos against the real binary and a real private PostgreSQL: the postmaster killed
//! with SIGKILL and restarted, Postgres behind a proxy that silently drops every packet, and the
//! events table locked by another session for 30 s. In each, ingest keeps answering 202, the
//! queries that need the index answer 503 E3001 within their timeout instead of hanging, and the
//! index afterwards holds exactly the acknowledged events (compared as sets of ids through psql,
//! and the checkpoints as counts of records). Speed (ingest p99 with the index healthy and during
//! an outage) is measured by `cargo bench -p kapsel-bench --bench index`, not asserted here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, create, ingest, wait_until};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::Server;
use serde_json::Value;

/// `INDEX_QUERY_TIMEOUT_MS`: a query that needs the index answers within it (E3001 at worst).
const QUERY_TIMEOUT: Duration = Duration::from_millis(kapsel_engine::limits::INDEX_QUERY_TIMEOUT_MS);

/// What "answered in time" allows beyond the query timeout: the hop to the index thread and
/// back, on a loaded test machine.
const QUERY_SLACK: Duration = Duration::from_secs(1);

/// Longest any single ingest may take in these tests: generous, to tell "kept answering" from
/// "waited on Postgres" (the writer's transaction timeout is 10 s), never to judge speed.
const INGEST_ANSWER_MAX: Duration = Duration::from_secs(5);

/// Ingests acknowledged while Postgres is out, at least: ingest went on.
const ACKNOWLEDGED_DURING_OUTAGE_MIN: u64 = 200;

/// How long Postgres stays dead in the SIGKILL test: long enough for the writer to fail several
/// reconnections and for changes to pile up behind it.
const DEAD_FOR: Duration = Duration::from_secs(3);

/// The contract: SIGTERM stops Kapsel within 10 s, Postgres reachable or not.
const STOP_MAX: Duration = Duration::from_secs(10);

/// `DATABASE_MAX_CONNECTIONS` in these tests: one writer and three query connections.
const CONNECTIONS_MAX: usize = 4;

fn start(directory: &std::path::Path, url: &str) -> Server {
    Server::start(
        directory,
        "uring",
        &[("DATABASE_URL", url), ("DATABASE_MAX_CONNECTIONS", &CONNECTIONS_MAX.to_string())],
    )
}

fn readiness(server: &Server) -> Value {
    let response = server.request("GET", "/readyz", &[], b"");
    assert_eq!(response.status, 200, "the index never makes Kapsel unready: {response:?}");
    response.json()
}

fn index_state(server: &Server) -> String {
    readiness(server)["index"]["state"].as_str().unwrap_or_default().to_string()
}

/// Waits until the index holds everything the logs hold (`/readyz` reports the lag).
fn wait_indexed(server: &Server) {
    wait_until("the index caught up (connected, lag 0)", || {
        let ready = readiness(server);
        ready["index"]["state"] == "connected" && ready["index"]["lag_records"] == 0
    });
}

/// Ingest from a few connections until stopped, counting acknowledgements as they come.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
    /// Every ingest that was not a 202 in time: (what happened, how long it took).
    failures: Arc<Mutex<Vec<(String, Duration)>>>,
}

impl Load {
    fn start(server: &Server, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|thread| {
                let (address, stop) = (server.address, Arc::clone(&stop));
                let (counter, failures) = (Arc::clone(&acknowledged), Arc::clone(&failures));
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let began = Instant::now();
                        let body = format!("{{\"thread\":{thread}}}");
                        let answer = common::try_request(address, "POST", "/ingest/load", &[], body.as_bytes());
                        let took = began.elapsed();
                        match answer {
                            Ok(response) if response.status == 202 => {
                                ids.push(response.json()["event_id"].as_str().unwrap().to_string());
                                counter.fetch_add(1, Ordering::Release);
                                if took > INGEST_ANSWER_MAX {
                                    failures.lock().unwrap().push(("a 202, late".into(), took));
                                }
                            }
                            Ok(response) => failures.lock().unwrap().push((format!("{response:?}"), took)),
                            Err(error) => failures.lock().unwrap().push((error.to_string(), took)),
                        }
                    }
                    ids
                })
            })
            .collect();
        Load { stop, acknowledged, threads, failures }
    }

    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// Waits until `more` ingests were acknowledged after now, checking that each was answered.
    fn wait_for_more(&self, more: u64, what: &str) {
        let from = self.acknowledged();
        wait_until(what, || self.acknowledged() >= from + more);
        self.check();
    }

    /// Every ingest so far was a 202 within [`INGEST_ANSWER_MAX`].
    fn check(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "ingests not answered 202 in time: {:?}", &failures[..failures.len().min(5)]);
    }

    /// Stops the load; every acknowledged event id.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        let ids: Vec<String> = self.threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "ingests not answered 202 in time: {:?}", &failures[..failures.len().min(5)]);
        ids
    }
}

/// A private PostgreSQL with database `name`.
fn postgres(name: &str) -> Option<(Postgres, String)> {
    let postgres = Postgres::start()?;
    let url = postgres.database(name);
    Some((postgres, url))
}

/// Kapsel on `url` with endpoint `load`, deliveries paused (its events stay pending, in memory).
fn kapsel(directory: &std::path::Path, url: &str) -> Server {
    let server = start(directory, url);
    create(&server, "load", r#"{"url":"http://127.0.0.1:9/paused","enabled":false}"#);
    server
}

/// The index holds exactly the acknowledged events: the same set of ids (no duplicates: ids are
/// the primary key, and the counts agree), and each shard's checkpoint at its last record (the
/// records are the events plus the one endpoint).
fn assert_index_exact(postgres: &Postgres, database: &str, acknowledged: &[String]) {
    let mut acknowledged = acknowledged.to_vec();
    acknowledged.sort();
    let indexed: Vec<String> =
        postgres.psql(database, "SELECT id FROM events ORDER BY id").lines().map(str::to_string).collect();
    let count: usize = postgres.psql(database, "SELECT count(*) FROM events").parse().unwrap();
    assert_eq!(count, acknowledged.len(), "as many rows as acknowledged events");
    if indexed != acknowledged {
        let missing: Vec<_> = acknowledged.iter().filter(|id| indexed.binary_search(id).is_err()).take(5).collect();
        let extra: Vec<_> = indexed.iter().filter(|id| acknowledged.binary_search(id).is_err()).take(5).collect();
        panic!("the index differs from the acknowledged events: missing {missing:?}, extra {extra:?}");
    }
    let records: usize = postgres.psql(database, "SELECT sum(lsn) FROM checkpoints").parse().unwrap();
    assert_eq!(records, acknowledged.len() + 1, "the checkpoints cover exactly the records (events + the endpoint)");
}

/// Asks for a page of events from `threads` connections at once (more than the pool has
/// connections, so some wait for one): each answers 503 E3001 within the query timeout.
fn assert_queries_refused_in_time(server: &Server, threads: usize) {
    let address = server.address;
    let askers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let began = Instant::now();
                let authorization = format!("Bearer {}", common::TOKEN);
                let answer = common::try_request(
                    address,
                    "GET",
                    "/admin/events?limit=5",
                    &[("Authorization", &authorization)],
                    b"",
                );
                (answer, began.elapsed())
            })
        })
        .collect();
    for asker in askers {
        let (answer, took) = asker.join().unwrap();
        let response = answer.unwrap_or_else(|error| panic!("a query needing the index got no answer: {error}"));
        assert_eq!((response.status, response.code()), (503, "E3001".to_string()), "{response:?}");
        assert_eq!(response.header("Retry-After"), Some("1"));
        assert!(took < QUERY_TIMEOUT + QUERY_SLACK, "E3001 after {took:?}, beyond the query timeout {QUERY_TIMEOUT:?}");
    }
}

/// A query that does not need the index still answers 200 (the event is pending, in memory);
/// the id of the event it ingested for that.
fn assert_memory_lookup_works(server: &Server) -> String {
    let id = ingest(server, "load", b"{}");
    let found = server.admin("GET", &format!("/admin/events/{id}"), "");
    assert_eq!(found.status, 200, "{found:?}");
    id
}

// The postmaster and its backends are killed with SIGKILL in the middle of a load and started
// again (crash recovery): ingest answers 202 throughout, queries that need the index fail fast
// with E3001 meanwhile, and the index reconnects and ends with exactly the acknowledged events.
#[test]
fn index_survives_postgres_killed_with_sigkill_and_restarted() {
    let Some((postgres, url)) = postgres("killed") else { return };
    let directory = tempfile::tempdir().unwrap();
    let server = kapsel(directory.path(), &url);
    let load = Load::start(&server, 4);
    wait_until("some events indexed", || readiness(&server)["index"]["rows_indexed"].as_u64() > Some(100));

    postgres.kill9();
    let killed_at = Instant::now();
    wait_until("the crash noticed", || index_state(&server) == "unavailable");
    assert_queries_refused_in_time(&server, 2);
    let looked_up = assert_memory_lookup_works(&server);
    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged while Postgres is dead");
    std::thread::sleep(DEAD_FOR.saturating_sub(killed_at.elapsed()));
    load.check();
    assert_eq!(index_state(&server), "unavailable");

    postgres.start_server();
    wait_until("the index reconnected", || index_state(&server) == "connected");
    // It catches up while the load goes on.
    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged after the restart");
    let mut acknowledged = load.finish();
    acknowledged.push(looked_up);
    wait_indexed(&server);
    assert_index_exact(&postgres, "killed", &acknowledged);
    assert_eq!(server.admin("GET", "/admin/events?limit=1", "").status, 200);
    assert_eq!(server.stop(), 0);
}

// Postgres becomes unreachable behind a network that silently drops every packet (no reset, no
// refusal: connections stay open and nothing comes back). Ingest answers 202 throughout; queries
// that need the index answer 503 E3001 within their timeout, even more of them at once than the
// pool has connections; the writer's transaction times out and it reconnects once the network
// heals, then catches up exactly. SIGTERM during a second silence stops Kapsel cleanly within
// 10 s, and the next start indexes what that shutdown could not.
#[test]
fn index_survives_a_network_that_silently_drops_packets() {
    let Some((postgres, _)) = postgres("silent") else { return };
    let proxy = postgres.proxy();
    let url = proxy.url("silent");
    let directory = tempfile::tempdir().unwrap();
    let server = kapsel(directory.path(), &url);
    let load = Load::start(&server, 4);
    wait_until("some events indexed", || readiness(&server)["index"]["rows_indexed"].as_u64() > Some(100));

    proxy.blackhole();
    assert_queries_refused_in_time(&server, CONNECTIONS_MAX + 2);
    let looked_up = assert_memory_lookup_works(&server);
    // The writer's transaction (10 s) gives up, then each reconnection attempt (5 s) does.
    wait_until("the writer gave up on the silent connection", || index_state(&server) == "unavailable");
    assert_queries_refused_in_time(&server, 2);
    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged while Postgres is silent");

    proxy.resume();
    wait_until("the index reconnected", || index_state(&server) == "connected");
    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged after the network healed");
    let mut acknowledged = load.finish();
    acknowledged.push(looked_up);
    wait_indexed(&server);
    assert_index_exact(&postgres, "silent", &acknowledged);
    assert_eq!(server.admin("GET", "/admin/events?limit=1", "").status, 200);

    // Silent again, with a batch in the writer's hands: SIGTERM must not wait on Postgres.
    proxy.blackhole();
    for n in 0..20 {
        acknowledged.push(ingest(&server, "load", format!("{{\"late\":{n}}}").as_bytes()));
    }
    wait_until("the late events durable", || readiness(&server)["index"]["lag_records"].as_u64() >= Some(20));
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    let code = server.stop();
    let took = stopping.elapsed();
    assert!(took < STOP_MAX, "SIGTERM took {took:?} with Postgres unreachable");
    assert_eq!(code, 0, "a clean stop, not the shutdown watchdog's exit");

    proxy.resume();
    let server = start(directory.path(), &url);
    wait_indexed(&server);
    assert_index_exact(&postgres, "silent", &acknowledged);
    assert_eq!(server.stop(), 0);
}

// Another session holds ACCESS EXCLUSIVE on the events table for 30 s (an operator's LOCK
// TABLE, a long migration): ingest answers 202 throughout, queries that need the table answer
// 503 E3001 within their timeout instead of queueing behind the lock, Kapsel's sessions stay
// within DATABASE_MAX_CONNECTIONS (statements it gave up on do not pile up behind the lock), and
// once the lock is released the index catches up exactly.
#[test]
fn index_survives_a_table_locked_for_30_seconds() {
    let Some((postgres, url)) = postgres("locked") else { return };
    let directory = tempfile::tempdir().unwrap();
    let server = kapsel(directory.path(), &url);
    let load = Load::start(&server, 4);
    wait_until("some events indexed", || readiness(&server)["index"]["rows_indexed"].as_u64() > Some(100));

    let mut holder = postgres
        .psql_background("locked", "BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;");
    wait_until("the lock granted", || {
        postgres.psql(
            "locked",
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = 'events' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        ) == "1"
    });
    assert_queries_refused_in_time(&server, CONNECTIONS_MAX + 2);
    let looked_up = assert_memory_lookup_works(&server);
    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged while the table is locked");
    let sessions = || -> usize {
        postgres
            .psql("locked", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'kapsel-index-%'")
            .parse()
            .unwrap()
    };
    while holder.try_wait().unwrap().is_none() {
        let count = sessions();
        assert!(count <= CONNECTIONS_MAX, "{count} Kapsel sessions while the lock is held");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(holder.wait().unwrap().success(), "the lock holder failed");

    load.wait_for_more(ACKNOWLEDGED_DURING_OUTAGE_MIN, "ingests acknowledged after the lock");
    let mut acknowledged = load.finish();
    acknowledged.push(looked_up);
    wait_indexed(&server);
    assert_index_exact(&postgres, "locked", &acknowledged);
    assert_eq!(server.admin("GET", "/admin/events?limit=1", "").status, 200);
    assert_eq!(server.stop(), 0);
}
