//! The fail-over's destination: a webhook receiver in the bench's own process that answers 200
//! at once and keeps, for every delivery, its arrival time and the send time the trickle
//! stamped into its body (Unix microseconds, the same clock). The delivery bench's sink counts
//! and keeps percentiles; the fail-over needs single arrivals ("the first event sent after the
//! kill"), and at 50 deliveries a second plain blocking threads are enough.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::limits;
use crate::payload::{unix_micros_now, SENT_US_FIELD};
use crate::sink::json_u64_field;

/// How often a connection's thread looks whether the receiver was dropped.
const STOP_POLL: Duration = Duration::from_millis(200);

/// The most headers a delivery may carry (Kapsel sends a dozen).
const HEADERS_MAX: usize = 64;

/// One delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The send time in its body (0: none).
    pub(crate) sent_us: u64,
    /// When it arrived.
    pub(crate) arrived_us: u64,
}

/// What the connections share.
#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    /// Requests that could not be read as a delivery (answered 400).
    refused: Mutex<u64>,
    stopped: AtomicBool,
}

/// A running receiver; dropping it stops its threads.
pub(crate) struct Arrivals {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl Arrivals {
    /// Listens on a free loopback port, accepting on a thread of its own.
    ///
    /// # Errors
    ///
    /// The socket or the thread could not be made.
    pub(crate) fn start() -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| format!("the fail-over sink: {error}"))?;
        let address = listener.local_addr().map_err(|error| format!("the fail-over sink: {error}"))?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("failover-sink".into())
            .spawn(move || accept(&listener, &accepting))
            .map_err(|error| format!("the fail-over sink's thread: {error}"))?;
        Ok(Self { address, shared })
    }

    /// Where it listens.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every delivery so far, in arrival order.
    pub(crate) fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Requests refused so far (not readable as a delivery).
    pub(crate) fn refused(&self) -> u64 {
        *self.shared.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, STOP_POLL);
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let serving = Arc::clone(shared);
        // A thread that cannot be made drops the connection: Kapsel retries the delivery.
        let _ = std::thread::Builder::new().name("failover-conn".into()).spawn(move || serve(stream, &serving));
    }
}

/// One keep-alive connection: read a request, record it, answer 200, again.
fn serve(mut stream: TcpStream, shared: &Shared) {
    if stream.set_read_timeout(Some(STOP_POLL)).is_err() {
        return;
    }
    let mut buffer: Vec<u8> = Vec::with_capacity(limits::READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; limits::READ_CHUNK_BYTES];
    while !shared.stopped.load(Ordering::Acquire) {
        match parse_request(&buffer) {
            Parsed::Complete { length, body_at } => {
                let arrival = Arrival {
                    sent_us: json_u64_field(&buffer[body_at..length], SENT_US_FIELD).unwrap_or(0),
                    arrived_us: unix_micros_now(),
                };
                shared.arrivals.lock().unwrap_or_else(PoisonError::into_inner).push(arrival);
                buffer.drain(..length);
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                    return;
                }
                continue;
            }
            Parsed::Invalid => {
                *shared.refused.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
            Parsed::Partial => {}
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole request of `length` bytes, its body from `body_at`.
    Complete { length: usize, body_at: usize },
    /// Need more bytes.
    Partial,
    /// Not an HTTP/1.1 request with a `Content-Length` body this receiver takes (chunked
    /// bodies, oversized ones, garbage).
    Invalid,
}

fn parse_request(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let body_at = match request.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if bytes.len() < limits::FAILOVER_SINK_REQUEST_BYTES_MAX => {
            return Parsed::Partial
        }
        _ => return Parsed::Invalid,
    };
    let mut content_length = 0usize;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(header.value).ok().and_then(|value| value.trim().parse().ok()) {
                Some(length) if length <= limits::FAILOVER_SINK_REQUEST_BYTES_MAX => content_length = length,
                _ => return Parsed::Invalid,
            }
        }
    }
    let length = body_at + content_length;
    if bytes.len() >= length {
        Parsed::Complete { length, body_at }
    } else {
        Parsed::Partial
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The fail-over's figure is the arrival of one delivery: requests must be framed exactly
    // (pipelined ones one by one), and what cannot be framed refused, not guessed.
    #[test]
    fn frames_requests_by_content_length() {
        let one = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{\"sent_us\":12345}";
        assert_eq!(parse_request(one), Parsed::Complete { length: one.len(), body_at: one.len() - 17 });
        assert_eq!(parse_request(&one[..one.len() - 1]), Parsed::Partial);
        assert_eq!(parse_request(&one[..10]), Parsed::Partial);
        let mut two = one.to_vec();
        two.extend_from_slice(one);
        assert_eq!(parse_request(&two), Parsed::Complete { length: one.len(), body_at: one.len() - 17 });
        let chunked = b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked), Parsed::Invalid);
        assert_eq!(parse_request(b"\x00\x01garbage\r\n\r\n"), Parsed::Invalid);
    }

    // End to end over loopback: a delivery is answered 200 on a kept-alive connection and
    // recorded with the send time from its body.
    #[test]
    fn records_each_delivery_with_its_send_time() {
        let sink = Arrivals::start().unwrap();
        let mut stream = TcpStream::connect(sink.address()).unwrap();
        for sent_us in [1_700_000_000_000_001u64, 1_700_000_000_000_002] {
            let body = format!("{{\"sent_us\":{sent_us}}}");
            let request = format!("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = [0u8; 38];
            stream.read_exact(&mut answer).unwrap();
            assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        let arrivals = sink.arrivals();
        assert_eq!(
            arrivals.iter().map(|arrival| arrival.sent_us).collect::<Vec<_>>(),
            [1_700_000_000_000_001, 1_700_000_000_000_002]
        );
        assert!(arrivals.iter().all(|arrival| arrival.arrived_us > 1_700_000_000_000_000));
        assert_eq!(sink.refused(), 0);
    }
}
