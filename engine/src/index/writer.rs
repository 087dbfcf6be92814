//! The index thread's writing side: gathers changes per shard in LSN order, fills gaps from the
//! logs, and commits batches together with the shards' checkpoints.
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

use super::rows::{self, Change, Row};
use super::session::{describe, Role, Session};
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
}

pub(super) struct Writer {
    config: Config,
    status: Arc<IndexStatus>,
    changes: Receiver<Change>,
    shards: Vec<ShardCursor>,
    session: Option<Session>,
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
        Self { config, status, changes, shards, session: None, last_problem: None }
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
            let batch = self.gather();
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
                Err(problem) => {
                    self.problem(problem);
                    // The connection's state is unknown; what the batch held comes back from the
                    // logs, from the checkpoints read again on connecting.
                    self.disconnect();
                    for (index, cursor) in self.shards.iter_mut().enumerate() {
                        cursor.next = self.status.shards[index].indexed() + 1;
                        cursor.reader = None;
                    }
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::info!(lag_records = self.status.lag_records(), "index stopped");
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
                session.client.query("SELECT shard, lsn FROM checkpoints", &[]).await
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
        self.session = Some(session);
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

    /// Writes `batch` and the checkpoints in one transaction, within
    /// `INDEX_TRANSACTION_TIMEOUT_MS` and not past a shutdown's deadline.
    async fn commit(&mut self, batch: &[Change]) -> Result<(), String> {
        let status = Arc::clone(&self.status);
        let Some(session) = self.session.as_mut() else {
            return Err("not connected".into());
        };
        let mut expected: Vec<(usize, u64)> = Vec::new();
        for change in batch {
            if !expected.iter().any(|(shard, _)| *shard == change.shard) {
                expected.push((change.shard, status.shards[change.shard].indexed()));
            }
        }
        let work = async {
            let transaction = session.client.transaction().await.map_err(|error| failed(&error))?;
            verify_checkpoints(&transaction, &expected).await?;
            rows::write(&transaction, batch).await.map_err(|error| failed(&error))?;
            transaction.commit().await.map_err(|error| failed(&error))
        };
        match bounded(&status, TRANSACTION_TIMEOUT, work).await {
            Some(outcome) => outcome,
            None if status.stop_requested() => Err("an index transaction was cut short by the shutdown".into()),
            None => Err(format!(
                "an index transaction timed out after {} ms (Postgres unreachable, or a lock held)",
                TRANSACTION_TIMEOUT.as_millis()
            )),
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
) -> Result<(), String> {
    let shards: Vec<i32> = expected.iter().map(|(shard, _)| i32::try_from(*shard).unwrap_or(i32::MAX)).collect();
    let rows = transaction
        .query("SELECT shard, lsn FROM checkpoints WHERE shard = ANY($1) FOR UPDATE", &[&shards])
        .await
        .map_err(|error| failed(&error))?;
    for (shard, lsn) in expected {
        let found = rows
            .iter()
            .find(|row| usize::try_from(row.get::<_, i32>(0)).ok() == Some(*shard))
            .map_or(0, |row| u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
        if found != *lsn {
            return Err(format!(
                "shard {shard}'s index checkpoint is {found}, not {lsn}: another transaction moved it; reading the \
                 checkpoints again"
            ));
        }
    }
    Ok(())
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
