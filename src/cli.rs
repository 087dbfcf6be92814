//! Command-line arguments, parsed by hand over [`std::env::args_os`], and the help text.
//!
//! Hand-written rather than clap: the binary has a few small commands and a server, and every
//! dependency costs build time on small machines. Parsing is a pure function of the arguments,
//! so it is tested without spawning a process. The setting flags and the help's list of
//! settings both come from [`crate::config::SETTINGS`], so a new setting needs no change here.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use crate::config::{Setting, SETTINGS};

/// The short usage, printed first by `--help` and after a usage error.
pub const USAGE: &str = "\
Kapsel: durable webhook ingest, at-least-once delivery, verifiable audit log.

Usage:
  kapsel [OPTIONS]                  start the server
  kapsel config [OPTIONS]           print the effective configuration (secrets redacted)
  kapsel audit verify [OPTIONS]     recompute every Merkle root and the audit chain
  kapsel wal inspect [OPTIONS]      list the segments of every write-ahead log
  kapsel --help | --version
";

const OPTIONS: &str = "\
Options:
  --config FILE        read settings from this kapsel.toml (also KAPSEL_CONFIG); without
                       either, no file is read
  --SETTING VALUE      set a setting listed below, also written --SETTING=VALUE
  -h, --help           print this help
  -V, --version        print the version
";

const PRECEDENCE: &str = "\
Configuration:
  Each setting is taken from, highest first: its flag, its environment variable, the
  configuration file, its default. An empty value counts as unset. The file holds top-level
  `key = value` lines; a key is the variable in lower case without `KAPSEL_` (shards,
  server_addr, database_url, ...), a flag is that key with `-` for `_` (--shards, --server-addr,
  --database-url, ...). Values are strings, integers, booleans, or arrays of those (joined
  with commas). Unknown keys and flags are errors; so is any bad value, named at start.
  Relative paths are relative to the working directory.
";

const EXIT_CODES: &str = "\
Exit codes:
  0  success; for audit verify, every log checked out
  1  audit verify found a corrupt log: the failing segment file and byte offset are printed
  2  usage or configuration error (the message names the setting), no log found, I/O error
";

/// Width the help's descriptions are wrapped to.
const HELP_COLUMNS: usize = 96;

/// Width of the help's flag column.
const HELP_FLAG_COLUMNS: usize = 31;

/// The full help: usage, options, how configuration works, every setting with its names and
/// default, and the exit codes.
pub fn help() -> String {
    let mut lines = vec![USAGE.to_owned(), OPTIONS.to_owned(), PRECEDENCE.to_owned()];
    lines.push("Settings (flag, environment variable, file key; default):".to_owned());
    for setting in SETTINGS {
        let head = format!("{} {}", setting.flag(), setting.value_name);
        let names = format!("{}, {}", setting.variable, setting.key);
        lines.push(format!("  {head:<HELP_FLAG_COLUMNS$} {names}; default: {}", setting.default_text()));
        lines.extend(wrapped(setting.description, "      ", HELP_COLUMNS));
    }
    lines.push(String::new());
    lines.push(EXIT_CODES.to_owned());
    let mut text = lines.join("\n");
    text.truncate(text.trim_end().len());
    text.push('\n');
    text
}

