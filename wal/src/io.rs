//! The file layer: the only place the log touches the operating system after recovery.
//!
//! Two backends, chosen to match the shard's monoio driver:
//! - [`IoBackend::Uring`]: writes and fdatasyncs are io_uring operations on the shard's own
//!   ring, so the shard keeps running while the kernel works.
//! - [`IoBackend::Thread`]: monoio's legacy (epoll) driver performs file operations as plain
//!   blocking syscalls on the calling thread, which would stall the shard for every fsync.
//!   This backend hands each operation to a dedicated I/O thread per log and awaits its
//!   completion through a cross-thread oneshot (monoio's `sync` feature wakes the shard).
//!
//! Every operation goes through [`FileLayer`], which counts writes and syncs ([`IoCounters`])
//! and applies injected faults ([`IoFaults`]) the same way for both backends.

use std::fs::File as StdFile;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::limits;

/// How file operations are performed; match it to the runtime's driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring operations on the current monoio runtime (requires its io_uring driver).
    Uring,
    /// A dedicated blocking I/O thread (for monoio's legacy epoll driver).
    Thread,
}

impl Default for IoBackend {
    /// The I/O thread, under either driver. Measured on these machines (kernel 6.18 in a
    /// Firecracker VM, `cargo bench -p kapsel-wal`): with 256 concurrent 1 KiB appenders the I/O
    /// thread commits about 430K appends/s against about 320K/s with io_uring file operations,
    /// and a lone write+fdatasync costs about 170 µs plainly against about 280 µs through
    /// io_uring, which hands fsync to a kernel worker. The thread also overlaps the batch's Merkle
    /// leaf hashing with the fsync. Both backends stay tested; the benchmark measures both.
    fn default() -> Self {
        Self::Thread
    }
}

/// Upper bounds in microseconds of [`IoCounters::commit_latency`]'s buckets (a last, unbounded
/// bucket follows).
pub const COMMIT_LATENCY_BOUNDS_US: [u64; 12] =
    [50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000];
/// Upper bounds of [`IoCounters::batch_records`]'s buckets (a last, unbounded bucket follows).
pub const BATCH_RECORDS_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A fixed-bucket histogram that any thread may read while the log's thread records.
#[derive(Debug)]
pub struct Buckets<const N: usize> {
    bounds: [u64; N],
    counts: [AtomicU64; N],
    over: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Buckets<N> {
    fn new(bounds: [u64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, value: u64) {
        match self.bounds.iter().position(|bound| value <= *bound) {
            Some(index) => self.counts[index].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// (upper bound, count in that bucket alone) per bucket; `None` is the unbounded one.
    pub fn buckets(&self) -> Vec<(Option<u64>, u64)> {
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| (Some(*bound), count.load(Ordering::Relaxed)))
            .chain(std::iter::once((None, self.over.load(Ordering::Relaxed))))
            .collect()
    }

    /// Sum of the recorded values.
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }
}

/// Counts of operations that reached the file layer (whether or not they succeeded).
#[derive(Debug)]
pub struct IoCounters {
    writes: AtomicU64,
    bytes_written: AtomicU64,
    syncs: AtomicU64,
    records: AtomicU64,
    commit_latency: Buckets<12>,
    batch_records: Buckets<11>,
}

impl Default for IoCounters {
    fn default() -> Self {
        Self {
            writes: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            commit_latency: Buckets::new(COMMIT_LATENCY_BOUNDS_US),
            batch_records: Buckets::new(BATCH_RECORDS_BOUNDS),
        }
    }
}

impl IoCounters {
    /// Number of write calls (each batch is one).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Bytes handed to write calls.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// Number of fdatasync/fsync calls, directories included.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
    /// Records made durable.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
    /// Time from a group commit's write to its fdatasync returning, in microseconds.
    pub fn commit_latency(&self) -> &Buckets<12> {
        &self.commit_latency
    }
    /// Records per group commit.
    pub fn batch_records(&self) -> &Buckets<11> {
        &self.batch_records
    }
    pub(crate) fn record_commit(&self, records: u64, latency: std::time::Duration) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.batch_records.record(records);
        self.commit_latency.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }
}

/// Faults to inject into the file layer, for tests of the failure paths. Each arms a one-shot
/// failure of the n-th later operation of its kind; 0 means disarmed.
#[derive(Debug, Default)]
pub struct IoFaults {
    fail_sync_countdown: AtomicU64,
    fail_write_countdown: AtomicU64,
}

impl IoFaults {
    /// Makes the `n`-th sync from now fail with EIO (`n` ≥ 1).
    pub fn fail_sync_after(&self, n: u64) {
        self.fail_sync_countdown.store(n, Ordering::SeqCst);
    }
    /// Makes the `n`-th write from now fail with ENOSPC (`n` ≥ 1).
    pub fn fail_write_after(&self, n: u64) {
        self.fail_write_countdown.store(n, Ordering::SeqCst);
    }

