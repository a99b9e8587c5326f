//! Replays the fuzz corpus and every crash input the fuzzers found (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) through the same oracles the cargo-fuzz targets use
//! (`fuzz/src/<target>.rs`, compiled in here), on stable, in `cargo test`.

#[path = "../../../fuzz/src/count_tokens_estimator.rs"]
mod count_tokens_estimator;
#[path = "../../../fuzz/src/sse_decoder.rs"]
mod sse_decoder;
#[path = "../../../fuzz/src/usage_extractor.rs"]
mod usage_extractor;

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
fn replay(target: &str, check: fn(&[u8])) {
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

#[test]
fn sse_decoder_inputs_replay_cleanly() {
    replay("sse_decoder", sse_decoder::check);
}

#[test]
fn usage_extractor_inputs_replay_cleanly() {
    replay("usage_extractor", usage_extractor::check);
}

#[test]
fn count_tokens_estimator_inputs_replay_cleanly() {
    replay("count_tokens_estimator", count_tokens_estimator::check);
}
