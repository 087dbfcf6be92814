//! The `kapsel` binary: parses the command line, sets up logging, and runs the server or one
//! of the read-only tool commands. It only wires things together; the commands live in
//! [`tools`], the parsing in [`cli`].

mod cli;
mod config;
mod logging;
mod server;
mod tools;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use cli::Command;
use tools::Exit;

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
            let _ = write!(stderr, "kapsel: {error}\n\n{}", cli::USAGE);
            return Exit::Error;
        }
    };
    // Help and version must work even where the logging variables are wrong.
    if !matches!(arguments.command, Command::Help | Command::Version) {
        if let Err(error) = logging::init() {
            let _ = writeln!(stderr, "kapsel: {error}");
            return Exit::Error;
        }
    }
    let data_directory = cli::data_directory_or_default(arguments.data_directory);
    match arguments.command {
        Command::Help => printed(write!(stdout, "{}", cli::USAGE)),
        Command::Version => printed(writeln!(stdout, "kapsel {}", env!("CARGO_PKG_VERSION"))),
        Command::Server => run_server(&data_directory, stderr),
        Command::AuditVerify => tools::audit_verify(&data_directory, stdout, stderr),
        Command::WalInspect => tools::wal_inspect(&data_directory, stdout, stderr),
    }
}

fn printed(result: std::io::Result<()>) -> Exit {
    if result.is_ok() {
        Exit::Success
    } else {
        Exit::Error
    }
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully: stop accepting, finish
/// in-flight requests, flush every log, exit 0.
fn run_server(data_directory: &Path, stderr: &mut dyn Write) -> Exit {
    match server::run(data_directory) {
        Ok(()) => Exit::Success,
        Err(error) => {
            let _ = writeln!(stderr, "kapsel: {error}");
            tracing::error!(%error, "server stopped with an error");
            Exit::Error
        }
    }
}
