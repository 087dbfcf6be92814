//! The server over real TCP on 127.0.0.1. Each scenario runs the server on a monoio runtime in
//! a background thread, once with the io_uring driver and once with the legacy (epoll) driver,
//! and talks to it with plain `std::net::TcpStream` clients from the test thread, so that every
//! byte on the wire is the test's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kapsel_http::{
    bind_reuse_port, load_tls_config, serve, Handler, Limits, Request, RequestHead, Response, ServerConfig, Shutdown,
};

/// How long a client waits for any answer before the test fails instead of hanging.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

use common::{block_on, Driver, DRIVERS};

/// Answers `METHOD path body-length` as text. `/refuse` is refused from its head (404), and
/// `/shutdown-while-busy` triggers the server's shutdown, then takes 300 ms to answer. The path
/// of every parsed head goes to `heads`, for tests that must know the server has read a head.
struct Echo {
    shutdown: Shutdown,
    heads: mpsc::Sender<String>,
}

impl Handler for Echo {
    fn check_head(&self, head: &RequestHead) -> Option<Response> {
        // The test may no longer listen; the head is served all the same.
        let _ = self.heads.send(head.path.clone());
        (head.path == "/refuse").then(|| Response::error(404, "E1004", "no such endpoint"))
    }

    async fn handle(&self, request: Request) -> Response {
        if request.head.path == "/shutdown-while-busy" {
            self.shutdown.trigger();
            // Slow on purpose: the request stays in flight while the shutdown proceeds.
            monoio::time::sleep(Duration::from_millis(300)).await;
        }
        let text = format!("{} {} {}", request.head.method.as_str(), request.head.path, request.body.len());
        Response {
            status: 200,
            headers: Vec::new(),
            content_type: Some("text/plain"),
            body: text.into_bytes(),
            code: None,
        }
        .with_header("X-Peer-Loopback", request.peer.ip().is_loopback().to_string())
    }
}

/// A server on its own thread and runtime; dropping it shuts it down and joins the thread.
struct TestServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    finished: mpsc::Receiver<()>,
    /// The path of every request head the server parsed, in order.
    heads: mpsc::Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(driver: Driver, config: ServerConfig) -> Self {
        let (address_sender, address_receiver) = mpsc::channel();
        let (finished_sender, finished) = mpsc::channel();
        let (heads_sender, heads) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_requested = stop.clone();
        let thread = thread::spawn(move || {
            block_on(driver, async move {
                let listener = bind_reuse_port(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
                address_sender.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = Shutdown::new();
                // The signal is single-threaded; a task on the server's runtime relays the test
                // thread's request to stop.
                let trigger = shutdown.clone();
                monoio::spawn(async move {
                    while !stop_requested.load(Ordering::Relaxed) && !trigger.is_triggered() {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    trigger.trigger();
                });
                let handler = Rc::new(Echo { shutdown: shutdown.clone(), heads: heads_sender });
                serve(listener, Rc::new(config), handler, shutdown).await;
            });
            let _ = finished_sender.send(());
        });
        let address = address_receiver.recv_timeout(CLIENT_TIMEOUT).expect("server address");
        Self { address, stop, finished, heads, thread: Some(thread) }
    }

    /// Waits until the server has parsed the head of a request for `path` (before it reads
    /// the body), so that bytes sent after this arrive in a later read than the head.
    fn await_head(&self, path: &str) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match self.heads.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(parsed) if parsed == path => return,
                Ok(_) => {}
                Err(error) => panic!("the server never parsed the head of {path}: {error}"),
            }
        }
    }

    /// Whether `serve` returned within `timeout`.
    fn stopped_within(&self, timeout: Duration) -> bool {
        self.finished.recv_timeout(timeout).is_ok()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        common::stop_and_join(&self.stop, self.thread.take(), "server thread");
    }
}

/// A response as the client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response: status line, header fields, and a body of `Content-Length` bytes.
fn read_reply(reader: &mut impl BufRead) -> Reply {
    let mut reply = read_reply_head(reader);
    if let Some(length) = reply.header("Content-Length") {
        let mut body = vec![0; length.parse().expect("Content-Length")];
        reader.read_exact(&mut body).expect("body");
        reply.body = body;
    }
    reply
}

