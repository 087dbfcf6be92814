//! Server configuration from the environment (the names of the external contract). Parsing is a
//! pure function of a variable lookup, so it is tested without touching the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kapsel_engine::state::StateLimits;
use kapsel_engine::{limits, IoDriver};

/// Default listen address.
pub const SERVER_ADDR_DEFAULT: &str = "127.0.0.1:8080";

/// Default `DATABASE_MAX_CONNECTIONS`.
pub const DATABASE_MAX_CONNECTIONS_DEFAULT: usize = 10;

/// Server settings read from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `SERVER_ADDR`.
    pub listen: SocketAddr,
    /// `KAPSEL_SHARDS` (`None`: keep the data directory's count, else the available cores).
    pub shards: Option<usize>,
    /// `KAPSEL_IO_DRIVER`.
    pub io_driver: IoDriver,
    /// `KAPSEL_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `KAPSEL_MAX_PAYLOAD_BYTES`.
    pub max_payload_bytes: u64,
    /// `KAPSEL_WAL_SEGMENT_BYTES`.
    pub wal_segment_bytes: u64,
    /// `KAPSEL_TLS_CERT` and `KAPSEL_TLS_KEY`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `KAPSEL_IDEMPOTENCY_WINDOW`, `KAPSEL_IDEMPOTENCY_KEYS_MAX`, `KAPSEL_EVENTS_IN_MEMORY_MAX`.
    pub state_limits: StateLimits,
    /// `KAPSEL_ALLOW_DESTINATIONS`.
    pub destinations: kapsel_http::DestinationPolicy,
    /// `KAPSEL_EXTRA_CA_FILE`.
    pub extra_ca_file: Option<PathBuf>,
    /// `DATABASE_URL` and `DATABASE_MAX_CONNECTIONS`.
    pub index: Option<kapsel_engine::index::IndexConfig>,
}

/// A configuration value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The variable.
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

fn number<T: std::str::FromStr>(
    lookup: &dyn Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match lookup(variable).filter(|value| !value.is_empty()) {
        Some(value) => value.trim().parse().map_err(|_| error(variable, format!("`{value}` is not a valid number"))),
        None => Ok(default),
    }
}

/// Parses a duration: a number of milliseconds, or a number with `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|character: char| !character.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().ok()?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    value.checked_mul(factor)
}

