//! Replays the committed corpus of the `config_file` fuzz target (`fuzz/corpus/config_file`)
//! and its crash inputs (`fuzz/artifacts/config_file/`) through the real binary. The target
//! compiles `src/config.rs` into itself (the binary has no library to call); this replay reaches
//! the same functions through `kapsel config --config FILE` (read, merge, validate, report) and
//! checks what is visible from outside with the same prefix and the same rules as
//! `fuzz/harness/config.rs`: no panic, and the database password in no output unless the input
//! itself holds its text. See docs/adr/0011-fuzzing-on-stable.md.

use std::path::Path;
use std::process::Command;

/// Kept equal to `SECRET` and `SECRET_LINE` in `fuzz/harness/config.rs`.
const SECRET: &str = "fuzz-secret-Zq8Xw";
const SECRET_LINE: &str = "database_url = \"postgres://kapsel:fuzz-secret-Zq8Xw@db.internal/kapsel\"\n";

// A hand-edited kapsel.toml must get an answer naming the problem, never a crash, and the
// answer must not echo the database password the file holds.
#[test]
fn config_file_corpus_replays_through_the_binary() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for folder in ["corpus", "artifacts"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join("config_file")) {
            inputs.extend(entries.map(|entry| entry.unwrap().path()).filter(|path| path.is_file()));
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no committed inputs for config_file");
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("kapsel.toml");
    for input in inputs {
        let bytes = std::fs::read(&input).unwrap();
        // The target reads only UTF-8, as the binary does (anything else fails to read).
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        std::fs::write(&file, format!("{SECRET_LINE}{text}")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kapsel"));
        command.args(["config", "--config"]).arg(&file).current_dir(scratch.path());
        for (variable, _) in std::env::vars() {
            if variable.starts_with("KAPSEL_") || variable.starts_with("DATABASE_") || variable == "SERVER_ADDR" {
                command.env_remove(variable);
            }
        }
        let output = command.env_remove("RUST_LOG").output().unwrap();
        let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let name = input.display();
        assert!(matches!(output.status.code(), Some(0 | 2)), "{name}: exit {:?}\n{shown}", output.status);
        assert!(!shown.contains("panicked"), "{name}: the binary panicked\n{shown}");
        assert!(text.contains(SECRET) || !shown.contains(SECRET), "{name}: the password is shown\n{shown}");
    }
}