    fn trips(countdown: &AtomicU64) -> bool {
        let update = countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        update == Ok(1)
    }
}

/// An open segment or chain file.
pub(crate) enum FileHandle {
    Uring(Rc<monoio::fs::File>),
    Std(Arc<StdFile>),
}

/// A batch's write and fdatasync, started by [`FileLayer::start_durable_write`]. With the I/O
/// thread both run there as one job, already under way while the shard does other work (the
/// flusher hashes the batch's Merkle leaves meanwhile); with io_uring they are submitted when
/// this is awaited.
pub(crate) enum DurableWrite {
    Thread(futures_channel::oneshot::Receiver<io::Result<()>>),
    Uring { file: Rc<monoio::fs::File>, buffer: Vec<u8>, offset: u64, fail_sync: bool },
    Failed(io::Error),
}

/// What the I/O thread hands back after a batch is durable and acknowledged: the digest of the
/// batch (its Merkle leaves), computed there rather than on the shard, and the buffer for reuse.
pub(crate) struct Returned {
    pub(crate) digest: Vec<[u8; 32]>,
    pub(crate) buffer: Vec<u8>,
}

/// Computes a batch's digest (its Merkle leaf hashes).
pub(crate) type Digest = fn(&[u8]) -> Vec<[u8; 32]>;

impl DurableWrite {
    /// Waits for the write and the fdatasync; `Ok` only when both succeeded. With io_uring the
    /// buffer comes back here (the caller digests it); with the I/O thread it comes back later,
    /// digested, through [`FileLayer::take_returned`].
    pub(crate) async fn wait(self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Thread(receiver) => {
                receiver.await.unwrap_or_else(|_| Err(io::Error::other("I/O thread dropped a write"))).map(|()| None)
            }
            Self::Uring { file, buffer, offset, fail_sync } => {
                let (written, buffer) = file.write_all_at(buffer, offset).await;
                written?;
                if fail_sync {
                    return Err(io::Error::from_raw_os_error(EIO));
                }
                file.sync_data().await?;
                Ok(Some(buffer))
            }
            Self::Failed(error) => Err(error),
        }
    }
}

/// Counting, fault-injecting front of the chosen backend.
pub(crate) struct FileLayer {
    backend: Backend,
    counters: Arc<IoCounters>,
    faults: Option<Arc<IoFaults>>,
}

enum Backend {
    Uring,
    Thread(IoThread),
}

impl FileLayer {
    /// A layer over `backend`, counting into `counters` (kept across a reopen).
    pub(crate) fn new(
        backend: IoBackend,
        faults: Option<Arc<IoFaults>>,
        name: &str,
        counters: Arc<IoCounters>,
    ) -> io::Result<Self> {
        let backend = match backend {
            IoBackend::Uring => Backend::Uring,
            IoBackend::Thread => Backend::Thread(IoThread::spawn(name)?),
        };
        Ok(Self { backend, counters, faults })
    }

    pub(crate) fn counters(&self) -> Arc<IoCounters> {
        Arc::clone(&self.counters)
    }

    /// Wraps a file that recovery opened with std (startup may block; the shard is not
    /// serving yet).
    pub(crate) fn adopt(&self, file: StdFile) -> io::Result<FileHandle> {
        match self.backend {
            Backend::Uring => Ok(FileHandle::Uring(Rc::new(monoio::fs::File::from_std(file)?))),
            Backend::Thread(_) => Ok(FileHandle::Std(Arc::new(file))),
        }
    }

