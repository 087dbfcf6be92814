//! Reading waiting payloads back from the log, off the shard thread.
//!
//! Each shard has one reader thread. The scheduler asks it for runs of events by position (in
//! queue order, so mostly forward through the log); the thread reads them with one `pread` per
//! nearby run ([`kapsel_wal::read::read_at`]), checks each frame's CRC32C and decodes the record,
//! and answers on a oneshot. The shard only ever waits for the answer as an event: a slow disk
//! delays the endpoint that asked, nothing else. Requests are bounded in number
//! ([`READ_JOBS_MAX`]) and in size (the scheduler's read-ahead limits).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender, TrySendError};
use kapsel_wal::Position;

use crate::shard::stream::{sequence_of, PartitionStream};

use crate::model::ids::EventId;
use crate::model::records::{EventReceived, Published, Record};

/// Read requests queued for a shard's reader thread, at most (one per endpoint at a time).
pub const READ_JOBS_MAX: usize = 1024;

/// What a read-back gives for one event: the event as received, or why it could not be read.
pub type Loaded = (EventId, Result<EventReceived, String>);

/// What a publish record read back gives: the record, or why it could not be read.
pub type LoadedPublished = (EventId, Result<Published, String>);

/// Where a shard's records are read back from.
#[derive(Clone)]
pub enum Source {
    /// The local write-ahead log's directory.
    Directory(PathBuf),
    /// A partition's stream (cluster mode): positions name stream sequences.
    Stream(Arc<dyn PartitionStream>),
}

/// A read for the thread: it runs with the log's source and sends its own answer.
type Job = Box<dyn FnOnce(&Source) + Send>;

/// A shard's reader thread.
pub struct Reader {
    jobs: Sender<Job>,
}

impl Reader {
    /// Starts the reader thread of the log at `source`.
    pub fn spawn(source: Source, name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = bounded::<Job>(READ_JOBS_MAX);
        std::thread::Builder::new().name(name.into()).spawn(move || {
            // Ends when the shard drops its sender.
            while let Ok(job) = queue.recv() {
                job(&source);
            }
        })?;
        Ok(Self { jobs })
    }

    /// Reads the events' records back. Every event gets an answer; when the thread cannot take
    /// the request, each answer is that error.
    pub async fn read(&self, events: Vec<(EventId, Position)>) -> Vec<Loaded> {
        let ids: Vec<EventId> = events.iter().map(|(event_id, _)| *event_id).collect();
        self.run(move |source| load_from(source, &events))
            .await
            .unwrap_or_else(|reason| ids.into_iter().map(|event_id| (event_id, Err(reason.to_string()))).collect())
    }

    /// Reads publish records back (to hand their deliveries to other shards), each answered as
    /// [`Reader::read`] answers.
    pub async fn read_published(&self, records: Vec<(EventId, Position)>) -> Vec<LoadedPublished> {
        let ids: Vec<EventId> = records.iter().map(|(event_id, _)| *event_id).collect();
        self.run(move |source| load_published_from(source, &records))
            .await
            .unwrap_or_else(|reason| ids.into_iter().map(|event_id| (event_id, Err(reason.to_string()))).collect())
    }

    /// Runs `work` on the reader thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Source) -> T + Send + 'static,
    ) -> Result<T, &'static str> {
        let (reply, answer) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |source| {
            let _ = reply.send(work(source));
        });
        match self.jobs.try_send(job) {
            Ok(()) => answer.await.map_err(|_| "the reader thread dropped a request"),
            Err(TrySendError::Full(_)) => Err("the reader's queue is full"),
            Err(TrySendError::Disconnected(_)) => Err("the reader thread has stopped"),
        }
    }
}

/// Reads the records at `positions` from `source` and decodes each: its LSN (or sequence) and
/// the record, or why it could not be read, one answer per position in order.
fn read_records(source: &Source, positions: &[Position]) -> Vec<Result<(u64, Record), String>> {
    let decode = |lsn: u64, kind: u8, body: &[u8]| {
        Record::decode(kind, body).map(|record| (lsn, record)).map_err(|error| error.to_string())
    };
    match source {
        Source::Directory(directory) => kapsel_wal::read::read_at(directory, positions)
            .into_iter()
            .map(|read| read.map_err(|error| error.to_string()).and_then(|at| decode(at.lsn, at.kind, &at.body)))
            .collect(),
        Source::Stream(stream) => {
            let sequences: Vec<u64> = positions.iter().map(|position| sequence_of(*position)).collect();
            stream
                .read(&sequences)
                .into_iter()
                .map(|read| read.and_then(|record| decode(record.sequence, record.kind, &record.body)))
                .collect()
        }
    }
}

/// Reads and decodes publish records from the log in `directory` (the simulation's direct call).
pub fn load_published(directory: &Path, records: &[(EventId, Position)]) -> Vec<LoadedPublished> {
    load_published_from(&Source::Directory(directory.to_path_buf()), records)
}

/// Reads and decodes publish records: the work of [`Reader::read_published`].
fn load_published_from(source: &Source, records: &[(EventId, Position)]) -> Vec<LoadedPublished> {
    let positions: Vec<Position> = records.iter().map(|(_, position)| *position).collect();
    records
        .iter()
        .zip(read_records(source, &positions))
        .map(|((event_id, _), read)| {
            let published = read.and_then(|(lsn, record)| match record {
                Record::Published(published) if published.event_id == event_id.0 => Ok(published),
                _ => Err(format!("the record at {lsn} is not the publish of {event_id}")),
            });
            (*event_id, published)
        })
        .collect()
}

