//! The audit endpoints' JSON: sealed segments with their roots and chain hashes, and inclusion
//! proofs. Hashes are lowercase hex; the leaf (the record's whole frame) is base64.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kapsel_wal::audit::InclusionProof;
use kapsel_wal::merkle::{leaf_hash, to_hex};
use kapsel_wal::SealInfo;
use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::error::EngineError;
use crate::model::ids::EventId;

fn seal_json(seal: &SealInfo) -> Value {
    json!({
        "segment_id": seal.segment_id,
        "first_lsn": seal.first_lsn,
        "last_lsn": seal.last_lsn,
        "records": seal.records,
        "root": to_hex(&seal.root),
        "previous_chain": to_hex(&seal.previous_chain),
        "chain": to_hex(&seal.chain),
        "sealed_at": rfc3339(seal.sealed_at_ms),
    })
}

/// `GET /admin/audit/segments`: every shard's sealed segments, read from the chain files (which
/// keep the seals of segments retention removed).
pub fn segments_json(data_directory: &Path, shards: usize) -> Result<Value, EngineError> {
    let mut all = Vec::with_capacity(shards);
    for shard in 0..shards {
        let directory = data_directory.join("wal").join(format!("shard-{shard}"));
        let chain =
            kapsel_wal::audit::read_chain(&directory).map_err(|error| EngineError::Storage(error.to_string()))?;
        all.push(json!({
            "shard": shard,
            "chain_head": chain.last().map(|seal| to_hex(&seal.chain)),
            "segments": chain.iter().map(seal_json).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({ "shards": all }))
}

/// `GET /admin/events/{id}/proof`.
pub fn proof_json(event_id: EventId, shard: usize, proof: &InclusionProof) -> Value {
    json!({
        "event_id": event_id.to_string(),
        "shard": shard,
        "lsn": proof.lsn,
        "segment_id": proof.segment_id,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf": STANDARD.encode(&proof.leaf),
        "leaf_hash": to_hex(&leaf_hash(&proof.leaf)),
        "audit_path": proof.path.iter().map(to_hex).collect::<Vec<_>>(),
        "root": to_hex(&proof.root),
        "chain": to_hex(&proof.chain),
        "algorithm": "RFC 6962 SHA-256: leaf = H(0x00 || leaf), node = H(0x01 || left || right)",
    })
}
