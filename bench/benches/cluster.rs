//! `cargo bench -p kapsel-bench --bench cluster`: one node of a three-node cluster on NATS
//! JetStream against Kapsel alone, CPU per event of every process, and the fail-over time after
//! `kill -9` of a partition's owner. See `kapsel_bench::cluster`.

fn main() -> std::process::ExitCode {
    kapsel_bench::cluster::main()
}
