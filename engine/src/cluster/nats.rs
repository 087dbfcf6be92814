//! The cluster's streams and bucket on NATS JetStream, through the link thread
//! (`kapsel-nats`): a partition's stream for its shard ([`NatsStream`], [`NatsFeed`]), the
//! lease bucket ([`NatsBucket`]) and what a node creates at start ([`prepare`]).
//!
//! Subjects of partition `n` (stream `KAPSEL_P<n>`): `kapsel.p.<n>.in` for events from any
//! node, `kapsel.p.<n>.k.<hash>` for events with an idempotency key (published only if the
//! subject is empty), `kapsel.p.<n>.cfg` for endpoint changes from any node, `kapsel.p.<n>.own`
//! for what the owner writes. Each message carries its engine record kind in `Kapsel-Kind` and,
//! when an owner wrote it, its lease epoch in `Kapsel-Epoch`; the body is the record as the
//! local log would hold it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use kapsel_nats::{Link, LinkError, Message, Publish, StreamSpec};

use crate::cluster::bucket::{Answer as BucketAnswer, Bucket, BucketError, KeyValue};
use crate::cluster::seal::{self, ProveError, SEAL_RANGE};
use crate::model::records::Record;
use crate::shard::stream::{
    Answer, Feed, Outgoing, PartitionStream, ProofError, Publishing, StoredSnapshot, StreamRecord, KIND_SNAPSHOT,
};
use crate::state::Writer;

/// The bucket of leases and heartbeats.
pub const BUCKET: &str = "kapsel_cluster";
/// Header carrying a message's engine record kind.
pub const HEADER_KIND: &str = "Kapsel-Kind";
/// Header carrying the lease epoch an owner wrote a message under.
pub const HEADER_EPOCH: &str = "Kapsel-Epoch";
/// `Nats-Msg-Id` window of the partitions' streams: long enough for a publish retried through
/// a leader election, short so the servers hold few ids (ADR 17).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream of partition `partition`.
pub fn stream_name(partition: u32) -> String {
    format!("KAPSEL_P{partition}")
}

/// A subject of partition `partition` (`in`, `cfg`, `own`, `k.<hash>`).
pub fn subject(partition: u32, tail: &str) -> String {
    format!("kapsel.p.{partition}.{tail}")
}

/// Creates what the cluster needs if it is missing: the bucket and every partition's stream.
/// Blocks: called once at start, before the shards run.
pub fn prepare(link: &Link, partitions: u32, replicas: usize) -> Result<(), String> {
    block_on(link.ensure_bucket(BUCKET, replicas)).map_err(|error| format!("the cluster's bucket: {error}"))?;
    for partition in 0..partitions {
        let mut spec = StreamSpec::new(stream_name(partition), vec![subject(partition, ">")], replicas);
        spec.duplicate_window = DUPLICATE_WINDOW;
        block_on(link.ensure_stream(spec)).map_err(|error| format!("stream of partition {partition}: {error}"))?;
    }
    Ok(())
}

/// Whether this node may still write as a partition's owner now (its lease holds by its clock).
pub type LeaseGuard = Arc<dyn Fn() -> bool + Send + Sync>;

/// Partition `partition`'s stream through the link.
pub struct NatsStream {
    link: Link,
    partition: u32,
    stream: String,
    guard: Option<LeaseGuard>,
}

impl NatsStream {
    /// The stream of `partition`.
    pub fn new(link: Link, partition: u32) -> Self {
        Self { link, partition, stream: stream_name(partition), guard: None }
    }

