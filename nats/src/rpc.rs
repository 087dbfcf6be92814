//! Request/reply between nodes over core NATS: a request waits for one answer; a served subject
//! feeds a bounded queue and refuses, with an answer, what does not fit.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::errors::{full_text, LinkError};
use crate::jetstream::header_pairs;
use crate::thread::{count, Session};

/// The header of an answer that is a refusal, with its reason; a plain answer has none.
pub(crate) const ERROR_HEADER: &str = "Kapsel-Link-Error";

/// The reason a full `Requests` queue gives.
pub(crate) const BUSY: &str = "busy";

/// The reason given for a request dropped without an answer.
pub(crate) const DROPPED: &str = "dropped unanswered";

/// Sends `payload` to `subject` and waits at most `timeout` for the answer.
pub(crate) async fn request(
    session: &Session,
    subject: String,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, LinkError> {
    crate::names::check_subject(&subject)?;
    let request = async_nats::Request::new().payload(payload.into()).timeout(Some(timeout));
    let answer = match session.client.send_request(subject.clone(), request).await {
        Ok(answer) => answer,
        Err(error) => {
            count(&session.counters.errors);
            return Err(match error.kind() {
                async_nats::RequestErrorKind::NoResponders => LinkError::NoResponders { subject },
                async_nats::RequestErrorKind::TimedOut => LinkError::Timeout {
                    what: format!("request on {subject}"),
                    detail: format!("no answer in {timeout:?}"),
                },
                _ => LinkError::Failed { what: format!("request on {subject}"), detail: full_text(&error) },
            });
        }
    };
    let refusal = answer.headers.as_ref().and_then(|headers| headers.get(ERROR_HEADER)).map(|value| value.to_string());
    match refusal {
        None => Ok(answer.payload.to_vec()),
        Some(reason) if reason == BUSY => Err(LinkError::RemoteBusy { subject }),
        Some(reason) => Err(LinkError::Remote { subject, reason }),
    }
}

/// One request as the serving side holds it: its answer goes back through `answer`.
pub(crate) struct Incoming {
    pub(crate) subject: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
    pub(crate) answer: futures_channel::oneshot::Sender<Result<Vec<u8>, String>>,
}

/// Where a served subject's task sends, and how it learns that `Requests` was dropped.
pub(crate) struct ServeSink {
    pub(crate) requests: futures_channel::mpsc::Sender<Incoming>,
    pub(crate) dropped: futures_channel::oneshot::Receiver<()>,
}

/// Subscribes to `subject` and spawns the task that queues its requests.
pub(crate) async fn serve(session: Arc<Session>, subject: String, sink: ServeSink) -> Result<(), LinkError> {
    crate::names::check_filter(&subject)?;
    let subscriber = session
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|error| LinkError::Failed { what: format!("serve {subject}"), detail: full_text(&error) })?;
    // The subscription is registered once the server has it: flush, so a request sent right
    // after `serve` answers finds it.
    session
        .client
        .flush()
        .await
        .map_err(|error| LinkError::Failed { what: format!("serve {subject}"), detail: full_text(&error) })?;
    tokio::spawn(queue_requests(session, subscriber, sink));
    Ok(())
}

async fn queue_requests(session: Arc<Session>, mut subscriber: async_nats::Subscriber, sink: ServeSink) {
    let ServeSink { mut requests, mut dropped } = sink;
    loop {
        let message = tokio::select! {
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
            _ = &mut dropped => break,
        };
        // A message without a reply subject is not a request: nobody waits for it.
        let Some(reply) = message.reply.clone() else { continue };
        let (answer, answered) = futures_channel::oneshot::channel();
        let incoming = Incoming {
            subject: message.subject.to_string(),
            headers: message.headers.as_ref().map(header_pairs).unwrap_or_default(),
            payload: message.payload.to_vec(),
            answer,
        };
        match requests.try_send(incoming) {
            Ok(()) => {
                let client = session.client.clone();
                tokio::spawn(async move {
                    let outcome = answered.await.unwrap_or_else(|_| Err(DROPPED.to_string()));
                    respond(&client, reply, outcome).await;
                });
            }
            Err(error) if error.is_full() => {
                count(&session.counters.requests_refused);
                respond(&session.client, reply, Err(BUSY.to_string())).await;
            }
            Err(_) => break,
        }
    }
    let _ = subscriber.unsubscribe().await;
}

/// Publishes an answer (or a refusal, as an empty message with [`ERROR_HEADER`]).
async fn respond(client: &async_nats::Client, reply: async_nats::Subject, outcome: Result<Vec<u8>, String>) {
    let sent = match outcome {
        Ok(payload) => client.publish(reply, payload.into()).await,
        Err(reason) => {
            let mut headers = HeaderMap::new();
            headers.insert(ERROR_HEADER, reason.as_str());
            client.publish_with_headers(reply, headers, bytes::Bytes::new()).await
        }
    };
    if let Err(error) = sent {
        tracing::debug!(error = %error, "an answer was not sent");
    }
}
