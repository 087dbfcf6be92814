//! The index thread's writing side: gathers changes per shard in LSN order, fills gaps from the
//! logs, and commits batches together with the shards' checkpoints.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use kapsel_wal::tail::Reader;
use tokio_postgres::{Client, Config, NoTls};

use super::rows::{self, Change, Row};
use super::{schema, IndexStatus};
use crate::clock::now_ms;
use crate::model::records::Record;

/// Rows per transaction.
const BATCH_ROWS_MAX: usize = 4096;
/// Changes held per shard while Postgres is slow or down; later ones are read back from the log.
const PENDING_PER_SHARD_MAX: usize = 32_768;
/// Pause between rounds while changes flow, and while idle.
const TICK_BUSY: Duration = Duration::from_millis(10);
const TICK_IDLE: Duration = Duration::from_millis(100);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a connection attempt or a batch's transaction may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown may spend indexing what is left.
const DRAIN_AT_STOP: Duration = Duration::from_secs(5);

struct ShardCursor {
    /// The next LSN to put in a batch.
    next: u64,
    /// Changes from the channel, in LSN order, not yet in a batch.
    pending: VecDeque<Change>,
    /// Reads gaps back from the log.
    reader: Option<Reader>,
    directory: PathBuf,
}

pub(super) struct Writer {
    config: Config,
    status: Arc<IndexStatus>,
    changes: Receiver<Change>,
    shards: Vec<ShardCursor>,
    client: Option<Client>,
    /// The last problem logged, so each state change is logged once.
    last_problem: Option<String>,
}

