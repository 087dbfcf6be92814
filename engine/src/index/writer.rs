//! The index thread's writing side: gathers changes per shard in LSN order, fills gaps from the
//! logs, and commits batches together with the shards' checkpoints. In cluster mode a "shard"
//! is a partition this node owns, an LSN a sequence of its stream (`super::streams`).
//!
//! Every wait on Postgres is bounded (`crate::limits`): opening the connection, the migrations,
//! each batch's transaction. A batch that fails or times out drops the connection — after a
//! timeout its state is unknown, and a silent network never answers — and the writer reconnects
//! with backoff, re-reads the checkpoints and reads what the batch held back from the logs.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use kapsel_wal::tail::Reader;
use tokio_postgres::Config;

use super::rows::{self, Change, Ledger, Row};
use super::session::{describe, Role, Session};
use super::streams::{self, Logs, StreamGap};
use super::{schema, IndexStatus};
use crate::clock::now_ms;
use crate::limits::{
    INDEX_BACKOFF_MAX_MS, INDEX_BACKOFF_MIN_MS, INDEX_CONNECT_TIMEOUT_MS, INDEX_MIGRATION_TIMEOUT_MS,
    INDEX_TRANSACTION_TIMEOUT_MS,
};
use crate::model::records::Record;

/// Rows per transaction.
const BATCH_ROWS_MAX: usize = 4096;
/// Changes held per shard while Postgres is slow or down; later ones are read back from the log.
const PENDING_PER_SHARD_MAX: usize = 32_768;
/// Pause between rounds while changes flow, and while idle.
const TICK_BUSY: Duration = Duration::from_millis(10);
const TICK_IDLE: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(INDEX_BACKOFF_MIN_MS);
const BACKOFF_MAX: Duration = Duration::from_millis(INDEX_BACKOFF_MAX_MS);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(INDEX_CONNECT_TIMEOUT_MS);
const MIGRATION_TIMEOUT: Duration = Duration::from_millis(INDEX_MIGRATION_TIMEOUT_MS);
const TRANSACTION_TIMEOUT: Duration = Duration::from_millis(INDEX_TRANSACTION_TIMEOUT_MS);

struct ShardCursor {
    /// The next LSN to put in a batch.
    next: u64,
    /// Changes from the channel, in LSN order, not yet in a batch.
    pending: VecDeque<Change>,
    /// Reads gaps back from the log.
    reader: Option<Reader>,
    directory: PathBuf,
    /// Cluster mode: reads gaps back from the partition's stream.
    feed: Option<StreamGap>,
    /// Cluster mode: the fence's epoch before `next`.
    fence: u64,
    /// Cluster mode: the registration `next` and `fence` were read from the checkpoint for (0:
    /// read it before indexing the partition).
    generation: u64,
}

/// Why a batch was not committed.
enum Refused {
    /// A checkpoint was not where the writer left it: in cluster mode another owner of the
    /// partition moved it, and the checkpoints are read again.
    Moved(String),
    /// Postgres failed or did not answer in time.
    Failed(String),
}

pub(super) struct Writer {
    config: Config,
    status: Arc<IndexStatus>,
    changes: Receiver<Change>,
    logs: Logs,
    shards: Vec<ShardCursor>,
    session: Option<Session>,
    /// The last problem logged, so each state change is logged once.
    last_problem: Option<String>,
}

impl Writer {
    pub(super) fn new(config: Config, status: Arc<IndexStatus>, changes: Receiver<Change>, logs: Logs) -> Self {
        let shards = (0..status.shards.len())
            .map(|index| ShardCursor {
                next: 1,
                pending: VecDeque::new(),
                reader: None,
                directory: match &logs {
                    Logs::Wal(data) => data.join("wal").join(format!("shard-{index}")),
                    Logs::Streams(_) => PathBuf::new(),
                },
                feed: None,
                fence: 0,
                generation: 0,
            })
            .collect();
        Self { config, status, changes, logs, shards, session: None, last_problem: None }
    }

    fn ledger(&self) -> Ledger {
        match self.logs {
            Logs::Wal(_) => Ledger::Shards,
            Logs::Streams(_) => Ledger::Partitions,
        }
    }

    fn is_connected(&self) -> bool {
        self.session.as_ref().is_some_and(|session| !session.is_closed())
    }

