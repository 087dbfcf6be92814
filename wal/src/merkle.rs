//! RFC 6962 Merkle trees (restated in RFC 9162 §2.1) and the audit hash chain.
//!
//! Everything here is a pure function of its inputs: no I/O, no clock, no global state. The
//! write-ahead log hashes each record into a leaf, seals a segment with the [`root`] over its
//! leaves, and links successive roots with [`chain_next`] so that rewriting any sealed segment
//! changes every later chain value.
//!
//! The hashing follows RFC 6962 §2.1 exactly, so proofs produced here can be checked by any
//! Certificate Transparency verifier:
//!
//! - leaf hash: `SHA-256(0x00 ‖ leaf bytes)`
//! - node hash: `SHA-256(0x01 ‖ left ‖ right)`
//! - the tree over `n > 1` leaves splits at `k`, the largest power of two below `n`
//! - the tree over no leaves has the root `SHA-256("")`

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash, a tree root or a chain value.
pub type Hash = [u8; 32];

/// The chain value before the first root: 32 zero bytes.
///
/// It is a fixed, public constant rather than a secret or a random value so that anyone holding
/// the sequence of segment roots can recompute the whole chain from the beginning.
pub const CHAIN_GENESIS: Hash = [0; 32];

/// Prefix of a hashed leaf (RFC 6962 §2.1). Leaves and nodes get different prefixes so that a
/// leaf can never be passed off as an interior node (a second-preimage attack).
const LEAF_PREFIX: u8 = 0x00;

/// Prefix of a hashed interior node (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// The number of characters in the hexadecimal form of a [`Hash`].
const HEX_LENGTH: usize = 64;

/// Lowercase hexadecimal digits, indexed by their value.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Hashes one leaf: `SHA-256(0x00 ‖ leaf)`.
#[must_use]
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new().chain_update([LEAF_PREFIX]).chain_update(leaf).finalize().into()
}

/// Hashes two children into their parent: `SHA-256(0x01 ‖ left ‖ right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([NODE_PREFIX]).chain_update(left).chain_update(right).finalize().into()
}

/// The root of the tree with no leaves: `SHA-256("")`, that is
/// `e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Extends the audit chain by one root: `SHA-256(previous ‖ root)`.
///
/// The first link takes [`CHAIN_GENESIS`] as `previous`. There is no prefix byte, so chain
/// values are not domain-separated from tree hashes: `chain_next(&CHAIN_GENESIS, root)` equals
/// `leaf_hash` of 31 zero bytes followed by `root`. A chain value must therefore never be used
/// as a leaf or node hash; it is only ever compared with another chain value.
#[must_use]
pub fn chain_next(previous: &Hash, root: &Hash) -> Hash {
    Sha256::new().chain_update(previous).chain_update(root).finalize().into()
}

