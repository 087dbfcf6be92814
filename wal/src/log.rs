//! The log: appends on the shard's thread, one flusher task per log doing group commit.
//!
//! Appenders encode their record straight into the open batch buffer and get a [`Commit`]
//! future that resolves once the fdatasync covering the batch has returned. The flusher takes
//! one batch at a time, so everything appended while a write and fsync are in flight gathers in
//! the next batch: one write and one fdatasync for all of it. All appenders of a batch share one
//! completion, so a batch costs one allocation however many records it carries.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::frame::{self, RECORD_HEADER_BYTES};
use crate::io::{FileLayer, IoBackend, IoCounters, IoFaults};
use crate::limits;
use crate::read::Position;
use crate::recover::{self, Recovered};
use crate::seal::SealInfo;
use crate::writer::{Discard, Writer};
use crate::WalError;

/// How a log is run. [`Options::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// A segment is sealed once it reaches this size (`KAPSEL_WAL_SEGMENT_BYTES`).
    pub segment_bytes: u64,
    /// Upper bound on one group-commit batch (one write and one fdatasync).
    pub batch_bytes_max: usize,
    /// Extra time the flusher waits for a batch to fill before writing it. Zero (the default)
    /// writes as soon as the previous fsync returned: batching then comes from concurrency alone.
    pub batch_wait: Duration,
    /// Bound on bytes appended but not yet written; beyond it appends fail with
    /// [`WalError::Backpressure`].
    pub queue_bytes_max: usize,
    /// How file operations run; must suit the runtime's driver.
    pub backend: IoBackend,
    /// Faults to inject into the file layer (tests of failure paths).
    pub faults: Option<Arc<IoFaults>>,
    /// The time stamped on seals (retention ages segments by it).
    pub clock: Clock,
}

/// Where the log reads the time (Unix milliseconds) it stamps on seals: the system clock, or a
/// clock a simulation controls.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// A clock reading `now`.
    pub fn new(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    /// The system clock.
    fn default() -> Self {
        Self::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as u64)
        })
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Clock")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            batch_bytes_max: limits::BATCH_BYTES_DEFAULT,
            batch_wait: Duration::ZERO,
            queue_bytes_max: limits::QUEUE_BYTES_DEFAULT,
            backend: IoBackend::default(),
            faults: None,
            clock: Clock::default(),
        }
    }
}

impl Options {
    /// The batch limit in force: at most a quarter of a segment, so that segments fill to at
    /// least three quarters of their size before they are sealed.
    pub fn effective_batch_bytes_max(&self) -> usize {
        let quarter_segment = usize::try_from(self.segment_bytes / 4).unwrap_or(usize::MAX);
        self.batch_bytes_max.min(quarter_segment).max(limits::BATCH_BYTES_MIN)
    }

    fn validate(&self) -> Result<(), WalError> {
        let segment_range = limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX;
        if !segment_range.contains(&self.segment_bytes) {
            return Err(WalError::InvalidOption(format!(
                "segment size {} is outside {}..={} bytes",
                self.segment_bytes,
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX
            )));
        }
        if self.batch_bytes_max < limits::BATCH_BYTES_MIN || self.queue_bytes_max < self.batch_bytes_max {
            return Err(WalError::InvalidOption(format!(
                "batch limit {} must be at least {} and at most the queue limit {}",
                self.batch_bytes_max,
                limits::BATCH_BYTES_MIN,
                self.queue_bytes_max
            )));
        }
        Ok(())
    }
}

/// A record handed to the replay callback of [`Wal::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Log sequence number, from 1, consecutive.
    pub lsn: u64,
    /// The kind given to [`Wal::append`].
    pub kind: u8,
    /// The body given to [`Wal::append`].
    pub body: &'a [u8],
    /// Where its frame lies (for reading it back later with [`crate::read::read_at`]).
    pub position: Position,
}

