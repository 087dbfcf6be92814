//! Storage failure from outside: the data directory on a real small filesystem (a tmpfs with a
//! size limit, mounted by the test as root) filling up under concurrent ingest, space coming
//! back, and SIGTERM while a shard's log cannot write. Without the privilege to mount, the tests
//! say SKIPPED loudly; under `CI=true` that is a failure.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::sink::{Reply, Sink};
use crate::common::{create, metric, try_request, wait_until, Server, DRIVERS, WAIT};

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    directory: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes`; `None` (after saying SKIPPED) where mounting is not
    /// allowed, a panic under `CI=true`.
    fn mount(megabytes: u64) -> Option<Tmpfs> {
        let directory = tempfile::tempdir().expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "kapsel-test"])
            .arg(directory.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { directory }),
            outcome => {
                let why = match outcome {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
                    Err(error) => error.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "mounting a tmpfs failed under CI=true (the storage tests need root): {why}"
                );
                eprintln!("SKIPPED: the storage tests need root to mount a small tmpfs: {why}");
                None
            }
        }
    }

    /// Grows (or shrinks) the filesystem in place.
    fn resize(&self, megabytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(self.directory.path())
            .status()
            .expect("remount");
        assert!(status.success(), "remount to {megabytes} MB");
    }

    fn data(&self) -> PathBuf {
        self.directory.path().join("data")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.directory.path()).status();
    }
}

/// What concurrent ingest saw until the disk was full: the ids acknowledged, and how many were
/// refused with 503 E3003.
struct Filled {
    acknowledged: Vec<String>,
    refused: usize,
}

/// Ingests 8 KiB events from four threads until each has been refused with E3003 by the full
/// disk. Any answer but 202, 503 E3003 or 503 E3002 (the log's queue, briefly) fails the test.
fn fill(server: &Server, endpoint: &str) -> Filled {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let address = server.address;
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let (acknowledged, refused) = (Arc::clone(&acknowledged), Arc::clone(&refused));
            let endpoint = endpoint.to_string();
            std::thread::spawn(move || {
                let deadline = Instant::now() + WAIT;
                for n in 0.. {
                    assert!(Instant::now() < deadline, "the disk never filled");
                    let body = format!("{{\"thread\":{thread},\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(8 * 1024));
                    let path = format!("/ingest/{endpoint}");
                    let response =
                        try_request(address, "POST", &path, &[("Content-Type", "application/json")], body.as_bytes())
                            .expect("ingest");
                    match (response.status, response.code().as_str()) {
                        (202, _) => {
                            acknowledged.lock().unwrap().push(response.json()["event_id"].as_str().unwrap().to_string())
                        }
                        (503, "E3003") => {
                            *refused.lock().unwrap() += 1;
                            return;
                        }
                        (503, "E3002") => std::thread::sleep(Duration::from_millis(5)),
                        other => panic!("unexpected answer while filling the disk: {other:?} {response:?}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("ingest thread");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let refused = *refused.lock().unwrap();
    Filled { acknowledged, refused }
}

/// The shards `GET /metrics` reports as unable to write for lack of space.
fn shards_out_of_space(server: &Server) -> Vec<String> {
    let metrics = String::from_utf8(server.request("GET", "/metrics", &[], b"").body).unwrap();
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("kapsel_wal_failure{shard=\""))
        .filter_map(|rest| rest.strip_suffix("\",kind=\"no_space\"} 1"))
        .map(str::to_string)
        .collect()
}

fn delivered_ids(received: &[crate::common::sink::Received]) -> HashSet<String> {
    received.iter().filter_map(|request| request.header("webhook-id").map(str::to_string)).collect()
}

// The disk fills under concurrent ingest: new events get 503 E3003, /readyz says 503 E3003
// naming the shard, the metrics say which shard and why. Space comes back: the shard reopens its
// log by itself, takes events again, and every acknowledged event — and no other — is delivered.
#[test]
fn a_full_disk_refuses_events_and_recovers_without_a_restart() {
    for driver in DRIVERS {
        let Some(tmpfs) = Tmpfs::mount(16) else {
            return;
        };
        let sink = Sink::start(|_, _| Reply::status(200));
        let server = Server::start(&tmpfs.data(), driver, &[]);
        create(&server, "full", &format!(r#"{{"url":"{}"}}"#, sink.url("/full")));

        let filled = fill(&server, "full");
        assert!(filled.acknowledged.len() > 100, "{driver}: only {} events fit", filled.acknowledged.len());
        assert_eq!(filled.refused, 4, "{driver}");
        let ready = server.request("GET", "/readyz", &[], b"");
        assert_eq!((ready.status, ready.code().as_str()), (503, "E3003"), "{driver}: {ready:?}");
        let message = ready.json()["error"]["message"].as_str().unwrap_or("").to_string();
        // One endpoint, one shard: the metrics name it and say why, and /readyz names it too.
        let failed = shards_out_of_space(&server);
        assert_eq!(failed.len(), 1, "{driver}: the metrics say which shard and why: {failed:?}");
        assert!(
            message.contains(&format!("shard {} (no_space", failed[0])),
            "{driver}: /readyz names the shard: {message}"
        );
        assert_eq!(metric(&server, "kapsel_wal_failure"), 1.0, "{driver}");
        let refused = server.request("POST", "/ingest/full", &[], b"{}");
        assert_eq!((refused.status, refused.code().as_str()), (503, "E3003"), "{driver}");

        tmpfs.resize(256);
        wait_until("the shard to reopen its log", || {
            try_request(server.address, "GET", "/readyz", &[], b"").is_ok_and(|response| response.status == 200)
        });
        let after = server.request("POST", "/ingest/full", &[("Content-Type", "application/json")], b"{\"after\":1}");
        assert_eq!(after.status, 202, "{driver}: events are taken again: {after:?}");
        let mut expected: HashSet<String> = filled.acknowledged.iter().cloned().collect();
        expected.insert(after.json()["event_id"].as_str().unwrap().to_string());
        let received = sink.wait_for("every acknowledged event delivered", WAIT, |received| {
            delivered_ids(received).is_superset(&expected)
        });
        let delivered = delivered_ids(&received);
        let extra: Vec<&String> = delivered.difference(&expected).collect();
        assert!(extra.is_empty(), "{driver}: events that were refused were delivered: {extra:?}");
        assert!(metric(&server, "kapsel_wal_reopens_total") >= 1.0, "{driver}");
        assert_eq!(metric(&server, "kapsel_wal_failure"), 0.0, "{driver}");
        let started = Instant::now();
        assert_eq!(server.stop(), 0, "{driver}: a recovered shard stops cleanly");
        assert!(started.elapsed() < Duration::from_secs(10), "{driver}");
    }
}

// SIGTERM while a shard's log cannot write and a destination hangs: the process is gone within
// 10 s and says something failed (non-zero). Nothing acknowledged is lost: after space comes
// back, a restart has every acknowledged event.
#[test]
fn sigterm_stops_within_ten_seconds_while_a_log_cannot_write() {
    for driver in DRIVERS {
        let Some(tmpfs) = Tmpfs::mount(8) else {
            return;
        };
        // A destination that accepts and never answers.
        let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hang", hanging.local_addr().unwrap());
        let server = Server::start(&tmpfs.data(), driver, &[]);
        create(&server, "stuck", &format!(r#"{{"url":"{url}","timeout_ms":30000}}"#));
        let filled = fill(&server, "stuck");
        assert!(!filled.acknowledged.is_empty(), "{driver}");

        let started = Instant::now();
        let code = server.stop();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{driver}: SIGTERM took {took:?}");
        assert_ne!(code, 0, "{driver}: a shard whose log failed makes the exit code non-zero");

        tmpfs.resize(256);
        let server = Server::start(&tmpfs.data(), driver, &[]);
        for id in &filled.acknowledged {
            let event = server.admin("GET", &format!("/admin/events/{id}"), "");
            assert_eq!(event.status, 200, "{driver}: acknowledged event {id} is there after the restart");
        }
        drop(hanging);
    }
}
