//! Fuzz target `sse_decoder`: the oracle is `ccf_fuzz::sse_decoder::check` (also replayed by stable tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccf_fuzz::sse_decoder::check(data));
