//! Misbehaving destinations for the delivery bench's `hostile` scenario: servers on 127.0.0.1
//! in the bench process, one [`Behaviour`] per port (Kapsel pools connections per host and
//! port, so no behaviour's connection serves another's), each connection on its own thread,
//! every byte written here. They mirror the root tests' `tests/it/common/hostile.rs`; here they
//! run for as long as the scenario, so every wait notices the client going away.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kapsel_http::rustls;

use crate::limits;

/// How a destination misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads the request and never answers.
    NeverAnswers,
    /// A head announcing 100 body bytes, ten of them, then nothing.
    StallsTheBody,
    /// A head announcing a terabyte, then body bytes for as long as they are taken.
    EndlessBody,
    /// A 200, one byte per second.
    OneBytePerSecond,
    /// A 200 with 10 000 header fields.
    TenThousandHeaders,
    /// A 200 whose one header line is 1 MiB long.
    HugeHeaderLine,
    /// A status line that is not one.
    InvalidStatusLine,
    /// HTTP/0.9: a body without a status line, then the close.
    Http09,
    /// Half a head, then a reset.
    ResetMidResponse,
    /// Reads the request and closes without a byte.
    CloseBeforeResponse,
    /// Keep-alive 200s, but each connection is reset when its second request arrives.
    StaleOnReuse,
    /// `100 Continue`, then a 200.
    ContinueThenOk,
    /// A 301 to elsewhere.
    Redirect,
    /// TLS with a self-signed certificate nobody trusts: the handshake fails.
    UntrustedTls,
}

impl Behaviour {
    /// Every behaviour with a server, in the order the report lists them.
    pub const ALL: [Self; 14] = [
        Self::NeverAnswers,
        Self::StallsTheBody,
        Self::EndlessBody,
        Self::OneBytePerSecond,
        Self::TenThousandHeaders,
        Self::HugeHeaderLine,
        Self::InvalidStatusLine,
        Self::Http09,
        Self::ResetMidResponse,
        Self::CloseBeforeResponse,
        Self::StaleOnReuse,
        Self::ContinueThenOk,
        Self::Redirect,
        Self::UntrustedTls,
    ];

    /// A short name, used in endpoint ids.
    pub fn name(self) -> &'static str {
        match self {
            Self::NeverAnswers => "never-answers",
            Self::StallsTheBody => "stalls-body",
            Self::EndlessBody => "endless-body",
            Self::OneBytePerSecond => "one-byte-per-s",
            Self::TenThousandHeaders => "10k-headers",
            Self::HugeHeaderLine => "1mib-header",
            Self::InvalidStatusLine => "bad-status",
            Self::Http09 => "http-0.9",
            Self::ResetMidResponse => "reset",
            Self::CloseBeforeResponse => "close",
            Self::StaleOnReuse => "stale-keep-alive",
            Self::ContinueThenOk => "100-continue",
            Self::Redirect => "redirect-301",
            Self::UntrustedTls => "self-signed-tls",
        }
    }
}

/// A running misbehaving destination; its threads end when it is dropped (each held
/// connection within [`limits::HOSTILE_POLL_MS`]).
pub struct Hostile {
    /// What it does.
    pub behaviour: Behaviour,
    /// Where it listens.
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    /// Starts the destination on a free loopback port. `tls` is the server configuration of
    /// [`Behaviour::UntrustedTls`] (see [`self_signed_tls`]); the other behaviours speak plain
    /// HTTP and ignore it.
    ///
    /// # Errors
    ///
    /// The listener could not be bound, or `tls` is missing for the TLS behaviour.
    pub fn start(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self, String> {
        if behaviour == Behaviour::UntrustedTls && tls.is_none() {
            return Err("the TLS destination needs a server configuration".into());
        }
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|error| format!("binding a hostile server: {error}"))?;
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        listener.set_nonblocking(true).map_err(|error| error.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept_stop = Arc::clone(&stop);
        let tls = tls.filter(|_| behaviour == Behaviour::UntrustedTls);
        std::thread::Builder::new()
            .name(format!("hostile-{}", behaviour.name()))
            .spawn(move || accept(&listener, behaviour, tls.as_ref(), &accept_stop))
            .map_err(|error| format!("starting a hostile server: {error}"))?;
        Ok(Self { behaviour, address, stop })
    }

    /// The URL an endpoint delivers to (https for the TLS behaviour, by name so that the
    /// certificate is checked against a name).
    pub fn url(&self) -> String {
        match self.behaviour {
            Behaviour::UntrustedTls => format!("https://localhost:{}/hook", self.address.port()),
            _ => format!("http://{}/hook", self.address),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept(
    listener: &TcpListener,
    behaviour: Behaviour,
    tls: Option<&Arc<rustls::ServerConfig>>,
    stop: &Arc<AtomicBool>,
) {
    // Built once: the load is Kapsel's to bear, not the bench's to generate.
    let canned: Arc<[u8]> = Arc::from(canned_answer(behaviour));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (stop, tls, canned) = (Arc::clone(stop), tls.cloned(), Arc::clone(&canned));
                // A thread that cannot start leaves the connection to be dropped: for a hostile
                // destination, one more way of failing.
                let _ = std::thread::Builder::new().spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    match tls {
                        Some(config) => serve_tls(stream, config),
                        None => serve(stream, behaviour, &canned, &stop),
                    }
                });
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(limits::HOSTILE_POLL_MS));
            }
            Err(_) => return,
        }
    }
}

