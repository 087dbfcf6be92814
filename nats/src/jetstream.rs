//! Streams on the link thread: ensure, publish with retries, reads, purge, ordered consumers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, RawMessageErrorKind, StorageType};
use async_nats::{HeaderMap, HeaderName};
use futures_util::{SinkExt, StreamExt};

use crate::errors::{full_text, transient, wrong_last_sequence, LinkError, PublishError};
use crate::limits::{CONSUMER_BATCH, CONSUMER_HEARTBEAT_MS, CONSUMER_INACTIVE_MS, CONSUMER_PULL_EXPIRES_MS};
use crate::model::{Ack, Ensured, Message, Publish, Storage, StreamSpec, StreamState};
use crate::retry;
use crate::thread::{count, Session};

/// Sends `attempt` again after transient failures (timeouts, no responders, a 503) until the
/// session's retry deadline; any other failure ends it at once.
pub(crate) async fn with_retries<T, F, Fut>(session: &Session, what: &str, mut attempt: F) -> Result<T, LinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LinkError>>,
{
    let deadline = Instant::now() + session.options.retry_deadline;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(LinkError::Failed { detail, .. }) if transient(&detail) => {
                let Some(pause) = retry::next_pause(attempts, Instant::now(), deadline) else {
                    count(&session.counters.errors);
                    return Err(LinkError::Timeout { what: what.to_string(), detail });
                };
                count(&session.counters.retries);
                tokio::time::sleep(pause).await;
            }
            Err(error) => {
                count(&session.counters.errors);
                return Err(error);
            }
        }
    }
}

/// A client error as a [`LinkError::Failed`] of the call `what`, with its whole text.
pub(crate) fn failed(what: &str, error: &(dyn std::error::Error + 'static)) -> LinkError {
    LinkError::Failed { what: what.to_string(), detail: full_text(error) }
}

/// Creates the stream, or changes the spec's settings of an existing one (keeping the rest).
pub(crate) async fn ensure_stream(session: &Session, spec: &StreamSpec) -> Result<Ensured, LinkError> {
    crate::names::check_name("stream name", &spec.name)?;
    for subject in &spec.subjects {
        crate::names::check_filter(subject)?;
    }
    let what = format!("ensure stream {}", spec.name);
    with_retries(session, &what, || async {
        match session.jetstream.get_stream(&spec.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|error| failed(&what, &error))?;
                let existing = info.config.clone();
                let desired = merged(existing.clone(), spec);
                if desired == existing {
                    return Ok(Ensured::Unchanged);
                }
                if desired.storage != existing.storage {
                    let detail =
                        format!("it exists with {:?} storage, the spec asks {:?}", existing.storage, spec.storage);
                    return Err(LinkError::Failed { what: what.clone(), detail });
                }
                session.jetstream.update_stream(&desired).await.map_err(|error| failed(&what, &error))?;
                Ok(Ensured::Updated)
            }
            Err(error) if full_text(&error).contains("error code 10059") => {
                let config = merged(stream::Config { name: spec.name.clone(), ..Default::default() }, spec);
                session.jetstream.create_stream(config).await.map_err(|error| failed(&what, &error))?;
                Ok(Ensured::Created)
            }
            Err(error) => Err(failed(&what, &error)),
        }
    })
    .await
}

/// `base` with the settings a spec decides (a zero duplicate window keeps `base`'s).
fn merged(base: stream::Config, spec: &StreamSpec) -> stream::Config {
    stream::Config {
        subjects: spec.subjects.clone(),
        num_replicas: spec.replicas,
        duplicate_window: if spec.duplicate_window.is_zero() { base.duplicate_window } else { spec.duplicate_window },
        max_messages_per_subject: spec.max_msgs_per_subject.unwrap_or(-1),
        max_age: spec.max_age,
        allow_direct: spec.allow_direct,
        allow_rollup: spec.allow_rollup,
        storage: match spec.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        ..base
    }
}

/// The publish as async-nats builds it: the same headers on every attempt.
fn message(publish: &Publish, headers: &HeaderMap) -> PublishMessage {
    let mut message = PublishMessage::build().payload(publish.payload.clone().into()).headers(headers.clone());
    if let Some(id) = &publish.msg_id {
        message = message.message_id(id);
    }
    if let Some(sequence) = publish.expected_last_subject_sequence {
        message = message.expected_last_subject_sequence(sequence);
    }
    if let Some(sequence) = publish.expected_last_sequence {
        message = message.expected_last_sequence(sequence);
    }
    message
}

