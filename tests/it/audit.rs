//! The audit trail through the HTTP API: sealed segments with chained roots, and inclusion
//! proofs that a verifier written here from RFC 9162 accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use base64::Engine as _;
use common::Server;
use sha2::{Digest, Sha256};

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap()).collect()
}

/// RFC 9162 §2.1.3.2: recompute the root from a leaf hash and its audit path.
fn root_from_path(leaf_hash: [u8; 32], index: u64, size: u64, path: &[Vec<u8>]) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut node, mut last) = (index, size - 1);
    let mut running = leaf_hash;
    for sibling in path {
        if last == 0 {
            return None;
        }
        if node % 2 == 1 || node == last {
            running = hash(&[&[1], sibling, &running]);
            while node % 2 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            running = hash(&[&[1], &running, sibling]);
        }
        node >>= 1;
        last >>= 1;
    }
    (last == 0).then_some(running)
}

// Anyone holding an event's proof and the published root can check the event is in the log;
// the segments' chain links each root to the one before.
#[test]
fn proofs_verify_and_segments_chain() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[("KAPSEL_WAL_SEGMENT_BYTES", "4096")]);
    server.create_endpoint("audited");
    let ids: Vec<String> = (0..80)
        .map(|index| {
            let response = server.request(
                "POST",
                "/ingest/audited",
                &[],
                format!("{{\"n\":{index},\"pad\":\"{}\"}}", "x".repeat(150)).as_bytes(),
            );
            assert_eq!(response.status, 202);
            response.json()["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    let segments = server.admin("GET", "/admin/audit/segments", "");
    assert_eq!(segments.status, 200);
    let shards = segments.json()["shards"].as_array().unwrap().clone();
    let sealed: usize = shards.iter().map(|shard| shard["segments"].as_array().unwrap().len()).sum();
    assert!(sealed >= 3, "expected sealed segments: {shards:?}");
    for shard in &shards {
        let mut previous = vec![0u8; 32];
        for segment in shard["segments"].as_array().unwrap() {
            assert_eq!(unhex(segment["previous_chain"].as_str().unwrap()), previous);
            let expected = hash(&[&previous, &unhex(segment["root"].as_str().unwrap())]);
            assert_eq!(segment["chain"].as_str().unwrap(), hex(&expected));
            previous = expected.to_vec();
        }
    }
    let proof = server.admin("GET", &format!("/admin/events/{}/proof", ids[0]), "");
    assert_eq!(proof.status, 200, "{proof:?}");
    let proof = proof.json();
    let leaf = base64::engine::general_purpose::STANDARD.decode(proof["leaf"].as_str().unwrap()).unwrap();
    let path: Vec<Vec<u8>> =
        proof["audit_path"].as_array().unwrap().iter().map(|node| unhex(node.as_str().unwrap())).collect();
    let computed = root_from_path(
        hash(&[&[0], &leaf]),
        proof["leaf_index"].as_u64().unwrap(),
        proof["tree_size"].as_u64().unwrap(),
        &path,
    );
    assert_eq!(computed.map(|root| hex(&root)), Some(proof["root"].as_str().unwrap().to_string()));
    let published = shards
        .iter()
        .flat_map(|shard| shard["segments"].as_array().unwrap().clone())
        .any(|segment| segment["root"] == proof["root"] && segment["chain"] == proof["chain"]);
    assert!(published, "the proof's root is one of the published segment roots");
    // The newest event's segment is not sealed yet.
    let unsealed = server.admin("GET", &format!("/admin/events/{}/proof", ids[79]), "");
    assert_eq!((unsealed.status, unsealed.code()), (404, "E1004".to_string()));
    assert_eq!(server.stop(), 0);
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(["audit", "verify", "--data-dir"])
        .arg(directory.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
