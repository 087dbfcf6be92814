//! The flusher task: the only code that writes to the log's files once it is open. It owns the
//! active segment and the chain file, takes work from [`crate::log::State`] in order, and
//! performs every write and fsync through the [`FileLayer`].

use std::future::poll_fn;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::frame::{self, SegmentHeader, BATCH_HEADER_BYTES, KIND_SEAL, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::io::{sync_directory_blocking, FileHandle, FileLayer, Returned};
use crate::log::{OpenBatch, Options, Pending, Shared};
use crate::merkle::{self, Frontier, Hash};
use crate::recover::Recovered;
use crate::scan::{self, segment_file_name};
use crate::seal::{self, SealInfo, CHAIN_ENTRY_BYTES, CHAIN_FILE_NAME};
use crate::{codec, error, WalError};

struct Active {
    path: PathBuf,
    file: FileHandle,
    header: SegmentHeader,
    length: u64,
    records: u64,
    last_lsn: u64,
    frontier: Frontier,
}

/// What a failed writer leaves behind to undo before the log is reopened: the durable length of
/// the active segment and of the chain file, and the id of the first segment whose creation was
/// not finished. Bytes past those lengths were never acknowledged; after a failed fsync they
/// may sit in the page cache without being on disk (the kernel may have marked the pages clean),
/// so they are cut off rather than trusted or written again.
#[derive(Clone, Debug)]
pub(crate) struct Discard {
    active: Option<(PathBuf, u64)>,
    chain: (PathBuf, u64),
    next_segment_id: u64,
}

impl Discard {
    /// Truncates the files to their durable lengths and removes unfinished segments, each made
    /// durable. Blocking: runs off the shard thread.
    pub(crate) fn apply(&self, directory: &Path) -> Result<(), WalError> {
        let cut = |path: &Path, length: u64| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(length).and_then(|()| file.sync_all()))
                .map_err(|error| WalError::io("truncate to the durable length", path, error))
        };
        if let Some((path, length)) = &self.active {
            cut(path, *length)?;
        }
        cut(&self.chain.0, self.chain.1)?;
        let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
        let mut removed = false;
        for (id, path) in segments.iter().filter(|(id, _)| *id >= self.next_segment_id) {
            tracing::warn!(segment = %path.display(), id, "removing a segment whose creation failed");
            std::fs::remove_file(path).map_err(|error| WalError::io("remove", path, error))?;
            removed = true;
        }
        if removed {
            sync_directory_blocking(directory).map_err(|error| WalError::io("fsync directory", directory, error))?;
        }
        Ok(())
    }
}

struct Chain {
    path: PathBuf,
    file: FileHandle,
    length: u64,
    last: Hash,
}

pub(crate) struct Writer {
    layer: FileLayer,
    directory: PathBuf,
    segment_bytes: u64,
    active: Option<Active>,
    next_segment_id: u64,
    next_lsn: u64,
    chain: Chain,
    clock: crate::log::Clock,
}

impl Writer {
    pub(crate) fn new(
        layer: FileLayer,
        directory: PathBuf,
        options: &Options,
        recovered: Recovered,
    ) -> Result<Self, WalError> {
        let active = match recovered.active {
            Some(active) => Some(Active {
                file: layer.adopt(active.file).map_err(|error| WalError::io("open", &active.path, error))?,
                path: active.path,
                header: active.header,
                length: active.length,
                records: active.records,
                last_lsn: active.last_lsn,
                frontier: active.frontier,
            }),
            None => None,
        };
        let chain_path = directory.join(CHAIN_FILE_NAME);
        let chain = Chain {
            file: layer.adopt(recovered.chain.file).map_err(|error| WalError::io("open", &chain_path, error))?,
            path: chain_path,
            length: recovered.chain.length,
            last: recovered.chain.last,
        };
        Ok(Self {
            layer,
            directory,
            segment_bytes: options.segment_bytes,
            active,
            next_segment_id: recovered.next_segment_id,
            next_lsn: recovered.next_lsn,
            chain,
            clock: options.clock.clone(),
        })
    }

