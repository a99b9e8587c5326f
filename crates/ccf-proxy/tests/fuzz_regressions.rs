//! Replays the `header_rewriting` fuzz corpus and every crash input the fuzzer found
//! (`fuzz/corpus/header_rewriting/`, `fuzz/regressions/header_rewriting/`) through the oracle the
//! cargo-fuzz target uses (`fuzz/src/header_rewriting.rs`, compiled in here), on stable.

#[path = "../../../fuzz/src/header_rewriting.rs"]
mod header_rewriting;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn header_rewriting_inputs_replay_cleanly() {
    replay("header_rewriting", header_rewriting::check);
}
