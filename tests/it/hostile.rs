//! Hostile and malformed clients against the real binary over real TCP, under both io drivers:
//! every bad request gets a clean 4xx with its E-code and never hurts the next client; bodies
//! cut short, slowloris trickles and pipelined requests are served or refused without harm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::{Response, Server, DRIVERS, TOKEN};

/// The payload limit the servers here run with, so that "too large" is cheap to send.
const PAYLOAD_BYTES_MAX: &str = "1024";

/// How long any single read from the server may take before the test calls it a hang. Generous
/// on purpose: it bounds a wait, it does not judge speed.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// What must happen to the connection after the error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// The framing is lost (or the body was left unread): the server closes the connection.
    Closed,
    /// The request was well framed and fully read: the same connection serves the next request.
    KeepsServing,
}

/// One hostile request and the answer the contract asks for.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    code: &'static str,
    after: After,
}

impl Case {
    fn new(name: &'static str, bytes: impl Into<Vec<u8>>, status: u16, code: &'static str, after: After) -> Self {
        Case { name, bytes: bytes.into(), status, code, after }
    }
}

/// A client connection that reads responses one after another, keeping the bytes past one
/// response for the next (the harness's `read_response` drops them, which pipelining cannot).
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(READ_TIMEOUT)).expect("write timeout");
        Client { stream, buffer: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk)?;
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(read)
    }

    /// Reads one whole response (status line, headers, Content-Length body).
    fn response(&mut self) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(position) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            if self.fill()? == 0 {
                let received = String::from_utf8_lossy(&self.buffer).into_owned();
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, format!("closed after {received:?}")));
            }
        };
        let (status_line, headers, length) = common::parse_head(&self.buffer[..head_end]);
        let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok());
        while self.buffer.len() < head_end + length {
            if self.fill()? == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside a response body"));
            }
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Ok(Response { status: status.unwrap_or(0), headers, body })
    }

    /// Whether the server closed the connection: end of stream (or a reset) with no further
    /// bytes. A read timeout means the server kept the connection open.
    fn closed_by_server(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) if matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => true,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(error) => panic!("reading after the response failed: {error}"),
        }
    }
}

/// A complete, valid ingest of `{}` to the endpoint `ok`, with extra header lines.
fn ingest_bytes(extra_headers: &str) -> Vec<u8> {
    format!("POST /ingest/ok HTTP/1.1\r\nHost: kapsel\r\n{extra_headers}Content-Length: 2\r\n\r\n{{}}").into_bytes()
}

/// A normal ingest on a fresh connection: the proof that the server still serves.
fn assert_ingest_accepted(server: &Server, context: &str) {
    let response =
        common::try_request(server.address, "POST", "/ingest/ok", &[("Content-Type", "application/json")], b"{}")
            .unwrap_or_else(|error| panic!("{context}: a normal ingest on a fresh connection failed: {error}"));
    assert_eq!(response.status, 202, "{context}: a normal ingest on a fresh connection: {response:?}");
}

/// A request head with `Host` and the given field lines, and a body.
fn request(request_line: &str, fields: &str, body: &str) -> Vec<u8> {
    format!("{request_line}\r\nHost: kapsel\r\n{fields}\r\n{body}").into_bytes()
}