    /// Creates a new file that must not exist yet.
    pub(crate) async fn create_new(&self, path: &Path) -> io::Result<FileHandle> {
        match &self.backend {
            Backend::Uring => {
                let file = monoio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).await?;
                Ok(FileHandle::Uring(Rc::new(file)))
            }
            Backend::Thread(thread) => {
                let path = path.to_path_buf();
                let file = thread
                    .run(move || std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path))
                    .await?;
                Ok(FileHandle::Std(Arc::new(file)))
            }
        }
    }

    /// Starts writing `buffer` at `offset` followed by an fdatasync: the group commit of one
    /// batch. With the I/O thread, the thread then answers, and only after answering computes
    /// `digest` over the buffer and hands both back through [`FileLayer::take_returned`], so the
    /// hashing costs neither the shard's CPU nor the appenders' latency.
    pub(crate) fn start_durable_write(
        &self,
        file: &FileHandle,
        buffer: Vec<u8>,
        offset: u64,
        digest: Digest,
    ) -> DurableWrite {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_written.fetch_add(buffer.len() as u64, Ordering::Relaxed);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if self.trips(|faults| &faults.fail_write_countdown) {
            return DurableWrite::Failed(io::Error::from_raw_os_error(ENOSPC));
        }
        let fail_sync = self.trips(|faults| &faults.fail_sync_countdown);
        match (file, &self.backend) {
            (FileHandle::Std(file), Backend::Thread(thread)) => {
                let file = Arc::clone(file);
                let returns = thread.returns.clone();
                let (sender, receiver) = futures_channel::oneshot::channel();
                let job: Job = Box::new(move || {
                    let mut result = file.write_all_at(&buffer, offset);
                    if result.is_ok() {
                        result = if fail_sync { Err(io::Error::from_raw_os_error(EIO)) } else { file.sync_data() };
                    }
                    let durable = result.is_ok();
                    let _ = sender.send(result);
                    if durable {
                        let _ = returns.send(Returned { digest: digest(&buffer), buffer });
                    }
                });
                match thread.submit(job) {
                    Ok(()) => DurableWrite::Thread(receiver),
                    Err(error) => DurableWrite::Failed(error),
                }
            }
            (FileHandle::Uring(file), _) => DurableWrite::Uring { file: Rc::clone(file), buffer, offset, fail_sync },
            (FileHandle::Std(_), Backend::Uring) => {
                DurableWrite::Failed(io::Error::other("file opened for another backend"))
            }
        }
    }

    /// Batches the I/O thread has written, digested and handed back, in write order.
    pub(crate) fn take_returned(&self) -> Vec<Returned> {
        match &self.backend {
            Backend::Thread(thread) => thread.returned.try_iter().collect(),
            Backend::Uring => Vec::new(),
        }
    }

    /// Waits until every operation handed to the I/O thread so far has finished, digests
    /// included (it runs jobs in order). Immediate with io_uring.
    pub(crate) async fn barrier(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Thread(thread) => thread.run(|| Ok(())).await,
            Backend::Uring => Ok(()),
        }
    }

    fn trips(&self, countdown: impl Fn(&IoFaults) -> &AtomicU64) -> bool {
        self.faults.as_ref().is_some_and(|faults| IoFaults::trips(countdown(faults)))
    }

    /// Writes all of `buffer` at `offset` and gives the buffer back for reuse.
    pub(crate) async fn write_all_at(
        &self,
        file: &FileHandle,
        buffer: Vec<u8>,
        offset: u64,
    ) -> (io::Result<()>, Vec<u8>) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_written.fetch_add(buffer.len() as u64, Ordering::Relaxed);
        if self.trips(|faults| &faults.fail_write_countdown) {
            return (Err(io::Error::from_raw_os_error(ENOSPC)), buffer);
        }
        match (file, &self.backend) {
            (FileHandle::Uring(file), _) => file.write_all_at(buffer, offset).await,
            (FileHandle::Std(file), Backend::Thread(thread)) => {
                let file = Arc::clone(file);
                let outcome = thread
                    .run(move || {
                        let result = file.write_all_at(&buffer, offset);
                        Ok((result, buffer))
                    })
                    .await;
                match outcome {
                    Ok(pair) => pair,
                    Err(error) => (Err(error), Vec::new()),
                }
            }
            (FileHandle::Std(file), Backend::Uring) => (file.write_all_at(&buffer, offset), buffer),
        }
    }

    /// fdatasync: makes the file's data (and the metadata needed to read it) durable.
    pub(crate) async fn sync_data(&self, file: &FileHandle) -> io::Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if self.trips(|faults| &faults.fail_sync_countdown) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        match (file, &self.backend) {
            (FileHandle::Uring(file), _) => file.sync_data().await,
            (FileHandle::Std(file), Backend::Thread(thread)) => {
                let file = Arc::clone(file);
                thread.run(move || file.sync_data()).await
            }
            (FileHandle::Std(file), Backend::Uring) => file.sync_data(),
        }
    }

    /// Removes a file; the caller fsyncs the directory afterwards.
    pub(crate) async fn remove_file(&self, path: &Path) -> io::Result<()> {
        match &self.backend {
            Backend::Uring => monoio::fs::remove_file(path).await,
            Backend::Thread(thread) => {
                let path = path.to_path_buf();
                thread.run(move || std::fs::remove_file(path)).await
            }
        }
    }

    /// fsyncs a directory so that a file created or removed in it survives a crash.
    pub(crate) async fn sync_directory(&self, directory: &Path) -> io::Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if self.trips(|faults| &faults.fail_sync_countdown) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        match &self.backend {
            Backend::Uring => {
                let handle = monoio::fs::File::open(directory).await?;
                handle.sync_all().await
            }
            Backend::Thread(thread) => {
                let directory = directory.to_path_buf();
                thread.run(move || sync_directory_blocking(&directory)).await
            }
        }
    }
}

