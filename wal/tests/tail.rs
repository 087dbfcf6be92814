//! The tail reader follows a live log from any LSN, across sealed segments, never past the
//! bound it is given and never skipping or repeating a record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;

use common::{append_all, on_both_drivers, open, options};
use kapsel_wal::tail::Reader;

fn body(n: usize) -> Vec<u8> {
    format!("record {n} {}", "x".repeat(n % 300)).into_bytes()
}

// Reading in small steps while appends continue yields every record exactly once, in order,
// across many sealed segments, and never a record beyond the durable watermark.
#[test]
fn follows_a_live_log_across_segments() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 16 * 1024)).await.unwrap();
        let durable = wal.durable_watermark();
        let mut reader = Reader::new(directory.path(), 1);
        let mut seen = Vec::new();
        for round in 0..20 {
            let bodies: Vec<Vec<u8>> = (0..37).map(|i| body(round * 37 + i)).collect();
            let lsns = append_all(&wal, &bodies).await;
            assert!(durable.load(Ordering::Acquire) >= *lsns.last().unwrap());
            // An append not yet durable must not be read.
            let pending = wal.append(1, b"not yet durable").unwrap();
            let up_to = durable.load(Ordering::Acquire);
            loop {
                let records = reader.read(up_to, 10).unwrap();
                if records.is_empty() {
                    break;
                }
                assert!(records.len() <= 10);
                seen.extend(records);
            }
            assert_eq!(reader.next_lsn(), up_to + 1);
            let lsn = pending.await.unwrap();
            seen.extend(reader.read(lsn, 100).unwrap());
        }
        assert!(wal.sealed_segments().len() > 5, "the test must cross segments");
        for (index, record) in seen.iter().enumerate() {
            assert_eq!(record.lsn, index as u64 + 1, "no gap, no repeat");
        }
        let per_round = 38;
        assert_eq!(seen.len(), 20 * per_round);
        assert_eq!(seen[per_round].body, body(37));
        assert_eq!(seen[per_round - 1].body, b"not yet durable");
        wal.close().await.unwrap();
    });
}

// A reader started in the middle of the log (a checkpoint) begins exactly there, also after
// a reopen; an LSN removed by retention is an error, not a silent skip.
#[test]
fn starts_at_any_lsn_and_reports_removed_records() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        let bodies: Vec<Vec<u8>> = (0..400).map(body).collect();
        append_all(&wal, &bodies).await;
        wal.close().await.unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        let up_to = wal.durable_watermark().load(Ordering::Acquire);
        assert_eq!(up_to, 400);
        for start in [1u64, 2, 57, 200, 399, 400] {
            let mut reader = Reader::new(directory.path(), start);
            let records = reader.read(up_to, usize::MAX).unwrap();
            assert_eq!(records.len() as u64, 401 - start);
            assert_eq!(records[0].lsn, start);
            assert_eq!(records[0].body, body(start as usize - 1));
            assert!(reader.read(up_to, usize::MAX).unwrap().is_empty());
        }
        let sealed = wal.sealed_segments();
        let cut = sealed[2].last_lsn + 1;
        wal.remove_sealed_below(cut).await.unwrap();
        assert!(Reader::new(directory.path(), 1).read(up_to, 10).is_err());
        let records = Reader::new(directory.path(), cut).read(up_to, usize::MAX).unwrap();
        assert_eq!(records.first().map(|record| record.lsn), Some(cut));
        wal.close().await.unwrap();
    });
}