/// The hostile requests, each with the status, code and connection fate the contract asks for.
fn cases() -> Vec<Case> {
    use After::{Closed, KeepsServing};
    let ingest = "POST /ingest/ok HTTP/1.1";
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let long_request_line = format!("GET /{} HTTP/1.1", "a".repeat(9000));
    let padding = format!("X-Pad: {}\r\n", "a".repeat(17 * 1024));
    let many_fields: String = (0..70).map(|index| format!("X-Field-{index}: v\r\n")).collect();
    let long_key = format!("X-Idempotency-Key: {}\r\n", "k".repeat(256));
    let oversized_chunk = format!("800\r\n{}\r\n0\r\n\r\n", "x".repeat(2048));
    let endpoint = r#"{"url":"http://127.0.0.1:9/x"}"#;
    let bad_json = "{\"url\": ";
    let length = |body: &str| format!("Content-Length: {}\r\n", body.len());
    let chunked = "Transfer-Encoding: chunked\r\n";
    vec![
        Case::new("garbage request line", &b"hello there\r\n\r\n"[..], 400, "E1005", Closed),
        Case::new(
            "TLS ClientHello on the plain listener",
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            400,
            "E1005",
            Closed,
        ),
        Case::new("request line over 8 KiB", request(&long_request_line, "", ""), 414, "E1005", Closed),
        Case::new("request head over 16 KiB", request("GET /healthz HTTP/1.1", &padding, ""), 431, "E1005", Closed),
        Case::new(
            "more than 64 header fields",
            request("GET /healthz HTTP/1.1", &many_fields, ""),
            431,
            "E1005",
            Closed,
        ),
        Case::new(
            "two differing Content-Length fields",
            request(ingest, "Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
            400,
            "E1005",
            Closed,
        ),
        Case::new(
            "Content-Length with Transfer-Encoding: chunked",
            request(ingest, &format!("Content-Length: 7\r\n{chunked}"), "2\r\n{}\r\n0\r\n\r\n"),
            400,
            "E1005",
            Closed,
        ),
        Case::new(
            "Transfer-Encoding other than chunked",
            request(ingest, "Transfer-Encoding: gzip\r\n", ""),
            400,
            "E1005",
            Closed,
        ),
        Case::new("Content-Length not a number", request(ingest, "Content-Length: -2\r\n", "{}"), 400, "E1005", Closed),
        Case::new(
            "chunk size that is not hexadecimal",
            request(ingest, chunked, "zz\r\n{}\r\n0\r\n\r\n"),
            400,
            "E1005",
            Closed,
        ),
        // Only the head is sent: the refusal must come without waiting for 5000 bytes of body.
        Case::new(
            "Content-Length over the payload limit, body never sent",
            request(ingest, "Content-Length: 5000\r\n", ""),
            413,
            "E1002",
            Closed,
        ),
        Case::new(
            "chunked body over the payload limit",
            request(ingest, chunked, &oversized_chunk),
            413,
            "E1002",
            Closed,
        ),
        Case::new(
            "invalid UTF-8 in the path",
            &b"POST /ingest/caf\xc3\x28 HTTP/1.1\r\nHost: kapsel\r\nContent-Length: 2\r\n\r\n{}"[..],
            400,
            "E1005",
            Closed,
        ),
        Case::new("unsupported method BREW", request("BREW /ingest/ok HTTP/1.1", "", ""), 405, "E1005", Closed),
        Case::new("HTTP/2 connection preface", &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], 400, "E1005", Closed),
        Case::new("bogus version HTTP/1.7", request("GET /healthz HTTP/1.7", "", ""), 400, "E1005", Closed),
        Case::new("HTTP/1.1 without Host", &b"GET /healthz HTTP/1.1\r\n\r\n"[..], 400, "E1005", Closed),
        Case::new("Expect other than 100-continue", ingest_bytes("Expect: 200-ok\r\n"), 417, "E1005", Closed),
        Case::new("NUL in a header value", ingest_bytes("X-Note: a\x00b\r\n"), 400, "E1005", Closed),
        Case::new("bare CR in a header value", ingest_bytes("X-Note: a\rb\r\n"), 400, "E1005", Closed),
        Case::new(
            "repeated X-Idempotency-Key",
            ingest_bytes("X-Idempotency-Key: a\r\nX-Idempotency-Key: b\r\n"),
            400,
            "E1005",
            Closed,
        ),
        // Refused from the head, so the body is never read and the framing is lost.
        Case::new(
            "admin call with a body and no token",
            request("PUT /admin/endpoints/intruder HTTP/1.1", &length(endpoint), endpoint),
            401,
            "E1001",
            Closed,
        ),
        Case::new(
            "non-ASCII idempotency key",
            [
                &b"POST /ingest/ok HTTP/1.1\r\nHost: kapsel\r\nX-Idempotency-Key: caf\xc3\xa9\r\n"[..],
                b"Content-Length: 2\r\n\r\n{}",
            ]
            .concat(),
            400,
            "E1005",
            KeepsServing,
        ),
        Case::new("idempotency key over 255 bytes", ingest_bytes(&long_key), 400, "E1005", KeepsServing),
        Case::new(
            "bad JSON on PUT /admin/endpoints/x",
            request("PUT /admin/endpoints/x HTTP/1.1", &format!("{bearer}{}", length(bad_json)), bad_json),
            400,
            "E1005",
            KeepsServing,
        ),
        Case::new(
            "admin call without a token",
            request("GET /admin/endpoints/ok HTTP/1.1", "", ""),
            401,
            "E1001",
            KeepsServing,
        ),
        Case::new(
            "admin call with a wrong token",
            request("GET /admin/endpoints/ok HTTP/1.1", "Authorization: Bearer not-the-token\r\n", ""),
            401,
            "E1001",
            KeepsServing,
        ),
        // Without the token an admin path answers 401 whatever it is: nobody learns which paths
        // or ids exist without it.
        Case::new(
            "unknown admin path without a token",
            request("GET /admin/secrets HTTP/1.1", "", ""),
            401,
            "E1001",
            KeepsServing,
        ),
        Case::new(
            "bad event id on an admin path without a token",
            request("GET /admin/events/not-an-id HTTP/1.1", "", ""),
            401,
            "E1001",
            KeepsServing,
        ),
        Case::new(
            "wrong method on an admin path without a token",
            request("PATCH /admin/endpoints/ok HTTP/1.1", "", ""),
            401,
            "E1001",
            KeepsServing,
        ),
        Case::new("unknown route", request("GET /wp-login.php HTTP/1.1", "", ""), 404, "E1004", KeepsServing),
        Case::new(
            "ingest to an unknown endpoint",
            request("POST /ingest/nobody HTTP/1.1", "Content-Length: 2\r\n", "{}"),
            404,
            "E1004",
            KeepsServing,
        ),
        Case::new(
            "wrong method on the ingest path",
            request("GET /ingest/ok HTTP/1.1", "", ""),
            405,
            "E1005",
            KeepsServing,
        ),
    ]
}