/// Reads the status line and header fields of a response, and no body (the answer to HEAD).
fn read_reply_head(reader: &mut impl BufRead) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 "), "not a status line: {line:?}");
    let status: u16 = line[9..12].parse().expect("status code");
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let field = line.trim_end_matches("\r\n");
        if field.is_empty() {
            break;
        }
        let (name, value) = field.split_once(": ").expect("header field");
        headers.push((name.to_owned(), value.to_owned()));
    }
    Reply { status, headers, body: Vec::new() }
}

/// A plain-text client connection.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        Self { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    fn reply(&mut self) -> Reply {
        read_reply(&mut self.reader)
    }

    fn exchange(&mut self, bytes: &[u8]) -> Reply {
        self.send(bytes);
        self.reply()
    }

    /// Whether the server closed the connection cleanly: end of stream, no reset, no bytes.
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(error) => panic!("expected a clean close, got {error}"),
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", body.len());
    request.push_str(std::str::from_utf8(body).unwrap());
    request.into_bytes()
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    // Webhook senders reuse connections; a server that closes or desynchronises after the
    // first request costs every sender a handshake per event.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        for index in 0..5 {
            let reply = client.exchange(&post(&format!("/ingest/{index}"), b"hello"));
            assert_eq!(reply.status, 200, "{driver:?}");
            assert_eq!(reply.text(), format!("POST /ingest/{index} 5"));
            assert_eq!(reply.header("Connection"), Some("keep-alive"));
            assert_eq!(reply.header("X-Peer-Loopback"), Some("true"));
        }
        // A HEAD answer announces the length ("HEAD /probe 0") but sends no body; a stray body would be read as
        // the next response.
        client.send(b"HEAD /probe HTTP/1.1\r\nHost: test\r\n\r\n");
        let reply = read_reply_head(&mut client.reader);
        assert_eq!((reply.status, reply.header("Content-Length")), (200, Some("13")));
        let reply = client.exchange(&get("/after-head"));
        assert_eq!(reply.text(), "GET /after-head 0", "{driver:?}");
    }
}

#[test]
fn pipelined_requests_in_one_write_are_answered_in_order() {
    // HTTP/1.1 clients may pipeline; answering out of order would attribute one event's
    // acknowledgement to another.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        let mut requests = get("/first");
        requests.extend(post("/second", b"12345678"));
        requests
            .extend(b"POST /third HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        requests.extend(get("/fourth"));
        client.send(&requests);
        let texts: Vec<String> = (0..4).map(|_| client.reply().text()).collect();
        assert_eq!(texts, ["GET /first 0", "POST /second 8", "POST /third 3", "GET /fourth 0"], "{driver:?}");
    }
}

#[test]
fn chunked_request_body_is_decoded() {
    // Senders that stream their payload use chunked coding; the application must get the
    // payload, not the framing.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        client.send(b"POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        // The rest is sent only once the server has parsed the head (written with the first
        // chunk), so the body reaches the decoder in two reads and it must carry its state over.
        server.await_head("/chunked");
        client.send(b"6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n");
        let reply = client.reply();
        assert_eq!((reply.status, reply.text()), (200, "POST /chunked 11".to_owned()), "{driver:?}");
        assert_eq!(client.exchange(&get("/next")).text(), "GET /next 0");
    }
}

#[test]
fn expect_continue_gets_the_interim_response_then_the_final_one() {
    // curl and many SDKs send Expect: 100-continue for larger bodies and wait for the 100
    // before sending it; without the 100 every such request stalls for a second or more.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        client.send(b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let interim = client.reply();
        assert_eq!(interim.status, 100, "{driver:?}");
        assert!(interim.body.is_empty());
        client.send(b"abcde");
        let reply = client.reply();
        assert_eq!((reply.status, reply.text()), (200, "POST /big 5".to_owned()));

        // A head the application refuses gets its answer instead of a 100, and the connection
        // closes because the announced body was never read.
        let mut refused = Client::connect(server.address);
        refused.send(b"POST /refuse HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let reply = refused.reply();
        assert_eq!(reply.status, 404, "{driver:?}");
        assert!(reply.text().contains("E1004"));
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(refused.closed_by_server());
    }
}

