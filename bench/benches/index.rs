//! `cargo bench -p kapsel-bench --bench index`: Kapsel's Postgres index under the ingest load,
//! against a private durable PostgreSQL the bench starts itself. See `kapsel_bench::index`.

fn main() -> std::process::ExitCode {
    kapsel_bench::index::main()
}