/// Root over already-hashed leaves (MTH of RFC 6962 §2.1).
///
/// Recursion follows the split of the tree, so its depth is about `log2(n)`: a million leaves
/// need about twenty frames. Nothing is allocated.
#[must_use]
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [single] => *single,
        _ => {
            let (left, right) = leaf_hashes.split_at(split_point(leaf_hashes.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// Audit path for leaf `index` (RFC 6962 §2.1.1 `PATH(m, D[n])`), ordered from the leaf upwards.
/// Returns `None` when `index >= leaf_hashes.len()`.
///
/// The siblings together cover every other leaf, so one proof costs about `n` node hashes
/// (`n` = `leaf_hashes.len()`); a proof for every leaf of a segment this way costs `n²`.
#[must_use]
pub fn inclusion_proof(leaf_hashes: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaf_hashes.len() {
        return None;
    }
    // Walk from the root down to the leaf, collecting the sibling at each split, then reverse:
    // RFC 6962 lists the path from the leaf upwards.
    let mut path = Vec::with_capacity(path_length_max(leaf_hashes.len()));
    let mut subtree = leaf_hashes;
    let mut position = index;
    while subtree.len() > 1 {
        let split = split_point(subtree.len());
        let (left, right) = subtree.split_at(split);
        if position < split {
            path.push(root(right));
            subtree = left;
        } else {
            path.push(root(left));
            subtree = right;
            position -= split;
        }
    }
    path.reverse();
    Some(path)
}

/// Verifies an audit path (RFC 9162 §2.1.3.2 algorithm). False for any mismatch, wrong length,
/// `index >= tree_size`.
///
/// The verifier trusts nothing it is given: the sizes may be any `u64`, the proof any length.
#[must_use]
pub fn verify_inclusion(leaf_hash: &Hash, index: u64, tree_size: u64, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion_proof(leaf_hash, index, tree_size, proof).is_some_and(|computed| computed == *root)
}

/// Recomputes the root an audit path leads to, or `None` when the path cannot belong to a tree of
/// `tree_size` leaves (RFC 9162 §2.1.3.2, steps 1 to 5).
fn root_from_inclusion_proof(leaf_hash: &Hash, index: u64, tree_size: u64, proof: &[Hash]) -> Option<Hash> {
    if index >= tree_size {
        return None;
    }
    // `position` and `last` are the RFC's `fn` and `sn`: the leaf's index and the last index at
    // the current level. They shift right together as the walk climbs the tree.
    let mut position = index;
    let mut last = tree_size - 1;
    let mut computed = *leaf_hash;
    for sibling in proof {
        // A path longer than the tree is tall has run past the root.
        if last == 0 {
            return None;
        }
        if position & 1 == 1 || position == last {
            computed = node_hash(sibling, &computed);
            // A right-edge node with no right sibling is promoted unchanged, so skip the levels
            // where it is a left child until it becomes a right child (or reaches the edge).
            while position & 1 == 0 && position != 0 {
                position >>= 1;
                last >>= 1;
            }
        } else {
            computed = node_hash(&computed, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    // A path shorter than the tree is tall stops below the root.
    (last == 0).then_some(computed)
}

/// Where RFC 6962 splits a tree of `size` leaves: the largest power of two below `size`.
///
/// Only meaningful for `size >= 2`; smaller trees have no split, and get 1 so that the
/// arithmetic stays total.
fn split_point(size: usize) -> usize {
    debug_assert!(size >= 2, "a tree of {size} leaves has no split");
    (size - 1).checked_ilog2().map_or(1, |exponent| 1 << exponent)
}

/// An upper bound on the audit path length in a tree of `size` leaves: `ceil(log2(size))`.
fn path_length_max(size: usize) -> usize {
    // The bit length of `size - 1`. `usize::BITS` fits in `usize` on every platform Rust
    // supports, so the cast cannot truncate.
    (usize::BITS - size.saturating_sub(1).leading_zeros()) as usize
}

/// Incremental builder: push leaf hashes one at a time; keeps only O(log n) hashes
/// (the roots of the perfect subtrees, like a binary counter); `root()` gives the same value
/// as `root(&all_leaves)` at any moment without consuming it.
///
/// A tree of `n` leaves decomposes into one perfect subtree per set bit of `n`, largest on the
/// left. Pushing a leaf is a binary increment: equal-sized subtrees at the right end merge the
/// way carries propagate, so a push costs at most `log2(n)` node hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Roots of the perfect subtrees, left to right, so largest first. Invariant: there are
    /// exactly `leaf_count.count_ones()` of them, at most 64.
    subtrees: Vec<Hash>,
    /// Leaves pushed so far.
    leaf_count: u64,
}

impl Frontier {
    /// An empty frontier, whose root is [`empty_root`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes leaf hashes in order.
    pub fn extend(&mut self, leaf_hashes: impl IntoIterator<Item = Hash>) {
        for leaf_hash in leaf_hashes {
            self.push(leaf_hash);
        }
    }

    /// Appends one leaf hash (already hashed with [`leaf_hash`]) to the right end of the tree.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut merged = leaf_hash;
        // Each trailing one bit of the count is a subtree as large as the one being carried;
        // merge them the way a binary increment clears trailing ones.
        for _ in 0..self.leaf_count.trailing_ones() {
            let Some(left) = self.subtrees.pop() else {
                debug_assert!(false, "frontier holds fewer subtrees than set bits");
                break;
            };
            merged = node_hash(&left, &merged);
        }
        self.subtrees.push(merged);
        // 2^64 leaves would take centuries at any realistic append rate; overflow is not a
        // practical concern.
        self.leaf_count += 1;
        debug_assert_eq!(self.subtrees.len(), self.leaf_count.count_ones() as usize);
    }

    /// The number of leaves pushed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.leaf_count
    }

    /// Whether no leaf has been pushed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leaf_count == 0
    }

    /// The root of the tree over every leaf pushed so far, equal to [`root`] over those leaves.
    ///
    /// RFC 6962 splits off the largest perfect subtree on the left and recurses on the rest, so
    /// the root is the right fold of the subtree roots: smallest subtree first.
    #[must_use]
    pub fn root(&self) -> Hash {
        self.subtrees.iter().rev().copied().reduce(|right, left| node_hash(&left, &right)).unwrap_or_else(empty_root)
    }
}

/// The lowercase hexadecimal form of a hash, 64 characters long.
#[must_use]
pub fn to_hex(hash: &Hash) -> String {
    let mut text = String::with_capacity(HEX_LENGTH);
    for byte in hash {
        text.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Parses a hash from exactly 64 hexadecimal characters; either case is accepted.
///
/// Returns `None` for any other length and for any character that is not a hexadecimal digit.
#[must_use]
pub fn from_hex(text: &str) -> Option<Hash> {
    let digits = text.as_bytes();
    if digits.len() != HEX_LENGTH {
        return None;
    }
    let mut hash = [0; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let [high, low] = pair else {
            return None;
        };
        *byte = (hex_value(*high)? << 4) | hex_value(*low)?;
    }
    Some(hash)
}

/// The value of one ASCII hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Known-answer data from the RFC 6962 test vectors shared by the Certificate Transparency
    // implementations, as published in transparency-dev/merkle, `proof/verify_test.go`
    // (`leaves`, `roots`, `inclusionProofs`) and `rfc6962/rfc6962_test.go` (leaf hashes). Only
    // the data is reproduced here.

    /// The eight reference leaves, as hexadecimal bytes.
    const REFERENCE_LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    /// The root over the first `n` reference leaves, at position `n`.
    const REFERENCE_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// A published audit path: zero-based leaf index, tree size, path from the leaf upwards.
    /// (The source numbers leaves from one; the indices here are converted.)
    struct ReferenceProof {
        index: usize,
        tree_size: usize,
        path: &'static [&'static str],
    }

    const REFERENCE_PROOFS: [ReferenceProof; 5] = [
        ReferenceProof { index: 0, tree_size: 1, path: &[] },
        ReferenceProof {
            index: 0,
            tree_size: 8,
            path: &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        },
        ReferenceProof {
            index: 5,
            tree_size: 8,
            path: &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        },
        ReferenceProof {
            index: 2,
            tree_size: 3,
            path: &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        },
        ReferenceProof {
            index: 1,
            tree_size: 5,
            path: &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        },
    ];

    /// The largest tree the exhaustive tests build.
    const EXHAUSTIVE_SIZE_MAX: usize = 300;

    fn hash_from_hex(text: &str) -> Hash {
        from_hex(text).unwrap_or_else(|| panic!("test vector {text:?} is not a hash"))
    }

    fn bytes_from_hex(text: &str) -> Vec<u8> {
        text.as_bytes()
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn reference_leaf_hashes() -> Vec<Hash> {
        REFERENCE_LEAVES.iter().map(|leaf| leaf_hash(&bytes_from_hex(leaf))).collect()
    }

    /// Distinct leaf hashes for synthetic trees.
    fn numbered_leaf_hashes(count: usize) -> Vec<Hash> {
        (0..u64_of(count)).map(|number| leaf_hash(&number.to_le_bytes())).collect()
    }

    fn u64_of(value: usize) -> u64 {
        u64::try_from(value).unwrap()
    }

    fn sha256_of(parts: &[&[u8]]) -> Hash {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    #[test]
    fn roots_match_rfc6962_reference_vectors() {
        // Agreement with the published vectors is what lets third-party CT tooling check our roots.
        let leaves = reference_leaf_hashes();
        for (size, expected) in REFERENCE_ROOTS.iter().enumerate() {
            assert_eq!(to_hex(&root(&leaves[..size])), *expected, "root of the first {size} reference leaves");
        }
    }

    #[test]
    fn inclusion_proofs_match_published_paths() {
        // Producing byte-identical paths proves our PATH(m, D[n]) ordering matches RFC 6962.
        let leaves = reference_leaf_hashes();
        for reference in &REFERENCE_PROOFS {
            let expected: Vec<Hash> = reference.path.iter().map(|hex| hash_from_hex(hex)).collect();
            let tree = &leaves[..reference.tree_size];
            assert_eq!(
                inclusion_proof(tree, reference.index),
                Some(expected.clone()),
                "path of leaf {} in a tree of {}",
                reference.index,
                reference.tree_size
            );
            assert!(verify_inclusion(
                &leaves[reference.index],
                u64_of(reference.index),
                u64_of(reference.tree_size),
                &expected,
                &hash_from_hex(REFERENCE_ROOTS[reference.tree_size]),
            ));
        }
    }

    #[test]
    fn leaf_and_node_hashes_match_rfc6962_definitions() {
        // The prefixes are the whole of the second-preimage defence, so pin them byte for byte.
        assert_eq!(to_hex(&leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        assert_eq!(to_hex(&leaf_hash(b"L123456")), "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56");
        let left = leaf_hash(b"left");
        let right = leaf_hash(b"right");
        assert_eq!(node_hash(&left, &right), sha256_of(&[&[0x01], &left, &right]));
        assert_ne!(node_hash(&left, &right), node_hash(&right, &left));
    }

    #[test]
    fn leaf_cannot_pose_as_interior_node() {
        // Without domain separation a 64-byte leaf could stand in for a whole subtree.
        let left = leaf_hash(b"a");
        let right = leaf_hash(b"b");
        let forged: Vec<u8> = left.iter().chain(right.iter()).copied().collect();
        assert_ne!(leaf_hash(&forged), node_hash(&left, &right));
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        // Sealing an empty segment must still yield a well-defined, standard root.
        assert_eq!(empty_root(), sha256_of(&[]));
        assert_eq!(root(&[]), empty_root());
        assert_ne!(empty_root(), leaf_hash(b""));
    }

    #[test]
    fn single_leaf_tree_root_is_the_leaf_hash() {
        // RFC 6962 defines MTH of one entry as its leaf hash, with no extra node hash on top.
        let only = leaf_hash(b"only");
        assert_eq!(root(&[only]), only);
        assert_eq!(inclusion_proof(&[only], 0), Some(Vec::new()));
        assert!(verify_inclusion(&only, 0, 1, &[], &only));
    }

    #[test]
    fn perfect_tree_root_matches_level_by_level_pairing() {
        // An independent construction guards against a split-point error that would still be
        // self-consistent between root and the proofs.
        for exponent in 0..=8 {
            let mut level = numbered_leaf_hashes(1 << exponent);
            while level.len() > 1 {
                level = level.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
            }
            assert_eq!(root(&numbered_leaf_hashes(1 << exponent)), level[0]);
        }
    }

    #[test]
    fn split_point_and_path_bound_follow_their_definitions() {
        // The split decides the shape of every tree and the bound sizes every proof, so check
        // both directly at the powers of two where off-by-one errors live.
        let expected = [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1 << 20, 1 << 19)];
        for (size, split) in expected {
            assert_eq!(split_point(size), split, "split of {size}");
        }
        assert_eq!(split_point(usize::MAX), 1 << (usize::BITS - 1));
        let lengths = [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4)];
        for (size, length) in lengths {
            assert_eq!(path_length_max(size), length, "path length bound of {size}");
        }
    }

    #[test]
    fn inclusion_proof_is_none_for_index_out_of_range() {
        // Asking for a leaf the tree does not have is an input error, never a panic.
        assert_eq!(inclusion_proof(&[], 0), None);
        let leaves = numbered_leaf_hashes(5);
        assert_eq!(inclusion_proof(&leaves, 5), None);
        assert_eq!(inclusion_proof(&leaves, usize::MAX), None);
    }

    #[test]
    fn verify_inclusion_rejects_index_beyond_tree_size() {
        // An index at or past the size names no leaf, whatever the proof and root say.
        let leaf = leaf_hash(b"leaf");
        assert!(!verify_inclusion(&leaf, 0, 0, &[], &leaf));
        assert!(!verify_inclusion(&leaf, 1, 1, &[], &leaf));
        assert!(!verify_inclusion(&leaf, u64::MAX, u64::MAX, &[], &leaf));
        assert!(!verify_inclusion(&empty_root(), 0, 0, &[], &empty_root()));
    }

    #[test]
    fn inclusion_proofs_verify_and_resist_tampering_in_every_tree_up_to_300() {
        // Ragged trees exercise every branch of the split, and a verifier that accepted any
        // altered claim would make the audit log worthless. Each proof is built once and then
        // checked both ways, because building proofs (about nine million node hashes in all)
        // dominates the cost: roughly a second optimised, over a minute unoptimised.
        let leaves = numbered_leaf_hashes(2 * EXHAUSTIVE_SIZE_MAX);
        let roots: Vec<Hash> = (0..=2 * EXHAUSTIVE_SIZE_MAX).map(|size| root(&leaves[..size])).collect();
        for size in 1..=EXHAUSTIVE_SIZE_MAX {
            for index in 0..size {
                let proof = inclusion_proof(&leaves[..size], index).unwrap();
                assert!(proof.len() <= path_length_max(size));
                let claim = Claim {
                    leaf: leaves[index],
                    index: u64_of(index),
                    tree_size: u64_of(size),
                    proof,
                    root: roots[size],
                };
                assert!(claim.verifies(), "leaf {index} of {size}: honest claim");
                assert_tampering_rejected(&claim, &leaves, &roots);
            }
        }
    }

    /// One honest inclusion claim, to be corrupted in every way the tests can think of.
    struct Claim {
        leaf: Hash,
        index: u64,
        tree_size: u64,
        proof: Vec<Hash>,
        root: Hash,
    }

    impl Claim {
        fn verifies(&self) -> bool {
            verify_inclusion(&self.leaf, self.index, self.tree_size, &self.proof, &self.root)
        }

        /// Whether the claim still verifies after `change`.
        fn verifies_with(&self, change: impl FnOnce(&mut Claim)) -> bool {
            let mut changed = Claim { proof: self.proof.clone(), ..*self };
            change(&mut changed);
            changed.verifies()
        }
    }

    fn assert_tampering_rejected(claim: &Claim, leaves: &[Hash], roots: &[Hash]) {
        let context = format!("leaf {} of {}", claim.index, claim.tree_size);
        assert_wrong_index_rejected(claim, &context);
        assert_wrong_size_rejected(claim, roots, &context);
        assert_altered_proof_rejected(claim, &context);
        assert_wrong_leaf_or_root_rejected(claim, leaves, &context);
    }

    fn assert_wrong_index_rejected(claim: &Claim, context: &str) {
        // The next index is either another leaf or past the end; the previous one wraps to
        // u64::MAX for leaf 0.
        for wrong in [claim.index + 1, claim.index.wrapping_sub(1)] {
            assert!(!claim.verifies_with(|c| c.index = wrong), "{context}: index {wrong}");
        }
    }

    fn assert_wrong_size_rejected(claim: &Claim, roots: &[Hash], context: &str) {
        // Against its own root, doubling the size always makes the path too short: every leaf
        // of the smaller tree sits one level deeper in the doubled one.
        let doubled = claim.tree_size * 2;
        assert!(!claim.verifies_with(|c| c.tree_size = doubled), "{context}: size {doubled} with the original root");
        // Against the genuine root of another size every wrong size must fail: a signed tree
        // head pairs a size with its root, so this is the claim an attacker could present.
        // (Some wrong sizes do verify against the original root when the path has the same
        // shape, for example leaf 0 of 3 and of 4; that is why tree heads carry the size.)
        let mut wrong_sizes = vec![claim.tree_size + 1];
        if claim.tree_size - 1 > claim.index {
            wrong_sizes.push(claim.tree_size - 1);
        }
        for wrong in wrong_sizes {
            let other_root = roots[usize::try_from(wrong).unwrap()];
            let verified = claim.verifies_with(|c| {
                c.tree_size = wrong;
                c.root = other_root;
            });
            assert!(!verified, "{context}: size {wrong} with its own root");
        }
    }

    fn assert_altered_proof_rejected(claim: &Claim, context: &str) {
        if !claim.proof.is_empty() {
            // One flip per claim keeps the exhaustive test affordable; rotating the element and
            // the bit with the leaf index still reaches every element of every path shape.
            let index = usize::try_from(claim.index).unwrap();
            let position = index % claim.proof.len();
            let bit = (index * 37) % 256;
            let flipped = claim.verifies_with(|c| c.proof[position][bit / 8] ^= 1 << (bit % 8));
            assert!(!flipped, "{context}: bit {bit} of proof[{position}] flipped");
            let truncated = claim.verifies_with(|c| {
                c.proof.pop();
            });
            assert!(!truncated, "{context}: truncated");
        }
        let root = claim.root;
        assert!(!claim.verifies_with(|c| c.proof.push(root)), "{context}: root appended");
    }

    fn assert_wrong_leaf_or_root_rejected(claim: &Claim, leaves: &[Hash], context: &str) {
        let other_leaf = leaves[usize::try_from(claim.index).unwrap() + 1];
        assert!(!claim.verifies_with(|c| c.leaf = other_leaf), "{context}: neighbour's leaf");
        assert!(!claim.verifies_with(|c| c.root[0] ^= 1), "{context}: root bit flipped");
    }

    #[test]
    fn proof_of_the_wrong_length_is_refused_before_comparing_roots() {
        // RFC 9162 rejects a path that overshoots or stops short of the root outright, so the
        // verdict never rests on the final comparison alone.
        let leaves = numbered_leaf_hashes(5);
        for index in 0..leaves.len() {
            let leaf = &leaves[index];
            let mut proof = inclusion_proof(&leaves, index).unwrap();
            assert!(root_from_inclusion_proof(leaf, u64_of(index), 5, &proof).is_some());
            proof.push(leaves[0]);
            assert_eq!(root_from_inclusion_proof(leaf, u64_of(index), 5, &proof), None);
            proof.truncate(proof.len() - 2);
            assert_eq!(root_from_inclusion_proof(leaf, u64_of(index), 5, &proof), None);
        }
    }

    #[test]
    fn frontier_root_matches_root_for_every_size_up_to_300() {
        // The log seals segments from the frontier, so it must agree with the batch root.
        let leaves = numbered_leaf_hashes(EXHAUSTIVE_SIZE_MAX);
        let mut frontier = Frontier::new();
        assert!(frontier.is_empty());
        assert_eq!(frontier.root(), empty_root());
        for (count, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.len(), u64_of(count + 1));
            assert!(!frontier.is_empty());
            assert_eq!(frontier.root(), root(&leaves[..=count]), "size {}", count + 1);
        }
    }

    #[test]
    fn frontier_keeps_one_hash_per_set_bit_of_its_length() {
        // Memory must stay logarithmic however long a segment grows.
        let mut frontier = Frontier::new();
        for leaf in numbered_leaf_hashes(1 << 12) {
            frontier.push(leaf);
            assert_eq!(frontier.subtrees.len(), frontier.len().count_ones() as usize);
        }
        assert_eq!(frontier.subtrees.len(), 1);
    }

    #[test]
    fn frontier_root_does_not_disturb_later_pushes() {
        // Publishing an interim root mid-segment must not change the final sealed root.
        let leaves = numbered_leaf_hashes(37);
        let mut observed = Frontier::new();
        let mut unobserved = Frontier::new();
        for leaf in &leaves {
            observed.push(*leaf);
            let _interim = observed.root();
            unobserved.push(*leaf);
        }
        assert_eq!(observed, unobserved);
        assert_eq!(observed.root(), root(&leaves));
    }

    #[test]
    fn million_leaf_tree_fits_in_a_small_stack() {
        // Segments of about a million records must neither overflow the stack nor disagree with
        // the frontier; a 128 KiB stack leaves no room for recursion deeper than log2(n).
        let worker = std::thread::Builder::new().stack_size(128 * 1024).spawn(check_million_leaf_tree).unwrap();
        worker.join().unwrap();
    }

    fn check_million_leaf_tree() {
        // Distinct counters stand in for leaf hashes: the tree treats them as opaque, and this
        // saves a million SHA-256 calls in an unoptimised test build.
        let leaf_count = (1 << 20) + 12_345;
        let leaves: Vec<Hash> = (0..u64_of(leaf_count))
            .map(|number| {
                let mut hash = [0; 32];
                hash[..8].copy_from_slice(&number.to_le_bytes());
                hash
            })
            .collect();
        let mut frontier = Frontier::new();
        for leaf in &leaves {
            frontier.push(*leaf);
        }
        let batch_root = root(&leaves);
        assert_eq!(frontier.root(), batch_root);
        let index = leaf_count - 3;
        let proof = inclusion_proof(&leaves, index).unwrap();
        assert!(verify_inclusion(&leaves[index], u64_of(index), u64_of(leaf_count), &proof, &batch_root));
    }

    #[test]
    fn chain_next_hashes_previous_then_root() {
        // External auditors recompute the chain with plain SHA-256, so the layout is a contract.
        let first_root = root(&numbered_leaf_hashes(3));
        let second_root = root(&numbered_leaf_hashes(4));
        let first = chain_next(&CHAIN_GENESIS, &first_root);
        assert_eq!(first, sha256_of(&[&[0; 32], &first_root]));
        let second = chain_next(&first, &second_root);
        assert_eq!(second, sha256_of(&[&first, &second_root]));
        assert_ne!(chain_next(&first_root, &CHAIN_GENESIS), first);
    }

    #[test]
    fn first_chain_link_coincides_with_a_leaf_hash() {
        // Pins the documented caveat: chain values share SHA-256 with leaves and must never be
        // fed into a tree, because the zero genesis makes the first link look like a leaf.
        let segment_root = root(&numbered_leaf_hashes(2));
        let mut leaf = vec![0u8; 31];
        leaf.extend_from_slice(&segment_root);
        assert_eq!(chain_next(&CHAIN_GENESIS, &segment_root), leaf_hash(&leaf));
    }

    #[test]
    fn chain_genesis_is_thirty_two_zero_bytes() {
        // Auditors start the chain from this documented value, so it must never drift.
        assert_eq!(CHAIN_GENESIS, [0u8; 32]);
        assert_eq!(to_hex(&CHAIN_GENESIS), "0".repeat(64));
    }

    #[test]
    fn to_hex_is_lowercase_and_round_trips() {
        // Roots are compared as text in logs and APIs, so the form must be canonical.
        let mut hash = [0u8; 32];
        for (position, byte) in hash.iter_mut().enumerate() {
            *byte = u8::try_from(position * 8 + 1).unwrap();
        }
        let text = to_hex(&hash);
        assert_eq!(text, "0109111921293139414951596169717981899199a1a9b1b9c1c9d1d9e1e9f1f9");
        assert_eq!(from_hex(&text), Some(hash));
        assert_eq!(from_hex(&text.to_uppercase()), Some(hash));
    }

    #[test]
    fn from_hex_rejects_malformed_text() {
        // Hashes arrive from operators and files; anything but 64 hex digits is refused.
        let valid = REFERENCE_ROOTS[8];
        assert!(from_hex(valid).is_some());
        assert_eq!(from_hex(""), None);
        assert_eq!(from_hex(&valid[..63]), None);
        assert_eq!(from_hex(&format!("{valid}0")), None);
        assert_eq!(from_hex(&format!("{}g", &valid[..63])), None);
        assert_eq!(from_hex(&format!(" {}", &valid[..63])), None);
        assert_eq!(from_hex(&format!("0x{}", &valid[..62])), None);
        // 32 two-byte characters make 64 bytes but are not hexadecimal.
        assert_eq!(from_hex(&"é".repeat(32)), None);
    }

    proptest! {
        #[test]
        fn frontier_root_matches_root_for_random_leaves(
            leaves in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..700),
        ) {
            // Random shapes catch fold-order mistakes that fixed sizes could miss.
            let hashes: Vec<Hash> = leaves.iter().map(|leaf| leaf_hash(leaf)).collect();
            let mut frontier = Frontier::new();
            for hash in &hashes {
                frontier.push(*hash);
            }
            prop_assert_eq!(frontier.len(), u64_of(hashes.len()));
            prop_assert_eq!(frontier.root(), root(&hashes));
        }

        #[test]
        fn random_leaf_proves_inclusion_against_frontier_root(
            leaf_count in 1usize..1_000,
            pick in any::<prop::sample::Index>(),
            salt in any::<u64>(),
        ) {
            // Proofs built from the batch leaves must check out against the incremental root.
            let hashes: Vec<Hash> = (0..u64_of(leaf_count))
                .map(|number| leaf_hash(&(number ^ salt).to_le_bytes()))
                .collect();
            let mut frontier = Frontier::new();
            for hash in &hashes {
                frontier.push(*hash);
            }
            let index = pick.index(leaf_count);
            let proof = inclusion_proof(&hashes, index).unwrap();
            prop_assert!(verify_inclusion(
                &hashes[index],
                u64_of(index),
                frontier.len(),
                &proof,
                &frontier.root(),
            ));
        }

        #[test]
        fn verify_inclusion_rejects_arbitrary_input_without_panicking(
            leaf in any::<[u8; 32]>(),
            index in any::<u64>(),
            tree_size in any::<u64>(),
            proof in prop::collection::vec(any::<[u8; 32]>(), 0..70),
            claimed_root in any::<[u8; 32]>(),
        ) {
            // The verifier faces untrusted input; it must answer, never crash, and not be fooled.
            prop_assert!(!verify_inclusion(&leaf, index, tree_size, &proof, &claimed_root));
        }

        #[test]
        fn hex_round_trips_any_hash(hash in any::<[u8; 32]>()) {
            // Persisted roots must read back to the same bytes.
            prop_assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        }
    }
}