/// The caller's own headers, checked (async-nats panics on a bad header name).
fn headers(publish: &Publish) -> Result<HeaderMap, PublishError> {
    let mut map = HeaderMap::new();
    for (name, value) in &publish.headers {
        crate::names::check_header_name(name).map_err(|error| PublishError::Refused(error.to_string()))?;
        let name: HeaderName =
            name.parse().map_err(|_| PublishError::Refused(format!("invalid header name {name:?}")))?;
        map.append(name, value.as_str());
    }
    Ok(map)
}

/// How one attempt ended.
enum Attempt {
    Acked(Ack),
    /// Worth sending again: no acknowledgement, nobody answered, the connection broke.
    Transient(String),
    Final(PublishError),
}

/// Publishes, retrying an attempt without an acknowledgement with the same headers and message
/// id until the retry deadline.
pub(crate) async fn publish(session: Arc<Session>, publish: Publish) -> Result<Ack, PublishError> {
    count(&session.counters.publishes);
    let outcome = publish_retrying(&session, &publish).await;
    match &outcome {
        Ok(ack) => {
            count(&session.counters.acks);
            if ack.duplicate {
                count(&session.counters.duplicates);
            }
        }
        Err(_) => count(&session.counters.errors),
    }
    outcome
}

async fn publish_retrying(session: &Session, publish: &Publish) -> Result<Ack, PublishError> {
    crate::names::check_subject(&publish.subject).map_err(|error| PublishError::Refused(error.to_string()))?;
    let headers = headers(publish)?;
    let deadline = Instant::now() + session.options.retry_deadline;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = publish_once(session, publish, &headers);
        let outcome = match tokio::time::timeout(remaining, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Transient("timed out at the retry deadline".into()),
        };
        match outcome {
            Attempt::Acked(ack) => return Ok(ack),
            Attempt::Final(error) => return Err(error),
            Attempt::Transient(last) => {
                let Some(pause) = retry::next_pause(attempts, Instant::now(), deadline) else {
                    return Err(PublishError::Timeout { attempts, last });
                };
                tracing::debug!(subject = %publish.subject, attempts, %last, "publish retried");
                count(&session.counters.retries);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn publish_once(session: &Session, publish: &Publish, headers: &HeaderMap) -> Attempt {
    let sent = session.jetstream.send_publish(publish.subject.clone(), message(publish, headers)).await;
    let acknowledged = match sent {
        Ok(ack) => ack.await,
        Err(error) => Err(error),
    };
    match acknowledged {
        Ok(ack) => Attempt::Acked(Ack { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate }),
        Err(error) => {
            let text = full_text(&error);
            match error.kind() {
                PublishErrorKind::WrongLastSequence => match wrong_last_sequence(&text) {
                    Some(sequence) => Attempt::Final(PublishError::WrongLastSequence(sequence)),
                    None => Attempt::Final(PublishError::Refused(text)),
                },
                // StreamNotFound is async-nats' name for "no responders": no stream leader took
                // the message, as during an election (or when no stream has the subject).
                PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::StreamNotFound
                | PublishErrorKind::MaxAckPending => Attempt::Transient(text),
                _ if transient(&text) => Attempt::Transient(text),
                _ => Attempt::Final(PublishError::Refused(text)),
            }
        }
    }
}

/// The message at `sequence`: by direct get (any replica answers, spreading reads over the
/// stream's servers), and when that finds nothing, from the leader, since a replica may not yet
/// hold a message a quorum acknowledged a moment ago. A stream without `allow_direct` has no
/// direct responders and is read from its leader.
pub(crate) async fn get(session: &Session, stream: &str, sequence: u64) -> Result<Option<Message>, LinkError> {
    crate::names::check_name("stream name", stream)?;
    let what = format!("get {stream} #{sequence}");
    with_retries(session, &what, || async {
        let handle = session.jetstream.get_stream_no_info(stream).await.map_err(|error| failed(&what, &error))?;
        match handle.direct_get(sequence).await {
            Ok(found) => {
                count(&session.counters.direct_gets);
                return Ok(Some(stored(found)));
            }
            Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => {}
            Err(error) if full_text(&error).contains("no responders") => {}
            Err(error) => return Err(failed(&what, &error)),
        }
        count(&session.counters.leader_gets);
        leader_get(&what, handle.raw_message_builder().sequence(sequence)).await
    })
    .await
}

/// The last message on `subject`, from the stream's leader: a replica may answer with an older
/// one.
pub(crate) async fn last_on_subject(
    session: &Session,
    stream: &str,
    subject: &str,
) -> Result<Option<Message>, LinkError> {
    crate::names::check_name("stream name", stream)?;
    crate::names::check_subject(subject)?;
    let what = format!("last message of {stream} on {subject}");
    with_retries(session, &what, || async {
        let handle = session.jetstream.get_stream_no_info(stream).await.map_err(|error| failed(&what, &error))?;
        count(&session.counters.leader_gets);
        leader_get(&what, handle.raw_message_builder().last_by_subject(subject)).await
    })
    .await
}

/// `STREAM.MSG.GET`, which only the stream's leader answers.
async fn leader_get(what: &str, request: stream::RawMessageBuilder) -> Result<Option<Message>, LinkError> {
    match request.send().await {
        Ok(found) => Ok(Some(stored(found))),
        Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(error) => Err(failed(what, &error)),
    }
}

/// A stored message as the link gives it.
fn stored(message: async_nats::jetstream::message::StreamMessage) -> Message {
    Message {
        sequence: message.sequence,
        subject: message.subject.to_string(),
        headers: header_pairs(&message.headers),
        payload: message.payload.to_vec(),
        time_ms: (message.time.unix_timestamp_nanos() / 1_000_000) as i64,
    }
}

/// Headers as pairs, sorted by name (a `HeaderMap` has no order) with repeated values in order.
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |value| (name.to_string(), value.as_str().to_string())))
        .collect();
    pairs.sort_by(|left, right| left.0.cmp(&right.0));
    pairs
}