// Bad input of any kind must get a clean 4xx with its code, must not desynchronise the
// connection it came on, and must never cost the next client anything.
#[test]
fn hostile_requests_get_clean_errors_and_the_server_keeps_serving() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[("KAPSEL_MAX_PAYLOAD_BYTES", PAYLOAD_BYTES_MAX)]);
        server.create_endpoint("ok");
        let cases = cases();
        assert!(cases.len() >= 18);
        for case in cases {
            let name = format!("{driver}: {}", case.name);
            let mut client = Client::connect(server.address);
            client.send(&case.bytes).unwrap_or_else(|error| panic!("{name}: sending the request failed: {error}"));
            let response = client.response().unwrap_or_else(|error| panic!("{name}: no response: {error}"));
            let body = String::from_utf8_lossy(&response.body).into_owned();
            assert_eq!(response.status, case.status, "{name}: status; body {body}");
            assert_eq!(response.code(), case.code, "{name}: error code; body {body}");
            let message = response.json()["error"]["message"].as_str().map(str::to_owned);
            assert!(message.is_some_and(|message| !message.is_empty()), "{name}: the error has a message: {body}");
            match case.after {
                After::Closed => {
                    assert!(
                        client.closed_by_server(),
                        "{name}: the server must close a connection whose framing is lost"
                    )
                }
                After::KeepsServing => {
                    client
                        .send(&ingest_bytes(""))
                        .unwrap_or_else(|error| panic!("{name}: reusing the connection: {error}"));
                    let next = client.response().unwrap_or_else(|error| panic!("{name}: the kept connection: {error}"));
                    assert_eq!(next.status, 202, "{name}: an ingest on the same connection after the error: {next:?}");
                }
            }
            drop(client);
            assert_ingest_accepted(&server, &name);
        }
    }
}

// A client that announces a body and disappears halfway must not crash the server, hold it up,
// or leave a half-received event behind.
#[test]
fn body_cut_short_then_closed_leaves_the_server_serving() {
    let head =
        "POST /ingest/ok HTTP/1.1\r\nHost: kapsel\r\nX-Idempotency-Key: cut-short\r\nContent-Length: 1000\r\n\r\n";
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[("KAPSEL_MAX_PAYLOAD_BYTES", PAYLOAD_BYTES_MAX)]);
        server.create_endpoint("ok");

        // Half-close: the server sees the end of the stream with 990 bytes missing.
        let mut half_closed = Client::connect(server.address);
        half_closed.send(head.as_bytes()).unwrap();
        half_closed.send(&[b'x'; 10]).unwrap();
        half_closed.stream.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        match half_closed.stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            Err(error) => panic!("{driver}: the server neither answered nor closed a cut-short request: {error}"),
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(!answer.starts_with("HTTP/1.1 2"), "{driver}: a cut-short body was acknowledged: {answer}");

        // Full close: the socket goes away with the body still owed.
        let mut closed = Client::connect(server.address);
        closed.send(head.as_bytes()).unwrap();
        closed.send(&[b'x'; 10]).unwrap();
        drop(closed);

        assert_ingest_accepted(&server, &format!("{driver}: after bodies cut short"));
        // Neither partial request was recorded: the key they carried is still unused.
        let keyed = server.request("POST", "/ingest/ok", &[("X-Idempotency-Key", "cut-short")], b"{}");
        assert_eq!(keyed.status, 202, "{driver}: the key of a cut-short request must not be taken: {keyed:?}");
    }
}

