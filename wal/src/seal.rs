//! Seals and the audit chain.
//!
//! When a segment is sealed, the log computes the RFC 6962 Merkle root over its records (each
//! leaf is a whole record frame, header and body, so a proof also binds the LSN and kind), writes
//! a [`SealInfo`] as the segment's final frame, and appends the same seal to the directory's
//! `audit.chain` file. Seals link: `chain_n = H(chain_{n−1} ‖ root_n)`, starting from
//! [`crate::merkle::CHAIN_GENESIS`]. The chain file outlives segments deleted by retention, so
//! the history of roots stays verifiable.

use crate::merkle::{self, Hash};

/// File name of the audit chain inside a log directory.
pub const CHAIN_FILE_NAME: &str = "audit.chain";

/// Size of one chain file entry.
pub const CHAIN_ENTRY_BYTES: usize = 144;

const CHAIN_MAGIC: [u8; 4] = *b"KCHN";

/// The seal of one segment.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SealInfo {
    /// The sealed segment's id.
    pub segment_id: u64,
    /// LSN of its first record.
    pub first_lsn: u64,
    /// LSN of its last record.
    pub last_lsn: u64,
    /// Number of records (Merkle leaves).
    pub records: u64,
    /// Wall-clock time of sealing, milliseconds since the Unix epoch.
    pub sealed_at_ms: u64,
    /// Merkle root over the segment's record frames.
    pub root: Hash,
    /// Chain hash of the previous seal ([`merkle::CHAIN_GENESIS`] for the first).
    pub previous_chain: Hash,
    /// `H(previous_chain ‖ root)`.
    pub chain: Hash,
}

impl SealInfo {
    /// Builds the seal for a segment whose records hash to `root`.
    pub fn new(
        segment_id: u64,
        lsns: (u64, u64),
        records: u64,
        root: Hash,
        previous_chain: Hash,
        sealed_at_ms: u64,
    ) -> Self {
        let chain = merkle::chain_next(&previous_chain, &root);
        Self { segment_id, first_lsn: lsns.0, last_lsn: lsns.1, records, sealed_at_ms, root, previous_chain, chain }
    }

    /// True when `chain` follows from `previous_chain` and `root`.
    pub fn links(&self) -> bool {
        merkle::chain_next(&self.previous_chain, &self.root) == self.chain
    }
}

/// Encodes a chain file entry.
pub fn encode_chain_entry(seal: &SealInfo) -> [u8; CHAIN_ENTRY_BYTES] {
    let mut bytes = [0u8; CHAIN_ENTRY_BYTES];
    bytes[0..4].copy_from_slice(&CHAIN_MAGIC);
    let words = [seal.segment_id, seal.first_lsn, seal.last_lsn, seal.records, seal.sealed_at_ms];
    for (index, word) in words.iter().enumerate() {
        bytes[8 + index * 8..16 + index * 8].copy_from_slice(&word.to_le_bytes());
    }
    bytes[48..80].copy_from_slice(&seal.root);
    bytes[80..112].copy_from_slice(&seal.previous_chain);
    bytes[112..144].copy_from_slice(&seal.chain);
    let crc = crc32c::crc32c(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes a chain file entry; `Err` says what is wrong.
pub fn decode_chain_entry(bytes: &[u8]) -> Result<SealInfo, &'static str> {
    if bytes.len() != CHAIN_ENTRY_BYTES {
        return Err("chain entry has the wrong length");
    }
    if bytes[0..4] != CHAIN_MAGIC {
        return Err("bad chain entry magic");
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[4..8]);
    if crc32c::crc32c(&bytes[8..]) != u32::from_le_bytes(crc) {
        return Err("chain entry checksum mismatch");
    }
    let word = |index: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[8 + index * 8..16 + index * 8]);
        u64::from_le_bytes(raw)
    };
    let hash = |from: usize| {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&bytes[from..from + 32]);
        raw
    };
    let seal = SealInfo {
        segment_id: word(0),
        first_lsn: word(1),
        last_lsn: word(2),
        records: word(3),
        sealed_at_ms: word(4),
        root: hash(48),
        previous_chain: hash(80),
        chain: hash(112),
    };
    if !seal.links() {
        return Err("chain entry does not hash to its chain value");
    }
    Ok(seal)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The chain file is the audit history that outlives segments; it must round-trip exactly.
    #[test]
    fn chain_entry_round_trips_and_detects_flips() {
        let seal = SealInfo::new(3, (100, 199), 100, [7; 32], [9; 32], 1_700_000_000_000);
        let bytes = encode_chain_entry(&seal);
        assert_eq!(decode_chain_entry(&bytes), Ok(seal));
        for byte in 0..CHAIN_ENTRY_BYTES {
            let mut damaged = bytes;
            damaged[byte] ^= 0x10;
            assert!(decode_chain_entry(&damaged).is_err(), "flip at {byte} went unnoticed");
        }
    }
}
