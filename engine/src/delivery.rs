//! Delivery: the per-shard scheduler task and one task per attempt.
//!
//! The scheduler releases due retries, asks [`ShardState::take_startable`] for the attempts
//! endpoints may start now (in-flight limits, breakers, fairness), spawns them, and sleeps until
//! new work arrives or the next timer is due. An attempt signs the event (Standard Webhooks),
//! sends it with the shard's outbound client, classifies the outcome, appends an
//! [`Attempt`] record to the log, then applies it to memory. A crash before that record is
//! durable means the attempt is made again after restart: at least once, never zero.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use kapsel_http::{Client, OutboundRequest, OutboundResponse, SendError, Target};

use crate::clock::now_ms;
use crate::ids::EventId;
use tracing::Instrument as _;

use crate::records::{Attempt, Record, OUTCOME_DELIVERED, OUTCOME_FAILED, OUTCOME_RETRYING};
use crate::retry::{self, Next};
use crate::shard::Shard;
use crate::state::Start;

/// Bytes of the response body kept with an attempt.
const EXCERPT_BYTES_MAX: usize = 1024;

/// How an attempt ended, before the retry policy is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// 2xx.
    pub success: bool,
    /// Worth retrying (timeouts, connection failures, 5xx, 408, 429).
    pub retryable: bool,
    /// 410 Gone: disable the endpoint.
    pub gone: bool,
    /// The E-code of a failure.
    pub error_code: Option<&'static str>,
    /// The status, when the destination answered.
    pub status_code: Option<u16>,
    /// `Retry-After` on a 429 or 503, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

/// Classifies a response or a send error per the error taxonomy.
pub fn classify(result: &Result<OutboundResponse, SendError>, now: u64) -> Classified {
    match result {
        Ok(response) => {
            let status = response.status;
            let success = (200..300).contains(&status);
            let retryable = status >= 500 || status == 408 || status == 429;
            let retry_after_ms = if matches!(status, 429 | 503) {
                response.retry_after.as_deref().and_then(|value| retry::parse_retry_after_ms(value, now))
            } else {
                None
            };
            let error_code = match (success, retryable) {
                (true, _) => None,
                (false, true) => Some("E2003"),
                (false, false) => Some("E2004"),
            };
            Classified {
                success,
                retryable,
                gone: status == 410,
                error_code,
                status_code: Some(status),
                retry_after_ms,
            }
        }
        Err(error) => Classified {
            success: false,
            retryable: true,
            gone: false,
            error_code: Some(error.code()),
            status_code: None,
            retry_after_ms: None,
        },
    }
}

/// The scheduler loop of one shard; returns when `stop` says so.
pub async fn run_scheduler(shard: Rc<Shard>, client: Rc<Client>, stop: Rc<dyn Fn() -> bool>) {
    let mut random = Random::seeded();
    let reloading = Rc::new(std::cell::Cell::new(false));
    loop {
        if stop() {
            return;
        }
        let now = now_ms();
        let (starts, next_due, reload) = {
            let mut state = shard.state().borrow_mut();
            let next_due = state.release_due(now);
            let starts = state.take_startable(now);
            let reload = if reloading.get() {
                Vec::new()
            } else {
                state.take_reload_wanted(crate::limits::PAYLOAD_RELOAD_BATCH_MAX)
            };
            (starts, next_due, reload)
        };
        if !reload.is_empty() {
            // Payloads that did not fit the memory budget: read them back off the shard thread.
            reloading.set(true);
            let (shard, reloading) = (Rc::clone(&shard), Rc::clone(&reloading));
            monoio::spawn(async move {
                if let Err(error) = shard.reload_payloads(&reload).await {
                    tracing::error!(%error, "could not read payloads back from the write-ahead log");
                }
                reloading.set(false);
                shard.notify_scheduler();
            });
        }
        tracing::trace!(shard = shard.index, starts = starts.len(), ?next_due, "scheduler pass");
        for start in starts {
            let (shard, client, sample) = (Rc::clone(&shard), Rc::clone(&client), random.sample());
            monoio::spawn(async move { attempt(&shard, &client, start, sample).await });
        }
        wait_for_work(&shard, next_due.map(|due| due.saturating_sub(now_ms()))).await;
    }
}