    /// Refuses the owner's writes once `guard` says the lease no longer holds: an owner paused
    /// past its lease (SIGSTOP, a long GC-like stall, a VM migration) does not write when it
    /// wakes. A write decided just before the pause may still land late; the epoch fence in
    /// the log makes that one change nothing.
    pub fn with_guard(mut self, guard: LeaseGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The subject a record goes to: events and endpoint changes from any node on their own
    /// subjects, whatever an owner writes on `own`.
    fn subject_of(&self, outgoing: &Outgoing) -> String {
        let tail = match outgoing.writer {
            Writer::Owner { .. } if outgoing.kind == KIND_SNAPSHOT => "snap",
            Writer::Owner { .. } => "own",
            Writer::Anyone if Record::is_config_kind(outgoing.kind) => "cfg",
            Writer::Anyone => "in",
        };
        subject(self.partition, tail)
    }
}

/// The headers of a record written by `writer`.
pub fn headers(kind: u8, writer: Writer) -> Vec<(String, String)> {
    let mut headers = vec![(HEADER_KIND.to_string(), kind.to_string())];
    if let Writer::Owner { epoch } = writer {
        headers.push((HEADER_EPOCH.to_string(), epoch.to_string()));
    }
    headers
}

/// A message as the record it carries; a message without a kind gets kind 0, which no record
/// has, so applying it fails loudly instead of skipping it.
pub fn record_of(message: Message) -> StreamRecord {
    let kind = message.header(HEADER_KIND).and_then(|kind| kind.parse().ok()).unwrap_or(0);
    let writer = match message.header(HEADER_EPOCH).and_then(|epoch| epoch.parse().ok()) {
        Some(epoch) => Writer::Owner { epoch },
        None => Writer::Anyone,
    };
    StreamRecord { sequence: message.sequence, writer, kind, body: message.payload }
}

impl PartitionStream for NatsStream {
    fn publish(&self, outgoing: Outgoing) -> Publishing {
        let owners = matches!(outgoing.writer, Writer::Owner { .. });
        if owners && self.guard.as_ref().is_some_and(|holds| !holds()) {
            let refused = format!("the lease of partition {} has lapsed: not writing as its owner", self.partition);
            return Box::pin(std::future::ready(Err(refused)));
        }
        let mut id = [0u8; 16];
        // Retries inside the link carry this id, so a publish is stored once.
        let msg_id = getrandom::fill(&mut id).ok().map(|()| format!("{:032x}", u128::from_le_bytes(id)));
        let publish = Publish {
            subject: self.subject_of(&outgoing),
            headers: headers(outgoing.kind, outgoing.writer),
            payload: outgoing.body,
            msg_id,
            ..Publish::default()
        };
        let reply = self.link.publish(publish);
        Box::pin(async move { reply.await.map(|ack| ack.sequence).map_err(|error| error.to_string()) })
    }

    fn writable(&self) -> bool {
        self.guard.as_ref().is_none_or(|holds| holds())
    }

    fn extent(&self) -> Answer<(u64, u64)> {
        let reply = self.link.stream_state(self.stream.clone());
        Box::pin(async move {
            reply.await.map(|state| (state.first_sequence, state.last_sequence)).map_err(|error| error.to_string())
        })
    }

    fn stored_at(&self, sequence: u64) -> Answer<Option<u64>> {
        let reply = self.link.get(self.stream.clone(), sequence);
        Box::pin(async move {
            let message = reply.await.map_err(|error| error.to_string())?;
            Ok(message.map(|message| u64::try_from(message.time_ms).unwrap_or(0)))
        })
    }

    fn purge_below(&self, sequence: u64) -> Answer<u64> {
        if self.guard.as_ref().is_some_and(|holds| !holds()) {
            let refused = format!("the lease of partition {} has lapsed: not purging as its owner", self.partition);
            return Box::pin(std::future::ready(Err(refused)));
        }
        let (link, partition, stream) = (self.link.clone(), self.partition, self.stream.clone());
        Box::pin(async move {
            // Nothing leaves the stream before its range is sealed, and no sealed range is cut
            // in two: the audit keeps attesting what retention removed.
            let below = sequence.saturating_sub(1);
            while seal::seal_up_to(&link, partition, below, SEAL_RANGE).await?.len() >= seal::SEALS_PER_CALL_MAX {}
            let sealed = seal::sealed_through(&link, partition, below, SEAL_RANGE).await?;
            let bound = seal::purge_bound(sequence, sealed, SEAL_RANGE);
            if bound <= 1 {
                return Ok(0);
            }
            link.purge(stream, None, Some(bound)).await.map_err(|error| error.to_string())
        })
    }

    fn prove(&self, sequence: u64) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, ProofError>>>> {
        let (link, partition) = (self.link.clone(), self.partition);
        Box::pin(async move {
            seal::prove(&link, partition, sequence, SEAL_RANGE).await.map_err(|error| match error {
                ProveError::NotSealed => ProofError::NotSealed,
                ProveError::NotFound => ProofError::Gone("no message at that sequence in its sealed range".into()),
                ProveError::Purged => ProofError::Gone("its range was purged by retention".into()),
                ProveError::Corrupt(reason) => ProofError::Unavailable(format!("the seal does not match: {reason}")),
                ProveError::Unavailable(reason) => ProofError::Unavailable(reason),
            })
        })
    }

    fn last_snapshot(&self) -> Answer<Option<StoredSnapshot>> {
        let reply = self.link.last_on_subject(self.stream.clone(), subject(self.partition, "snap"));
        Box::pin(async move {
            let message = reply.await.map_err(|error| error.to_string())?;
            Ok(message.map(|message| {
                let record = record_of(message);
                let epoch = match record.writer {
                    Writer::Owner { epoch } => epoch,
                    Writer::Anyone => 0,
                };
                StoredSnapshot { sequence: record.sequence, epoch, body: record.body }
            }))
        })
    }

