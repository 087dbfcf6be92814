//! Misbehaving destinations for delivery tests: real TCP servers on 127.0.0.1, written here
//! byte by byte on std threads, one [`Behaviour`] per port (the outbound pool is per host and
//! port, so one destination's connections never serve another's behaviour). Also: a test PKI
//! with bad certificates for TLS destinations, and the resident memory of a Kapsel process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kapsel_http::rustls;

/// Longest a hostile connection is held open (silence, stalls, endless bodies): past any
/// endpoint timeout a test uses, short of a test's own patience.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// Largest request head the sink reads; Kapsel's are a few hundred bytes.
const REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

/// How a destination misbehaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Reads the request and never answers; holds the connection.
    NeverAnswers,
    /// Sends a head announcing 100 body bytes, ten of them, then nothing.
    StallsTheBody,
    /// Sends a head announcing a terabyte, then body bytes for as long as they are taken.
    EndlessBody,
    /// A 200 with 10 000 header fields.
    TenThousandHeaders,
    /// A 200 whose one header line is 1 MiB long.
    HugeHeaderLine,
    /// A status line that is not one.
    InvalidStatusLine,
    /// HTTP/0.9: the body alone, no status line, then the close.
    Http09,
    /// Half a head, then a reset (the socket closed with unread request bytes).
    ResetMidResponse,
    /// Reads the request and closes without a byte.
    CloseBeforeResponse,
    /// Keep-alive 200s, but a connection reset as soon as its second request arrives, before
    /// reading it: the pooled connection that dies just as it is reused.
    StaleOnReuse,
    /// `100 Continue`, then a 200.
    ContinueThenOk,
    /// A redirect with this status to this sink's `/followed`, which must never be asked for.
    Redirect(u16),
    /// A 200, one byte per second.
    OneBytePerSecond,
    /// TLS with this certificate chain and key (PEM paths); a 200 if the handshake succeeds.
    Tls { certificate: PathBuf, key: PathBuf },
}

/// A running misbehaving destination; stops (and releases its held connections) when dropped.
pub struct Hostile {
    pub address: SocketAddr,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Requests whose head was read.
    requests: AtomicUsize,
    /// Connections reset on reuse ([`Behaviour::StaleOnReuse`]).
    resets: AtomicUsize,
    /// Body bytes written by [`Behaviour::EndlessBody`].
    endless_bytes: AtomicUsize,
    /// Paths asked for, in order.
    paths: Mutex<Vec<String>>,
}

impl Hostile {
    pub fn start(behaviour: Behaviour) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let tls = match &behaviour {
            Behaviour::Tls { certificate, key } => {
                Some(Arc::new(kapsel_http::load_tls_config(certificate, key).expect("the TLS destination's key pair")))
            }
            _ => None,
        };
        let accept_state = Arc::clone(&state);
        std::thread::spawn(move || {
            while !accept_state.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accept_state.connections.fetch_add(1, Ordering::SeqCst);
                        let (state, behaviour, tls) = (Arc::clone(&accept_state), behaviour.clone(), tls.clone());
                        std::thread::spawn(move || match tls {
                            Some(config) => serve_tls(stream, config, &state),
                            None => serve(stream, &behaviour, &state),
                        });
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => return,
                }
            }
        });
        Hostile { address, state }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests whose head the sink read.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections reset as they were reused.
    pub fn resets(&self) -> usize {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Bytes of endless body written so far.
    pub fn endless_bytes(&self) -> usize {
        self.state.endless_bytes.load(Ordering::SeqCst)
    }

    /// Paths asked for, in order.
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request head a byte at a time, so that nothing after it (the body) is taken off
/// the socket: closing then resets the connection. Returns the path, or `None` at the end of
/// the stream or on a timeout.
fn read_head(stream: &mut TcpStream) -> Option<(String, usize)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let (request_line, _, length) = super::parse_head(&head[..head.len() - 4]);
    Some((request_line.split(' ').nth(1).unwrap_or("/").to_string(), length))
}

/// Reads and drops `length` body bytes.
fn skip_body(stream: &mut TcpStream, length: usize) -> Option<()> {
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()
}

