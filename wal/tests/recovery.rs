//! Crash recovery: torn tails, damage to acknowledged data, interrupted seals and segment
//! creation, under both monoio drivers, on real files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;

use common::{append_all, on_both_drivers, open, options, segment_files};
use kapsel_wal::frame::{BATCH_HEADER_BYTES, RECORD_HEADER_BYTES};
use kapsel_wal::seal::{CHAIN_ENTRY_BYTES, CHAIN_FILE_NAME};
use kapsel_wal::{audit, IoBackend, WalError};

fn copy_directory(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn body(index: usize) -> Vec<u8> {
    format!("payload {index} ").repeat(5).into_bytes()
}

/// A log of `count` records, each acknowledged alone so that each is its own batch.
async fn log_of_single_batches(directory: &Path, backend: IoBackend, count: usize, segment_bytes: u64) {
    let (wal, _, _) = open(directory, options(backend, segment_bytes)).await.unwrap();
    for index in 0..count {
        wal.append(1, &body(index)).unwrap().await.unwrap();
    }
    wal.close().await.unwrap();
}

// A crash can cut the last write anywhere: whatever was never acknowledged is dropped, everything
// before it survives, and the log accepts appends right after the cut.
#[test]
fn torn_tail_at_every_offset_of_the_last_record_keeps_the_prefix() {
    on_both_drivers(|backend| async move {
        let pristine = tempfile::tempdir().unwrap();
        log_of_single_batches(pristine.path(), backend, 12, 1 << 20).await;
        let segment_name = segment_files(pristine.path()).last().unwrap().file_name().unwrap().to_owned();
        let length = fs::metadata(pristine.path().join(&segment_name)).unwrap().len();
        let last_frame = (RECORD_HEADER_BYTES + body(11).len()) as u64;
        let last_batch_start = length - last_frame - BATCH_HEADER_BYTES as u64;
        for cut in last_batch_start..length {
            let scratch = tempfile::tempdir().unwrap();
            copy_directory(pristine.path(), scratch.path());
            let segment = scratch.path().join(&segment_name);
            fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut).unwrap();
            let (wal, recovery, replayed) = open(scratch.path(), options(backend, 1 << 20)).await.unwrap();
            let bodies: Vec<Vec<u8>> = replayed.iter().map(|record| record.2.clone()).collect();
            assert_eq!(bodies, (0..11).map(body).collect::<Vec<_>>(), "cut at {cut}");
            let expected_truncation = (cut > last_batch_start).then(|| (segment.clone(), last_batch_start));
            assert_eq!(recovery.truncated, expected_truncation, "cut at {cut}");
            assert_eq!(wal.append(1, b"after the cut").unwrap().await.unwrap(), 12);
            wal.close().await.unwrap();
            let (_, _, replayed) = open(scratch.path(), options(backend, 1 << 20)).await.unwrap();
            assert_eq!(replayed.len(), 12);
            assert_eq!(replayed[11].2, b"after the cut");
        }
    });
}

// A final write can also land garbled rather than short; that too is a torn tail.
#[test]
fn garbled_final_batch_is_truncated() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        log_of_single_batches(directory.path(), backend, 5, 1 << 20).await;
        let segment = segment_files(directory.path()).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        let length = bytes.len();
        for byte in &mut bytes[length - 30..] {
            *byte = 0xA5;
        }
        fs::write(&segment, &bytes).unwrap();
        let (_, recovery, replayed) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
        assert_eq!(replayed.len(), 4);
        assert!(recovery.truncated.is_some());
    });
}

// Damage followed by a later, complete batch hit data that was fsynced and acknowledged: the
// log must refuse to open rather than silently drop it.
#[test]
fn damage_before_a_valid_batch_is_a_hard_error_naming_segment_and_offset() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        log_of_single_batches(directory.path(), backend, 6, 1 << 20).await;
        let segment = segment_files(directory.path()).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        let second_batch =
            kapsel_wal::frame::SEGMENT_HEADER_BYTES + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + body(0).len();
        bytes[second_batch + BATCH_HEADER_BYTES + 25] ^= 0x04;
        fs::write(&segment, &bytes).unwrap();
        match open(directory.path(), options(backend, 1 << 20)).await {
            Err(WalError::Corrupt { segment: reported, offset, .. }) => {
                assert_eq!(reported, segment);
                assert_eq!(offset, second_batch as u64);
            }
            other => panic!("expected corruption, got {:?}", other.map(|(_, recovery, _)| recovery)),
        }
        assert!(matches!(audit::verify(directory.path(), &mut |_| {}), Err(WalError::Corrupt { .. })));
        // Nothing was truncated: the evidence is still there for an operator.
        assert_eq!(fs::read(&segment).unwrap(), bytes);
    });
}

