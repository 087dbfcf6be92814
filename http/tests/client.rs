//! The delivery client over real TCP on 127.0.0.1. Each scenario runs the client on a monoio
//! runtime in the test thread, once with the io_uring driver and once with the legacy (epoll)
//! driver, against sinks written here: scripted servers on plain `std::net` sockets in
//! threads, whose every byte is the test's own (for misbehaving destinations), and Kapsel's
//! own server where a well-behaved destination is enough.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/it/common/pki.rs"]
mod pki;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kapsel_http::{
    bind_reuse_port, load_tls_config, serve, tls_client_config, Client, ClientConfig, DestinationPolicy, Handler,
    HeaderName, OutboundRequest, OutboundResponse, Request, Resolver, Response, SendError, ServerConfig, Shutdown,
    Target,
};

/// How long a sink waits on a silent client, or the test on a sink, before giving up.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// A shared client TLS configuration.
type TlsConfig = Arc<kapsel_http::rustls::ClientConfig>;

/// The allow list that lets the client reach sinks on this machine.
const ALLOW_LOOPBACK: &str = "127.0.0.0/8,::1/128";

use common::{block_on, Driver, DRIVERS};
use pki::test_pki;

/// A client allowing `allow_list`, with the webpki roots plus `tls` roots if given. Build it
/// inside the runtime: its pooled connections must be dropped there.
fn client(allow_list: &str, tls: Option<TlsConfig>) -> Client {
    let tls = tls.unwrap_or_else(|| Arc::new(tls_client_config(None).unwrap()));
    let config = ClientConfig {
        destinations: DestinationPolicy::parse_allow_list(allow_list).unwrap(),
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::new(tls)
    };
    Client::new(config, Resolver::new(1))
}

fn request(url: &str, body: &[u8], timeout: Duration) -> OutboundRequest {
    OutboundRequest {
        target: Rc::new(Target::parse(url).unwrap()),
        headers: vec![
            ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".to_owned()),
            ("webhook-timestamp", "1674087231".to_owned()),
            ("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=".to_owned()),
        ],
        content_type: Some("application/json".to_owned()),
        body: Rc::from(body),
        timeout,
    }
}

async fn send(client: &Client, url: &str) -> Result<OutboundResponse, SendError> {
    client.send(request(url, b"{\"n\":1}", WAIT_MAX)).await
}

/// One request as a scripted sink received it.
#[derive(Debug, Clone)]
struct Received {
    /// Which accepted connection it came on, from 0.
    connection: usize,
    /// Request line and header fields, as sent.
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// What a scripted sink does with a request.
enum Reply {
    /// Writes these bytes and waits for the next request.
    Send(Vec<u8>),
    /// Writes these bytes and closes the connection.
    SendAndClose(Vec<u8>),
    /// Never answers; holds the connection open until the sink stops.
    Silence,
    /// Closes the connection without a word.
    Close,
    /// Writes these bytes, then an endless body (64 KiB at a time, counted in the counter)
    /// until the client goes away or the sink stops.
    Endless(Vec<u8>, Arc<AtomicUsize>),
    /// Writes these bytes one at a time, pausing this long before each.
    Trickle(Vec<u8>, Duration),
}

type Script = dyn Fn(usize, &Received) -> Reply + Send + Sync;

/// A scripted destination on its own threads: a thread accepts, one thread per connection
/// reads requests (head, then a `Content-Length` body) and answers what the script says.
struct Sink {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    /// Connections the sink has closed (its end of the socket dropped).
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let thread = {
            let (received, connections, closed, stop) =
                (received.clone(), connections.clone(), closed.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let connection = connections.fetch_add(1, Ordering::SeqCst);
                            let (script, received, closed, stop) =
                                (script.clone(), received.clone(), closed.clone(), stop.clone());
                            thread::spawn(move || {
                                // `serve_scripted` owns the stream: it is closed once this returns.
                                serve_scripted(stream, connection, &*script, &received, &stop);
                                closed.fetch_add(1, Ordering::SeqCst);
                            });
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                        Err(error) => panic!("accept: {error}"),
                    }
                }
            })
        };
        Self { address, received, connections, closed, stop, thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Waits, without blocking the client's runtime, until `condition` holds; fails the test after
/// [`WAIT_MAX`].
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        common::stop_and_join(&self.stop, self.thread.take(), "sink accept thread");
    }
}