impl Settings {
    /// Reads the settings through `lookup` (the environment in production).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let listen_text =
            lookup("SERVER_ADDR").filter(|value| !value.is_empty()).unwrap_or_else(|| SERVER_ADDR_DEFAULT.into());
        let listen = listen_text
            .parse()
            .map_err(|_| error("SERVER_ADDR", format!("`{listen_text}` is not an address like 127.0.0.1:8080")))?;
        let shards = match lookup("KAPSEL_SHARDS").filter(|value| !value.is_empty()) {
            Some(value) => {
                let count: usize =
                    value.trim().parse().map_err(|_| error("KAPSEL_SHARDS", format!("`{value}` is not a number")))?;
                if !(1..=limits::SHARDS_MAX).contains(&count) {
                    return Err(error("KAPSEL_SHARDS", format!("must be 1 to {}", limits::SHARDS_MAX)));
                }
                Some(count)
            }
            None => None,
        };
        let driver_text = lookup("KAPSEL_IO_DRIVER").filter(|value| !value.is_empty()).unwrap_or_else(|| "auto".into());
        let io_driver =
            IoDriver::parse(&driver_text).ok_or_else(|| error("KAPSEL_IO_DRIVER", "must be auto, uring or legacy"))?;
        let max_payload_bytes = number(lookup, "KAPSEL_MAX_PAYLOAD_BYTES", kapsel_http::limits::PAYLOAD_BYTES_DEFAULT)?;
        if max_payload_bytes == 0 || max_payload_bytes > (kapsel_wal::limits::RECORD_BODY_BYTES_MAX / 2) as u64 {
            return Err(error(
                "KAPSEL_MAX_PAYLOAD_BYTES",
                format!("must be 1 to {}", kapsel_wal::limits::RECORD_BODY_BYTES_MAX / 2),
            ));
        }
        let wal_segment_bytes = number(lookup, "KAPSEL_WAL_SEGMENT_BYTES", kapsel_wal::limits::SEGMENT_BYTES_DEFAULT)?;
        let segment_range = kapsel_wal::limits::SEGMENT_BYTES_MIN..=kapsel_wal::limits::SEGMENT_BYTES_MAX;
        if !segment_range.contains(&wal_segment_bytes) {
            return Err(error(
                "KAPSEL_WAL_SEGMENT_BYTES",
                format!("must be {} to {}", segment_range.start(), segment_range.end()),
            ));
        }
        let tls = match (
            lookup("KAPSEL_TLS_CERT").filter(|v| !v.is_empty()),
            lookup("KAPSEL_TLS_KEY").filter(|v| !v.is_empty()),
        ) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => return Err(error("KAPSEL_TLS_CERT", "KAPSEL_TLS_CERT and KAPSEL_TLS_KEY must be set together")),
        };
        let window_ms = match lookup("KAPSEL_IDEMPOTENCY_WINDOW").filter(|value| !value.is_empty()) {
            Some(value) => parse_duration_ms(&value)
                .ok_or_else(|| error("KAPSEL_IDEMPOTENCY_WINDOW", "must be a duration such as 24h"))?,
            None => limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
        };
        let state_limits = StateLimits {
            events_max: number(lookup, "KAPSEL_EVENTS_IN_MEMORY_MAX", limits::EVENTS_IN_MEMORY_DEFAULT)?.max(1),
            idempotency_keys_max: number(lookup, "KAPSEL_IDEMPOTENCY_KEYS_MAX", limits::IDEMPOTENCY_KEYS_DEFAULT)?
                .max(1),
            idempotency_window_ms: window_ms,
            payload_memory_bytes_max: number(
                lookup,
                "KAPSEL_PAYLOAD_MEMORY_BYTES",
                limits::PAYLOAD_MEMORY_BYTES_DEFAULT,
            )?,
            terminal_events_max: number(
                lookup,
                "KAPSEL_TERMINAL_EVENTS_IN_MEMORY",
                limits::TERMINAL_EVENTS_IN_MEMORY_MAX,
            )?
            .max(1),
        };
        let admin_token = lookup("KAPSEL_ADMIN_TOKEN").filter(|value| !value.is_empty());
        let destinations =
            kapsel_http::DestinationPolicy::parse_allow_list(&lookup("KAPSEL_ALLOW_DESTINATIONS").unwrap_or_default())
                .map_err(|message| error("KAPSEL_ALLOW_DESTINATIONS", message))?;
        let extra_ca_file = lookup("KAPSEL_EXTRA_CA_FILE").filter(|value| !value.is_empty()).map(PathBuf::from);
        let max_connections = number(lookup, "DATABASE_MAX_CONNECTIONS", DATABASE_MAX_CONNECTIONS_DEFAULT)?;
        if !(2..=1000).contains(&max_connections) {
            return Err(error("DATABASE_MAX_CONNECTIONS", "must be 2 to 1000 (one writes, the others serve queries)"));
        }
        let index = match lookup("DATABASE_URL").filter(|value| !value.is_empty()) {
            Some(url) => {
                if !kapsel_engine::index::valid_url(&url) {
                    return Err(error("DATABASE_URL", "is not a postgres:// URL or key=value connection string"));
                }
                Some(kapsel_engine::index::IndexConfig { url, max_connections })
            }
            None => None,
        };
        Ok(Self {
            listen,
            shards,
            io_driver,
            admin_token,
            max_payload_bytes,
            wal_segment_bytes,
            tls,
            state_limits,
            destinations,
            extra_ca_file,
            index,
        })
    }
}