impl<'a> Record<'a> {
    /// The record of a frame found in segment `segment_id` (whose bytes are `segment`).
    pub(crate) fn from_frame(segment_id: u64, frame: &crate::frame::FrameRef, segment: &'a [u8]) -> Self {
        Self {
            lsn: frame.lsn,
            kind: frame.kind,
            body: frame.body(segment),
            position: Position {
                segment_id,
                offset: u32::try_from(frame.offset).unwrap_or(u32::MAX),
                length: u32::try_from(frame.length).unwrap_or(u32::MAX),
            },
        }
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// LSN the next append gets.
    pub next_lsn: u64,
    /// Sealed segments in the chain (including ones retention removed).
    pub sealed_segments: usize,
    /// The torn tail that was cut off: segment and offset.
    pub truncated: Option<(PathBuf, u64)>,
}

/// A per-shard write-ahead log. Not `Send`: it lives on its shard's thread.
pub struct Wal {
    shared: Rc<Shared>,
    flusher: RefCell<Option<monoio::task::JoinHandle<()>>>,
    options: Options,
    /// True while [`Wal::reopen`] runs (one at a time).
    reopening: std::cell::Cell<bool>,
}

/// State shared between appenders and the flusher task. Borrowed only briefly, never across
/// an await.
pub(crate) struct Shared {
    pub(crate) state: RefCell<State>,
    pub(crate) directory: PathBuf,
    pub(crate) counters: Arc<IoCounters>,
    /// [`State::durable_lsn`], readable from other threads (the index tails the log up to it).
    pub(crate) durable: Arc<AtomicU64>,
}

pub(crate) struct State {
    next_lsn: u64,
    /// The batch appends go into; it joins `queue` when full or when a control operation
    /// must follow it.
    open: Option<OpenBatch>,
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    batch_bytes_max: usize,
    queue_bytes_max: usize,
    pub(crate) poisoned: Option<String>,
    /// What kind of failure poisoned the log (see [`crate::error::failure_kind`]).
    failure_kind: &'static str,
    /// What the failed writer left to cut back before a reopen.
    pub(crate) discard: Option<Discard>,
    /// The task waiting in [`Wal::failed`].
    failure_waker: Option<Waker>,
    closing: bool,
    /// A simulated crash: the flusher stops without writing what is queued.
    crashed: bool,
    flusher_waker: Option<Waker>,
    spare_buffers: Vec<Vec<u8>>,
    pub(crate) sealed: Vec<SealInfo>,
    oldest_segment_id: u64,
    pub(crate) durable_lsn: u64,
    pub(crate) batches: u64,
}

/// Work for the flusher, in log order.
pub(crate) enum Pending {
    Batch(OpenBatch),
    Seal(Rc<Completion>),
    Remove(Vec<u64>, Rc<Completion>),
    Flush(Rc<Completion>),
}

/// Records waiting for the next write, framed in place after a reserved batch header.
pub(crate) struct OpenBatch {
    pub(crate) buffer: Vec<u8>,
    pub(crate) records: u32,
    pub(crate) first_lsn: u64,
    pub(crate) done: Rc<Completion>,
}

/// One result shared by every waiter of a batch or control operation.
#[derive(Default)]
pub(crate) struct Completion {
    result: RefCell<Option<Result<(), String>>>,
    wakers: RefCell<Vec<Waker>>,
    /// Where a batch was written: its segment and the offset of its header.
    placed: std::cell::Cell<Option<(u64, u64)>>,
}

impl Completion {
    /// Records where the batch went; called by the flusher before [`Completion::complete`].
    pub(crate) fn place(&self, segment_id: u64, offset: u64) {
        self.placed.set(Some((segment_id, offset)));
    }

    /// Resolves every waiter. The first result stands: a batch acknowledged after its fsync
    /// stays acknowledged even if sealing fails right after it.
    pub(crate) fn complete(&self, result: Result<(), String>) {
        if self.result.borrow().is_some() {
            return;
        }
        *self.result.borrow_mut() = Some(result);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn poll_result(&self, slot: &mut Option<usize>, context: &mut Context<'_>) -> Poll<Result<(), WalError>> {
        if let Some(result) = self.result.borrow().as_ref() {
            return Poll::Ready(result.clone().map_err(|reason| WalError::Poisoned { reason }));
        }
        let mut wakers = self.wakers.borrow_mut();
        match *slot {
            Some(index) if index < wakers.len() => wakers[index].clone_from(context.waker()),
            _ => {
                *slot = Some(wakers.len());
                wakers.push(context.waker().clone());
            }
        }
        Poll::Pending
    }
}

/// Resolves to the record's LSN once the fdatasync covering it has returned.
#[must_use = "an append is durable only once its Commit resolves"]
pub struct Commit {
    lsn: u64,
    done: Rc<Completion>,
    slot: Option<usize>,
    /// Offset of the record's frame in its batch (batch header included) and its length.
    offset_in_batch: u32,
    length: u32,
}

impl Commit {
    /// The LSN the record was given (not yet durable).
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Where the record lies, once it is durable (after this commit resolved `Ok`).
    pub fn position(&self) -> Option<Position> {
        let (segment_id, batch_offset) = self.done.placed.get()?;
        let offset = u32::try_from(batch_offset + u64::from(self.offset_in_batch)).ok()?;
        Some(Position { segment_id, offset, length: self.length })
    }
}

impl Future for Commit {
    type Output = Result<u64, WalError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let lsn = this.lsn;
        this.done.poll_result(&mut this.slot, context).map(|result| result.map(|()| lsn))
    }
}

/// Resolves when a control operation (seal, removal, flush) is done.
struct Done {
    done: Rc<Completion>,
    slot: Option<usize>,
}

impl Future for Done {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.done.poll_result(&mut this.slot, context)
    }
}

