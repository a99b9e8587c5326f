//! cc-forwarder's fuzz oracles, one module per cargo-fuzz target.
//!
//! Each module has one `check(data: &[u8])` that decodes the fuzzer's bytes into an input with a
//! small hand-written format (documented on the module) and panics when the code under test
//! panics or breaks a property. The same source files are compiled into ordinary stable tests
//! of the owning crates (`crates/*/tests/fuzz_regressions.rs`, through `#[path]`), which replay
//! `fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*`: that is why the formats are
//! hand-written instead of using `arbitrary`, and why these files use only the owning crate's
//! own dependencies.

pub mod chunks;
pub mod config_loader;
pub mod count_tokens_estimator;
pub mod header_rewriting;
pub mod sse_decoder;
pub mod usage_extractor;
