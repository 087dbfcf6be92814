//! The index schema's migrations against a real private PostgreSQL: applied from empty, then a
//! no-op on the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

// A start must bring an empty database to the current schema, and a second start must change
// nothing (operators restart Kapsel freely).
#[test]
fn migrations_apply_from_empty_and_rerun_as_a_no_op() {
    let Some(postgres) = common::postgres::Postgres::start() else {
        return;
    };
    postgres.psql("postgres", "CREATE DATABASE kapsel_index");
    let url = postgres.url("kapsel_index");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (first, second) = runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let first = kapsel_engine::index::schema::migrate(&mut client).await.unwrap();
        let second = kapsel_engine::index::schema::migrate(&mut client).await.unwrap();
        (first, second)
    });
    let versions: Vec<i32> = kapsel_engine::index::schema::MIGRATIONS.iter().map(|(version, _, _)| *version).collect();
    assert_eq!(first, versions);
    assert!(second.is_empty(), "a second start applies nothing: {second:?}");
    let tables = postgres.psql(
        "kapsel_index",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables, "attempts,checkpoints,endpoints,events,kapsel_schema_migrations");
}
