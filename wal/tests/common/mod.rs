//! Shared helpers for the log's integration tests: runtimes for both monoio drivers and a
//! replay collector.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::Path;

use kapsel_wal::{IoBackend, Options, Recovery, Wal};

/// Runs `test` on a monoio runtime with the io_uring driver (native file I/O) and again on one
/// with the legacy epoll driver (file I/O on the log's blocking thread).
pub fn on_both_drivers<F, Fut>(test: F)
where
    F: Fn(IoBackend) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime (io_uring must work on this machine)");
    uring.block_on(test(IoBackend::Uring));
    let mut legacy =
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("legacy runtime");
    legacy.block_on(test(IoBackend::Thread));
}

/// Options for `backend` with a small segment size, so tests seal often.
pub fn options(backend: IoBackend, segment_bytes: u64) -> Options {
    Options { backend, segment_bytes, ..Options::default() }
}

/// A record as replayed: (lsn, kind, body).
pub type Replayed = Vec<(u64, u8, Vec<u8>)>;

/// Opens the log and collects everything it replays.
pub async fn open(directory: &Path, options: Options) -> Result<(Wal, Recovery, Replayed), kapsel_wal::WalError> {
    let mut replayed = Vec::new();
    let (wal, recovery) =
        Wal::open(directory, options, |record| replayed.push((record.lsn, record.kind, record.body.to_vec()))).await?;
    Ok((wal, recovery, replayed))
}

/// Appends every body (kind 1) concurrently and waits for all commits; returns their LSNs.
pub async fn append_all(wal: &Wal, bodies: &[Vec<u8>]) -> Vec<u64> {
    let commits: Vec<_> = bodies.iter().map(|body| wal.append(1, body).expect("append")).collect();
    let mut lsns = Vec::with_capacity(commits.len());
    for commit in commits {
        lsns.push(commit.await.expect("commit"));
    }
    lsns
}

/// The only segment files of a directory, oldest first.
pub fn segment_files(directory: &Path) -> Vec<std::path::PathBuf> {
    kapsel_wal::scan::list_segments(directory).unwrap().into_iter().map(|(_, path)| path).collect()
}
