//! Name resolution off the shards. The system resolver (`getaddrinfo`, through
//! [`ToSocketAddrs`]) blocks its thread for as long as a lookup takes, seconds when a name
//! server is slow, and a blocked shard delivers nothing. So lookups run on a small pool of
//! resolver threads fed by one bounded queue, and a shard awaits the answer on a oneshot
//! channel while it keeps serving its other work.
//!
//! Answers are cached per (host, port) for a fixed time, failures for a shorter one, and
//! concurrent lookups of the same name share one queue entry: when a popular destination's
//! entry expires, a burst of deliveries to it costs one lookup, not one queue slot each.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::limits;

/// A cache key: the host name, lowercase, and the port (the system resolver takes both).
type Key = (String, u16);

/// What a lookup gave. `io::Error` is not `Clone`, and one answer goes to every waiter and
/// into the cache, so a failure is kept as its kind and message.
type Answer = Result<Vec<SocketAddr>, Failure>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(self.kind, self.message)
    }
}

/// A handle on the resolver threads and their cache. Cheap to clone, `Send` and `Sync`: one
/// resolver serves every shard. The threads end once the last handle is dropped and the queue
/// is drained.
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
}

struct Shared {
    /// Names to look up. Only the handles hold senders, so dropping the last one ends the
    /// threads.
    requests: crossbeam_channel::Sender<Key>,
    state: Arc<Mutex<State>>,
}

/// The cache and the lookups in flight, behind one lock (held only for map operations).
struct State {
    cache: Cache,
    /// Waiters per name being looked up; an entry exists exactly while its name is queued or
    /// being resolved.
    pending: HashMap<Key, Vec<oneshot::Sender<Answer>>>,
}

impl Resolver {
    /// Starts `threads` resolver threads (at least one, at most
    /// [`limits::RESOLVER_THREADS_MAX`]). If none can be started, every lookup of a name fails
    /// (IP literals still resolve); the failure to start is logged.
    #[must_use]
    pub fn new(threads: usize) -> Self {
        let (requests, queue) = crossbeam_channel::bounded(limits::RESOLVER_QUEUE_MAX);
        let state = Arc::new(Mutex::new(State {
            cache: Cache::new(limits::RESOLVER_CACHE_ENTRIES_MAX),
            pending: HashMap::new(),
        }));
        for index in 0..threads.clamp(1, limits::RESOLVER_THREADS_MAX) {
            let queue = queue.clone();
            let state = state.clone();
            let spawned =
                std::thread::Builder::new().name(format!("kapsel-resolve-{index}")).spawn(move || work(&queue, &state));
            if let Err(error) = spawned {
                tracing::warn!(%error, "starting a resolver thread failed");
            }
        }
        // Without any thread the queue's last receiver goes here, and every send fails at once
        // instead of waiting for a thread that will never come.
        drop(queue);
        Self { shared: Arc::new(Shared { requests, state }) }
    }

