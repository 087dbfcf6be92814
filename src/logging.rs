//! Logging setup: `tracing` events go to standard error, filtered by `RUST_LOG` and formatted
//! as `KAPSEL_LOG_FORMAT` says. Standard output stays free for command results, so a script
//! can parse `kapsel wal inspect` while the logs go elsewhere.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable holding the tracing filter.
pub const FILTER_VARIABLE: &str = crate::config::VARIABLES.rust_log;

/// Filter used when [`FILTER_VARIABLE`] is unset or empty.
pub const FILTER_DEFAULT: &str = "info";

/// Environment variable choosing the log format.
pub const FORMAT_VARIABLE: &str = crate::config::VARIABLES.log_format;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, for log collectors (the default).
    Json,
    /// Multi-line, human-readable records, for a terminal.
    Pretty,
}

impl Format {
    /// Parses the value of [`FORMAT_VARIABLE`]; unset or empty means [`Format::Json`].
    pub fn parse(value: Option<&str>) -> Result<Self, LoggingError> {
        match value.unwrap_or("") {
            "" | "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(LoggingError(format!("{FORMAT_VARIABLE} must be `json` or `pretty`, not `{other}`"))),
        }
    }
}

/// Logging could not be set up; the message says which variable is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggingError(pub String);

impl fmt::Display for LoggingError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for LoggingError {}

/// Installs the global subscriber with the merged configuration's `RUST_LOG` (`directives`) and
/// `KAPSEL_LOG_FORMAT` (`format`). A malformed value is an error rather than a silent default:
/// an operator who asked for `debug` logs and got none would chase the wrong problem.
pub fn init(directives: Option<&str>, format: Option<&str>) -> Result<(), LoggingError> {
    let format = Format::parse(format)?;
    let directives = directives.filter(|value| !value.is_empty()).unwrap_or(FILTER_DEFAULT);
    let filter = EnvFilter::try_new(directives)
        .map_err(|error| LoggingError(format!("{FILTER_VARIABLE}=`{directives}` is not a valid filter: {error}")))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        Format::Json => builder.json().try_init(),
        // Colours only where a person reads them; escape codes garble files and pipes.
        Format::Pretty => builder.pretty().with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    installed.map_err(|error| LoggingError(format!("cannot install the log subscriber: {error}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The format variable is part of the external contract; a typo must be refused, not ignored.
    #[test]
    fn format_accepts_json_and_pretty_only() {
        assert_eq!(Format::parse(None), Ok(Format::Json));
        assert_eq!(Format::parse(Some("")), Ok(Format::Json));
        assert_eq!(Format::parse(Some("json")), Ok(Format::Json));
        assert_eq!(Format::parse(Some("pretty")), Ok(Format::Pretty));
        assert!(Format::parse(Some("JSON")).is_err());
        assert!(Format::parse(Some("text")).is_err());
    }
}
