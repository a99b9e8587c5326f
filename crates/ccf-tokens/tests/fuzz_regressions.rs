//! Replays the fuzz corpus and every crash input the fuzzers found (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) through the same oracles the cargo-fuzz targets use
//! (`fuzz/src/<target>.rs`, compiled in here), on stable, in `cargo test`.

#[path = "../../../fuzz/src/chunks.rs"]
mod chunks;
#[path = "../../../fuzz/src/count_tokens_estimator.rs"]
mod count_tokens_estimator;
#[path = "../../../fuzz/src/sse_decoder.rs"]
mod sse_decoder;
#[path = "../../../fuzz/src/usage_extractor.rs"]
mod usage_extractor;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

use replay::replay;

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
