//! The closed loop: N connections, each sending its next request as soon as the previous
//! response arrived, for a fixed time after a warm-up. Throughput is what the server sustains
//! with N requests outstanding; latency is service time (send to last byte received).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use crate::client::{Connection, Failure};
use crate::limits;
use crate::machine::{CpuMeter, CpuUsage};
use crate::payload::SendTimeStamp;
use crate::stats::{Failures, Latencies};

/// A closed loop to run.
#[derive(Clone, Copy, Debug)]
pub struct ClosedLoop {
    /// Connections, each with one request outstanding.
    pub connections: usize,
    /// Unrecorded time before the measured period.
    pub warm_up: Duration,
    /// The measured period.
    pub measure: Duration,
    /// Where each request gets its send time written, if anywhere.
    pub stamp: Option<SendTimeStamp>,
}

/// What a closed loop measured.
#[derive(Clone, Debug)]
pub struct ClosedOutcome {
    /// The loop that ran.
    pub plan: ClosedLoop,
    /// The measured period as it really ran.
    pub elapsed: Duration,
    /// 2xx responses completed within the measured period.
    pub successes: u64,
    /// 2xx responses over the whole run, warm-up and tail included: what the server accepted.
    pub accepted_total: u64,
    /// Their latencies.
    pub latencies: Latencies,
    /// Requests sent in the measured period that failed.
    pub failures: Failures,
    /// CPU time over the measured period.
    pub cpu: CpuUsage,
}

impl ClosedOutcome {
    /// 2xx responses per second.
    pub fn throughput_per_s(&self) -> f64 {
        self.successes as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// The loop's clock: when recording starts and ends, and when everything must have stopped.
#[derive(Clone, Copy, Debug)]
struct Window {
    measure_start: Instant,
    end: Instant,
    hard_stop: Instant,
}

struct Recorder {
    window: Window,
    latencies: RefCell<Latencies>,
    failures: RefCell<Failures>,
    accepted_total: Cell<u64>,
}

impl Recorder {
    fn success(&self, sent: Instant, done: Instant) {
        self.accepted_total.set(self.accepted_total.get() + 1);
        if sent >= self.window.measure_start && done <= self.window.end {
            self.latencies.borrow_mut().record(done - sent);
        }
    }

    /// A failure counts when its request was sent in the measured period, however late it
    /// failed: errors are never hidden by the window.
    fn failure(&self, sent: Instant, failure: Failure) {
        if sent >= self.window.measure_start && sent <= self.window.end {
            self.failures.borrow_mut().add(failure);
        }
    }
}

/// Runs `plan` against `address`, connection `i` sending `requests[i % requests.len()]`.
/// Returns after the measured period and the requests in flight then (at most
/// [`limits::DRAIN_GRACE_MS`]).
///
/// # Errors
///
/// No requests, or the histogram could not be created.
pub async fn run(
    address: SocketAddr,
    requests: &[Vec<u8>],
    plan: ClosedLoop,
    meter: CpuMeter,
) -> Result<ClosedOutcome, String> {
    if requests.is_empty() {
        return Err("a closed loop needs at least one request".into());
    }
    let start = Instant::now();
    let measure_start = start + plan.warm_up;
    let end = measure_start + plan.measure;
    let window = Window { measure_start, end, hard_stop: end + Duration::from_millis(limits::DRAIN_GRACE_MS) };
    let recorder = Rc::new(Recorder {
        window,
        latencies: RefCell::new(Latencies::new()?),
        failures: RefCell::new(Failures::default()),
        accepted_total: Cell::new(0),
    });
    let requests: Vec<Rc<[u8]>> = requests.iter().map(|request| Rc::from(request.as_slice())).collect();
    let workers: Vec<_> = (0..plan.connections)
        .filter_map(|index| requests.get(index % requests.len().max(1)))
        .map(|request| monoio::spawn(worker(address, Rc::clone(request), plan.stamp, Rc::clone(&recorder))))
        .collect();
    monoio::time::sleep_until(measure_start).await;
    let cpu_before = meter.sample();
    monoio::time::sleep_until(end).await;
    let cpu_after = meter.sample();
    for worker in workers {
        worker.await;
    }
    let latencies = recorder.latencies.borrow().clone();
    let failures = recorder.failures.borrow().clone();
    Ok(ClosedOutcome {
        plan,
        elapsed: end - measure_start,
        successes: latencies.count(),
        accepted_total: recorder.accepted_total.get(),
        latencies,
        failures,
        // Sampled when the sleeps woke, within a millisecond or two of the period's bounds.
        cpu: cpu_after.since(&cpu_before),
    })
}

/// One connection's loop: send, wait, record, again, until the end of the measured period.
async fn worker(address: SocketAddr, request: Rc<[u8]>, stamp: Option<SendTimeStamp>, recorder: Rc<Recorder>) {
    let window = recorder.window;
    let mut connection: Option<Connection> = None;
    while Instant::now() < window.end {
        if connection.is_none() {
            let attempt = Instant::now();
            match Connection::open(address, &request).await {
                Ok(opened) => connection = Some(opened.stamping(stamp)),
                Err(failure) => {
                    recorder.failure(attempt, failure);
                    monoio::time::sleep(Duration::from_millis(limits::RECONNECT_BACKOFF_MS)).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        let sent = Instant::now();
        let deadline = (sent + Duration::from_millis(limits::REQUEST_TIMEOUT_MS)).min(window.hard_stop);
        let outcome = monoio::time::timeout_at(deadline, open.exchange()).await.unwrap_or(Err(Failure::Timeout));
        let done = Instant::now();
        match outcome {
            Ok(reply) if (200..300).contains(&reply.status) => {
                recorder.success(sent, done);
                if !reply.keep_alive {
                    connection = None;
                }
            }
            Ok(reply) => {
                recorder.failure(sent, Failure::Status(reply.status));
                if !reply.keep_alive {
                    connection = None;
                }
            }
            Err(failure) => {
                recorder.failure(sent, failure);
                connection = None;
            }
        }
    }
}
