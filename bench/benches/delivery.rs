//! `cargo bench -p kapsel-bench --bench delivery`: Kapsel delivering end to end to a sink on
//! loopback that answers 200 at once; deliveries per second and ingest-to-delivery latency
//! under a closed loop and fixed-rate open loops; then a backlog drained, a burst and a
//! graceful restart on one endpoint; a healthy endpoint beside hostile destinations; and one
//! publish fanned out to 1, 10 and 100 endpoints. See `kapsel_bench::delivery`.

fn main() -> std::process::ExitCode {
    kapsel_bench::delivery::main()
}
