//! What the log's fuzz targets check, shared by the targets (`fuzz/fuzz_targets/wal_*.rs`) and
//! the corpus replay in `wal/tests/fuzz_corpus.rs`. Each function takes one input and panics
//! when a property fails.
//!
//! Checksums guard every part of the format, so random damage mostly stops at the first
//! checksum. To reach the checks behind them, each input is also tried after [`fix_checksums`]
//! recomputed every checksum the layout lets it find: the fuzzer then mutates lengths, counts,
//! LSNs, kinds and seals as a buggy writer (or a disk returning another block with valid
//! checksums) would.
//!
//! The properties, beyond "no panic":
//! - Segment scan: the frames it returns lie inside the valid part, in order, without overlap,
//!   with consecutive LSNs from the header's first LSN; each frame is exactly what
//!   `encode_record` makes of its kind, LSN and body (decode then encode is the identity); the
//!   damage, if any, starts where the valid part ends; a decoded header encodes back to its bytes.
//! - Recovery: the read-only tools never panic; a recovery that succeeds replays consecutive
//!   LSNs, and running it again on the directory it left replays the same records (recovery
//!   is idempotent), as does the read-only pass `read::for_each`; a recovery that fails leaves
//!   every segment file as it was, or (the newest) cut to a prefix of it.

use std::collections::BTreeMap;
use std::path::Path;

use kapsel_wal::frame::{self, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use kapsel_wal::seal::{CHAIN_ENTRY_BYTES, CHAIN_FILE_NAME};
use kapsel_wal::{audit, merkle, read, scan};

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Recomputes, in place, every checksum of a segment that its layout lets us find (see
/// `wal/src/frame.rs`): the header's, then for each batch (while its magic is there) the
/// checksum of each record frame inside it and of its header, seeded with the header's nonce.
pub fn fix_checksums(segment: &mut [u8]) {
    if segment.len() < SEGMENT_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&segment[0..12]), &segment[16..40]);
    segment[12..16].copy_from_slice(&crc.to_le_bytes());
    let nonce = u64_at(segment, 32).unwrap_or(0);
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + BATCH_HEADER_BYTES <= segment.len() && &segment[offset..offset + 4] == b"KBAT" {
        let body_bytes = u32_at(segment, offset + 8).unwrap_or(0) as usize;
        let body_start = offset + BATCH_HEADER_BYTES;
        let end = body_start.saturating_add(body_bytes).min(segment.len());
        let mut record = body_start;
        while record + RECORD_HEADER_BYTES <= end {
            let record_end = record + RECORD_HEADER_BYTES + u32_at(segment, record).unwrap_or(0) as usize;
            if record_end > end {
                break;
            }
            let crc = crc32c::crc32c(&segment[record + 8..record_end]);
            segment[record + 4..record + 8].copy_from_slice(&crc.to_le_bytes());
            record = record_end;
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&nonce.to_le_bytes()), &segment[offset + 8..body_start]);
        segment[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = body_start.saturating_add(body_bytes);
    }
}

