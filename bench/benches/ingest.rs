//! `cargo bench -p kapsel-bench`: Kapsel's ingest under closed- and open-loop load, against a
//! no-op and a minimal durable reference server on the same HTTP stack. See
//! `kapsel_bench::suite` for what runs and `KAPSEL_BENCH_SECONDS` for how long.

fn main() -> std::process::ExitCode {
    kapsel_bench::suite::main()
}
