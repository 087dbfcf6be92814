//! Cross-shard hops: a bounded crossbeam channel per shard plus a waker, so that a request that
//! landed on shard k runs on its owner shard j without any lock on the hot path. The owner's
//! inbox task registers its waker before each `try_recv`, so a send can never be missed.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use kapsel_http::{Request, Response};

use crate::admin::route::Route;
use crate::admin::service::execute;
use crate::limits;
use crate::shard::Shard;

/// Work sent to a shard by another shard.
pub enum Command {
    /// Run a request this shard owns and send back the response.
    Request {
        /// The parsed route.
        route: Route,
        /// The request, body included.
        request: Request,
        /// Where the response goes.
        reply: futures_channel::oneshot::Sender<Response>,
    },
    /// List this shard's events matching a query (the asking shard merges the answers).
    ListEvents {
        /// The filters and page.
        query: crate::model::query::EventQuery,
        /// Where the matches go.
        reply: futures_channel::oneshot::Sender<Vec<(crate::model::ids::EventId, serde_json::Value)>>,
    },
    /// Adopt deliveries of events published on another shard's channel.
    Adopt {
        /// The publish records, each with only this shard's deliveries.
        records: Vec<crate::model::records::Published>,
        /// `Ok` once they are durable here.
        reply: futures_channel::oneshot::Sender<Result<(), crate::error::EngineError>>,
    },
    /// This shard's deliveries of a published event: their views, or (`retry`) their redrive.
    Deliveries {
        /// The published event.
        event_id: crate::model::ids::EventId,
        /// Redrive them instead (the answer is then their count).
        retry: bool,
        /// Where the answer goes.
        reply: futures_channel::oneshot::Sender<Result<Vec<serde_json::Value>, crate::error::EngineError>>,
    },
    /// This shard's most recent configuration changes (`GET /admin/audit/changes`).
    Changes {
        /// Where they go: each with its time.
        reply: futures_channel::oneshot::Sender<Vec<(u64, serde_json::Value)>>,
    },
    /// List this shard's endpoints for a page of `GET /admin/endpoints`.
    ListEndpoints {
        /// The page wanted.
        query: crate::admin::route::EndpointQuery,
        /// Where the matches go, each with its id.
        reply: futures_channel::oneshot::Sender<Vec<(String, serde_json::Value)>>,
    },
    /// Report this shard's metrics.
    Metrics {
        /// Where the report goes.
        reply: futures_channel::oneshot::Sender<crate::admin::metrics::ShardReport>,
    },
}

/// Sends every shard but `here` the command `make` builds and waits for all their answers:
/// E3002 when an inbox is full, E3004 when a shard has stopped.
pub async fn ask_others<T>(
    here: usize,
    shared: &crate::admin::shared::Shared,
    make: impl Fn(futures_channel::oneshot::Sender<T>) -> Command,
) -> Result<Vec<T>, crate::error::EngineError> {
    let mut answers = Vec::with_capacity(shared.shards);
    for (index, inbox) in shared.inboxes.iter().enumerate() {
        if index == here {
            continue;
        }
        let (reply, answer) = futures_channel::oneshot::channel();
        if inbox.send(make(reply)).is_err() {
            return Err(crate::error::EngineError::QueueFull("a shard's inbox is full".into()));
        }
        answers.push(answer);
    }
    let mut found = Vec::with_capacity(answers.len());
    for answer in answers {
        found.push(answer.await.map_err(|_| crate::error::EngineError::Unavailable("a shard stopped".into()))?);
    }
    Ok(found)
}

/// A command could not be queued: the inbox is at its bound or its shard has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxFull;

/// The sending side of a shard's inbox; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Inbox {
    sender: Sender<Command>,
    waker: Arc<AtomicWaker>,
}

/// The receiving side, owned by the shard.
pub struct InboxReceiver {
    receiver: Receiver<Command>,
    waker: Arc<AtomicWaker>,
}

/// A new inbox bounded by [`limits::INBOX_COMMANDS_MAX`].
pub fn inbox() -> (Inbox, InboxReceiver) {
    let (sender, receiver) = crossbeam_channel::bounded(limits::INBOX_COMMANDS_MAX);
    let waker = Arc::new(AtomicWaker::new());
    (Inbox { sender, waker: Arc::clone(&waker) }, InboxReceiver { receiver, waker })
}

impl Inbox {
    /// Queues a command and wakes the shard. `Err` when the inbox is full (backpressure, E3002)
    /// or the shard is gone; the command is dropped.
    pub fn send(&self, command: Command) -> Result<(), InboxFull> {
        self.sender.try_send(command).map_err(|_| InboxFull)?;
        self.waker.wake();
        Ok(())
    }

    /// Wakes the shard without a command (it then checks the shutdown flag).
    pub fn wake(&self) {
        self.waker.wake();
    }
}

impl InboxReceiver {
    /// The next command, or `None` once `stop` says so and the inbox is empty.
    async fn next(&self, stop: &dyn Fn() -> bool) -> Option<Command> {
        poll_fn(|context| {
            self.waker.register(context.waker());
            match self.receiver.try_recv() {
                Ok(command) => Poll::Ready(Some(command)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) if stop() => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    /// Runs every command sent to this shard, each as its own task, until `stop` returns true
    /// and the inbox is drained.
    pub async fn run(self, shard: Rc<Shard>, shared: Arc<crate::admin::shared::Shared>, stop: impl Fn() -> bool) {
        while let Some(command) = self.next(&stop).await {
            match command {
                Command::ListEvents { query, reply } => {
                    let _ = reply.send(crate::admin::events::list_local(&shard, &query));
                }
                Command::ListEndpoints { query, reply } => {
                    let _ = reply.send(crate::admin::events::endpoints_local(&shard, &query));
                }
                Command::Changes { reply } => {
                    let _ = reply.send(crate::admin::access::changes_here(&shard));
                }
                Command::Metrics { reply } => {
                    let _ = reply.send(crate::admin::metrics::report(&shard, crate::clock::now_ms()));
                }
                Command::Adopt { records, reply } => {
                    let shard = Rc::clone(&shard);
                    monoio::spawn(async move {
                        let _ = reply.send(shard.adopt(records, crate::clock::now_ms()).await);
                    });
                }
                Command::Deliveries { event_id, retry, reply } => {
                    let shard = Rc::clone(&shard);
                    monoio::spawn(async move {
                        let _ = reply.send(crate::admin::publish::deliveries_here(&shard, event_id, retry).await);
                    });
                }
                Command::Request { route, request, reply } => {
                    let (shard, shared) = (Rc::clone(&shard), Arc::clone(&shared));
                    monoio::spawn(async move {
                        let response = execute(&shard, &shared, route, request).await;
                        // The requesting shard may have given up (connection closed); nothing to do then.
                        let _ = reply.send(response);
                    });
                }
            }
        }
    }
}
