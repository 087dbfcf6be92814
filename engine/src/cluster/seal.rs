//! Audit seals of partitions (cluster mode, ADR 17; the local log's seals are ADR 7): an RFC 6962
//! Merkle root over each fixed range of a partition stream's sequence numbers, chained per
//! partition, kept in the cluster's bucket.
//!
//! # Ranges
//!
//! Range `k` of a partition covers the sequences `[k·R + 1, (k + 1)·R]`, `R` the range size
//! ([`SEAL_RANGE`] in a running cluster; a parameter so tests can use a small one). Ranges are
//! fixed by the numbers alone, so every node that seals range `k` computes the same seal, and a
//! range is sealed once whichever node gets there first.
//!
//! # Leaves
//!
//! A range's leaves are its messages present in the stream, in sequence order. The leaf of a
//! message is its canonical encoding ([`encode_leaf`]), hashed as RFC 6962 says
//! (`SHA-256(0x00 ‖ leaf)`). Every integer is a u64, big-endian; every field is prefixed by its
//! length:
//!
//! ```text
//! sequence                      u64
//! len(subject)     subject      u64, UTF-8 bytes   e.g. "kapsel.p.3.in"
//! len(kind)        kind         u64, bytes of the `Kapsel-Kind` header's value (empty if absent)
//! len(epoch)       epoch        u64, bytes of the `Kapsel-Epoch` header's value (empty if absent)
//! len(payload)     payload      u64, the message body
//! ```
//!
//! Header values are taken as stored (decimal text); a header given twice counts by its first
//! value, as the engine reads it. The subject names the partition, and the sequence is in the
//! leaf, so a leaf cannot be moved to another partition or position unnoticed.
//!
//! # Seals and the chain
//!
//! A seal ([`Seal`]) is `{partition, range, range_size, first_sequence, last_sequence, records,
//! root, previous_chain, chain}`, `chain = SHA-256(previous_chain ‖ root)`
//! ([`merkle::chain_next`]), the first range's `previous_chain` 32 zero bytes. It is written as
//! JSON ([`Seal::to_json`], hashes in lowercase hex) under the key `seal.p.<n>.r.<k>` of the
//! bucket `kapsel_cluster`, `k` zero-padded to [`RANGE_DIGITS`] digits, with a create: whoever
//! creates the key first sealed the range; a later sealer reads it and checks that it equals
//! what it computed (a difference is logged as an error and returned, never overwritten).
//!
//! # Gaps
//!
//! A seal attests the messages present when it was made. A sequence with no message then (a
//! message purged or deleted before its range was sealed) is no leaf; the sequence in every
//! leaf shows which ones are, and `records` below `R` says that some are missing. So a range
//! purged before it was sealed is sealed with what is left (the empty root when nothing is): its
//! missing messages can never be attested, but the chain goes on. Sealing must therefore come
//! before retention: a stream may be purged only below a sealed range's end, and only at range
//! boundaries (`keep_from_sequence = k·R + 1`); [`verify_partition`] recomputes every range that
//! reaches to or above the stream's first sequence, so a range cut in the middle fails, as it
//! should: it is indistinguishable from a deleted message.

use std::collections::VecDeque;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kapsel_nats::{KvError, Link, LinkError, Message, Reply};
use kapsel_wal::merkle::{self, Hash, CHAIN_GENESIS};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::nats::{stream_name, BUCKET, HEADER_EPOCH, HEADER_KIND};

/// Sequences per sealed range in a running cluster: 4096 leaf hashes (128 KiB) per seal, a
/// proof of at most 12 hashes, a seal a few hundred bytes in the bucket. Smaller ranges make
/// proofs available sooner and put more keys in the bucket.
pub const SEAL_RANGE: u64 = crate::limits::PARTITION_SEAL_RANGE;

/// The largest range size accepted: a range's leaf hashes are held in memory (32 bytes each,
/// 32 MiB at this bound).
pub const SEAL_RANGE_MAX: u64 = 1 << 20;

/// Messages read ahead while a range is hashed: the most held in memory at once, each at most
/// the NATS servers' `max_payload`. Enough to hide the round trip on a LAN.
pub const READ_AHEAD_MAX: usize = 32;

/// The most ranges one [`seal_up_to`] call seals, so a long backlog (the first sealing of a
/// large partition) is worked off over several calls instead of one long one.
pub const SEALS_PER_CALL_MAX: usize = 16;

/// Digits of the zero-padded range index in a seal's key, so keys sort by range up to
/// 10¹² ranges (4·10¹⁵ messages of a partition at 4096).
pub const RANGE_DIGITS: usize = 12;

/// The format of a seal's JSON and of its leaves; changes with either.
pub const SEAL_VERSION: u64 = 1;

/// How the proofs' hashes are made, for people and tools reading a proof.
pub const ALGORITHM: &str = "RFC 6962 SHA-256: leaf = H(0x00 || leaf), node = H(0x01 || left || right)";

/// The leaf encoding, for people and tools reading a proof.
pub const LEAF_ENCODING: &str = "u64 BE sequence, then subject, Kapsel-Kind value, Kapsel-Epoch value, payload, \
                                 each as u64 BE length followed by its bytes (absent header = empty)";

