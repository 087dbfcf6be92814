//! Property tests: random record sequences, written across random close/reopen points with
//! random segment sizes, replay exactly, under both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{on_both_drivers, open, options};
use kapsel_wal::{audit, codec};
use proptest::prelude::*;

/// A record shaped like what the engine stores, encoded with rkyv and validated on the way back.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct TestEvent {
    id: u64,
    endpoint: String,
    payload: Vec<u8>,
}

fn events() -> impl Strategy<Value = Vec<(u8, TestEvent)>> {
    let event = (
        0u8..=kapsel_wal::limits::USER_KIND_MAX,
        any::<u64>(),
        "[a-z0-9_]{0,12}",
        proptest::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(kind, id, endpoint, payload)| (kind, TestEvent { id, endpoint, payload }));
    proptest::collection::vec(event, 1..120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    // Whatever is appended and acknowledged comes back byte for byte, in order, however the
    // writing was split across sessions and segments.
    #[test]
    fn random_sequences_survive_reopen_exactly(
        records in events(),
        segment_bytes in prop::sample::select(vec![4096u64, 9000, 65536]),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut cut_points: Vec<usize> = splits.iter().map(|index| index.index(records.len())).collect();
        cut_points.push(records.len());
        cut_points.sort_unstable();
        on_both_drivers(|backend| {
            let records = records.clone();
            let cut_points = cut_points.clone();
            async move {
                let directory = tempfile::tempdir().unwrap();
                let mut written = 0;
                for cut in cut_points {
                    let (wal, recovery, _) = open(directory.path(), options(backend, segment_bytes)).await.unwrap();
                    assert_eq!(recovery.next_lsn, written as u64 + 1);
                    let commits: Vec<_> = records[written..cut]
                        .iter()
                        .map(|(kind, event)| wal.append(*kind, &codec::encode(event).unwrap()).unwrap())
                        .collect();
                    for commit in commits {
                        commit.await.unwrap();
                    }
                    written = cut;
                    wal.close().await.unwrap();
                }
                let (_, recovery, replayed) = open(directory.path(), options(backend, segment_bytes)).await.unwrap();
                assert_eq!(recovery.records, records.len() as u64);
                let back: Vec<(u8, TestEvent)> =
                    replayed.iter().map(|(_, kind, body)| (*kind, codec::decode::<TestEvent>(body).unwrap())).collect();
                assert_eq!(back, records);
                let lsns: Vec<u64> = replayed.iter().map(|record| record.0).collect();
                assert_eq!(lsns, (1..=records.len() as u64).collect::<Vec<_>>());
                assert_eq!(audit::verify(directory.path(), &mut |_| {}).unwrap().records, records.len() as u64);
            }
        });
    }

    // A body with a valid checksum is still untrusted: rkyv validation must reject garbage with
    // an error, never a panic or a bogus value.
    #[test]
    fn garbage_bodies_fail_validation_cleanly(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
        match codec::decode::<TestEvent>(&garbage) {
            Err(error) => prop_assert!(matches!(error, kapsel_wal::WalError::Decode(_)), "{error}"),
            // Bytes that happen to validate are a real value: it must survive its own round trip.
            Ok(value) => {
                let encoded = codec::encode(&value).unwrap();
                prop_assert_eq!(codec::decode::<TestEvent>(&encoded).unwrap(), value);
            }
        }
    }
}