/// The stream's extent and leader, from its leader.
pub(crate) async fn stream_state(session: &Session, stream: &str) -> Result<StreamState, LinkError> {
    crate::names::check_name("stream name", stream)?;
    let what = format!("state of {stream}");
    with_retries(session, &what, || async {
        let handle = session.jetstream.get_stream_no_info(stream).await.map_err(|error| failed(&what, &error))?;
        let info = handle.get_info().await.map_err(|error| failed(&what, &error))?;
        Ok(StreamState {
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
            messages: info.state.messages,
            leader: info.cluster.and_then(|cluster| cluster.leader),
        })
    })
    .await
}

/// Purges `subject`'s messages (all subjects when `None`), only those below `keep_from_sequence`
/// when given; the number purged.
pub(crate) async fn purge(
    session: &Session,
    stream: &str,
    subject: Option<&str>,
    keep_from_sequence: Option<u64>,
) -> Result<u64, LinkError> {
    crate::names::check_name("stream name", stream)?;
    if let Some(subject) = subject {
        crate::names::check_filter(subject)?;
    }
    let what = format!("purge {stream}");
    with_retries(session, &what, || async {
        let handle = session.jetstream.get_stream_no_info(stream).await.map_err(|error| failed(&what, &error))?;
        let outcome = match (subject, keep_from_sequence) {
            (Some(subject), Some(sequence)) => handle.purge().filter(subject).sequence(sequence).await,
            (Some(subject), None) => handle.purge().filter(subject).await,
            (None, Some(sequence)) => handle.purge().sequence(sequence).await,
            (None, None) => handle.purge().await,
        };
        outcome.map(|response| response.purged).map_err(|error| failed(&what, &error))
    })
    .await
}

/// Where a feed's forwarding task sends, and how it learns that the `Feed` was dropped.
pub(crate) struct FeedSink {
    pub(crate) messages: futures_channel::mpsc::Sender<Result<Message, LinkError>>,
    pub(crate) dropped: futures_channel::oneshot::Receiver<()>,
}