    /// The flusher loop: runs until the log is closed and drained, or poisoned.
    pub(crate) async fn run(mut self, shared: Rc<Shared>, batch_wait: Duration) {
        loop {
            if !batch_wait.is_zero() && wait_for_batch(&shared).await {
                monoio::time::sleep(batch_wait).await;
            }
            let Some(pending) = poll_fn(|context| shared.state.borrow_mut().poll_next(context)).await else {
                break;
            };
            let (outcome, done) = match pending {
                Pending::Batch(batch) => {
                    let done = Rc::clone(&batch.done);
                    (self.commit_batch(&shared, batch).await, done)
                }
                Pending::Seal(done) => (self.seal_and_roll(&shared).await.map(|_| ()), done),
                Pending::Remove(segment_ids, done) => (self.remove_segments(&segment_ids).await, done),
                Pending::Flush(done) => (Ok(()), done),
            };
            match outcome {
                Ok(()) => done.complete(Ok(())),
                Err(failure) => {
                    let reason = error::poison_reason(&failure);
                    done.complete(Err(reason.clone()));
                    let mut state = shared.state.borrow_mut();
                    state.discard = Some(self.discard());
                    state.poison(reason, error::failure_kind(&failure));
                    break;
                }
            }
        }
    }

    /// What to cut back after a failure: everything past the lengths known durable.
    fn discard(&self) -> Discard {
        Discard {
            active: self.active.as_ref().map(|active| (active.path.clone(), active.length)),
            chain: (self.chain.path.clone(), self.chain.length),
            next_segment_id: self.next_segment_id,
        }
    }

    /// One group commit: a single write and a single fdatasync for the whole batch.
    async fn commit_batch(&mut self, shared: &Shared, batch: OpenBatch) -> Result<(), WalError> {
        let OpenBatch { mut buffer, records, first_lsn, done } = batch;
        debug_assert_eq!(first_lsn, self.next_lsn, "batches reach the flusher in LSN order");
        let full = self
            .active
            .as_ref()
            .is_some_and(|active| active.records > 0 && active.length + buffer.len() as u64 > self.segment_bytes);
        if full {
            self.seal_and_roll(shared).await?;
        }
        if self.active.is_none() {
            self.create_segment(first_lsn).await?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(WalError::Closed);
        };
        frame::finish_batch(&mut buffer, active.header.nonce, records, first_lsn);
        let batch_bytes = buffer.len() as u64;
        let started = std::time::Instant::now();
        let write = self.layer.start_durable_write(&active.file, buffer, active.length, leaf_hashes);
        let returned = write.wait().await.map_err(|error| WalError::io("write and fdatasync", &active.path, error))?;
        shared.counters.record_commit(u64::from(records), started.elapsed());
        let last_lsn = first_lsn + u64::from(records) - 1;
        active.length += batch_bytes;
        active.records += u64::from(records);
        active.last_lsn = last_lsn;
        self.next_lsn = last_lsn + 1;
        {
            let mut state = shared.state.borrow_mut();
            state.durable_lsn = last_lsn;
            state.batches += 1;
        }
        shared.durable.store(last_lsn, std::sync::atomic::Ordering::Release);
        done.place(active.header.segment_id, active.length - batch_bytes);
        done.complete(Ok(()));
        // Merkle leaves: hashed here for io_uring, on the I/O thread (after it answered) otherwise.
        if let Some(buffer) = returned {
            active.frontier.extend(leaf_hashes(&buffer));
            shared.state.borrow_mut().recycle(buffer);
        }
        self.absorb_returned(shared);
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if active.length >= self.segment_bytes {
            self.seal_and_roll(shared).await?;
        }
        Ok(())
    }

    /// Adds the leaves the I/O thread has digested to the active segment's frontier and keeps
    /// the buffers for reuse.
    fn absorb_returned(&mut self, shared: &Shared) {
        let returned = self.layer.take_returned();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut state = shared.state.borrow_mut();
        for Returned { digest, buffer } in returned {
            active.frontier.extend(digest);
            state.recycle(buffer);
        }
    }

    /// Seals the active segment (when it holds records) and opens the next one. The segment
    /// stays the active one until its seal and chain entry are durable, so that a failure in
    /// between leaves [`Discard`] its durable length to cut back to.
    async fn seal_and_roll(&mut self, shared: &Shared) -> Result<Option<SealInfo>, WalError> {
        if self.active.as_ref().is_none_or(|active| active.records == 0) {
            return Ok(None);
        }
        // Every leaf of the segment must be in the frontier before its root is taken.
        self.layer.barrier().await.map_err(|error| WalError::io("wait for the I/O thread", &self.directory, error))?;
        self.absorb_returned(shared);
        let Some(active) = self.active.as_ref() else {
            return Ok(None);
        };
        let seal = SealInfo::new(
            active.header.segment_id,
            (active.header.first_lsn, active.last_lsn),
            active.records,
            active.frontier.root(),
            self.chain.last,
            self.clock.now_ms(),
        );
        let body = codec::encode(&seal)?;
        let mut buffer = Vec::with_capacity(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + body.len());
        frame::begin_batch(&mut buffer);
        frame::encode_record(&mut buffer, KIND_SEAL, active.last_lsn, &body);
        frame::finish_batch(&mut buffer, active.header.nonce, 1, active.last_lsn);
        let (written, _) = self.layer.write_all_at(&active.file, buffer, active.length).await;
        written.map_err(|error| WalError::io("write seal", &active.path, error))?;
        self.layer.sync_data(&active.file).await.map_err(|error| WalError::io("fdatasync", &active.path, error))?;
        self.append_chain(&seal).await?;
        let Some(active) = self.active.take() else {
            return Ok(None);
        };
        shared.state.borrow_mut().sealed.push(seal.clone());
        tracing::info!(segment = %active.path.display(), records = seal.records, root = %merkle::to_hex(&seal.root), "sealed segment");
        self.create_segment(active.last_lsn + 1).await?;
        Ok(Some(seal))
    }

