//! The endpoint snapshot: every endpoint of a shard with its circuit breaker, and the LSN of the
//! last record the state had applied, written next to its log
//! (`<data>/wal/shard-<n>/endpoints.snapshot`) before retention removes segments. Retention
//! removes nothing above that LSN.
//!
//! Replay starts from the snapshot, then applies the log. That is sound for any log suffix
//! that starts at or before the snapshot's LSN: each endpoint change that followed the snapshot
//! is in the log after it and replays over it; for replay an endpoint's events only need it to
//! exist (a deletion later in the log removes them again); and attempt outcomes up to the
//! snapshot's LSN are already in its breakers, so replay does not feed them again.
//! The file is replaced atomically (write, fsync, rename, fsync the directory) and carries a
//! CRC32C, so a torn or damaged snapshot is an error at start, never a silent loss.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::model::endpoint::{Endpoint, EndpointV1};
use crate::state::breaker::{Breaker, BreakerSnapshot};
use crate::state::ShardState;

/// The file name inside the shard's log directory.
pub const FILE_NAME: &str = "endpoints.snapshot";
/// Endpoints only (before breakers were kept).
const MAGIC_ENDPOINTS: &[u8; 8] = b"KPSNAP01";
/// [`Snapshot`] with endpoints from before subscriptions ([`EndpointV1`]).
const MAGIC_V2: &[u8; 8] = b"KPSNAP02";
/// [`Snapshot`].
const MAGIC: &[u8; 8] = b"KPSNAP03";

/// [`Snapshot`] as `KPSNAP02` stored it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotV2 {
    applied_lsn: u64,
    endpoints: Vec<(EndpointV1, BreakerSnapshot)>,
}

/// What the snapshot holds.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshot {
    /// The last record the state had applied.
    pub applied_lsn: u64,
    /// Every endpoint with its breaker.
    pub endpoints: Vec<(Endpoint, BreakerSnapshot)>,
    /// Per channel's shard, the highest published id whose deliveries this shard adopted
    /// (`ShardState::adopted`): kept here because retention may remove the adoptions' records.
    pub adopted: Vec<(u16, u128)>,
    /// Tenants (shard 0; the others keep none).
    pub tenants: Vec<crate::model::tenant::Tenant>,
    /// Keys, as stored (hashes only; shard 0).
    pub keys: Vec<crate::model::tenant::StoredKey>,
}

impl Snapshot {
    /// The snapshot of a shard's state now.
    pub fn of(state: &ShardState) -> Self {
        Self {
            applied_lsn: state.applied_lsn(),
            endpoints: state
                .endpoints
                .values()
                .map(|entry| (entry.endpoint.clone(), entry.breaker.to_snapshot()))
                .collect(),
            adopted: state.adopted.iter().map(|(shard, event_id)| (*shard, event_id.0)).collect(),
            tenants: state.access.tenants.values().cloned().collect(),
            keys: state.access.keys.values().cloned().collect(),
        }
    }
}

/// The snapshot's path for the log in `directory`.
pub fn path(directory: &Path) -> PathBuf {
    directory.join(FILE_NAME)
}

/// The snapshot as bytes: a version tag, a CRC32C of the body, the body. What the file holds,
/// and what a cluster partition's snapshot message carries.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let body = kapsel_wal::codec::encode(snapshot).map_err(|error| error.to_string())?;
    let mut bytes = Vec::with_capacity(body.len() + 12);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Writes the snapshot durably, replacing any earlier one.
pub fn write(directory: &Path, snapshot: &Snapshot) -> Result<(), String> {
    let bytes = encode(snapshot)?;
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

/// Reads the snapshot; `None` when there is none (retention never ran). A snapshot from before
/// breakers were kept reads as endpoints with fresh breakers.
pub fn read(directory: &Path) -> Result<Option<Snapshot>, String> {
    let snapshot = path(directory);
    let bytes = match std::fs::read(&snapshot) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("read {}: {error}", snapshot.display())),
    };
    decode(&bytes, &snapshot.display().to_string()).map(Some)
}

