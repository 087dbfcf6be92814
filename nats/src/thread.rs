//! The link thread: one tokio current-thread runtime running async-nats, taking commands from
//! the bounded queue and running each as its own task, so many publishes wait on their
//! acknowledgements at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::{mpsc, Semaphore};

use crate::errors::{full_text, LinkError};
use crate::limits;
use crate::model::{LinkCounters, LinkOptions};

/// A command: what to run on the link thread, given the connection. It answers its caller on a
/// oneshot of its own, captured when it was made.
pub(crate) type Job = Box<dyn FnOnce(Arc<Session>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The connection as the link thread's tasks use it.
pub(crate) struct Session {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) options: LinkOptions,
    pub(crate) counters: Arc<Counters>,
    /// Random per link: with [`Session::next_id`] it makes message ids no other link makes.
    link_id: u64,
    ids: AtomicU64,
}

impl Session {
    /// A message id unique to this write (for the bucket's writes, so that their retries are
    /// recognised as duplicates).
    pub(crate) fn next_id(&self) -> String {
        format!("kapsel-{:016x}-{}", self.link_id, self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

/// Counters shared by the link thread and every handle.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) publishes: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) direct_gets: AtomicU64,
    pub(crate) leader_gets: AtomicU64,
    pub(crate) consumer_errors: AtomicU64,
    pub(crate) requests_refused: AtomicU64,
    pub(crate) connected: AtomicBool,
    /// The largest message the server takes (its `max_payload`), as it said when connected.
    pub(crate) max_payload: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> LinkCounters {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkCounters {
            publishes: read(&self.publishes),
            acks: read(&self.acks),
            duplicates: read(&self.duplicates),
            retries: read(&self.retries),
            errors: read(&self.errors),
            busy: read(&self.busy),
            reconnects: read(&self.connections).saturating_sub(1),
            disconnects: read(&self.disconnects),
            direct_gets: read(&self.direct_gets),
            leader_gets: read(&self.leader_gets),
            consumer_errors: read(&self.consumer_errors),
            requests_refused: read(&self.requests_refused),
        }
    }
}

/// What `Link::connect` gets back from a started thread.
pub(crate) struct Started {
    pub(crate) commands: mpsc::Sender<Job>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) stop: futures_channel::oneshot::Sender<()>,
}

/// Starts the link thread and waits (at most the connect timeout, and a second for the thread
/// to say so) until it has connected.
pub(crate) fn start(options: LinkOptions, counters: Arc<Counters>) -> Result<Started, LinkError> {
    let (commands, queue) = mpsc::channel(options.command_capacity.max(1));
    let (stop, stopped) = futures_channel::oneshot::channel();
    let (ready_sender, ready) = std::sync::mpsc::sync_channel(1);
    let wait = options.connect_timeout + Duration::from_secs(1);
    let urls = options.urls.join(",");
    let thread = std::thread::Builder::new()
        .name(format!("nats-{}", options.name))
        .spawn(move || run(options, counters, queue, stopped, ready_sender))
        .map_err(|error| LinkError::Connect {
            urls: urls.clone(),
            reason: format!("cannot start the thread: {error}"),
        })?;
    match ready.recv_timeout(wait) {
        Ok(Ok(())) => Ok(Started { commands, thread, stop }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(LinkError::Connect { urls, reason: format!("the link thread did not answer in {wait:?}") }),
    }
}

/// The thread's body: a runtime, a connection, then commands until the queue closes (every
/// handle dropped) or `stopped` fires (`Link::close`).
fn run(
    options: LinkOptions,
    counters: Arc<Counters>,
    queue: mpsc::Receiver<Job>,
    stopped: futures_channel::oneshot::Receiver<()>,
    ready: std::sync::mpsc::SyncSender<Result<(), LinkError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let reason = format!("cannot build the runtime: {error}");
            let _ = ready.send(Err(LinkError::Connect { urls: options.urls.join(","), reason }));
            return;
        }
    };
    runtime.block_on(async move {
        let client = match connect(&options, counters.clone()).await {
            Ok(client) => client,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(options.publish_timeout)
            .max_ack_inflight(options.in_flight_max.max(1))
            .build(client.clone());
        counters.connected.store(true, Ordering::Relaxed);
        counters.max_payload.store(client.server_info().max_payload as u64, Ordering::Relaxed);
        let session = Arc::new(Session {
            client: client.clone(),
            jetstream,
            options,
            counters,
            link_id: getrandom::u64().unwrap_or_default(),
            ids: AtomicU64::new(0),
        });
        let _ = ready.send(Ok(()));
        serve_commands(session, queue, stopped).await;
        let flush = Duration::from_millis(limits::FLUSH_ON_CLOSE_MS_MAX);
        let _ = tokio::time::timeout(flush, client.flush()).await;
    });
    // Dropping the runtime drops the tasks still running: their callers get `Closed`.
}

/// Takes commands while fewer than `in_flight_max` run; each runs as its own task.
async fn serve_commands(
    session: Arc<Session>,
    mut queue: mpsc::Receiver<Job>,
    mut stopped: futures_channel::oneshot::Receiver<()>,
) {
    let running = Arc::new(Semaphore::new(session.options.in_flight_max.max(1)));
    loop {
        let permit = tokio::select! {
            permit = running.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = &mut stopped => return,
        };
        let job = tokio::select! {
            job = queue.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = &mut stopped => return,
        };
        let work = job(session.clone());
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Connects to one of the URLs, with no retry of the first connection (a dead URL list fails
/// within the connect timeout) and unlimited reconnection afterwards.
async fn connect(options: &LinkOptions, counters: Arc<Counters>) -> Result<async_nats::Client, LinkError> {
    let urls = options.urls.join(",");
    if options.urls.is_empty() {
        return Err(LinkError::Connect { urls, reason: "no URL given".into() });
    }
    let connect_options = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.publish_timeout))
        .subscription_capacity(limits::SUBSCRIPTION_CAPACITY)
        .client_capacity(limits::CLIENT_CAPACITY)
        .event_callback(move |event| {
            let counters = counters.clone();
            async move { observe(&counters, event) }
        });
    let attempt = connect_options.connect(options.urls.clone());
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(LinkError::Connect { urls, reason: full_text(&error) }),
        Err(_) => {
            Err(LinkError::Connect { urls, reason: format!("not connected within {:?}", options.connect_timeout) })
        }
    }
}

/// The client's connection events, as counters and the connected flag.
fn observe(counters: &Counters, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            count(&counters.connections);
            counters.connected.store(true, Ordering::Relaxed);
        }
        async_nats::Event::Disconnected => {
            count(&counters.disconnects);
            counters.connected.store(false, Ordering::Relaxed);
        }
        async_nats::Event::Closed => counters.connected.store(false, Ordering::Relaxed),
        other => tracing::debug!(event = %other, "NATS client event"),
    }
}