/// Shards a data directory was created with (its `wal/shard-<n>` directories), if any.
pub fn existing_shards(data_directory: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(data_directory.join("wal")).ok()?;
    let count = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.strip_prefix("shard-").is_some_and(|n| n.parse::<usize>().is_ok()))
        })
        .count();
    (count > 0).then_some(count)
}

/// The shard count to run: the data directory's own count when it has one (events and
/// endpoints live in their owner shard's log, so the count cannot change under existing data),
/// else `KAPSEL_SHARDS`, else the available cores.
pub fn resolve_shards(requested: Option<usize>, existing: Option<usize>) -> Result<usize, ConfigError> {
    match (requested, existing) {
        (Some(requested), Some(existing)) if requested != existing => Err(error(
            "KAPSEL_SHARDS",
            format!("the data directory holds {existing} shards; run with KAPSEL_SHARDS={existing} (or unset)"),
        )),
        (_, Some(existing)) => Ok(existing),
        (Some(requested), None) => Ok(requested),
        (None, None) => Ok(std::thread::available_parallelism().map_or(1, usize::from).min(limits::SHARDS_MAX)),
    }
}

/// The admin token: `KAPSEL_ADMIN_TOKEN`, else the one stored in `<data>/admin.token`, else a new
/// random one written there with mode 0600.
pub fn admin_token(configured: Option<String>, data_directory: &Path) -> std::io::Result<String> {
    if let Some(token) = configured {
        return Ok(token);
    }
    let path = data_directory.join("admin.token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.trim().to_string();
        if !token.is_empty() {
            tracing::info!(path = %path.display(), "using the admin token stored in the data directory");
            return Ok(token);
        }
    }
    std::fs::create_dir_all(data_directory)?;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| std::io::Error::other(error.to_string()))?;
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated an admin token (set KAPSEL_ADMIN_TOKEN to choose one)");
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(&|name| map.get(name).cloned())
    }

    // No configuration must give a working server: the documented defaults.
    #[test]
    fn defaults_need_no_configuration() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(defaults.io_driver, IoDriver::Auto);
        assert_eq!(defaults.max_payload_bytes, 10_485_760);
        assert_eq!(defaults.wal_segment_bytes, 67_108_864);
        assert!(defaults.tls.is_none() && defaults.admin_token.is_none() && defaults.shards.is_none());
    }

    // A wrong value is an error naming the variable, never a silent default.
    #[test]
    fn bad_values_name_their_variable() {
        for (variable, value) in [
            ("SERVER_ADDR", "nowhere"),
            ("KAPSEL_SHARDS", "0"),
            ("KAPSEL_IO_DRIVER", "fast"),
            ("KAPSEL_MAX_PAYLOAD_BYTES", "lots"),
            ("KAPSEL_WAL_SEGMENT_BYTES", "10"),
            ("KAPSEL_IDEMPOTENCY_WINDOW", "1y"),
            ("KAPSEL_TLS_CERT", "/only/cert.pem"),
            ("KAPSEL_ALLOW_DESTINATIONS", "10.1.2.3/8"),
        ] {
            let failure = settings(&[(variable, value)]).unwrap_err();
            assert_eq!(failure.variable, variable);
        }
        assert_eq!(parse_duration_ms("24h"), Some(86_400_000));
        assert_eq!(parse_duration_ms("1500"), Some(1500));
    }

    // The shard count is fixed by existing data; a conflicting request is refused.
    #[test]
    fn shard_count_follows_existing_data() {
        assert_eq!(resolve_shards(Some(4), None).unwrap(), 4);
        assert_eq!(resolve_shards(None, Some(3)).unwrap(), 3);
        assert_eq!(resolve_shards(Some(3), Some(3)).unwrap(), 3);
        assert!(resolve_shards(Some(2), Some(3)).is_err());
    }

    // A generated admin token is stored privately and reused on the next start.
    #[test]
    fn admin_token_is_generated_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let first = admin_token(None, directory.path()).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(admin_token(None, directory.path()).unwrap(), first);
        let mode = std::fs::metadata(directory.path().join("admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(admin_token(Some("set".into()), directory.path()).unwrap(), "set");
    }
}