    fn read(&self, sequences: &[u64]) -> Vec<Result<StreamRecord, String>> {
        // Asked all at once, answered as they come.
        let replies: Vec<_> = sequences.iter().map(|sequence| self.link.get(self.stream.clone(), *sequence)).collect();
        replies
            .into_iter()
            .zip(sequences)
            .map(|(reply, sequence)| match block_on(reply) {
                Ok(Some(message)) => Ok(record_of(message)),
                Ok(None) => Err(format!("no message at sequence {sequence} of {}", self.stream)),
                Err(error) => Err(error.to_string()),
            })
            .collect()
    }
}

/// A partition's feed from an ordered consumer.
pub struct NatsFeed {
    feed: kapsel_nats::Feed,
    partition: u32,
}

impl NatsFeed {
    /// An ordered consumer of `partition`'s whole stream from `start_sequence`, holding at
    /// most `capacity` messages the shard has not taken.
    pub async fn open(link: &Link, partition: u32, start_sequence: u64, capacity: usize) -> Result<Self, LinkError> {
        Self::open_subject(link, partition, ">", start_sequence, capacity).await
    }

    /// An ordered consumer of one subject of `partition`'s stream (`cfg`: its configuration).
    pub async fn open_subject(
        link: &Link,
        partition: u32,
        tail: &str,
        start_sequence: u64,
        capacity: usize,
    ) -> Result<Self, LinkError> {
        let feed = link.consume(stream_name(partition), subject(partition, tail), start_sequence, capacity).await?;
        Ok(Self { feed, partition })
    }
}

impl Feed for NatsFeed {
    fn poll_record(&mut self, context: &mut Context<'_>) -> Poll<Option<StreamRecord>> {
        match futures_core::Stream::poll_next(std::pin::Pin::new(&mut self.feed), context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(record_of(message))),
            Poll::Ready(Some(Err(error))) => {
                tracing::error!(partition = self.partition, %error, "the partition's consumer ended");
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
        }
    }
}

/// The partitions' streams as the index thread reads them (`crate::index::Logs::Streams`).
pub struct IndexSource {
    link: Link,
}

impl IndexSource {
    /// Reads through `link`.
    pub fn new(link: Link) -> Self {
        Self { link }
    }
}

/// Records the index reads ahead of itself from a stream, at most.
const INDEX_FEED_CAPACITY: usize = 1024;

impl crate::index::StreamSource for IndexSource {
    fn open(&self, partition: usize, from: u64) -> crate::index::streams::Opening {
        let link = self.link.clone();
        Box::pin(async move {
            let partition = u32::try_from(partition).map_err(|_| format!("no partition {partition}"))?;
            let feed = NatsFeed::open(&link, partition, from.max(1), INDEX_FEED_CAPACITY)
                .await
                .map_err(|error| format!("reading partition {partition}'s stream: {error}"))?;
            Ok(Box::new(feed) as Box<dyn Feed>)
        })
    }
}

/// The lease bucket through the link.
#[derive(Clone)]
pub struct NatsBucket {
    link: Link,
}

impl NatsBucket {
    /// The cluster's bucket.
    pub fn new(link: Link) -> Self {
        Self { link }
    }
}

fn kv_error(error: kapsel_nats::KvError) -> BucketError {
    match error {
        kapsel_nats::KvError::Exists { .. } => BucketError::Exists,
        kapsel_nats::KvError::WrongRevision { current } => BucketError::WrongRevision(current),
        other => BucketError::Unavailable(other.to_string()),
    }
}

impl Bucket for NatsBucket {
    fn create(&self, key: &str, value: Vec<u8>) -> BucketAnswer<u64> {
        let reply = self.link.kv_create(BUCKET, key, value);
        Box::pin(async move { reply.await.map_err(kv_error) })
    }

    fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> BucketAnswer<u64> {
        let reply = self.link.kv_update(BUCKET, key, value, revision);
        Box::pin(async move { reply.await.map_err(kv_error) })
    }

    fn put(&self, key: &str, value: Vec<u8>) -> BucketAnswer<u64> {
        // One writer per key (a node's heartbeat): an unconditional write on the subject.
        let reply = self.link.publish(Publish::new(format!("$KV.{BUCKET}.{key}"), value));
        Box::pin(async move {
            reply.await.map(|ack| ack.sequence).map_err(|error| BucketError::Unavailable(error.to_string()))
        })
    }

    fn entries(&self, prefix: &str) -> BucketAnswer<Vec<KeyValue>> {
        let reply = self.link.kv_entries(BUCKET, prefix);
        Box::pin(async move {
            let entries = reply.await.map_err(|error| BucketError::Unavailable(error.to_string()))?;
            Ok(entries
                .into_iter()
                .map(|(key, entry)| KeyValue { key, value: entry.value, revision: entry.revision })
                .collect())
        })
    }

    fn delete(&self, key: &str) -> BucketAnswer<()> {
        let reply = self.link.kv_delete(BUCKET, key);
        Box::pin(async move { reply.await.map(|_| ()).map_err(|error| BucketError::Unavailable(error.to_string())) })
    }
}

/// Waits for a link answer on a plain thread (start-up, the reader thread): the link's futures
/// need no reactor, so parking until woken is enough.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
