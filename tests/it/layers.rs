//! The folders of `engine/src` and `http/src` are layers whose imports run one way
//! (docs/ARCHITECTURE.md draws them): a file may name, through `crate::…`, only its own folder,
//! a folder below its own, or a leaf file. An import upwards would make a cycle between
//! folders; it fails here, naming the file and the path.

use std::path::{Path, PathBuf};

/// A crate's folders (and top-level files that act as one), highest first.
struct Layers {
    source: &'static str,
    order: &'static [&'static str],
    /// Folders beside each other: neither imports the other (`index` sits beside `state`,
    /// `cluster` beside `delivery`).
    beside: &'static [(&'static str, &'static str)],
    /// Top-level files everyone may use; they name no layer.
    leaves: &'static [&'static str],
}

const ENGINE: Layers = Layers {
    source: "engine/src",
    order: &["runtime", "admin", "delivery", "cluster", "shard", "index", "state", "model"],
    beside: &[("index", "state"), ("delivery", "cluster")],
    leaves: &["clock", "error", "limits"],
};

const HTTP: Layers = Layers {
    source: "http/src",
    order: &["server", "client", "outbound", "proto"],
    beside: &[("server", "client"), ("server", "outbound")],
    leaves: &["limits", "tls_error"],
};

fn rust_files(directory: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The layer a file belongs to: its folder, or its own name for a top-level file.
fn layer_of(layers: &Layers, root: &Path, file: &Path) -> Option<usize> {
    let relative = file.strip_prefix(root).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first);
    layers.order.iter().position(|layer| *layer == name)
}

/// Every `crate::<name>` a file's code names (comments included: a doc link upwards is a
/// reader's cycle too).
fn named_layers(layers: &Layers, text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for (index, layer) in layers.order.iter().enumerate() {
        let path = format!("crate::{layer}");
        let named = text.match_indices(&path).any(|(at, _)| {
            let after = text[at + path.len()..].chars().next();
            !after.is_some_and(|character| character.is_alphanumeric() || character == '_')
        });
        if named {
            found.push(index);
        }
    }
    found
}

fn upward_imports(layers: &Layers) -> (usize, Vec<String>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(layers.source);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for leaf in layers.leaves {
        let text = std::fs::read_to_string(root.join(format!("{leaf}.rs"))).unwrap();
        for named in named_layers(layers, &text) {
            wrong.push(format!("{leaf}.rs (a leaf) names crate::{}", layers.order[named]));
        }
    }
    for file in &files {
        let Some(own) = layer_of(layers, &root, file) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_layers(layers, &text) {
            let (own_name, named_name) = (layers.order[own], layers.order[named]);
            let beside =
                layers.beside.iter().any(|pair| *pair == (own_name, named_name) || *pair == (named_name, own_name));
            if named < own || (beside && named != own) {
                wrong.push(format!("{} names crate::{named_name}", file.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    (checked, wrong)
}

#[test]
fn engine_folders_import_only_downwards() {
    let (checked, wrong) = upward_imports(&ENGINE);
    assert!(checked >= 40, "only {checked} engine files found in layers");
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn http_folders_import_only_downwards() {
    let (checked, wrong) = upward_imports(&HTTP);
    assert!(checked >= 18, "only {checked} http files found in layers");
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

// The check itself must see an upward import: a file of `state` naming `crate::shard` is one.
#[test]
fn an_upward_import_is_seen() {
    assert_eq!(named_layers(&ENGINE, "use crate::shard::Shard;"), vec![4]);
    assert!(named_layers(&ENGINE, "use crate::shards_max;").is_empty());
}
