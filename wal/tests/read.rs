//! Reading records back by position: what the engine relies on to keep waiting payloads on
//! disk instead of in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{on_both_drivers, options};
use kapsel_wal::read::{for_each, read_at};
use kapsel_wal::{Position, Wal};

fn body(index: usize) -> Vec<u8> {
    format!("payload-{index:05}-").into_bytes().into_iter().cycle().take(50 + index % 300).collect()
}

// The position a commit reports, the position replay reports and a positioned read must all
// agree, across sealed segments, and a read must give back exactly the body appended.
#[test]
fn commit_positions_match_replay_and_read_back_exactly() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(directory.path(), options(backend, 16 * 1024), |_| {}).await.unwrap();
        let mut positions = Vec::new();
        for chunk in 0..20 {
            let mut commits: Vec<_> = (0..10).map(|index| wal.append(3, &body(chunk * 10 + index)).unwrap()).collect();
            for commit in &mut commits {
                (&mut *commit).await.unwrap();
                positions.push(commit.position().unwrap());
            }
        }
        assert!(positions.iter().any(|position| position.segment_id > 1), "the test spans sealed segments");
        wal.close().await.unwrap();
        let mut replayed = Vec::new();
        Wal::open(directory.path(), options(backend, 16 * 1024), |record| replayed.push(record.position))
            .await
            .unwrap();
        assert_eq!(replayed, positions);
        let mut walked = Vec::new();
        for_each(directory.path(), &mut |record| walked.push((record.lsn, record.position))).unwrap();
        assert_eq!(walked.iter().map(|(_, position)| *position).collect::<Vec<_>>(), positions);
        // Read back in a scrambled order: answers come in the order asked.
        let mut asked: Vec<(usize, Position)> = positions.iter().copied().enumerate().collect();
        asked.reverse();
        asked.swap(3, 150);
        let results = read_at(directory.path(), &asked.iter().map(|(_, position)| *position).collect::<Vec<_>>());
        for ((index, _), result) in asked.iter().zip(results) {
            let record = result.unwrap();
            assert_eq!((record.lsn, record.kind, record.body), (*index as u64 + 1, 3, body(*index)));
        }
    });
}

// A wrong position (a removed segment, an offset inside another frame, a wrong length) is an
// error naming the file, never another record's bytes.
#[test]
fn wrong_positions_are_errors() {
    on_both_drivers(|backend| async move {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(directory.path(), options(backend, 1 << 20), |_| {}).await.unwrap();
        let mut commit = wal.append(3, b"first record").unwrap();
        (&mut commit).await.unwrap();
        let good = commit.position().unwrap();
        wal.close().await.unwrap();
        let wrong = [
            Position { segment_id: 9, ..good },
            Position { offset: good.offset + 4, ..good },
            Position { length: good.length - 1, ..good },
            Position { offset: good.offset + 1_000_000, ..good },
        ];
        for result in read_at(directory.path(), &wrong) {
            assert!(result.is_err(), "{result:?}");
        }
        assert_eq!(read_at(directory.path(), &[good])[0].as_ref().unwrap().body, b"first record");
        // Damage inside the frame is caught by its checksum.
        let path = directory.path().join(kapsel_wal::scan::segment_file_name(good.segment_id));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[good.offset as usize + good.length as usize - 2] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let damaged = read_at(directory.path(), &[good]);
        assert!(damaged[0].as_ref().unwrap_err().to_string().contains("checksum"), "{damaged:?}");
    });
}
