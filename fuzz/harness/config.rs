//! What the `config_file` fuzz target checks of the `kapsel.toml` reader (`src/config.rs` of the
//! binary, compiled into the target as the module `config`). The corpus replay,
//! `tests/it/fuzz_corpus.rs`, runs the same file through the real binary (`kapsel config
//! --config FILE`), which reaches the same functions, and checks what is visible from outside
//! the same way: the same prefix, no panic, no secret in the output.
//!
//! Every input is read after a first line that sets a database password, [`SECRET_LINE`]. The
//! properties, beyond "no panic": the password appears in no error message and not in
//! `kapsel config`'s report (the file's errors name the line without echoing it, and the report
//! hides the password), unless the input itself contains the password text; every key read is
//! a setting's variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{parse_file, ConfigFile, Configuration, Source, SETTINGS};

/// The password every input is read with.
pub const SECRET: &str = "fuzz-secret-Zq8Xw";

/// The line put before every input.
pub const SECRET_LINE: &str = "database_url = \"postgres://kapsel:fuzz-secret-Zq8Xw@db.internal/kapsel\"\n";

/// The text the reader sees for `input`: the secret line, then the input (UTF-8 only, as the
/// binary reads the file with `read_to_string`).
pub fn file_text(input: &[u8]) -> Option<String> {
    std::str::from_utf8(input).ok().map(|input| format!("{SECRET_LINE}{input}"))
}

/// The target: read, merge with no environment and no flags, validate, report.
pub fn config_file(input: &[u8]) {
    let Some(text) = file_text(input) else {
        return;
    };
    let echoes = |shown: &str| !text[SECRET_LINE.len()..].contains(SECRET) && shown.contains(SECRET);
    let path = Path::new("/etc/kapsel/kapsel.toml");
    let values = match parse_file(&text, path) {
        Ok(values) => values,
        Err(error) => {
            let message = error.to_string();
            assert!(!echoes(&message), "a file error shows the password: {message}");
            return;
        }
    };
    for variable in values.keys() {
        assert!(SETTINGS.iter().any(|setting| setting.variable == *variable), "unknown variable {variable}");
    }
    let file = Some(ConfigFile { path: PathBuf::from(path), named_by: Source::Flag });
    let configuration = match Configuration::merge(file, &values, &|_| None, &BTreeMap::new()) {
        Ok(configuration) => configuration,
        Err(error) => {
            let message = error.to_string();
            assert!(!echoes(&message), "a merge error shows the password: {message}");
            return;
        }
    };
    let report = configuration.report();
    assert!(!echoes(&report), "the report shows the password:\n{report}");
    if let Err(error) = configuration.settings() {
        let message = error.to_string();
        assert!(!echoes(&message), "a settings error shows the password: {message}");
    }
}