#[test]
fn refused_head_without_body_keeps_the_connection() {
    // A 404 for an unknown endpoint is routine; it must not cost the sender its connection
    // when nothing was left unread.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        let reply = client.exchange(&get("/refuse"));
        assert_eq!((reply.status, reply.header("Connection")), (404, Some("keep-alive")), "{driver:?}");
        assert_eq!(client.exchange(&get("/still-open")).text(), "GET /still-open 0");
    }
}

#[test]
fn http_1_0_closes_after_the_response_unless_kept_alive() {
    // HTTP/1.0 clients read the response until the connection closes unless they asked to
    // keep it; leaving it open hangs them.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        let reply = client.exchange(b"GET /old HTTP/1.0\r\n\r\n");
        assert_eq!((reply.status, reply.text()), (200, "GET /old 0".to_owned()), "{driver:?}");
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(client.closed_by_server());

        let mut kept = Client::connect(server.address);
        let reply = kept.exchange(b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(reply.header("Connection"), Some("keep-alive"), "{driver:?}");
        assert_eq!(kept.exchange(b"GET /again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").text(), "GET /again 0");
    }
}

/// Whether `value` is an IMF-fixdate (RFC 9110 §5.6.7) within a few seconds of now.
fn is_current_imf_fixdate(value: &str) -> bool {
    let Ok(date) = httpdate::parse_http_date(value) else { return false };
    let now = std::time::SystemTime::now();
    let apart = now.duration_since(date).or_else(|_| date.duration_since(now)).unwrap_or(Duration::MAX);
    // httpdate also reads the obsolete forms; only the fixed one is 29 bytes ending in GMT.
    value.len() == 29 && value.ends_with(" GMT") && apart <= Duration::from_secs(5)
}

