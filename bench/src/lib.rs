//! Kapsel's load-test harness (built out by the ingest issue). The write-ahead log's own
//! benchmark lives in `wal/benches/`.