/// Reads and decodes the records of `events` from the log in `directory`: the reader thread's
/// work, callable directly (tests, the simulation, retention's helper thread).
pub fn load(directory: &Path, events: &[(EventId, Position)]) -> Vec<Loaded> {
    load_from(&Source::Directory(directory.to_path_buf()), events)
}

/// Reads and decodes the records of `events` from `source`: the work of [`Reader::read`]. Public
/// so that the cluster simulation reads a partition's stream back on its own thread, in a
/// deterministic order, as the local simulation calls [`load`].
pub fn load_from(source: &Source, events: &[(EventId, Position)]) -> Vec<Loaded> {
    let positions: Vec<Position> = events.iter().map(|(_, position)| *position).collect();
    events
        .iter()
        .zip(read_records(source, &positions))
        .map(|((event_id, _), read)| {
            let event = read.and_then(|(lsn, record)| {
                record.into_event(event_id.0).ok_or_else(|| format!("the record at {lsn} is not event {event_id}"))
            });
            (*event_id, event)
        })
        .collect()
}

impl super::Shard {
    /// What `GET /admin/events/{id}/payload` shows of an event's payload: its first
    /// [`PAYLOAD_PREVIEW_BYTES_MAX`](crate::limits::PAYLOAD_PREVIEW_BYTES_MAX) bytes, as text when
    /// they are UTF-8, else base64. From the cache when it holds it, else read back from the log
    /// (a published event's from its publish record); one whose record retention has removed is
    /// not found.
    pub async fn event_payload(&self, event_id: EventId) -> Result<serde_json::Value, crate::error::EngineError> {
        let not_found = || crate::error::EngineError::NotFound(format!("event {event_id} not found"));
        let (cached, event, publication) = {
            let state = self.core.state.borrow();
            let event = state.events.get(&event_id).map(|event| event.position);
            let publication = state.publications.get(&event_id).map(|publication| publication.position);
            (state.cached_payload(&event_id), event, publication)
        };
        let (body, content_type) = match (cached, event, publication) {
            (Some(payload), _, _) => (payload.body.to_vec(), payload.content_type.clone()),
            (None, Some(position), _) => {
                let loaded = self.reader.read(vec![(event_id, position)]).await;
                let (_, event) = loaded.into_iter().next().ok_or_else(not_found)?;
                let event = event.map_err(|_| not_found())?;
                (event.payload, event.content_type)
            }
            (None, None, Some(position)) => {
                let loaded = self.reader.read_published(vec![(event_id, position)]).await;
                let (_, published) = loaded.into_iter().next().ok_or_else(not_found)?;
                let published = published.map_err(|_| not_found())?;
                (published.payload, published.content_type)
            }
            (None, None, None) => return Err(not_found()),
        };
        Ok(payload_preview(event_id, &body, content_type.as_deref()))
    }
}

/// The JSON of a payload's preview.
fn payload_preview(event_id: EventId, body: &[u8], content_type: Option<&str>) -> serde_json::Value {
    let shown = &body[..body.len().min(crate::limits::PAYLOAD_PREVIEW_BYTES_MAX)];
    // A cut may split a character: text up to the last whole one is still text.
    let text = match std::str::from_utf8(shown) {
        Ok(text) => Some(text),
        Err(error) if error.error_len().is_none() && shown.len() < body.len() => {
            std::str::from_utf8(&shown[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let (preview, encoding) = match text {
        Some(text) => (text.to_string(), "utf-8"),
        None => (base64::Engine::encode(&base64::engine::general_purpose::STANDARD, shown), "base64"),
    };
    serde_json::json!({
        "event_id": event_id.to_string(),
        "content_type": content_type,
        "payload_bytes": body.len(),
        "preview": preview,
        "encoding": encoding,
        "truncated": shown.len() < body.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod preview_tests {
    use super::*;

    // A payload is shown as text when it is UTF-8 (even cut inside a character), else base64.
    #[test]
    fn previews_text_or_base64() {
        let id = EventId::new(1, 0, 0);
        let json = payload_preview(id, b"{\"a\":1}", Some("application/json"));
        assert_eq!((json["preview"].as_str(), json["encoding"].as_str()), (Some("{\"a\":1}"), Some("utf-8")));
        assert_eq!(json["truncated"], false);
        let binary = payload_preview(id, &[0xff, 0x00], None);
        assert_eq!((binary["preview"].as_str(), binary["encoding"].as_str()), (Some("/wA="), Some("base64")));
        let limit = crate::limits::PAYLOAD_PREVIEW_BYTES_MAX;
        let mut long = vec![b'a'; limit - 1];
        long.extend_from_slice("é and more".as_bytes());
        let cut = payload_preview(id, &long, None);
        assert_eq!(cut["encoding"], "utf-8");
        assert_eq!(cut["truncated"], true);
        assert_eq!(cut["payload_bytes"], long.len());
        assert_eq!(cut["preview"].as_str().unwrap().len(), limit - 1);
    }
}
