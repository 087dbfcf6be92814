//! The no-op reference server: Kapsel's HTTP stack answering 202 to every request, without
//! touching the disk. The ceiling of the stack on this machine. See `kapsel_bench::reference`.

#![warn(missing_docs)]

use std::process::ExitCode;

use kapsel_bench::reference::{self, NoopHandler, Settings};

fn main() -> ExitCode {
    let outcome =
        Settings::from_env().and_then(|settings| reference::run("reference-noop", &settings, |_| Ok(NoopHandler)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reference-noop: {error}");
            ExitCode::FAILURE
        }
    }
}
