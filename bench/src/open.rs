//! The open loop: requests on a fixed schedule (so many per second), whatever the server
//! does. Each request has an intended send time; its latency runs from that time to its
//! response, so a server that stalls is charged for every request that should have gone out
//! meanwhile (no coordinated omission). A request that is due while every connection is busy
//! waits in a queue for the next free one, its clock already running.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

use crate::client::{Connection, Failure};
use crate::limits;
use crate::machine::{CpuMeter, CpuUsage};
use crate::payload::SendTimeStamp;
use crate::stats::{Failures, Latencies};

/// An open loop to run.
#[derive(Clone, Copy, Debug)]
pub struct OpenLoop {
    /// Requests per second scheduled.
    pub rate_per_s: u64,
    /// Connections the schedule is served over.
    pub connections: usize,
    /// Scheduled but unrecorded time before the measured period.
    pub warm_up: Duration,
    /// The measured period.
    pub measure: Duration,
    /// Where each request gets its send time written, if anywhere.
    pub stamp: Option<SendTimeStamp>,
}

/// What an open loop measured, over the requests scheduled in the measured period.
#[derive(Clone, Debug)]
pub struct OpenOutcome {
    /// The loop that ran.
    pub plan: OpenLoop,
    /// Requests scheduled in the measured period.
    pub scheduled: u64,
    /// Of those, answered 2xx.
    pub successes: u64,
    /// 2xx responses over the whole run, warm-up included: what the server accepted.
    pub accepted_total: u64,
    /// Time from the start of the measured period to the last of its responses, at least the
    /// period itself.
    pub elapsed: Duration,
    /// Intended send time to response.
    pub latencies: Latencies,
    /// Intended send time to actual send: the wait for a free connection plus the generator's
    /// own timer slack. Large values mean the server (or the generator) fell behind.
    pub send_lag: Latencies,
    /// Failed or abandoned requests.
    pub failures: Failures,
    /// CPU time over the measured period.
    pub cpu: CpuUsage,
}

