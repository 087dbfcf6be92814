//! `docs/openapi.json` against the real binary: the server serves the file byte for byte and the
//! file is valid OpenAPI 3.1 (`openapi-spec-validator`); every admin operation it documents refuses
//! a missing or wrong token; and schemathesis, generating requests from the document, finds every
//! answer true to it (statuses, content types, bodies, headers, no 5xx, authentication enforced,
//! valid data accepted and invalid data refused), once as a tenant's key against a server whose
//! data belongs to other tenants — nothing of theirs may reach it — and once as the operator; and
//! the same two ways for the event operations answered by the Postgres index.
//!
//! schemathesis and openapi-spec-validator come from PyPI: `.ci/run` installs them into
//! `target/tools/python` (`.ci/requirements.txt`); they are also looked for on `PATH`. Without
//! them these tests say SKIPPED and pass, except under `CI=true`, where that is a failure.
//! Each schemathesis run keeps its configuration, output and HAR report (every request and
//! answer) under `target/tmp/openapi/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, postgres::Postgres, sink::Reply, sink::Sink, Server, TOKEN};

/// Test cases per operation and phase: enough for every check to see valid and invalid data of
/// each operation, few enough that both runs take about a minute on two cores.
const EXAMPLES_PER_OPERATION: u32 = 50;
/// The run's seed: the same requests every time, as far as the server's answers allow.
const SEED: u64 = 20_261_205;
/// How long one schemathesis run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The sink's path prefix for endpoints schemathesis creates.
const GENERATED_PATH: &str = "/generated";

fn document_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
}

fn document() -> Value {
    serde_json::from_slice(&std::fs::read(document_path()).unwrap()).unwrap()
}

/// The Python tools, found in `target/tools/python/bin` or on `PATH`.
struct Tools {
    schemathesis: PathBuf,
    validator: PathBuf,
}

impl Tools {
    /// The tools, or `None` after saying SKIPPED (a failure under `CI=true`).
    fn find() -> Option<Tools> {
        let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/python/bin"));
        let find = |name: &str| {
            let mut places = vec![venv.clone()];
            places.extend(
                std::env::var_os("PATH")
                    .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            places.into_iter().map(|place| place.join(name)).find(|candidate| candidate.is_file())
        };
        match (find("schemathesis"), find("openapi-spec-validator")) {
            (Some(schemathesis), Some(validator)) => Some(Tools { schemathesis, validator }),
            _ => {
                common::skip_for_want_of(
                    "the OpenAPI tests need schemathesis and openapi-spec-validator (pip install -r .ci/requirements.txt into target/tools/python)",
                );
                None
            }
        }
    }
}

/// The document's operations: (method in upper case, path template, its `security`).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (template, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if let Some(operation) = item.get(method) {
                found.push((method.to_ascii_uppercase(), template.clone(), operation["security"].clone()));
            }
        }
    }
    found
}

/// The template with each path parameter replaced by a value of the right shape.
fn fill(template: &str) -> String {
    template
        .replace("{endpoint_id}", "orders")
        .replace("{event_id}", "evt_01M92PM8DK0000000000000000")
        .replace("{tenant_id}", "acme")
        .replace("{key_id}", "key_0D2RHR49530TP2XKN7Q1A3D8HA")
        .replace("{channel}", "orders")
        .replace("{asset}", "app.js")
}

// The document a client downloads is the one in the repository, and it is valid OpenAPI 3.1: a
// generator fed an invalid document makes clients that cannot work.
#[test]
fn the_served_document_is_the_file_and_valid_openapi() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "auto", &[]);
    let served = server.request("GET", "/openapi.json", &[], b"");
    assert_eq!(served.status, 200);
    assert!(served.header("Content-Type").is_some_and(|value| value.starts_with("application/json")), "{served:?}");
    assert!(served.body == std::fs::read(document_path()).unwrap(), "GET /openapi.json is not docs/openapi.json");
    let Some(tools) = Tools::find() else { return };
    let copy = directory.path().join("served-openapi.json");
    std::fs::write(&copy, &served.body).unwrap();
    let mut command = Command::new(&tools.validator);
    command.arg(&copy);
    let (status, output) = common::run_bounded(command, RUN_TIMEOUT);
    assert!(status.is_some_and(|status| status.success()), "openapi-spec-validator refuses the document:\n{output}");
}

