//! The handle other threads hold: every call puts one command on the bounded queue with
//! `try_send` and returns a future of its answer, so no call ever blocks a shard.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use tokio::sync::mpsc::error::TrySendError;

use crate::errors::{KvError, LinkError, PublishError, Refusal};
use crate::jetstream::FeedSink;
use crate::model::{Ack, Ensured, Entry, LinkCounters, LinkOptions, Message, Publish, StreamSpec, StreamState};
use crate::rpc::{Incoming, ServeSink};
use crate::thread::{self, count, Counters, Job, Session};
use crate::{bucket, jetstream, rpc};

/// A cheap, cloneable handle on the NATS link thread. Calls never block: each queues one
/// command (refused with `Busy` when the queue is full) and returns a future of the answer,
/// awaitable from any runtime (monoio, tokio, or `block_on`). The command is queued when the
/// call is made, not when the future is polled; dropping the future does not cancel it.
#[derive(Clone)]
pub struct Link {
    commands: tokio::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What every clone of a handle shares.
struct Shared {
    counters: Arc<Counters>,
    /// Taken by `close`: firing it stops the thread.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Link").field("counters", &self.counters()).finish()
    }
}

impl Link {
    /// Starts the link thread and connects to one of `options.urls`. Blocks the calling thread
    /// until connected, at most about `options.connect_timeout`: call it at start-up, not on a
    /// shard's event loop. The first connection is not retried, so dead URLs fail within the
    /// timeout; once connected the client reconnects (to any server of the cluster) for ever.
    pub fn connect(options: LinkOptions) -> Result<Link, LinkError> {
        let counters = Arc::new(Counters::default());
        let started = thread::start(options, counters.clone())?;
        let shared =
            Shared { counters, stop: Mutex::new(Some(started.stop)), thread: Mutex::new(Some(started.thread)) };
        Ok(Link { commands: started.commands, shared: Arc::new(shared) })
    }

