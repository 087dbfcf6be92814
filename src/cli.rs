//! Command-line arguments, parsed by hand over [`std::env::args_os`].
//!
//! Hand-written rather than clap: the binary has two small tool commands and a server, and
//! every dependency costs build time on small machines. Parsing is a pure function of the
//! arguments, so it is tested without spawning a process; reading the environment for
//! defaults happens in [`data_directory_or_default`], at the edge.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

/// Environment variable naming the data directory (see the external contract).
pub const DATA_DIRECTORY_VARIABLE: &str = "KAPSEL_DATA_DIR";

/// Data directory used when neither `--data-dir` nor [`DATA_DIRECTORY_VARIABLE`] is given.
pub const DATA_DIRECTORY_DEFAULT: &str = "./data";

/// The usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
Kapsel: durable webhook ingest, at-least-once delivery, verifiable audit log.

Usage:
  kapsel [--data-dir DIR]                   start the server
  kapsel audit verify [--data-dir DIR]      recompute every Merkle root and the audit chain
  kapsel wal inspect [--data-dir DIR]       list the segments of every write-ahead log
  kapsel --help | --version

Options:
  --data-dir DIR   data directory (default: $KAPSEL_DATA_DIR, else ./data); the commands read
                   every <DIR>/wal/shard-<n>/ log, or DIR itself when it is a log directory
  -h, --help       print this help
  -V, --version    print the version

Exit codes of the audit and wal commands:
  0  every log checked out (or was listed)
  1  a log is corrupt: the failing segment file and byte offset are printed
  2  usage error, no log found, or an I/O error
";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// No subcommand: run the server.
    Server,
    /// `kapsel audit verify`.
    AuditVerify,
    /// `kapsel wal inspect`.
    WalInspect,
    /// `--help`, `-h` or `kapsel help`: print [`USAGE`].
    Help,
    /// `--version` or `-V`: print the version.
    Version,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arguments {
    /// The command to run.
    pub command: Command,
    /// `--data-dir`, when given.
    pub data_directory: Option<PathBuf>,
}

/// A command line that does not parse; the message says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after the program name. Options may come before or after the
/// subcommand words, so `kapsel --data-dir d audit verify` and `kapsel audit verify
/// --data-dir d` mean the same. Help and version win over everything else, as users expect
/// `--help` to work on a command line that is otherwise wrong.
pub fn parse<I>(arguments: I) -> Result<Arguments, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut words: Vec<OsString> = Vec::new();
    let mut data_directory = None;
    let mut help = false;
    let mut version = false;
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        match argument.to_str() {
            Some("-h" | "--help") => help = true,
            Some("-V" | "--version") => version = true,
            Some("--data-dir") => {
                let value = arguments.next().ok_or_else(|| UsageError("--data-dir needs a directory".into()))?;
                data_directory = Some(non_empty_directory(value)?);
            }
            Some(text) if text.starts_with("--data-dir=") => {
                data_directory = Some(non_empty_directory(OsString::from(&text["--data-dir=".len()..]))?);
            }
            Some("--") => {
                words.extend(arguments.by_ref());
            }
            Some(text) if text.starts_with('-') && text.len() > 1 => {
                return Err(UsageError(format!("unknown option `{text}`")));
            }
            _ => words.push(argument),
        }
    }
    let command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else {
        command_of(&words)?
    };
    Ok(Arguments { command, data_directory })
}

fn non_empty_directory(value: OsString) -> Result<PathBuf, UsageError> {
    if value.is_empty() {
        return Err(UsageError("--data-dir needs a directory".into()));
    }
    Ok(PathBuf::from(value))
}