// Every admin operation the document lists refuses a request without a token, with a wrong
// token and with a key that does not exist, as 401 E1001 with a Bearer challenge; the open
// operations answer without one. Taken from the document, so a new operation is covered as soon
// as it is described.
#[test]
fn documented_admin_operations_refuse_a_missing_or_wrong_token() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "auto", &[]);
    let document = document();
    let wrong_key = format!("Bearer ksk_{}", "A".repeat(43));
    let mut admin = 0;
    for (method, template, security) in operations(&document) {
        let path = fill(&template);
        if template.starts_with("/admin/") {
            admin += 1;
            assert_eq!(security, json!([{"bearer": []}]), "{method} {template}");
            for authorization in [None, Some("Bearer not-the-token"), Some(wrong_key.as_str()), Some("Basic dGVzdA==")]
            {
                let mut headers = vec![("Content-Type", "application/json")];
                headers.extend(authorization.map(|value| ("Authorization", value)));
                let response = server.request(&method, &path, &headers, b"{}");
                assert_eq!(
                    (response.status, response.code().as_str(), response.header("WWW-Authenticate")),
                    (401, "E1001", Some("Bearer")),
                    "{method} {path} with {authorization:?}"
                );
            }
        } else if security == json!([]) {
            let response = server.request(&method, &path, &[], b"");
            assert!((200..400).contains(&response.status), "{method} {path} is open but answered {response:?}");
        }
    }
    assert!(admin >= 20, "only {admin} admin operations in the document");
}

/// What other tenants own on the test server, and what may never reach `globex`'s key.
struct Owned {
    endpoint_ids: Vec<String>,
    /// Those of `endpoint_ids` open to anyone's ingest (`"ingest_auth":{"type":"none"}`), a
    /// foreign key's included.
    open_endpoint_ids: Vec<String>,
    event_ids: Vec<String>,
    key_id: String,
    /// Strings only their answers may contain: signing secrets, event ids, the key and its id,
    /// the destination paths.
    secrets: Vec<String>,
}

