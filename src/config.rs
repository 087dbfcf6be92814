//! Server configuration: one table of settings, [`SETTINGS`], and the layers that set them.
//!
//! Every setting has an environment variable (the names of the external contract), a
//! `kapsel.toml` key (the variable in lower case without `KAPSEL_`) and a flag (that key with
//! `-` for `_`). One macro invocation, `settings!`, declares them all: it writes the table,
//! the typed struct the layers merge into ([`Values`], one field per setting, named by its key)
//! and the variable names ([`VARIABLES`]), so code reads a setting through a field and a
//! misspelt name does not compile. The table alone drives the merge, `kapsel --help` and
//! `kapsel config`.
//!
//! Layers, lowest first: defaults, the configuration file (named by `--config` or
//! `KAPSEL_CONFIG`), the environment, flags. Each layer is a [`figment`] provider of the text
//! the environment would hold; figment merges them into [`Values`] and remembers which layer
//! gave each value. One pure function, [`Settings::from_values`], then validates values wherever
//! they came from. The file is parsed here rather than by figment's TOML provider: its errors
//! name the line without echoing it (the line may hold the database password), and an unknown
//! key is refused with its line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use kapsel_engine::state::StateLimits;
use kapsel_engine::{limits, IoDriver};
use DefaultValue::{Described, Text};

/// Default listen address.
pub const SERVER_ADDR_DEFAULT: &str = "127.0.0.1:8080";

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./data";

/// Default `DATABASE_MAX_CONNECTIONS`.
pub const DATABASE_MAX_CONNECTIONS_DEFAULT: usize = 10;

/// Environment variable naming the configuration file (the flag is `--config`).
pub const CONFIG_VARIABLE: &str = "KAPSEL_CONFIG";

/// What `kapsel config` shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// How `kapsel config` shows a setting's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrecy {
    /// Shown as it is.
    Public,
    /// Never shown.
    Secret,
    /// A Postgres connection string: shown with its password hidden.
    Password,
}

/// What a setting is when no layer sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// This text, as if it had been set.
    Text(&'static str),
    /// Something that is not a fixed text (computed, generated or absent), described.
    Described(&'static str),
}

/// One setting: its names in every layer, its default and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The environment variable, also the name used in messages.
    pub variable: &'static str,
    /// The `kapsel.toml` key, also the name of its field in [`Values`].
    pub key: &'static str,
    /// What the value is, in `--help` (`ADDR`, `N`, `PATH`, …).
    pub value_name: &'static str,
    /// The default.
    pub default: DefaultValue,
    /// What it does, for `--help`.
    pub description: &'static str,
    /// How `kapsel config` shows it.
    pub secrecy: Secrecy,
    /// Its field in [`Values`].
    value: fn(&Values) -> Option<&str>,
}

impl Setting {
    /// The command-line flag: `--` and the key with `-` for `_`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// The default as `--help` and `kapsel config` show it.
    pub fn default_text(&self) -> &'static str {
        match self.default {
            DefaultValue::Text(text) | DefaultValue::Described(text) => text,
        }
    }

    /// The value as `kapsel config` may show it, secrets hidden.
    pub fn shown(&self, value: &str) -> String {
        match self.secrecy {
            Secrecy::Public => value.to_owned(),
            Secrecy::Secret => REDACTED.to_owned(),
            // NATS URLs are a comma-separated list, each with its own credentials.
            Secrecy::Password if value.starts_with("nats://") || value.starts_with("tls://") => {
                value.split(',').map(redact_password).collect::<Vec<_>>().join(",")
            }
            Secrecy::Password => redact_password(value),
        }
    }

    /// This setting's value in `values`, if set.
    pub fn value<'a>(&self, values: &'a Values) -> Option<&'a str> {
        (self.value)(values)
    }
}

/// Declares every setting once: `key: "VARIABLE", "VALUE NAME", default, "description",
/// secrecy;`. It writes [`SETTINGS`] (in this order), [`Values`] and [`VARIABLES`].
macro_rules! settings {
    ($($key:ident: $variable:literal, $value_name:literal, $default:expr, $description:expr, $secrecy:ident;)*) => {
        /// The text of every setting a layer sets, by key: what figment merges the layers into
        /// and [`Settings::from_values`] validates. Unset and empty are `None`.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Values {
            $(
                #[doc = concat!("`", $variable, "`.")]
                pub $key: Option<String>,
            )*
        }

        /// The environment variable of each setting, by key, for messages.
        #[derive(Clone, Copy, Debug)]
        #[allow(dead_code, reason = "not every setting has a message of its own")]
        pub struct Variables {
            $(
                #[doc = concat!("`", $variable, "`.")]
                pub $key: &'static str,
            )*
        }

        /// The environment variable of each setting: `VARIABLES.shards` is `"KAPSEL_SHARDS"`.
        pub const VARIABLES: Variables = Variables { $($key: $variable,)* };

        /// Every setting, in the order `--help` and `kapsel config` list them.
        pub const SETTINGS: &[Setting] = &[
            $(
                Setting {
                    variable: $variable,
                    key: stringify!($key),
                    value_name: $value_name,
                    default: $default,
                    description: $description,
                    secrecy: Secrecy::$secrecy,
                    value: |values| values.$key.as_deref(),
                },
            )*
        ];
    };
}

