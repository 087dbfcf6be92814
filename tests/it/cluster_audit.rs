//! Audit seals of partitions (issue 16, ADR 17 with ADR 7's Merkle chain) against a real
//! three-server JetStream cluster: ranges of a partition's sequences sealed into the cluster's
//! bucket, inclusion proofs any RFC 6962 verifier accepts, and `kapsel audit verify` checking a
//! cluster: 0 when everything holds, 1 naming the partition, range and sequence when a message
//! or a seal was tampered with, 2 when NATS cannot be reached.

use std::future::Future;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use kapsel_engine::cluster::check_partitions;
use kapsel_engine::cluster::nats::{headers, prepare, subject, BUCKET};
use kapsel_engine::cluster::seal::{self, ProveError, Seal, Sealed, VerifyError};
use kapsel_engine::state::Writer;
use kapsel_nats::{Link, Publish};
use kapsel_wal::merkle::{self, Hash, CHAIN_GENESIS};

use crate::common::nats::NatsCluster;

/// Sequences per sealed range here: small, so a few dozen messages make several ranges.
const RANGE: u64 = 4;

/// The longest any one answer may take before the test calls it a stall.
const STALL: Duration = Duration::from_secs(90);

/// Awaits `future` (the link's futures need no reactor; the runtime only bounds the wait).
fn wait<T>(future: impl Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async { tokio::time::timeout(STALL, future).await }).expect("stalled")
}

fn link(cluster: &NatsCluster, name: &str) -> Link {
    cluster.link(name)
}

/// A cluster of `partitions` partitions, as the first node would create it.
fn prepared(cluster: &NatsCluster, partitions: u32) -> Link {
    let link = link(cluster, "audit-test");
    prepare(&link, partitions, 3).unwrap();
    check_partitions(&link, partitions).unwrap();
    link
}

/// The subject tail and writer of the `number`th message (1-based) of a test partition: mostly
/// events from anyone, every fifth an owner's record at epoch 2, the sixth an endpoint change.
fn shape(number: u64) -> (&'static str, Writer) {
    match number {
        6 => ("cfg", Writer::Anyone),
        _ if number.is_multiple_of(5) => ("own", Writer::Owner { epoch: 2 }),
        _ => ("in", Writer::Anyone),
    }
}

/// Publishes messages `from..=to` (their numbers) to `partition` the way the engine's stream
/// does: its subjects, `Kapsel-Kind`, `Kapsel-Epoch` for an owner's record, a message id.
/// Returns their sequences.
fn publish(link: &Link, partition: u32, from: u64, to: u64) -> Vec<u64> {
    let replies: Vec<_> = (from..=to)
        .map(|number| {
            let (tail, writer) = shape(number);
            link.publish(Publish {
                subject: subject(partition, tail),
                headers: headers(u8::try_from(number % 7 + 1).unwrap(), writer),
                payload: format!("record {number} of partition {partition}").into_bytes(),
                msg_id: Some(format!("p{partition}-m{number}")),
                ..Publish::default()
            })
        })
        .collect();
    let sequences: Vec<u64> = replies.into_iter().map(|reply| wait(reply).unwrap().sequence).collect();
    assert_eq!(sequences, (from..=to).collect::<Vec<_>>(), "one stream, stored in order");
    sequences
}

/// `kapsel audit verify` against `cluster`, with `extra` arguments.
fn audit_verify(cluster: &NatsCluster, extra: &[&str]) -> (Option<i32>, String, String) {
    let data = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    run_kapsel(
        &[&["audit", "verify", "--nats-url", &urls, "--data-dir", data.path().to_str().unwrap()], extra].concat(),
    )
}