/// The canonical encoding of a stored message, the bytes of its Merkle leaf (see the module's
/// documentation for the layout).
pub fn encode_leaf(sequence: u64, subject: &str, kind: &str, epoch: &str, payload: &[u8]) -> Vec<u8> {
    let fields: [&[u8]; 4] = [subject.as_bytes(), kind.as_bytes(), epoch.as_bytes(), payload];
    let mut leaf = Vec::with_capacity(8 + fields.iter().map(|field| 8 + field.len()).sum::<usize>());
    leaf.extend_from_slice(&sequence.to_be_bytes());
    for field in fields {
        leaf.extend_from_slice(&(field.len() as u64).to_be_bytes());
        leaf.extend_from_slice(field);
    }
    leaf
}

/// [`encode_leaf`] of a message as the link gives it.
pub fn leaf_of(message: &Message) -> Vec<u8> {
    let kind = message.header(HEADER_KIND).unwrap_or_default();
    let epoch = message.header(HEADER_EPOCH).unwrap_or_default();
    encode_leaf(message.sequence, &message.subject, kind, epoch, &message.payload)
}

/// The range holding `sequence` (1 or more) when ranges are `range` long.
pub fn range_of(sequence: u64, range: u64) -> u64 {
    debug_assert!(sequence >= 1 && range >= 1, "sequence {sequence}, range {range}");
    sequence.saturating_sub(1) / range.max(1)
}

/// The first and last sequence of range `index`; `None` past `u64`.
pub fn range_bounds(index: u64, range: u64) -> Option<(u64, u64)> {
    let last = index.checked_add(1)?.checked_mul(range)?;
    Some((last - range + 1, last))
}

/// The bucket key of partition `partition`'s range `index`.
pub fn seal_key(partition: u32, index: u64) -> String {
    format!("{}{index:0RANGE_DIGITS$}", seal_prefix(partition))
}

/// The prefix of every seal key of `partition` (`.r.` ends it, so partition 1's does not match
/// partition 10's keys).
pub fn seal_prefix(partition: u32) -> String {
    format!("seal.p.{partition}.r.")
}

/// The range index in a key of `partition`'s seals.
fn index_of_key(partition: u32, key: &str) -> Option<u64> {
    let digits = key.strip_prefix(&seal_prefix(partition))?;
    (!digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn check_range(range: u64) -> Result<(), String> {
    if (1..=SEAL_RANGE_MAX).contains(&range) {
        Ok(())
    } else {
        Err(format!("a seal range of {range} sequences: it must be 1 to {SEAL_RANGE_MAX}"))
    }
}

/// The seal of one range of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    /// The partition.
    pub partition: u32,
    /// The range's index `k`.
    pub range_index: u64,
    /// Sequences per range `R` it was sealed with.
    pub range_size: u64,
    /// `k·R + 1`.
    pub first_sequence: u64,
    /// `(k + 1)·R`.
    pub last_sequence: u64,
    /// Messages present in the range when it was sealed: the tree's leaves.
    pub records: u64,
    /// The Merkle root over their leaves.
    pub root: Hash,
    /// The chain value of the previous range (32 zero bytes for range 0).
    pub previous_chain: Hash,
    /// `SHA-256(previous_chain ‖ root)`.
    pub chain: Hash,
}

/// A seal as JSON: hashes as hex text.
#[derive(Serialize, Deserialize)]
struct SealJson {
    version: u64,
    partition: u32,
    range: u64,
    range_size: u64,
    first_sequence: u64,
    last_sequence: u64,
    records: u64,
    root: String,
    previous_chain: String,
    chain: String,
}

impl Seal {
    /// The seal of `partition`'s range `index` (`range` long) over its leaves' hashes, linked
    /// to `previous_chain`. `None` when the range lies past `u64`.
    pub fn new(partition: u32, index: u64, range: u64, leaf_hashes: &[Hash], previous_chain: Hash) -> Option<Seal> {
        let (first_sequence, last_sequence) = range_bounds(index, range)?;
        let root = merkle::root(leaf_hashes);
        Some(Seal {
            partition,
            range_index: index,
            range_size: range,
            first_sequence,
            last_sequence,
            records: leaf_hashes.len() as u64,
            root,
            previous_chain,
            chain: merkle::chain_next(&previous_chain, &root),
        })
    }

    /// The value stored in the bucket.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = SealJson {
            version: SEAL_VERSION,
            partition: self.partition,
            range: self.range_index,
            range_size: self.range_size,
            first_sequence: self.first_sequence,
            last_sequence: self.last_sequence,
            records: self.records,
            root: merkle::to_hex(&self.root),
            previous_chain: merkle::to_hex(&self.previous_chain),
            chain: merkle::to_hex(&self.chain),
        };
        // Plain integers and strings: serialising cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// A stored value read back; the reason when it is not a seal of this format.
    pub fn from_json(bytes: &[u8]) -> Result<Seal, String> {
        let wire: SealJson = serde_json::from_slice(bytes).map_err(|error| format!("not a seal: {error}"))?;
        if wire.version != SEAL_VERSION {
            return Err(format!("a seal of version {}, this Kapsel reads {SEAL_VERSION}", wire.version));
        }
        let hash =
            |name: &str, text: &str| merkle::from_hex(text).ok_or_else(|| format!("{name} is not 64 hex digits"));
        Ok(Seal {
            partition: wire.partition,
            range_index: wire.range,
            range_size: wire.range_size,
            first_sequence: wire.first_sequence,
            last_sequence: wire.last_sequence,
            records: wire.records,
            root: hash("root", &wire.root)?,
            previous_chain: hash("previous_chain", &wire.previous_chain)?,
            chain: hash("chain", &wire.chain)?,
        })
    }

    /// The seal as the admin API shows it (the stored JSON plus the key).
    pub fn json(&self) -> Value {
        json!({
            "partition": self.partition,
            "range": self.range_index,
            "range_size": self.range_size,
            "key": seal_key(self.partition, self.range_index),
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "records": self.records,
            "root": merkle::to_hex(&self.root),
            "previous_chain": merkle::to_hex(&self.previous_chain),
            "chain": merkle::to_hex(&self.chain),
        })
    }

    /// What is wrong with this seal as range `index` of `partition` sealed `range` long after
    /// `previous_chain`, judging only its own fields (not the messages); `None` when nothing is.
    pub fn fault(&self, partition: u32, index: u64, range: u64, previous_chain: &Hash) -> Option<String> {
        let bounds = range_bounds(index, range);
        if self.partition != partition || self.range_index != index {
            Some(format!("the seal names partition {} range {}", self.partition, self.range_index))
        } else if self.range_size != range {
            Some(format!("sealed {} long, the partition's other ranges {range}", self.range_size))
        } else if bounds != Some((self.first_sequence, self.last_sequence)) {
            Some(format!("the seal covers sequences {}..={}", self.first_sequence, self.last_sequence))
        } else if self.records > range {
            Some(format!("{} records in a range of {range}", self.records))
        } else if self.previous_chain != *previous_chain {
            Some("its previous_chain is not the chain of the range before".into())
        } else if self.chain != merkle::chain_next(&self.previous_chain, &self.root) {
            Some("its chain is not SHA-256(previous_chain || root)".into())
        } else {
            None
        }
    }
}