settings! {
    server_addr: "SERVER_ADDR", "ADDR", Text(SERVER_ADDR_DEFAULT),
        "listen address for ingest and admin (port 0 picks a free port, printed at start)", Public;
    data_dir: "KAPSEL_DATA_DIR", "DIR", Text(DATA_DIR_DEFAULT),
        "data directory: wal/shard-<n>/ logs and admin.token; `audit verify` and `wal inspect` read every \
         <DIR>/wal/shard-<n>/ log, or DIR itself when it is a log directory", Public;
    shards: "KAPSEL_SHARDS", "N", Described("available cores"),
        "shard threads (1 to 256); fixed once the data directory has logs (a different value is refused)", Public;
    io_driver: "KAPSEL_IO_DRIVER", "DRIVER", Text("auto"), "auto, uring or legacy (epoll)", Public;
    admin_token: "KAPSEL_ADMIN_TOKEN", "TOKEN", Described("generated"),
        "bearer token for /admin/*; when unset, generated once into <data dir>/admin.token (mode 0600)", Secret;
    max_payload_bytes: "KAPSEL_MAX_PAYLOAD_BYTES", "BYTES", Text("10485760"), "larger ingest bodies get 413 E1002",
        Public;
    wal_segment_bytes: "KAPSEL_WAL_SEGMENT_BYTES", "BYTES", Text("67108864"),
        "a segment is sealed (Merkle root, chain) when it reaches this size (4096 to 1073741824)", Public;
    retention: "KAPSEL_RETENTION", "DURATION", Text("7d"),
        "sealed segments older than this, fully terminal and indexed, may be deleted (ms, s, m, h or d)", Public;
    tls_cert: "KAPSEL_TLS_CERT", "PATH", Described("unset"),
        "PEM certificate chain; when it and KAPSEL_TLS_KEY are set, the listener speaks TLS", Public;
    tls_key: "KAPSEL_TLS_KEY", "PATH", Described("unset"), "PEM private key for KAPSEL_TLS_CERT", Public;
    extra_ca_file: "KAPSEL_EXTRA_CA_FILE", "PATH", Described("unset"),
        "PEM roots trusted for https destinations besides the webpki roots", Public;
    allow_destinations: "KAPSEL_ALLOW_DESTINATIONS", "CIDRS", Described("empty"),
        "comma-separated CIDRs deliveries may reach despite the private-range block (e.g. 127.0.0.0/8)", Public;
    idempotency_window: "KAPSEL_IDEMPOTENCY_WINDOW", "DURATION", Text("24h"),
        "how long a repeated X-Idempotency-Key is a duplicate (ms, s, m, h or d)", Public;
    idempotency_keys_max: "KAPSEL_IDEMPOTENCY_KEYS_MAX", "N", Text("1000000"),
        "idempotency keys remembered per shard (about 100 bytes each plus the key); beyond it the oldest are \
         forgotten early", Public;
    events_in_memory_max: "KAPSEL_EVENTS_IN_MEMORY_MAX", "N", Text("2000000"),
        "waiting (non-terminal) events a shard tracks (about 100 bytes each, payloads in the log); at the bound \
         ingest answers 503 E3002", Public;
    terminal_events_in_memory: "KAPSEL_TERMINAL_EVENTS_IN_MEMORY", "N", Text("200000"),
        "delivered or failed events a shard keeps in memory for lookups; older ones are answered by the index",
        Public;
    payload_memory_bytes: "KAPSEL_PAYLOAD_MEMORY_BYTES", "BYTES", Text("67108864"),
        "payload bytes of waiting events a shard keeps in memory; beyond it payloads stay on disk and are read \
         back from the log when their turn comes", Public;
    database_url: "DATABASE_URL", "URL", Described("unset"),
        "Postgres index (postgres://user:password@host:port/db or key=value form); unset means no index",
        Password;
    database_max_connections: "DATABASE_MAX_CONNECTIONS", "N", Text("10"),
        "index connections: one writes, the others serve queries (2 to 1000)", Public;
    nats_url: "KAPSEL_NATS_URL", "URLS", Described("unset"),
        "comma-separated NATS server URLs; set = cluster mode on NATS JetStream (docs/CLUSTER.md)", Password;
    node_id: "KAPSEL_NODE_ID", "ID", Described("host name"),
        "this node's name in the cluster, unique (1 to 64 of A-Z a-z 0-9 _ -)", Public;
    partitions: "KAPSEL_PARTITIONS", "N", Text("64"),
        "partitions of the event log in cluster mode (1 to 1024), fixed when the cluster is first created", Public;
    replicas: "KAPSEL_REPLICAS", "N", Text("3"),
        "JetStream replicas of each partition stream (1 to 5; 1 for a one-server test)", Public;
    rust_log: "RUST_LOG", "FILTER", Text("info"), "tracing filter", Public;
    log_format: "KAPSEL_LOG_FORMAT", "FORMAT", Text("json"), "json or pretty", Public;
}

/// The setting read from `variable`.
pub fn setting(variable: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|setting| setting.variable == variable)
}

/// The layer a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No layer set it.
    Default,
    /// The configuration file.
    File,
    /// The environment.
    Environment,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Default => "default",
            Self::File => "file",
            Self::Environment => "env",
            Self::Flag => "flag",
        })
    }
}

/// The configuration file read, and what named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    /// Its path, as given.
    pub path: PathBuf,
    /// [`Source::Flag`] for `--config`, [`Source::Environment`] for `KAPSEL_CONFIG`.
    pub named_by: Source,
}

impl ConfigFile {
    fn named_by_text(&self) -> &'static str {
        if self.named_by == Source::Flag {
            "--config"
        } else {
            CONFIG_VARIABLE
        }
    }
}

