//! Reading records back by position: where a record lies ([`Position`]), positioned reads of
//! many records at once ([`read_at`]), and a read-only pass over a whole log ([`for_each`]).
//!
//! A position is known once the record is durable (`Commit::position`) or when recovery
//! replays it (`Record::position`). Whoever keeps positions (the engine keeps one per waiting
//! event) reads payloads back without scanning segments: one `pread` per run of nearby records,
//! each frame verified by its CRC32C before its body is handed out. Only files are read, never
//! written, so this is safe from any thread beside a live log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::frame::{self, KIND_SEAL, RECORD_HEADER_BYTES};
use crate::scan::{self, segment_file_name};
use crate::{Record, WalError};

/// Where a record's frame lies: its segment, the frame's offset in it and the frame's length
/// (header and body).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The segment's id (its file is `scan::segment_file_name(segment_id)`).
    pub segment_id: u64,
    /// Byte offset of the frame in the segment.
    pub offset: u32,
    /// Length of the frame, header included.
    pub length: u32,
}

impl Position {
    /// Bytes of the record's body.
    pub fn body_bytes(self) -> usize {
        (self.length as usize).saturating_sub(RECORD_HEADER_BYTES)
    }

    fn end(self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }
}

/// A record read back by position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordAt {
    /// Its LSN.
    pub lsn: u64,
    /// Its kind.
    pub kind: u8,
    /// Its body.
    pub body: Vec<u8>,
}

/// Records closer than this are read with one `pread` (the bytes between are read and dropped).
pub const COALESCE_GAP_BYTES: u64 = 64 * 1024;

/// Longest single `pread`; a run of records longer than this is split.
pub const READ_SPAN_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Reads the records at `positions` from the log in `directory`. The answer is in the order of
/// `positions`, one result each: the record, or why it could not be read (a removed segment, a
/// short file, a frame whose checksum or length does not match, which means the position is
/// wrong or the disk is damaged). Nearby positions in one segment share one read.
pub fn read_at(directory: &Path, positions: &[Position]) -> Vec<Result<RecordAt, WalError>> {
    let mut order: Vec<usize> = (0..positions.len()).collect();
    order.sort_unstable_by_key(|index| positions[*index]);
    let mut results: Vec<Option<Result<RecordAt, WalError>>> = positions.iter().map(|_| None).collect();
    let mut open: Option<(u64, PathBuf, Result<File, String>)> = None;
    let mut start = 0;
    while start < order.len() {
        let first = positions[order[start]];
        let mut end = start + 1;
        while end < order.len() {
            let next = positions[order[end]];
            let previous = positions[order[end - 1]];
            let near = next.segment_id == first.segment_id
                && u64::from(next.offset) <= previous.end() + COALESCE_GAP_BYTES
                && next.end().saturating_sub(u64::from(first.offset)) <= READ_SPAN_BYTES_MAX;
            if !near {
                break;
            }
            end += 1;
        }
        if open.as_ref().is_none_or(|(segment_id, _, _)| *segment_id != first.segment_id) {
            let path = directory.join(segment_file_name(first.segment_id));
            let file = File::open(&path).map_err(|error| error.to_string());
            open = Some((first.segment_id, path, file));
        }
        let run = &order[start..end];
        match &open {
            Some((_, path, Ok(file))) => read_run(file, path, positions, run, &mut results),
            Some((_, path, Err(reason))) => {
                for index in run {
                    results[*index] = Some(Err(WalError::io(
                        "open",
                        path,
                        std::io::Error::other(format!("{reason} (removed by retention?)")),
                    )));
                }
            }
            None => {}
        }
        start = end;
    }
    results.into_iter().map(|result| result.unwrap_or(Err(WalError::Closed))).collect()
}

/// One `pread` covering the positions `run` (sorted, in one segment), then each frame checked.
fn read_run(
    file: &File,
    path: &Path,
    positions: &[Position],
    run: &[usize],
    results: &mut [Option<Result<RecordAt, WalError>>],
) {
    let Some((&first, &last)) = run.first().zip(run.last()) else {
        return;
    };
    let base = u64::from(positions[first].offset);
    let span = run.iter().map(|index| positions[*index].end()).max().unwrap_or(base).saturating_sub(base);
    let mut bytes = vec![0u8; span as usize];
    let read = file.read_exact_at(&mut bytes, base);
    for index in run {
        let position = positions[*index];
        results[*index] = Some(match &read {
            Ok(()) => frame_at(&bytes, position, base, path),
            Err(error) => Err(WalError::io("read", path, std::io::Error::new(error.kind(), error.to_string()))),
        });
    }
    debug_assert!(positions[last].segment_id == positions[first].segment_id);
}

/// The record whose frame lies at `position`, checked: within the bytes read, the checksum
/// matches, and the frame is exactly as long as the position says.
fn frame_at(bytes: &[u8], position: Position, base: u64, path: &Path) -> Result<RecordAt, WalError> {
    let corrupt = |reason: &str| WalError::corrupt(path, u64::from(position.offset), reason);
    let start = usize::try_from(u64::from(position.offset) - base).map_err(|_| corrupt("offset out of range"))?;
    let end = start + position.length as usize;
    let Some(slice) = bytes.get(..end) else {
        return Err(corrupt("the frame lies past the end of the segment"));
    };
    let found = frame::decode_frame(slice, start).map_err(|damage| corrupt(damage.describe()))?;
    if found.length != position.length as usize || found.kind == KIND_SEAL {
        return Err(corrupt("no record frame of the expected length at this position"));
    }
    Ok(RecordAt { lsn: found.lsn, kind: found.kind, body: found.body(slice).to_vec() })
}

/// Calls `visit` for every record in the log in `directory`, in LSN order, with its position,
/// without changing any file (recovery's replay, read-only: a torn tail simply ends the pass).
/// For tools and tests that rebuild state beside a live or stopped log.
pub fn for_each(directory: &Path, visit: &mut dyn FnMut(Record<'_>)) -> Result<u64, WalError> {
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    let mut records = 0;
    for (segment_id, path) in segments {
        let bytes = std::fs::read(&path).map_err(|error| WalError::io("read", &path, error))?;
        let scanned =
            scan::scan_segment(&bytes).map_err(|(offset, reason)| WalError::corrupt(&path, offset, reason))?;
        for frame in &scanned.frames {
            visit(Record::from_frame(segment_id, frame, &bytes));
            records += 1;
        }
    }
    Ok(records)
}
