//! Integration tests of the write-ahead log on real files with real fsyncs, under both monoio
//! drivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::rc::Rc;

use common::{append_all, on_both_drivers, open, options, segment_files};
use kapsel_wal::{audit, IoFaults, WalError};

fn bodies(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|index| format!("record-{index:06}-").into_bytes().into_iter().cycle().take(size).collect())
        .collect()
}

// The basic promise: what was acknowledged comes back, in order, after a reopen.
#[test]
fn acknowledged_records_replay_in_order_after_reopen() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let written = bodies(500, 100);
        {
            let (wal, recovery, replayed) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
            assert_eq!((recovery.records, recovery.next_lsn, replayed.len()), (0, 1, 0));
            let lsns = append_all(&wal, &written).await;
            assert_eq!(lsns, (1..=500).collect::<Vec<u64>>());
            wal.close().await.unwrap();
        }
        let (wal, recovery, replayed) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
        assert_eq!(recovery.records, 500);
        assert_eq!(recovery.next_lsn, 501);
        let bodies_back: Vec<Vec<u8>> = replayed.iter().map(|(_, _, body)| body.clone()).collect();
        assert_eq!(bodies_back, written);
        assert_eq!(wal.append(1, b"next").unwrap().await.unwrap(), 501);
    });
}

// Group commit is the whole performance story: concurrent appenders must share fsyncs, and
// every one of them must still be acknowledged.
#[test]
fn a_thousand_concurrent_appenders_share_few_fsyncs() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 64 << 20)).await.unwrap();
        let wal = Rc::new(wal);
        let syncs_before = wal.io_counters().syncs();
        let mut tasks = Vec::new();
        for index in 0..1000u32 {
            let wal = Rc::clone(&wal);
            tasks.push(monoio::spawn(async move {
                // Each appender yields first so that appends interleave with flushes.
                monoio::time::sleep(std::time::Duration::from_micros(u64::from(index % 7))).await;
                wal.append(1, &index.to_le_bytes()).unwrap().await.unwrap()
            }));
        }
        let mut lsns = Vec::new();
        for task in tasks {
            lsns.push(task.await);
        }
        lsns.sort_unstable();
        assert_eq!(lsns, (1..=1000).collect::<Vec<u64>>());
        let syncs = wal.io_counters().syncs() - syncs_before;
        assert!(syncs >= 1, "at least one fsync covers the appends");
        assert!(syncs * 10 <= 1000, "1000 appends took {syncs} fsyncs; group commit is not batching");
        assert_eq!(wal.durable_lsn(), 1000);
    });
}

// A failed fsync must never be retried as if it worked: the log refuses everything after it.
#[test]
fn injected_fsync_failure_poisons_the_log() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let faults = std::sync::Arc::new(IoFaults::default());
        let mut opts = options(backend, 1 << 20);
        opts.faults = Some(std::sync::Arc::clone(&faults));
        let (wal, _, _) = open(directory.path(), opts).await.unwrap();
        append_all(&wal, &bodies(10, 50)).await;
        faults.fail_sync_after(1);
        let failed = wal.append(1, b"doomed").unwrap().await;
        assert!(matches!(failed, Err(WalError::Poisoned { .. })), "got {failed:?}");
        assert!(wal.is_poisoned());
        assert!(matches!(wal.append(1, b"later"), Err(WalError::Poisoned { .. })));
        assert!(matches!(wal.flush().await, Err(WalError::Poisoned { .. })));
        drop(wal);
        // Reopening clears the poison; everything acknowledged before the failure is there.
        let (wal, _, replayed) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
        assert!(replayed.len() >= 10);
        assert_eq!(replayed[..10].iter().map(|r| r.0).collect::<Vec<_>>(), (1..=10).collect::<Vec<u64>>());
        assert!(wal.append(1, b"after reopen").unwrap().await.is_ok());
    });
}

// A failed write (disk full) poisons the log just like a failed fsync.
#[test]
fn injected_write_failure_poisons_the_log() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let faults = std::sync::Arc::new(IoFaults::default());
        let mut opts = options(backend, 1 << 20);
        opts.faults = Some(std::sync::Arc::clone(&faults));
        let (wal, _, _) = open(directory.path(), opts).await.unwrap();
        append_all(&wal, &bodies(3, 50)).await;
        faults.fail_write_after(1);
        let commits: Vec<_> = (0..5).map(|_| wal.append(1, b"x").unwrap()).collect();
        for commit in commits {
            assert!(matches!(commit.await, Err(WalError::Poisoned { .. })));
        }
        assert!(matches!(wal.append(1, b"y"), Err(WalError::Poisoned { .. })));
    });
}