/// The inclusion proof of one message as JSON, in the style of the local log's proofs
/// (`GET /admin/events/{id}/proof`).
pub fn proof_json(seal: &Seal, sequence: u64, leaf: &[u8], leaf_index: usize, path: &[Hash]) -> Value {
    json!({
        "partition": seal.partition,
        "sequence": sequence,
        "range": seal.range_index,
        "range_size": seal.range_size,
        "first_sequence": seal.first_sequence,
        "last_sequence": seal.last_sequence,
        "leaf_index": leaf_index,
        "tree_size": seal.records,
        "leaf": STANDARD.encode(leaf),
        "leaf_hash": merkle::to_hex(&merkle::leaf_hash(leaf)),
        "audit_path": path.iter().map(merkle::to_hex).collect::<Vec<_>>(),
        "root": merkle::to_hex(&seal.root),
        "previous_chain": merkle::to_hex(&seal.previous_chain),
        "chain": merkle::to_hex(&seal.chain),
        "algorithm": ALGORITHM,
        "leaf_encoding": LEAF_ENCODING,
    })
}

/// The messages of one range present in the stream: their sequences and leaf hashes, and the
/// leaf of one wanted sequence (for a proof).
#[derive(Debug, Default)]
struct RangeLeaves {
    sequences: Vec<u64>,
    hashes: Vec<Hash>,
    wanted: Option<Vec<u8>>,
}

impl RangeLeaves {
    /// The first sequence of `first..=last` with no message.
    fn first_absent(&self, first: u64, last: u64) -> Option<u64> {
        let mut expected = first;
        for sequence in &self.sequences {
            if *sequence != expected {
                return Some(expected);
            }
            expected += 1;
        }
        (expected <= last).then_some(expected)
    }
}

/// Reads `first..=last` of `partition`'s stream by sequence, at most [`READ_AHEAD_MAX`]
/// messages in flight, keeping only leaf hashes (and the leaf of `wanted`).
async fn read_range(
    link: &Link,
    partition: u32,
    first: u64,
    last: u64,
    wanted: Option<u64>,
) -> Result<RangeLeaves, LinkError> {
    let stream = stream_name(partition);
    let mut leaves = RangeLeaves::default();
    let mut in_flight: VecDeque<(u64, Reply<Option<Message>, LinkError>)> = VecDeque::with_capacity(READ_AHEAD_MAX);
    let mut next = first;
    loop {
        while in_flight.len() < READ_AHEAD_MAX && next <= last {
            in_flight.push_back((next, link.get(stream.clone(), next)));
            next += 1;
        }
        let Some((sequence, reply)) = in_flight.pop_front() else {
            return Ok(leaves);
        };
        let Some(message) = reply.await? else {
            continue;
        };
        if message.sequence != sequence {
            return Err(LinkError::Failed {
                what: format!("get {stream} #{sequence}"),
                detail: format!("the answer is message {}", message.sequence),
            });
        }
        let leaf = leaf_of(&message);
        leaves.sequences.push(sequence);
        leaves.hashes.push(merkle::leaf_hash(&leaf));
        if wanted == Some(sequence) {
            leaves.wanted = Some(leaf);
        }
    }
}

