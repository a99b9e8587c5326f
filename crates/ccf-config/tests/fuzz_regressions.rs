//! Replays the `config_loader` fuzz corpus and every crash input the fuzzer found
//! (`fuzz/corpus/config_loader/`, `fuzz/regressions/config_loader/`) through the oracle the
//! cargo-fuzz target uses (`fuzz/src/config_loader.rs`, compiled in here), on stable.

#[path = "../../../fuzz/src/config_loader.rs"]
mod config_loader;

use std::path::{Path, PathBuf};

/// Every file in `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("listing a fuzz input directory").path();
            if path.is_file() && path.file_name().is_some_and(|name| name != "README.md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn config_loader_inputs_replay_cleanly() {
    let files = inputs("config_loader");
    assert!(!files.is_empty(), "no fuzz inputs: is fuzz/ present?");
    for path in files {
        let data = std::fs::read(&path).expect("reading a fuzz input");
        let outcome = std::panic::catch_unwind(|| config_loader::check(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
    }
}
