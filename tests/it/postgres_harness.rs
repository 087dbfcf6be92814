//! The private PostgreSQL the index tests will use: it must start from the machine's binaries as
//! the `postgres` user, answer on its loopback port, and stop cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

// The Postgres index (issue 5) is tested against a real PostgreSQL started by the suite itself;
// this checks that harness on its own.
#[test]
fn a_private_postgres_starts_answers_and_stops() {
    let Some(postgres) = common::postgres::Postgres::start() else {
        return;
    };
    assert_eq!(postgres.psql("postgres", "SELECT 40 + 2"), "42");
    postgres.psql("postgres", "CREATE DATABASE kapsel_test");
    assert_eq!(postgres.psql("kapsel_test", "SELECT current_database()"), "kapsel_test");
    let port = postgres.port;
    drop(postgres);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");
}