/// Every partition's seals as `GET /admin/audit/segments` shows them in cluster mode: per
/// partition its chain head and its ranges in order (`Seal::json`).
pub async fn partitions_json(link: &Link, partitions: u32) -> Result<Value, String> {
    let entries = link.kv_entries(BUCKET, "seal.p.").await.map_err(|error| format!("reading the seals: {error}"))?;
    let mut seals: Vec<Vec<Seal>> = (0..partitions).map(|_| Vec::new()).collect();
    for (key, entry) in entries {
        let seal = Seal::from_json(&entry.value).map_err(|reason| format!("{key}: {reason}"))?;
        if let Some(list) = seals.get_mut(seal.partition as usize) {
            list.push(seal);
        }
    }
    let listed: Vec<Value> = seals
        .into_iter()
        .enumerate()
        .map(|(partition, mut list)| {
            list.sort_by_key(|seal| seal.range_index);
            json!({
                "partition": partition,
                "chain_head": list.last().map(|seal| merkle::to_hex(&seal.chain)),
                "ranges": list.iter().map(Seal::json).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Value::Array(listed))
}

/// Partition `partition`'s seal of range `index`, if the bucket has one.
pub async fn read_seal(link: &Link, partition: u32, index: u64) -> Result<Option<Seal>, String> {
    let key = seal_key(partition, index);
    let entry = link.kv_get(BUCKET, key.as_str()).await.map_err(|error| format!("reading {key}: {error}"))?;
    entry.map(|entry| Seal::from_json(&entry.value).map_err(|reason| format!("{key}: {reason}"))).transpose()
}

async fn is_sealed(link: &Link, partition: u32, index: u64) -> Result<bool, String> {
    let key = seal_key(partition, index);
    let entry = link.kv_get(BUCKET, key.as_str()).await.map_err(|error| format!("reading {key}: {error}"))?;
    Ok(entry.is_some())
}

/// The first range below `complete` without a seal (`complete` when all are sealed). Seals are
/// made in order, so the sealed ranges are a prefix: one read when all are sealed (the usual
/// case), a binary search over the bucket otherwise. A seal written out of order (by hand)
/// misleads it; [`verify_partition`] reports such a gap.
async fn first_unsealed(link: &Link, partition: u32, complete: u64) -> Result<u64, String> {
    if complete == 0 || is_sealed(link, partition, complete - 1).await? {
        return Ok(complete);
    }
    // Invariant: every range below `low` is sealed, range `high` is not.
    let (mut low, mut high) = (0, complete - 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if is_sealed(link, partition, middle).await? {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// What [`seal_range`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// This call created the seal.
    Created(Seal),
    /// Another sealer had created it, equal to what this call computed.
    Matched(Seal),
}

impl Sealed {
    /// The seal, whoever made it.
    pub fn seal(&self) -> &Seal {
        match self {
            Sealed::Created(seal) | Sealed::Matched(seal) => seal,
        }
    }
}

/// Seals `partition`'s range `index` (`range` long) after `previous_chain`: reads its messages,
/// computes the seal and creates its key. When the key exists the stored seal must equal the
/// computed one; a difference is logged as an error and returned, and nothing is overwritten.
/// The caller must know that every sequence of the range has been written (see
/// [`seal_up_to`]).
pub async fn seal_range(
    link: &Link,
    partition: u32,
    index: u64,
    range: u64,
    previous_chain: Hash,
) -> Result<Sealed, String> {
    check_range(range)?;
    let (first, last) = range_bounds(index, range).ok_or_else(|| format!("range {index} lies past u64"))?;
    let leaves = read_range(link, partition, first, last, None)
        .await
        .map_err(|error| format!("reading partition {partition}'s range {index}: {error}"))?;
    let seal = Seal::new(partition, index, range, &leaves.hashes, previous_chain)
        .ok_or_else(|| format!("range {index} lies past u64"))?;
    if let Some(absent) = leaves.first_absent(first, last) {
        tracing::warn!(
            partition,
            range = index,
            records = seal.records,
            first_absent = absent,
            "sealing a range with messages missing: they were purged or deleted before it was sealed"
        );
    }
    let key = seal_key(partition, index);
    match link.kv_create(BUCKET, key.as_str(), seal.to_json()).await {
        Ok(_) => Ok(Sealed::Created(seal)),
        Err(KvError::Exists { .. }) => {
            let stored =
                read_seal(link, partition, index).await?.ok_or_else(|| format!("{key} vanished while sealing"))?;
            if stored == seal {
                return Ok(Sealed::Matched(seal));
            }
            tracing::error!(partition, range = index, key = %key, stored = %String::from_utf8_lossy(&stored.to_json()),
                computed = %String::from_utf8_lossy(&seal.to_json()),
                "AUDIT: the stored seal differs from the one computed from the stream; it is left as it is");
            Err(format!(
                "{key}: the stored seal (root {}, chain {}) differs from the one computed from the stream (root {}, chain {})",
                merkle::to_hex(&stored.root),
                merkle::to_hex(&stored.chain),
                merkle::to_hex(&seal.root),
                merkle::to_hex(&seal.chain)
            ))
        }
        Err(error) => Err(format!("creating {key}: {error}")),
    }
}

/// Seals every complete range of `partition` at or below `applied` that has no seal yet, in
/// order, at most [`SEALS_PER_CALL_MAX`] of them; returns the seals this call created (ranges
/// another sealer had sealed identically are not returned). `applied`: a sequence up to which
/// every message of the stream has been stored, such as the owner's applied sequence; range `k`
/// is complete once `applied >= (k + 1)·range`. Returns an error, after sealing what it could,
/// when the bucket or stream cannot be read or a stored seal differs from the stream.
///
/// Seals already in the bucket are trusted, not recomputed: the next range chains onto the
/// last one found. A seal computed here whose key exists (another owner sealing the same range
/// at the same moment, as in a handover) is compared with the stored one ([`seal_range`]);
/// recomputing what is stored is [`verify_partition`]'s job.
pub async fn seal_up_to(link: &Link, partition: u32, applied: u64, range: u64) -> Result<Vec<Seal>, String> {
    check_range(range)?;
    let complete = applied / range;
    let next = first_unsealed(link, partition, complete).await?;
    if next == complete {
        return Ok(Vec::new());
    }
    let stream = stream_name(partition);
    let state = link.stream_state(stream.as_str()).await.map_err(|error| format!("state of {stream}: {error}"))?;
    if state.last_sequence < complete.saturating_mul(range) {
        return Err(format!(
            "{stream} ends at sequence {} but {applied} was given as applied: not sealing beyond the stream",
            state.last_sequence
        ));
    }
    let mut previous = match next.checked_sub(1) {
        None => CHAIN_GENESIS,
        Some(before) => {
            read_seal(link, partition, before)
                .await?
                .ok_or_else(|| format!("{} vanished while sealing", seal_key(partition, before)))?
                .chain
        }
    };
    let mut created = Vec::new();
    for index in (next..complete).take(SEALS_PER_CALL_MAX) {
        match seal_range(link, partition, index, range, previous).await? {
            Sealed::Created(seal) => {
                previous = seal.chain;
                created.push(seal);
            }
            Sealed::Matched(seal) => previous = seal.chain,
        }
    }
    Ok(created)
}

/// The last sequence of the sealed ranges among the complete ones at or below `applied`
/// (0 when none is sealed): retention may purge up to it ([`purge_bound`]).
pub async fn sealed_through(link: &Link, partition: u32, applied: u64, range: u64) -> Result<u64, String> {
    check_range(range)?;
    Ok(first_unsealed(link, partition, applied / range).await?.saturating_mul(range))
}

/// Where retention may purge a partition below (`keep_from_sequence`) without removing a message
/// before its range is sealed or cutting a sealed range in two: `wanted` lowered to at most
/// `sealed_through + 1`, then to the first sequence of its range. Purging below the result
/// leaves every remaining sealed range whole, so [`verify_partition`] still recomputes them and
/// checks the purged ones in the chain.
pub fn purge_bound(wanted: u64, sealed_through: u64, range: u64) -> u64 {
    let bound = wanted.min(sealed_through.saturating_add(1)).max(1);
    (bound - 1) / range.max(1) * range.max(1) + 1
}

/// Why [`prove`] gave no proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProveError {
    /// The sequence's range has no seal yet (the admin layer answers 404 E1004).
    NotSealed,
    /// The range is sealed but holds no message at that sequence (none was there when it was
    /// sealed, or there is none now).
    NotFound,
    /// Part of the range has been purged since it was sealed: its other leaves are gone, so no
    /// proof can be built.
    Purged,
    /// The stream's messages no longer give the sealed root: the audit check fails.
    Corrupt(String),
    /// NATS could not be read, or the arguments are out of range.
    Unavailable(String),
}

impl fmt::Display for ProveError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSealed => formatter.write_str("the message's range is not sealed yet"),
            Self::NotFound => formatter.write_str("the sealed range holds no message at that sequence"),
            Self::Purged => formatter.write_str("the range has been purged in part since it was sealed"),
            Self::Corrupt(reason) => write!(formatter, "the stream does not match its seal: {reason}"),
            Self::Unavailable(reason) => formatter.write_str(reason),
        }
    }
}

impl std::error::Error for ProveError {}

/// An RFC 6962 inclusion proof of the message at `sequence` of `partition` in its range's seal,
/// as JSON ([`proof_json`]). Reads the whole range (its leaf hashes) from the stream and checks
/// that they still give the sealed root before answering.
pub async fn prove(link: &Link, partition: u32, sequence: u64, range: u64) -> Result<Value, ProveError> {
    check_range(range).map_err(ProveError::Unavailable)?;
    if sequence == 0 {
        return Err(ProveError::NotFound);
    }
    let index = range_of(sequence, range);
    let seal =
        read_seal(link, partition, index).await.map_err(ProveError::Unavailable)?.ok_or(ProveError::NotSealed)?;
    if let Some(fault) = seal.fault(partition, index, range, &seal.previous_chain) {
        return Err(ProveError::Corrupt(format!("{}: {fault}", seal_key(partition, index))));
    }
    let stream = stream_name(partition);
    let state = link.stream_state(stream.as_str()).await.map_err(|error| ProveError::Unavailable(error.to_string()))?;
    if state.first_sequence > seal.first_sequence {
        return Err(ProveError::Purged);
    }
    let leaves = read_range(link, partition, seal.first_sequence, seal.last_sequence, Some(sequence))
        .await
        .map_err(|error| ProveError::Unavailable(error.to_string()))?;
    if merkle::root(&leaves.hashes) != seal.root || leaves.hashes.len() as u64 != seal.records {
        return Err(ProveError::Corrupt(format!(
            "range {index} of partition {partition} (sequences {}..={}) no longer gives its sealed root",
            seal.first_sequence, seal.last_sequence
        )));
    }
    let (Some(leaf), Ok(leaf_index)) = (leaves.wanted, leaves.sequences.binary_search(&sequence)) else {
        return Err(ProveError::NotFound);
    };
    let path = merkle::inclusion_proof(&leaves.hashes, leaf_index).ok_or(ProveError::NotFound)?;
    Ok(proof_json(&seal, sequence, &leaf, leaf_index, &path))
}

/// Where a partition's audit fails: the first mismatch found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The partition.
    pub partition: u32,
    /// The range whose seal or messages do not check out.
    pub range_index: u64,
    /// The sequence at fault when one can be named: a message missing since sealing, else the
    /// range's first sequence.
    pub sequence: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "partition {}, range {}", self.partition, self.range_index)?;
        if let Some(sequence) = self.sequence {
            write!(formatter, ", sequence {sequence}")?;
        }
        write!(formatter, ": {}", self.reason)
    }
}