    /// Stops the link thread for every handle and waits for it to end (at most about a second:
    /// it flushes what the client queued). Calls after it, and calls not yet answered, fail
    /// with `Closed`; feeds end. Blocks the calling thread: not for a shard's event loop.
    pub fn close(&self) {
        if let Ok(mut stop) = self.shared.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
        let thread = self.shared.thread.lock().ok().and_then(|mut thread| thread.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Whether the client is connected to a server now (it reconnects by itself).
    pub fn is_connected(&self) -> bool {
        self.shared.counters.connected.load(Ordering::Relaxed)
    }

    /// The largest message the connected server takes (its `max_payload`, 1 MiB unless
    /// configured), as it said when the link connected.
    pub fn max_payload(&self) -> u64 {
        self.shared.counters.max_payload.load(Ordering::Relaxed)
    }

    /// The link's counters, for metrics.
    pub fn counters(&self) -> LinkCounters {
        self.shared.counters.snapshot()
    }

    /// Queues `operation` to run on the link thread; its outcome answers the returned future.
    fn call<T, E, F, Fut>(&self, operation: F) -> Reply<T, E>
    where
        T: Send + 'static,
        E: Refusal + Send + 'static,
        F: FnOnce(Arc<Session>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |session| {
            Box::pin(async move {
                let _ = answer.send(operation(session).await);
            })
        });
        match self.commands.try_send(job) {
            Ok(()) => Reply { state: ReplyState::Waiting(answered) },
            Err(TrySendError::Full(_)) => {
                count(&self.shared.counters.busy);
                Reply::ready(Err(E::busy()))
            }
            Err(TrySendError::Closed(_)) => Reply::ready(Err(E::closed())),
        }
    }

    /// Creates the stream, or brings an existing one to the spec's settings (subjects,
    /// replicas, limits; storage cannot change and is reported).
    pub fn ensure_stream(&self, spec: StreamSpec) -> Reply<Ensured, LinkError> {
        self.call(move |session| async move { jetstream::ensure_stream(&session, &spec).await })
    }

    /// Publishes and resolves with JetStream's acknowledgement. An attempt that times out or
    /// finds no responders (a stream electing a leader, a server gone) is sent again with the
    /// same headers and message id until `retry_deadline`; give a `msg_id` so that a retry
    /// whose first attempt was stored is answered as a duplicate rather than stored twice (or,
    /// with an expected sequence, refused by its own first attempt).
    pub fn publish(&self, publish: Publish) -> Reply<Ack, PublishError> {
        self.call(move |session| jetstream::publish(session, publish))
    }

    /// The message at `sequence`, `None` when the stream holds none there (see `jetstream::get`
    /// for how: direct get, confirmed by the leader when a replica finds nothing).
    pub fn get(&self, stream: impl Into<String>, sequence: u64) -> Reply<Option<Message>, LinkError> {
        let stream = stream.into();
        self.call(move |session| async move { jetstream::get(&session, &stream, sequence).await })
    }

    /// The last message on `subject`, read from the stream's leader.
    pub fn last_on_subject(
        &self,
        stream: impl Into<String>,
        subject: impl Into<String>,
    ) -> Reply<Option<Message>, LinkError> {
        let (stream, subject) = (stream.into(), subject.into());
        self.call(move |session| async move { jetstream::last_on_subject(&session, &stream, &subject).await })
    }

    /// The stream's first and last sequence, message count and leader.
    pub fn stream_state(&self, stream: impl Into<String>) -> Reply<StreamState, LinkError> {
        let stream = stream.into();
        self.call(move |session| async move { jetstream::stream_state(&session, &stream).await })
    }

    /// Purges the messages of `subject` (every subject when `None`), only those below
    /// `keep_from_sequence` when given; resolves with the number purged.
    pub fn purge(
        &self,
        stream: impl Into<String>,
        subject: Option<String>,
        keep_from_sequence: Option<u64>,
    ) -> Reply<u64, LinkError> {
        let stream = stream.into();
        self.call(move |session| async move {
            jetstream::purge(&session, &stream, subject.as_deref(), keep_from_sequence).await
        })
    }

    /// An ordered consumer of `stream` from `start_sequence` (0: from the first), only messages
    /// on `filter_subject` (empty: all), delivered in stream order into a feed of `capacity`.
    /// A slow reader slows the consumer; nothing is dropped or reordered, and the consumer
    /// recreates itself after a leader change or a server restart from the last sequence it
    /// delivered. Dropping the feed stops it. Resolves once the consumer exists.
    pub fn consume(
        &self,
        stream: impl Into<String>,
        filter_subject: impl Into<String>,
        start_sequence: u64,
        capacity: usize,
    ) -> Reply<Feed, LinkError> {
        let (stream, filter_subject) = (stream.into(), filter_subject.into());
        // A futures channel holds its capacity plus one message per sender: one sender here.
        let (messages, receiver) = mpsc::channel(capacity.saturating_sub(1));
        let (keep, dropped) = oneshot::channel();
        let feed = Feed { messages: receiver, _keep: keep };
        let created = self.call(move |session| async move {
            let sink = FeedSink { messages, dropped };
            jetstream::consume(session, stream, filter_subject, start_sequence, sink).await
        });
        map_reply(created, move |()| feed)
    }

    /// Creates the bucket's stream `KV_<bucket>` (subjects `$KV.<bucket>.>`, one message per
    /// key, rollups allowed) or brings an existing one to that layout.
    pub fn ensure_bucket(&self, bucket: impl Into<String>, replicas: usize) -> Reply<Ensured, LinkError> {
        let bucket = bucket.into();
        self.call(move |session| async move { bucket::ensure_bucket(&session, &bucket, replicas).await })
    }

    /// Creates `key` with `value`; its revision, or `KvError::Exists` with the existing one's.
    /// Atomic among concurrent creators on every 2.9 server.
    pub fn kv_create(&self, bucket: impl Into<String>, key: impl Into<String>, value: Vec<u8>) -> Reply<u64, KvError> {
        let (bucket, key) = (bucket.into(), key.into());
        self.call(move |session| bucket::kv_create(session, bucket, key, value))
    }

    /// Replaces `key`'s value if it is at `revision`; the new revision, or
    /// `KvError::WrongRevision` with the current one. Not atomic among concurrent writers of one
    /// key on nats-server before 2.9.21 (ADR 17): let one writer write a key.
    pub fn kv_update(
        &self,
        bucket: impl Into<String>,
        key: impl Into<String>,
        value: Vec<u8>,
        revision: u64,
    ) -> Reply<u64, KvError> {
        let (bucket, key) = (bucket.into(), key.into());
        self.call(move |session| bucket::kv_update(session, bucket, key, value, revision))
    }

    /// `key`'s latest entry, read from the bucket stream's leader (never a replica that may not
    /// have the last write yet); `None` when the key has none.
    pub fn kv_get(&self, bucket: impl Into<String>, key: impl Into<String>) -> Reply<Option<Entry>, LinkError> {
        let (bucket, key) = (bucket.into(), key.into());
        self.call(move |session| async move { bucket::kv_get(&session, &bucket, &key).await })
    }

    /// Every key starting with `prefix` (e.g. `lease.p.3.`) with its entry, sorted by key, all
    /// read from the leader.
    pub fn kv_entries(
        &self,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Reply<Vec<(String, Entry)>, LinkError> {
        let (bucket, prefix) = (bucket.into(), prefix.into());
        self.call(move |session| async move { bucket::kv_entries(&session, &bucket, &prefix).await })
    }

    /// Removes `key` (purges its subject, so it can be created again); whether it had an entry.
    pub fn kv_delete(&self, bucket: impl Into<String>, key: impl Into<String>) -> Reply<bool, LinkError> {
        let (bucket, key) = (bucket.into(), key.into());
        self.call(move |session| async move { bucket::kv_delete(&session, &bucket, &key).await })
    }

    /// Sends a request on `subject` and resolves with the answer's payload: `NoResponders` at
    /// once when nobody serves it, `Timeout` after `timeout`, `RemoteBusy` when the serving
    /// node's queue was full.
    pub fn request(
        &self,
        subject: impl Into<String>,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Reply<Vec<u8>, LinkError> {
        let subject = subject.into();
        self.call(move |session| async move { rpc::request(&session, subject, payload, timeout).await })
    }

    /// Serves `subject` (wildcards allowed): its requests arrive in `Requests`, at most
    /// `capacity` waiting; one that finds it full is answered `RemoteBusy` at once. Dropping
    /// `Requests` unsubscribes. Resolves once the server has the subscription.
    pub fn serve(&self, subject: impl Into<String>, capacity: usize) -> Reply<Requests, LinkError> {
        let subject = subject.into();
        let (requests, receiver) = mpsc::channel(capacity.saturating_sub(1));
        let (keep, dropped) = oneshot::channel();
        let served = Requests { requests: receiver, _keep: keep };
        let subscribed = self
            .call(move |session| async move { rpc::serve(session, subject, ServeSink { requests, dropped }).await });
        map_reply(subscribed, move |()| served)
    }
}

/// The answer to one call: a future any runtime can await (it needs no reactor).
#[must_use = "the call is made; the future only carries its answer"]
pub struct Reply<T, E> {
    state: ReplyState<T, E>,
}

enum ReplyState<T, E> {
    Ready(Option<Result<T, E>>),
    Waiting(oneshot::Receiver<Result<T, E>>),
    Mapped(Pin<Box<dyn Future<Output = Result<T, E>> + Send>>),
}

impl<T, E> Reply<T, E> {
    fn ready(outcome: Result<T, E>) -> Self {
        Reply { state: ReplyState::Ready(Some(outcome)) }
    }
}

/// The same answer as `reply` with its value turned by `map` (refusals pass through).
fn map_reply<T, U, E>(reply: Reply<T, E>, map: impl FnOnce(T) -> U + Send + 'static) -> Reply<U, E>
where
    T: Send + 'static,
    U: Send + 'static,
    E: Refusal + Send + 'static,
{
    let mapped = async move { reply.await.map(map) };
    Reply { state: ReplyState::Mapped(Box::pin(mapped)) }
}

// The reply never pins what it holds: a ready outcome is moved out whole, the receiver is
// Unpin and the mapped future is boxed.
impl<T, E> Unpin for Reply<T, E> {}

impl<T, E: Refusal> Future for Reply<T, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            ReplyState::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or_else(|| Err(E::closed()))),
            ReplyState::Waiting(answered) => match Pin::new(answered).poll(context) {
                Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
                // The link thread ended before answering.
                Poll::Ready(Err(_)) => Poll::Ready(Err(E::closed())),
                Poll::Pending => Poll::Pending,
            },
            ReplyState::Mapped(future) => future.as_mut().poll(context),
        }
    }
}

