//! Reading a live log from another thread: records in LSN order from a starting LSN, up to a
//! bound the caller knows durable (`Wal::durable_watermark`). The Postgres index catches up
//! from its checkpoint with this.
//!
//! A reader only reads files. It remembers the segment and the offset of the first batch it
//! has not finished, so following a log costs one read of the new bytes per call, and a catch-up
//! reads each segment once. The newest segment may end in a batch being written; that is not an
//! error here, the reader simply stops before it (the bound keeps it behind the fsync anyway).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::frame::{self, BatchDamage, KIND_SEAL, SEGMENT_HEADER_BYTES};
use crate::scan;
use crate::WalError;

/// Bytes read per call before decoding, grown when one batch is larger.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// A record read back: its LSN, kind and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRecord {
    /// Log sequence number.
    pub lsn: u64,
    /// Record kind.
    pub kind: u8,
    /// Body bytes.
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Position {
    segment_id: u64,
    path: PathBuf,
    nonce: u64,
    /// Offset of the first batch not yet consumed completely.
    offset: u64,
    sealed: bool,
}

/// Follows one log directory from an LSN on.
#[derive(Debug)]
pub struct Reader {
    directory: PathBuf,
    next_lsn: u64,
    position: Option<Position>,
}

impl Reader {
    /// A reader whose first record will be `from_lsn` (LSNs start at 1).
    pub fn new(directory: &Path, from_lsn: u64) -> Self {
        Self { directory: directory.to_path_buf(), next_lsn: from_lsn.max(1), position: None }
    }

    /// The LSN the next record read will have.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Up to `records_max` records from [`Reader::next_lsn`] to `up_to` inclusive, in order and
    /// without gaps. Empty when nothing up to `up_to` is readable yet. An `Err` names the file:
    /// the records were removed (retention) or a complete batch is damaged.
    pub fn read(&mut self, up_to: u64, records_max: usize) -> Result<Vec<TailRecord>, WalError> {
        let mut records = Vec::new();
        let mut finished_segment = None;
        while self.next_lsn <= up_to && records.len() < records_max {
            if self.position.is_none() {
                let position = self.locate()?;
                if Some(position.segment_id) == finished_segment {
                    // Sealed and read, and its successor is not there yet.
                    break;
                }
                self.position = Some(position);
            }
            let before = records.len();
            if self.read_segment(up_to, records_max, &mut records)? {
                // Sealed and consumed: continue in the next segment.
                finished_segment = self.position.take().map(|position| position.segment_id);
            } else if records.len() == before {
                break;
            }
        }
        Ok(records)
    }

    /// Finds the segment holding `next_lsn`: the newest whose first LSN is not after it.
    fn locate(&self) -> Result<Position, WalError> {
        let segments =
            scan::list_segments(&self.directory).map_err(|error| WalError::io("list", &self.directory, error))?;
        let mut found = None;
        for (segment_id, path) in segments {
            let header = read_header(&path)?;
            if header.first_lsn > self.next_lsn {
                break;
            }
            found = Some(Position {
                segment_id,
                path,
                nonce: header.nonce,
                offset: SEGMENT_HEADER_BYTES as u64,
                sealed: false,
            });
        }
        found.ok_or_else(|| {
            WalError::corrupt(
                &self.directory,
                0,
                format!("record {} is no longer in the log (removed by retention?)", self.next_lsn),
            )
        })
    }

    /// Reads from the current segment; `true` once its seal has been reached and every record
    /// before it consumed.
    fn read_segment(
        &mut self,
        up_to: u64,
        records_max: usize,
        records: &mut Vec<TailRecord>,
    ) -> Result<bool, WalError> {
        let Some(position) = self.position.as_mut() else {
            return Ok(false);
        };
        if position.sealed {
            return Ok(true);
        }
        let mut chunk = READ_CHUNK_BYTES;
        loop {
            let (bytes, at_end) = read_from(&position.path, position.offset, chunk)?;
            let mut offset = 0usize;
            let mut progressed = false;
            while offset < bytes.len() {
                let batch = match frame::decode_batch(&bytes, position.nonce, offset) {
                    Ok(batch) => batch,
                    // A batch being written, or one longer than what was read this time.
                    Err(BatchDamage::CutShort) => break,
                    Err(BatchDamage::Invalid(reason)) if at_end => {
                        // The newest segment may end in a torn write that recovery will cut;
                        // records up to `up_to` were all read before it, so it only matters
                        // when they are missing.
                        if self.next_lsn <= up_to && !progressed {
                            return Err(WalError::corrupt(&position.path, position.offset + offset as u64, reason));
                        }
                        break;
                    }
                    Err(BatchDamage::Invalid(reason)) => {
                        return Err(WalError::corrupt(&position.path, position.offset + offset as u64, reason))
                    }
                };
                if batch.frames.first().is_some_and(|first| first.kind == KIND_SEAL) {
                    position.sealed = true;
                    position.offset += batch.end as u64;
                    return Ok(true);
                }
                let mut consumed = true;
                for frame in &batch.frames {
                    if frame.lsn < self.next_lsn {
                        continue;
                    }
                    if frame.lsn > up_to || records.len() >= records_max {
                        consumed = false;
                        break;
                    }
                    records.push(TailRecord { lsn: frame.lsn, kind: frame.kind, body: frame.body(&bytes).to_vec() });
                    self.next_lsn = frame.lsn + 1;
                    progressed = true;
                }
                if !consumed {
                    return Ok(false);
                }
                position.offset += (batch.end - offset) as u64;
                offset = batch.end;
            }
            // Nothing decoded from a full chunk: one batch is larger than the chunk.
            if offset == 0 && !at_end && bytes.len() == chunk {
                chunk = chunk.saturating_mul(2);
                continue;
            }
            if at_end || self.next_lsn > up_to || records.len() >= records_max {
                return Ok(false);
            }
        }
    }
}

/// The first LSN still in the log in `directory` (retention removes older segments), or
/// `None` when it holds no segment.
pub fn first_lsn(directory: &Path) -> Result<Option<u64>, WalError> {
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    match segments.first() {
        Some((_, path)) => Ok(Some(read_header(path)?.first_lsn)),
        None => Ok(None),
    }
}

fn read_header(path: &Path) -> Result<frame::SegmentHeader, WalError> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(|error| WalError::io("read", path, error))?;
    frame::decode_segment_header(&header).map_err(|reason| WalError::corrupt(path, 0, reason))
}

/// Up to `limit` bytes of `path` from `offset`, and whether they reach the end of the file.
fn read_from(path: &Path, offset: u64, limit: usize) -> Result<(Vec<u8>, bool), WalError> {
    let mut file = File::open(path).map_err(|error| WalError::io("open", path, error))?;
    file.seek(SeekFrom::Start(offset)).map_err(|error| WalError::io("seek", path, error))?;
    let mut bytes = Vec::new();
    let read = file.take(limit as u64).read_to_end(&mut bytes).map_err(|error| WalError::io("read", path, error))?;
    Ok((bytes, read < limit))
}
