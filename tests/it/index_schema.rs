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
    assert_eq!(
        tables,
        "attempts,checkpoints,deliveries,endpoints,events,kapsel_schema_migrations,partition_checkpoints"
    );
}

// An index made by an earlier release is upgraded in place: its rows stay, events indexed
// before types and tenants existed have none, and a published event (no endpoint of its own)
// and its deliveries' attempts (no `events` row of their own) can be written afterwards.
#[test]
fn an_index_of_the_first_version_is_upgraded_in_place() {
    let Some(postgres) = common::postgres::Postgres::start() else {
        return;
    };
    let url = postgres.database("kapsel_upgrade");
    let (first_version, first_sql) = {
        let (version, _, sql) = kapsel_engine::index::schema::MIGRATIONS[0];
        (version, sql)
    };
    postgres.psql("kapsel_upgrade", first_sql);
    postgres.psql(
        "kapsel_upgrade",
        &format!(
            "CREATE TABLE kapsel_schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO kapsel_schema_migrations (version, description) VALUES ({first_version}, 'first');
             INSERT INTO events (id, shard, lsn, endpoint_id, received_at, status, updated_at, payload_bytes)
                 VALUES ('evt_old', 0, 1, 'orders', now(), 'delivered', now(), 2);
             INSERT INTO attempts (event_id, n, at, latency_ms) VALUES ('evt_old', 1, now(), 1);"
        ),
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let applied = runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        kapsel_engine::index::schema::migrate(&mut client).await.unwrap()
    });
    let later: Vec<i32> =
        kapsel_engine::index::schema::MIGRATIONS[1..].iter().map(|(version, _, _)| *version).collect();
    assert_eq!(applied, later);
    let old = postgres.psql("kapsel_upgrade", "SELECT endpoint_id, coalesce(event_type, 'none') FROM events");
    assert_eq!(old, "orders|none");
    let tenant = postgres.psql("kapsel_upgrade", "SELECT coalesce(tenant_id, 'none') FROM events");
    assert_eq!(tenant, "none", "an event indexed before tenants has none: it is the default tenant's");
    postgres.psql(
        "kapsel_upgrade",
        "INSERT INTO events (id, shard, lsn, endpoint_id, received_at, status, updated_at, payload_bytes, event_type,
                             channel, endpoints)
             VALUES ('evt_published', 0, 2, NULL, now(), 'pending', now(), 2, 'order.created', 'orders', 1);
         INSERT INTO deliveries (delivery_id, event_id, endpoint_id, shard, lsn, status, updated_at)
             VALUES ('evt_delivery', 'evt_published', 'orders', 0, 2, 'pending', now());
         INSERT INTO attempts (event_id, n, at, latency_ms) VALUES ('evt_delivery', 1, now(), 1);",
    );
    assert_eq!(postgres.psql("kapsel_upgrade", "SELECT count(*) FROM attempts"), "2");
}