// Sealed segments are the audit trail: a flipped bit anywhere in one must be reported with the
// segment and an offset at or before the flip, both by `audit verify` and by open.
#[test]
fn a_flipped_bit_anywhere_in_a_sealed_segment_is_reported() {
    on_both_drivers(|backend| async move {
        let pristine = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(pristine.path(), options(backend, 4096)).await.unwrap();
            for index in 0..150 {
                wal.append(1, &body(index)).unwrap().await.unwrap();
            }
            wal.flush().await.unwrap();
            assert!(wal.sealed_segments().len() >= 3);
            wal.close().await.unwrap();
        }
        let segments = segment_files(pristine.path());
        let target_name = segments[1].file_name().unwrap().to_owned();
        let original = fs::read(&segments[1]).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        copy_directory(pristine.path(), scratch.path());
        let target = scratch.path().join(&target_name);
        for position in 0..original.len() {
            let mut damaged = original.clone();
            damaged[position] ^= 1 << (position % 8);
            fs::write(&target, &damaged).unwrap();
            match audit::verify(scratch.path(), &mut |_| {}) {
                Err(WalError::Corrupt { segment, offset, .. }) => {
                    assert_eq!(segment, target, "flip at {position}");
                    assert!(offset <= position as u64, "flip at {position} reported at {offset}");
                }
                other => panic!("flip at {position} not reported: {other:?}"),
            }
            // Opening runs the same checks; sample it (it may rewrite files, so restore first).
            if position % 101 == 0 {
                let result = open(scratch.path(), options(backend, 4096)).await;
                assert!(
                    matches!(result, Err(WalError::Corrupt { ref segment, .. }) if *segment == target),
                    "open missed flip at {position}"
                );
            }
        }
    });
}

// A crash between writing a seal and appending it to the chain file leaves a sealed segment the
// chain does not know; reopening must add it back, and a torn chain entry likewise.
#[test]
fn interrupted_chain_appends_are_reconciled_from_the_seals() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        log_of_single_batches(directory.path(), backend, 80, 4096).await;
        let chain_path = directory.path().join(CHAIN_FILE_NAME);
        let full_chain = fs::read(&chain_path).unwrap();
        assert!(full_chain.len() >= 2 * CHAIN_ENTRY_BYTES);
        for cut in [full_chain.len() - CHAIN_ENTRY_BYTES, full_chain.len() - 50] {
            fs::write(&chain_path, &full_chain[..cut]).unwrap();
            let (wal, _, replayed) = open(directory.path(), options(backend, 4096)).await.unwrap();
            assert_eq!(replayed.len(), 80);
            assert_eq!(fs::read(&chain_path).unwrap(), full_chain, "chain restored after cut at {cut}");
            wal.close().await.unwrap();
        }
        assert!(audit::verify(directory.path(), &mut |_| {}).is_ok());
    });
}

// A crash while creating the next segment leaves a file with a partial header; it held nothing
// acknowledged, so recovery removes it and goes on.
#[test]
fn a_segment_whose_creation_was_cut_short_is_removed() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        log_of_single_batches(directory.path(), backend, 40, 4096).await;
        {
            let (wal, _, _) = open(directory.path(), options(backend, 4096)).await.unwrap();
            wal.seal().await.unwrap().expect("records to seal");
            wal.close().await.unwrap();
        }
        let mut segments = segment_files(directory.path());
        // The newest segment was created right after the last seal and is still empty.
        let newest = segments.pop().unwrap();
        let header = fs::read(&newest).unwrap();
        assert_eq!(header.len(), kapsel_wal::frame::SEGMENT_HEADER_BYTES, "newest segment holds records");
        fs::write(&newest, &header[..10]).unwrap();
        let (wal, _, replayed) = open(directory.path(), options(backend, 4096)).await.unwrap();
        assert_eq!(replayed.len(), 40);
        assert_eq!(wal.append(1, b"next").unwrap().await.unwrap(), 41);
        wal.close().await.unwrap();
        // A crash before the new segment file existed at all: the newest segment is sealed.
        let newest = segment_files(directory.path()).pop().unwrap();
        fs::remove_file(&newest).unwrap();
        let extra = {
            let (wal, _, replayed) = open(directory.path(), options(backend, 4096)).await.unwrap();
            assert_eq!(replayed.len(), 40, "the removed segment held record 41 only");
            let lsn = wal.append(1, b"again").unwrap().await.unwrap();
            wal.close().await.unwrap();
            lsn
        };
        assert_eq!(extra, 41);
        assert!(audit::verify(directory.path(), &mut |_| {}).is_ok());
    });
}

// A missing middle segment is lost acknowledged data, not something to skip over.
#[test]
fn a_missing_segment_is_reported() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        log_of_single_batches(directory.path(), backend, 150, 4096).await;
        let segments = segment_files(directory.path());
        assert!(segments.len() >= 3);
        fs::remove_file(&segments[1]).unwrap();
        assert!(matches!(open(directory.path(), options(backend, 4096)).await, Err(WalError::Corrupt { .. })));
        assert!(matches!(audit::verify(directory.path(), &mut |_| {}), Err(WalError::Corrupt { .. })));
    });
}

// Appends continue across many reopen cycles without LSN gaps (a regression guard for the
// next-LSN computation after a seal).
#[test]
fn lsns_stay_consecutive_across_reopens_and_seals() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let mut expected = 1;
        for round in 0..6 {
            let (wal, recovery, _) = open(directory.path(), options(backend, 4096)).await.unwrap();
            assert_eq!(recovery.next_lsn, expected, "round {round}");
            let bodies: Vec<Vec<u8>> = (0..25).map(body).collect();
            let lsns = append_all(&wal, &bodies).await;
            assert_eq!(lsns, (expected..expected + 25).collect::<Vec<u64>>());
            expected += 25;
            if round % 2 == 0 {
                wal.seal().await.unwrap();
            }
            wal.close().await.unwrap();
        }
        let report = audit::verify(directory.path(), &mut |_| {}).unwrap();
        assert_eq!(report.records, 150);
    });
}
