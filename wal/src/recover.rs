//! Recovery on open: verify every frame of every segment, replay the records in LSN order,
//! truncate a torn tail of the newest segment, and reconcile the audit chain file with the
//! seals found in the segments. Runs once at startup with blocking file calls; the shard does
//! not serve until it is done.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::frame::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::io::sync_directory_blocking;
use crate::merkle::{Frontier, Hash, CHAIN_GENESIS};
use crate::scan::{self, SegmentScan};
use crate::seal::{self, SealInfo, CHAIN_ENTRY_BYTES, CHAIN_FILE_NAME};
use crate::{Record, WalError};

/// The newest segment, still open for appends.
pub(crate) struct ActiveSegment {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) header: SegmentHeader,
    pub(crate) length: u64,
    pub(crate) records: u64,
    pub(crate) last_lsn: u64,
    pub(crate) frontier: Frontier,
}

/// The audit chain file, positioned for the next append.
pub(crate) struct ChainFile {
    pub(crate) file: File,
    pub(crate) length: u64,
    pub(crate) last: Hash,
}

/// Everything the log needs to resume.
pub(crate) struct Recovered {
    pub(crate) next_lsn: u64,
    pub(crate) records: u64,
    pub(crate) sealed: Vec<SealInfo>,
    pub(crate) oldest_segment_id: u64,
    pub(crate) next_segment_id: u64,
    pub(crate) active: Option<ActiveSegment>,
    pub(crate) chain: ChainFile,
    pub(crate) truncated: Option<(PathBuf, u64)>,
}

fn read_whole(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|error| WalError::io("read", path, error))?;
    Ok(bytes)
}

/// Recovers the log in `directory`, calling `replay` for every user record in LSN order.
pub(crate) fn recover(directory: &Path, replay: &mut dyn FnMut(Record<'_>)) -> Result<Recovered, WalError> {
    crate::io::create_dir_all_durable(directory).map_err(|error| WalError::io("create directory", directory, error))?;
    let mut chain = load_chain(directory)?;
    let segments = scan::list_segments(directory).map_err(|error| WalError::io("list", directory, error))?;
    let mut walk = Walk::start(directory, &chain.entries, segments.first().map(|(id, _)| *id))?;
    for (index, (id, path)) in segments.iter().enumerate() {
        let newest = index + 1 == segments.len();
        walk.segment(*id, path, newest, &mut chain, replay)?;
    }
    if let Some(stray) = chain.entries.last().filter(|entry| entry.segment_id >= walk.next_segment_id) {
        return Err(WalError::corrupt(
            directory.join(CHAIN_FILE_NAME),
            0,
            format!("the chain seals segment {} but that segment is missing", stray.segment_id),
        ));
    }
    Ok(Recovered {
        next_lsn: walk.expected_lsn,
        records: walk.records,
        oldest_segment_id: segments.first().map_or(walk.next_segment_id, |(id, _)| *id),
        next_segment_id: walk.next_segment_id,
        active: walk.active,
        chain: ChainFile { file: chain.file, length: chain.length, last: walk.previous_chain },
        sealed: chain.entries,
        truncated: walk.truncated,
    })
}

struct LoadedChain {
    file: File,
    path: PathBuf,
    length: u64,
    entries: Vec<SealInfo>,
}

impl LoadedChain {
    fn append(&mut self, seal: &SealInfo) -> Result<(), WalError> {
        let entry = seal::encode_chain_entry(seal);
        let outcome = self.file.write_all(&entry).and_then(|()| self.file.sync_data());
        outcome.map_err(|error| WalError::io("append chain", &self.path, error))?;
        self.length += CHAIN_ENTRY_BYTES as u64;
        self.entries.push(seal.clone());
        Ok(())
    }
}

fn load_chain(directory: &Path) -> Result<LoadedChain, WalError> {
    let path = directory.join(CHAIN_FILE_NAME);
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|error| WalError::io("open", &path, error))?;
    if !existed {
        sync_directory_blocking(directory).map_err(|error| WalError::io("fsync directory", directory, error))?;
    }
    let bytes = read_whole(&path)?;
    let mut entries: Vec<SealInfo> = Vec::new();
    let mut valid = 0usize;
    for (index, chunk) in bytes.chunks(CHAIN_ENTRY_BYTES).enumerate() {
        let offset = (index * CHAIN_ENTRY_BYTES) as u64;
        let last = (index + 1) * CHAIN_ENTRY_BYTES >= bytes.len();
        match seal::decode_chain_entry(chunk) {
            Ok(entry) => {
                let previous = entries.last().map_or(CHAIN_GENESIS, |before| before.chain);
                let expected_id = entries.last().map_or(1, |before| before.segment_id.saturating_add(1));
                if entry.previous_chain != previous || entry.segment_id != expected_id {
                    return Err(WalError::corrupt(&path, offset, "chain entry does not link to the one before"));
                }
                entries.push(entry);
                valid += CHAIN_ENTRY_BYTES;
            }
            // The final entry may be a torn append; its seal is still in its segment and is
            // appended again below.
            Err(reason) if last => tracing::warn!(path = %path.display(), offset, reason, "dropping torn chain entry"),
            Err(reason) => return Err(WalError::corrupt(&path, offset, reason)),
        }
    }
    if valid != bytes.len() {
        file.set_len(valid as u64)
            .and_then(|()| file.sync_all())
            .map_err(|error| WalError::io("truncate", &path, error))?;
    }
    Ok(LoadedChain { file, path, length: valid as u64, entries })
}