fn serve_scripted(
    stream: TcpStream,
    connection: usize,
    script: &Script,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    stream.set_read_timeout(Some(WAIT_MAX)).unwrap();
    stream.set_write_timeout(Some(WAIT_MAX)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some((head, body)) = read_request(&mut reader) {
        let request = Received { connection, head, body };
        let index = {
            let mut received = received.lock().unwrap();
            received.push(request.clone());
            received.len() - 1
        };
        match script(index, &request) {
            Reply::Send(bytes) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendAndClose(bytes) => {
                let _ = writer.write_all(&bytes);
                return;
            }
            Reply::Silence => {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < WAIT_MAX {
                    thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            Reply::Close => return,
            Reply::Endless(head, written) => {
                if writer.write_all(&head).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while !stop.load(Ordering::Relaxed) && writer.write_all(&chunk).is_ok() {
                    written.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                return;
            }
            Reply::Trickle(bytes, pause) => {
                for byte in bytes {
                    thread::sleep(pause);
                    if stop.load(Ordering::Relaxed) || writer.write_all(&[byte]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads a request head and its `Content-Length` body; `None` at the end of the stream.
fn read_request(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|value| value.trim().to_owned()))
        .map_or(0, |value| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A response with a `Content-Length` body.
fn response(status_line: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 {status_line}\r\n").into_bytes();
    for header in headers {
        bytes.extend_from_slice(format!("{header}\r\n").as_bytes());
    }
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn ok() -> Reply {
    Reply::Send(response("200 OK", &[], b"ok"))
}

#[test]
fn post_reaches_the_sink_with_headers_and_body_intact() {
    // The destination verifies the signature over the exact body and headers we send; any
    // change on the way makes every delivery fail verification.
    for driver in DRIVERS {
        let sink = Sink::start(|_, _| Reply::Send(response("202 Accepted", &[], b"queued")));
        let url = sink.url("/hooks/orders?tenant=7");
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let body = b"{\"email\":\"test@example.com\",\"username\":\"test_user\"}";
            let response = client.send(request(&url, body, WAIT_MAX)).await.unwrap();
            assert_eq!((response.status, response.body_excerpt.as_slice()), (202, &b"queued"[..]), "{driver:?}");
            assert!(response.latency < WAIT_MAX);
        });
        let received = sink.received();
        assert_eq!(received.len(), 1, "{driver:?}");
        let request = &received[0];
        assert!(request.head.starts_with("POST /hooks/orders?tenant=7 HTTP/1.1\r\n"), "{}", request.head);
        assert_eq!(request.header("host"), Some(sink.address.to_string().as_str()));
        assert_eq!(request.header("user-agent"), Some(concat!("Kapsel/", env!("CARGO_PKG_VERSION"))));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("content-length"), Some("51"));
        assert_eq!(request.header("webhook-id"), Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"));
        assert_eq!(request.header("webhook-timestamp"), Some("1674087231"));
        assert_eq!(request.header("webhook-signature"), Some("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="));
        assert_eq!(request.body, b"{\"email\":\"test@example.com\",\"username\":\"test_user\"}");
    }
}

/// The peer, `webhook-id` and body of every request a [`Recorder`] saw.
type Seen = Arc<Mutex<Vec<(SocketAddr, Option<Vec<u8>>, Vec<u8>)>>>;

/// Records every request; answers 200 or, for `/fail`, 500.
struct Recorder {
    seen: Seen,
}

impl Handler for Recorder {
    async fn handle(&self, request: Request) -> Response {
        let webhook_id = request.head.headers.get(HeaderName::WebhookId).map(<[u8]>::to_vec);
        self.seen.lock().unwrap().push((request.peer, webhook_id, request.body));
        let status = if request.head.path == "/fail" { 500 } else { 200 };
        Response::json(status, b"{}".to_vec())
    }
}

/// Kapsel's own server as a destination, on its own thread and runtime (the legacy driver:
/// the client under test is what runs on both).
struct KapselSink {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KapselSink {
    fn start(config: ServerConfig, seen: Seen) -> Self {
        let (address_sender, address_receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_requested = stop.clone();
        let thread = thread::spawn(move || {
            block_on(Driver::Legacy, async move {
                let listener = bind_reuse_port(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
                address_sender.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = Shutdown::new();
                let trigger = shutdown.clone();
                monoio::spawn(async move {
                    while !stop_requested.load(Ordering::Relaxed) {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    trigger.trigger();
                });
                serve(listener, Rc::new(config), Rc::new(Recorder { seen }), shutdown).await;
            });
        });
        let address = address_receiver.recv_timeout(WAIT_MAX).expect("server address");
        Self { address, stop, thread: Some(thread) }
    }
}

impl Drop for KapselSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !thread::panicking() {
                result.expect("server thread");
            }
        }
    }
}

#[test]
fn keep_alive_reuses_one_connection_for_several_sends() {
    // A connection per delivery costs a handshake each (a TLS one for most destinations);
    // consecutive deliveries to one endpoint must share a connection.
    for driver in DRIVERS {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = KapselSink::start(ServerConfig::default(), seen.clone());
        let url = format!("http://{}/hooks", sink.address);
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            for index in 0..5 {
                let path = if index == 2 { "/fail" } else { "/hooks" };
                let url = format!("http://{}{path}", sink.address);
                let response = send(&client, &url).await.unwrap();
                assert_eq!(response.status, if index == 2 { 500 } else { 200 }, "{driver:?}");
                assert_eq!(client.idle_connections(), 1, "{driver:?}");
            }
            assert_eq!(send(&client, &url).await.unwrap().body_excerpt, b"{}");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 6, "{driver:?}");
        assert!(seen.iter().all(|(peer, _, _)| *peer == seen[0].0), "{driver:?}: {seen:?}");
        assert!(seen.iter().all(
            |(_, id, body)| id.as_deref() == Some(&b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"[..]) && body == b"{\"n\":1}"
        ));
    }
}

#[test]
fn error_statuses_and_redirects_are_responses() {
    // A 5xx is retried and a 4xx or 3xx is not, but all of them are answers the engine must
    // see with their status, Retry-After and body; a redirect is never followed, or a
    // destination could bounce deliveries to an address the SSRF guard never checked.
    for driver in DRIVERS {
        let sink = Sink::start(|_, request| {
            let path = request.head.split(' ').nth(1).unwrap_or_default().to_owned();
            Reply::Send(match path.as_str() {
                "/500" => response("500 Internal Server Error", &[], b"database down"),
                "/404" => response("404 Not Found", &[], b"no such hook"),
                "/429" => response("429 Too Many Requests", &["Retry-After: 30"], b""),
                "/503" => response("503 Service Unavailable", &["Retry-After: Fri, 31 Dec 2027 23:59:59 GMT"], b""),
                "/301" => response("301 Moved Permanently", &["Location: http://169.254.169.254/latest"], b"moved"),
                _ => response("200 OK", &[], b""),
            })
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let cases: [(&str, u16, Option<&str>, &[u8]); 5] = [
                ("/500", 500, None, b"database down"),
                ("/404", 404, None, b"no such hook"),
                ("/429", 429, Some("30"), b""),
                ("/503", 503, Some("Fri, 31 Dec 2027 23:59:59 GMT"), b""),
                ("/301", 301, None, b"moved"),
            ];
            for (path, status, retry_after, excerpt) in cases {
                let response = send(&client, &sink.url(path)).await.unwrap();
                assert_eq!(response.status, status, "{driver:?} {path}");
                assert_eq!(response.retry_after.as_deref(), retry_after, "{driver:?} {path}");
                assert_eq!(response.body_excerpt, excerpt, "{driver:?} {path}");
            }
        });
        let paths: Vec<String> =
            sink.received().iter().map(|request| request.head.split(' ').nth(1).unwrap().to_owned()).collect();
        assert_eq!(paths, ["/500", "/404", "/429", "/503", "/301"], "{driver:?}: the redirect was followed");
        assert_eq!(sink.connections(), 1, "{driver:?}");
    }
}

#[test]
fn a_sink_that_never_answers_times_out() {
    // A destination that accepts and hangs must cost an attempt its timeout (E2001), not a
    // delivery slot forever.
    for driver in DRIVERS {
        let sink = Sink::start(|_, _| Reply::Silence);
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let started = Instant::now();
            let error = client.send(request(&sink.url("/"), b"{}", Duration::from_millis(300))).await.unwrap_err();
            assert_eq!(error, SendError::Timeout, "{driver:?}");
            assert_eq!(error.code(), "E2001");
            assert!(started.elapsed() >= Duration::from_millis(300));
            assert!(started.elapsed() < WAIT_MAX, "{driver:?}: the timeout did not fire");
            assert_eq!(client.idle_connections(), 0);
        });
    }
}

#[test]
fn a_closed_port_is_a_connection_failure() {
    // Connection refused is the commonest failure of a destination that is down (E2002).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for driver in DRIVERS {
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let error = send(&client, &format!("http://127.0.0.1:{port}/")).await.unwrap_err();
            assert!(
                matches!(&error, SendError::Connect(message) if message.contains("127.0.0.1")),
                "{driver:?}: {error:?}"
            );
            assert_eq!(error.code(), "E2002");
        });
    }
}

#[test]
fn private_destinations_are_blocked_without_an_allow_list_entry() {
    // The SSRF guard: without 127.0.0.0/8 in KAPSEL_ALLOW_DESTINATIONS, neither the literal
    // nor a name that resolves to it may be connected to at all.
    for driver in DRIVERS {
        let sink = Sink::start(|_, _| ok());
        let port = sink.address.port();
        block_on(driver, async {
            let client = client("10.0.0.0/8", None);
            for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
                let error = send(&client, &url).await.unwrap_err();
                assert!(
                    matches!(&error, SendError::Blocked(message) if message.contains("loopback")),
                    "{url}: {error:?}"
                );
                assert_eq!(error.code(), "E2002");
            }
            let allowed = self::client(ALLOW_LOOPBACK, None);
            assert_eq!(send(&allowed, &format!("http://localhost:{port}/")).await.unwrap().status, 200);
        });
        assert_eq!(sink.received().len(), 1, "{driver:?}: a blocked destination was reached");
    }
}

#[test]
fn large_bodies_keep_an_excerpt_and_the_connection_when_read_to_the_end() {
    // Only the first KiB is kept with the attempt, but the rest must still be drained for
    // the connection to be reused, and a body past the read cap must close it instead.
    let body: Arc<Vec<u8>> = Arc::new((0..64 * 1024_u32).map(|index| (index % 251) as u8).collect());
    // Past the 1 MiB read at full speed; the rest is read slowly, so not by much.
    let huge = Arc::new(vec![b'z'; 1024 * 1024 + 256 * 1024]);
    for driver in DRIVERS {
        let (sink_body, sink_huge) = (body.clone(), huge.clone());
        let sink = Sink::start(move |_, request| {
            let huge = request.head.starts_with("POST /huge ");
            Reply::Send(response("200 OK", &[], if huge { &sink_huge } else { &sink_body }))
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            for _ in 0..3 {
                let response = send(&client, &sink.url("/large")).await.unwrap();
                assert_eq!(response.body_excerpt, body[..1024], "{driver:?}");
            }
            assert_eq!(sink.connections(), 1, "{driver:?}: a fully read body must leave the connection reusable");
            for _ in 0..2 {
                let response = send(&client, &sink.url("/huge")).await.unwrap();
                assert_eq!(response.body_excerpt, huge[..1024], "{driver:?}");
            }
        });
        // The first huge body came on the pooled connection, which it closed; the second
        // needed a new one.
        let connections: Vec<usize> = sink.received().iter().map(|request| request.connection).collect();
        assert_eq!(connections, [0, 0, 0, 0, 1], "{driver:?}: a body past the cap must close the connection");
    }
}

#[test]
fn chunked_and_close_delimited_bodies_are_read() {
    // Destinations behind frameworks answer chunked or, from old servers, until the close;
    // both must give the same excerpt, and only the chunked one leaves a reusable connection.
    for driver in DRIVERS {
        let sink = Sink::start(|_, request| {
            if request.head.starts_with("POST /chunked ") {
                Reply::Send(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                        .to_vec(),
                )
            } else {
                Reply::SendAndClose(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close".to_vec())
            }
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            for _ in 0..2 {
                let response = send(&client, &sink.url("/chunked")).await.unwrap();
                assert_eq!(response.body_excerpt, b"hello world", "{driver:?}");
            }
            assert_eq!(sink.connections(), 1, "{driver:?}");
            for _ in 0..2 {
                let response = send(&client, &sink.url("/close")).await.unwrap();
                assert_eq!(response.body_excerpt, b"until the close", "{driver:?}");
            }
        });
        let connections: Vec<usize> = sink.received().iter().map(|request| request.connection).collect();
        assert_eq!(connections, [0, 0, 0, 1], "{driver:?}");
    }
}

#[test]
fn a_pooled_connection_closed_by_the_server_is_retried_once_on_a_fresh_one() {
    // Servers close idle keep-alive connections on their own schedule; the next delivery
    // must not fail for it, while a fresh connection that closes unanswered is a failure and
    // is not retried.
    for driver in DRIVERS {
        let sink = Sink::start(|index, _| match index {
            // Looks reusable to the client, then the server drops it.
            0 => Reply::SendAndClose(response("200 OK", &[], b"first")),
            1 => ok(),
            _ => Reply::Close,
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            assert_eq!(send(&client, &sink.url("/")).await.unwrap().body_excerpt, b"first");
            assert_eq!(client.idle_connections(), 1);
            // The close must have happened while the connection sat idle in the pool.
            wait_until("the sink to close the first connection", || sink.closed() == 1).await;
            assert_eq!(send(&client, &sink.url("/")).await.unwrap().body_excerpt, b"ok", "{driver:?}");
            assert_eq!(sink.connections(), 2, "{driver:?}");
            // The pooled connection now gets a request the sink closes on, and the retry on a
            // fresh connection gets the same: one retry, then the failure.
            let error = send(&client, &sink.url("/")).await.unwrap_err();
            assert!(
                matches!(&error, SendError::Connect(message) if message.contains("without answering")),
                "{error:?}"
            );
        });
        assert_eq!(sink.received().len(), 4, "{driver:?}");
        assert_eq!(sink.connections(), 3, "{driver:?}");
    }
}

#[test]
fn malformed_responses_fail_and_interim_responses_are_skipped() {
    // Ambiguous framing from a destination must fail the attempt rather than be guessed at,
    // while a 103 Early Hints before the answer is legitimate HTTP and must not.
    for driver in DRIVERS {
        let sink = Sink::start(|_, request| {
            if request.head.starts_with("POST /interim ") {
                Reply::Send(
                    [
                        &b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"[..],
                        &response("201 Created", &[], b"made"),
                    ]
                    .concat(),
                )
            } else {
                Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec())
            }
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let response = send(&client, &sink.url("/interim")).await.unwrap();
            assert_eq!((response.status, response.body_excerpt.as_slice()), (201, &b"made"[..]), "{driver:?}");
            let error = send(&client, &sink.url("/ambiguous")).await.unwrap_err();
            assert!(matches!(&error, SendError::Protocol(message) if message.contains("Content-Length")), "{error:?}");
            assert_eq!(error.code(), "E2002");
            assert_eq!(client.idle_connections(), 0, "{driver:?}: a misframed connection was pooled");
        });
    }
}

#[test]
fn https_is_trusted_through_the_extra_ca_file_and_refused_without_it() {
    // Operators with an internal CA set KAPSEL_EXTRA_CA_FILE; without it, a certificate the
    // webpki roots do not vouch for must fail the handshake, never be delivered to.
    let directory = tempfile::tempdir().unwrap();
    let (ca_path, certificate_path, key_path) = test_pki(directory.path());
    let server_tls = Arc::new(load_tls_config(&certificate_path, &key_path).unwrap());
    let trusted: TlsConfig = Arc::new(tls_client_config(Some(&ca_path)).unwrap());
    for driver in DRIVERS {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink =
            KapselSink::start(ServerConfig { tls: Some(server_tls.clone()), ..ServerConfig::default() }, seen.clone());
        let port = sink.address.port();
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, Some(trusted.clone()));
            for url in [format!("https://localhost:{port}/secure"), format!("https://127.0.0.1:{port}/by-address")] {
                for _ in 0..2 {
                    let response = send(&client, &url).await.unwrap();
                    assert_eq!(
                        (response.status, response.body_excerpt.as_slice()),
                        (200, &b"{}"[..]),
                        "{driver:?} {url}"
                    );
                }
            }
            let untrusting = self::client(ALLOW_LOOPBACK, None);
            let error = send(&untrusting, &format!("https://localhost:{port}/secure")).await.unwrap_err();
            assert!(matches!(&error, SendError::Connect(message) if message.contains("TLS")), "{driver:?}: {error:?}");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{driver:?}");
        // Two destinations (by name and by address), each reusing its connection.
        let mut peers: Vec<SocketAddr> = seen.iter().map(|(peer, _, _)| *peer).collect();
        peers.dedup();
        assert_eq!(peers.len(), 2, "{driver:?}: {peers:?}");
    }
}

#[test]
fn hostile_heads_fail_at_once_with_a_bounded_buffer() {
    // A destination's head is buffered whole before it is parsed: ten thousand header fields
    // or a megabyte-long line must fail the attempt (E2002) as soon as the limits are passed,
    // not wait for the rest or grow the buffer; neither may garbage or HTTP/0.9 bytes (a body
    // without a status line) pass for an answer.
    let many_fields: Vec<u8> = {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for index in 0..10_000 {
            head.extend_from_slice(format!("X-Field-{index}: value\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        head
    };
    let long_line: Vec<u8> =
        [&b"HTTP/1.1 200 OK\r\nX-Long: "[..], &vec![b'a'; 1024 * 1024], b"\r\nContent-Length: 0\r\n\r\n"].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/many-fields", many_fields, "more than 100 header fields"),
        ("/long-line", long_line, "larger than 16384 bytes"),
        ("/bad-status", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n".to_vec(), "malformed status line"),
        ("/http-0.9", b"<html>an HTTP/0.9 answer: no status line</html>\n".to_vec(), "unsupported HTTP version"),
    ];
    for driver in DRIVERS {
        let answers: Arc<Vec<(String, Vec<u8>)>> =
            Arc::new(cases.iter().map(|(path, bytes, _)| ((*path).to_owned(), bytes.clone())).collect());
        let sink = Sink::start(move |_, request| {
            let path = request.head.split(' ').nth(1).unwrap_or_default();
            let bytes = answers.iter().find(|(known, _)| known == path).map(|(_, bytes)| bytes.clone()).unwrap();
            Reply::SendAndClose(bytes)
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            for (path, _, reason) in &cases {
                let started = Instant::now();
                let error = send(&client, &sink.url(path)).await.unwrap_err();
                assert!(
                    matches!(&error, SendError::Protocol(message) if message.contains(reason)),
                    "{driver:?} {path}: {error:?}"
                );
                assert_eq!(error.code(), "E2002");
                assert!(started.elapsed() < WAIT_MAX / 2, "{driver:?} {path}: took {:?}", started.elapsed());
            }
            assert_eq!(client.idle_connections(), 0);
        });
    }
}

#[test]
fn an_endless_body_ends_at_the_timeout_and_is_read_slowly() {
    // Only a complete response is an answer, so a body that never ends is a timeout (E2001);
    // meanwhile it must cost little: past the first MiB the client reads it slowly and the
    // destination waits on TCP flow control, instead of both spinning a core for the whole
    // timeout (measured here by what the destination managed to write).
    for driver in DRIVERS {
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let sink = Sink::start(move |_, _| {
            Reply::Endless(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n".to_vec(), counter.clone())
        });
        let timeout = Duration::from_millis(1500);
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let started = Instant::now();
            let error = client.send(request(&sink.url("/endless"), b"{}", timeout)).await.unwrap_err();
            assert_eq!(error, SendError::Timeout, "{driver:?}");
            assert!(started.elapsed() >= timeout);
            assert!(started.elapsed() < WAIT_MAX, "{driver:?}: the timeout did not fire");
            assert_eq!(client.idle_connections(), 0);
        });
        // 1 MiB at full speed, then about 400 KB/s, plus what the socket buffers hold (a few MiB
        // on loopback); unthrottled, loopback moves gigabytes in that time.
        let written = written.load(Ordering::SeqCst);
        assert!(written < 32 * 1024 * 1024, "{driver:?}: the destination wrote {written} bytes");
    }
}

#[test]
fn a_stalled_or_trickling_response_ends_at_the_timeout() {
    // A head followed by nothing, or an answer at a byte per interval, is no answer within
    // the timeout: E2001, and the connection is dropped, never pooled half-read.
    for driver in DRIVERS {
        let sink = Sink::start(|_, request| {
            if request.head.starts_with("POST /stall ") {
                Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
            } else {
                Reply::Trickle(response("200 OK", &[], b"ok"), Duration::from_millis(100))
            }
        });
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            for path in ["/stall", "/trickle"] {
                let timeout = Duration::from_millis(600);
                let started = Instant::now();
                let error = client.send(request(&sink.url(path), b"{}", timeout)).await.unwrap_err();
                assert_eq!(error, SendError::Timeout, "{driver:?} {path}");
                assert!(started.elapsed() >= timeout && started.elapsed() < WAIT_MAX, "{driver:?} {path}");
            }
            assert_eq!(client.idle_connections(), 0);
        });
    }
}

#[test]
fn a_name_under_invalid_is_a_connection_failure_at_once() {
    // RFC 6761 names never resolve; the attempt fails with E2002 without waiting on a name
    // server.
    for driver in DRIVERS {
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            let started = Instant::now();
            let error = send(&client, "http://no-such-destination.invalid:8080/hook").await.unwrap_err();
            assert!(
                matches!(&error, SendError::Connect(message) if message.contains("no-such-destination.invalid")),
                "{driver:?}: {error:?}"
            );
            assert_eq!(error.code(), "E2002");
            assert!(started.elapsed() < Duration::from_secs(1), "{driver:?}: {:?}", started.elapsed());
        });
    }
}

/// A keep-alive destination whose used connections go stale on demand: each connection
/// answers 200 until [`StaleSink::go_stale`]; after that, a connection opened before closes
/// the moment its next request arrives, without reading it (so the kernel resets it: the
/// request never reached the application). Connections opened later keep answering.
struct StaleSink {
    address: SocketAddr,
    stale: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    /// Requests read and answered.
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaleSink {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (stale, connections, answered, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (stale, connections, answered, stop) =
                (stale.clone(), connections.clone(), answered.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let (stale, answered, stop) = (stale.clone(), answered.clone(), stop.clone());
                            thread::spawn(move || serve_until_stale(stream, &stale, &answered, &stop));
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                        Err(error) => panic!("accept: {error}"),
                    }
                }
            })
        };
        Self { address, stale, connections, answered, stop, thread: Some(thread) }
    }

    fn go_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }
}