/// The fixtures: tenants `acme` (an endpoint open to ingest, one that takes a key, events, a
/// published event and a key) and `globex` (one endpoint and a key with every scope), and an
/// endpoint of `default` that takes a key; every endpoint delivers to the sink. Returns what is
/// not `globex`'s, and `globex`'s key.
fn fixtures(server: &Server, sink: &Sink) -> (Owned, String) {
    assert_eq!(server.admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme 5f0c"}"#).status, 201);
    assert_eq!(server.admin("PUT", "/admin/tenants/globex", "{}").status, 201);
    let mut owned = Owned {
        endpoint_ids: Vec::new(),
        open_endpoint_ids: vec!["orders".into()],
        event_ids: Vec::new(),
        key_id: String::new(),
        secrets: Vec::new(),
    };
    for (id, tenant, ingest_auth) in
        [("orders", "acme", "none"), ("legacy-orders", "acme", "key"), ("ledger", "default", "key")]
    {
        let path = format!("/tenant-{tenant}/{id}");
        let body = json!({"url": sink.url(&path), "tenant_id": tenant, "ingest_auth": {"type": ingest_auth}, "channels": ["orders"]});
        let endpoint = common::create(server, id, &body.to_string());
        owned.endpoint_ids.push(id.to_string());
        owned.secrets.push(endpoint["secret"].as_str().unwrap().to_string());
        owned.secrets.push(path);
    }
    let body = json!({"url": sink.url("/tenant-globex/orders"), "tenant_id": "globex", "ingest_auth": {"type": "none"}, "channels": ["orders"]});
    common::create(server, "globex-orders", &body.to_string());
    let key = |tenant: &str| {
        let response =
            server.admin("POST", &format!("/admin/tenants/{tenant}/keys"), r#"{"scopes":["ingest","read","write"]}"#);
        assert_eq!(response.status, 201, "{response:?}");
        response.json()
    };
    let acme = key("acme");
    owned.key_id = acme["key_id"].as_str().unwrap().to_string();
    owned.secrets.push(owned.key_id.clone());
    owned.secrets.push(acme["key"].as_str().unwrap().to_string());
    let globex = key("globex")["key"].as_str().unwrap().to_string();
    let operator = format!("Bearer {TOKEN}");
    let acme_key = format!("Bearer {}", acme["key"].as_str().unwrap());
    let mut send = |path: &str, bearer: &str, body: Value| {
        let headers = [("Authorization", bearer), ("Content-Type", "application/json")];
        let response = server.request("POST", path, &headers, body.to_string().as_bytes());
        assert_eq!(response.status, 202, "{path}: {response:?}");
        owned.event_ids.push(response.json()["event_id"].as_str().unwrap().to_string());
    };
    for n in 0..12 {
        let (path, bearer) = match n % 3 {
            0 => ("/ingest/ledger", &operator),
            1 => ("/ingest/legacy-orders", &acme_key),
            _ => ("/ingest/orders", &acme_key),
        };
        send(path, bearer, json!({"type": "order.created", "n": n}));
    }
    send("/publish/orders", &acme_key, json!({"type": "order.paid"}));
    // globex's own events, so that its listings have something to show (and nothing else).
    for n in 0..3 {
        let response = server.request("POST", "/ingest/globex-orders", &[], json!({"n": n}).to_string().as_bytes());
        assert_eq!(response.status, 202, "{response:?}");
    }
    for event_id in &owned.event_ids {
        common::wait_event(server, event_id, |event| event["status"] == "delivered");
    }
    owned.secrets.extend(owned.event_ids.iter().cloned());
    (owned, globex)
}

/// schemathesis's configuration: the bearer, ids that exist drawn for path parameters (so
/// requests reach real endpoints and events rather than 404s), destinations of created
/// endpoints on the sink, and the statuses valid data may get where the document cannot state a
/// rule.
fn configuration(bearer: &str, owned: &Owned, sink: &Sink) -> String {
    let list = |values: &[String]| serde_json::to_string(values).unwrap();
    let destinations = [sink.url(GENERATED_PATH)];
    format!(
        r#"continue-on-failure = true
max-redirects = 0
request-timeout = 10

[auth.openapi.bearer]
bearer = "{bearer}"

# Every refusal of invalid data is a 4xx with an E-code; 413 is the answer to a body too large.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413", "429", "5xx"]

[dictionaries.endpoints]
values = {endpoints}
[dictionaries.events]
values = {events}
[dictionaries.keys]
values = {keys}
[dictionaries.destinations]
values = {destinations}

[parameters]
"path.endpoint_id" = {{ dictionary = "endpoints", probability = 0.5 }}
"path.event_id" = {{ dictionary = "events", probability = 0.75 }}
"path.key_id" = {{ dictionary = "keys", probability = 0.5 }}
"body.url" = {{ dictionary = "destinations", probability = 0.9 }}

# Rules JSON Schema cannot state, described in the document: an endpoint's tenant must exist
# (and a key's own), retry.initial_delay_ms <= retry.max_delay_ms, circuit.cooldown_ms <=
# circuit.cooldown_max_ms, ingest_secret agrees with ingest_auth; a tenant with endpoints cannot
# be deleted. Schema-valid data may get 400 E1005 there.
[[operations]]
include-operation-id = ["putEndpoint", "createEndpoint", "deleteTenant"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "429", "5xx"]
"#,
        endpoints = list(&owned.endpoint_ids),
        events = list(&owned.event_ids),
        keys = list(std::slice::from_ref(&owned.key_id)),
        destinations = list(&destinations),
    )
}

/// One schemathesis run against `server` as `bearer`; fails the test with its output unless
/// every check passed. Returns the HAR report's entries.
fn schemathesis(tools: &Tools, server: &Server, name: &str, configuration: &str, extra: &[&str]) -> Vec<Value> {
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openapi").join(name);
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let config = directory.join("schemathesis.toml");
    std::fs::write(&config, configuration).unwrap();
    let har = directory.join("requests.har.json");
    let mut command = Command::new(&tools.schemathesis);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(document_path())
        .args(["--url", &format!("http://{}", server.address)])
        .args(["--checks", "all"])
        .args(["--seed", &SEED.to_string()])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--generation-database", "none", "--no-color", "--output-sanitize", "false"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .args(extra)
        .current_dir(&directory);
    let started = Instant::now();
    let (status, output) = common::run_bounded(command, RUN_TIMEOUT);
    std::fs::write(directory.join("output.txt"), &output).unwrap();
    let summary: String =
        output.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    match status {
        Some(status) if status.success() => {
            // Shown with --nocapture: what was generated and how long it took.
            eprintln!("schemathesis ({name}, {:.0?}):\n{summary}", started.elapsed());
        }
        Some(status) => panic!("schemathesis ({name}) failed ({status}); {}:\n{output}", directory.display()),
        None => {
            panic!("schemathesis ({name}) did not finish within {RUN_TIMEOUT:?}; {}:\n{summary}", directory.display())
        }
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    report["log"]["entries"].as_array().unwrap().clone()
}

/// One request and its answer from a HAR report.
struct Exchange<'a> {
    entry: &'a Value,
}

impl Exchange<'_> {
    fn method(&self) -> &str {
        self.entry["request"]["method"].as_str().unwrap_or_default()
    }
    fn url(&self) -> &str {
        self.entry["request"]["url"].as_str().unwrap_or_default()
    }
    /// The path without the query.
    fn path(&self) -> &str {
        let url = self.url();
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |start| &after_scheme[start..]);
        path.split('?').next().unwrap_or(path)
    }
    fn status(&self) -> u64 {
        self.entry["response"]["status"].as_u64().unwrap_or_default()
    }
    fn header<'b>(&'b self, side: &str, name: &str) -> Option<&'b str> {
        self.entry[side]["headers"]
            .as_array()?
            .iter()
            .find(|header| header["name"].as_str().is_some_and(|found| found.eq_ignore_ascii_case(name)))
            .and_then(|header| header["value"].as_str())
    }
    /// Everything the client sent: the URL, the headers and the body.
    fn request_text(&self) -> String {
        format!("{} {} {}", self.url(), self.entry["request"]["headers"], self.entry["request"]["postData"]["text"])
    }
    /// Everything the server answered: headers and body.
    fn response_text(&self) -> String {
        format!("{} {}", self.entry["response"]["headers"], self.entry["response"]["content"]["text"])
    }
}

