//! The replay loop of the stable `crates/*/tests/fuzz_regressions.rs` tests, compiled into each of
//! them through `#[path]` (not part of the `ccf-fuzz` library: the fuzz targets do not need it).
//!
//! It runs a target's `check` on every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`, so a crash input the fuzzer once found stays fixed.

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

/// Runs `check` on every input of `target`, naming the file that fails.
pub fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no fuzz inputs for {target}: is fuzz/ present?"
    );
    for path in files {
        let data = std::fs::read(&path).expect("reading a fuzz input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
    }
}