#[test]
fn every_response_is_dated_and_head_writes_no_body_before_the_next_response() {
    // RFC 9110 §6.6.1 asks for Date on every answer of a server with a clock, and §9.3.2 for
    // HEAD to be GET without content: one stray body byte and a keep-alive client reads the
    // next response from the middle of this one.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        let mut pipeline = b"HEAD /probe HTTP/1.1\r\nHost: test\r\n\r\n".to_vec();
        pipeline.extend(b"HEAD /refuse HTTP/1.1\r\nHost: test\r\n\r\n");
        pipeline.extend(b"GET /last HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        client.send(&pipeline);
        let mut received = Vec::new();
        client.reader.read_to_end(&mut received).expect("every response, then the close");
        let text = String::from_utf8(received).expect("ASCII responses");
        let responses: Vec<&str> = text.split_inclusive("\r\n\r\n").collect();
        // Two HEAD answers that end at their empty line, then the GET's head and its body.
        assert_eq!(responses.len(), 4, "{driver:?}: {text:?}");
        assert!(responses[0].starts_with("HTTP/1.1 200 OK\r\n"), "{driver:?}: {text:?}");
        assert!(responses[0].contains("\r\nContent-Length: 13\r\n"), "{driver:?}: HEAD /probe 0 is 13 bytes");
        assert!(responses[1].starts_with("HTTP/1.1 404 Not Found\r\n"), "{driver:?}: {text:?}");
        assert!(responses[2].starts_with("HTTP/1.1 200 OK\r\n"), "{driver:?}: {text:?}");
        assert_eq!(responses[3], "GET /last 0", "{driver:?}");
        for head in &responses[..3] {
            let date = head.lines().find_map(|line| line.strip_prefix("Date: "));
            assert!(date.is_some_and(is_current_imf_fixdate), "{driver:?}: no current Date in {head:?}");
        }

        // The parser's own refusals are dated too.
        let mut malformed = Client::connect(server.address);
        let reply = malformed.exchange(b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: 1,1\r\n\r\n");
        assert_eq!(reply.status, 400, "{driver:?}");
        assert!(reply.header("Date").is_some_and(is_current_imf_fixdate), "{driver:?}: {reply:?}");
    }
}

#[test]
fn malformed_request_gets_400_then_close_while_fresh_connections_work() {
    // Bad input of any kind must get a clean 4xx with a code and cost nothing beyond its own
    // connection.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut client = Client::connect(server.address);
        let reply = client.exchange(b"GET / HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n");
        assert_eq!(reply.status, 400, "{driver:?}");
        assert!(reply.text().contains(r#""code":"E1005""#), "{}", reply.text());
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(client.closed_by_server());

        let mut fresh = Client::connect(server.address);
        assert_eq!(fresh.exchange(&get("/fresh")).status, 200);
    }
}

#[test]
fn content_length_over_the_limit_gets_413_before_the_body_is_sent() {
    // Refusing from the announced length spares both sides the upload of a payload that
    // would be refused anyway.
    for driver in DRIVERS {
        let config = ServerConfig { limits: Limits::default().with_payload_bytes_max(1024), ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut client = Client::connect(server.address);
        let reply = client.exchange(b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: 2048\r\n\r\n");
        assert_eq!(reply.status, 413, "{driver:?}");
        assert!(reply.text().contains(r#""code":"E1002""#), "{}", reply.text());
        assert!(client.closed_by_server());

        // A client that sends the body at once anyway still reads the 413: the server drains
        // what it refused instead of resetting the connection under the response.
        let mut eager = Client::connect(server.address);
        let mut request = b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: 65536\r\n\r\n".to_vec();
        request.extend(vec![b'x'; 65536]);
        let reply = eager.exchange(&request);
        assert_eq!(reply.status, 413, "{driver:?}");
        assert!(eager.closed_by_server());
    }
}

#[test]
fn chunked_body_over_the_limit_gets_413() {
    // A chunked body announces no length, so the limit must hold while it is decoded or a
    // client could make the server buffer without bound.
    for driver in DRIVERS {
        let config = ServerConfig { limits: Limits::default().with_payload_bytes_max(1024), ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut client = Client::connect(server.address);
        let mut request = b"POST /big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
        request.extend(vec![b'x'; 0x800]);
        request.extend(b"\r\n0\r\n\r\n");
        let reply = client.exchange(&request);
        assert_eq!(reply.status, 413, "{driver:?}");
        assert!(reply.text().contains(r#""code":"E1002""#));
        assert!(client.closed_by_server());
    }
}

#[test]
fn trickled_head_is_cut_off_with_408_while_others_are_served() {
    // A slowloris client keeps a connection by trickling header bytes; it must be cut off by
    // the header timeout and must never delay anyone else on the shard.
    for driver in DRIVERS {
        let config = ServerConfig { header_read_timeout: Duration::from_millis(500), ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut slow = TcpStream::connect(server.address).unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let head = b"GET /slow HTTP/1.1\r\nHost: test\r\nX-Filler: ";
        let mut received = Vec::new();
        let mut chunk = [0_u8; 1024];
        let started = Instant::now();
        // One byte per 100 ms (the read timeout paces the loop), for at most about 10 s.
        for index in 0..100 {
            if slow.write_all(&[head.get(index).copied().unwrap_or(b'a')]).is_err() {
                break;
            }
            if index == 2 {
                let asked = Instant::now();
                let mut other = Client::connect(server.address);
                assert_eq!(other.exchange(&get("/prompt")).status, 200, "{driver:?}");
                assert!(asked.elapsed() < Duration::from_secs(5), "a trickling client delayed another one");
            }
            match slow.read(&mut chunk) {
                Ok(0) => break,
                Ok(read_bytes) => received.extend_from_slice(&chunk[..read_bytes]),
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) => panic!("{driver:?}: the trickling client got {error} instead of a 408"),
            }
        }
        assert!(started.elapsed() < CLIENT_TIMEOUT, "the trickling client was never cut off");
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{driver:?}: {text}");
        assert!(text.contains(r#""code":"E1005""#), "{text}");
    }
}

#[test]
fn body_that_stops_arriving_gets_408() {
    // A stalled upload must release its connection and buffer instead of waiting forever.
    for driver in DRIVERS {
        let config = ServerConfig { body_read_timeout: Duration::from_millis(300), ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut client = Client::connect(server.address);
        let reply = client.exchange(b"POST /stalled HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(reply.status, 408, "{driver:?}");
        assert!(reply.text().contains("E1005"));
        assert!(client.closed_by_server());
    }
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    // Idle connections hold a task and a socket each; the keep-alive timeout returns them,
    // without a response the client never asked for.
    for driver in DRIVERS {
        let config = ServerConfig { keep_alive_timeout: Duration::from_millis(200), ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut client = Client::connect(server.address);
        assert_eq!(client.exchange(&get("/once")).status, 200, "{driver:?}");
        assert!(client.closed_by_server(), "{driver:?}");
    }
}

#[test]
fn connections_past_the_limit_get_503() {
    // Each connection costs memory and a descriptor; past the shard's limit the server must
    // say so (E3002, retry later) rather than accept without bound.
    for driver in DRIVERS {
        let config = ServerConfig { connections_max: 2, ..ServerConfig::default() };
        let server = TestServer::start(driver, config);
        let mut first = Client::connect(server.address);
        let mut second = Client::connect(server.address);
        assert_eq!(first.exchange(&get("/one")).status, 200, "{driver:?}");
        assert_eq!(second.exchange(&get("/two")).status, 200);

        let mut third = Client::connect(server.address);
        let reply = third.reply();
        assert_eq!(reply.status, 503, "{driver:?}");
        assert!(reply.text().contains(r#""code":"E3002""#), "{}", reply.text());
        assert_eq!(reply.header("Retry-After"), Some("1"));
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(third.closed_by_server());

        // Once a connection closes, its slot serves a newcomer.
        drop(first);
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let reply = Client::connect(server.address).exchange(&get("/later"));
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503);
            assert!(Instant::now() < deadline, "{driver:?}: the closed connection's slot was never freed");
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(second.exchange(&get("/two-again")).status, 200);
    }
}

#[test]
fn shutdown_delivers_the_in_flight_response_then_serve_returns() {
    // A deploy must not turn an accepted request into a connection reset: the request being
    // handled is answered, idle connections are closed, and the shard then stops.
    for driver in DRIVERS {
        let server = TestServer::start(driver, ServerConfig::default());
        let mut idle = Client::connect(server.address);
        assert_eq!(idle.exchange(&get("/warm")).status, 200, "{driver:?}");

        let mut busy = Client::connect(server.address);
        let reply = busy.exchange(&get("/shutdown-while-busy"));
        assert_eq!((reply.status, reply.text()), (200, "GET /shutdown-while-busy 0".to_owned()), "{driver:?}");
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(busy.closed_by_server());
        assert!(idle.closed_by_server(), "{driver:?}: the idle connection was not closed");
        drop((busy, idle));
        assert!(server.stopped_within(CLIENT_TIMEOUT), "{driver:?}: serve did not return");
        assert!(TcpStream::connect(server.address).is_err(), "{driver:?}: still accepting after shutdown");
    }
}

#[test]
fn tls_connections_are_served_and_plain_text_ones_refused() {
    // With KAPSEL_TLS_CERT and KAPSEL_TLS_KEY set, the listener must speak TLS end to end,
    // keep-alive included, and a client that does not speak it must not disturb anyone.
    let directory = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate_path = directory.path().join("cert.pem");
    let key_path = directory.path().join("key.pem");
    std::fs::write(&certificate_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
    let server_tls = Arc::new(load_tls_config(&certificate_path, &key_path).unwrap());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let connect = |address: SocketAddr| {
        let tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let session = rustls::ClientConnection::new(client_tls.clone(), "localhost".try_into().unwrap()).unwrap();
        BufReader::new(rustls::StreamOwned::new(session, tcp))
    };

    for driver in DRIVERS {
        let config = ServerConfig {
            tls: Some(server_tls.clone()),
            header_read_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        let server = TestServer::start(driver, config);

        let mut plain = Client::connect(server.address);
        plain.send(&get("/plain"));
        let mut rest = Vec::new();
        let _ = plain.reader.read_to_end(&mut rest);
        assert!(!rest.starts_with(b"HTTP/1.1 200"), "{driver:?}: plain HTTP was served on a TLS listener");

        let mut reader = connect(server.address);
        for index in 0..3 {
            reader.get_mut().write_all(&post(&format!("/secure/{index}"), b"secret")).unwrap();
            let reply = read_reply(&mut reader);
            assert_eq!((reply.status, reply.text()), (200, format!("POST /secure/{index} 6")), "{driver:?}");
        }

        // A head that never completes is answered 408 over TLS too, after the timed-out read,
        // and the connection ends with close_notify rather than a reset.
        let mut stalled = connect(server.address);
        stalled.get_mut().write_all(b"GET /stalled HTTP/1.1\r\nHost: te").unwrap();
        let reply = read_reply(&mut stalled);
        assert_eq!(reply.status, 408, "{driver:?}");
        let mut rest = Vec::new();
        assert_eq!(stalled.read_to_end(&mut rest).map(|_| rest.len()).unwrap(), 0);
    }
}