/// Recomputes, in place, each chain entry's chain hash (from its root and previous hash) and
/// checksum.
pub fn fix_chain_checksums(chain: &mut [u8]) {
    for entry in chain.chunks_exact_mut(CHAIN_ENTRY_BYTES) {
        let mut previous = [0u8; 32];
        let mut root = [0u8; 32];
        previous.copy_from_slice(&entry[80..112]);
        root.copy_from_slice(&entry[48..80]);
        entry[112..144].copy_from_slice(&merkle::chain_next(&previous, &root));
        let crc = crc32c::crc32c(&entry[8..]);
        entry[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The segment target: the header decoder and the segment scan on the input as it is and with
/// its checksums fixed.
pub fn segment(input: &[u8]) {
    check_segment(input);
    let mut fixed = input.to_vec();
    fix_checksums(&mut fixed);
    check_segment(&fixed);
}

fn check_segment(bytes: &[u8]) {
    if let Ok(header) = frame::decode_segment_header(bytes) {
        assert_eq!(&frame::encode_segment_header(header)[..], &bytes[..SEGMENT_HEADER_BYTES], "header round trip");
    }
    // A batch anywhere: decode it with the segment's nonce (or zero) at every offset the input
    // names in its first bytes, and check its frames the same way.
    let nonce = u64_at(bytes, 32).unwrap_or(0);
    for offset in bytes.iter().take(4).map(|byte| usize::from(*byte)).chain([SEGMENT_HEADER_BYTES]) {
        if let Ok(batch) = frame::decode_batch(bytes, nonce, offset) {
            assert!(batch.end <= bytes.len() && batch.end > offset, "batch end out of bounds");
            check_frames(bytes, &batch.frames, offset + BATCH_HEADER_BYTES, batch.end);
        }
    }
    let Ok(scanned) = scan::scan_segment(bytes) else {
        return;
    };
    let valid_end = usize::try_from(scanned.valid_end).unwrap_or(usize::MAX);
    assert!((SEGMENT_HEADER_BYTES..=bytes.len()).contains(&valid_end), "valid_end {valid_end} out of bounds");
    match &scanned.damage {
        Some(damage) => assert_eq!(damage.offset, scanned.valid_end, "damage must start where the valid part ends"),
        None => assert_eq!(valid_end, bytes.len(), "no damage, yet the valid part stops short"),
    }
    let user_frames = scanned.frames.iter().filter(|found| found.kind != frame::KIND_SEAL).count();
    assert_eq!(user_frames, scanned.frames.len(), "a seal frame among the records");
    check_frames(bytes, &scanned.frames, SEGMENT_HEADER_BYTES, valid_end);
    for (index, found) in scanned.frames.iter().enumerate() {
        let expected = scanned.header.first_lsn.checked_add(index as u64);
        assert_eq!(Some(found.lsn), expected, "LSNs must run consecutively from the header's first LSN");
    }
    let _ = scanned.root(bytes);
    let _ = scan::check_seal(&scanned, bytes, &merkle::CHAIN_GENESIS);
}

/// Frames lie in `start..end`, in order, without overlap, and each is what `encode_record`
/// makes of its kind, LSN and body.
fn check_frames(bytes: &[u8], frames: &[frame::FrameRef], start: usize, end: usize) {
    let mut at = start;
    for found in frames {
        assert!(found.offset >= at && found.offset + found.length <= end, "frame outside its range");
        assert!(found.length >= RECORD_HEADER_BYTES, "frame shorter than its header");
        let mut encoded = Vec::new();
        frame::encode_record(&mut encoded, found.kind, found.lsn, found.body(bytes));
        assert_eq!(encoded, found.bytes(bytes), "decode then encode changed a frame");
        at = found.offset + found.length;
    }
}

/// A log directory as the recovery target reads it from its input: a list of files, each
/// `[selector: u8][length: u16 LE][bytes]` (a short last file takes what is left). The selector's
/// low seven bits name the file (0 is `audit.chain`, n is segment n); its high bit asks for the
/// file's checksums to be fixed first. A later file of the same name replaces an earlier one.
pub fn directory_files(input: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut rest = input;
    while let [selector, low, high, after @ ..] = rest {
        let length = usize::from(u16::from_le_bytes([*low, *high])).min(after.len());
        let (contents, next) = after.split_at(length);
        let mut contents = contents.to_vec();
        let name = match selector & 0x7F {
            0 => {
                if selector & 0x80 != 0 {
                    fix_chain_checksums(&mut contents);
                }
                CHAIN_FILE_NAME.to_string()
            }
            id => {
                if selector & 0x80 != 0 {
                    fix_checksums(&mut contents);
                }
                scan::segment_file_name(u64::from(id))
            }
        };
        files.insert(name, contents);
        rest = next;
    }
    files
}

/// The inverse of [`directory_files`] for a real log directory (no checksum fixing), for
/// writing seeds. Files other than the chain and segments numbered 1 to 127 are left out.
pub fn encode_directory(directory: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let chain = directory.join(CHAIN_FILE_NAME);
    let mut files = Vec::new();
    if chain.exists() {
        files.push((0u8, std::fs::read(&chain)?));
    }
    for (id, path) in scan::list_segments(directory)? {
        if let Ok(selector) = u8::try_from(id) {
            if (1..0x80).contains(&selector) {
                files.push((selector, std::fs::read(path)?));
            }
        }
    }
    for (selector, contents) in files {
        let length = u16::try_from(contents.len()).unwrap_or(u16::MAX);
        out.push(selector);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&contents[..usize::from(length)]);
    }
    Ok(out)
}

/// A scratch directory in memory when the machine has one: recovery fsyncs, which a disk would
/// make the slowest part of every input.
pub fn scratch_directory() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = || tempfile::Builder::new().prefix("kapsel-fuzz-").tempdir_in(shm);
    if shm.is_dir() {
        if let Ok(directory) = builder() {
            return directory;
        }
    }
    tempfile::Builder::new().prefix("kapsel-fuzz-").tempdir().expect("a scratch directory")
}

type Replayed = Vec<(u64, u8, Vec<u8>)>;

fn recover(directory: &Path) -> Result<(Replayed, u64), kapsel_wal::WalError> {
    let mut replayed = Vec::new();
    let next_lsn = kapsel_wal::fuzzing::recover(directory, &mut |record| {
        replayed.push((record.lsn, record.kind, record.body.to_vec()));
    })?;
    Ok((replayed, next_lsn))
}

/// The recovery target: the directory the input describes, written to a scratch directory,
/// read by the tools and then recovered twice.
pub fn recovery(input: &[u8]) {
    let files = directory_files(input);
    let scratch = scratch_directory();
    let directory = scratch.path().join("wal");
    std::fs::create_dir(&directory).expect("create the log directory");
    for (name, contents) in &files {
        std::fs::write(directory.join(name), contents).expect("write a file");
    }
    // The read-only tools (`kapsel audit verify`, `kapsel wal inspect`, rebuilding state beside
    // a log) read the same damaged files.
    let _ = audit::inspect(&directory);
    let _ = audit::verify(&directory, &mut |_| {});
    let _ = audit::read_chain(&directory);
    let _ = read::for_each(&directory, &mut |_| {});
    match recover(&directory) {
        Ok((replayed, next_lsn)) => {
            for pair in replayed.windows(2) {
                assert_eq!(pair[0].0.checked_add(1), Some(pair[1].0), "replayed LSNs must be consecutive");
            }
            if let Some(last) = replayed.last() {
                assert_eq!(last.0.checked_add(1), Some(next_lsn), "next LSN must follow the last replayed");
            }
            let again = recover(&directory).expect("a recovered log recovers again");
            assert_eq!(again, (replayed.clone(), next_lsn), "recovery is not idempotent");
            let mut walked = Vec::new();
            read::for_each(&directory, &mut |record| walked.push((record.lsn, record.kind, record.body.to_vec())))
                .expect("for_each reads a recovered log");
            assert_eq!(walked, replayed, "for_each and recovery disagree");
        }
        Err(_) => {
            for (name, contents) in &files {
                if name == CHAIN_FILE_NAME {
                    continue;
                }
                if let Ok(after) = std::fs::read(directory.join(name)) {
                    assert!(contents.starts_with(&after), "failed recovery changed {name} other than by a cut");
                }
            }
        }
    }
}