// After a failed fsync or write the log reopens in place, without a restart: the batch that
// failed is cut off (after a failed fsync its bytes are in the file, perhaps only in the page
// cache), appends are taken again, and a later open replays exactly what was acknowledged.
#[test]
fn a_failed_log_reopens_in_place_without_the_unacknowledged_batch() {
    on_both_drivers(|backend| async move {
        for (fail_sync, kind) in [(true, "io_error"), (false, "no_space")] {
            let directory = tempfile::tempdir().unwrap();
            let faults = std::sync::Arc::new(IoFaults::default());
            let mut opts = options(backend, 1 << 20);
            opts.faults = Some(std::sync::Arc::clone(&faults));
            let (wal, _, _) = open(directory.path(), opts).await.unwrap();
            let acknowledged = bodies(10, 50);
            append_all(&wal, &acknowledged).await;
            if fail_sync {
                faults.fail_sync_after(1);
            } else {
                faults.fail_write_after(1);
            }
            assert!(wal.append(1, b"doomed").unwrap().await.is_err());
            let reason = wal.failed().await;
            assert_eq!(wal.failure().map(|(_, kind)| kind), Some(kind), "{reason}");
            let recovery = wal.reopen().await.unwrap();
            assert_eq!(recovery.next_lsn, 11, "the doomed record is gone");
            assert!(!wal.is_poisoned() && wal.failure().is_none());
            assert_eq!(wal.append(1, b"after").unwrap().await.unwrap(), 11);
            wal.close().await.unwrap();
            let (_, _, replayed) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
            let mut expected = acknowledged.clone();
            expected.push(b"after".to_vec());
            assert_eq!(replayed.into_iter().map(|(_, _, body)| body).collect::<Vec<_>>(), expected);
        }
    });
}

// Faults at random points (a batch's write or fsync, a seal, the chain append, the creation of
// the next segment, a directory fsync), each followed by a reopen in place: the log keeps
// exactly the acknowledged records, in order, with consecutive LSNs and a valid seal chain.
#[test]
fn random_faults_with_reopens_keep_exactly_the_acknowledged_records() {
    on_both_drivers(|backend| async move {
        let mut random = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % bound
        };
        for seed in 0..6 {
            let directory = tempfile::tempdir().unwrap();
            let faults = std::sync::Arc::new(IoFaults::default());
            let mut opts = options(backend, 8 * 1024);
            opts.faults = Some(std::sync::Arc::clone(&faults));
            let (wal, _, _) = open(directory.path(), opts).await.unwrap();
            let mut acknowledged: Vec<Vec<u8>> = Vec::new();
            let mut refused = 0;
            for round in 0..25 {
                if next(2) == 0 {
                    faults.fail_sync_after(1 + next(8));
                } else {
                    faults.fail_write_after(1 + next(8));
                }
                for wave in 0..12 {
                    let bodies: Vec<Vec<u8>> = (0..1 + next(16))
                        .map(|n| {
                            format!("seed {seed} round {round} wave {wave} record {n} ")
                                .repeat(1 + next(6) as usize)
                                .into_bytes()
                        })
                        .collect();
                    let commits: Vec<_> = bodies.iter().map(|body| wal.append(1, body)).collect();
                    for (body, commit) in bodies.into_iter().zip(commits) {
                        let outcome = match commit {
                            Ok(commit) => commit.await,
                            Err(error) => Err(error),
                        };
                        match outcome {
                            Ok(lsn) => {
                                acknowledged.push(body);
                                assert_eq!(lsn, acknowledged.len() as u64, "acknowledged LSNs are consecutive");
                            }
                            Err(_) => refused += 1,
                        }
                    }
                    if wal.is_poisoned() {
                        break;
                    }
                }
                faults.fail_sync_after(0);
                faults.fail_write_after(0);
                if wal.is_poisoned() {
                    let recovery = wal.reopen().await.unwrap();
                    assert_eq!(recovery.next_lsn, acknowledged.len() as u64 + 1);
                }
            }
            assert!(refused > 0, "no fault ever fired");
            wal.close().await.unwrap();
            let (_, _, replayed) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
            assert_eq!(replayed.len(), acknowledged.len());
            assert!(replayed.iter().zip(1..).all(|((lsn, _, _), expected)| *lsn == expected));
            assert!(replayed.into_iter().map(|(_, _, body)| body).eq(acknowledged.into_iter()));
            audit::verify(directory.path(), &mut |_| {}).unwrap();
        }
    });
}