    /// The addresses of `host` (a name, or an IP literal, which is returned as is) at `port`,
    /// in the system resolver's order, at most [`limits::RESOLVED_ADDRESSES_MAX`] of them.
    /// Awaits a resolver thread without blocking the calling runtime.
    ///
    /// # Errors
    ///
    /// The resolver's failure (an unknown name is `NotFound` or the system's own error; a name
    /// under `.invalid` is `NotFound` at once, without a lookup),
    /// `WouldBlock` when the queue or the name's waiter list is full, and `Other` when no
    /// resolver thread is running.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let literal = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host);
        if let Ok(address) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(address, port)]);
        }
        if is_under_invalid(host) {
            // RFC 6761 §6.4: name resolution APIs "SHOULD always return immediate negative
            // responses" for .invalid; the system resolver may instead ask a name server, and a
            // slow one would hold a resolver thread for seconds.
            let message = format!("{host} is under .invalid, which never resolves (RFC 6761)");
            return Err(io::Error::new(io::ErrorKind::NotFound, message));
        }
        let key = (host.to_ascii_lowercase(), port);
        let receiver = match self.enqueue(key)? {
            Enqueued::Cached(answer) => return answer.map_err(Failure::into_io),
            Enqueued::Waiting(receiver) => receiver,
        };
        match receiver.await {
            Ok(answer) => answer.map_err(Failure::into_io),
            Err(oneshot::Canceled) => Err(io::Error::other("the resolver stopped before answering")),
        }
    }

    /// Answers from the cache, or registers a waiter for the name (queueing it if nobody is
    /// looking it up yet).
    fn enqueue(&self, key: Key) -> io::Result<Enqueued> {
        let mut state = lock(&self.shared.state);
        if let Some(answer) = state.cache.get(&key, Instant::now()) {
            return Ok(Enqueued::Cached(answer));
        }
        let (sender, receiver) = oneshot::channel();
        if let Some(waiters) = state.pending.get_mut(&key) {
            if waiters.len() >= limits::RESOLVER_WAITERS_PER_NAME_MAX {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "too many lookups of one name are waiting"));
            }
            waiters.push(sender);
            return Ok(Enqueued::Waiting(receiver));
        }
        match self.shared.requests.try_send(key.clone()) {
            Ok(()) => {
                state.pending.insert(key, vec![sender]);
                Ok(Enqueued::Waiting(receiver))
            }
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                Err(io::Error::new(io::ErrorKind::WouldBlock, "the resolver queue is full"))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                Err(io::Error::other("no resolver thread is running"))
            }
        }
    }
}

enum Enqueued {
    Cached(Answer),
    Waiting(oneshot::Receiver<Answer>),
}

/// Whether `host` is `invalid` or a name under it, in any case, with or without the root's
/// trailing dot.
fn is_under_invalid(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    let last_label = name.rsplit('.').next().unwrap_or(name);
    last_label.eq_ignore_ascii_case("invalid")
}

/// A resolver thread: looks up queued names until every handle is gone.
fn work(queue: &crossbeam_channel::Receiver<Key>, state: &Mutex<State>) {
    for key in queue.iter() {
        let answer = lookup(&key.0, key.1);
        answer_waiters(state, key, answer, Instant::now());
    }
}

/// Caches the answer for `key` and hands it to everyone waiting for it.
fn answer_waiters(state: &Mutex<State>, key: Key, answer: Answer, now: Instant) {
    let waiters = {
        let mut state = lock(state);
        state.cache.insert(key.clone(), answer.clone(), now);
        state.pending.remove(&key).unwrap_or_default()
    };
    for waiter in waiters {
        // A waiter whose delivery timed out has dropped its receiver; nothing to tell it.
        let _ = waiter.send(answer.clone());
    }
}

/// One blocking lookup through the system resolver.
fn lookup(host: &str, port: u16) -> Answer {
    match (host, port).to_socket_addrs() {
        Ok(addresses) => {
            let mut unique: Vec<SocketAddr> = Vec::new();
            for address in addresses {
                if unique.len() == limits::RESOLVED_ADDRESSES_MAX {
                    break;
                }
                if !unique.contains(&address) {
                    unique.push(address);
                }
            }
            if unique.is_empty() {
                return Err(Failure::new(io::ErrorKind::NotFound, format!("{host} has no address")));
            }
            Ok(unique)
        }
        Err(error) => Err(Failure::new(error.kind(), format!("resolving {host}: {error}"))),
    }
}

/// The lock is only held for map operations that cannot panic, so a poisoned lock (which
/// would take a panic elsewhere) still guards consistent data.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers by name with their expiry. Pure: the time is an argument.
struct Cache {
    entries: HashMap<Key, Entry>,
    entries_max: usize,
}

struct Entry {
    answer: Answer,
    expires_at: Instant,
}

impl Cache {
    fn new(entries_max: usize) -> Self {
        Self { entries: HashMap::new(), entries_max: entries_max.max(1) }
    }