/// The strings of `owned.secrets` an answer revealed: in the answer but not in its request.
fn revealed<'a>(exchanges: &'a [Value], owned: &'a Owned) -> Vec<(String, &'a str, String)> {
    let mut found = Vec::new();
    for entry in exchanges {
        let exchange = Exchange { entry };
        let (request, response) = (exchange.request_text(), exchange.response_text());
        for secret in &owned.secrets {
            if response.contains(secret.as_str()) && !request.contains(secret.as_str()) {
                found.push((
                    format!("{} {} -> {}", exchange.method(), exchange.url(), exchange.status()),
                    secret.as_str(),
                    response.clone(),
                ));
            }
        }
    }
    found
}

/// The resource of another tenant a request path names, if any.
fn names_owned(path: &str, owned: &Owned) -> Option<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let named = match segments.as_slice() {
        // An endpoint open to ingest takes anyone's events, a foreign key's too (as documented).
        ["ingest", id] => {
            owned.endpoint_ids.iter().any(|owned| owned == id) && !owned.open_endpoint_ids.iter().any(|open| open == id)
        }
        ["admin", "endpoints", id, ..] => owned.endpoint_ids.iter().any(|owned| owned == id),
        ["admin", "events", id, ..] => owned.event_ids.iter().any(|owned| owned == id),
        ["admin", "keys", id] => *id == owned.key_id,
        _ => false,
    };
    named.then(|| path.to_string())
}

/// What of an endpoint must not change when another tenant's key works on it.
fn configuration_of(server: &Server, id: &str) -> Value {
    let mut endpoint = server.admin("GET", &format!("/admin/endpoints/{id}"), "").json();
    for live in ["circuit_state", "queue_depth", "in_flight", "stats"] {
        endpoint.as_object_mut().unwrap().remove(live);
    }
    endpoint
}

/// The checks of a run made with `globex`'s key: no answer revealed what others own, every
/// request naming their resources (`kinds`: `endpoints`, `events`, …) was refused, and the run
/// did name each kind (else the checks prove nothing).
fn assert_kept_in_its_tenant(exchanges: &[Value], owned: &Owned, globex_key: &str, kinds: &[&str]) {
    let leaks = revealed(exchanges, owned);
    assert!(leaks.is_empty(), "another tenant's data reached globex's key: {:#?}", &leaks[..leaks.len().min(5)]);
    let bearer = format!("Bearer {globex_key}");
    let mut reached = BTreeSet::new();
    for entry in exchanges {
        let exchange = Exchange { entry };
        if exchange.header("request", "Authorization") != Some(bearer.as_str()) {
            continue;
        }
        if let Some(path) = names_owned(exchange.path(), owned) {
            let status = exchange.status();
            // A refusal: 404 as for a missing resource, or one decided before any resource is
            // looked up (401 without the scope, 400 for a malformed request, 405, 413, 429, 503).
            assert!(
                !(200..400).contains(&status),
                "{} {path} as globex's key answered {status}: {}",
                exchange.method(),
                exchange.response_text()
            );
            reached.insert(path.split('/').nth(2).unwrap_or_default().to_string());
        }
    }
    for kind in kinds {
        assert!(reached.contains(*kind), "globex's run never named another tenant's {kind}: {reached:?}");
    }
}