/// fsyncs a directory with a blocking call; for startup and tools, never a serving shard.
pub(crate) fn sync_directory_blocking(directory: &Path) -> io::Result<()> {
    StdFile::open(directory)?.sync_all()
}

/// Creates `directory` and its missing parents like `create_dir_all`, then fsyncs the parent of
/// each one it created, so that every new name survives a crash (a directory entry lives in its
/// parent, and `create_dir_all` alone leaves it in the page cache). Blocking: for start-up.
pub fn create_dir_all_durable(directory: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(directory);
    while let Some(path) = current.filter(|path| !path.as_os_str().is_empty() && !path.exists()) {
        missing.push(path);
        current = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(directory)?;
    // Deepest first is fine: every parent exists by now, and each is fsynced once.
    for path in missing {
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_directory_blocking(parent)?;
    }
    Ok(())
}

/// Linux's "I/O error", what a failing disk returns from fsync.
const EIO: i32 = 5;
/// Linux's "no space left on device".
const ENOSPC: i32 = 28;

type Job = Box<dyn FnOnce() + Send>;

/// One blocking I/O thread per log. Jobs run in order; each reports through a oneshot whose
/// completion wakes the awaiting task on the shard.
struct IoThread {
    /// Taken on drop, which ends the thread once it has run what it was given.
    jobs: Option<mpsc::SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    name: PathBuf,
    /// Digested batches travel back on an unbounded channel: at most one per batch written
    /// since the writer last drained it, which it does after every batch.
    returns: mpsc::Sender<Returned>,
    returned: mpsc::Receiver<Returned>,
}

impl IoThread {
    fn spawn(name: &str) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(limits::IO_THREAD_QUEUE_MAX);
        let thread = std::thread::Builder::new().name(format!("kapsel-wal-io-{name}")).spawn(move || {
            // Ends when the log drops its sender.
            while let Ok(job) = queue.recv() {
                job();
            }
        })?;
        let (returns, returned) = mpsc::channel();
        Ok(Self { jobs: Some(jobs), thread: Some(thread), name: PathBuf::from(name), returns, returned })
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        let stopped = || io::Error::other(format!("I/O thread for {} has stopped", self.name.display()));
        // Blocking here is bounded: the queue holds IO_THREAD_QUEUE_MAX jobs and the flusher
        // has one in flight at a time, so a full queue means the thread is about to drain it.
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())
    }

    async fn run<T, F>(&self, operation: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (sender, receiver) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move || {
            // The receiver may be gone if the log was dropped; nothing waits for the answer then.
            let _ = sender.send(operation());
        });
        self.submit(job)?;
        match receiver.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other(format!("I/O thread for {} dropped an operation", self.name.display()))),
        }
    }
}

impl Drop for IoThread {
    /// Waits for the thread to finish what it was given (at most one write and fsync, plus the
    /// few queued jobs), so that no write of a log outlives the log: a new `Wal::open` of the
    /// same directory never races a write of the old one.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // The last owner may be a task freed by a waker the thread itself dropped (its
            // runtime already gone); the thread then ends on its own once this returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
