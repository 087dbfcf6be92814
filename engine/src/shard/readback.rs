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
use crate::model::records::{EventReceived, Record};

/// Read requests queued for a shard's reader thread, at most (one per endpoint at a time).
pub const READ_JOBS_MAX: usize = 1024;

/// What a read-back gives for one event: the event as received, or why it could not be read.
pub type Loaded = (EventId, Result<EventReceived, String>);

type Job = (Vec<(EventId, Position)>, futures_channel::oneshot::Sender<Vec<Loaded>>);

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
            while let Ok((events, reply)) = queue.recv() {
                let _ = reply.send(load(&directory, &events));
            }
        })?;
        Ok(Self { jobs })
    }

    /// Reads the events' records back. Every event gets an answer; when the thread cannot take
    /// the request, each answer is that error.
    pub async fn read(&self, events: Vec<(EventId, Position)>) -> Vec<Loaded> {
        let (reply, answer) = futures_channel::oneshot::channel();
        let ids: Vec<EventId> = events.iter().map(|(event_id, _)| *event_id).collect();
        let refused = match self.jobs.try_send((events, reply)) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some("the reader's queue is full"),
            Err(TrySendError::Disconnected(_)) => Some("the reader thread has stopped"),
        };
        let outcome = match refused {
            Some(reason) => Err(reason),
            None => answer.await.map_err(|_| "the reader thread dropped a request"),
        };
        outcome.unwrap_or_else(|reason| ids.into_iter().map(|event_id| (event_id, Err(reason.to_string()))).collect())
    }
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
                    .into_event()
                    .filter(|event| event.event_id == event_id.0)
                    .ok_or_else(|| format!("the record at {:?} is not event {event_id}", record.lsn))
            });
            (*event_id, event)
        })
        .collect()
}