fn run_kapsel(arguments: &[&str]) -> (Option<i32>, String, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(arguments)
        .env_remove("KAPSEL_DATA_DIR")
        .env_remove("KAPSEL_NATS_URL")
        .env_remove("KAPSEL_PARTITIONS")
        .env_remove("KAPSEL_CONFIG")
        .env_remove("KAPSEL_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Checks a proof as an outside verifier would: only the JSON, `verify_inclusion`, and the seal
/// as stored in the bucket.
fn check_proof(link: &Link, proof: &serde_json::Value, partition: u32, sequence: u64) {
    let hash = |name: &str| merkle::from_hex(proof[name].as_str().unwrap()).unwrap();
    let leaf = base64::engine::general_purpose::STANDARD.decode(proof["leaf"].as_str().unwrap()).unwrap();
    let leaf_hash = merkle::leaf_hash(&leaf);
    assert_eq!(leaf_hash, hash("leaf_hash"));
    let path: Vec<Hash> = proof["audit_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| merkle::from_hex(hash.as_str().unwrap()).unwrap())
        .collect();
    let (index, size) = (proof["leaf_index"].as_u64().unwrap(), proof["tree_size"].as_u64().unwrap());
    assert!(merkle::verify_inclusion(&leaf_hash, index, size, &path, &hash("root")), "{proof}");
    // The leaf is the documented encoding of the stored message.
    let message = wait(link.get(format!("KAPSEL_P{partition}"), sequence)).unwrap().unwrap();
    assert_eq!(leaf, seal::leaf_of(&message));
    assert_eq!(u64::from_be_bytes(leaf[..8].try_into().unwrap()), sequence);
    // And the root is the one sealed in the bucket, linked into the chain.
    let stored = wait(seal::read_seal(link, partition, (sequence - 1) / RANGE)).unwrap().unwrap();
    assert_eq!(stored.root, hash("root"));
    assert_eq!(stored.chain, hash("chain"));
    assert_eq!(stored.chain, merkle::chain_next(&stored.previous_chain, &stored.root));
    assert_eq!((proof["partition"].as_u64(), proof["sequence"].as_u64()), (Some(u64::from(partition)), Some(sequence)));
}

// The audit promise in cluster mode: every complete range is sealed once, chained from zero,
// each message can be proven with a plain RFC 6962 verifier, `audit verify` passes an honest
// cluster, and removing a sealed message is caught and named down to its sequence.
#[test]
fn sealed_partitions_prove_their_messages_and_audit_verify_names_a_removed_one() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = prepared(&cluster, 2);
    publish(&link, 0, 1, 22);
    publish(&link, 1, 1, 9);

    let sealed = wait(seal::seal_up_to(&link, 0, 22, RANGE)).unwrap();
    assert_eq!(sealed.iter().map(|seal| seal.range_index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    let mut previous = CHAIN_GENESIS;
    for seal in &sealed {
        assert_eq!((seal.records, seal.previous_chain), (RANGE, previous));
        assert_eq!(seal.first_sequence, seal.range_index * RANGE + 1);
        previous = seal.chain;
    }
    assert_eq!(wait(seal::seal_up_to(&link, 0, 22, RANGE)).unwrap(), Vec::new(), "each range is sealed once");
    assert_eq!(wait(seal::seal_up_to(&link, 1, 9, RANGE)).unwrap().len(), 2);
    let beyond = wait(seal::seal_up_to(&link, 1, 40, RANGE)).unwrap_err();
    assert!(beyond.contains("ends at sequence 9"), "a range the stream has not reached is not sealed: {beyond}");

    for sequence in [1, 6, 10, 20] {
        let proof = wait(seal::prove(&link, 0, sequence, RANGE)).unwrap();
        check_proof(&link, &proof, 0, sequence);
    }
    check_proof(&link, &wait(seal::prove(&link, 1, 8, RANGE)).unwrap(), 1, 8);
    assert_eq!(wait(seal::prove(&link, 0, 21, RANGE)), Err(ProveError::NotSealed));
    assert_eq!(wait(seal::prove(&link, 1, 9, RANGE)), Err(ProveError::NotSealed));

    let report = wait(seal::verify_partition(&link, 0)).unwrap();
    assert_eq!((report.seals, report.recomputed, report.records, report.unsealed), (5, 5, 20, 2));
    let (code, stdout, stderr) = audit_verify(&cluster, &[]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("partition 0: ok: 5 seals (5 recomputed, 20 records)"), "{stdout}");
    assert!(stdout.contains("partition 1: ok: 2 seals") && stdout.contains("1 sequence not sealed yet"), "{stdout}");
    assert!(stdout.contains("verified 2 partitions: 7 seals, 28 records recomputed"), "{stdout}");

    // Retention below the sealed ranges of partition 1, at a range boundary: the purged ranges
    // stay in the chain, checked there only, and their messages can no longer be proven.
    let through = wait(seal::sealed_through(&link, 1, 9, RANGE)).unwrap();
    assert_eq!((through, seal::purge_bound(9, through, RANGE)), (8, 9));
    assert_eq!(wait(link.purge("KAPSEL_P1", None, Some(9))).unwrap(), 8);
    assert_eq!(wait(seal::prove(&link, 1, 8, RANGE)), Err(ProveError::Purged));
    let report = wait(seal::verify_partition(&link, 1)).unwrap();
    assert_eq!((report.seals, report.recomputed, report.chain_only), (2, 0, 2));

    // Message 6 is partition 0's only endpoint change: purging its subject removes sequence 6
    // from the middle of sealed range 1, as deleting one stored message would.
    assert_eq!(wait(link.purge("KAPSEL_P0", Some(subject(0, "cfg")), None)).unwrap(), 1);
    let (code, stdout, stderr) = audit_verify(&cluster, &["--partitions", "2"]);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("partition 0, range 1, sequence 6: 3 messages of sequences 5..=8"), "{stderr}");
    assert!(stdout.contains("partition 0: FAILED"), "{stdout}");
    assert!(
        stdout.contains("partition 1: ok: 2 seals (0 recomputed, 0 records; 2 of purged ranges, by chain only)"),
        "{stdout}"
    );
    assert!(stdout.contains("verification FAILED: 1 of 2 partitions"), "{stdout}");
    assert!(
        matches!(wait(seal::prove(&link, 0, 7, RANGE)), Err(ProveError::Corrupt(_))),
        "no proof from a broken range"
    );
    let failure = wait(seal::verify_partition(&link, 0)).unwrap_err();
    assert!(
        matches!(failure, VerifyError::Corrupt(ref mismatch) if mismatch.range_index == 1 && mismatch.sequence == Some(6))
    );

    // A count that contradicts the cluster's is a usage error, not a verdict.
    let (code, _, stderr) = audit_verify(&cluster, &["--partitions", "3"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the cluster has 2 partitions"), "{stderr}");
    link.close();
}

// Any owner may seal a range, and during a handover two may at once: they must agree, one
// creating the seal and the other finding it equal, and a seal that does not match the stream
// must be reported loudly and never overwritten.
#[test]
fn concurrent_sealers_agree_and_a_forged_seal_is_refused_and_reported() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = prepared(&cluster, 2);
    publish(&link, 0, 1, 40);
    let sealers: Vec<_> = (0..2)
        .map(|number| {
            let link = self::link(&cluster, &format!("sealer-{number}"));
            std::thread::spawn(move || {
                let sealed = wait(seal::seal_up_to(&link, 0, 40, RANGE));
                link.close();
                sealed.unwrap()
            })
        })
        .collect();
    let mut created: Vec<u64> =
        sealers.into_iter().flat_map(|sealer| sealer.join().unwrap()).map(|seal| seal.range_index).collect();
    created.sort_unstable();
    assert_eq!(created, (0..10).collect::<Vec<_>>(), "every range created once between the two");
    let first = wait(seal::read_seal(&link, 0, 0)).unwrap().unwrap();
    let again = wait(seal::seal_range(&link, 0, 0, RANGE, CHAIN_GENESIS)).unwrap();
    assert_eq!(again, Sealed::Matched(first), "a late sealer finds the same seal");

    // A seal forged under partition 1's next range key, linked correctly but over other leaves.
    publish(&link, 1, 1, 12);
    assert_eq!(wait(seal::seal_up_to(&link, 1, 8, RANGE)).unwrap().len(), 2);
    let before = wait(seal::read_seal(&link, 1, 1)).unwrap().unwrap();
    let forged = Seal::new(1, 2, RANGE, &[merkle::leaf_hash(b"not a message"); 4], before.chain).unwrap();
    wait(link.kv_create(BUCKET, seal::seal_key(1, 2), forged.to_json())).unwrap();
    let refused = wait(seal::seal_range(&link, 1, 2, RANGE, before.chain)).unwrap_err();
    assert!(refused.contains("seal.p.1.r.000000000002") && refused.contains("differs"), "{refused}");
    assert_eq!(wait(seal::read_seal(&link, 1, 2)).unwrap(), Some(forged.clone()), "the stored seal is left as it is");

    let (code, stdout, stderr) = audit_verify(&cluster, &[]);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("partition 0: ok: 10 seals"), "{stdout}");
    assert!(
        stderr.contains("partition 1, range 2, sequence 9: the messages of sequences 9..=12 give root"),
        "{stderr}"
    );

    // A seal out of order (range 4 without 3) breaks the chain's shape, which verify names.
    wait(link.kv_delete(BUCKET, seal::seal_key(1, 2))).unwrap();
    wait(link.kv_create(BUCKET, seal::seal_key(1, 4), forged.to_json())).unwrap();
    let failure = wait(seal::verify_partition(&link, 1)).unwrap_err();
    assert!(failure.to_string().contains("partition 1, range 2: range 2 has no seal but range 4 has"), "{failure}");
    link.close();
}

// An auditor pointed at a cluster that is not there must get "cannot verify" (2), never a
// verdict about the data.
#[test]
fn audit_verify_of_an_unreachable_cluster_exits_2() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let (code, stdout, stderr) =
        run_kapsel(&["audit", "verify", "--nats-url", &url, "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}
