//! Fuzz target `usage_extractor`: the oracle is `ccf_fuzz::usage_extractor::check` (also replayed by stable tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccf_fuzz::usage_extractor::check(data));
