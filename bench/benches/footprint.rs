//! `cargo bench -p kapsel-bench --bench footprint`: Kapsel's idle resident memory with 1,000
//! endpoints, and its start-up time on a write-ahead log of a million records. See
//! `kapsel_bench::footprint`.

fn main() -> std::process::ExitCode {
    kapsel_bench::footprint::main()
}
