//! Reading a segment back: pure functions over its bytes, shared by recovery ([`crate::Wal::open`])
//! and by the read-only tools ([`crate::audit`]).

use std::path::{Path, PathBuf};

use crate::codec;
use crate::frame::{self, FrameRef, SegmentHeader, KIND_SEAL, SEGMENT_HEADER_BYTES};
use crate::merkle::{self, Frontier, Hash};
use crate::seal::SealInfo;

/// File name of segment `id`: zero-padded so that names sort in log order.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// Parses a segment file name back into its id.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files of a log directory, in id order.
pub fn list_segments(directory: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((id, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(segments)
}

/// Damage found while scanning a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad batch.
    pub offset: u64,
    /// What is wrong there.
    pub reason: &'static str,
    /// A valid batch follows the damage, so it cannot be a torn final write.
    pub followed_by_valid_batch: bool,
}

/// What a segment holds, up to the first damage.
#[derive(Debug)]
pub struct SegmentScan {
    /// The decoded header.
    pub header: SegmentHeader,
    /// User records, in LSN order.
    pub frames: Vec<FrameRef>,
    /// The seal, when the segment is sealed.
    pub seal: Option<SealInfo>,
    /// Offset just past the last valid batch.
    pub valid_end: u64,
    /// The first damage, if any.
    pub damage: Option<Damage>,
}

impl SegmentScan {
    /// LSN of the last record, or `first_lsn - 1` when the segment holds none.
    pub fn last_lsn(&self) -> u64 {
        self.frames.last().map_or(self.header.first_lsn.saturating_sub(1), |frame| frame.lsn)
    }

    /// Merkle root over the record frames.
    pub fn root(&self, bytes: &[u8]) -> Hash {
        self.leaves(bytes).root()
    }

    /// Incremental Merkle state over the record frames.
    pub fn leaves(&self, bytes: &[u8]) -> Frontier {
        let mut frontier = Frontier::new();
        for frame in &self.frames {
            frontier.push(merkle::leaf_hash(frame.bytes(bytes)));
        }
        frontier
    }
}

/// Scans a whole segment. `Err` is a damaged header, with its offset and reason.
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, (u64, &'static str)> {
    let header = frame::decode_segment_header(bytes).map_err(|reason| (0, reason))?;
    let mut scan =
        SegmentScan { header, frames: Vec::new(), seal: None, valid_end: SEGMENT_HEADER_BYTES as u64, damage: None };
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected_lsn = header.first_lsn;
    while offset < bytes.len() {
        let outcome =
            frame::decode_batch(bytes, header.nonce, offset).map_err(|damage| damage.describe()).and_then(|batch| {
                if scan.seal.is_some() {
                    return Err("data after the segment's seal");
                }
                accept_batch(&mut scan, bytes, batch.frames, &mut expected_lsn).map(|()| batch.end)
            });
        match outcome {
            Ok(end) => {
                offset = end;
                scan.valid_end = end as u64;
            }
            Err(reason) => {
                let followed_by_valid_batch = frame::find_valid_batch_after(bytes, header.nonce, offset).is_some();
                scan.damage = Some(Damage { offset: offset as u64, reason, followed_by_valid_batch });
                break;
            }
        }
    }
    Ok(scan)
}

fn accept_batch(
    scan: &mut SegmentScan,
    bytes: &[u8],
    frames: Vec<FrameRef>,
    expected_lsn: &mut u64,
) -> Result<(), &'static str> {
    if let Some(first) = frames.first().filter(|first| first.kind == KIND_SEAL) {
        if frames.len() != 1 {
            return Err("a seal shares its batch with records");
        }
        let seal: SealInfo = codec::decode(first.body(bytes)).map_err(|_| "seal body does not decode")?;
        scan.seal = Some(seal);
        return Ok(());
    }
    for frame in &frames {
        if frame.kind == KIND_SEAL {
            return Err("a seal shares its batch with records");
        }
        if frame.lsn != *expected_lsn {
            return Err("record LSN does not follow the previous batch");
        }
        *expected_lsn += 1;
    }
    scan.frames.extend(frames);
    Ok(())
}

/// Checks a sealed segment against its seal and the chain before it. `Err` names the problem.
pub fn check_seal(scan: &SegmentScan, bytes: &[u8], previous_chain: &Hash) -> Result<SealInfo, String> {
    let Some(seal) = scan.seal.clone() else {
        return Err("segment is not sealed".into());
    };
    if seal.segment_id != scan.header.segment_id {
        return Err(format!("seal names segment {} but the header says {}", seal.segment_id, scan.header.segment_id));
    }
    if seal.records != scan.frames.len() as u64
        || seal.first_lsn != scan.header.first_lsn
        || seal.last_lsn != scan.last_lsn()
    {
        return Err("seal's record count or LSN range does not match the segment".into());
    }
    if seal.root != scan.root(bytes) {
        return Err(format!("Merkle root mismatch: seal has {}", merkle::to_hex(&seal.root)));
    }
    if seal.previous_chain != *previous_chain {
        return Err("seal does not link to the previous seal's chain hash".into());
    }
    if !seal.links() {
        return Err("seal's chain hash does not follow from its root".into());
    }
    Ok(seal)
}