/// Keeps a connection open, saying nothing, until the client goes away, the sink stops or
/// [`HOLD_MAX`] passes.
fn hold(stream: &TcpStream, state: &State) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    while !state.stop.load(Ordering::Relaxed) && started.elapsed() < HOLD_MAX {
        match stream.peek(&mut [0u8; 1]) {
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Closed by the client (or more bytes from it: nothing this sink waits for).
            Ok(0) | Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve(mut stream: TcpStream, behaviour: &Behaviour, state: &State) {
    stream.set_read_timeout(Some(HOLD_MAX)).unwrap();
    stream.set_write_timeout(Some(HOLD_MAX)).unwrap();
    let mut served_on_this_connection = 0;
    loop {
        if served_on_this_connection > 0 && matches!(behaviour, Behaviour::StaleOnReuse) {
            // Wait for the reuse without taking a byte of it, then drop the connection: the
            // unread request makes the kernel answer with a reset.
            let mut peek = [0u8; 1];
            if matches!(stream.peek(&mut peek), Ok(1)) {
                state.resets.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        let Some((path, length)) = read_head(&mut stream) else { return };
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.paths.lock().unwrap().push(path);
        if !matches!(behaviour, Behaviour::ResetMidResponse) && skip_body(&mut stream, length).is_none() {
            return;
        }
        served_on_this_connection += 1;
        if !answer(&mut stream, behaviour, state) {
            return;
        }
    }
}

/// Misbehaves once; whether the connection stays open for another request.
fn answer(stream: &mut TcpStream, behaviour: &Behaviour, state: &State) -> bool {
    match behaviour {
        Behaviour::NeverAnswers => hold(stream, state),
        Behaviour::StallsTheBody => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
            hold(stream, state);
        }
        Behaviour::EndlessBody => {
            if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n").is_err() {
                return false;
            }
            let chunk = vec![b'x'; 64 * 1024];
            while !state.stop.load(Ordering::Relaxed) && stream.write_all(&chunk).is_ok() {
                state.endless_bytes.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
        Behaviour::TenThousandHeaders => {
            let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
            for index in 0..10_000 {
                response.extend_from_slice(format!("X-Header-{index}: v\r\n").as_bytes());
            }
            response.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            let _ = stream.write_all(&response);
        }
        Behaviour::HugeHeaderLine => {
            let response =
                [&b"HTTP/1.1 200 OK\r\nX-Huge: "[..], &vec![b'h'; 1024 * 1024], b"\r\nContent-Length: 0\r\n\r\n"]
                    .concat();
            let _ = stream.write_all(&response);
        }
        Behaviour::InvalidStatusLine => {
            let _ = stream.write_all(b"HTTP/1.1 OK 200\r\nContent-Length: 0\r\n\r\n");
        }
        Behaviour::Http09 => {
            let _ = stream.write_all(b"<html><body>accepted, as in 1991</body></html>\n");
        }
        Behaviour::ResetMidResponse => {
            // The request's body is still unread: dropping the socket resets it.
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le");
            std::thread::sleep(Duration::from_millis(50));
        }
        Behaviour::CloseBeforeResponse => {}
        Behaviour::StaleOnReuse => return stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_ok(),
        Behaviour::ContinueThenOk => {
            let _ = stream.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
        Behaviour::Redirect(status) => {
            let location = format!("http://{}/followed", stream.local_addr().unwrap());
            let response = format!(
                "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes());
        }
        Behaviour::OneBytePerSecond => {
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
                if state.stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Behaviour::Tls { .. } => unreachable!("TLS destinations are served by serve_tls"),
    }
    false
}

/// A TLS destination: the handshake with the configured certificate, then one 200.
fn serve_tls(stream: TcpStream, config: Arc<rustls::ServerConfig>, state: &State) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let Ok(connection) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match tls.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Certificates for TLS destinations, PEM files in a directory: a CA (to be trusted through
/// `KAPSEL_EXTRA_CA_FILE`) and, each with its key, a good certificate for `localhost`, an
/// expired one for `localhost` from the same CA, one from the same CA for another name, and a
/// self-signed one for `localhost`.
pub struct BadPki {
    pub ca: PathBuf,
    pub good: (PathBuf, PathBuf),
    pub expired: (PathBuf, PathBuf),
    pub wrong_host: (PathBuf, PathBuf),
    pub self_signed: (PathBuf, PathBuf),
}

impl BadPki {
    pub fn write(directory: &Path) -> BadPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Kapsel hostile-destinations CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let ca = directory.join("ca.pem");
        std::fs::write(&ca, ca_certificate.pem()).unwrap();

        let leaf = |name: &str, names: &[&str], expired: bool, self_signed: bool| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>()).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let certificate =
                if self_signed { params.self_signed(&key).unwrap() } else { params.signed_by(&key, &issuer).unwrap() };
            let paths = (directory.join(format!("{name}.pem")), directory.join(format!("{name}.key")));
            std::fs::write(&paths.0, certificate.pem()).unwrap();
            std::fs::write(&paths.1, key.serialize_pem()).unwrap();
            paths
        };
        BadPki {
            good: leaf("good", &["localhost"], false, false),
            expired: leaf("expired", &["localhost"], true, false),
            wrong_host: leaf("wrong-host", &["wrong-host.example"], false, false),
            self_signed: leaf("self-signed", &["localhost"], false, true),
            ca,
        }
    }
}

/// The pid of the `kapsel` process whose data directory is `data_directory` (a child of this
/// test; its environment names the directory).
pub fn kapsel_pid(data_directory: &Path) -> u32 {
    let wanted = format!("KAPSEL_DATA_DIR={}", data_directory.display());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(environment) = std::fs::read(entry.path().join("environ")) else { continue };
        if environment.split(|byte| *byte == 0).any(|variable| variable == wanted.as_bytes()) {
            return pid;
        }
    }
    panic!("no process with {wanted}");
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