    /// The answer for `key` if it has not expired at `now`.
    fn get(&self, key: &Key, now: Instant) -> Option<Answer> {
        self.entries.get(key).filter(|entry| now < entry.expires_at).map(|entry| entry.answer.clone())
    }

    /// Keeps `answer` for [`limits::RESOLVER_CACHE_TTL_MS`] from `now`, or
    /// [`limits::RESOLVER_NEGATIVE_TTL_MS`] for a failure. When the cache is full, expired
    /// entries go first, then the one closest to expiry.
    fn insert(&mut self, key: Key, answer: Answer, now: Instant) {
        let ttl_ms = if answer.is_ok() { limits::RESOLVER_CACHE_TTL_MS } else { limits::RESOLVER_NEGATIVE_TTL_MS };
        let expires_at = now.checked_add(Duration::from_millis(ttl_ms)).unwrap_or(now);
        if self.entries.len() >= self.entries_max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, entry| now < entry.expires_at);
        }
        if self.entries.len() >= self.entries_max && !self.entries.contains_key(&key) {
            let soonest = self.entries.iter().min_by_key(|(_, entry)| entry.expires_at).map(|(key, _)| key.clone());
            if let Some(soonest) = soonest {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, Entry { answer, expires_at });
        debug_assert!(self.entries.len() <= self.entries_max);
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(host: &str) -> Key {
        (host.to_owned(), 443)
    }

    fn found(last_octet: u8) -> Answer {
        Ok(vec![SocketAddr::from(([192, 0, 2, last_octet], 443))])
    }

    #[test]
    fn cached_answers_expire_after_their_ttl() {
        // A destination that moves must be followed within the TTL, and a dead name retried
        // sooner than a live one is refreshed.
        let start = Instant::now();
        let mut cache = Cache::new(8);
        cache.insert(key("up.example"), found(1), start);
        cache.insert(key("down.example"), Err(Failure::new(io::ErrorKind::NotFound, "gone")), start);
        let just_before = |ttl_ms: u64| start + Duration::from_millis(ttl_ms - 1);
        let at = |ttl_ms: u64| start + Duration::from_millis(ttl_ms);
        assert_eq!(cache.get(&key("up.example"), just_before(limits::RESOLVER_CACHE_TTL_MS)), Some(found(1)));
        assert_eq!(cache.get(&key("up.example"), at(limits::RESOLVER_CACHE_TTL_MS)), None);
        assert!(cache.get(&key("down.example"), just_before(limits::RESOLVER_NEGATIVE_TTL_MS)).is_some());
        assert_eq!(cache.get(&key("down.example"), at(limits::RESOLVER_NEGATIVE_TTL_MS)), None);
        assert_eq!(cache.get(&key("other.example"), start), None);
    }

    #[test]
    fn a_full_cache_evicts_expired_then_soonest_entries() {
        // The cache is bounded: a stream of distinct names must not grow it, and evicting the
        // entry closest to expiry loses the least.
        let start = Instant::now();
        let mut cache = Cache::new(2);
        cache.insert(key("a"), found(1), start);
        cache.insert(key("b"), found(2), start + Duration::from_secs(1));
        cache.insert(key("c"), found(3), start + Duration::from_secs(2));
        assert_eq!(cache.entries.len(), 2);
        let later = start + Duration::from_secs(3);
        assert_eq!(cache.get(&key("a"), later), None);
        assert_eq!(cache.get(&key("c"), later), Some(found(3)));
        // `a` and `b` expired by now; both go, and `d` fits without evicting `c`.
        let much_later = start + Duration::from_millis(limits::RESOLVER_CACHE_TTL_MS + 1500);
        cache.insert(key("d"), found(4), much_later);
        assert_eq!(cache.get(&key("c"), much_later), Some(found(3)));
        assert_eq!(cache.get(&key("d"), much_later), Some(found(4)));
        // Replacing an entry never evicts another.
        cache.insert(key("d"), found(5), much_later);
        assert_eq!(cache.get(&key("c"), much_later), Some(found(3)));
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(future)
    }

    #[test]
    fn names_resolve_off_the_runtime_and_literals_skip_the_threads() {
        // A shard awaits the lookup on its own runtime; IP literals never wait for a thread.
        let resolver = Resolver::new(2);
        let literal = block_on(resolver.resolve("[::1]", 8080)).unwrap();
        assert_eq!(literal, vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8080))]);
        let addresses = block_on(resolver.resolve("localhost", 9)).unwrap();
        assert!(addresses.iter().all(|address| address.ip().is_loopback() && address.port() == 9), "{addresses:?}");
        // The answer is cached now.
        assert!(lock(&resolver.shared.state).cache.get(&("localhost".to_owned(), 9), Instant::now()).is_some());
        let error = block_on(resolver.resolve("does-not-exist.invalid", 80)).unwrap_err();
        assert!(error.to_string().contains("does-not-exist.invalid"), "{error}");
    }

    #[test]
    fn names_under_invalid_fail_at_once_without_a_lookup() {
        // RFC 6761: .invalid never resolves, so asking a name server for it can only cost a
        // resolver thread the server's timeout. Only the last label counts.
        let (requests, queue) = crossbeam_channel::bounded(4);
        let state = Arc::new(Mutex::new(State { cache: Cache::new(8), pending: HashMap::new() }));
        let resolver = Resolver { shared: Arc::new(Shared { requests, state }) };
        for name in ["hook.invalid", "a.b.INVALID", "invalid", "hook.invalid."] {
            let error = block_on(resolver.resolve(name, 443)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotFound, "{name}");
            assert!(error.to_string().contains("RFC 6761"), "{name}: {error}");
        }
        assert!(queue.is_empty(), "nothing was queued for a lookup");
        for name in ["invalid.example", "notinvalid", "invalid-name.test"] {
            assert!(!is_under_invalid(name), "{name}");
        }
    }

    #[test]
    fn concurrent_lookups_of_one_name_share_a_queue_entry() {
        // When a hot destination's entry expires, every delivery to it asks at once; they must
        // share one lookup instead of filling the queue. The test plays the resolver thread.
        let (requests, queue) = crossbeam_channel::bounded(4);
        let state = Arc::new(Mutex::new(State { cache: Cache::new(8), pending: HashMap::new() }));
        let resolver = Resolver { shared: Arc::new(Shared { requests, state: state.clone() }) };
        let receivers: Vec<_> = (0..50)
            .map(|_| match resolver.enqueue(key("hot.example")) {
                Ok(Enqueued::Waiting(receiver)) => receiver,
                _ => panic!("expected to wait for the lookup"),
            })
            .collect();
        assert_eq!(queue.len(), 1);
        assert_eq!(lock(&state).pending.get(&key("hot.example")).map(Vec::len), Some(50));
        let queued = queue.try_recv().unwrap();
        answer_waiters(&state, queued, found(7), Instant::now());
        for receiver in receivers {
            assert_eq!(block_on(receiver), Ok(found(7)));
        }
        assert!(lock(&state).pending.is_empty());
        assert!(matches!(resolver.enqueue(key("hot.example")), Ok(Enqueued::Cached(Ok(_)))));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_resolver_without_threads_fails_fast() {
        // If no thread could start, a lookup must fail at once rather than wait for the
        // delivery timeout.
        let (requests, queue) = crossbeam_channel::bounded(1);
        drop(queue);
        let state = Arc::new(Mutex::new(State { cache: Cache::new(1), pending: HashMap::new() }));
        let resolver = Resolver { shared: Arc::new(Shared { requests, state }) };
        let error = block_on(resolver.resolve("localhost", 80)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Other);
        assert_eq!(block_on(resolver.resolve("127.0.0.1", 80)).unwrap().len(), 1);
    }
}