impl Wal {
    /// Opens (or creates) the log in `directory`: verifies every segment, truncates a torn tail,
    /// calls `replay` for every record in LSN order, and starts the flusher on the current
    /// monoio runtime. Recovery reads with blocking calls; call it before the shard serves.
    pub async fn open(
        directory: impl AsRef<Path>,
        options: Options,
        mut replay: impl FnMut(Record<'_>),
    ) -> Result<(Wal, Recovery), WalError> {
        options.validate()?;
        let directory = directory.as_ref().to_path_buf();
        let recovered = recover::recover(&directory, &mut replay)?;
        let name = directory.file_name().map_or_else(|| "log".into(), |name| name.to_string_lossy().into_owned());
        let counters = Arc::new(IoCounters::default());
        let layer = FileLayer::new(options.backend, options.faults.clone(), &name, counters)
            .map_err(|error| WalError::io("start I/O thread", &directory, error))?;
        let recovery = Recovery {
            records: recovered.records,
            next_lsn: recovered.next_lsn,
            sealed_segments: recovered.sealed.len(),
            truncated: recovered.truncated.clone(),
        };
        let shared = Rc::new(Shared {
            state: RefCell::new(State::new(&recovered, &options)),
            directory: directory.clone(),
            counters: layer.counters(),
            durable: Arc::new(AtomicU64::new(recovered.next_lsn.saturating_sub(1))),
        });
        let writer = Writer::new(layer, directory, &options, recovered)?;
        let flusher = monoio::spawn(writer.run(Rc::clone(&shared), options.batch_wait));
        let wal = Wal { shared, flusher: RefCell::new(Some(flusher)), options, reopening: std::cell::Cell::new(false) };
        Ok((wal, recovery))
    }

    /// Brings a log that a storage failure poisoned back into service, through the recovery
    /// path a start uses, without a restart:
    ///
    /// 1. waits for the failed flusher and its I/O thread to stop (no write of the failed log
    ///    outlives this);
    /// 2. cuts every file back to its durable length and removes a segment whose creation
    ///    failed: the batch that was never acknowledged is discarded, never written again (after
    ///    a failed fsync its bytes may be in the page cache but not on disk);
    /// 3. recovers the directory as [`Wal::open`] does (every frame verified) and checks that it
    ///    ends exactly at the last durable record;
    /// 4. writes, fsyncs and removes a probe file, so that a disk still full fails here rather
    ///    than on the next acknowledgement;
    /// 5. starts a new flusher; appends are taken again.
    ///
    /// Steps 2–4 block, so they run on a helper thread. On an error the log stays poisoned and
    /// the call may be repeated (the caller backs off). A log that is not poisoned is left as
    /// it is.
    pub async fn reopen(&self) -> Result<Recovery, WalError> {
        if self.reopening.replace(true) {
            return Err(WalError::Poisoned { reason: "a reopen is already under way".into() });
        }
        let outcome = self.reopen_now().await;
        self.reopening.set(false);
        outcome
    }

    async fn reopen_now(&self) -> Result<Recovery, WalError> {
        let (discard, durable_lsn) = {
            let state = self.shared.state.borrow();
            if state.poisoned.is_none() {
                return Ok(Recovery {
                    next_lsn: state.next_lsn,
                    sealed_segments: state.sealed.len(),
                    ..Recovery::default()
                });
            }
            (state.discard.clone(), state.durable_lsn)
        };
        let flusher = self.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            flusher.await;
        }
        let directory = self.shared.directory.clone();
        let probe_bytes = self.options.effective_batch_bytes_max().min(limits::SPACE_PROBE_BYTES);
        let recovered = blocking("kapsel-wal-reopen", move || {
            if let Some(discard) = &discard {
                discard.apply(&directory)?;
            }
            let recovered = recover::recover(&directory, &mut |_| {})?;
            probe_space(&directory, probe_bytes)?;
            Ok(recovered)
        })
        .await?;
        if recovered.next_lsn != durable_lsn + 1 {
            return Err(WalError::corrupt(
                &self.shared.directory,
                0,
                format!(
                    "after the failure the log ends at record {} but record {durable_lsn} was acknowledged last",
                    recovered.next_lsn.saturating_sub(1)
                ),
            ));
        }
        let recovery = Recovery {
            records: recovered.records,
            next_lsn: recovered.next_lsn,
            sealed_segments: recovered.sealed.len(),
            truncated: recovered.truncated.clone(),
        };
        let name =
            self.shared.directory.file_name().map_or_else(|| "log".into(), |name| name.to_string_lossy().into_owned());
        let layer =
            FileLayer::new(self.options.backend, self.options.faults.clone(), &name, Arc::clone(&self.shared.counters))
                .map_err(|error| WalError::io("start I/O thread", &self.shared.directory, error))?;
        {
            let mut state = self.shared.state.borrow_mut();
            let batches = state.batches;
            *state = State::new(&recovered, &self.options);
            state.batches = batches;
        }
        let writer = Writer::new(layer, self.shared.directory.clone(), &self.options, recovered)?;
        let flusher = monoio::spawn(writer.run(Rc::clone(&self.shared), self.options.batch_wait));
        *self.flusher.borrow_mut() = Some(flusher);
        tracing::info!(directory = %self.shared.directory.display(), next_lsn = recovery.next_lsn, "write-ahead log reopened after a storage failure");
        Ok(recovery)
    }

