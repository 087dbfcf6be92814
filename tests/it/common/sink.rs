//! A scripted HTTP/1.1 sink on 127.0.0.1 for delivery tests: records every request it gets and
//! answers as the test's script says (status, extra headers, delay). One thread per connection,
//! keep-alive supported; it stops when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A request as the sink saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// What to answer: status, extra headers, a body (`ok` unless set), and a delay before answering.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: b"ok".to_vec(), delay: Duration::ZERO }
    }
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(usize, &Received) -> Reply + Send + Sync;

struct Inner {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    script: Mutex<Arc<Script>>,
    stop: AtomicBool,
}

/// A running sink.
pub struct Sink {
    pub address: SocketAddr,
    inner: Arc<Inner>,
}

impl Sink {
    /// Starts a sink answering by `script(index_of_request, request)`.
    pub fn start(script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let inner = Arc::new(Inner {
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            script: Mutex::new(Arc::new(script)),
            stop: AtomicBool::new(false),
        });
        let accept_inner = Arc::clone(&inner);
        std::thread::spawn(move || {
            while !accept_inner.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let inner = Arc::clone(&accept_inner);
                        std::thread::spawn(move || serve(stream, &inner));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Sink { address, inner }
    }

    /// Replaces the script (for example: a dead endpoint that recovers).
    pub fn set_script(&self, script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) {
        *self.inner.script.lock().unwrap() = Arc::new(script);
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Waits until `condition` holds on what was received (bounded generously).
    pub fn wait_for(&self, what: &str, timeout: Duration, condition: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut received = self.inner.received.lock().unwrap();
        loop {
            if condition(&received) {
                return received.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}; received {} requests", received.len());
            received = self.inner.arrived.wait_timeout(received, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, inner: &Inner) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(head_end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                Err(_) if !inner.stop.load(Ordering::Relaxed) => continue,
                Err(_) => return,
            }
            continue;
        };
        let (request_line, headers, length) = super::parse_head(&buffer[..head_end]);
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
        while buffer.len() < head_end + 4 + length {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                Err(_) if !inner.stop.load(Ordering::Relaxed) => continue,
                Err(_) => return,
            }
        }
        let body = buffer[head_end + 4..head_end + 4 + length].to_vec();
        buffer.drain(..head_end + 4 + length);
        let request = Received { path, headers, body, at: Instant::now() };
        let script = Arc::clone(&inner.script.lock().unwrap());
        let index = {
            let mut received = inner.received.lock().unwrap();
            received.push(request.clone());
            inner.arrived.notify_all();
            received.len() - 1
        };
        let reply = script(index, &request);
        std::thread::sleep(reply.delay);
        let mut response = format!("HTTP/1.1 {} Sink\r\nContent-Length: {}\r\n", reply.status, reply.body.len());
        for (name, value) in &reply.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        let mut response = response.into_bytes();
        response.extend_from_slice(&reply.body);
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}
