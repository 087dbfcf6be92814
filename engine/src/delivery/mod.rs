//! Delivery: the per-shard scheduler task and one task per attempt.
//!
//! The scheduler asks [`crate::state::ShardState::schedule`] for the attempts endpoints may start
//! now (due retries first, in-flight limits, breakers, fairness) and the payloads to read back,
//! spawns them, and sleeps until new work arrives or the next timer is due. An attempt signs the event (Standard Webhooks),
//! sends it with the shard's outbound client, classifies the outcome, appends an
//! [`Attempt`] record to the log, then applies it to memory. A crash before that record is
//! durable means the attempt is made again after restart: at least once, never zero.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use kapsel_http::{Client, OutboundRequest, OutboundResponse, SendError, Target};

use crate::clock::now_ms;
use tracing::Instrument as _;

use crate::model::records::{Attempt, Record, OUTCOME_DELIVERED, OUTCOME_FAILED, OUTCOME_RETRYING};
use crate::shard::Shard;
use crate::state::retry::{self, Next};
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
    loop {
        if stop() {
            return;
        }
        if !shard.writable() {
            // No outcome could be recorded: an attempt now would reach the destination again
            // after the log is back. The recovery task wakes the scheduler once it is. (A
            // partition's deposed owner is stopped by its runtime.)
            wait_for_work(&shard, None).await;
            continue;
        }
        let now = now_ms();
        let plan = shard.state().borrow_mut().schedule(now);
        tracing::trace!(shard = shard.index, starts = plan.starts.len(), reads = plan.reads.len(), "scheduler pass");
        for request in plan.reads {
            let shard = Rc::clone(&shard);
            monoio::spawn(async move { shard.read_back(request).await });
        }
        for start in plan.starts {
            let (shard, client, sample) = (Rc::clone(&shard), Rc::clone(&client), random.sample());
            monoio::spawn(async move { attempt(&shard, &client, start, sample).await });
        }
        wait_for_work(&shard, plan.next_wake_ms.map(|due| due.saturating_sub(now_ms()))).await;
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

/// What an attempt sends besides the body: destination, headers, timeout.
struct Prepared {
    target: Rc<Target>,
    headers: Vec<(&'static str, String)>,
    timeout: Duration,
}

/// The delivery headers of an event: Standard Webhooks signature (old and new secret during a
/// rotation) over the `webhook-id` (a published event's id for each of its deliveries), a child
/// traceparent and the sender's tracestate; the original Content-Type goes with the body.
fn headers(shard: &Shard, start: &Start, timestamp_s: u64, random: u64) -> Option<Prepared> {
    let state = shard.state().borrow();
    let entry = state.endpoints.get(&start.endpoint_id)?;
    let target = entry.target.clone()?;
    let event_id = start.payload.webhook_id.to_string();
    let now = now_ms();
    let signatures: Vec<String> = entry
        .signing
        .iter()
        .filter(|(_, until_ms)| *until_ms > now)
        .map(|(secret, _)| secret.sign(&event_id, timestamp_s, &start.payload.body))
        .collect();
    let mut headers = vec![
        ("webhook-id", event_id),
        ("webhook-timestamp", timestamp_s.to_string()),
        ("webhook-signature", signatures.join(" ")),
        // The one random word, spread over 128 bits by an odd multiplier (a bijection on the low
        // 64 bits): a new trace id's right-most 7 bytes, which its random flag speaks for, stay
        // pseudo-random.
        (
            "traceparent",
            crate::model::trace::child_traceparent(
                start.payload.traceparent.as_deref(),
                u128::from(random).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            ),
        ),
    ];
    // Kept only with the sender's valid traceparent (W3C Trace Context: a tracestate never goes
    // with a trace it does not belong to).
    if let (Some(_), Some(tracestate)) = (&start.payload.traceparent, &start.payload.tracestate) {
        headers.push(("tracestate", tracestate.clone()));
    }
    Some(Prepared { target, headers, timeout: Duration::from_millis(u64::from(entry.endpoint.timeout_ms)) })
}

/// One attempt in its own span (event id, endpoint id, attempt number, trace id).
async fn attempt(shard: &Shard, client: &Client, start: Start, sample: (f64, u64)) {
    let started = now_ms();
    let prepared = headers(shard, &start, started / 1000, sample.1);
    let trace_id = prepared
        .as_ref()
        .and_then(|prepared| prepared.headers.iter().find(|(name, _)| *name == "traceparent"))
        .and_then(|(_, value)| crate::model::trace::trace_id(value));
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
    complete_attempt(shard, &start, &result, started, now_ms(), sample.0).await;
}

/// Records an attempt's outcome: classifies it, applies the retry policy, appends the
/// [`Attempt`] record and, once it is applied, frees the attempt's slot. The live delivery path
/// and the simulation both end an attempt here. Returns the outcome recorded.
pub async fn complete_attempt(
    shard: &Shard,
    start: &Start,
    result: &Result<OutboundResponse, SendError>,
    started: u64,
    finished: u64,
    jitter: f64,
) -> u8 {
    shard.state().borrow_mut().answered(start);
    shard.notify_scheduler();
    let classified = classify(result, finished);
    let record = decide(shard, start, started, finished, &classified, result, jitter);
    let outcome = record.outcome;
    let latency_us = u64::from(record.latency_ms) * 1000;
    let recorded = match shard.append(Record::Attempt(record), finished).await {
        Ok(_) => true,
        Err(error) => {
            // Not recorded: the event goes back to its queue; after a restart the attempt is
            // simply made again.
            tracing::error!(event_id = %start.event_id, %error, "could not record a delivery attempt");
            false
        }
    };
    shard.state().borrow_mut().finish_live(start, recorded);
    let outcome_name = match outcome {
        OUTCOME_DELIVERED => "delivered",
        OUTCOME_RETRYING => "retrying",
        _ => "failed",
    };
    let since_received =
        (outcome == OUTCOME_DELIVERED).then(|| finished.saturating_sub(start.event_id.unix_ms()).saturating_mul(1000));
    shard.metrics().attempt(outcome_name, classified.error_code, latency_us, since_received);
    if recorded {
        let error = classified.error_code.filter(|_| outcome != OUTCOME_DELIVERED).map(|error_code| {
            crate::shard::stats::LastError { at_ms: finished, error_code, status_code: classified.status_code }
        });
        shard.metrics().endpoint_attempt(&start.endpoint_id, outcome_name, error);
    }
    if classified.gone && recorded {
        disable_endpoint(shard, &start.endpoint_id, finished).await;
    }
    tracing::debug!(status = ?classified.status_code, error_code = ?classified.error_code, outcome = outcome_name, "delivery attempt");
    shard.notify_scheduler();
    outcome
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
    let received_at = start.event_id.unix_ms();
    let budget_used = state.events.get(&start.event_id).map_or(0, |event| event.budget_used) + 1;
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
async fn disable_endpoint(shard: &Shard, endpoint_id: &str, now: u64) {
    let enabled = shard.state().borrow().endpoints.get(endpoint_id).is_some_and(|entry| entry.endpoint.enabled);
    if !enabled {
        return;
    }
    tracing::warn!(endpoint_id, "destination answered 410 Gone; endpoint disabled");
    if let Err(error) = shard.set_enabled(endpoint_id, false, now).await {
        tracing::error!(endpoint_id, %error, "could not record the endpoint's disabling");
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(status: u16, retry_after: Option<&str>) -> Result<OutboundResponse, SendError> {
        Ok(OutboundResponse {
            status,
            retry_after: retry_after.map(String::from),
            body_excerpt: Vec::new(),
            latency: Duration::from_millis(1),
        })
    }

    // The error taxonomy decides retries and the breaker: every class of answer must land in
    // its E-code, and only 429 and 503 may set the retry time.
    #[test]
    fn answers_and_failures_are_classified_per_the_taxonomy() {
        // (what happened, success, retryable, E-code)
        type Case = (Result<OutboundResponse, SendError>, bool, bool, Option<&'static str>);
        let cases: [Case; 10] = [
            (answer(200, None), true, false, None),
            (answer(204, None), true, false, None),
            (answer(500, None), false, true, Some("E2003")),
            (answer(408, None), false, true, Some("E2003")),
            (answer(429, None), false, true, Some("E2003")),
            (answer(404, None), false, false, Some("E2004")),
            (answer(301, None), false, false, Some("E2004")),
            (answer(410, None), false, false, Some("E2004")),
            (Err(SendError::Timeout), false, true, Some("E2001")),
            (Err(SendError::Connect("refused".into())), false, true, Some("E2002")),
        ];
        for (result, success, retryable, code) in cases {
            let classified = classify(&result, 0);
            assert_eq!(
                (classified.success, classified.retryable, classified.error_code),
                (success, retryable, code),
                "{result:?}"
            );
        }
        assert!(classify(&answer(410, None), 0).gone);
        assert_eq!(classify(&answer(429, Some("7")), 0).retry_after_ms, Some(7_000));
        assert_eq!(classify(&answer(503, Some("2")), 0).retry_after_ms, Some(2_000));
        assert_eq!(classify(&answer(500, Some("2")), 0).retry_after_ms, None, "only 429 and 503");
    }
}