    /// Resolves with the reason once a storage failure has poisoned the log (at once when it
    /// is poisoned already). One task may wait at a time: the shard's recovery task.
    pub fn failed(&self) -> impl Future<Output = String> + '_ {
        std::future::poll_fn(move |context| {
            let mut state = self.shared.state.borrow_mut();
            match &state.poisoned {
                Some(reason) => Poll::Ready(reason.clone()),
                None => {
                    state.failure_waker = Some(context.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    /// Why the log is poisoned, if it is: the reason and its kind (`no_space`, `io_error`,
    /// `read_only`, `other`).
    pub fn failure(&self) -> Option<(String, &'static str)> {
        let state = self.shared.state.borrow();
        state.poisoned.clone().map(|reason| (reason, state.failure_kind))
    }

    /// Appends a record. The record is not durable until the returned [`Commit`] resolves; it
    /// fails at once when the log is poisoned, closed or its queue is full.
    pub fn append(&self, kind: u8, body: &[u8]) -> Result<Commit, WalError> {
        if kind > limits::USER_KIND_MAX {
            return Err(WalError::ReservedKind(kind));
        }
        if body.len() > limits::RECORD_BODY_BYTES_MAX {
            return Err(WalError::RecordTooLarge { bytes: body.len(), limit: limits::RECORD_BODY_BYTES_MAX });
        }
        let mut state = self.shared.state.borrow_mut();
        state.check_open()?;
        let frame_bytes = RECORD_HEADER_BYTES + body.len();
        if state.queued_bytes > 0 && state.queued_bytes + frame_bytes > state.queue_bytes_max {
            return Err(WalError::Backpressure { queued_bytes: state.queued_bytes });
        }
        let lsn = state.next_lsn;
        state.next_lsn += 1;
        state.queued_bytes += frame_bytes;
        let batch = state.batch_for(frame_bytes, lsn);
        let offset_in_batch = u32::try_from(batch.buffer.len()).unwrap_or(u32::MAX);
        frame::encode_record(&mut batch.buffer, kind, lsn, body);
        batch.records += 1;
        let done = Rc::clone(&batch.done);
        state.wake_flusher();
        let length = u32::try_from(frame_bytes).unwrap_or(u32::MAX);
        Ok(Commit { lsn, done, slot: None, offset_in_batch, length })
    }

    /// Waits until every record appended so far is durable and every seal it triggered is
    /// written.
    pub async fn flush(&self) -> Result<(), WalError> {
        // A marker behind everything queued: the flusher reaches it only after the batches
        // before it (and any seal they triggered) are done.
        self.control(Pending::Flush)?.await
    }

    /// Seals the current segment now (if it holds records) and starts the next one. Returns the
    /// seal, or `None` when there was nothing to seal.
    pub async fn seal(&self) -> Result<Option<SealInfo>, WalError> {
        let before = self.shared.state.borrow().sealed.len();
        self.control(Pending::Seal)?.await?;
        Ok(self.shared.state.borrow().sealed.get(before).cloned())
    }

    /// Retention hook: removes every sealed segment whose records all lie below `lsn`. Their
    /// seals stay in the audit chain. Returns the removed segment ids.
    pub async fn remove_sealed_below(&self, lsn: u64) -> Result<Vec<u64>, WalError> {
        let segment_ids: Vec<u64> = {
            let mut state = self.shared.state.borrow_mut();
            let oldest = state.oldest_segment_id;
            let ids: Vec<u64> = state
                .sealed
                .iter()
                .filter(|seal| seal.segment_id >= oldest && seal.last_lsn < lsn)
                .map(|seal| seal.segment_id)
                .collect();
            if let Some(last) = ids.last() {
                state.oldest_segment_id = last + 1;
            }
            ids
        };
        if segment_ids.is_empty() {
            return Ok(segment_ids);
        }
        self.control(|done| Pending::Remove(segment_ids.clone(), done))?.await?;
        Ok(segment_ids)
    }

    fn control(&self, make: impl FnOnce(Rc<Completion>) -> Pending) -> Result<Done, WalError> {
        let mut state = self.shared.state.borrow_mut();
        state.check_open()?;
        let done = Rc::new(Completion::default());
        state.push_control(make(Rc::clone(&done)));
        state.wake_flusher();
        Ok(Done { done, slot: None })
    }

    /// Seals written so far, oldest first (including segments retention removed).
    pub fn sealed_segments(&self) -> Vec<SealInfo> {
        self.shared.state.borrow().sealed.clone()
    }

    /// True while a sealed segment is still on disk (retention has not removed it).
    pub fn holds(&self, seal: &SealInfo) -> bool {
        seal.segment_id >= self.shared.state.borrow().oldest_segment_id
    }

    /// LSN the next append will get.
    pub fn next_lsn(&self) -> u64 {
        self.shared.state.borrow().next_lsn
    }

    /// Highest LSN known durable.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.state.borrow().durable_lsn
    }

    /// The highest durable LSN as an atomic that other threads may read: a reader of the log's
    /// files (for example [`crate::tail::Reader`]) may rely on every record up to it.
    pub fn durable_watermark(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.durable)
    }

    /// Number of group-commit batches written since open.
    pub fn batches(&self) -> u64 {
        self.shared.state.borrow().batches
    }

    /// True once a storage failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.shared.state.borrow().poisoned.is_some()
    }

    /// Counters of the file layer (writes, bytes, syncs).
    pub fn io_counters(&self) -> Arc<IoCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// The log's directory.
    pub fn directory(&self) -> &Path {
        &self.shared.directory
    }

    /// Stops the log as a crash would, for simulations and tests: nothing still queued is
    /// written (appends not yet handed to the operating system are lost), a write already under
    /// way finishes, and this returns once the flusher and its I/O thread have stopped, so the
    /// directory can be reopened in the same process.
    pub async fn crash(self) {
        {
            let mut state = self.shared.state.borrow_mut();
            state.crashed = true;
            state.wake_flusher();
        }
        let flusher = self.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            flusher.await;
        }
    }

    /// Writes everything queued, stops the flusher and closes the files.
    pub async fn close(self) -> Result<(), WalError> {
        self.shared.state.borrow_mut().begin_close();
        let flusher = self.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            flusher.await;
        }
        self.shared.state.borrow().check_poisoned()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The flusher drains what is queued and exits on its own.
        self.shared.state.borrow_mut().begin_close();
    }
}