/// Reads one request head a byte at a time (nothing after it leaves the socket: closing then
/// resets the connection); its `Content-Length`, or `None` at the end of the stream.
fn read_head(stream: &mut TcpStream) -> Option<usize> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= limits::HOSTILE_REQUEST_HEAD_BYTES_MAX || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Some(
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Keeps the connection open, saying nothing, until the client closes it, the server stops
/// or [`limits::HOSTILE_HOLD_MS_MAX`] passes.
fn hold(stream: &TcpStream, stop: &AtomicBool) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(limits::HOSTILE_POLL_MS)));
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_millis(limits::HOSTILE_HOLD_MS_MAX) {
        match stream.peek(&mut [0u8; 1]) {
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) | Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(limits::HOSTILE_POLL_MS)),
        }
    }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, canned: &[u8], stop: &AtomicBool) {
    let hold_max = Duration::from_millis(limits::HOSTILE_HOLD_MS_MAX);
    let _ = stream.set_read_timeout(Some(hold_max));
    let _ = stream.set_write_timeout(Some(hold_max));
    let mut answered = 0;
    loop {
        if answered > 0 && behaviour == Behaviour::StaleOnReuse {
            // Wait for the reuse without taking a byte of it; dropping the socket with the
            // request unread resets the connection.
            let _ = stream.peek(&mut [0u8; 1]);
            return;
        }
        let Some(length) = read_head(&mut stream) else { return };
        if behaviour != Behaviour::ResetMidResponse {
            let mut body = vec![0u8; length.min(limits::HOSTILE_REQUEST_BODY_BYTES_MAX)];
            if length > body.len() || stream.read_exact(&mut body).is_err() {
                return;
            }
        }
        answered += 1;
        if !answer(&mut stream, behaviour, canned, stop) {
            return;
        }
    }
}

/// What a behaviour that answers at once writes (its whole answer, or what precedes its
/// misbehaviour); empty for the others.
fn canned_answer(behaviour: Behaviour) -> Vec<u8> {
    match behaviour {
        Behaviour::StallsTheBody => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
        Behaviour::EndlessBody => b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n".to_vec(),
        Behaviour::OneBytePerSecond => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        Behaviour::TenThousandHeaders => {
            let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
            for index in 0..10_000 {
                response.extend_from_slice(format!("X-Header-{index}: v\r\n").as_bytes());
            }
            response.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            response
        }
        Behaviour::HugeHeaderLine => {
            let line = vec![b'h'; 1024 * 1024];
            [&b"HTTP/1.1 200 OK\r\nX-Huge: "[..], &line, b"\r\nContent-Length: 0\r\n\r\n"].concat()
        }
        Behaviour::InvalidStatusLine => b"HTTP/1.1 OK 200\r\nContent-Length: 0\r\n\r\n".to_vec(),
        Behaviour::Http09 => b"<html><body>accepted, as in 1991</body></html>\n".to_vec(),
        Behaviour::ResetMidResponse => b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
        Behaviour::StaleOnReuse => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        Behaviour::ContinueThenOk => {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
        }
        Behaviour::Redirect => {
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n"
                .to_vec()
        }
        Behaviour::NeverAnswers | Behaviour::CloseBeforeResponse | Behaviour::UntrustedTls => Vec::new(),
    }
}

/// Misbehaves once, starting with `canned` ([`canned_answer`]); whether the connection may
/// carry another request.
fn answer(stream: &mut TcpStream, behaviour: Behaviour, canned: &[u8], stop: &AtomicBool) -> bool {
    match behaviour {
        Behaviour::NeverAnswers => hold(stream, stop),
        Behaviour::StallsTheBody => {
            let _ = stream.write_all(canned);
            hold(stream, stop);
        }
        Behaviour::EndlessBody => {
            if stream.write_all(canned).is_ok() {
                let chunk = vec![b'x'; 64 * 1024];
                while !stop.load(Ordering::Relaxed) && stream.write_all(&chunk).is_ok() {}
            }
        }
        Behaviour::OneBytePerSecond => {
            for byte in canned {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Behaviour::ResetMidResponse => {
            // The request's body is still unread: dropping the socket resets the connection.
            let _ = stream.write_all(canned);
            std::thread::sleep(Duration::from_millis(limits::HOSTILE_POLL_MS));
        }
        Behaviour::StaleOnReuse => return stream.write_all(canned).is_ok(),
        Behaviour::TenThousandHeaders
        | Behaviour::HugeHeaderLine
        | Behaviour::InvalidStatusLine
        | Behaviour::Http09
        | Behaviour::ContinueThenOk
        | Behaviour::Redirect
        | Behaviour::CloseBeforeResponse
        | Behaviour::UntrustedTls => {
            let _ = stream.write_all(canned);
        }
    }
    false
}

/// The TLS destination: a handshake the client abandons at the certificate.
fn serve_tls(stream: TcpStream, config: Arc<rustls::ServerConfig>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(limits::HOSTILE_HOLD_MS_MAX)));
    let Ok(connection) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut buffer = [0u8; 1024];
    // The handshake runs inside the first read; a trusting client would get a 200.
    if matches!(tls.read(&mut buffer), Ok(read) if read > 0) {
        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}

/// A self-signed certificate for `localhost` and its key, written to `directory`, as the
/// server configuration of [`Behaviour::UntrustedTls`].
///
/// # Errors
///
/// The certificate could not be made or written.
pub fn self_signed_tls(directory: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|error| format!("generating a certificate: {error}"))?;
    let (certificate, key) = (directory.join("self-signed.pem"), directory.join("self-signed.key"));
    std::fs::write(&certificate, generated.cert.pem()).map_err(|error| error.to_string())?;
    std::fs::write(&key, generated.signing_key.serialize_pem()).map_err(|error| error.to_string())?;
    kapsel_http::load_tls_config(&certificate, &key)
        .map(Arc::new)
        .map_err(|error| format!("loading the self-signed certificate: {error}"))
}