/// A configuration that cannot be used; the message names the setting or the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting's value is wrong.
    Invalid {
        /// The setting's environment variable.
        variable: &'static str,
        /// Where the value came from when that was not the variable itself, such as
        /// ``"`shards` in /etc/kapsel.toml"`` or `"--shards"`.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The configuration file is missing, unreadable or malformed, or names an unknown setting.
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The layers could not be merged into [`Values`]: a setting table and layer disagree,
    /// which no input can cause.
    Merge(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid { variable, origin: Some(origin), message } => {
                write!(formatter, "{variable} (set by {origin}): {message}")
            }
            Self::Invalid { variable, origin: None, message } => write!(formatter, "{variable}: {message}"),
            Self::File { path, message } => write!(formatter, "configuration file {}: {message}", path.display()),
            Self::Merge(message) => write!(formatter, "configuration: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { variable, origin: None, message: message.into() }
}

fn file_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::File { path: path.to_path_buf(), message: message.into() }
}

/// One layer as a figment provider: the text of each setting it sets, by key, empty values
/// left out so they never hide a lower layer.
struct Layer {
    source: Source,
    values: Dict,
}

impl Layer {
    /// A layer from values keyed by environment variable (the file's, the environment's and
    /// the flags' are all read that way).
    fn new(source: Source, by_variable: &dyn Fn(&str) -> Option<String>) -> Self {
        let values = SETTINGS
            .iter()
            .filter_map(|setting| {
                let value = by_variable(setting.variable).filter(|value| !value.is_empty())?;
                Some((setting.key.to_owned(), Value::from(value)))
            })
            .collect();
        Self { source, values }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.to_string())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The effective configuration: the merged [`Values`] and, for each setting some layer sets,
/// the layer that won. Empty values count as unset in every layer, so they never hide a lower
/// one.
#[derive(Clone, Debug)]
pub struct Configuration {
    file: Option<ConfigFile>,
    values: Values,
    sources: BTreeMap<&'static str, Source>,
}

impl Configuration {
    /// Reads the environment and the file named by `config_flag` or `KAPSEL_CONFIG`, and
    /// merges them with `flags` (values by variable name, from the command line). This is the
    /// edge that does I/O; [`Configuration::merge`] is the pure part.
    pub fn load(config_flag: Option<PathBuf>, flags: &BTreeMap<&'static str, String>) -> Result<Self, ConfigError> {
        let mut environment = BTreeMap::new();
        for variable in SETTINGS.iter().map(|setting| setting.variable).chain([CONFIG_VARIABLE]) {
            if let Some(value) = std::env::var_os(variable) {
                let value = value.into_string().map_err(|_| error(variable, "is not valid UTF-8"))?;
                environment.insert(variable, value);
            }
        }
        let environment_file = environment.get(CONFIG_VARIABLE).filter(|path| !path.is_empty());
        let file = match (config_flag, environment_file) {
            (Some(path), _) => Some(ConfigFile { path, named_by: Source::Flag }),
            (None, Some(path)) => Some(ConfigFile { path: PathBuf::from(path), named_by: Source::Environment }),
            (None, None) => None,
        };
        let file_values = match &file {
            Some(file) => {
                let text = std::fs::read_to_string(&file.path).map_err(|error| {
                    file_error(&file.path, format!("cannot read it (named by {}): {error}", file.named_by_text()))
                })?;
                parse_file(&text, &file.path)?
            }
            None => BTreeMap::new(),
        };
        Self::merge(file, &file_values, &|variable| environment.get(variable).cloned(), flags)
    }

    /// Merges the layers with figment: `file_values` (from [`parse_file`]), then `environment`,
    /// then `flags`, each keyed by variable name; a higher layer's value replaces a lower one's.
    pub fn merge(
        file: Option<ConfigFile>,
        file_values: &BTreeMap<&'static str, String>,
        environment: &dyn Fn(&str) -> Option<String>,
        flags: &BTreeMap<&'static str, String>,
    ) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Layer::new(Source::File, &|variable| file_values.get(variable).cloned()))
            .merge(Layer::new(Source::Environment, environment))
            .merge(Layer::new(Source::Flag, &|variable| flags.get(variable).cloned()));
        let values: Values = figment.extract().map_err(|error| ConfigError::Merge(error.to_string()))?;
        let layers = [Source::File, Source::Environment, Source::Flag];
        let sources = SETTINGS
            .iter()
            .filter_map(|setting| {
                let metadata = figment.find_metadata(setting.key)?;
                let source = layers.into_iter().find(|layer| metadata.name == layer.to_string())?;
                Some((setting.variable, source))
            })
            .collect();
        Ok(Self { file, values, sources })
    }

    /// The merged values.
    pub fn values(&self) -> &Values {
        &self.values
    }

    /// The layer `variable`'s value comes from.
    pub fn source(&self, variable: &str) -> Source {
        self.sources.get(variable).copied().unwrap_or(Source::Default)
    }

    /// The validated settings. An error names the setting and, when the value came from the
    /// file or a flag, how it was spelt there.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Settings::from_values(&self.values).map_err(|error| self.with_origin(error))
    }

    /// The shard count to run (see [`resolve_shards`]), checked against the data directory.
    pub fn shards(&self, settings: &Settings) -> Result<usize, ConfigError> {
        resolve_shards(settings.shards, existing_shards(&settings.data_directory))
            .map_err(|error| self.with_origin(error))
    }

    /// The data directory, for the commands that need nothing else.
    pub fn data_directory(&self) -> PathBuf {
        data_directory(&self.values)
    }

    fn with_origin(&self, error: ConfigError) -> ConfigError {
        let ConfigError::Invalid { variable, origin: None, message } = error else {
            return error;
        };
        let origin = match (self.source(variable), setting(variable), &self.file) {
            (Source::File, Some(setting), Some(file)) => Some(format!("`{}` in {}", setting.key, file.path.display())),
            (Source::Flag, Some(setting), _) => Some(setting.flag()),
            _ => None,
        };
        ConfigError::Invalid { variable, origin, message }
    }

    /// What `kapsel config` prints: every setting, the layer its value comes from and the value,
    /// secrets redacted; unset settings show their default in parentheses when it is not a
    /// fixed text.
    pub fn report(&self) -> String {
        let file = match &self.file {
            Some(file) => format!("{} (named by {})", file.path.display(), file.named_by_text()),
            None => format!("none (name one with --config or {CONFIG_VARIABLE})"),
        };
        let width = SETTINGS.iter().map(|setting| setting.variable.len()).max().unwrap_or(0);
        let mut lines = vec![
            "# Effective configuration; each value comes from, highest first: flag, env, file, default.".to_owned(),
            format!("# Configuration file: {file}"),
            format!("{:<width$}  {:<7}  VALUE", "SETTING", "SOURCE"),
        ];
        for setting in SETTINGS {
            let (value, source) = match setting.value(&self.values) {
                Some(value) => (setting.shown(value), self.source(setting.variable)),
                None => match setting.default {
                    Text(text) => (text.to_owned(), Source::Default),
                    Described(text) => (format!("({text})"), Source::Default),
                },
            };
            lines.push(format!("{:<width$}  {:<7}  {value}", setting.variable, source.to_string()));
        }
        lines.push(String::new());
        lines.join("\n")
    }
}

