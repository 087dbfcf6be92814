//! The dashboard (`/ui/`) in a real browser: Debian's Chromium, driven headless by playwright-core
//! from `tests/ui/dashboard.mjs`, against the real binary filled with endpoints, a failed event, a
//! published one, a second tenant with a read-only key, and hostile markup in every field an
//! attacker controls. The script signs in (a wrong token first), reads the views, redrives the
//! failed event and sees it delivered, disables an endpoint, signs in with the read-only key, checks
//! nothing hostile ran, runs axe-core, and saves screenshots to `target/ui-screenshots/` (kept as
//! test artefacts). Without Chromium, Node.js or `tests/ui/node_modules` (`npm ci --prefix
//! tests/ui`) these tests say SKIPPED and pass, except under `CI=true`, where that is a failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::sink::{Reply, Sink};
use crate::common::{self, create, Server, TOKEN};

/// A script element: it would set `window.__xss` if it were ever parsed as markup.
const HOSTILE_SCRIPT: &str = "<script>window.__xss=1</script>";
/// An attribute breakout with an inline handler.
const HOSTILE_ATTRIBUTE: &str = r#""><img src=x onerror="window.__xss=1">"#;
/// Both without whitespace: what an idempotency key (visible ASCII) or a URL may hold.
const HOSTILE_COMPACT: &str = r#"<script>window.__xss=1</script>"><img/src=x/onerror=window.__xss=1>"#;

/// How long the browser script may run in all before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a browser test needs: Node.js, the npm packages and Chromium.
struct Browser {
    root: PathBuf,
    chromium: PathBuf,
}

impl Browser {
    /// The browser test's tools, or `None` after saying SKIPPED (a failure under `CI=true`).
    fn find() -> Option<Browser> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let chromium =
            std::env::var_os("KAPSEL_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        let node = Command::new("node").arg("--version").output().is_ok_and(|output| output.status.success());
        let modules = root.join("tests/ui/node_modules");
        let mut missing = Vec::new();
        if !chromium.exists() {
            missing.push(format!("{} (apt-get install chromium)", chromium.display()));
        }
        if !node {
            missing.push("node (Node.js 20 or later)".to_string());
        }
        for package in ["playwright-core", "axe-core"] {
            if !modules.join(package).exists() {
                missing.push(format!("{} (npm ci --prefix tests/ui)", modules.join(package).display()));
            }
        }
        if missing.is_empty() {
            return Some(Browser { root, chromium });
        }
        common::skip_for_want_of(&format!("the dashboard's browser test needs {}", missing.join(", ")));
        None
    }

    /// Runs `tests/ui/dashboard.mjs` against `server` with `scenario` and its settings; fails the
    /// test with the script's output unless it exits 0. Returns that output.
    fn run(&self, server: &Server, scenario: &str, settings: &[(&str, String)]) -> String {
        let screenshots = self.root.join("target/ui-screenshots");
        let mut command = Command::new("node");
        command
            .arg(self.root.join("tests/ui/dashboard.mjs"))
            .env("KAPSEL_URL", format!("http://{}", server.address))
            .env("KAPSEL_TOKEN", TOKEN)
            .env("KAPSEL_SCENARIO", scenario)
            .env("KAPSEL_SCREENSHOTS", &screenshots)
            .env("KAPSEL_CHROMIUM", &self.chromium);
        for (name, value) in settings {
            command.env(name, value);
        }
        let (status, output) = common::run_bounded(command, SCRIPT_TIMEOUT);
        match status {
            Some(status) if status.success() => {
                // Shown with --nocapture: the checks made, the time each page took, the screenshots.
                eprintln!("{output}");
                output
            }
            Some(status) => panic!("the browser script failed ({status}):\n{output}"),
            None => panic!("the browser script did not finish within {SCRIPT_TIMEOUT:?}:\n{output}"),
        }
    }
}

fn put_endpoint(server: &Server, id: &str, body: serde_json::Value) {
    create(server, id, &body.to_string());
}