/// Sleeps until the shard notifies the scheduler or `delay_ms` passes (bounded so that a stop
/// request is noticed).
async fn wait_for_work(shard: &Shard, delay_ms: Option<u64>) {
    let delay = Duration::from_millis(
        delay_ms.unwrap_or(crate::limits::SCHEDULER_IDLE_MS).min(crate::limits::SCHEDULER_IDLE_MS),
    );
    let mut notified = false;
    let wait = poll_fn(|context| {
        if notified {
            return Poll::Ready(());
        }
        notified = true;
        shard.park_scheduler(context.waker());
        Poll::Pending
    });
    monoio::select! {
        () = wait => {}
        () = monoio::time::sleep(delay) => {}
    }
}

/// The delivery headers of an event: Standard Webhooks signature (old and new secret during a
/// rotation), the original Content-Type and a child traceparent.
/// What an attempt sends besides the body: destination, headers, timeout.
struct Prepared {
    target: Rc<Target>,
    headers: Vec<(&'static str, String)>,
    timeout: Duration,
}

fn headers(shard: &Shard, start: &Start, timestamp_s: u64, random: u64) -> Option<Prepared> {
    let state = shard.state().borrow();
    let entry = state.endpoints.get(&start.endpoint_id)?;
    let target = entry.target.clone()?;
    let event_id = start.event_id.to_string();
    let now = now_ms();
    let signatures: Vec<String> = entry
        .signing
        .iter()
        .filter(|(_, until_ms)| *until_ms > now)
        .map(|(secret, _)| secret.sign(&event_id, timestamp_s, &start.payload.body))
        .collect();
    let headers = vec![
        ("webhook-id", event_id),
        ("webhook-timestamp", timestamp_s.to_string()),
        ("webhook-signature", signatures.join(" ")),
        ("traceparent", crate::trace::child_traceparent(start.payload.traceparent.as_deref(), random)),
    ];
    Some(Prepared { target, headers, timeout: Duration::from_millis(u64::from(entry.endpoint.timeout_ms)) })
}

/// One attempt in its own span (event id, endpoint id, attempt number, trace id).
async fn attempt(shard: &Shard, client: &Client, start: Start, sample: (f64, u64)) {
    let started = now_ms();
    let prepared = headers(shard, &start, started / 1000, sample.1);
    let trace_id = prepared
        .as_ref()
        .and_then(|prepared| prepared.headers.iter().find(|(name, _)| *name == "traceparent"))
        .and_then(|(_, value)| crate::trace::trace_id(value));
    let span = tracing::info_span!(
        "delivery",
        event_id = %start.event_id,
        endpoint_id = %start.endpoint_id,
        attempt = start.n,
        trace_id
    );
    send_and_record(shard, client, start, sample, prepared, started).instrument(span).await;
}

async fn send_and_record(
    shard: &Shard,
    client: &Client,
    start: Start,
    sample: (f64, u64),
    prepared: Option<Prepared>,
    started: u64,
) {
    let result = match prepared {
        Some(Prepared { target, headers, timeout }) => {
            let request = OutboundRequest {
                target,
                headers,
                content_type: start.payload.content_type.clone(),
                body: Rc::clone(&start.payload.body),
                timeout,
            };
            client.send(request).await
        }
        None => Err(SendError::Connect("the endpoint's URL is not deliverable".into())),
    };
    let finished = now_ms();
    let classified = classify(&result, finished);
    let record = decide(shard, &start, started, finished, &classified, &result, sample.0);
    if let Err(error) = shard.append(&Record::Attempt(record.clone())).await {
        // The outcome still applies in memory; after a restart the attempt is simply made again.
        tracing::error!(event_id = %start.event_id, %error, "could not record a delivery attempt");
    }
    {
        let mut state = shard.state().borrow_mut();
        state.apply_attempt(&record);
        state.finish_live(&start.endpoint_id, classified.success, start.probe, finished);
    }
    let outcome = match record.outcome {
        OUTCOME_DELIVERED => "delivered",
        OUTCOME_RETRYING => "retrying",
        _ => "failed",
    };
    let since_received = (record.outcome == OUTCOME_DELIVERED)
        .then(|| finished.saturating_sub(start.event_id.unix_ms()).saturating_mul(1000));
    shard.metrics().attempt(outcome, classified.error_code, u64::from(record.latency_ms) * 1000, since_received);
    if classified.gone {
        disable_endpoint(shard, &start.endpoint_id).await;
    }
    tracing::debug!(status = ?classified.status_code, error_code = ?classified.error_code, outcome, "delivery attempt");
    shard.notify_scheduler();
}

/// Applies the retry policy to a classified outcome.
fn decide(
    shard: &Shard,
    start: &Start,
    started: u64,
    finished: u64,
    classified: &Classified,
    result: &Result<OutboundResponse, SendError>,
    sample: f64,
) -> Attempt {
    let state = shard.state().borrow();
    let summary = state.events.get(&start.event_id);
    let received_at = summary.map_or(started, |summary| summary.received_at_ms);
    let budget_used = summary.map_or(0, |summary| summary.budget_used) + 1;
    let policy = state.endpoints.get(&start.endpoint_id).map(|entry| entry.endpoint.retry.clone()).unwrap_or_default();
    let (outcome, next_attempt_at_ms) = if classified.success {
        (OUTCOME_DELIVERED, None)
    } else if !classified.retryable {
        (OUTCOME_FAILED, None)
    } else {
        match retry::next_attempt(&policy, budget_used, received_at, finished, classified.retry_after_ms, sample) {
            Next::RetryAt(at_ms) => (OUTCOME_RETRYING, Some(at_ms)),
            Next::GiveUp => (OUTCOME_FAILED, None),
        }
    };
    let response_excerpt = match result {
        Ok(response) => response.body_excerpt.iter().take(EXCERPT_BYTES_MAX).copied().collect(),
        Err(error) => error.to_string().into_bytes().into_iter().take(EXCERPT_BYTES_MAX).collect(),
    };
    Attempt {
        event_id: start.event_id.0,
        n: start.n,
        at_ms: started,
        status_code: classified.status_code,
        latency_ms: u32::try_from(finished.saturating_sub(started)).unwrap_or(u32::MAX),
        error_code: classified.error_code.map(String::from),
        response_excerpt,
        outcome,
        next_attempt_at_ms,
    }
}

/// 410 Gone: the destination asks never to be called again; the endpoint is disabled (and can
/// be re-enabled by an operator).
async fn disable_endpoint(shard: &Shard, endpoint_id: &str) {
    let endpoint = {
        let state = shard.state().borrow();
        let Some(entry) = state.endpoints.get(endpoint_id) else {
            return;
        };
        if !entry.endpoint.enabled {
            return;
        }
        let mut endpoint = entry.endpoint.clone();
        endpoint.enabled = false;
        endpoint.updated_at_ms = now_ms();
        endpoint
    };
    tracing::warn!(endpoint_id, "destination answered 410 Gone; endpoint disabled");
    match shard.append(&Record::EndpointPut(endpoint.clone())).await {
        Ok(_) => shard.state().borrow_mut().put_endpoint(endpoint, now_ms()),
        Err(error) => tracing::error!(endpoint_id, %error, "could not record the endpoint's disabling"),
    }
}

/// A small xorshift generator for jitter and span ids; seeded from the OS.
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A jitter sample in [−1, 1] and a random word.
    fn sample(&mut self) -> (f64, u64) {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (unit * 2.0 - 1.0, self.next())
    }
}

/// Retries of an event requested by an operator: put it back in its queue.
pub fn requeue_now(shard: &Shard, event_id: EventId) -> bool {
    let requeued = shard.state().borrow_mut().requeue(event_id, now_ms());
    if requeued {
        shard.notify_scheduler();
    }
    requeued
}