/// Reads a `kapsel.toml`: top-level `key = value` pairs whose keys are the settings' keys and
/// whose values are strings, integers, booleans or arrays of those (joined with commas, so
/// `allow_destinations = ["127.0.0.0/8", "::1/128"]` reads as the environment's list). The
/// values come back as the text the environment would hold, by variable name. Unknown keys,
/// tables, floats and dates are errors naming the key and its line.
pub fn parse_file(text: &str, path: &Path) -> Result<BTreeMap<&'static str, String>, ConfigError> {
    let line_of = |offset: usize| text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1);
    // The parser's own message quotes the line, which may hold the database password: only
    // its position and what it expected are shown.
    let document = toml::de::DeTable::parse(text).map_err(|error| {
        let line = line_of(error.span().map_or(0, |span| span.start));
        file_error(path, format!("line {line}: {}", error.message().trim_end()))
    })?;
    let mut values = BTreeMap::new();
    for (key, value) in document.get_ref().iter() {
        let name: &str = key.get_ref();
        let line = line_of(key.span().start);
        let setting = SETTINGS.iter().find(|setting| setting.key == name).ok_or_else(|| {
            file_error(path, format!("line {line}: unknown setting `{name}` (`kapsel --help` lists them)"))
        })?;
        let text = toml_text(value.get_ref()).ok_or_else(|| {
            file_error(
                path,
                format!("line {line}: `{name}` must be a string, an integer, a boolean or an array of those"),
            )
        })?;
        values.insert(setting.variable, text);
    }
    Ok(values)
}

/// A TOML value as environment text; `None` for kinds no setting takes.
fn toml_text(value: &toml::de::DeValue<'_>) -> Option<String> {
    use toml::de::DeValue;
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(integer) => {
            i128::from_str_radix(integer.as_str(), integer.radix()).ok().map(|number| number.to_string())
        }
        DeValue::Boolean(flag) => Some(flag.to_string()),
        DeValue::Array(items) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::Array(_) => None,
                scalar => toml_text(scalar),
            })
            .collect::<Option<Vec<String>>>()
            .map(|items| items.join(",")),
        DeValue::Float(_) | DeValue::Datetime(_) | DeValue::Table(_) => None,
    }
}

/// A Postgres connection string with its password replaced by [`REDACTED`]: the password of a
/// URL's user information and any `password` parameter, in URL or `key=value` form. Errs on
/// the side of hiding: in a URL, everything between the first `:` of the user information and
/// the last `@` is hidden, so a password with an unescaped `@` or `/` does not leak.
pub fn redact_password(text: &str) -> String {
    let scheme_length = ["postgres://", "postgresql://", "nats://", "tls://"]
        .iter()
        .find(|scheme| text.get(..scheme.len()).is_some_and(|start| start.eq_ignore_ascii_case(scheme)))
        .map(|scheme| scheme.len());
    let Some((scheme, rest)) = scheme_length.map(|length| text.split_at(length)) else {
        return redact_key_values(text);
    };
    let (user_information, host_and_more) = match rest.rfind('@') {
        Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at..).unwrap_or_default()),
        None => ("", rest),
    };
    let user_information = match user_information.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => user_information.to_owned(),
    };
    let host_and_more = match host_and_more.split_once('?') {
        Some((host, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some(("password", _)) => format!("password={REDACTED}"),
                    _ => parameter.to_owned(),
                })
                .collect();
            format!("{host}?{}", parameters.join("&"))
        }
        None => host_and_more.to_owned(),
    };
    format!("{scheme}{user_information}{host_and_more}")
}

/// The `key=value` form (libpq's): pairs separated by whitespace, spaces allowed around `=`.
fn redact_key_values(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let pair = rest.trim_start();
        shown.push_str(&rest[..rest.len() - pair.len()]);
        if pair.is_empty() {
            return shown;
        }
        let key_length =
            pair.find(|character: char| character == '=' || character.is_whitespace()).unwrap_or(pair.len());
        let (key, after_key) = pair.split_at(key_length);
        shown.push_str(key);
        let Some(after_equals) = after_key.trim_start().strip_prefix('=') else {
            // A word without `=` (not valid, so never shown after validation): keep it and go on.
            // The key is not empty here, as a pair starting with `=` has one, so this progresses.
            rest = after_key;
            continue;
        };
        let value = after_equals.trim_start();
        shown.push_str(&after_key[..after_key.len() - value.len()]);
        let value_length = key_value_length(value);
        shown.push_str(if key == "password" { REDACTED } else { &value[..value_length] });
        rest = &value[value_length..];
    }
}

/// Length in bytes of the value at the start of `text`: a quoted string up to its closing
/// quote, else a word up to whitespace; `\` escapes the next character in both.
fn key_value_length(text: &str) -> usize {
    let quoted = text.starts_with('\'');
    let mut characters = text.char_indices().skip(usize::from(quoted));
    while let Some((index, character)) = characters.next() {
        match character {
            '\\' => {
                characters.next();
            }
            '\'' if quoted => return index + 1,
            character if !quoted && character.is_whitespace() => return index,
            _ => {}
        }
    }
    text.len()
}

/// Server settings, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `SERVER_ADDR`.
    pub listen: SocketAddr,
    /// `KAPSEL_DATA_DIR`.
    pub data_directory: PathBuf,
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
    /// `KAPSEL_RETENTION`: sealed segments older than this, fully terminal and indexed, may be
    /// deleted.
    pub retention_ms: u64,
    /// `KAPSEL_TLS_CERT` and `KAPSEL_TLS_KEY`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `KAPSEL_IDEMPOTENCY_WINDOW`, `KAPSEL_IDEMPOTENCY_KEYS_MAX`, `KAPSEL_EVENTS_IN_MEMORY_MAX`,
    /// `KAPSEL_PAYLOAD_MEMORY_BYTES`, `KAPSEL_TERMINAL_EVENTS_IN_MEMORY`.
    pub state_limits: StateLimits,
    /// `KAPSEL_ALLOW_DESTINATIONS`.
    pub destinations: kapsel_http::DestinationPolicy,
    /// `KAPSEL_EXTRA_CA_FILE`.
    pub extra_ca_file: Option<PathBuf>,
    /// `DATABASE_URL` and `DATABASE_MAX_CONNECTIONS`.
    pub index: Option<kapsel_engine::index::IndexConfig>,
    /// `KAPSEL_NATS_URL`, `KAPSEL_NODE_ID`, `KAPSEL_PARTITIONS`, `KAPSEL_REPLICAS`.
    pub cluster: Option<kapsel_engine::cluster::ClusterConfig>,
}