impl OpenOutcome {
    /// 2xx responses per second over [`OpenOutcome::elapsed`].
    pub fn achieved_per_s(&self) -> f64 {
        self.successes as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// A request that is due: when it should have been sent, and whether it is recorded.
#[derive(Clone, Copy, Debug)]
struct Due {
    intended: Instant,
    measured: bool,
}

/// The schedule: request `i` is due at `start + i / rate`.
struct Schedule {
    start: Instant,
    rate_per_s: u64,
    total: u64,
    measured_from: u64,
    next: Cell<u64>,
}

impl Schedule {
    fn intended(&self, index: u64) -> Instant {
        let nanos = u128::from(index) * 1_000_000_000 / u128::from(self.rate_per_s.max(1));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The send time of the next request not yet released, if any remain.
    fn next_intended(&self) -> Option<Instant> {
        let next = self.next.get();
        (next < self.total).then(|| self.intended(next))
    }

    /// Queues every request due by `now`. Called by the dispatcher on its timer and by every
    /// worker after each response, so that a busy generator releases requests on time even
    /// though the timer only has millisecond resolution.
    fn release_due(&self, now: Instant, queue: &WorkQueue) {
        let mut next = self.next.get();
        while next < self.total {
            let intended = self.intended(next);
            if intended > now {
                break;
            }
            queue.push(Due { intended, measured: next >= self.measured_from });
            next += 1;
        }
        self.next.set(next);
    }
}

/// Due requests and the idle workers waiting for one. Single-threaded: a push wakes the
/// worker that has been idle longest, so the load rotates over every connection.
#[derive(Default)]
struct WorkQueue {
    due: RefCell<VecDeque<Due>>,
    idle: RefCell<VecDeque<Waker>>,
    closed: Cell<bool>,
}

impl WorkQueue {
    fn push(&self, due: Due) {
        self.due.borrow_mut().push_back(due);
        if let Some(waker) = self.idle.borrow_mut().pop_front() {
            waker.wake();
        }
    }

    /// No more pushes: idle workers are woken to find the queue empty and end.
    fn close(&self) {
        self.closed.set(true);
        for waker in self.idle.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// The next due request; `None` once the queue is closed and empty. A worker only waits
    /// (registers) when the queue is empty, and every push wakes a waiting one, so no request
    /// waits while a worker sleeps.
    async fn next(&self) -> Option<Due> {
        poll_fn(|context| {
            if let Some(due) = self.due.borrow_mut().pop_front() {
                return Poll::Ready(Some(due));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            self.idle.borrow_mut().push_back(context.waker().clone());
            Poll::Pending
        })
        .await
    }
}

struct Shared {
    schedule: Schedule,
    queue: WorkQueue,
    measure_end: Instant,
    hard_stop: Instant,
    latencies: RefCell<Latencies>,
    send_lag: RefCell<Latencies>,
    failures: RefCell<Failures>,
    last_done: Cell<Option<Instant>>,
    accepted_total: Cell<u64>,
}

impl Shared {
    fn success(&self, due: Due, sent: Instant, done: Instant) {
        self.accepted_total.set(self.accepted_total.get() + 1);
        if due.measured {
            self.latencies.borrow_mut().record(done - due.intended);
            self.send_lag.borrow_mut().record(sent.saturating_duration_since(due.intended));
            self.last_done.set(Some(self.last_done.get().map_or(done, |last| last.max(done))));
        }
    }

    fn failure(&self, due: Due, failure: Failure) {
        if due.measured {
            self.failures.borrow_mut().add(failure);
        }
    }
}

/// Runs `plan` against `address`, connection `i` sending `requests[i % requests.len()]`.
/// Returns once the schedule is done and answered, or [`limits::DRAIN_GRACE_MS`] after its
/// end with the rest abandoned.
///
/// # Errors
///
/// No requests, or the histograms could not be created.
pub async fn run(
    address: SocketAddr,
    requests: &[Vec<u8>],
    plan: OpenLoop,
    meter: CpuMeter,
) -> Result<OpenOutcome, String> {
    if requests.is_empty() {
        return Err("an open loop needs at least one request".into());
    }
    let start = Instant::now();
    let per_second = |period: Duration| u64::try_from(u128::from(plan.rate_per_s) * period.as_nanos() / 1_000_000_000);
    let measured_from = per_second(plan.warm_up).map_err(|_| "schedule too long")?;
    let total = measured_from + per_second(plan.measure).map_err(|_| "schedule too long")?;
    let measure_start = start + plan.warm_up;
    let measure_end = measure_start + plan.measure;
    let shared = Rc::new(Shared {
        schedule: Schedule { start, rate_per_s: plan.rate_per_s, total, measured_from, next: Cell::new(0) },
        queue: WorkQueue::default(),
        measure_end,
        hard_stop: measure_end + Duration::from_millis(limits::DRAIN_GRACE_MS),
        latencies: RefCell::new(Latencies::new()?),
        send_lag: RefCell::new(Latencies::new()?),
        failures: RefCell::new(Failures::default()),
        last_done: Cell::new(None),
        accepted_total: Cell::new(0),
    });
    let requests: Vec<Rc<[u8]>> = requests.iter().map(|request| Rc::from(request.as_slice())).collect();
    let workers: Vec<_> = (0..plan.connections)
        .filter_map(|index| requests.get(index % requests.len().max(1)))
        .map(|request| monoio::spawn(worker(address, Rc::clone(request), plan.stamp, Rc::clone(&shared))))
        .collect();
    let cpu = monoio::spawn(async move {
        monoio::time::sleep_until(measure_start).await;
        let before = meter.sample();
        monoio::time::sleep_until(measure_end).await;
        meter.sample().since(&before)
    });
    dispatch(&shared).await;
    for worker in workers {
        worker.await;
    }
    let cpu = cpu.await;
    let latencies = shared.latencies.borrow().clone();
    let send_lag = shared.send_lag.borrow().clone();
    let failures = shared.failures.borrow().clone();
    let last_done = shared.last_done.get().unwrap_or(shared.measure_end).max(shared.measure_end);
    Ok(OpenOutcome {
        plan,
        scheduled: total - measured_from,
        successes: latencies.count(),
        accepted_total: shared.accepted_total.get(),
        elapsed: last_done - measure_start,
        latencies,
        send_lag,
        failures,
        cpu,
    })
}

/// Releases the schedule on time, then closes the queue.
async fn dispatch(shared: &Shared) {
    loop {
        shared.schedule.release_due(Instant::now(), &shared.queue);
        match shared.schedule.next_intended() {
            Some(next) => monoio::time::sleep_until(next).await,
            None => break,
        }
    }
    shared.queue.close();
}

/// One connection: takes the next due request, sends it, records it, until the queue closes.
async fn worker(address: SocketAddr, request: Rc<[u8]>, stamp: Option<SendTimeStamp>, shared: Rc<Shared>) {
    let mut connection: Option<Connection> = None;
    while let Some(due) = shared.queue.next().await {
        if Instant::now() >= shared.hard_stop {
            shared.failure(due, Failure::Abandoned);
            continue;
        }
        if connection.is_none() {
            match monoio::time::timeout_at(shared.hard_stop, Connection::open(address, &request)).await {
                Ok(Ok(opened)) => connection = Some(opened.stamping(stamp)),
                Ok(Err(failure)) => {
                    shared.failure(due, failure);
                    monoio::time::sleep(Duration::from_millis(limits::RECONNECT_BACKOFF_MS)).await;
                    continue;
                }
                Err(_) => {
                    shared.failure(due, Failure::Connect);
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        let sent = Instant::now();
        let deadline = (sent + Duration::from_millis(limits::REQUEST_TIMEOUT_MS)).min(shared.hard_stop);
        let outcome = monoio::time::timeout_at(deadline, open.exchange()).await.unwrap_or(Err(Failure::Timeout));
        let done = Instant::now();
        match outcome {
            Ok(reply) if (200..300).contains(&reply.status) => {
                shared.success(due, sent, done);
                if !reply.keep_alive {
                    connection = None;
                }
            }
            Ok(reply) => {
                shared.failure(due, Failure::Status(reply.status));
                if !reply.keep_alive {
                    connection = None;
                }
            }
            Err(failure) => {
                shared.failure(due, failure);
                connection = None;
            }
        }
        shared.schedule.release_due(done, &shared.queue);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The schedule is the whole point of the open loop: exactly `rate` requests per second,
    // released no earlier than due, warm-up ones unrecorded.
    #[test]
    fn schedule_releases_on_time() {
        crate::runtime::block_on(crate::runtime::Driver::Auto, async {
            let start = Instant::now();
            let schedule =
                Schedule { start, rate_per_s: 10_000, total: 30_000, measured_from: 10_000, next: Cell::new(0) };
            let queue = WorkQueue::default();
            schedule.release_due(start + Duration::from_micros(1_050), &queue);
            // Requests 0 to 10 are due by 1.05 ms (every 100 µs, the first at once).
            assert_eq!(queue.due.borrow().len(), 11);
            assert!(queue
                .due
                .borrow()
                .iter()
                .all(|due| !due.measured && due.intended <= start + Duration::from_micros(1_000)));
            schedule.release_due(start + Duration::from_secs(3), &queue);
            let due = queue.due.borrow();
            assert_eq!(due.len(), 30_000);
            assert_eq!(due.iter().filter(|due| due.measured).count(), 20_000);
            assert_eq!(due[10_000].intended, start + Duration::from_secs(1));
            assert!(schedule.next_intended().is_none());
        })
        .unwrap();
    }

    // A worker waiting on an empty queue must be woken by the next push, and all of them by
    // the close, or the loop would hang or drop requests.
    #[test]
    fn queue_wakes_idle_workers_and_closes() {
        let counted = crate::runtime::block_on(crate::runtime::Driver::Auto, async {
            let queue = Rc::new(WorkQueue::default());
            let served = Rc::new(Cell::new(0u32));
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let (queue, served) = (Rc::clone(&queue), Rc::clone(&served));
                    monoio::spawn(async move {
                        while queue.next().await.is_some() {
                            served.set(served.get() + 1);
                            monoio::time::sleep(Duration::from_millis(1)).await;
                        }
                    })
                })
                .collect();
            monoio::time::sleep(Duration::from_millis(5)).await;
            for _ in 0..10 {
                queue.push(Due { intended: Instant::now(), measured: true });
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
            queue.close();
            for worker in workers {
                monoio::time::timeout(Duration::from_secs(5), worker).await.unwrap();
            }
            served.get()
        })
        .unwrap();
        assert_eq!(counted, 10);
    }
}
