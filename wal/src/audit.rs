//! Read-only tools over a log directory: full verification of roots and chain
//! (`kapsel audit verify`), a listing (`kapsel wal inspect`) and RFC 6962 inclusion proofs.
//! These never modify a file, so they are safe to run beside a live server; a batch being
//! written at that moment shows up as a torn tail of the newest segment, which is not an error.

use std::path::{Path, PathBuf};

use crate::merkle::{self, Hash, CHAIN_GENESIS};
use crate::scan::{self, SegmentScan};
use crate::seal::{self, SealInfo, CHAIN_ENTRY_BYTES, CHAIN_FILE_NAME};
use crate::WalError;

/// One segment as the tools see it.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    /// Segment id.
    pub segment_id: u64,
    /// Its file.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Records (Merkle leaves) in it.
    pub records: u64,
    /// LSN of its first record.
    pub first_lsn: u64,
    /// The seal, when sealed.
    pub seal: Option<SealInfo>,
    /// Offset of an unfinished final batch (newest segment only; never acknowledged).
    pub torn_tail: Option<u64>,
}

/// Progress of a verification, reported once per segment.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Segments verified so far.
    pub segments_done: usize,
    /// Segments in all.
    pub segments_total: usize,
    /// Bytes verified so far.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes_total: u64,
    /// The segment just verified.
    pub path: &'a Path,
}

/// What `verify` checked.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Segments present, oldest first.
    pub segments: Vec<SegmentReport>,
    /// Seals in the chain file (including those of removed segments).
    pub chain: Vec<SealInfo>,
    /// Records in the segments present.
    pub records: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, WalError> {
    std::fs::read(path).map_err(|error| WalError::io("read", path, error))
}

