//! Command-line arguments, parsed by clap, and the help text.
//!
//! clap tokenises (`--name value`, `--name=value`, `--`, a lone `-`, the last of a repeated
//! option wins); the commands are matched here from the words clap leaves, so a wrong one is
//! named whole (`unknown command `audit verfy``), and the help is written here from the
//! settings table, so it lists every setting with all its names and its default. Parsing is a
//! pure function of the arguments, tested without spawning a process. The setting flags and
//! the help's list of settings both come from [`crate::config::SETTINGS`], so a new setting
//! needs no change here.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use crate::config::SETTINGS;

/// The short usage, printed first by `--help` and after a usage error.
pub const USAGE: &str = "\
Kapsel: durable webhook ingest, at-least-once delivery, verifiable audit log.

Usage:
  kapsel [OPTIONS]                  start the server
  kapsel config [OPTIONS]           print the effective configuration (secrets redacted)
  kapsel audit verify [OPTIONS]     recompute every Merkle root and the audit chain: of the local
                                    logs, or with --nats-url (KAPSEL_NATS_URL) of every partition
                                    of the cluster (their count from --partitions or the cluster)
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
  0  success; for audit verify, every log (or every partition) checked out
  1  audit verify found a corrupt log: the failing segment file and byte offset are printed;
     in a cluster, the failing partition, range and sequence
  2  usage or configuration error (the message names the setting), no log found, I/O error,
     NATS unreachable or unreadable
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

/// Argument id of `--config`.
const CONFIG: &str = "config";
/// Argument id of the subcommand words.
const WORDS: &str = "words";
/// Argument id of `--help`.
const HELP: &str = "help";
/// Argument id of `--version`.
const VERSION: &str = "version";

/// The command line as clap sees it: `--help`, `--version`, `--config`, one `--<key>` per
/// setting (ids are the settings' keys) and the subcommand words as one positional list, so
/// options may come before, between or after them. clap's own help and version are off: the
/// help is [`help`], written from the settings table, and help must win over a wrong command.
fn command() -> clap::Command {
    let option = |id: &'static str, long: String, value_name: &'static str| {
        clap::Arg::new(id)
            .long(long)
            .value_name(value_name)
            .num_args(1)
            // The next argument is the value even when it starts with `-` (`--retention -5`
            // is then refused by the setting's own check, naming it).
            .allow_hyphen_values(true)
            .action(clap::ArgAction::Set)
            .value_parser(clap::value_parser!(OsString))
    };
    let switch =
        |id: &'static str, short: char| clap::Arg::new(id).short(short).long(id).action(clap::ArgAction::SetTrue);
    let command = clap::Command::new("kapsel")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .arg(switch(HELP, 'h'))
        .arg(switch(VERSION, 'V'))
        .arg(option(CONFIG, CONFIG.to_owned(), "FILE"))
        .arg(
            clap::Arg::new(WORDS)
                .num_args(0..)
                .action(clap::ArgAction::Append)
                .value_parser(clap::value_parser!(OsString)),
        );
    SETTINGS.iter().fold(command, |command, setting| {
        command.arg(option(setting.key, setting.key.replace('_', "-"), setting.value_name))
    })
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
    let matches = command().try_get_matches_from(arguments).map_err(usage_error)?;
    let mut parsed = Arguments { command: Command::Server, config_file: None, flags: BTreeMap::new() };
    if let Some(file) = matches.get_one::<OsString>(CONFIG) {
        if file.is_empty() {
            return Err(UsageError("--config needs a file".into()));
        }
        parsed.config_file = Some(PathBuf::from(file));
    }
    for setting in SETTINGS {
        let Some(value) = matches.get_one::<OsString>(setting.key) else {
            continue;
        };
        let flag = setting.flag();
        let value =
            value.clone().into_string().map_err(|_| UsageError(format!("{flag}: the value is not valid UTF-8")))?;
        if value.is_empty() {
            return Err(UsageError(format!("{flag} needs a value ({})", setting.value_name)));
        }
        parsed.flags.insert(setting.variable, value);
    }
    let words: Vec<OsString> = matches.get_many::<OsString>(WORDS).into_iter().flatten().cloned().collect();
    parsed.command = if matches.get_flag(HELP) {
        Command::Help
    } else if matches.get_flag(VERSION) {
        Command::Version
    } else {
        command_of(&words)?
    };
    Ok(parsed)
}

/// clap's error in this binary's words: the option it is about, without clap's styling.
fn usage_error(error: clap::Error) -> UsageError {
    use clap::error::{ContextKind, ErrorKind};
    let argument = match error.get(ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(argument)) => argument.clone(),
        _ => String::new(),
    };
    // clap names an option with its value name (`--shards <N>`) or its inline value
    // (`--shard=4`); the message names the option alone.
    let option = argument.split([' ', '=']).next().unwrap_or_default().to_owned();
    UsageError(match error.kind() {
        ErrorKind::UnknownArgument => format!("unknown option `{option}`"),
        ErrorKind::InvalidValue | ErrorKind::WrongNumberOfValues | ErrorKind::TooFewValues => {
            format!("{option} needs a value")
        }
        ErrorKind::TooManyValues => format!("{option} takes no value"),
        ErrorKind::InvalidUtf8 => format!("option `{option}` is not valid UTF-8"),
        _ => {
            let rendered = error.to_string();
            rendered.trim().trim_start_matches("error: ").to_owned()
        }
    })
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

    // A cluster is verified with the same command, its NATS URLs and partition count as flags.
    #[test]
    fn audit_verify_takes_the_cluster_settings_as_flags() {
        let parsed =
            parsed(&["audit", "verify", "--nats-url", "nats://a:4222,nats://b:4222", "--partitions=8"]).unwrap();
        assert_eq!(parsed.command, Command::AuditVerify);
        assert_eq!(parsed.flags["KAPSEL_NATS_URL"], "nats://a:4222,nats://b:4222");
        assert_eq!(parsed.flags["KAPSEL_PARTITIONS"], "8");
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

    // A value is the next argument whatever it looks like; bytes that are not UTF-8 are
    // refused with the option's name, and a word that is not UTF-8 is shown as best it can be.
    #[test]
    fn values_are_taken_whole_and_must_be_utf8() {
        use std::os::unix::ffi::OsStringExt as _;
        assert_eq!(flags(&["--retention", "-5"])["KAPSEL_RETENTION"], "-5");
        assert_eq!(flags(&["--rust-log", "--help"])["RUST_LOG"], "--help");
        let invalid = OsString::from_vec(vec![b'a', 0xff]);
        let value = parse([OsString::from("--data-dir"), invalid.clone()]).unwrap_err();
        assert_eq!(value.0, "--data-dir: the value is not valid UTF-8");
        let word = parse([invalid]).unwrap_err();
        assert_eq!(word.0, "unknown command `a\u{fffd}`");
        assert_eq!(parsed(&["--help=yes"]).unwrap_err().0, "--help takes no value");
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
        // Operators of a cluster must learn from the help that `audit verify` checks it too.
        assert!(text.contains("--nats-url (KAPSEL_NATS_URL) of every partition"), "{text}");
        assert!(text.contains("the failing partition, range and sequence") && text.contains("NATS unreachable"));
        assert!(text.lines().all(|line| line.len() <= HELP_LINE_COLUMNS_MAX), "{text}");
    }
}