impl Writer {
    pub(super) fn new(config: Config, status: Arc<IndexStatus>, changes: Receiver<Change>, data: PathBuf) -> Self {
        let shards = (0..status.shards.len())
            .map(|index| ShardCursor {
                next: 1,
                pending: VecDeque::new(),
                reader: None,
                directory: data.join("wal").join(format!("shard-{index}")),
            })
            .collect();
        Self { config, status, changes, shards, client: None, last_problem: None }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut stop_deadline = None;
        loop {
            if self.status.stop.load(Ordering::Acquire) {
                if self.client.as_ref().is_none_or(Client::is_closed) {
                    break;
                }
                let deadline = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_AT_STOP);
                if self.status.lag_records() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            if self.client.as_ref().is_none_or(Client::is_closed) {
                self.status.connected.store(false, Ordering::Release);
                self.client = None;
                match self.connect().await {
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(problem) => {
                        self.problem(problem);
                        self.drain_channel();
                        self.track_lag();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let batch = self.gather();
            self.status.passes.fetch_add(1, Ordering::Relaxed);
            self.track_lag();
            if batch.is_empty() {
                let quiet = self.status.lag_records() == 0;
                tokio::time::sleep(if quiet { TICK_IDLE } else { TICK_BUSY }).await;
                continue;
            }
            match self.commit(&batch).await {
                Ok(()) => {
                    for change in batch.iter().rev() {
                        let progress = &self.status.shards[change.shard];
                        if progress.indexed() < change.lsn {
                            progress.indexed.store(change.lsn, Ordering::Release);
                        }
                    }
                    self.status.rows_indexed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.track_lag();
                }
                Err(problem) => {
                    self.problem(problem);
                    // What the batch held comes back from the logs.
                    for (index, cursor) in self.shards.iter_mut().enumerate() {
                        cursor.next = self.status.shards[index].indexed() + 1;
                        cursor.reader = None;
                    }
                    self.client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::info!(lag_records = self.status.lag_records(), "index stopped");
    }

    /// Logs a problem once, until things change.
    fn problem(&mut self, problem: String) {
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!(%problem, "index unavailable; ingest and delivery go on, the index catches up later");
            self.last_problem = Some(problem);
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let mut config = self.config.clone();
        config.connect_timeout(STATEMENT_TIMEOUT);
        let (mut client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|error| format!("connecting to the index database: {}", describe(&error)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "index connection closed");
            }
        });
        let applied = tokio::time::timeout(STATEMENT_TIMEOUT, schema::migrate(&mut client))
            .await
            .map_err(|_| "applying index migrations timed out".to_string())?
            .map_err(|error| format!("applying index migrations: {}", describe(&error)))?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "index schema migrated");
        }
        let rows = client
            .query("SELECT shard, lsn FROM checkpoints", &[])
            .await
            .map_err(|error| format!("reading index checkpoints: {}", describe(&error)))?;
        let mut checkpoints = vec![0u64; self.shards.len()];
        for row in rows {
            let (shard, lsn): (i32, i64) = (row.get(0), row.get(1));
            if let Some(slot) = usize::try_from(shard).ok().and_then(|shard| checkpoints.get_mut(shard)) {
                *slot = u64::try_from(lsn).unwrap_or(0);
            }
        }
        for (index, cursor) in self.shards.iter_mut().enumerate() {
            let progress = &self.status.shards[index];
            progress.indexed.store(checkpoints[index], Ordering::Release);
            cursor.next = checkpoints[index] + 1;
            cursor.reader = None;
        }
        self.client = Some(client);
        self.status.connected.store(true, Ordering::Release);
        if self.last_problem.take().is_some() {
            tracing::info!(lag_records = self.status.lag_records(), "index connected again; catching up");
        } else {
            tracing::info!("index connected");
        }
        Ok(())
    }

    /// Moves everything in the channel into the shards' pending queues.
    fn drain_channel(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            let Some(cursor) = self.shards.get_mut(change.shard) else { continue };
            if change.lsn < cursor.next {
                continue;
            }
            if cursor.pending.len() >= PENDING_PER_SHARD_MAX {
                // Read back from the log when its turn comes.
                continue;
            }
            if cursor.pending.back().is_some_and(|last| last.lsn >= change.lsn) {
                cursor.pending.clear();
            }
            cursor.pending.push_back(change);
        }
    }

    /// The next batch: per shard, consecutive changes from the next LSN up to the durable LSN,
    /// from the channel where it has them and from the log where it does not.
    fn gather(&mut self) -> Vec<Change> {
        // The durable LSNs are read before draining: every change up to them was offered before
        // its fsync completed, so it is in the channel by now or was dropped.
        let durable: Vec<u64> = self.status.shards.iter().map(super::ShardProgress::durable).collect();
        self.drain_channel();
        if self.check_divergence() {
            return Vec::new();
        }
        let mut batch = Vec::new();
        for (index, cursor) in self.shards.iter_mut().enumerate() {
            let up_to = durable[index];
            while cursor.next <= up_to && batch.len() < BATCH_ROWS_MAX {
                while cursor.pending.front().is_some_and(|front| front.lsn < cursor.next) {
                    cursor.pending.pop_front();
                }
                match cursor.pending.front() {
                    Some(front) if front.lsn == cursor.next => {
                        if let Some(change) = cursor.pending.pop_front() {
                            cursor.next += 1;
                            batch.push(change);
                        }
                    }
                    front => {
                        let gap_end = front.map_or(up_to, |front| (front.lsn - 1).min(up_to));
                        let room = BATCH_ROWS_MAX - batch.len();
                        match read_gap(cursor, index, gap_end, room) {
                            Ok(read) if read.is_empty() => break,
                            Ok(read) => batch.extend(read),
                            Err(error) => {
                                if skip_removed_history(cursor, index) {
                                    continue;
                                }
                                let problem = format!("reading shard {index}'s log for the index: {error}");
                                if self.last_problem.as_deref() != Some(problem.as_str()) {
                                    tracing::error!(%problem, "index cannot catch up");
                                    self.last_problem = Some(problem);
                                }
                                cursor.reader = None;
                                break;
                            }
                        }
                    }
                }
            }
        }
        batch
    }

    /// An index ahead of a shard's log holds records that log does not: it was restored from
    /// another backup than the data directory, or points at another one. Writing on would mix
    /// the two, so the index stops, says so once, and `/readyz` reports `diverged`.
    fn check_divergence(&mut self) -> bool {
        if self.status.is_diverged() {
            return true;
        }
        for (index, progress) in self.status.shards.iter().enumerate() {
            if progress.durable.get().is_some() && progress.indexed() > progress.durable() {
                tracing::error!(
                    shard = index,
                    indexed = progress.indexed(),
                    durable = progress.durable(),
                    "the index is ahead of this shard's write-ahead log (restored from another backup, or \
                     another data directory); it is no longer updated: drop the index database to rebuild it"
                );
                self.status.diverged.store(true, Ordering::Release);
                return true;
            }
        }
        false
    }

    async fn commit(&mut self, batch: &[Change]) -> Result<(), String> {
        let Some(client) = self.client.as_mut() else {
            return Err("not connected".into());
        };
        let work = async {
            let transaction = client.transaction().await?;
            rows::write(&transaction, batch).await?;
            transaction.commit().await
        };
        tokio::time::timeout(STATEMENT_TIMEOUT, work)
            .await
            .map_err(|_| "an index transaction timed out".to_string())?
            .map_err(|error| format!("writing to the index database: {}", describe(&error)))
    }

    fn track_lag(&self) {
        let now = now_ms();
        for progress in &self.status.shards {
            let behind = progress.durable() > progress.indexed();
            let since = progress.behind_since_ms.load(Ordering::Acquire);
            if !behind && since != 0 {
                progress.behind_since_ms.store(0, Ordering::Release);
            } else if behind && since == 0 {
                progress.behind_since_ms.store(now, Ordering::Release);
            }
        }
    }
}

/// tokio-postgres says only "db error" or "error connecting to server"; the cause is in the
/// database's message or the source error.
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(database) = error.as_db_error() {
        return format!("{}: {}", database.severity(), database.message());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// When the records the index needs next were removed by retention before it ever saw them
/// (Kapsel ran without an index for a while), it starts at the oldest record the log still has.
fn skip_removed_history(cursor: &mut ShardCursor, shard: usize) -> bool {
    match kapsel_wal::tail::first_lsn(&cursor.directory) {
        Ok(Some(first)) if first > cursor.next => {
            tracing::warn!(
                shard,
                from = cursor.next,
                to = first - 1,
                "records removed by retention before they were indexed are left out of the index"
            );
            cursor.next = first;
            cursor.reader = None;
            true
        }
        _ => false,
    }
}

/// Reads records `cursor.next..=up_to` (at most `room`) back from the shard's log.
fn read_gap(cursor: &mut ShardCursor, shard: usize, up_to: u64, room: usize) -> Result<Vec<Change>, String> {
    let reader = match &mut cursor.reader {
        Some(reader) if reader.next_lsn() == cursor.next => reader,
        slot => slot.insert(Reader::new(&cursor.directory, cursor.next)),
    };
    let records = reader.read(up_to, room).map_err(|error| error.to_string())?;
    let mut changes = Vec::with_capacity(records.len());
    for record in records {
        let decoded = Record::decode(record.kind, &record.body)
            .map_err(|error| format!("record {} does not decode: {error}", record.lsn))?;
        changes.push(Change { shard, lsn: record.lsn, row: Row::from_record(&decoded) });
        cursor.next = record.lsn + 1;
    }
    Ok(changes)
}
