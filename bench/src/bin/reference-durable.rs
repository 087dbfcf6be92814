//! The minimal durable reference server: Kapsel's HTTP stack appending each body to a
//! per-thread file and answering 202 once a group-commit fdatasync covers it. The bar Kapsel's
//! durable ingest is measured against. See `kapsel_bench::reference`.

#![warn(missing_docs)]

use std::process::ExitCode;

use kapsel_bench::reference::{self, DurableHandler, Settings};

fn main() -> ExitCode {
    let outcome = Settings::from_env().and_then(|settings| {
        let data_directory = settings.data_directory.clone();
        reference::run("reference-durable", &settings, move |index| DurableHandler::open(&data_directory, index))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reference-durable: {error}");
            ExitCode::FAILURE
        }
    }
}