// The document is the contract for machines: schemathesis generates requests from it (valid and
// invalid, every operation, sequences that follow its links) and checks every answer against it.
// Run first with `globex`'s key on a server whose other endpoints and events belong to `acme` and
// `default`: nothing of theirs may appear in an answer to it, every request naming their
// endpoints, events or keys is refused, and their endpoints are as they were. Then with the
// operator token, which sees everything: the same scan finds their data there, so the scan works.
#[test]
fn schemathesis_finds_the_server_true_to_the_document() {
    let Some(tools) = Tools::find() else { return };
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    // Small segments, so that events are sealed and their proofs exist.
    let server = Server::start(directory.path(), "auto", &[("KAPSEL_WAL_SEGMENT_BYTES", "4096")]);
    let (owned, globex_key) = fixtures(&server, &sink);
    // The small segments are sealed by now, so proofs answer 200.
    let proof = server.admin("GET", &format!("/admin/events/{}/proof", owned.event_ids[0]), "");
    assert_eq!(proof.status, 200, "{proof:?}");
    let before: Vec<Value> = owned.endpoint_ids.iter().map(|id| configuration_of(&server, id)).collect();

    let as_globex = schemathesis(&tools, &server, "tenant-key", &configuration(&globex_key, &owned, &sink), &[]);
    assert_kept_in_its_tenant(&as_globex, &owned, &globex_key, &["endpoints", "events"]);
    let after: Vec<Value> = owned.endpoint_ids.iter().map(|id| configuration_of(&server, id)).collect();
    assert_eq!(before, after, "globex's key changed another tenant's endpoints");

    let delivered_before = sink.received().len();
    let as_operator = schemathesis(&tools, &server, "operator", &configuration(TOKEN, &owned, &sink), &[]);
    assert!(
        !revealed(&as_operator, &owned).is_empty(),
        "the operator's answers never showed acme's data: the scan sees nothing"
    );
    // Ingest and publish went to endpoints on the loopback sink, and were delivered there.
    sink.wait_for("deliveries of the operator's run", common::WAIT, |received| received.len() > delivered_before);
    let paths: BTreeSet<String> = sink.received().iter().map(|request| request.path.clone()).collect();
    assert!(paths.iter().any(|path| path.starts_with(GENERATED_PATH) || path.starts_with("/tenant-")), "{paths:?}");
}

// With `DATABASE_URL` the event listing, and a lookup of an event that left memory, are answered
// by the Postgres index: other fields (`delivered_at`, `trace_id`), `source: index`, every
// attempt's excerpt, and for a key a filter in SQL rather than in memory. The event and endpoint
// operations and readiness, checked against an indexing server that keeps two terminal events
// per shard in memory: as a key of `globex` that may only read (which also sees no endpoint's
// secrets, its own tenant's included), and as the operator.
#[test]
fn schemathesis_finds_the_index_answers_true_to_the_document() {
    let Some(tools) = Tools::find() else { return };
    let Some(postgres) = Postgres::start() else { return };
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let url = postgres.database("openapi");
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_MAX_CONNECTIONS", "4"),
        ("KAPSEL_TERMINAL_EVENTS_IN_MEMORY", "2"),
        ("KAPSEL_WAL_SEGMENT_BYTES", "4096"),
    ];
    let server = Server::start(directory.path(), "auto", &settings);
    let (owned, _) = fixtures(&server, &sink);
    let reader = server.admin("POST", "/admin/tenants/globex/keys", r#"{"scopes":["read"]}"#);
    assert_eq!(reader.status, 201, "{reader:?}");
    let reader = reader.json()["key"].as_str().unwrap().to_string();
    common::wait_until("the index holds every event", || {
        let ready = server.request("GET", "/readyz", &[], b"").json();
        ready["index"]["state"] == "connected" && ready["index"]["lag_records"] == 0
    });
    let listing = server.admin("GET", "/admin/events?limit=1000", "").json();
    assert_eq!(listing["source"], "index", "{listing}");
    let only = ["--include-path-regex", "^/admin/events|^/admin/endpoints|^/readyz$"];
    let as_reader = schemathesis(&tools, &server, "index-tenant-reader", &configuration(&reader, &owned, &sink), &only);
    assert_kept_in_its_tenant(&as_reader, &owned, &reader, &["endpoints", "events"]);
    let mut own_endpoints = 0;
    for entry in &as_reader {
        let exchange = Exchange { entry };
        let response = exchange.response_text();
        assert!(
            !response.contains("whsec_") || exchange.request_text().contains("whsec_"),
            "a key that may only read got a secret: {} {} -> {response}",
            exchange.method(),
            exchange.url()
        );
        own_endpoints += usize::from(exchange.status() == 200 && response.contains("globex-orders"));
    }
    assert!(own_endpoints > 0, "the reader never saw its own tenant's endpoint");
    let as_operator = schemathesis(&tools, &server, "index-operator", &configuration(TOKEN, &owned, &sink), &only);
    assert!(!revealed(&as_operator, &owned).is_empty(), "the operator's answers never showed acme's data");
}
