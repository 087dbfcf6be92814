//! The code map must stay true: every module, folder and file `docs/ARCHITECTURE.md` names at
//! the head of a bullet of a crate's section exists in that crate, and every path it spells out
//! exists in the repository. A rename that forgets the map fails here.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file stem and every folder name below `directory`.
fn names_below(directory: &Path, names: &mut Vec<String>) {
    for entry in std::fs::read_dir(directory).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            names.push(format!("{name}/"));
            names_below(&path, names);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            names.push(name.clone());
            names.push(format!("{name}.rs"));
        }
    }
}

/// The backticked names at the head of each bullet (`- \`a\`, \`b\` — …`).
fn bullet_names(line: &str) -> Vec<String> {
    let Some(rest) = line.strip_prefix("- ") else {
        return Vec::new();
    };
    let head = rest.split(" — ").next().unwrap_or(rest);
    head.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn the_code_map_names_only_what_exists() {
    let text = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut crate_source: Option<(String, Vec<String>)> = None;
    let mut checked = 0;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### `") {
            let folder = heading.split('`').next().unwrap().trim_end_matches('/');
            let source = root().join(folder).join("src");
            let source = if folder == "src" { root().join("src") } else { source };
            let mut names = Vec::new();
            if source.is_dir() {
                names_below(&source, &mut names);
            }
            crate_source = Some((folder.to_string(), names));
            continue;
        }
        if line.starts_with("Invariants") || line.starts_with("##") {
            // The map of a section ends where its invariants (or another section) begin.
            crate_source = None;
            continue;
        }
        let Some((folder, names)) = &crate_source else { continue };
        for name in bullet_names(line) {
            let name = name.trim();
            if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '/' || c == '.') || name.is_empty() {
                continue;
            }
            assert!(
                names.iter().any(|known| known == name),
                "ARCHITECTURE.md names `{name}` in {folder}/, which has no such module"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "the map was read ({checked} names checked)");
    // Paths spelled out anywhere in the file.
    for word in text.split('`').skip(1).step_by(2) {
        let looks_like_path = word.contains('/')
            && !word.contains(' ')
            && !word.contains('<')
            && (word.ends_with(".rs") || word.ends_with(".md") || word.ends_with('/'))
            && ["wal/", "http/", "engine/", "bench/", "src/", "tests/", "docs/", "deploy/"]
                .iter()
                .any(|top| word.starts_with(top));
        if looks_like_path {
            assert!(root().join(word).exists(), "ARCHITECTURE.md names `{word}`, which does not exist");
        }
    }
}