/// Reads the chain file strictly: every entry must decode and link. A partial final entry (an
/// append in progress or torn by a crash) is left out; recovery re-appends it from its seal.
pub fn read_chain(directory: &Path) -> Result<Vec<SealInfo>, WalError> {
    let path = directory.join(CHAIN_FILE_NAME);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = read(&path)?;
    let mut entries: Vec<SealInfo> = Vec::new();
    for (index, chunk) in bytes.chunks_exact(CHAIN_ENTRY_BYTES).enumerate() {
        let offset = (index * CHAIN_ENTRY_BYTES) as u64;
        let entry = seal::decode_chain_entry(chunk).map_err(|reason| WalError::corrupt(&path, offset, reason))?;
        let previous = entries.last().map_or(CHAIN_GENESIS, |before| before.chain);
        if entry.previous_chain != previous || entry.segment_id != entries.len() as u64 + 1 {
            return Err(WalError::corrupt(&path, offset, "chain entry does not link to the one before"));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn report(id: u64, path: &Path, bytes: &[u8], scan: &SegmentScan) -> SegmentReport {
    SegmentReport {
        segment_id: id,
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        records: scan.frames.len() as u64,
        first_lsn: scan.header.first_lsn,
        seal: scan.seal.clone(),
        torn_tail: scan.damage.as_ref().map(|damage| damage.offset),
    }
}

/// Lists the segments of a log directory with their record counts and seals, without checking
/// roots. Damage shows as a torn tail; use [`verify`] to judge it.
pub fn inspect(directory: &Path) -> Result<Vec<SegmentReport>, WalError> {
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    let mut reports = Vec::with_capacity(segments.len());
    for (id, path) in segments {
        let bytes = read(&path)?;
        let scan = scan::scan_segment(&bytes).map_err(|(offset, reason)| WalError::corrupt(&path, offset, reason))?;
        reports.push(report(id, &path, &bytes, &scan));
    }
    Ok(reports)
}

/// Verifies a log directory: every frame of every segment, every sealed segment's Merkle root
/// against its seal, the seals against the chain file, and the chain's links. The first problem
/// is an error naming the file and offset.
pub fn verify(directory: &Path, progress: &mut dyn FnMut(&Progress<'_>)) -> Result<VerifyReport, WalError> {
    let chain = read_chain(directory)?;
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    let bytes_total = segments.iter().filter_map(|(_, path)| std::fs::metadata(path).ok()).map(|meta| meta.len()).sum();
    let mut verified = VerifyReport { segments: Vec::with_capacity(segments.len()), chain, records: 0 };
    let mut previous_chain = chain_before(directory, &verified.chain, segments.first().map(|(id, _)| *id))?;
    let mut bytes_done = 0;
    for (index, (id, path)) in segments.iter().enumerate() {
        let newest = index + 1 == segments.len();
        let bytes = read(path)?;
        let scan = scan::scan_segment(&bytes).map_err(|(offset, reason)| WalError::corrupt(path, offset, reason))?;
        if let Some(damage) = scan.damage.as_ref().filter(|damage| !newest || damage.followed_by_valid_batch) {
            return Err(WalError::corrupt(path, damage.offset, damage.reason));
        }
        if scan.seal.is_some() {
            let seal = scan::check_seal(&scan, &bytes, &previous_chain)
                .map_err(|reason| WalError::corrupt(path, scan.valid_end, reason))?;
            match verified.chain.iter().find(|entry| entry.segment_id == seal.segment_id) {
                Some(entry) if *entry != seal => {
                    return Err(WalError::corrupt(
                        directory.join(CHAIN_FILE_NAME),
                        0,
                        format!("chain entry for segment {id} differs from its seal"),
                    ));
                }
                _ => {}
            }
            previous_chain = seal.chain;
        } else if !newest {
            return Err(WalError::corrupt(path, scan.valid_end, "segment is not sealed but a newer one exists"));
        }
        verified.records += scan.frames.len() as u64;
        verified.segments.push(report(*id, path, &bytes, &scan));
        bytes_done += bytes.len() as u64;
        progress(&Progress { segments_done: index + 1, segments_total: segments.len(), bytes_done, bytes_total, path });
    }
    Ok(verified)
}

/// The chain hash preceding the first present segment (retention may have removed older ones).
fn chain_before(directory: &Path, chain: &[SealInfo], first_id: Option<u64>) -> Result<Hash, WalError> {
    match first_id {
        None | Some(0 | 1) => Ok(CHAIN_GENESIS),
        Some(first_id) => {
            chain.iter().find(|entry| entry.segment_id == first_id - 1).map(|entry| entry.chain).ok_or_else(|| {
                WalError::corrupt(
                    directory.join(CHAIN_FILE_NAME),
                    0,
                    format!("no seal for the removed segments before {first_id}"),
                )
            })
        }
    }
}

/// An RFC 6962 inclusion proof of one record in its sealed segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The record's LSN.
    pub lsn: u64,
    /// The sealed segment holding it.
    pub segment_id: u64,
    /// Leaf index within the segment's tree.
    pub leaf_index: u64,
    /// Number of leaves in the tree.
    pub tree_size: u64,
    /// The leaf: the record's whole frame (header with LSN and kind, then body).
    pub leaf: Vec<u8>,
    /// Audit path from the leaf upwards.
    pub path: Vec<Hash>,
    /// The segment's Merkle root, as sealed.
    pub root: Hash,
    /// The seal's chain hash.
    pub chain: Hash,
}

impl InclusionProof {
    /// Checks the audit path against the root.
    pub fn verify(&self) -> bool {
        let leaf = merkle::leaf_hash(&self.leaf);
        merkle::verify_inclusion(&leaf, self.leaf_index, self.tree_size, &self.path, &self.root)
    }
}

/// Proves that record `lsn` is in its sealed segment. Reads the segment whole.
pub fn prove(directory: &Path, lsn: u64) -> Result<InclusionProof, WalError> {
    let chain = read_chain(directory)?;
    let Some(seal) = chain.iter().find(|entry| entry.first_lsn <= lsn && lsn <= entry.last_lsn) else {
        return Err(WalError::NotSealed { lsn });
    };
    let path = directory.join(scan::segment_file_name(seal.segment_id));
    let bytes = read(&path)?;
    let scan = scan::scan_segment(&bytes).map_err(|(offset, reason)| WalError::corrupt(&path, offset, reason))?;
    let checked = scan::check_seal(&scan, &bytes, &seal.previous_chain)
        .map_err(|reason| WalError::corrupt(&path, scan.valid_end, reason))?;
    let index = (lsn - checked.first_lsn) as usize;
    let leaves: Vec<Hash> = scan.frames.iter().map(|frame| merkle::leaf_hash(frame.bytes(&bytes))).collect();
    let (Some(frame), Some(proof)) = (scan.frames.get(index), merkle::inclusion_proof(&leaves, index)) else {
        return Err(WalError::NotSealed { lsn });
    };
    Ok(InclusionProof {
        lsn,
        segment_id: checked.segment_id,
        leaf_index: index as u64,
        tree_size: leaves.len() as u64,
        leaf: frame.bytes(&bytes).to_vec(),
        path: proof,
        root: checked.root,
        chain: checked.chain,
    })
}

/// Reads records back by LSN (for example to re-deliver an event whose payload left memory).
/// Each segment is read once however many of its records are asked for. Records that are not in
/// the log (removed by retention, or never written) are left out of the answer.
pub fn read_records(directory: &Path, lsns: &[u64]) -> Result<Vec<(u64, u8, Vec<u8>)>, WalError> {
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    let mut wanted: Vec<u64> = lsns.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = Vec::with_capacity(wanted.len());
    let mut first_lsns = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        let mut header = [0u8; crate::frame::SEGMENT_HEADER_BYTES];
        let first = std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
            .ok()
            .and_then(|()| crate::frame::decode_segment_header(&header).ok())
            .map(|header| header.first_lsn);
        first_lsns.push(first);
    }
    for (index, (_, path)) in segments.iter().enumerate() {
        let Some(first) = first_lsns[index] else { continue };
        let next_first = first_lsns.get(index + 1).copied().flatten().unwrap_or(u64::MAX);
        if !wanted.iter().any(|lsn| (first..next_first).contains(lsn)) {
            continue;
        }
        let bytes = read(path)?;
        let scan = scan::scan_segment(&bytes).map_err(|(offset, reason)| WalError::corrupt(path, offset, reason))?;
        for frame in &scan.frames {
            if wanted.binary_search(&frame.lsn).is_ok() {
                found.push((frame.lsn, frame.kind, frame.body(&bytes).to_vec()));
            }
        }
    }
    Ok(found)
}