// Segments seal when full; the seals chain; every record of a sealed segment has a proof.
#[test]
fn full_segments_are_sealed_chained_and_provable() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        append_all(&wal, &bodies(300, 200)).await;
        wal.flush().await.unwrap();
        let sealed = wal.sealed_segments();
        assert!(sealed.len() >= 5, "only {} seals", sealed.len());
        for pair in sealed.windows(2) {
            assert_eq!(pair[1].previous_chain, pair[0].chain);
            assert_eq!(pair[1].first_lsn, pair[0].last_lsn + 1);
        }
        for seal in &sealed {
            for lsn in seal.first_lsn..=seal.last_lsn {
                let proof = audit::prove(directory.path(), lsn).unwrap();
                assert!(proof.verify(), "proof of {lsn} fails");
                assert_eq!(proof.root, seal.root);
            }
        }
        let unsealed = sealed.last().unwrap().last_lsn + 1;
        assert!(matches!(audit::prove(directory.path(), unsealed), Err(WalError::NotSealed { .. })));
        let report = audit::verify(directory.path(), &mut |_| {}).unwrap();
        assert_eq!(report.records, 300);
        assert_eq!(report.chain.len(), sealed.len());
        // An explicit seal closes the partial segment too.
        let seal = wal.seal().await.unwrap().expect("the active segment had records");
        assert_eq!(seal.last_lsn, 300);
        assert!(wal.seal().await.unwrap().is_none(), "an empty segment is not sealed");
        wal.close().await.unwrap();
        let (_, recovery, replayed) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        assert_eq!(replayed.len(), 300);
        assert_eq!(recovery.sealed_segments, sealed.len() + 1);
    });
}

// Retention deletes whole sealed segments but the chain keeps their seals, and the log still
// opens and verifies afterwards.
#[test]
fn retention_removes_sealed_segments_and_keeps_their_seals() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        append_all(&wal, &bodies(200, 200)).await;
        wal.flush().await.unwrap();
        let sealed = wal.sealed_segments();
        let cutoff = sealed[2].last_lsn + 1;
        let removed = wal.remove_sealed_below(cutoff).await.unwrap();
        assert_eq!(removed, vec![sealed[0].segment_id, sealed[1].segment_id, sealed[2].segment_id]);
        assert!(wal.remove_sealed_below(cutoff).await.unwrap().is_empty());
        assert_eq!(segment_files(directory.path()).len(), sealed.len() + 1 - 3);
        append_all(&wal, &bodies(5, 10)).await;
        wal.close().await.unwrap();
        let report = audit::verify(directory.path(), &mut |_| {}).unwrap();
        assert_eq!(report.chain.len(), sealed.len());
        let (_, recovery, replayed) = open(directory.path(), options(backend, 8 * 1024)).await.unwrap();
        assert_eq!(replayed.first().unwrap().0, cutoff);
        assert_eq!(recovery.next_lsn, 206);
    });
}

// Appending beyond the queue bound is backpressure, not unbounded memory.
#[test]
fn a_full_queue_refuses_appends() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let mut opts = options(backend, 1 << 20);
        opts.batch_bytes_max = 4096;
        opts.queue_bytes_max = 16 * 1024;
        let (wal, _, _) = open(directory.path(), opts).await.unwrap();
        let mut commits = Vec::new();
        let refused = loop {
            match wal.append(1, &[7u8; 1000]) {
                Ok(commit) => commits.push(commit),
                Err(error) => break error,
            }
            assert!(commits.len() < 100, "queue never filled");
        };
        assert!(matches!(refused, WalError::Backpressure { .. }));
        for commit in commits {
            commit.await.unwrap();
        }
        assert!(wal.append(1, b"room again").unwrap().await.is_ok());
    });
}

// Reserved kinds and oversized bodies are refused before they reach the log.
#[test]
fn reserved_kinds_and_oversized_records_are_refused() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(directory.path(), options(backend, 1 << 20)).await.unwrap();
        assert!(matches!(wal.append(0xFF, b"x"), Err(WalError::ReservedKind(0xFF))));
        let huge = vec![0u8; kapsel_wal::limits::RECORD_BODY_BYTES_MAX + 1];
        assert!(matches!(wal.append(1, &huge), Err(WalError::RecordTooLarge { .. })));
    });
}

// The optional batch wait trades latency for bigger batches: a record appended shortly after
// another joins its batch instead of paying its own fsync.
#[test]
fn batch_wait_gathers_later_appends_into_the_same_batch() {
    on_both_drivers(|backend| async move {
        for (wait, expected_batches) in [(std::time::Duration::from_millis(500), 1), (std::time::Duration::ZERO, 2)] {
            let directory = tempfile::tempdir().unwrap();
            let mut opts = options(backend, 1 << 20);
            opts.batch_wait = wait;
            let (wal, _, _) = open(directory.path(), opts).await.unwrap();
            let first = wal.append(1, b"first").unwrap();
            if wait.is_zero() {
                // Without a wait the first record goes out alone.
                first.await.unwrap();
                let second = wal.append(1, b"second").unwrap();
                second.await.unwrap();
            } else {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                let second = wal.append(1, b"second").unwrap();
                assert_eq!((first.await.unwrap(), second.await.unwrap()), (1, 2));
            }
            assert_eq!(wal.batches(), expected_batches, "batch wait {wait:?}");
        }
    });
}