/// Reads a snapshot from its bytes (any version); `what` names it in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<Snapshot, String> {
    let damaged = |reason: &str| format!("endpoint snapshot {what} is damaged: {reason}");
    let magic = &bytes[..bytes.len().min(8)];
    if bytes.len() < 12 || (magic != MAGIC && magic != MAGIC_V2 && magic != MAGIC_ENDPOINTS) {
        return Err(damaged("bad header"));
    }
    let (crc, body) = (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]), &bytes[12..]);
    if crc32c::crc32c(body) != crc {
        return Err(damaged("checksum mismatch"));
    }
    if magic == MAGIC_ENDPOINTS {
        let endpoints =
            kapsel_wal::codec::decode::<Vec<EndpointV1>>(body).map_err(|error| damaged(&error.to_string()))?;
        let endpoints = endpoints
            .into_iter()
            .map(|endpoint| {
                let endpoint = Endpoint::from(endpoint);
                let breaker = Breaker::new(&endpoint.circuit).to_snapshot();
                (endpoint, breaker)
            })
            .collect();
        return Ok(Snapshot { applied_lsn: 0, endpoints, adopted: Vec::new(), tenants: Vec::new(), keys: Vec::new() });
    }
    if magic == MAGIC_V2 {
        let old = kapsel_wal::codec::decode::<SnapshotV2>(body).map_err(|error| damaged(&error.to_string()))?;
        let endpoints = old.endpoints.into_iter().map(|(endpoint, breaker)| (endpoint.into(), breaker)).collect();
        return Ok(Snapshot {
            applied_lsn: old.applied_lsn,
            endpoints,
            adopted: Vec::new(),
            tenants: Vec::new(),
            keys: Vec::new(),
        });
    }
    kapsel_wal::codec::decode::<Snapshot>(body).map_err(|error| damaged(&error.to_string()))
}

/// Loads the snapshot (if any) into `state` before the log is replayed; returns how many
/// endpoints it held.
pub fn load_into(state: &mut ShardState, directory: &Path) -> Result<usize, String> {
    let Some(snapshot) = read(directory)? else {
        return Ok(0);
    };
    Ok(restore(state, snapshot))
}

/// Loads a snapshot into `state` before its log is replayed; returns how many endpoints it held.
pub fn restore(state: &mut ShardState, snapshot: Snapshot) -> usize {
    let count = snapshot.endpoints.len();
    for (endpoint, breaker) in snapshot.endpoints {
        state.restore_endpoint(endpoint, Breaker::from_snapshot(&breaker), snapshot.applied_lsn);
    }
    for (shard, event_id) in snapshot.adopted {
        state.note_adopted(shard, crate::model::ids::EventId(event_id));
    }
    for tenant in snapshot.tenants {
        state.access.tenants.insert(tenant.id.clone(), tenant);
    }
    for key in snapshot.keys {
        state.access.keys.insert(key.key_id.clone(), key);
    }
    count
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        crate::model::endpoint::EndpointInput::parse(br#"{"url":"https://example.com/h"}"#)
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
        let snapshot_of = |ids: &[&str], applied_lsn| Snapshot {
            adopted: vec![(1, 42)],
            tenants: vec![crate::model::tenant::Tenant::default_tenant()],
            keys: Vec::new(),
            applied_lsn,
            endpoints: ids
                .iter()
                .map(|id| {
                    let endpoint = endpoint(id);
                    let breaker = Breaker::new(&endpoint.circuit).to_snapshot();
                    (endpoint, breaker)
                })
                .collect(),
        };
        let snapshot = snapshot_of(&["a", "b"], 7);
        write(directory.path(), &snapshot).unwrap();
        assert_eq!(read(directory.path()).unwrap(), Some(snapshot));
        write(directory.path(), &snapshot_of(&[], 9)).unwrap();
        assert_eq!(read(directory.path()).unwrap(), Some(snapshot_of(&[], 9)), "replaced, not appended");
        write(directory.path(), &snapshot_of(&["c"], 10)).unwrap();
        let mut bytes = std::fs::read(path(directory.path())).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(path(directory.path()), &bytes).unwrap();
        assert!(read(directory.path()).unwrap_err().contains("checksum"));
        std::fs::write(path(directory.path()), b"short").unwrap();
        assert!(read(directory.path()).is_err());
    }
}