/// Why a partition did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The seals or the stream do not check out.
    Corrupt(Mismatch),
    /// NATS could not be read: nothing is known.
    Unavailable {
        /// The partition.
        partition: u32,
        /// What failed.
        reason: String,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt(mismatch) => write!(formatter, "corrupt: {mismatch}"),
            Self::Unavailable { partition, reason } => {
                write!(formatter, "partition {partition}: cannot verify: {reason}")
            }
        }
    }
}

impl std::error::Error for VerifyError {}

/// What [`verify_partition`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// The partition.
    pub partition: u32,
    /// Its seals, all linked from 32 zero bytes.
    pub seals: u64,
    /// Seals whose root was recomputed from the stream's messages.
    pub recomputed: u64,
    /// Seals of ranges purged from the stream, checked in the chain only.
    pub chain_only: u64,
    /// Messages in the recomputed ranges.
    pub records: u64,
    /// The last seal's chain value.
    pub chain_head: Option<Hash>,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// Sequences after the last sealed range (not sealed yet).
    pub unsealed: u64,
}

/// Verifies `partition`: its seals in the bucket form a chain from range 0 with no gap, each
/// seal's fields are consistent and its chain link holds, and each range still in the stream
/// (ending at or after its first sequence) gives its sealed root and record count again. Ranges
/// wholly below the stream's first sequence (removed by retention) are checked in the chain
/// only. The first problem is a [`Mismatch`] naming the range and, when it can, the sequence.
pub async fn verify_partition(link: &Link, partition: u32) -> Result<PartitionReport, VerifyError> {
    let stream = stream_name(partition);
    let unavailable = |error: LinkError| VerifyError::Unavailable { partition, reason: error.to_string() };
    let state = link.stream_state(stream.as_str()).await.map_err(unavailable)?;
    let seals = sealed_ranges(link, partition).await?;
    let mut report = PartitionReport { partition, last_sequence: state.last_sequence, ..PartitionReport::default() };
    let mut previous = CHAIN_GENESIS;
    let range = seals.first().map_or(SEAL_RANGE, |(_, seal)| seal.range_size);
    for (index, seal) in &seals {
        let corrupt = |sequence: Option<u64>, reason: String| {
            VerifyError::Corrupt(Mismatch { partition, range_index: *index, sequence, reason })
        };
        if *index != report.seals {
            let reason = format!("range {} has no seal but range {index} has", report.seals);
            return Err(VerifyError::Corrupt(Mismatch {
                partition,
                range_index: report.seals,
                sequence: None,
                reason,
            }));
        }
        if let Some(fault) = check_range(range).err().or_else(|| seal.fault(partition, *index, range, &previous)) {
            return Err(corrupt(range_bounds(*index, range).map(|(first, _)| first), fault));
        }
        if seal.last_sequence > state.last_sequence {
            let reason = format!("sealed up to {} but the stream ends at {}", seal.last_sequence, state.last_sequence);
            return Err(corrupt(Some(state.last_sequence + 1), reason));
        }
        if seal.last_sequence < state.first_sequence {
            report.chain_only += 1;
        } else {
            let leaves = read_range(link, partition, seal.first_sequence, seal.last_sequence, None)
                .await
                .map_err(unavailable)?;
            if let Some((sequence, reason)) = root_mismatch(seal, &leaves) {
                return Err(corrupt(Some(sequence), reason));
            }
            report.recomputed += 1;
            report.records += seal.records;
        }
        previous = seal.chain;
        report.seals += 1;
        report.chain_head = Some(seal.chain);
    }
    let sealed_to = seals.last().map_or(0, |(_, seal)| seal.last_sequence);
    report.unsealed = state.last_sequence.saturating_sub(sealed_to);
    Ok(report)
}