/// State carried from one segment to the next during recovery.
struct Walk<'a> {
    directory: &'a Path,
    previous_chain: Hash,
    expected_lsn: u64,
    records: u64,
    next_segment_id: u64,
    active: Option<ActiveSegment>,
    truncated: Option<(PathBuf, u64)>,
}

impl<'a> Walk<'a> {
    /// Where the walk begins: at genesis, or after the seal of the last segment that retention
    /// removed.
    fn start(directory: &'a Path, chain: &[SealInfo], first_id: Option<u64>) -> Result<Self, WalError> {
        let mut walk = Walk {
            directory,
            previous_chain: CHAIN_GENESIS,
            expected_lsn: 1,
            records: 0,
            next_segment_id: 1,
            active: None,
            truncated: None,
        };
        let first_id = first_id.unwrap_or_else(|| chain.last().map_or(1, |entry| entry.segment_id.saturating_add(1)));
        if first_id > 1 {
            let Some(before) = chain.iter().find(|entry| entry.segment_id == first_id - 1) else {
                return Err(WalError::corrupt(
                    directory.join(CHAIN_FILE_NAME),
                    0,
                    format!("segments before {first_id} are gone and the chain holds no seal for them"),
                ));
            };
            walk.previous_chain = before.chain;
            walk.expected_lsn = before.last_lsn.saturating_add(1);
        }
        walk.next_segment_id = first_id;
        Ok(walk)
    }

    fn segment(
        &mut self,
        id: u64,
        path: &Path,
        newest: bool,
        chain: &mut LoadedChain,
        replay: &mut dyn FnMut(Record<'_>),
    ) -> Result<(), WalError> {
        if id != self.next_segment_id {
            return Err(WalError::corrupt(path, 0, format!("expected segment {} next", self.next_segment_id)));
        }
        let bytes = read_whole(path)?;
        let scan = match scan::scan_segment(&bytes) {
            Ok(scan) => scan,
            // Creating a segment writes its header in one write and fsyncs it before any batch;
            // a newest segment with no more than a damaged header is a creation cut short.
            Err((_, reason)) if newest && bytes.len() <= SEGMENT_HEADER_BYTES => {
                tracing::warn!(segment = %path.display(), reason, "removing segment whose creation was cut short");
                std::fs::remove_file(path)
                    .and_then(|()| sync_directory_blocking(self.directory))
                    .map_err(|error| WalError::io("remove", path, error))?;
                return Ok(());
            }
            Err((offset, reason)) => return Err(WalError::corrupt(path, offset, reason)),
        };
        if scan.header.segment_id != id || scan.header.first_lsn != self.expected_lsn {
            return Err(WalError::corrupt(path, 0, "segment header does not continue the log"));
        }
        self.accept_damage(&scan, path, newest)?;
        for frame in &scan.frames {
            replay(Record::from_frame(id, frame, &bytes));
        }
        self.records += scan.frames.len() as u64;
        self.expected_lsn = scan.last_lsn().saturating_add(1);
        self.next_segment_id = id.saturating_add(1);
        if scan.seal.is_some() {
            let seal = scan::check_seal(&scan, &bytes, &self.previous_chain)
                .map_err(|reason| WalError::corrupt(path, scan.valid_end, reason))?;
            reconcile_chain(chain, &seal)?;
            self.previous_chain = seal.chain;
        } else if !newest {
            return Err(WalError::corrupt(path, scan.valid_end, "segment is not sealed but a newer one exists"));
        } else {
            self.active = Some(active_segment(path, &scan, &bytes)?);
        }
        Ok(())
    }

    /// A torn tail of the newest segment is truncated; any other damage is a hard error.
    fn accept_damage(&mut self, scan: &SegmentScan, path: &Path, newest: bool) -> Result<(), WalError> {
        let Some(damage) = &scan.damage else {
            return Ok(());
        };
        if !newest || damage.followed_by_valid_batch {
            let reason = format!("{} (acknowledged data follows or the segment is not the newest)", damage.reason);
            return Err(WalError::corrupt(path, damage.offset, reason));
        }
        tracing::warn!(segment = %path.display(), offset = damage.offset, reason = damage.reason, "truncating torn tail");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_len(damage.offset).and_then(|()| file.sync_all()))
            .map_err(|error| WalError::io("truncate", path, error))?;
        self.truncated = Some((path.to_path_buf(), damage.offset));
        Ok(())
    }
}

fn reconcile_chain(chain: &mut LoadedChain, seal: &SealInfo) -> Result<(), WalError> {
    match chain.entries.iter().find(|entry| entry.segment_id == seal.segment_id) {
        Some(entry) if entry == seal => Ok(()),
        Some(_) => Err(WalError::corrupt(
            &chain.path,
            0,
            format!("chain entry for segment {} differs from its seal", seal.segment_id),
        )),
        // The segment's seal was made durable but the crash came before its chain append.
        None => chain.append(seal),
    }
}

fn active_segment(path: &Path, scan: &SegmentScan, bytes: &[u8]) -> Result<ActiveSegment, WalError> {
    let file =
        OpenOptions::new().read(true).write(true).open(path).map_err(|error| WalError::io("open", path, error))?;
    Ok(ActiveSegment {
        path: path.to_path_buf(),
        file,
        header: scan.header,
        length: scan.valid_end,
        records: scan.frames.len() as u64,
        last_lsn: scan.last_lsn(),
        frontier: scan.leaves(bytes),
    })
}