/// `text` broken into lines of at most `columns` (longer words stand alone), each indented.
fn wrapped(text: &str, indent: &str, columns: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > columns {
            lines.push(std::mem::replace(&mut line, String::from(indent)));
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// No subcommand: run the server.
    Server,
    /// `kapsel config`: print the effective configuration.
    Config,
    /// `kapsel audit verify`.
    AuditVerify,
    /// `kapsel wal inspect`.
    WalInspect,
    /// `--help`, `-h` or `kapsel help`: print [`help`].
    Help,
    /// `--version` or `-V`: print the version.
    Version,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arguments {
    /// The command to run.
    pub command: Command,
    /// `--config`, when given.
    pub config_file: Option<PathBuf>,
    /// Settings given as flags, by environment variable name; a repeated flag's last value wins.
    pub flags: BTreeMap<&'static str, String>,
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

/// What a `--name` option sets.
enum Target {
    ConfigFile,
    Setting(&'static Setting),
}

/// Parses the arguments after the program name. Options may come before or after the
/// subcommand words, so `kapsel --data-dir d audit verify` and `kapsel audit verify
/// --data-dir d` mean the same; a value follows its option as the next argument or after `=`.
/// Help and version win over a wrong command, as users expect `--help` to work on a command
/// line that is otherwise wrong.
pub fn parse<I>(arguments: I) -> Result<Arguments, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut words: Vec<OsString> = Vec::new();
    let mut parsed = Arguments { command: Command::Server, config_file: None, flags: BTreeMap::new() };
    let mut help = false;
    let mut version = false;
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        let Some(text) = argument.to_str() else {
            if argument.as_encoded_bytes().starts_with(b"-") {
                return Err(UsageError(format!("option `{}` is not valid UTF-8", argument.to_string_lossy())));
            }
            words.push(argument);
            continue;
        };
        match text {
            "-h" | "--help" => help = true,
            "-V" | "--version" => version = true,
            "--" => words.extend(arguments.by_ref()),
            option if option.starts_with("--") => {
                let (name, inline) = match option.split_once('=') {
                    Some((name, value)) => (name, Some(OsString::from(value))),
                    None => (option, None),
                };
                let target = target(name)?;
                let value = match inline {
                    Some(value) => value,
                    None => arguments.next().ok_or_else(|| UsageError(format!("{name} needs a value")))?,
                };
                set(&mut parsed, name, target, value)?;
            }
            option if option.starts_with('-') && option.len() > 1 => {
                return Err(UsageError(format!("unknown option `{option}`")));
            }
            _ => words.push(argument),
        }
    }
    parsed.command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else {
        command_of(&words)?
    };
    Ok(parsed)
}

fn target(name: &str) -> Result<Target, UsageError> {
    if name == "--config" {
        return Ok(Target::ConfigFile);
    }
    match SETTINGS.iter().find(|setting| setting.flag() == name) {
        Some(setting) => Ok(Target::Setting(setting)),
        None => Err(UsageError(format!("unknown option `{name}`"))),
    }
}

fn set(parsed: &mut Arguments, name: &str, target: Target, value: OsString) -> Result<(), UsageError> {
    match target {
        Target::ConfigFile if value.is_empty() => Err(UsageError("--config needs a file".into())),
        Target::ConfigFile => {
            parsed.config_file = Some(PathBuf::from(value));
            Ok(())
        }
        Target::Setting(setting) => {
            let value = value.into_string().map_err(|_| UsageError(format!("{name}: the value is not valid UTF-8")))?;
            if value.is_empty() {
                return Err(UsageError(format!("{name} needs a value ({})", setting.value_name)));
            }
            parsed.flags.insert(setting.variable, value);
            Ok(())
        }
    }
}

fn command_of(words: &[OsString]) -> Result<Command, UsageError> {
    let words: Vec<&OsStr> = words.iter().map(OsString::as_os_str).collect();
    let text: Vec<Option<&str>> = words.iter().map(|word| word.to_str()).collect();
    match text.as_slice() {
        [] => Ok(Command::Server),
        [Some("help")] => Ok(Command::Help),
        [Some("config")] => Ok(Command::Config),
        [Some("audit"), Some("verify")] => Ok(Command::AuditVerify),
        [Some("wal"), Some("inspect")] => Ok(Command::WalInspect),
        [Some("audit")] => Err(UsageError("`kapsel audit` needs a subcommand: verify".into())),
        [Some("wal")] => Err(UsageError("`kapsel wal` needs a subcommand: inspect".into())),
        [Some("audit" | "wal" | "config"), _, ..] => {
            let shown: Vec<String> = words.iter().map(|word| word.to_string_lossy().into_owned()).collect();
            Err(UsageError(format!("unknown command `{}`", shown.join(" "))))
        }
        [first, ..] => {
            let shown = first.map_or_else(|| words[0].to_string_lossy().into_owned(), str::to_owned);
            Err(UsageError(format!("unknown command `{shown}`")))
        }
    }
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

    fn flags(arguments: &[&str]) -> BTreeMap<&'static str, String> {
        parsed(arguments).unwrap().flags
    }

    // With no subcommand the binary is the server; the tools must not be reachable by accident.
    #[test]
    fn no_arguments_means_the_server() {
        assert_eq!(
            parsed(&[]).unwrap(),
            Arguments { command: Command::Server, config_file: None, flags: BTreeMap::new() }
        );
        assert_eq!(command(&["config"]), Command::Config);
    }

    // Operators write flags before or after the subcommand; both must reach the same directory.
    #[test]
    fn data_directory_is_accepted_before_after_and_with_equals() {
        let expected = BTreeMap::from([("KAPSEL_DATA_DIR", "/srv/kapsel".to_owned())]);
        assert_eq!(flags(&["audit", "verify", "--data-dir", "/srv/kapsel"]), expected);
        assert_eq!(flags(&["--data-dir", "/srv/kapsel", "audit", "verify"]), expected);
        assert_eq!(flags(&["audit", "verify", "--data-dir=/srv/kapsel"]), expected);
        assert_eq!(command(&["--data-dir", "/srv/kapsel", "audit", "verify"]), Command::AuditVerify);
        assert_eq!(command(&["wal", "inspect"]), Command::WalInspect);
    }

    // Every setting has a flag named after its file key; the last of a repeated flag wins.
    #[test]
    fn setting_flags_are_read_by_variable() {
        let given = flags(&["--shards", "4", "--server-addr=127.0.0.1:0", "--shards=5", "--retention", "3d"]);
        assert_eq!(given["KAPSEL_SHARDS"], "5");
        assert_eq!(given["SERVER_ADDR"], "127.0.0.1:0");
        assert_eq!(given["KAPSEL_RETENTION"], "3d");
        assert_eq!(flags(&["--database-url", "host=db"])["DATABASE_URL"], "host=db");
        let configured = parsed(&["config", "--config", "/etc/kapsel.toml"]).unwrap();
        assert_eq!(configured.config_file, Some(PathBuf::from("/etc/kapsel.toml")));
        assert_eq!(parsed(&["--config=k.toml"]).unwrap().config_file, Some(PathBuf::from("k.toml")));
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
        assert_eq!(parsed(&["config", "show"]).unwrap_err().0, "unknown command `config show`");
        assert!(parsed(&["audit"]).unwrap_err().0.contains("verify"));
        assert!(parsed(&["wal"]).unwrap_err().0.contains("inspect"));
        assert_eq!(parsed(&["audit", "verify", "--fast"]).unwrap_err().0, "unknown option `--fast`");
        assert_eq!(parsed(&["--shard", "4"]).unwrap_err().0, "unknown option `--shard`");
        assert_eq!(parsed(&["--shard=4"]).unwrap_err().0, "unknown option `--shard`");
        assert_eq!(parsed(&["-x"]).unwrap_err().0, "unknown option `-x`");
        assert!(parsed(&["--log-format", "pretty", "--rust-log=debug"]).is_ok(), "logging is configured like the rest");
        assert!(parsed(&["audit", "verify", "--data-dir"]).is_err());
        assert!(parsed(&["audit", "verify", "--data-dir="]).is_err());
        assert_eq!(parsed(&["--shards"]).unwrap_err().0, "--shards needs a value");
        assert!(parsed(&["--config="]).is_err());
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

    /// The widest help line: a setting's names and default are not wrapped.
    const HELP_LINE_COLUMNS_MAX: usize = 120;

    // The help is the operator's reference: every setting appears with all its names and its
    // default, and no line is too wide for a terminal.
    #[test]
    fn help_lists_every_setting_with_its_default() {
        let text = help();
        for setting in SETTINGS {
            let head = format!("  {} ", setting.flag());
            let line = text.lines().find(|line| line.starts_with(&head)).unwrap();
            assert!(line.contains(setting.variable), "{line}");
            assert!(line.ends_with(&format!("default: {}", setting.default_text())), "{line}");
            assert!(line.contains(&setting.flag()) && line.contains(setting.key), "{line}");
        }
        assert!(text.contains(crate::config::CONFIG_VARIABLE) && text.contains("kapsel config"));
        assert!(text.lines().all(|line| line.len() <= HELP_LINE_COLUMNS_MAX), "{text}");
    }
}
