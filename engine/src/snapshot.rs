//! The endpoint snapshot: every endpoint of a shard, written next to its log
//! (`<data>/wal/shard-<n>/endpoints.snapshot`) before retention removes segments.
//!
//! Replay starts from the snapshot, then applies the log. That is sound for any log suffix
//! because the snapshot is taken from memory, which never runs ahead of the log: each endpoint
//! change that followed the snapshot is in the log after it and replays over it, and for replay
//! an endpoint's events only need it to exist (a deletion later in the log removes them again).
//! The file is replaced atomically (write, fsync, rename, fsync the directory) and carries a
//! CRC32C, so a torn or damaged snapshot is an error at start, never a silent loss.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::endpoint::Endpoint;
use crate::state::ShardState;

/// The file name inside the shard's log directory.
pub const FILE_NAME: &str = "endpoints.snapshot";
const MAGIC: &[u8; 8] = b"KPSNAP01";

/// The snapshot's path for the log in `directory`.
pub fn path(directory: &Path) -> PathBuf {
    directory.join(FILE_NAME)
}

/// Writes `endpoints` durably, replacing any earlier snapshot.
pub fn write(directory: &Path, endpoints: &[Endpoint]) -> Result<(), String> {
    let body = kapsel_wal::codec::encode(&endpoints.to_vec()).map_err(|error| error.to_string())?;
    let mut bytes = Vec::with_capacity(body.len() + 12);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let final_path = path(directory);
    let temporary = directory.join(format!("{FILE_NAME}.tmp"));
    let failed = |what: &str, error: std::io::Error| format!("{what} {}: {error}", temporary.display());
    let mut file = std::fs::File::create(&temporary).map_err(|error| failed("create", error))?;
    file.write_all(&bytes).map_err(|error| failed("write", error))?;
    file.sync_all().map_err(|error| failed("fsync", error))?;
    drop(file);
    std::fs::rename(&temporary, &final_path).map_err(|error| failed("rename", error))?;
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| format!("fsync {}: {error}", directory.display()))
}

/// Reads the snapshot; `None` when there is none (retention never ran).
pub fn read(directory: &Path) -> Result<Option<Vec<Endpoint>>, String> {
    let snapshot = path(directory);
    let bytes = match std::fs::read(&snapshot) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("read {}: {error}", snapshot.display())),
    };
    let damaged = |reason: &str| format!("endpoint snapshot {} is damaged: {reason}", snapshot.display());
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(damaged("bad header"));
    }
    let (crc, body) = (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]), &bytes[12..]);
    if crc32c::crc32c(body) != crc {
        return Err(damaged("checksum mismatch"));
    }
    kapsel_wal::codec::decode::<Vec<Endpoint>>(body).map(Some).map_err(|error| damaged(&error.to_string()))
}

/// Loads the snapshot (if any) into `state` before the log is replayed; returns how many
/// endpoints it held.
pub fn load_into(state: &mut ShardState, directory: &Path, now_ms: u64) -> Result<usize, String> {
    let endpoints = read(directory)?.unwrap_or_default();
    let count = endpoints.len();
    for endpoint in endpoints {
        state.put_endpoint(endpoint, now_ms);
    }
    Ok(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        crate::endpoint::EndpointInput::parse(br#"{"url":"https://example.com/h"}"#)
            .unwrap()
            .into_endpoint(id, None, 1)
            .unwrap()
    }

    // The snapshot stands in for removed log records: it must come back exactly, and damage
    // must be reported rather than read as "no endpoints".
    #[test]
    fn round_trips_and_reports_damage() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(read(directory.path()).unwrap(), None);
        let endpoints = vec![endpoint("a"), endpoint("b")];
        write(directory.path(), &endpoints).unwrap();
        assert_eq!(read(directory.path()).unwrap(), Some(endpoints));
        write(directory.path(), &[]).unwrap();
        assert_eq!(read(directory.path()).unwrap(), Some(Vec::new()), "replaced, not appended");
        write(directory.path(), &[endpoint("c")]).unwrap();
        let mut bytes = std::fs::read(path(directory.path())).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(path(directory.path()), &bytes).unwrap();
        assert!(read(directory.path()).unwrap_err().contains("checksum"));
        std::fs::write(path(directory.path()), b"short").unwrap();
        assert!(read(directory.path()).is_err());
    }
}