/// Creates the feed's consumer from `start_sequence` (0: the stream's first) and spawns the
/// task that forwards its messages into the feed, waiting for room: a slow reader slows the
/// consumer's pulls.
///
/// The consumer is ordered the way async-nats' `Ordered` is (an ephemeral pull consumer without
/// acknowledgements, recreated from the last delivered sequence on any gap or failure), but made
/// here: `Ordered` in 0.52 waits for two missed 15 s heartbeats, and when the server holding its
/// consumer was killed it was seen not to recover within 120 s. This one pulls with a
/// [`crate::limits::CONSUMER_HEARTBEAT_MS`] heartbeat and recreates at the first missed one.
pub(crate) async fn consume(
    session: Arc<Session>,
    stream: String,
    filter_subject: String,
    start_sequence: u64,
    sink: FeedSink,
) -> Result<(), LinkError> {
    crate::names::check_name("stream name", &stream)?;
    if !filter_subject.is_empty() {
        crate::names::check_filter(&filter_subject)?;
    }
    let consumer = Consumer { stream, filter_subject, what: String::new() };
    let consumer = Consumer { what: format!("consume {} from #{start_sequence}", consumer.stream), ..consumer };
    let messages = consumer.open(&session, start_sequence.max(1)).await?;
    tokio::spawn(forward(session, consumer, messages, start_sequence.max(1), sink));
    Ok(())
}

/// What a feed consumes.
struct Consumer {
    stream: String,
    filter_subject: String,
    what: String,
}

impl Consumer {
    /// A new ephemeral consumer from `from_sequence`, and its pulled messages; retried while
    /// the stream has no leader, until the retry deadline.
    async fn open(&self, session: &Session, from_sequence: u64) -> Result<pull::Stream, LinkError> {
        let what = &self.what;
        with_retries(session, what, || async {
            let handle =
                session.jetstream.get_stream_no_info(&self.stream).await.map_err(|error| failed(what, &error))?;
            let config = pull::Config {
                filter_subject: self.filter_subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from_sequence },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_millis(CONSUMER_INACTIVE_MS),
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            };
            let consumer = handle.create_consumer(config).await.map_err(|error| failed(what, &error))?;
            consumer
                .stream()
                .max_messages_per_batch(CONSUMER_BATCH)
                .heartbeat(Duration::from_millis(CONSUMER_HEARTBEAT_MS))
                .expires(Duration::from_millis(CONSUMER_PULL_EXPIRES_MS))
                .messages()
                .await
                .map_err(|error| failed(what, &error))
        })
        .await
    }
}

/// Forwards until the feed is dropped. A missed heartbeat, a failure or a gap in the consumer's
/// sequence recreates the consumer from the sequence after the last one delivered (counted in
/// `consumer_errors`); only a consumer that cannot be recreated within the retry deadline ends
/// the feed, with an error.
async fn forward(
    session: Arc<Session>,
    consumer: Consumer,
    mut messages: pull::Stream,
    mut next_sequence: u64,
    sink: FeedSink,
) {
    let FeedSink { messages: mut feed, mut dropped } = sink;
    let mut consumer_sequence = 0;
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = &mut dropped => return,
        };
        let delivered = match next {
            Some(Ok(message)) => match message.info() {
                Ok(info) if info.consumer_sequence == consumer_sequence + 1 => {
                    consumer_sequence = info.consumer_sequence;
                    next_sequence = info.stream_sequence + 1;
                    Some(Message {
                        sequence: info.stream_sequence,
                        subject: message.subject.to_string(),
                        headers: message.headers.as_ref().map(header_pairs).unwrap_or_default(),
                        payload: message.payload.to_vec(),
                        time_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                    })
                }
                Ok(_) => None,
                Err(_) => None,
            },
            Some(Err(error)) => {
                tracing::debug!(consumer = %consumer.what, error = %full_text(&error), "consumer failure; recreating it");
                None
            }
            None => None,
        };
        match delivered {
            Some(message) => {
                if feed.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            None => {
                count(&session.counters.consumer_errors);
                drop(messages);
                messages = match consumer.open(&session, next_sequence).await {
                    Ok(messages) => messages,
                    Err(error) => {
                        let _ = feed.send(Err(error)).await;
                        return;
                    }
                };
                consumer_sequence = 0;
            }
        }
    }
}
