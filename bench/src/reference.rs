//! The two reference servers Kapsel is measured against, on Kapsel's own HTTP stack: one
//! thread per core, each with its own monoio runtime, `SO_REUSEPORT` listener and kapsel-http
//! [`serve`] loop, as the engine runs its shards.
//!
//! - [`NoopHandler`]: parses (the stack does that) and answers 202. The ceiling of the stack.
//! - [`DurableHandler`]: appends each body, length-prefixed, to its thread's file and answers
//!   202 only once a write+fdatasync covering it has returned ([`GroupCommit`]). The floor any
//!   durable ingest must pay, and the bar Kapsel's throughput is held to.
//!
//! They read the same variables as Kapsel: `SERVER_ADDR`, `KAPSEL_SHARDS` (threads),
//! `KAPSEL_DATA_DIR` and `KAPSEL_IO_DRIVER`, and print `<name> listening on http://ADDR` as
//! their first line of standard output once every thread listens. [`run`] also runs the
//! delivery bench's sink (`crate::sink`), on one thread.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc};

use futures_channel::oneshot;
use kapsel_http::{bind_reuse_port, serve, Handler, Request, Response, ServerConfig, Shutdown};

use crate::limits;
use crate::runtime::{block_on, Driver};

/// The body of every 202 the references answer, about the size of Kapsel's.
const ACCEPTED_BODY: &[u8] = br#"{"status":"received"}"#;

/// How a reference server runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `SERVER_ADDR` (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// `KAPSEL_SHARDS` (default: available cores).
    pub threads: usize,
    /// `KAPSEL_DATA_DIR` (default `./reference-data`).
    pub data_directory: PathBuf,
    /// `KAPSEL_IO_DRIVER`.
    pub driver: Driver,
}

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// # Errors
    ///
    /// A value that does not parse, naming its variable.
    pub fn from_env() -> Result<Self, String> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let listen_text = variable("SERVER_ADDR").unwrap_or_else(|| "127.0.0.1:0".into());
        let listen = listen_text.parse().map_err(|_| format!("SERVER_ADDR: `{listen_text}` is not an address"))?;
        let threads = match variable("KAPSEL_SHARDS") {
            Some(text) => match text.trim().parse::<usize>() {
                Ok(count @ 1..=limits::SERVER_SHARDS_MAX) => count,
                _ => {
                    return Err(format!(
                        "KAPSEL_SHARDS: `{text}` is not a number from 1 to {}",
                        limits::SERVER_SHARDS_MAX
                    ))
                }
            },
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let data_directory = PathBuf::from(variable("KAPSEL_DATA_DIR").unwrap_or_else(|| "reference-data".into()));
        Ok(Self { listen, threads, data_directory, driver: Driver::from_env()? })
    }
}

/// Runs `name` until the process is killed: one thread per `settings.threads`, each serving
/// the shared address with the handler `make_handler(thread_index)` built on that thread.
///
/// # Errors
///
/// A thread could not bind, build its runtime or its handler; or a thread ended.
pub fn run<H, F>(name: &str, settings: &Settings, make_handler: F) -> Result<(), String>
where
    H: Handler,
    F: Fn(usize) -> Result<H, String> + Send + Sync + 'static,
{
    let make_handler = Arc::new(make_handler);
    let mut address = settings.listen;
    let mut threads = Vec::with_capacity(settings.threads);
    for index in 0..settings.threads {
        let (bound_sender, bound) = mpsc::channel();
        let (make_handler, driver) = (Arc::clone(&make_handler), settings.driver);
        let thread = std::thread::Builder::new()
            .name(format!("{}-{index}", short_name(name)))
            .spawn(move || {
                let outcome = block_on(driver, async move {
                    let started = bind_reuse_port(address)
                        .map_err(|error| format!("binding {address}: {error}"))
                        .and_then(|listener| Ok((listener.local_addr().map_err(|error| error.to_string())?, listener)))
                        .and_then(|(local, listener)| Ok((local, listener, make_handler(index)?)));
                    match started {
                        Ok((local, listener, handler)) => {
                            let _ = bound_sender.send(Ok(local));
                            let config = Rc::new(ServerConfig::default());
                            serve(listener, config, Rc::new(handler), Shutdown::new()).await;
                            Ok(())
                        }
                        Err(error) => {
                            let _ = bound_sender.send(Err(error.clone()));
                            Err(error)
                        }
                    }
                });
                outcome.and_then(|result| result)
            })
            .map_err(|error| format!("starting thread {index}: {error}"))?;
        // With port 0, the first thread picks the port and the others join it.
        address = bound.recv().map_err(|_| format!("thread {index} ended before listening"))??;
        threads.push(thread);
    }
    let mut stdout = io::stdout();
    let _ = writeln!(stdout, "{name} listening on http://{address}");
    let _ = stdout.flush();
    for (index, thread) in threads.into_iter().enumerate() {
        thread.join().map_err(|_| format!("thread {index} panicked"))??;
    }
    Err("every thread ended".into())
}

