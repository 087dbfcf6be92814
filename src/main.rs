//! The `kapsel` binary: parses the command line, sets up logging, merges the configuration,
//! and runs the server or one of the commands. It only wires things together; the commands
//! live in [`tools`], the parsing in [`cli`], the settings in [`config`].

#![warn(missing_docs)]

mod cli;
mod config;
mod logging;
mod server;
mod tools;

use std::io::Write;
use std::process::ExitCode;

use cli::Command;
use config::Configuration;
use tools::Exit;

/// jemalloc instead of glibc's malloc (docs/adr/0003-jemalloc.md). Measured under steady load
/// (600 events/s over six endpoints, release build): with glibc, RSS grew about 1.8 KB per event
/// kept for lookups against a few hundred bytes of state, because each event's long-lived metadata
/// landed between short-lived request and response buffers and kept the heap from shrinking;
/// with jemalloc RSS follows the state.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Unlocked handles: the log subscriber writes to standard error too, from any thread.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    run(&mut stdout, &mut stderr).into()
}

fn run(stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    let arguments = match cli::parse(std::env::args_os().skip(1)) {
        Ok(arguments) => arguments,
        Err(error) => {
            // Nothing more can be done when standard error fails; the exit code still tells.
            let _ = write!(
                stderr,
                "kapsel: {error}\n\n{}\nRun `kapsel --help` for the options and every setting.\n",
                cli::USAGE
            );
            return Exit::Error;
        }
    };
    // Help and version must work even where the configuration is wrong.
    match arguments.command {
        Command::Help => return printed(write!(stdout, "{}", cli::help())),
        Command::Version => return printed(writeln!(stdout, "kapsel {}", env!("CARGO_PKG_VERSION"))),
        _ => {}
    }
    let configuration = match Configuration::load(arguments.config_file, &arguments.flags) {
        Ok(configuration) => configuration,
        Err(error) => {
            let _ = writeln!(stderr, "kapsel: {error}");
            return Exit::Error;
        }
    };
    // Logging is configured like every other setting: file, environment or flag.
    let (filter, format) = (&configuration.values().rust_log, &configuration.values().log_format);
    if let Err(error) = logging::init(filter.as_deref(), format.as_deref()) {
        let _ = writeln!(stderr, "kapsel: {error}");
        return Exit::Error;
    }
    match arguments.command {
        Command::Server => run_server(&configuration, stderr),
        Command::Config => print_configuration(&configuration, stdout, stderr),
        Command::AuditVerify => tools::audit_verify_configured(&configuration, stdout, stderr),
        Command::WalInspect => tools::wal_inspect(&configuration.data_directory(), stdout, stderr),
        Command::Help | Command::Version => Exit::Success,
    }
}

fn printed(result: std::io::Result<()>) -> Exit {
    if result.is_ok() {
        Exit::Success
    } else {
        Exit::Error
    }
}

/// `kapsel config`: validates the configuration as a start would (every value, and the shard
/// count against the data directory) and prints it, secrets redacted.
fn print_configuration(configuration: &Configuration, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    let checked = configuration.settings().and_then(|settings| configuration.shards(&settings));
    match checked {
        Ok(_) => printed(write!(stdout, "{}", configuration.report())),
        Err(error) => {
            let _ = writeln!(stderr, "kapsel: {error}");
            Exit::Error
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully: stop accepting, finish
/// in-flight requests, flush every log, exit 0.
fn run_server(configuration: &Configuration, stderr: &mut dyn Write) -> Exit {
    match server::run(configuration) {
        Ok(()) => Exit::Success,
        Err(error) => {
            let _ = writeln!(stderr, "kapsel: {error}");
            tracing::error!(%error, "server stopped with an error");
            Exit::Error
        }
    }
}
