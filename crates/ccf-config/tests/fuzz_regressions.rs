//! Replays the `config_loader` fuzz corpus and every crash input the fuzzer found
//! (`fuzz/corpus/config_loader/`, `fuzz/regressions/config_loader/`) through the oracle the
//! cargo-fuzz target uses (`fuzz/src/config_loader.rs`, compiled in here), on stable.

#[path = "../../../fuzz/src/config_loader.rs"]
mod config_loader;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn config_loader_inputs_replay_cleanly() {
    replay("config_loader", config_loader::check);
}