    pub(super) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            // At a shutdown: index what is left while connected, until the deadline.
            if self.status.stop_requested()
                && (!self.is_connected() || self.status.lag_records() == 0 || self.status.stop_deadline_passed())
            {
                break;
            }
            if !self.is_connected() {
                self.disconnect();
                match self.connect().await {
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(problem) => {
                        self.problem(problem);
                        self.drain_channel();
                        self.track_lag();
                        self.pause(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            if let Err(problem) = self.read_moved_checkpoints().await {
                self.problem(problem);
                self.disconnect();
                continue;
            }
            let batch = self.gather().await;
            self.status.passes.fetch_add(1, Ordering::Relaxed);
            self.track_lag();
            if batch.is_empty() {
                let quiet = self.status.lag_records() == 0;
                self.pause(if quiet { TICK_IDLE } else { TICK_BUSY }).await;
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
                Err(Refused::Moved(reason)) if self.ledger() == Ledger::Partitions => {
                    // Another node indexed a partition meanwhile (it moved, here or away): read
                    // where it left them and go on from there.
                    tracing::info!(%reason, "a partition's index checkpoint moved; reading it again");
                    self.restart_cursors();
                }
                Err(Refused::Moved(problem) | Refused::Failed(problem)) => {
                    self.problem(problem);
                    // The connection's state is unknown; what the batch held comes back from the
                    // logs, from the checkpoints read again on connecting.
                    self.disconnect();
                    self.restart_cursors();
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::info!(lag_records = self.status.lag_records(), "index stopped");
    }

    /// After a batch that was not committed: every shard goes on from its checkpoint.
    fn restart_cursors(&mut self) {
        let partitions = self.ledger() == Ledger::Partitions;
        for (index, cursor) in self.shards.iter_mut().enumerate() {
            cursor.next = self.status.shards[index].indexed() + 1;
            cursor.reader = None;
            cursor.feed = None;
            // The fence's epoch at the checkpoint is read again with it.
            if partitions {
                cursor.generation = 0;
            }
        }
    }

    /// Cluster mode: reads the checkpoint of each partition registered since its cursor was
    /// set (this node owns it now, and others may have indexed it meanwhile).
    async fn read_moved_checkpoints(&mut self) -> Result<(), String> {
        if self.ledger() != Ledger::Partitions {
            return Ok(());
        }
        let stale: Vec<(usize, u64)> = self
            .status
            .shards
            .iter()
            .enumerate()
            .filter(|(index, progress)| {
                progress.is_registered() && self.shards[*index].generation != progress.generation()
            })
            .map(|(index, progress)| (index, progress.generation()))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let Some(session) = self.session.as_ref() else {
            return Err("not connected".into());
        };
        let partitions: Vec<i32> = stale.iter().map(|(index, _)| i32::try_from(*index).unwrap_or(i32::MAX)).collect();
        let statement = "SELECT partition, sequence, fence_epoch FROM partition_checkpoints WHERE partition = ANY($1)";
        let rows = tokio::time::timeout(CONNECT_TIMEOUT, session.client.query(statement, &[&partitions]))
            .await
            .map_err(|_| format!("reading index checkpoints timed out after {} ms", CONNECT_TIMEOUT.as_millis()))?
            .map_err(|error| format!("reading index checkpoints: {}", describe(&error)))?;
        let found = checkpoint_rows(&rows);
        for (index, generation) in stale {
            let (sequence, fence) = found.get(&index).copied().unwrap_or((0, 0));
            self.status.shards[index].indexed.store(sequence, Ordering::Release);
            let cursor = &mut self.shards[index];
            cursor.next = sequence + 1;
            cursor.fence = fence;
            cursor.feed = None;
            cursor.generation = generation;
        }
        Ok(())
    }

    /// Drops the connection (its task is aborted if it does not close promptly).
    fn disconnect(&mut self) {
        self.session = None;
        self.status.connected.store(false, Ordering::Release);
    }

    /// Sleeps for `pause`, or until a shutdown begins (during one, at most a busy tick).
    async fn pause(&self, pause: Duration) {
        if self.status.stop_requested() {
            tokio::time::sleep(pause.min(TICK_BUSY)).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.status.stopping() => {}
        }
    }

    /// Logs a problem once, until things change.
    fn problem(&mut self, problem: String) {
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!(%problem, "index unavailable; ingest and delivery go on, the index catches up later");
            self.last_problem = Some(problem);
        }
    }

    /// Opens the connection, applies migrations and the session's settings, and reads the
    /// checkpoints; each step bounded, and given up when a shutdown begins.
    async fn connect(&mut self) -> Result<(), String> {
        let status = Arc::clone(&self.status);
        let checkpoints_query = match self.ledger() {
            Ledger::Shards => "SELECT shard, lsn, 0::int8 FROM checkpoints",
            Ledger::Partitions => "SELECT partition, sequence, fence_epoch FROM partition_checkpoints",
        };
        let connecting = async {
            let mut session = Session::open(&self.config, Role::Writer, CONNECT_TIMEOUT).await?;
            let applied = tokio::time::timeout(MIGRATION_TIMEOUT, schema::migrate(&mut session.client))
                .await
                .map_err(|_| format!("applying index migrations timed out after {} ms", MIGRATION_TIMEOUT.as_millis()))?
                .map_err(|error| format!("applying index migrations: {}", describe(&error)))?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "index schema migrated");
            }
            let ready = async {
                session.apply_settings(Role::Writer).await?;
                session.client.query(checkpoints_query, &[]).await
            };
            let rows = tokio::time::timeout(CONNECT_TIMEOUT, ready)
                .await
                .map_err(|_| format!("reading index checkpoints timed out after {} ms", CONNECT_TIMEOUT.as_millis()))?
                .map_err(|error| format!("reading index checkpoints: {}", describe(&error)))?;
            Ok::<_, String>((session, rows))
        };
        let (session, rows) = tokio::select! {
            outcome = connecting => outcome?,
            () = status.stopping() => return Err("shutting down".into()),
        };
        let checkpoints = checkpoint_rows(&rows);
        for (index, cursor) in self.shards.iter_mut().enumerate() {
            let progress = &self.status.shards[index];
            let (indexed, fence) = checkpoints.get(&index).copied().unwrap_or((0, 0));
            progress.indexed.store(indexed, Ordering::Release);
            cursor.next = indexed + 1;
            cursor.fence = fence;
            cursor.reader = None;
            cursor.feed = None;
            cursor.generation = progress.generation();
        }
        self.session = Some(session);
        self.status.connected.store(true, Ordering::Release);
        if self.last_problem.take().is_some() {
            tracing::info!(lag_records = self.status.lag_records(), "index connected again; catching up");
        } else {
            tracing::info!("index connected");
        }
        Ok(())
    }

    /// Moves everything in the channel into the shards' pending queues (in cluster mode, of
    /// the partitions this node owns: a partition stopped here is indexed by its next owner).
    fn drain_channel(&mut self) {
        let partitions = self.ledger() == Ledger::Partitions;
        while let Ok(change) = self.changes.try_recv() {
            let Some(cursor) = self.shards.get_mut(change.shard) else { continue };
            if change.lsn < cursor.next {
                continue;
            }
            if partitions && !self.status.shards[change.shard].is_registered() {
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
    async fn gather(&mut self) -> Vec<Change> {
        // The durable LSNs are read before draining: every change up to them was offered before
        // its fsync completed, so it is in the channel by now or was dropped.
        let durable: Vec<u64> = self.status.shards.iter().map(super::ShardProgress::durable).collect();
        self.drain_channel();
        if self.check_divergence() {
            return Vec::new();
        }
        let mut batch = Vec::new();
        let logs = self.logs.clone();
        for (index, cursor) in self.shards.iter_mut().enumerate() {
            let up_to = durable[index];
            if let Logs::Streams(_) = &logs {
                if cursor.generation != self.status.shards[index].generation() {
                    // Its checkpoint is read first (`read_moved_checkpoints`).
                    continue;
                }
            }
            while cursor.next <= up_to && batch.len() < BATCH_ROWS_MAX {
                while cursor.pending.front().is_some_and(|front| front.lsn < cursor.next) {
                    cursor.pending.pop_front();
                }
                match cursor.pending.front() {
                    Some(front) if front.lsn == cursor.next => {
                        if let Some(change) = cursor.pending.pop_front() {
                            cursor.next += 1;
                            if let Row::Fence { epoch } = change.row {
                                cursor.fence = cursor.fence.max(epoch);
                            }
                            batch.push(change);
                        }
                    }
                    front => {
                        let gap_end = front.map_or(up_to, |front| (front.lsn - 1).min(up_to));
                        let room = BATCH_ROWS_MAX - batch.len();
                        let read = match &logs {
                            Logs::Wal(_) => read_gap(cursor, index, gap_end, room),
                            Logs::Streams(source) => {
                                let (next, fence) = (&mut cursor.next, &mut cursor.fence);
                                streams::read(source.as_ref(), &mut cursor.feed, index, (next, fence), gap_end, room)
                                    .await
                            }
                        };
                        match read {
                            Ok(read) if read.is_empty() => break,
                            Ok(read) => batch.extend(read),
                            Err(error) => {
                                if matches!(logs, Logs::Wal(_)) && skip_removed_history(cursor, index) {
                                    continue;
                                }
                                let problem = format!("reading shard {index}'s log for the index: {error}");
                                if self.last_problem.as_deref() != Some(problem.as_str()) {
                                    tracing::error!(%problem, "index cannot catch up");
                                    self.last_problem = Some(problem);
                                }
                                cursor.reader = None;
                                cursor.feed = None;
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
        if self.ledger() == Ledger::Partitions {
            // A partition's new owner applies the stream from its snapshot while the index may
            // be further already (its previous owner indexed it): that is waiting, not a
            // different history.
            return false;
        }
        for (index, progress) in self.status.shards.iter().enumerate() {
            if progress.is_registered() && progress.indexed() > progress.durable() {
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

    /// Writes `batch` and the checkpoints in one transaction, within
    /// `INDEX_TRANSACTION_TIMEOUT_MS` and not past a shutdown's deadline.
    async fn commit(&mut self, batch: &[Change]) -> Result<(), Refused> {
        let status = Arc::clone(&self.status);
        let ledger = self.ledger();
        let Some(session) = self.session.as_mut() else {
            return Err(Refused::Failed("not connected".into()));
        };
        let mut expected: Vec<(usize, u64)> = Vec::new();
        for change in batch {
            if !expected.iter().any(|(shard, _)| *shard == change.shard) {
                expected.push((change.shard, status.shards[change.shard].indexed()));
            }
        }
        let work = async {
            let transaction = session.client.transaction().await.map_err(|error| Refused::Failed(failed(&error)))?;
            verify_checkpoints(&transaction, &expected, ledger).await?;
            rows::write(&transaction, batch, ledger).await.map_err(|error| Refused::Failed(failed(&error)))?;
            transaction.commit().await.map_err(|error| Refused::Failed(failed(&error)))
        };
        match bounded(&status, TRANSACTION_TIMEOUT, work).await {
            Some(outcome) => outcome,
            None if status.stop_requested() => {
                Err(Refused::Failed("an index transaction was cut short by the shutdown".into()))
            }
            None => Err(Refused::Failed(format!(
                "an index transaction timed out after {} ms (Postgres unreachable, or a lock held)",
                TRANSACTION_TIMEOUT.as_millis()
            ))),
        }
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

fn failed(error: &tokio_postgres::Error) -> String {
    format!("writing to the index database: {}", describe(error))
}

/// Runs `work` for at most `limit` and not past a shutdown's deadline; `None` when either passed
/// (`work` is then dropped mid-way).
async fn bounded<T>(status: &IndexStatus, limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        outcome = tokio::time::timeout(limit, work) => outcome.ok(),
        () = status.past_stop_deadline() => None,
    }
}

/// Locks the checkpoint rows of the batch's shards and checks that they are where the writer
/// left them. A transaction the writer gave up on may still have committed (its `COMMIT` was on
/// the wire when the timeout fired), or another process may write the same index: then the
/// batch would re-apply records under a checkpoint that moved, so it is refused, and the writer
/// reconnects and starts again from the checkpoints as they are.
async fn verify_checkpoints(
    transaction: &tokio_postgres::Transaction<'_>,
    expected: &[(usize, u64)],
    ledger: Ledger,
) -> Result<(), Refused> {
    let shards: Vec<i32> = expected.iter().map(|(shard, _)| i32::try_from(*shard).unwrap_or(i32::MAX)).collect();
    let statement = match ledger {
        Ledger::Shards => "SELECT shard, lsn, 0::int8 FROM checkpoints WHERE shard = ANY($1) FOR UPDATE",
        Ledger::Partitions => {
            "SELECT partition, sequence, fence_epoch FROM partition_checkpoints WHERE partition = ANY($1) FOR UPDATE"
        }
    };
    let rows = transaction.query(statement, &[&shards]).await.map_err(|error| Refused::Failed(failed(&error)))?;
    let found = checkpoint_rows(&rows);
    for (shard, lsn) in expected {
        let at = found.get(shard).map_or(0, |(indexed, _)| *indexed);
        if at != *lsn {
            let what = match ledger {
                Ledger::Shards => "shard",
                Ledger::Partitions => "partition",
            };
            return Err(Refused::Moved(format!(
                "{what} {shard}'s index checkpoint is {at}, not {lsn}: another transaction moved it; reading the \
                 checkpoints again"
            )));
        }
    }
    Ok(())
}

/// Checkpoint rows (shard or partition, LSN or sequence, fence epoch) by shard.
fn checkpoint_rows(rows: &[tokio_postgres::Row]) -> std::collections::HashMap<usize, (u64, u64)> {
    rows.iter()
        .filter_map(|row| {
            let (shard, indexed, fence): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let shard = usize::try_from(shard).ok()?;
            Some((shard, (u64::try_from(indexed).unwrap_or(0), u64::try_from(fence).unwrap_or(0))))
        })
        .collect()
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