impl State {
    fn new(recovered: &Recovered, options: &Options) -> Self {
        Self {
            next_lsn: recovered.next_lsn,
            open: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            batch_bytes_max: options.effective_batch_bytes_max(),
            queue_bytes_max: options.queue_bytes_max,
            poisoned: None,
            failure_kind: "",
            discard: None,
            failure_waker: None,
            closing: false,
            crashed: false,
            flusher_waker: None,
            spare_buffers: Vec::new(),
            sealed: recovered.sealed.clone(),
            oldest_segment_id: recovered.oldest_segment_id,
            durable_lsn: recovered.next_lsn.saturating_sub(1),
            batches: 0,
        }
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(reason) => Err(WalError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.closing {
            return Err(WalError::Closed);
        }
        Ok(())
    }

    fn begin_close(&mut self) {
        self.closing = true;
        self.wake_flusher();
    }

    fn wake_flusher(&mut self) {
        if let Some(waker) = self.flusher_waker.take() {
            waker.wake();
        }
    }

    /// The open batch if the record fits in it, else a fresh one (the full one joins the queue).
    fn batch_for(&mut self, frame_bytes: usize, lsn: u64) -> &mut OpenBatch {
        let batch_bytes_max = self.batch_bytes_max;
        if let Some(full) = self.open.take_if(|batch| batch.buffer.len() + frame_bytes > batch_bytes_max) {
            self.queue.push_back(Pending::Batch(full));
        }
        let spare_buffers = &mut self.spare_buffers;
        self.open.get_or_insert_with(|| {
            let mut buffer = spare_buffers.pop().unwrap_or_default();
            frame::begin_batch(&mut buffer);
            OpenBatch { buffer, records: 0, first_lsn: lsn, done: Rc::new(Completion::default()) }
        })
    }

    /// Queues a control operation behind every record appended so far.
    fn push_control(&mut self, pending: Pending) {
        if let Some(open) = self.open.take() {
            self.queue.push_back(Pending::Batch(open));
        }
        self.queue.push_back(pending);
    }

    /// Next piece of work for the flusher; `None` when closing and drained, or crashed.
    pub(crate) fn poll_next(&mut self, context: &mut Context<'_>) -> Poll<Option<Pending>> {
        if self.crashed {
            return Poll::Ready(None);
        }
        let next = self.queue.pop_front().or_else(|| self.open.take().map(Pending::Batch));
        match next {
            Some(pending) => {
                if let Pending::Batch(batch) = &pending {
                    self.queued_bytes -= batch.buffer.len() - frame::BATCH_HEADER_BYTES;
                }
                Poll::Ready(Some(pending))
            }
            None if self.closing || self.poisoned.is_some() => Poll::Ready(None),
            None => {
                self.flusher_waker = Some(context.waker().clone());
                Poll::Pending
            }
        }
    }

    /// True when the front of the queue is a batch (the flusher may wait for it to fill).
    pub(crate) fn front_is_batch(&self) -> bool {
        match self.queue.front() {
            Some(pending) => matches!(pending, Pending::Batch(_)),
            None => self.open.is_some(),
        }
    }

    /// True when there is work or the log is closing; otherwise registers the flusher's waker.
    pub(crate) fn poll_peek(&mut self, context: &mut Context<'_>) -> bool {
        if !self.queue.is_empty() || self.open.is_some() || self.closing || self.poisoned.is_some() {
            return true;
        }
        self.flusher_waker = Some(context.waker().clone());
        false
    }

    pub(crate) fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.spare_buffers.len() < limits::SPARE_BUFFERS_MAX && buffer.capacity() <= 2 * self.batch_bytes_max {
            buffer.clear();
            self.spare_buffers.push(buffer);
        }
    }