fn command_of(words: &[OsString]) -> Result<Command, UsageError> {
    let words: Vec<&OsStr> = words.iter().map(OsString::as_os_str).collect();
    let text: Vec<Option<&str>> = words.iter().map(|word| word.to_str()).collect();
    match text.as_slice() {
        [] => Ok(Command::Server),
        [Some("help")] => Ok(Command::Help),
        [Some("audit"), Some("verify")] => Ok(Command::AuditVerify),
        [Some("wal"), Some("inspect")] => Ok(Command::WalInspect),
        [Some("audit")] => Err(UsageError("`kapsel audit` needs a subcommand: verify".into())),
        [Some("wal")] => Err(UsageError("`kapsel wal` needs a subcommand: inspect".into())),
        [Some("audit"), _, ..] | [Some("wal"), _, ..] => {
            let shown: Vec<String> = words.iter().map(|word| word.to_string_lossy().into_owned()).collect();
            Err(UsageError(format!("unknown command `{}`", shown.join(" "))))
        }
        [first, ..] => {
            let shown = first.map_or_else(|| words[0].to_string_lossy().into_owned(), str::to_owned);
            Err(UsageError(format!("unknown command `{shown}`")))
        }
    }
}

/// The data directory: the `--data-dir` flag, else [`DATA_DIRECTORY_VARIABLE`], else
/// [`DATA_DIRECTORY_DEFAULT`]. An empty variable counts as unset, as a shell's `VAR=` usually
/// means "no value" rather than "the current directory".
pub fn data_directory_or_default(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(DATA_DIRECTORY_VARIABLE).filter(|value| !value.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DATA_DIRECTORY_DEFAULT))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parsed(arguments: &[&str]) -> Result<Arguments, UsageError> {
        parse(arguments.iter().map(OsString::from))
    }

    fn command(arguments: &[&str]) -> Command {
        parsed(arguments).unwrap().command
    }

    // With no subcommand the binary is the server; the tools must not be reachable by accident.
    #[test]
    fn no_arguments_means_the_server() {
        assert_eq!(parsed(&[]).unwrap(), Arguments { command: Command::Server, data_directory: None });
    }

    // Operators write flags before or after the subcommand; both must reach the same directory.
    #[test]
    fn data_directory_is_accepted_before_after_and_with_equals() {
        let expected = Arguments { command: Command::AuditVerify, data_directory: Some(PathBuf::from("/srv/kapsel")) };
        assert_eq!(parsed(&["audit", "verify", "--data-dir", "/srv/kapsel"]).unwrap(), expected);
        assert_eq!(parsed(&["--data-dir", "/srv/kapsel", "audit", "verify"]).unwrap(), expected);
        assert_eq!(parsed(&["audit", "verify", "--data-dir=/srv/kapsel"]).unwrap(), expected);
        assert_eq!(command(&["wal", "inspect"]), Command::WalInspect);
    }

    // `--help` must work even on an otherwise broken command line.
    #[test]
    fn help_and_version_win() {
        assert_eq!(command(&["--help"]), Command::Help);
        assert_eq!(command(&["audit", "verify", "-h"]), Command::Help);
        assert_eq!(command(&["frobnicate", "--help"]), Command::Help);
        assert_eq!(command(&["help"]), Command::Help);
        assert_eq!(command(&["--version"]), Command::Version);
        assert_eq!(command(&["-V"]), Command::Version);
    }

    // A typo must be an error that names the word, not a silent fallback to the server.
    #[test]
    fn unknown_words_and_options_are_usage_errors() {
        assert_eq!(parsed(&["frobnicate"]).unwrap_err().0, "unknown command `frobnicate`");
        assert_eq!(parsed(&["audit", "prove"]).unwrap_err().0, "unknown command `audit prove`");
        assert_eq!(parsed(&["audit", "verify", "extra"]).unwrap_err().0, "unknown command `audit verify extra`");
        assert!(parsed(&["audit"]).unwrap_err().0.contains("verify"));
        assert!(parsed(&["wal"]).unwrap_err().0.contains("inspect"));
        assert_eq!(parsed(&["audit", "verify", "--fast"]).unwrap_err().0, "unknown option `--fast`");
        assert!(parsed(&["audit", "verify", "--data-dir"]).is_err());
        assert!(parsed(&["audit", "verify", "--data-dir="]).is_err());
    }

    // After `--` every argument is a word, so nothing there is taken for an option.
    #[test]
    fn double_dash_ends_options() {
        assert_eq!(parsed(&["--", "--help"]).unwrap_err().0, "unknown command `--help`");
    }

    // A lone `-` is conventionally a word (standard input), not an option.
    #[test]
    fn a_lone_dash_is_a_word() {
        assert_eq!(parsed(&["-"]).unwrap_err().0, "unknown command `-`");
    }
}