impl Drop for StaleSink {
    fn drop(&mut self) {
        common::stop_and_join(&self.stop, self.thread.take(), "stale sink accept thread");
    }
}

fn serve_until_stale(stream: TcpStream, stale: &AtomicBool, answered: &AtomicUsize, stop: &AtomicBool) {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let opened_stale = stale.load(Ordering::SeqCst);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < WAIT_MAX {
        // Wait for the next request without taking any of it.
        match reader.get_ref().peek(&mut [0; 1]) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        if !opened_stale && stale.load(Ordering::SeqCst) {
            // Dropping a socket with unread data sends a reset.
            return;
        }
        reader.get_ref().set_read_timeout(Some(WAIT_MAX)).unwrap();
        if read_request(&mut reader).is_none() {
            return;
        }
        reader.get_ref().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        answered.fetch_add(1, Ordering::SeqCst);
        if writer.write_all(&response("200 OK", &[], b"ok")).is_err() {
            return;
        }
    }
}

#[test]
fn a_pooled_connection_reset_as_it_is_reused_is_retried_at_once_and_its_siblings_dropped() {
    // The stale keep-alive connection: the destination drops a pooled connection just
    // as a request is written to it. No byte of an answer came, so the request never reached
    // the destination: it is sent again at once on a fresh connection, within the same
    // attempt, and the other idle connections to that destination (older, as likely dead) are
    // dropped rather than each costing a stale exchange.
    for driver in DRIVERS {
        let sink = StaleSink::start();
        let url = sink.url();
        block_on(driver, async {
            let client = client(ALLOW_LOOPBACK, None);
            // Two deliveries at once open two connections; both go back to the pool.
            let (first, second) = monoio::join!(send(&client, &url), send(&client, &url));
            assert_eq!((first.unwrap().status, second.unwrap().status), (200, 200), "{driver:?}");
            assert_eq!((sink.connections.load(Ordering::SeqCst), client.idle_connections()), (2, 2), "{driver:?}");
            sink.go_stale();
            let response = send(&client, &url).await.unwrap();
            assert_eq!(response.status, 200, "{driver:?}: a stale pooled connection failed the attempt");
            assert_eq!(sink.connections.load(Ordering::SeqCst), 3, "{driver:?}: one fresh connection");
            assert_eq!(client.idle_connections(), 1, "{driver:?}: the older idle connection was dropped");
            // The next delivery reuses the fresh connection: no second stale exchange.
            assert_eq!(send(&client, &url).await.unwrap().status, 200, "{driver:?}");
            assert_eq!(sink.connections.load(Ordering::SeqCst), 3, "{driver:?}");
        });
        assert_eq!(sink.answered.load(Ordering::SeqCst), 4, "{driver:?}: each request answered once");
    }
}