    /// Poisons the log: records the reason and fails everything still queued.
    pub(crate) fn poison(&mut self, reason: String, kind: &'static str) {
        tracing::error!(%reason, "write-ahead log poisoned; refusing appends until reopened");
        let open = self.open.take().map(Pending::Batch);
        for pending in self.queue.drain(..).chain(open) {
            let done = match pending {
                Pending::Batch(batch) => batch.done,
                Pending::Seal(done) | Pending::Remove(_, done) | Pending::Flush(done) => done,
            };
            done.complete(Err(reason.clone()));
        }
        self.queued_bytes = 0;
        self.poisoned = Some(reason);
        self.failure_kind = kind;
        if let Some(waker) = self.failure_waker.take() {
            waker.wake();
        }
    }
}

/// Runs blocking file work on a short-lived helper thread and awaits it, so the shard keeps
/// serving (a failing disk may make each call slow).
async fn blocking<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, WalError> + Send + 'static,
) -> Result<T, WalError> {
    let (sender, receiver) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = sender.send(work());
        })
        .map_err(|error| WalError::io("start a helper thread", name, error))?;
    receiver.await.unwrap_or_else(|_| Err(WalError::Poisoned { reason: "the reopen thread stopped".into() }))
}

/// Writes `bytes` zeros to a probe file, fsyncs it and removes it: fails while the disk is
/// still full or failing.
fn probe_space(directory: &Path, bytes: usize) -> Result<(), WalError> {
    use std::io::Write as _;
    let path = directory.join(".space-probe");
    let written = std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(&vec![0u8; bytes]).and_then(|()| file.sync_all()));
    let removed = std::fs::remove_file(&path);
    written.map_err(|error| WalError::io("write a probe file", &path, error))?;
    removed.map_err(|error| WalError::io("remove a probe file", &path, error))
}