    async fn append_chain(&mut self, seal: &SealInfo) -> Result<(), WalError> {
        let entry = seal::encode_chain_entry(seal).to_vec();
        let (written, _) = self.layer.write_all_at(&self.chain.file, entry, self.chain.length).await;
        written.map_err(|error| WalError::io("append chain", &self.chain.path, error))?;
        self.layer
            .sync_data(&self.chain.file)
            .await
            .map_err(|error| WalError::io("fdatasync", &self.chain.path, error))?;
        self.chain.length += CHAIN_ENTRY_BYTES as u64;
        self.chain.last = seal.chain;
        Ok(())
    }

    /// Creates the next segment: header written and fsynced, then the directory fsynced so the
    /// new file's name survives a crash.
    async fn create_segment(&mut self, first_lsn: u64) -> Result<(), WalError> {
        let header = SegmentHeader { segment_id: self.next_segment_id, first_lsn, nonce: random_nonce() };
        let path = self.directory.join(segment_file_name(header.segment_id));
        let file = self.layer.create_new(&path).await.map_err(|error| WalError::io("create", &path, error))?;
        let bytes = frame::encode_segment_header(header).to_vec();
        let (written, _) = self.layer.write_all_at(&file, bytes, 0).await;
        written.map_err(|error| WalError::io("write header", &path, error))?;
        self.layer.sync_data(&file).await.map_err(|error| WalError::io("fdatasync", &path, error))?;
        self.layer
            .sync_directory(&self.directory)
            .await
            .map_err(|error| WalError::io("fsync directory", &self.directory, error))?;
        self.next_segment_id += 1;
        self.active = Some(Active {
            path,
            file,
            header,
            length: SEGMENT_HEADER_BYTES as u64,
            records: 0,
            last_lsn: first_lsn - 1,
            frontier: Frontier::new(),
        });
        Ok(())
    }

    async fn remove_segments(&mut self, segment_ids: &[u64]) -> Result<(), WalError> {
        for id in segment_ids {
            let path = self.directory.join(segment_file_name(*id));
            self.layer.remove_file(&path).await.map_err(|error| WalError::io("remove", &path, error))?;
            tracing::info!(segment = %path.display(), "removed sealed segment (its seal stays in the chain)");
        }
        self.layer
            .sync_directory(&self.directory)
            .await
            .map_err(|error| WalError::io("fsync directory", &self.directory, error))
    }
}

/// Resolves true when the front of the queue is a batch, false when there is other work or the
/// log is closing; used to let a batch fill for `batch_wait`.
async fn wait_for_batch(shared: &Shared) -> bool {
    poll_fn(|context| {
        let mut state = shared.state.borrow_mut();
        if state.front_is_batch() {
            return std::task::Poll::Ready(true);
        }
        match state.poll_peek(context) {
            true => std::task::Poll::Ready(false),
            false => std::task::Poll::Pending,
        }
    })
    .await
}

/// The Merkle leaf of every record frame in a written batch, in order.
fn leaf_hashes(batch: &[u8]) -> Vec<Hash> {
    let mut leaves = Vec::new();
    let mut offset = BATCH_HEADER_BYTES;
    while offset + RECORD_HEADER_BYTES <= batch.len() {
        let mut length = [0u8; 4];
        length.copy_from_slice(&batch[offset..offset + 4]);
        let end = (offset + RECORD_HEADER_BYTES + u32::from_le_bytes(length) as usize).min(batch.len());
        leaves.push(merkle::leaf_hash(&batch[offset..end]));
        offset = end;
    }
    debug_assert_eq!(offset, batch.len(), "a batch is a whole number of frames");
    leaves
}

/// A value an outsider cannot predict (see the nonce in [`crate::frame`]). Hashing the clock with
/// std's randomly keyed SipHash avoids a dependency on a random number crate.
fn random_nonce() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one(nanos)
}
