//! Fuzz target `header_rewriting`: the oracle is `ccf_fuzz::header_rewriting::check` (also replayed by stable tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccf_fuzz::header_rewriting::check(data));