/// Why `leaves` (read now) do not give `seal`, naming a sequence: the first one missing when
/// messages are missing, else the range's first.
fn root_mismatch(seal: &Seal, leaves: &RangeLeaves) -> Option<(u64, String)> {
    let present = leaves.hashes.len() as u64;
    if present == seal.records && merkle::root(&leaves.hashes) == seal.root {
        return None;
    }
    let span = format!("sequences {}..={}", seal.first_sequence, seal.last_sequence);
    if present < seal.records {
        let absent = leaves.first_absent(seal.first_sequence, seal.last_sequence).unwrap_or(seal.first_sequence);
        let reason = format!(
            "{present} messages of {span} are in the stream, {} were sealed: sequence {absent} is missing (the first absent)",
            seal.records
        );
        return Some((absent, reason));
    }
    let reason = format!(
        "the messages of {span} give root {} ({present} messages), the seal has root {} ({} messages): a message was changed, added or removed",
        merkle::to_hex(&merkle::root(&leaves.hashes)),
        merkle::to_hex(&seal.root),
        seal.records
    );
    Some((seal.first_sequence, reason))
}

/// `partition`'s seals by range index, in order; a value that is not a seal is a mismatch.
async fn sealed_ranges(link: &Link, partition: u32) -> Result<Vec<(u64, Seal)>, VerifyError> {
    let prefix = seal_prefix(partition);
    let entries = link
        .kv_entries(BUCKET, prefix.as_str())
        .await
        .map_err(|error| VerifyError::Unavailable { partition, reason: error.to_string() })?;
    let mut seals = Vec::with_capacity(entries.len());
    for (key, entry) in entries {
        let corrupt = |range_index: u64, reason: String| {
            VerifyError::Corrupt(Mismatch { partition, range_index, sequence: None, reason })
        };
        let Some(index) = index_of_key(partition, &key) else {
            return Err(corrupt(0, format!("{key} is not a seal key (seal.p.{partition}.r.<range>)")));
        };
        let seal = Seal::from_json(&entry.value).map_err(|reason| corrupt(index, format!("{key}: {reason}")))?;
        seals.push((index, seal));
    }
    seals.sort_by_key(|(index, _)| *index);
    Ok(seals)
}