/// A setting's text, when set and not empty.
fn text(value: &Option<String>) -> Option<String> {
    value.clone().filter(|value| !value.is_empty())
}

fn number<T: std::str::FromStr>(value: &Option<String>, variable: &'static str, default: T) -> Result<T, ConfigError> {
    match text(value) {
        Some(value) => value.trim().parse().map_err(|_| error(variable, format!("`{value}` is not a valid number"))),
        None => Ok(default),
    }
}

fn duration(value: &Option<String>, variable: &'static str, default_ms: u64) -> Result<u64, ConfigError> {
    match text(value) {
        Some(value) => parse_duration_ms(&value)
            .filter(|milliseconds| *milliseconds > 0)
            .ok_or_else(|| error(variable, format!("`{value}` is not a duration such as 500ms, 30s, 15m, 24h or 7d"))),
        None => Ok(default_ms),
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

/// The data directory: `KAPSEL_DATA_DIR`, else [`DATA_DIR_DEFAULT`].
pub fn data_directory(values: &Values) -> PathBuf {
    PathBuf::from(text(&values.data_dir).unwrap_or_else(|| DATA_DIR_DEFAULT.into()))
}

impl Settings {
    /// Validates `values` (a merged [`Configuration`]'s in production). Unset and empty values
    /// take their defaults; a wrong one is an error naming its variable, never a silent default.
    pub fn from_values(values: &Values) -> Result<Self, ConfigError> {
        let listen_text = text(&values.server_addr).unwrap_or_else(|| SERVER_ADDR_DEFAULT.into());
        let listen = listen_text.parse().map_err(|_| {
            error(VARIABLES.server_addr, format!("`{listen_text}` is not an address like 127.0.0.1:8080"))
        })?;
        let driver_text = text(&values.io_driver).unwrap_or_else(|| "auto".into());
        let io_driver = IoDriver::parse(&driver_text)
            .ok_or_else(|| error(VARIABLES.io_driver, format!("`{driver_text}` is not auto, uring or legacy")))?;
        let max_payload_bytes =
            number(&values.max_payload_bytes, VARIABLES.max_payload_bytes, kapsel_http::limits::PAYLOAD_BYTES_DEFAULT)?;
        let payload_bytes_max = (kapsel_wal::limits::RECORD_BODY_BYTES_MAX / 2) as u64;
        if !(1..=payload_bytes_max).contains(&max_payload_bytes) {
            return Err(error(VARIABLES.max_payload_bytes, format!("must be 1 to {payload_bytes_max}")));
        }
        let wal_segment_bytes =
            number(&values.wal_segment_bytes, VARIABLES.wal_segment_bytes, kapsel_wal::limits::SEGMENT_BYTES_DEFAULT)?;
        let segment_range = kapsel_wal::limits::SEGMENT_BYTES_MIN..=kapsel_wal::limits::SEGMENT_BYTES_MAX;
        if !segment_range.contains(&wal_segment_bytes) {
            return Err(error(
                VARIABLES.wal_segment_bytes,
                format!("must be {} to {}", segment_range.start(), segment_range.end()),
            ));
        }
        let destinations =
            kapsel_http::DestinationPolicy::parse_allow_list(&text(&values.allow_destinations).unwrap_or_default())
                .map_err(|message| error(VARIABLES.allow_destinations, message))?;
        Ok(Self {
            listen,
            data_directory: data_directory(values),
            shards: shards(values)?,
            io_driver,
            admin_token: text(&values.admin_token),
            max_payload_bytes,
            wal_segment_bytes,
            retention_ms: duration(&values.retention, VARIABLES.retention, limits::RETENTION_MS_DEFAULT)?,
            tls: tls(values)?,
            state_limits: state_limits(values)?,
            destinations,
            extra_ca_file: text(&values.extra_ca_file).map(PathBuf::from),
            index: index(values)?,
            cluster: cluster(values)?,
        })
    }
}

fn shards(values: &Values) -> Result<Option<usize>, ConfigError> {
    let Some(value) = text(&values.shards) else {
        return Ok(None);
    };
    let count: usize =
        value.trim().parse().map_err(|_| error(VARIABLES.shards, format!("`{value}` is not a number")))?;
    if !(1..=limits::SHARDS_MAX).contains(&count) {
        return Err(error(VARIABLES.shards, format!("must be 1 to {}", limits::SHARDS_MAX)));
    }
    Ok(Some(count))
}

fn tls(values: &Values) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let together = format!("{} and {} must be set together", VARIABLES.tls_cert, VARIABLES.tls_key);
    match (text(&values.tls_cert), text(&values.tls_key)) {
        (Some(certificate), Some(key)) => Ok(Some((PathBuf::from(certificate), PathBuf::from(key)))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(error(VARIABLES.tls_cert, together)),
        (None, Some(_)) => Err(error(VARIABLES.tls_key, together)),
    }
}

fn state_limits(values: &Values) -> Result<StateLimits, ConfigError> {
    let variables = VARIABLES;
    Ok(StateLimits {
        events_max: number(
            &values.events_in_memory_max,
            variables.events_in_memory_max,
            limits::EVENTS_IN_MEMORY_DEFAULT,
        )?
        .max(1),
        idempotency_keys_max: number(
            &values.idempotency_keys_max,
            variables.idempotency_keys_max,
            limits::IDEMPOTENCY_KEYS_DEFAULT,
        )?
        .max(1),
        idempotency_window_ms: duration(
            &values.idempotency_window,
            variables.idempotency_window,
            limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
        )?,
        payload_memory_bytes_max: number(
            &values.payload_memory_bytes,
            variables.payload_memory_bytes,
            limits::PAYLOAD_MEMORY_BYTES_DEFAULT,
        )?,
        terminal_events_max: number(
            &values.terminal_events_in_memory,
            variables.terminal_events_in_memory,
            limits::TERMINAL_EVENTS_IN_MEMORY_MAX,
        )?
        .max(1),
    })
}

fn index(values: &Values) -> Result<Option<kapsel_engine::index::IndexConfig>, ConfigError> {
    let max_connections =
        number(&values.database_max_connections, VARIABLES.database_max_connections, DATABASE_MAX_CONNECTIONS_DEFAULT)?;
    if !(2..=1000).contains(&max_connections) {
        return Err(error(
            VARIABLES.database_max_connections,
            "must be 2 to 1000 (one writes, the others serve queries)",
        ));
    }
    let Some(url) = text(&values.database_url) else {
        return Ok(None);
    };
    if !kapsel_engine::index::valid_url(&url) {
        return Err(error(VARIABLES.database_url, "is not a postgres:// URL or key=value connection string"));
    }
    Ok(Some(kapsel_engine::index::IndexConfig { url, max_connections }))
}

fn cluster(values: &Values) -> Result<Option<kapsel_engine::cluster::ClusterConfig>, ConfigError> {
    use kapsel_engine::cluster::{PARTITIONS_DEFAULT, PARTITIONS_MAX, REPLICAS_DEFAULT};
    let partitions = number(&values.partitions, VARIABLES.partitions, PARTITIONS_DEFAULT)?;
    if !(1..=PARTITIONS_MAX).contains(&partitions) {
        return Err(error(VARIABLES.partitions, format!("must be 1 to {PARTITIONS_MAX}")));
    }
    let replicas = number(&values.replicas, VARIABLES.replicas, REPLICAS_DEFAULT)?;
    if !(1..=5).contains(&replicas) {
        return Err(error(VARIABLES.replicas, "must be 1 to 5 (JetStream's limit)"));
    }
    let node = match text(&values.node_id) {
        Some(node) => node,
        None => host_name().unwrap_or_else(|| "kapsel".into()),
    };
    let valid_node = (1..=64).contains(&node.len())
        && node.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !valid_node {
        return Err(error(VARIABLES.node_id, format!("`{node}` is not 1 to 64 of A-Z a-z 0-9 _ -")));
    }
    let Some(urls) = text(&values.nats_url) else {
        return Ok(None);
    };
    let urls: Vec<String> = urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(String::from).collect();
    let valid_url = |url: &String| {
        ["nats://", "tls://"].iter().any(|scheme| url.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
    };
    if urls.is_empty() || !urls.iter().all(valid_url) {
        return Err(error(VARIABLES.nats_url, "must be comma-separated nats://host:port URLs"));
    }
    Ok(Some(kapsel_engine::cluster::ClusterConfig {
        urls,
        node,
        partitions,
        replicas,
        lease_ms: kapsel_engine::cluster::LEASE_MS_DEFAULT,
        skew_ms: kapsel_engine::cluster::SKEW_MS_DEFAULT,
    }))
}

/// The machine's host name (the default node id), from the kernel.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    (!name.is_empty()).then(|| name.chars().take(64).collect())
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
            VARIABLES.shards,
            format!("the data directory holds {existing} shards: set it to {existing} or leave it unset"),
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
    kapsel_wal::create_dir_all_durable(data_directory)?;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| std::io::Error::other(error.to_string()))?;
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated an admin token (set KAPSEL_ADMIN_TOKEN to choose one)");
    Ok(token)
}

/// Writes a private (0600) file atomically: a temporary file beside it, written and fsynced,
/// renamed over the name, then the directory fsynced. A crash leaves the old file or the new
/// one, never an empty or partial token.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings from environment variables alone.
    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        merged("", pairs, &[]).settings()
    }

    fn flags(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(variable, value)| (*variable, value.to_string())).collect()
    }

    fn file() -> Option<ConfigFile> {
        Some(ConfigFile { path: PathBuf::from("/etc/kapsel.toml"), named_by: Source::Flag })
    }

    /// A configuration from a file's text, an environment and flags.
    fn merged(toml: &str, environment: &[(&str, &str)], flag_values: &[(&'static str, &str)]) -> Configuration {
        let file_values = parse_file(toml, Path::new("/etc/kapsel.toml")).unwrap();
        let environment: HashMap<String, String> =
            environment.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Configuration::merge(file(), &file_values, &|name| environment.get(name).cloned(), &flags(flag_values)).unwrap()
    }

    // Cluster mode is on only with KAPSEL_NATS_URL; its settings are checked whether or not.
    #[test]
    fn cluster_settings_are_checked() {
        assert!(settings(&[]).unwrap().cluster.is_none());
        let cluster = settings(&[
            ("KAPSEL_NATS_URL", "nats://a:4222, nats://b:4222"),
            ("KAPSEL_NODE_ID", "node-1"),
            ("KAPSEL_PARTITIONS", "16"),
            ("KAPSEL_REPLICAS", "1"),
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(cluster.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!((cluster.node.as_str(), cluster.partitions, cluster.replicas), ("node-1", 16, 1));
        let refused = |pairs: &[(&str, &str)], variable: &str| {
            let error = settings(pairs).unwrap_err().to_string();
            assert!(error.contains(variable), "{error}");
        };
        let nats = ("KAPSEL_NATS_URL", "nats://a:4222");
        refused(&[nats, ("KAPSEL_NODE_ID", "bad id")], "KAPSEL_NODE_ID");
        refused(&[nats, ("KAPSEL_PARTITIONS", "0")], "KAPSEL_PARTITIONS");
        refused(&[nats, ("KAPSEL_PARTITIONS", "1025")], "KAPSEL_PARTITIONS");
        refused(&[nats, ("KAPSEL_REPLICAS", "6")], "KAPSEL_REPLICAS");
        refused(&[("KAPSEL_NATS_URL", "http://a:4222")], "KAPSEL_NATS_URL");
        // The index of a cluster is fed by the partitions' owners.
        assert!(settings(&[nats, ("DATABASE_URL", "postgres://k@db/k")]).is_ok());
    }

    // No configuration must give a working server: the documented defaults.
    #[test]
    fn defaults_need_no_configuration() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(defaults.data_directory, PathBuf::from("./data"));
        assert_eq!(defaults.io_driver, IoDriver::Auto);
        assert_eq!(defaults.max_payload_bytes, 10_485_760);
        assert_eq!(defaults.wal_segment_bytes, 67_108_864);
        assert_eq!(defaults.retention_ms, 7 * 86_400_000);
        assert!(defaults.tls.is_none() && defaults.admin_token.is_none() && defaults.shards.is_none());
        assert!(defaults.index.is_none());
    }

    // `--help` and `kapsel config` show the table's defaults; they must be the ones the parser
    // really uses, or the documentation lies.
    #[test]
    fn documented_defaults_are_the_real_ones() {
        let unset = format!("{:?}", settings(&[]).unwrap());
        for setting in SETTINGS {
            if let DefaultValue::Text(default) = setting.default {
                let explicit = format!("{:?}", settings(&[(setting.variable, default)]).unwrap());
                assert_eq!(explicit, unset, "{} default {default}", setting.variable);
            }
        }
    }

    // The names are derived by a rule operators can apply without looking them up.
    #[test]
    fn keys_and_flags_follow_the_variable_names() {
        for setting in SETTINGS {
            let expected = setting.variable.strip_prefix("KAPSEL_").unwrap_or(setting.variable).to_lowercase();
            assert_eq!(setting.key, expected);
            assert_eq!(setting.flag(), format!("--{}", expected.replace('_', "-")));
            assert_eq!(SETTINGS.iter().filter(|other| other.key == setting.key).count(), 1, "{}", setting.key);
            assert_ne!(setting.key, "config", "--config names the file");
        }
    }

    // A wrong value is an error naming the variable, never a silent default.
    #[test]
    fn bad_values_name_their_variable() {
        for (variable, value) in [
            ("SERVER_ADDR", "nowhere"),
            ("KAPSEL_SHARDS", "0"),
            ("KAPSEL_SHARDS", "many"),
            ("KAPSEL_IO_DRIVER", "fast"),
            ("KAPSEL_MAX_PAYLOAD_BYTES", "lots"),
            ("KAPSEL_MAX_PAYLOAD_BYTES", "0"),
            ("KAPSEL_WAL_SEGMENT_BYTES", "10"),
            ("KAPSEL_RETENTION", "1y"),
            ("KAPSEL_RETENTION", "0d"),
            ("KAPSEL_IDEMPOTENCY_WINDOW", "1y"),
            ("KAPSEL_TLS_CERT", "/only/cert.pem"),
            ("KAPSEL_TLS_KEY", "/only/key.pem"),
            ("KAPSEL_ALLOW_DESTINATIONS", "10.1.2.3/8"),
            ("KAPSEL_EVENTS_IN_MEMORY_MAX", "-1"),
            ("DATABASE_URL", "mysql://nope"),
            ("DATABASE_MAX_CONNECTIONS", "1"),
        ] {
            assert!(setting(variable).is_some(), "{variable} is not in the table");
            let failure = settings(&[(variable, value)]).unwrap_err();
            assert!(
                matches!(failure, ConfigError::Invalid { variable: named, .. } if named == variable),
                "{variable}={value}: {failure}"
            );
            assert!(failure.to_string().starts_with(variable), "{failure}");
        }
        assert_eq!(parse_duration_ms("24h"), Some(86_400_000));
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(settings(&[("KAPSEL_RETENTION", "36h")]).unwrap().retention_ms, 36 * 3_600_000);
    }

    // The promised order: defaults < file < environment < flags, each value knowing its layer.
    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let configuration = merged(
            "server_addr = \"127.0.0.1:1\"\nshards = 3\nio_driver = \"legacy\"\n",
            &[("SERVER_ADDR", "127.0.0.1:2"), ("KAPSEL_IO_DRIVER", "uring")],
            &[("SERVER_ADDR", "127.0.0.1:3")],
        );
        let settings = configuration.settings().unwrap();
        assert_eq!(settings.listen, "127.0.0.1:3".parse::<SocketAddr>().unwrap());
        assert_eq!(settings.io_driver, IoDriver::Uring);
        assert_eq!(settings.shards, Some(3));
        assert_eq!(configuration.source("SERVER_ADDR"), Source::Flag);
        assert_eq!(configuration.source("KAPSEL_IO_DRIVER"), Source::Environment);
        assert_eq!(configuration.source("KAPSEL_SHARDS"), Source::File);
        assert_eq!(configuration.source("KAPSEL_RETENTION"), Source::Default);
    }

    // Each setting reads its own field of the merged values, and nothing else does: the table,
    // the struct figment fills and the variable names come from one declaration.
    #[test]
    fn every_setting_reads_its_own_field() {
        for setting in SETTINGS {
            let configuration = merged("", &[(setting.variable, "x")], &[]);
            assert_eq!(setting.value(configuration.values()), Some("x"), "{}", setting.variable);
            let others = SETTINGS.iter().filter(|other| other.value(configuration.values()).is_some()).count();
            assert_eq!(others, 1, "{}", setting.variable);
            assert_eq!(configuration.source(setting.variable), Source::Environment);
        }
        let variables = format!("{VARIABLES:?}");
        assert!(SETTINGS
            .iter()
            .all(|setting| variables.contains(&format!("{}: \"{}\"", setting.key, setting.variable))));
    }

    // Values pass through the merge as the text given: a token with leading zeros or a number
    // that looks like a boolean is not reinterpreted on the way.
    #[test]
    fn values_are_merged_verbatim() {
        let configuration =
            merged("admin_token = \"0012\"\n", &[("RUST_LOG", "007")], &[("KAPSEL_IO_DRIVER", " true ")]);
        assert_eq!(configuration.values().admin_token.as_deref(), Some("0012"));
        assert_eq!(configuration.values().rust_log.as_deref(), Some("007"));
        assert_eq!(configuration.values().io_driver.as_deref(), Some(" true "));
    }

    // `VAR=` in a shell or unit file usually means "no value"; it must not hide the file's.
    #[test]
    fn an_empty_variable_does_not_hide_the_file() {
        let configuration = merged("shards = 2", &[("KAPSEL_SHARDS", "")], &[]);
        assert_eq!(configuration.settings().unwrap().shards, Some(2));
        assert_eq!(configuration.source("KAPSEL_SHARDS"), Source::File);
    }

    // An operator must be told which spelling in which layer to fix.
    #[test]
    fn errors_say_where_a_bad_value_was_set() {
        let from_file = merged("shards = 0", &[], &[]).settings().unwrap_err();
        assert_eq!(from_file.to_string(), "KAPSEL_SHARDS (set by `shards` in /etc/kapsel.toml): must be 1 to 256");
        let from_flag = merged("", &[], &[("KAPSEL_SHARDS", "x")]).settings().unwrap_err();
        assert_eq!(from_flag.to_string(), "KAPSEL_SHARDS (set by --shards): `x` is not a number");
        let from_environment = merged("", &[("KAPSEL_SHARDS", "x")], &[]).settings().unwrap_err();
        assert_eq!(from_environment.to_string(), "KAPSEL_SHARDS: `x` is not a number");
    }

    // TOML's kinds become the environment's text, so one parser validates every layer.
    #[test]
    fn file_values_become_environment_text() {
        let text = "max_payload_bytes = 1_048_576\nwal_segment_bytes = 0x10000\nretention = \"3d\"\n\
                    allow_destinations = [\"127.0.0.0/8\", \"::1/128\"]\nadmin_token = 'literal'\n";
        let values = parse_file(text, Path::new("k.toml")).unwrap();
        assert_eq!(values["KAPSEL_MAX_PAYLOAD_BYTES"], "1048576");
        assert_eq!(values["KAPSEL_WAL_SEGMENT_BYTES"], "65536");
        assert_eq!(values["KAPSEL_RETENTION"], "3d");
        assert_eq!(values["KAPSEL_ALLOW_DESTINATIONS"], "127.0.0.0/8,::1/128");
        assert_eq!(values["KAPSEL_ADMIN_TOKEN"], "literal");
        assert_eq!(parse_file("shards = true", Path::new("k.toml")).unwrap()["KAPSEL_SHARDS"], "true");
    }

    // A typo in the file must not be ignored: the key and its line are named.
    #[test]
    fn file_errors_name_the_key_and_line() {
        let path = Path::new("/etc/kapsel.toml");
        let unknown = parse_file("shards = 2\n\nshard = 3\n", path).unwrap_err().to_string();
        assert_eq!(
            unknown,
            "configuration file /etc/kapsel.toml: line 3: unknown setting `shard` (`kapsel --help` lists them)"
        );
        let float = parse_file("retention = 1.5", path).unwrap_err().to_string();
        assert!(float.contains("line 1") && float.contains("`retention` must be"), "{float}");
        let table = parse_file("[server]\naddr = \"x\"", path).unwrap_err().to_string();
        assert!(table.contains("unknown setting `server`"), "{table}");
        let logging = parse_file("log_format = \"pretty\"", path).unwrap();
        assert_eq!(logging.get("KAPSEL_LOG_FORMAT").map(String::as_str), Some("pretty"));
        let syntax = parse_file("shards = \"2", path).unwrap_err().to_string();
        assert!(syntax.starts_with("configuration file /etc/kapsel.toml: line 1"), "{syntax}");
    }

    // A syntax error must not echo the line: it may hold the database password.
    #[test]
    fn syntax_errors_do_not_echo_secrets() {
        let failure = parse_file("database_url = \"postgres://kapsel:hunter2@db/kapsel", Path::new("k.toml"));
        let message = failure.unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }

    // `kapsel config` is pasted into tickets and chats; secrets must never be in it.
    #[test]
    fn the_report_redacts_secrets_and_names_sources() {
        let configuration = merged(
            "database_url = \"postgres://kapsel:hunter2@db:5432/kapsel\"\n",
            &[("KAPSEL_ADMIN_TOKEN", "s3cret-token")],
            &[("KAPSEL_SHARDS", "2")],
        );
        let report = configuration.report();
        assert!(!report.contains("hunter2") && !report.contains("s3cret-token"), "{report}");
        let line = |variable: &str| {
            report.lines().find(|line| line.split_whitespace().next() == Some(variable)).unwrap().to_owned()
        };
        assert_eq!(
            line("DATABASE_URL").split_whitespace().collect::<Vec<_>>(),
            ["DATABASE_URL", "file", "postgres://kapsel:<redacted>@db:5432/kapsel"]
        );
        assert!(line("KAPSEL_ADMIN_TOKEN").ends_with("env      <redacted>"), "{report}");
        assert!(line("KAPSEL_SHARDS").ends_with("flag     2"), "{report}");
        assert!(line("KAPSEL_RETENTION").ends_with("default  7d"), "{report}");
        assert!(line("KAPSEL_TLS_CERT").ends_with("default  (unset)"), "{report}");
        assert!(report.contains("/etc/kapsel.toml (named by --config)"), "{report}");
        assert_eq!(report.lines().filter(|line| !line.starts_with('#')).count(), SETTINGS.len() + 1);
    }

    // Every form libpq accepts for a password must be hidden, erring towards hiding more.
    #[test]
    fn database_passwords_are_redacted_in_every_form() {
        for (url, shown) in [
            ("postgres://kapsel:pw@db/kapsel", "postgres://kapsel:<redacted>@db/kapsel"),
            ("postgresql://kapsel:p@ss/w@db:5432/kapsel", "postgresql://kapsel:<redacted>@db:5432/kapsel"),
            ("POSTGRES://u:pw@db", "POSTGRES://u:<redacted>@db"),
            ("postgres://kapsel@db/kapsel", "postgres://kapsel@db/kapsel"),
            (
                "postgres://db/kapsel?user=k&password=pw&sslmode=disable",
                "postgres://db/kapsel?user=k&password=<redacted>&sslmode=disable",
            ),
            ("host=db user=kapsel password=pw dbname=k", "host=db user=kapsel password=<redacted> dbname=k"),
            ("host=db password = 'p w\\' x' port=5432", "host=db password = <redacted> port=5432"),
            ("password=pw", "password=<redacted>"),
            ("host=db", "host=db"),
        ] {
            assert_eq!(redact_password(url), shown, "{url}");
        }
        let nats = setting("KAPSEL_NATS_URL").unwrap();
        assert_eq!(
            nats.shown("nats://kapsel:s3cret@n1:4222,nats://n2:4222"),
            format!("nats://kapsel:{REDACTED}@n1:4222,nats://n2:4222")
        );
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

    // The token is written through a temporary file renamed into place (nothing left beside
    // it), and a data directory several levels deep is created on the way.
    #[test]
    fn admin_token_is_written_atomically_into_a_new_directory() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("a").join("b").join("data");
        let token = admin_token(None, &data).unwrap();
        let names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, vec!["admin.token".to_string()]);
        assert_eq!(std::fs::read_to_string(data.join("admin.token")).unwrap(), format!("{token}\n"));
    }
}
