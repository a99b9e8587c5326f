//! Replays the `header_rewriting` fuzz corpus and every crash input the fuzzer found
//! (`fuzz/corpus/header_rewriting/`, `fuzz/regressions/header_rewriting/`) through the oracle the
//! cargo-fuzz target uses (`fuzz/src/header_rewriting.rs`, compiled in here), on stable.

#[path = "../../../fuzz/src/header_rewriting.rs"]
mod header_rewriting;

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
fn header_rewriting_inputs_replay_cleanly() {
    let files = inputs("header_rewriting");
    assert!(!files.is_empty(), "no fuzz inputs: is fuzz/ present?");
    for path in files {
        let data = std::fs::read(&path).expect("reading a fuzz input");
        let outcome = std::panic::catch_unwind(|| header_rewriting::check(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
    }
}
