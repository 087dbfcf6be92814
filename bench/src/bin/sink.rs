//! The delivery bench's destination: Kapsel's HTTP stack answering 200 at once to every
//! delivery, counting them and recording ingest-to-delivery latency from the send time in the
//! body. See `kapsel_bench::sink`.

#![warn(missing_docs)]

use std::process::ExitCode;

use kapsel_bench::reference::{self, Settings};
use kapsel_bench::sink::SinkHandler;

fn main() -> ExitCode {
    let outcome = Settings::from_env().and_then(|mut settings| {
        // One thread, whatever KAPSEL_SHARDS says: the machine's cores are shared with Kapsel
        // and the load generator, and one thread's handler holds the whole sink's counts.
        settings.threads = 1;
        reference::run("sink", &settings, |_| SinkHandler::new())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sink: {error}");
            ExitCode::FAILURE
        }
    }
}