// An operator's whole round in the dashboard, and the two promises it must keep whatever the data:
// a tenant's read-only key sees its tenant only and no action, and markup stored by senders and
// destinations (URLs, response bodies, payloads, idempotency keys) is shown as text and never runs.
#[test]
fn the_dashboard_in_a_browser_reads_redrives_disables_and_shows_hostile_strings_as_text() {
    let Some(browser) = Browser::find() else { return };
    let directory = tempfile::tempdir().unwrap();
    // Small segments: the failed event's is sealed soon, so its Merkle proof can be shown.
    let server = Server::start(directory.path(), "legacy", &[("KAPSEL_WAL_SEGMENT_BYTES", "4096")]);
    let hostile = [HOSTILE_SCRIPT, HOSTILE_ATTRIBUTE, HOSTILE_COMPACT];
    // The destination answers 500 with hostile markup as its body until told to succeed: the
    // response excerpt Kapsel keeps of the failure is then attacker-controlled.
    let failure_body = hostile.join("\n");
    let sink =
        Sink::start(move |_, _| Reply::status(500).header("Content-Type", "text/html").body(failure_body.as_bytes()));

    // The operator's endpoints: one whose only attempt fails with a hostile answer, a second
    // subscriber of its channel, one to disable, and one whose URL is hostile (disabled: it gets
    // nothing).
    let orders =
        serde_json::json!({"url": sink.url("/orders"), "channels": ["receipts"], "retry": {"max_attempts": 1}});
    put_endpoint(&server, "orders", orders);
    put_endpoint(&server, "receipts-copy", serde_json::json!({"url": sink.url("/copy"), "channels": ["receipts"]}));
    put_endpoint(&server, "disable-me", serde_json::json!({"url": sink.url("/disable-me")}));
    let hostile_url = format!("http://127.0.0.1:9/{HOSTILE_COMPACT}");
    put_endpoint(&server, "hostile-url", serde_json::json!({"url": hostile_url, "enabled": false}));

    // A failed event whose payload (text/html), idempotency key and response excerpt are hostile.
    let payload = format!("{}\n{{\"type\":\"{HOSTILE_SCRIPT}\"}}", hostile.join("\n"));
    let headers = [("Content-Type", "text/html"), ("X-Idempotency-Key", HOSTILE_COMPACT)];
    let accepted = server.request("POST", "/ingest/orders", &headers, payload.as_bytes());
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let failed_event = accepted.json()["event_id"].as_str().unwrap().to_string();
    let failed = common::wait_event(&server, &failed_event, |event| event["status"] == "failed");
    assert!(failed["last_response_excerpt"].as_str().unwrap().contains(HOSTILE_SCRIPT), "{failed}");
    // From now on the destination succeeds: the redrive the browser makes is delivered.
    sink.set_script(|_, _| Reply::status(200));
    // More of the endpoint's events fill its shard's segment until the failed event's is sealed.
    let proof = format!("/admin/events/{failed_event}/proof");
    common::wait_until("the failed event's segment to be sealed", || {
        common::ingest(&server, "orders", &[b'x'; 512]);
        server.admin("GET", &proof, "").status == 200
    });

    // A dead destination retried at once: its breaker opens, and stays open through the test.
    let fast =
        serde_json::json!({"max_attempts": 20, "initial_delay_ms": 1, "multiplier": 1, "max_delay_ms": 1, "jitter": 0});
    put_endpoint(
        &server,
        "dead-end",
        serde_json::json!({"url": "http://127.0.0.1:9/dead", "retry": fast, "circuit": {"cooldown_ms": 600_000}}),
    );
    common::ingest(&server, "dead-end", b"{}");
    common::wait_until("the dead destination's breaker to open", || {
        server.admin("GET", "/admin/endpoints/dead-end", "").json()["circuit_state"] == "open"
    });

    // A published event with two deliveries, and some traffic for the overview.
    let authorization = format!("Bearer {TOKEN}");
    let published = server.request("POST", "/publish/receipts", &[("Authorization", &authorization)], b"{}");
    assert_eq!(published.status, 202, "{published:?}");
    let published_event = published.json()["event_id"].as_str().unwrap().to_string();
    for n in 0..5 {
        common::ingest(&server, "receipts-copy", format!(r#"{{"n":{n}}}"#).as_bytes());
    }

    // Tenant B: two endpoints, an event, a key that may only read and one that may only ingest.
    assert_eq!(server.admin("PUT", "/admin/tenants/tenant-b", r#"{"name":"B"}"#).status, 201);
    let key = server.admin("POST", "/admin/tenants/tenant-b/keys", r#"{"scopes":["read"]}"#);
    assert_eq!(key.status, 201, "{key:?}");
    let read_key = key.json()["key"].as_str().unwrap().to_string();
    let key = server.admin("POST", "/admin/tenants/tenant-b/keys", r#"{"scopes":["ingest"]}"#);
    let ingest_key = key.json()["key"].as_str().unwrap().to_string();
    for id in ["b-billing", "b-shipping"] {
        put_endpoint(&server, id, serde_json::json!({"url": sink.url("/b"), "tenant_id": "tenant-b"}));
    }
    let b_event = common::ingest(&server, "b-billing", b"{}");

    let hostile_strings = serde_json::to_string(&hostile).unwrap();
    browser.run(
        &server,
        "tour",
        &[
            ("KAPSEL_READ_KEY", read_key),
            ("KAPSEL_INGEST_KEY", ingest_key),
            ("KAPSEL_B_ENDPOINTS", "b-billing,b-shipping".to_string()),
            ("KAPSEL_FAILED_EVENT", failed_event.clone()),
            ("KAPSEL_PUBLISHED_EVENT", published_event),
            ("KAPSEL_B_EVENT", b_event),
            ("KAPSEL_DISABLE_ENDPOINT", "disable-me".to_string()),
            ("KAPSEL_TRAFFIC_ENDPOINT", "receipts-copy".to_string()),
            ("KAPSEL_OPEN_ENDPOINT", "dead-end".to_string()),
            ("KAPSEL_HOSTILE_URL", hostile_url),
            ("KAPSEL_HOSTILE_STRINGS", hostile_strings),
            ("KAPSEL_HOSTILE_KEY", HOSTILE_COMPACT.to_string()),
        ],
    );

    // What the browser did, seen from the API: the redrive was delivered, the endpoint disabled.
    let event = server.admin("GET", &format!("/admin/events/{failed_event}"), "").json();
    assert_eq!(event["status"], "delivered", "{event}");
    assert_eq!(server.admin("GET", "/admin/endpoints/disable-me", "").json()["enabled"], false);
    assert_eq!(server.admin("GET", "/admin/endpoints/orders", "").json()["enabled"], true);
}

// Ten thousand endpoints: the endpoints view shows one page of them and pages forward and back
// through the listing's cursors (the script logs how long each page took; nothing here judges it).
#[test]
fn the_dashboard_pages_through_ten_thousand_endpoints() {
    let Some(browser) = Browser::find() else { return };
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    const ENDPOINTS: usize = 10_000;
    const WRITERS: usize = 16;
    let address = server.address;
    let authorization = format!("Bearer {TOKEN}");
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let authorization = authorization.as_str();
            scope.spawn(move || {
                for n in (writer..ENDPOINTS).step_by(WRITERS) {
                    let body = format!(r#"{{"url":"http://127.0.0.1:9/{n}","ingest_auth":{{"type":"none"}}}}"#);
                    let path = format!("/admin/endpoints/ep-{n:05}");
                    let headers = [("Authorization", authorization), ("Content-Type", "application/json")];
                    let response = common::try_request(address, "PUT", &path, &headers, body.as_bytes()).unwrap();
                    assert_eq!(response.status, 201, "{path}: {response:?}");
                }
            });
        }
    });
    assert_eq!(common::metric(&server, "kapsel_endpoints"), ENDPOINTS as f64);
    browser.run(&server, "many", &[("KAPSEL_ENDPOINT_COUNT", ENDPOINTS.to_string())]);
}
