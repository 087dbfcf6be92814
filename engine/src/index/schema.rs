//! Versioned schema migrations, applied at start in one transaction each and recorded in
//! `kapsel_schema_migrations`, so a second start changes nothing. A migration, once released,
//! is never edited: changes come as new versions.

use tokio_postgres::Client;

/// Migrations in order: (version, description, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "endpoints, events, attempts, per-shard checkpoints",
        r#"
CREATE TABLE endpoints (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    enabled        BOOLEAN NOT NULL,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
-- Event ids are fixed-length Crockford base32 and time-ordered as bytes: the "C" collation keeps
-- them in that order whatever the database's locale, for newest-first cursor pages.
CREATE TABLE events (
    id               TEXT COLLATE "C" PRIMARY KEY,
    shard            INTEGER NOT NULL,
    lsn              BIGINT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    idempotency_key  TEXT,
    received_at      TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    delivered_at     TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL,
    payload_bytes    INTEGER NOT NULL,
    trace_id         TEXT
);
CREATE INDEX events_by_endpoint ON events (endpoint_id, id DESC);
CREATE INDEX events_by_status ON events (status, id DESC);
CREATE INDEX events_by_received_at ON events (received_at DESC);
CREATE INDEX events_by_idempotency_key ON events (idempotency_key, id DESC) WHERE idempotency_key IS NOT NULL;
CREATE TABLE attempts (
    event_id       TEXT COLLATE "C" NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    n              INTEGER NOT NULL,
    at             TIMESTAMPTZ NOT NULL,
    status_code    INTEGER,
    latency_ms     INTEGER NOT NULL,
    error_code     TEXT,
    PRIMARY KEY (event_id, n)
);
CREATE TABLE checkpoints (
    shard          INTEGER PRIMARY KEY,
    lsn            BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
"#,
    ),
    (
        2,
        "event types, channels, published events and their deliveries",
        r#"
-- Every event has a type (rows indexed before this version keep NULL); published events have a
-- channel and the number of endpoints they were published to, and no endpoint of their own: their
-- deliveries have one each.
ALTER TABLE events ALTER COLUMN endpoint_id DROP NOT NULL;
ALTER TABLE events ADD COLUMN event_type TEXT, ADD COLUMN channel TEXT, ADD COLUMN endpoints INTEGER;
CREATE INDEX events_by_event_type ON events (event_type, id DESC) WHERE event_type IS NOT NULL;
CREATE INDEX events_by_channel ON events (channel, id DESC) WHERE channel IS NOT NULL;
-- One row per delivery of a published event. A row may be made from the channel's shard's record
-- before the delivering shard's record is indexed (or after): `lsn` is NULL until the delivering
-- shard's record made or took it over. No foreign key to `events`, for the same reason.
CREATE TABLE deliveries (
    delivery_id      TEXT COLLATE "C" PRIMARY KEY,
    event_id         TEXT COLLATE "C" NOT NULL,
    endpoint_id      TEXT NOT NULL,
    shard            INTEGER NOT NULL,
    lsn              BIGINT,
    status           TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    delivered_at     TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, event_id DESC);
-- Attempts of a delivery are kept under the delivery's id, which has no `events` row: the rows of
-- an endpoint's events and deliveries are removed together when it is deleted instead.
ALTER TABLE attempts DROP CONSTRAINT attempts_event_id_fkey;
"#,
    ),
    (
        3,
        "tenants of endpoints and events",
        r#"
-- Endpoints indexed before this version were all the default tenant's as far as the index knows.
ALTER TABLE endpoints ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
-- An event's tenant: its endpoint's for an ingested event (copied from `endpoints` when the row
-- is written), the publisher's for a published one. Rows indexed before this version keep NULL,
-- which means `default`.
ALTER TABLE events ADD COLUMN tenant_id TEXT;
CREATE INDEX events_by_tenant ON events (tenant_id, id DESC);
"#,
    ),
    (
        4,
        "each attempt's response excerpt",
        r#"
-- The start (up to 1 KiB) of the destination's answer or of the error, as the attempt's record
-- keeps it; attempts indexed before this version keep NULL.
ALTER TABLE attempts ADD COLUMN response_excerpt TEXT;
"#,
    ),
    (
        5,
        "per-partition checkpoints of a cluster",
        r#"
-- Cluster mode (ADR 17): the index is fed by each partition's owner from the partition's
-- stream; the last sequence indexed per partition, and the epoch fence's epoch at that sequence
-- (the latest Takeover admitted), so reading the stream on from it fences as the owner did.
CREATE TABLE partition_checkpoints (
    partition      INTEGER PRIMARY KEY,
    sequence       BIGINT NOT NULL,
    fence_epoch    BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
"#,
    ),
];

/// Applies every migration not yet recorded; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kapsel_schema_migrations (
                 version INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS {
        let transaction = client.transaction().await?;
        // Serialises concurrent starts: the second waits, then sees the version recorded.
        transaction.batch_execute("LOCK TABLE kapsel_schema_migrations IN EXCLUSIVE MODE").await?;
        let done =
            transaction.query_opt("SELECT 1 FROM kapsel_schema_migrations WHERE version = $1", &[version]).await?;
        if done.is_some() {
            transaction.rollback().await?;
            continue;
        }
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO kapsel_schema_migrations (version, description) VALUES ($1, $2)",
                &[version, description],
            )
            .await?;
        transaction.commit().await?;
        applied.push(*version);
    }
    Ok(applied)
}