/// Verifies partitions `0..partitions` one after the other, handing each outcome to `out` as it
/// is known (a corrupt partition does not stop the others: an operator wants every damaged one
/// at once); the outcomes in partition order.
pub async fn verify_cluster(
    link: &Link,
    partitions: u32,
    out: &mut dyn FnMut(&Result<PartitionReport, VerifyError>),
) -> Vec<Result<PartitionReport, VerifyError>> {
    let mut outcomes = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let outcome = verify_partition(link, partition).await;
        out(&outcome);
        outcomes.push(outcome);
    }
    outcomes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn message(sequence: u64, subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Message {
        Message {
            sequence,
            subject: subject.into(),
            headers: headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            payload: payload.to_vec(),
            time_ms: 0,
        }
    }

    // Outside verifiers recompute leaves from this layout, so it is pinned byte for byte.
    #[test]
    fn leaf_encoding_is_length_prefixed_big_endian() {
        let leaf = leaf_of(&message(258, "kapsel.p.3.own", &[("Kapsel-Epoch", "7"), ("Kapsel-Kind", "12")], b"body"));
        let mut expected = vec![0, 0, 0, 0, 0, 0, 1, 2];
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 14]);
        expected.extend_from_slice(b"kapsel.p.3.own");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(b"12");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(b"7");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        expected.extend_from_slice(b"body");
        assert_eq!(leaf, expected);
    }

    // An absent header is an empty field, and no field can bleed into the next: moving bytes
    // between fields changes the leaf.
    #[test]
    fn absent_headers_are_empty_and_fields_are_unambiguous() {
        let plain = leaf_of(&message(1, "kapsel.p.0.in", &[], b"x"));
        assert_eq!(plain, encode_leaf(1, "kapsel.p.0.in", "", "", b"x"));
        assert_ne!(encode_leaf(1, "a", "1", "", b""), encode_leaf(1, "a", "", "1", b""));
        assert_ne!(encode_leaf(1, "a1", "", "", b""), encode_leaf(1, "a", "1", "", b""));
        assert_ne!(encode_leaf(1, "a", "", "", b"x"), encode_leaf(2, "a", "", "", b"x"));
        // Other headers (a message id, say) are not part of the leaf.
        let with_id = leaf_of(&message(1, "kapsel.p.0.in", &[("Nats-Msg-Id", "abc")], b"x"));
        assert_eq!(with_id, plain);
    }

    // Ranges are fixed by numbers alone, so every sealer cuts the stream the same way.
    #[test]
    fn ranges_are_fixed_and_keys_sort_by_range() {
        assert_eq!(range_bounds(0, 4), Some((1, 4)));
        assert_eq!(range_bounds(2, 4), Some((9, 12)));
        assert_eq!(range_bounds(u64::MAX, 2), None);
        for sequence in 1..=12 {
            let (first, last) = range_bounds(range_of(sequence, 4), 4).unwrap();
            assert!((first..=last).contains(&sequence));
        }
        assert_eq!(seal_key(3, 7), "seal.p.3.r.000000000007");
        assert!(seal_key(3, 9) < seal_key(3, 10));
        assert_eq!(index_of_key(3, &seal_key(3, 42)), Some(42));
        assert_eq!(index_of_key(1, &seal_key(10, 42)), None);
        assert_eq!(index_of_key(3, "seal.p.3.r."), None);
        assert_eq!(index_of_key(3, "seal.p.3.r.1x"), None);
    }

    fn leaves(count: u64) -> Vec<Hash> {
        (1..=count).map(|sequence| merkle::leaf_hash(&encode_leaf(sequence, "kapsel.p.0.in", "1", "", b"e"))).collect()
    }

    // The chain links each range to the one before from 32 zero bytes, as the local log's does.
    #[test]
    fn seals_chain_from_zero_and_check_their_own_fields() {
        let first = Seal::new(0, 0, 4, &leaves(4), CHAIN_GENESIS).unwrap();
        assert_eq!(first.chain, merkle::chain_next(&CHAIN_GENESIS, &merkle::root(&leaves(4))));
        assert_eq!((first.first_sequence, first.last_sequence, first.records), (1, 4, 4));
        let second = Seal::new(0, 1, 4, &leaves(3), first.chain).unwrap();
        assert_eq!(second.fault(0, 1, 4, &first.chain), None);
        assert!(second.fault(0, 1, 4, &CHAIN_GENESIS).unwrap().contains("previous_chain"));
        assert!(second.fault(0, 2, 4, &first.chain).is_some());
        assert!(second.fault(1, 1, 4, &first.chain).is_some());
        assert!(second.fault(0, 1, 8, &first.chain).is_some());
        let mut forged = second.clone();
        forged.root[0] ^= 1;
        assert!(forged.fault(0, 1, 4, &first.chain).unwrap().contains("chain"));
    }

    // The stored form is the contract with other nodes and outside verifiers: it must read back
    // to the same seal, and anything else must be refused, never half-read.
    #[test]
    fn seal_json_round_trips_and_refuses_other_values() {
        let seal = Seal::new(5, 2, 16, &leaves(9), [7; 32]).unwrap();
        let bytes = seal.to_json();
        assert_eq!(Seal::from_json(&bytes).unwrap(), seal);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["range"], 2);
        assert_eq!(value["first_sequence"], 33);
        assert_eq!(value["previous_chain"], merkle::to_hex(&[7; 32]));
        assert!(Seal::from_json(b"{}").is_err());
        let mut bad = value.clone();
        bad["root"] = json!("zz");
        assert!(Seal::from_json(&serde_json::to_vec(&bad).unwrap()).is_err());
        let mut newer = value;
        newer["version"] = json!(2);
        assert!(Seal::from_json(&serde_json::to_vec(&newer).unwrap()).unwrap_err().contains("version"));
    }

    // A proof built from a range's leaves must verify against the seal's root with the plain
    // RFC 6962 verifier, gaps in the range included.
    #[test]
    fn proofs_verify_against_the_seal_root() {
        let sequences = [1u64, 2, 4, 5, 7];
        let encoded: Vec<Vec<u8>> =
            sequences.iter().map(|sequence| encode_leaf(*sequence, "kapsel.p.2.in", "1", "", b"p")).collect();
        let hashes: Vec<Hash> = encoded.iter().map(|leaf| merkle::leaf_hash(leaf)).collect();
        let seal = Seal::new(2, 0, 8, &hashes, CHAIN_GENESIS).unwrap();
        for (index, leaf) in encoded.iter().enumerate() {
            let path = merkle::inclusion_proof(&hashes, index).unwrap();
            let proof = proof_json(&seal, sequences[index], leaf, index, &path);
            let leaf = STANDARD.decode(proof["leaf"].as_str().unwrap()).unwrap();
            let leaf_hash = merkle::leaf_hash(&leaf);
            assert_eq!(proof["leaf_hash"], merkle::to_hex(&leaf_hash));
            let path: Vec<Hash> = proof["audit_path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|hash| merkle::from_hex(hash.as_str().unwrap()).unwrap())
                .collect();
            let root = merkle::from_hex(proof["root"].as_str().unwrap()).unwrap();
            let tree_size = proof["tree_size"].as_u64().unwrap();
            assert!(merkle::verify_inclusion(
                &leaf_hash,
                proof["leaf_index"].as_u64().unwrap(),
                tree_size,
                &path,
                &root
            ));
            assert_eq!(u64::from_be_bytes(leaf[..8].try_into().unwrap()), sequences[index]);
        }
    }

    // Retention must never cut a sealed range in two nor take what is not sealed yet.
    #[test]
    fn purge_bounds_stop_at_sealed_range_starts() {
        assert_eq!(purge_bound(22, 20, 4), 21, "below the first unsealed range");
        assert_eq!(purge_bound(19, 20, 4), 17, "rounded down to its range's start");
        assert_eq!(purge_bound(17, 20, 4), 17);
        assert_eq!(purge_bound(100, 0, 4), 1, "nothing sealed: nothing purged");
        assert_eq!(purge_bound(0, 20, 4), 1);
        assert_eq!(purge_bound(u64::MAX, u64::MAX, SEAL_RANGE), u64::MAX - (SEAL_RANGE - 2), "no overflow");
    }

    // A missing message must be named by its sequence, the first one absent.
    #[test]
    fn a_missing_message_is_named_by_its_sequence() {
        let full = RangeLeaves { sequences: vec![5, 6, 7, 8], hashes: leaves(4), wanted: None };
        let seal = Seal::new(0, 1, 4, &full.hashes, CHAIN_GENESIS).unwrap();
        assert_eq!(root_mismatch(&seal, &full), None);
        let gap = RangeLeaves { sequences: vec![5, 7, 8], hashes: leaves(3), wanted: None };
        let (sequence, reason) = root_mismatch(&seal, &gap).unwrap();
        assert_eq!(sequence, 6);
        assert!(reason.contains("sequence 6 is missing"), "{reason}");
        let tail = RangeLeaves { sequences: vec![5, 6, 7], hashes: leaves(3), wanted: None };
        assert_eq!(tail.first_absent(5, 8), Some(8));
        let mut changed = full;
        changed.hashes[2][0] ^= 1;
        let (sequence, reason) = root_mismatch(&seal, &changed).unwrap();
        assert_eq!(sequence, 5);
        assert!(reason.contains("changed"), "{reason}");
    }
}
