//! Reading waiting payloads back from the log, off the shard thread.
//!
//! Each shard has one reader thread. The scheduler asks it for runs of events by position (in
//! queue order, so mostly forward through the log); the thread reads them with one `pread` per
//! nearby run ([`kapsel_wal::read::read_at`]), checks each frame's CRC32C and decodes the record,
//! and answers on a oneshot. The shard only ever waits for the answer as an event: a slow disk
//! delays the endpoint that asked, nothing else. Requests are bounded in number
//! ([`READ_JOBS_MAX`]) and in size (the scheduler's read-ahead limits).

use std::path::Path;

use crossbeam_channel::{bounded, Sender, TrySendError};
use kapsel_wal::Position;

use crate::model::ids::EventId;
use crate::model::records::{EventReceived, Published, Record};

/// Read requests queued for a shard's reader thread, at most (one per endpoint at a time).
pub const READ_JOBS_MAX: usize = 1024;

/// What a read-back gives for one event: the event as received, or why it could not be read.
pub type Loaded = (EventId, Result<EventReceived, String>);

/// What a publish record read back gives: the record, or why it could not be read.
pub type LoadedPublished = (EventId, Result<Published, String>);

/// A read for the thread: it runs with the log's directory and sends its own answer.
type Job = Box<dyn FnOnce(&Path) + Send>;

/// A shard's reader thread.
pub struct Reader {
    jobs: Sender<Job>,
}

impl Reader {
    /// Starts the reader thread of the log in `directory`.
    pub fn spawn(directory: &Path, name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = bounded::<Job>(READ_JOBS_MAX);
        let directory = directory.to_path_buf();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            // Ends when the shard drops its sender.
            while let Ok(job) = queue.recv() {
                job(&directory);
            }
        })?;
        Ok(Self { jobs })
    }

    /// Reads the events' records back. Every event gets an answer; when the thread cannot take
    /// the request, each answer is that error.
    pub async fn read(&self, events: Vec<(EventId, Position)>) -> Vec<Loaded> {
        let ids: Vec<EventId> = events.iter().map(|(event_id, _)| *event_id).collect();
        self.run(move |directory| load(directory, &events))
            .await
            .unwrap_or_else(|reason| ids.into_iter().map(|event_id| (event_id, Err(reason.to_string()))).collect())
    }

    /// Reads publish records back (to hand their deliveries to other shards), each answered as
    /// [`Reader::read`] answers.
    pub async fn read_published(&self, records: Vec<(EventId, Position)>) -> Vec<LoadedPublished> {
        let ids: Vec<EventId> = records.iter().map(|(event_id, _)| *event_id).collect();
        self.run(move |directory| load_published(directory, &records))
            .await
            .unwrap_or_else(|reason| ids.into_iter().map(|event_id| (event_id, Err(reason.to_string()))).collect())
    }

    /// Runs `work` on the reader thread and waits for its result.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce(&Path) -> T + Send + 'static) -> Result<T, &'static str> {
        let (reply, answer) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |directory| {
            let _ = reply.send(work(directory));
        });
        match self.jobs.try_send(job) {
            Ok(()) => answer.await.map_err(|_| "the reader thread dropped a request"),
            Err(TrySendError::Full(_)) => Err("the reader's queue is full"),
            Err(TrySendError::Disconnected(_)) => Err("the reader thread has stopped"),
        }
    }
}

/// Reads and decodes publish records: the work of [`Reader::read_published`].
pub fn load_published(directory: &Path, records: &[(EventId, Position)]) -> Vec<LoadedPublished> {
    let positions: Vec<Position> = records.iter().map(|(_, position)| *position).collect();
    let read = kapsel_wal::read::read_at(directory, &positions);
    records
        .iter()
        .zip(read)
        .map(|((event_id, _), record)| {
            let published = record.map_err(|error| error.to_string()).and_then(|record| {
                match Record::decode(record.kind, &record.body).map_err(|error| error.to_string())? {
                    Record::Published(published) if published.event_id == event_id.0 => Ok(published),
                    _ => Err(format!("the record at {:?} is not the publish of {event_id}", record.lsn)),
                }
            });
            (*event_id, published)
        })
        .collect()
}

/// Reads and decodes the records of `events` from the log in `directory`: the work of the
/// reader thread, callable directly (tests, the simulation, retention's helper thread).
pub fn load(directory: &Path, events: &[(EventId, Position)]) -> Vec<Loaded> {
    let positions: Vec<Position> = events.iter().map(|(_, position)| *position).collect();
    let records = kapsel_wal::read::read_at(directory, &positions);
    events
        .iter()
        .zip(records)
        .map(|((event_id, _), record)| {
            let event = record.map_err(|error| error.to_string()).and_then(|record| {
                Record::decode(record.kind, &record.body)
                    .map_err(|error| error.to_string())?
                    .into_event(event_id.0)
                    .ok_or_else(|| format!("the record at {:?} is not event {event_id}", record.lsn))
            });
            (*event_id, event)
        })
        .collect()
}
