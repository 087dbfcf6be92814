//! Test harness for the real `kapsel` binary: start it on a free loopback port with a private
//! data directory, talk HTTP/1.1 to it over real TCP with a small client written here, stop it
//! gracefully or with SIGKILL.

pub mod hostile;
pub mod nats;
pub mod pki;
pub mod postgres;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Admin token the tests configure.
pub const TOKEN: &str = "test-admin-token";

/// A running server process.
pub struct Server {
    child: Option<Child>,
    pub address: SocketAddr,
}

/// The io drivers every scenario runs under.
pub const DRIVERS: [&str; 2] = ["uring", "legacy"];

impl Server {
    /// Starts the binary with `driver` and extra environment, waits until `/readyz` is 200.
    pub fn start(data_directory: &Path, driver: &str, extra: &[(&str, &str)]) -> Server {
        let server = Self::spawn(data_directory, driver, extra);
        server.wait_ready();
        server
    }

    /// Starts the binary with its log (stderr) written to `log`, and waits until ready.
    pub fn start_logging_to(data_directory: &Path, driver: &str, extra: &[(&str, &str)], log: &Path) -> Server {
        let file = std::fs::File::create(log).expect("create the log file");
        let server = Self::spawn_with(data_directory, driver, extra, Stdio::from(file));
        server.wait_ready();
        server
    }

    /// Starts the binary without waiting for readiness over plain HTTP (a TLS listener).
    pub fn spawn(data_directory: &Path, driver: &str, extra: &[(&str, &str)]) -> Server {
        Self::spawn_with(data_directory, driver, extra, Stdio::inherit())
    }

    fn spawn_with(data_directory: &Path, driver: &str, extra: &[(&str, &str)], stderr: Stdio) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kapsel"));
        command
            .env_clear()
            .env("SERVER_ADDR", "127.0.0.1:0")
            .env("KAPSEL_DATA_DIR", data_directory)
            .env("KAPSEL_ADMIN_TOKEN", TOKEN)
            .env("KAPSEL_IO_DRIVER", driver)
            .env("KAPSEL_SHARDS", "2")
            .env("KAPSEL_ALLOW_DESTINATIONS", "127.0.0.0/8")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start kapsel");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let address = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child: Some(child), address }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = try_request(self.address, "GET", "/readyz", &[], b"") {
                if response.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        try_request(self.address, method, path, headers, body)
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    /// An admin request with the bearer token.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        let authorization = format!("Bearer {TOKEN}");
        self.request(
            method,
            path,
            &[("Authorization", &authorization), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Creates an endpoint pointing at a harmless URL, open to ingest.
    pub fn create_endpoint(&self, id: &str) {
        let body = open_ingest(r#"{"url":"http://127.0.0.1:9/hook"}"#);
        let response = self.admin("PUT", &format!("/admin/endpoints/{id}"), &body);
        assert!(matches!(response.status, 200 | 201), "create endpoint: {response:?}");
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        wait_exit(&mut child)
    }

    /// SIGSTOP: the process stops dead (a long pause, a frozen VM) until [`Server::resume`].
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("running"), "STOP");
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        signal(self.child.as_ref().expect("running"), "CONT");
    }

    /// SIGKILL: the crash case.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits a message head (request or status line, then fields) into its first line, its fields
/// and its Content-Length (0 when absent).
pub fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>, usize) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    (start_line, headers, length)
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The E-code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One request on a fresh connection, `Connection: close`.
pub fn try_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: kapsel\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    read_response(&mut stream)
}

/// Sends raw bytes on a fresh connection and reads one response (or what came back).
pub fn raw(address: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(bytes)?;
    read_response(&mut stream)
}

/// Reads one response: status line, headers, and a Content-Length body.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position + 4;
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let (start_line, headers, length) = parse_head(&buffer[..head_end]);
    let status: u16 = start_line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Ok(Response { status, headers, body })
}

/// How long a test waits for something that should happen: generous, to catch a stall, never to
/// judge speed.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds (or fails the test after [`WAIT`]), for state that has no
/// push notification.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the admin API until the event satisfies `condition` (state changes have no push
/// API), or fails the test after [`WAIT`]; the event's JSON.
pub fn wait_event(
    server: &Server,
    event_id: &str,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let event = server.admin("GET", &format!("/admin/events/{event_id}"), "").json();
        if condition(&event) {
            return event;
        }
        assert!(Instant::now() < deadline, "event never reached the expected state: {event}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An endpoint body open to anyone's ingest (`"ingest_auth":{"type":"none"}`) unless it says how
/// ingest is authenticated: new endpoints take ingest with a key by default, and most tests are
/// about something else.
pub fn open_ingest(body: &str) -> String {
    if body.contains("\"ingest_auth\"") || body.contains("\"ingest_secret\"") || !body.starts_with('{') {
        return body.to_string();
    }
    let rest = body[1..].trim_start();
    let separator = if rest.starts_with('}') { "" } else { "," };
    format!(r#"{{"ingest_auth":{{"type":"none"}}{separator}{rest}"#)
}

/// Creates or replaces an endpoint, open to ingest unless the body says otherwise; its JSON.
pub fn create(server: &Server, id: &str, body: &str) -> serde_json::Value {
    let response = server.admin("PUT", &format!("/admin/endpoints/{id}"), &open_ingest(body));
    assert!(matches!(response.status, 200 | 201), "{response:?}");
    response.json()
}

/// Ingests a JSON body, optionally with an idempotency key; the event id (202 expected, or 200
/// for a repeated key).
pub fn ingest_keyed(server: &Server, endpoint: &str, key: Option<&str>, body: &[u8]) -> String {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("X-Idempotency-Key", key));
    }
    let response = server.request("POST", &format!("/ingest/{endpoint}"), &headers, body);
    let accepted = response.status == 202 || (key.is_some() && response.status == 200);
    assert!(accepted, "{response:?}");
    response.json()["event_id"].as_str().unwrap().to_string()
}

/// Ingests a JSON body; the event id (202 expected).
pub fn ingest(server: &Server, endpoint: &str, body: &[u8]) -> String {
    ingest_keyed(server, endpoint, None, body)
}

/// The sum of a metric's samples in `GET /metrics` (all shards).
pub fn metric(server: &Server, name: &str) -> f64 {
    let text = String::from_utf8(server.request("GET", "/metrics", &[], b"").body).unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The shard that owns an endpoint id (or a tenant's channel, `tenant/channel`) with `shards`
/// shards: FNV-1a, as the engine pins it, so a test can place endpoints on the shards it wants.
pub fn shard_of(id: &str, shards: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % shards
}

/// Runs a command to its end or `timeout`, both pipes drained on their own threads (a chatty
/// child cannot block on a full pipe): its exit status (`None` when it was killed at the
/// timeout) and its output, standard output then standard error.
pub fn run_bounded(mut command: Command, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|error| panic!("start {command:?}: {error}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, format!("{}{}", stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default()))
}

/// Says a test cannot run for want of `needed` (SKIPPED on standard error), or fails it under
/// `CI=true`, where `.ci/run` installs everything the suite needs.
pub fn skip_for_want_of(needed: &str) {
    assert!(std::env::var("CI").ok().as_deref() != Some("true"), "{needed} under CI=true; .ci/run installs it");
    // Straight to the process's standard error: the test harness would swallow eprintln.
    let _ = std::io::stderr().write_all(format!("SKIPPED: {needed}\n").as_bytes());
}
