//! Fuzz target `count_tokens_estimator`: the oracle is `ccf_fuzz::count_tokens_estimator::check` (also replayed by stable tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccf_fuzz::count_tokens_estimator::check(data));