/// A thread name that fits Linux's 15 bytes with its index: `ref-noop-0`, `ref-durable-1`,
/// `sink-0`.
fn short_name(name: &str) -> String {
    match name.strip_prefix("reference-") {
        Some(kind) => format!("ref-{kind}"),
        None => name.to_string(),
    }
}

/// Parse (the stack does it) and answer 202.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopHandler;

impl Handler for NoopHandler {
    async fn handle(&self, request: Request) -> Response {
        drop(request);
        Response::json(202, ACCEPTED_BODY.to_vec())
    }
}

/// Append the body to this thread's file, answer 202 once it is durable; 503 E3003 once a
/// write or fdatasync failed (the file is poisoned), 503 E3002 when too much waits already.
pub struct DurableHandler {
    log: Rc<GroupCommit>,
}

impl DurableHandler {
    /// The handler of thread `index`, appending to `<data_directory>/thread-<index>.log`.
    ///
    /// # Errors
    ///
    /// The directory or file could not be created, or the sync thread not started.
    pub fn open(data_directory: &Path, index: usize) -> Result<Self, String> {
        std::fs::create_dir_all(data_directory)
            .map_err(|error| format!("creating {}: {error}", data_directory.display()))?;
        let path = data_directory.join(format!("thread-{index}.log"));
        let log = GroupCommit::open(&path).map_err(|error| format!("opening {}: {error}", path.display()))?;
        Ok(Self { log: Rc::new(log) })
    }
}

impl Handler for DurableHandler {
    async fn handle(&self, request: Request) -> Response {
        match GroupCommit::append(&self.log, &request.body).await {
            Ok(()) => Response::json(202, ACCEPTED_BODY.to_vec()),
            Err(AppendError::Backpressure) => {
                Response::error(503, "E3002", "too many appends waiting").with_header("Retry-After", "1".to_owned())
            }
            Err(AppendError::Poisoned) => Response::error(503, "E3003", "write or fdatasync failed"),
        }
    }
}

/// Why an append was not made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendError {
    /// More than [`limits::GROUP_PENDING_BYTES_MAX`] bytes wait for the next fdatasync.
    Backpressure,
    /// A write or fdatasync failed; nothing is acknowledged after that.
    Poisoned,
}

/// A minimal group commit on one file: appends made while a write+fdatasync is in flight wait
/// in `pending` and go out together in the next one. The write and fdatasync run on a
/// dedicated blocking thread (as kapsel-wal's default I/O backend does), so the shard keeps
/// serving meanwhile. An append resolves `Ok` only after the fdatasync that covers it returned
/// `Ok`.
pub struct GroupCommit {
    state: RefCell<GroupState>,
    syncer: mpsc::Sender<SyncJob>,
}

struct GroupState {
    /// Framed records not yet handed to the sync thread.
    pending: Vec<u8>,
    /// One per record in `pending`, told the outcome of its batch.
    waiters: Vec<oneshot::Sender<bool>>,
    /// A buffer back from the sync thread, reused for the next `pending`.
    spare: Vec<u8>,
    /// Whether a flush task runs; it runs until nothing is pending.
    flushing: bool,
    /// Set after a failed write or fdatasync, never cleared.
    poisoned: bool,
}

/// One batch for the sync thread; the buffer comes back with the outcome.
struct SyncJob {
    batch: Vec<u8>,
    done: oneshot::Sender<(bool, Vec<u8>)>,
}

