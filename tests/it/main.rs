//! Kapsel's integration tests, one binary: the real `kapsel` binary over real TCP on loopback,
//! real files and fsyncs, a private PostgreSQL, a private NATS JetStream cluster, real sinks.
//! `common` holds the one set of helpers (server process, HTTP client, sinks, Postgres, NATS,
//! test PKI). Tests that need PostgreSQL or `nats-server` print `SKIPPED` when it is missing (a
//! failure under `CI=true`); the PostgreSQL ones are counted in `common::postgres::SKIPPED`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod admin_views;
mod audit;
mod cli;
mod cluster;
mod cluster_audit;
mod config;
mod dashboard;
mod delivery;
mod destinations;
mod docs;
mod fanout;
mod fuzz_corpus;
mod hostile;
mod http_details;
mod index;
mod index_chaos;
mod index_schema;
mod ingest;
mod layers;
mod nats_harness;
mod nats_link;
mod openapi;
mod operations;
mod postgres_harness;
mod retention;
mod storage;
mod tenants;
mod trace_context;