/// An ordered consumer's messages, in stream order; awaitable from any runtime. An `Err` item
/// is the last one: the consumer ended.
pub struct Feed {
    messages: mpsc::Receiver<Result<Message, LinkError>>,
    /// Dropped with the feed: tells the link thread's forwarding task to stop.
    _keep: oneshot::Sender<()>,
}

impl Feed {
    /// The next message; `None` once the link is closed.
    pub async fn next(&mut self) -> Option<Result<Message, LinkError>> {
        std::future::poll_fn(|context| Pin::new(&mut self.messages).poll_next(context)).await
    }
}

impl Stream for Feed {
    type Item = Result<Message, LinkError>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().messages).poll_next(context)
    }
}

/// The requests of a served subject; awaitable from any runtime.
pub struct Requests {
    requests: mpsc::Receiver<Incoming>,
    /// Dropped with the queue: tells the link thread to unsubscribe.
    _keep: oneshot::Sender<()>,
}

impl Requests {
    /// The next request; `None` once the link is closed.
    pub async fn next(&mut self) -> Option<Request> {
        std::future::poll_fn(|context| Pin::new(&mut *self).poll_next(context)).await
    }
}

impl Stream for Requests {
    type Item = Request;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().requests).poll_next(context).map(|incoming| {
            incoming.map(|incoming| Request {
                subject: incoming.subject,
                headers: incoming.headers,
                payload: incoming.payload,
                answer: Some(incoming.answer),
            })
        })
    }
}

/// One request from another node. Answer it with [`Request::respond`] or
/// [`Request::reject`]; dropped unanswered, the requester gets `LinkError::Remote`.
#[derive(Debug)]
pub struct Request {
    /// The subject it was sent to.
    pub subject: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: Vec<u8>,
    answer: Option<oneshot::Sender<Result<Vec<u8>, String>>>,
}

impl Request {
    /// Answers with `payload`. Never blocks; the link thread sends it.
    pub fn respond(mut self, payload: Vec<u8>) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(Ok(payload));
        }
    }

    /// Answers with a refusal: the requester gets `LinkError::Remote` with `reason`.
    pub fn reject(mut self, reason: impl Into<String>) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(Err(reason.into()));
        }
    }
}
