//! A closed loop bounded by a count instead of a time: N keep-alive connections, each with
//! one ingest outstanding, until a given number of ingests has been accepted (202). The
//! footprint bench fills Kapsel's log with it.
//!
//! Request *k* (in the order they are claimed) is `requests[k mod requests.len()]`, so the
//! events spread evenly over the endpoints whatever the connection count. A request that fails
//! (non-202, transport error, timeout) gives its place back and is sent again, so the loop ends
//! with exactly `target` acceptances, unless failures reach
//! [`limits::FOOTPRINT_FILL_FAILURES_MAX`] first.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::client::{Connection, Failure, Reply};
use crate::limits;
use crate::stats::Failures;

/// What a fill did.
#[derive(Clone, Debug)]
pub struct Filled {
    /// 202 answers.
    pub accepted: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Requests that did not get a 202, by kind (each was sent again).
    pub failures: Failures,
}

impl Filled {
    /// Acceptances per second over the whole fill.
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The line a bench prints once a fill is done.
    pub fn summary(&self) -> String {
        format!(
            "filled: {} accepted (202) in {:.1} s, {:.0}/s; failed and sent again: {}",
            self.accepted,
            self.elapsed.as_secs_f64(),
            self.accepted_per_s(),
            self.failures
        )
    }
}

/// What the connections share (one thread: cells suffice).
struct Shared {
    target: u64,
    /// Requests sent or being sent that have not failed: accepted plus in flight.
    claimed: Cell<u64>,
    accepted: Cell<u64>,
    failures: RefCell<Failures>,
    /// Connections whose loop has ended.
    finished: Cell<usize>,
}

impl Shared {
    /// The sequence number of the next request to send, or `None` when enough are accepted or
    /// in flight, or too many failed.
    fn claim(&self) -> Option<u64> {
        let claimed = self.claimed.get();
        if claimed >= self.target || self.failures.borrow().total() >= limits::FOOTPRINT_FILL_FAILURES_MAX {
            return None;
        }
        self.claimed.set(claimed + 1);
        Some(claimed)
    }

    /// A claimed request failed: count it and give its place back.
    fn failed(&self, failure: Failure) {
        self.failures.borrow_mut().add(failure);
        self.claimed.set(self.claimed.get().saturating_sub(1));
    }
}

/// Sends ingests to `address` over `connections` connections until `target` have been
/// accepted. Prints a progress line every [`limits::FOOTPRINT_FILL_PROGRESS_MS`].
///
/// # Errors
///
/// No requests, or failures reached [`limits::FOOTPRINT_FILL_FAILURES_MAX`] (the message
/// says which).
pub async fn run(address: SocketAddr, requests: &[Vec<u8>], target: u64, connections: usize) -> Result<Filled, String> {
    if requests.is_empty() || connections == 0 {
        return Err("a fill needs at least one request and one connection".into());
    }
    let started = Instant::now();
    let shared = Rc::new(Shared {
        target,
        claimed: Cell::new(0),
        accepted: Cell::new(0),
        failures: RefCell::new(Failures::default()),
        finished: Cell::new(0),
    });
    let requests: Rc<[Vec<u8>]> = Rc::from(requests);
    let workers: Vec<_> =
        (0..connections).map(|_| monoio::spawn(worker(address, Rc::clone(&requests), Rc::clone(&shared)))).collect();
    let mut next_report = started + Duration::from_millis(limits::FOOTPRINT_FILL_PROGRESS_MS);
    while shared.finished.get() < connections {
        monoio::time::sleep(Duration::from_millis(limits::FOOTPRINT_FILL_POLL_MS)).await;
        if Instant::now() >= next_report {
            let accepted = shared.accepted.get();
            let rate = accepted as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
            println!("    filled {accepted} of {target} ({rate:.0}/s), failures {}", shared.failures.borrow());
            next_report += Duration::from_millis(limits::FOOTPRINT_FILL_PROGRESS_MS);
        }
    }
    for worker in workers {
        worker.await;
    }
    let filled = Filled {
        accepted: shared.accepted.get(),
        elapsed: started.elapsed(),
        failures: shared.failures.borrow().clone(),
    };
    if filled.accepted < target {
        return Err(format!(
            "the fill gave up after {} failures with {} of {target} accepted: {}",
            filled.failures.total(),
            filled.accepted,
            filled.failures
        ));
    }
    Ok(filled)
}

/// One connection's loop: claim, send, count, again.
async fn worker(address: SocketAddr, requests: Rc<[Vec<u8>]>, shared: Rc<Shared>) {
    let mut connection: Option<Connection> = None;
    while let Some(sequence) = shared.claim() {
        let index = usize::try_from(sequence).unwrap_or(0) % requests.len();
        let Some(request) = requests.get(index) else { break };
        match send(&mut connection, address, request).await {
            Ok(reply) => {
                if reply.status == 202 {
                    shared.accepted.set(shared.accepted.get() + 1);
                } else {
                    shared.failed(Failure::Status(reply.status));
                }
                if !reply.keep_alive {
                    connection = None;
                }
            }
            Err(failure) => {
                shared.failed(failure);
                connection = None;
                monoio::time::sleep(Duration::from_millis(limits::RECONNECT_BACKOFF_MS)).await;
            }
        }
    }
    shared.finished.set(shared.finished.get() + 1);
}

/// `request` on the open connection, or on a new one; bounded by
/// [`limits::REQUEST_TIMEOUT_MS`] (connect bounded apart).
async fn send(connection: &mut Option<Connection>, address: SocketAddr, request: &[u8]) -> Result<Reply, Failure> {
    match connection.as_mut() {
        Some(open) => open.set_request(request),
        None => *connection = Some(Connection::open(address, request).await?),
    }
    let Some(open) = connection.as_mut() else { return Err(Failure::Connect) };
    let timeout = Duration::from_millis(limits::REQUEST_TIMEOUT_MS);
    monoio::time::timeout(timeout, open.exchange()).await.unwrap_or(Err(Failure::Timeout))
}