impl GroupCommit {
    /// Opens (appends to) `path` and starts its sync thread.
    ///
    /// # Errors
    ///
    /// The file could not be opened or the thread not started.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let (syncer, jobs) = mpsc::channel::<SyncJob>();
        let name = path.display().to_string();
        std::thread::Builder::new().name("ref-fsync".into()).spawn(move || sync_thread(&file, &name, &jobs))?;
        let state = GroupState {
            pending: Vec::new(),
            waiters: Vec::new(),
            spare: Vec::new(),
            flushing: false,
            poisoned: false,
        };
        Ok(Self { state: RefCell::new(state), syncer })
    }

    /// Appends `body` (after its length, 4 bytes little-endian) and waits until a
    /// write+fdatasync covering it has returned.
    ///
    /// # Errors
    ///
    /// [`AppendError`].
    pub async fn append(this: &Rc<Self>, body: &[u8]) -> Result<(), AppendError> {
        let durable = {
            let mut state = this.state.borrow_mut();
            if state.poisoned {
                return Err(AppendError::Poisoned);
            }
            let length = u32::try_from(body.len()).map_err(|_| AppendError::Backpressure)?;
            if state.pending.len() + 4 + body.len() > limits::GROUP_PENDING_BYTES_MAX {
                return Err(AppendError::Backpressure);
            }
            state.pending.extend_from_slice(&length.to_le_bytes());
            state.pending.extend_from_slice(body);
            let (sender, receiver) = oneshot::channel();
            state.waiters.push(sender);
            if !state.flushing {
                state.flushing = true;
                monoio::spawn(Self::flush(Rc::clone(this)));
            }
            receiver
        };
        match durable.await {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(AppendError::Poisoned),
        }
    }

    /// Writes and syncs batch after batch until nothing is pending.
    async fn flush(this: Rc<Self>) {
        loop {
            let (batch, waiters) = {
                let mut state = this.state.borrow_mut();
                if state.waiters.is_empty() {
                    state.flushing = false;
                    return;
                }
                let spare = std::mem::take(&mut state.spare);
                (std::mem::replace(&mut state.pending, spare), std::mem::take(&mut state.waiters))
            };
            let (synced, mut buffer) = this.write_and_sync(batch).await;
            {
                let mut state = this.state.borrow_mut();
                // Appends are refused from now on; those already queued fail with the next
                // batch, which the sync thread refuses to write.
                state.poisoned |= !synced;
                buffer.clear();
                state.spare = buffer;
            }
            for waiter in waiters {
                let _ = waiter.send(synced);
            }
        }
    }

    async fn write_and_sync(&self, batch: Vec<u8>) -> (bool, Vec<u8>) {
        let (done, outcome) = oneshot::channel();
        if self.syncer.send(SyncJob { batch, done }).is_err() {
            return (false, Vec::new());
        }
        outcome.await.unwrap_or((false, Vec::new()))
    }
}

/// The sync thread: one `write_all` and one `fdatasync` per batch. After a failure it refuses
/// every later batch: a failed fsync may have dropped dirty pages, so retrying it could report
/// success for data that is gone.
fn sync_thread(file: &File, name: &str, jobs: &mpsc::Receiver<SyncJob>) {
    let mut file = file;
    let mut failed = false;
    for SyncJob { batch, done } in jobs {
        if !failed {
            if let Err(error) = file.write_all(&batch).and_then(|()| file.sync_data()) {
                eprintln!("{name}: write or fdatasync failed, refusing all further appends: {error}");
                failed = true;
            }
        }
        let _ = done.send((!failed, batch));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;

    // The reference is only a fair bar if it is honest: every acknowledged append must be in
    // the file, framed, and appends made during an fsync must share the next one.
    #[test]
    fn acknowledged_appends_are_in_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        let log = Rc::new(GroupCommit::open(&path).unwrap());
        let outcomes = block_on(Driver::Auto, async {
            let tasks: Vec<_> = (0..100u8)
                .map(|index| {
                    let log = Rc::clone(&log);
                    monoio::spawn(async move { GroupCommit::append(&log, &[index; 10]).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(monoio::time::timeout(Duration::from_secs(30), task).await.unwrap());
            }
            outcomes
        })
        .unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 100 * 14);
        let mut seen: Vec<u8> = bytes
            .chunks(14)
            .map(|record| {
                assert_eq!(&record[..4], &10u32.to_le_bytes());
                record[4]
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
    }
}