/// Connections the slowloris test holds open.
const SLOW_CONNECTIONS: usize = 200;
/// Rounds of one byte per connection the trickler sends at most before it stops by itself.
const TRICKLE_ROUNDS_MAX: usize = 40;
/// Round after which the honest client goes in.
const TRICKLE_ROUNDS_STARTED: usize = 2;
/// Pause between rounds: the trickle's pace, which is the whole point of the attack.
const TRICKLE_INTERVAL: Duration = Duration::from_millis(200);

/// Writes one byte of a never-ending request head to each connection per round until told to
/// stop or out of rounds; signals `started` after a few rounds. Returns the connections, so
/// that the caller closes them.
fn trickle(
    mut connections: Vec<Option<TcpStream>>,
    started: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) -> Vec<Option<TcpStream>> {
    let mut head = b"POST /ingest/ok HTTP/1.1\r\nHost: kapsel\r\nX-Trickle: ".to_vec();
    head.resize(head.len() + TRICKLE_ROUNDS_MAX, b'a');
    for (round, byte) in head.iter().take(TRICKLE_ROUNDS_MAX).enumerate() {
        for slot in connections.iter_mut() {
            // A connection the server has cut off is simply dropped from the trickle.
            if slot.as_mut().is_some_and(|stream| stream.write_all(&[*byte]).is_err()) {
                *slot = None;
            }
        }
        // By the third round every connection has a partial head buffered in the server.
        if round == TRICKLE_ROUNDS_STARTED {
            let _ = started.send(());
        }
        match stop.recv_timeout(TRICKLE_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    connections
}

// A few hundred clients trickling their heads a byte at a time must not keep an honest client
// from being served: each slow connection may only ever stall itself.
#[test]
fn slowloris_connections_do_not_starve_a_normal_client() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        server.create_endpoint("ok");
        let connections: Vec<Option<TcpStream>> = (0..SLOW_CONNECTIONS)
            .map(|_| {
                let stream = TcpStream::connect(server.address).expect("slow connection");
                stream.set_nodelay(true).expect("nodelay");
                stream.set_write_timeout(Some(Duration::from_secs(5))).expect("write timeout");
                Some(stream)
            })
            .collect();
        let (started_sender, started) = mpsc::channel();
        let (stop, stop_receiver) = mpsc::channel();
        let trickler = std::thread::spawn(move || trickle(connections, started_sender, stop_receiver));
        started.recv_timeout(Duration::from_secs(30)).expect("the trickle started");

        let response = common::try_request(server.address, "POST", "/ingest/ok", &[], b"{}");
        let _ = stop.send(());
        let connections = trickler.join().unwrap();
        let response = response.unwrap_or_else(|error| panic!("{driver}: ingest during the trickle failed: {error}"));
        assert_eq!(response.status, 202, "{driver}: ingest during the trickle: {response:?}");
        drop(connections);
        assert_ingest_accepted(&server, &format!("{driver}: after the trickle"));
    }
}

// Pipelined requests on one keep-alive connection must each be answered, in the order sent;
// answering out of order would hand a client another request's event id.
#[test]
fn pipelined_ingests_are_answered_in_order() {
    for driver in DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[]);
        server.create_endpoint("ok");
        let mut client = Client::connect(server.address);
        let pipeline = [
            ingest_bytes("X-Idempotency-Key: pipelined-first\r\n"),
            ingest_bytes("X-Idempotency-Key: pipelined-second\r\n"),
        ]
        .concat();
        client.send(&pipeline).unwrap();
        let first = client.response().unwrap_or_else(|error| panic!("{driver}: first response: {error}"));
        let second = client.response().unwrap_or_else(|error| panic!("{driver}: second response: {error}"));
        assert_eq!((first.status, second.status), (202, 202), "{driver}: {first:?} {second:?}");
        let first_id = first.json()["event_id"].as_str().unwrap().to_string();
        let second_id = second.json()["event_id"].as_str().unwrap().to_string();
        assert_ne!(first_id, second_id, "{driver}: two ingests, two events");

        // The idempotency keys tell which request each answer belonged to.
        for (key, id) in [("pipelined-first", &first_id), ("pipelined-second", &second_id)] {
            let repeat = server.request("POST", "/ingest/ok", &[("X-Idempotency-Key", key)], b"{}");
            assert_eq!(repeat.status, 200, "{driver}: repeat of {key}: {repeat:?}");
            assert_eq!(
                repeat.json()["event_id"].as_str(),
                Some(id.as_str()),
                "{driver}: the answer to {key} came out of order"
            );
        }
    }
}
