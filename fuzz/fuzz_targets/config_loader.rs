//! Fuzz target `config_loader`: the oracle is `ccf_fuzz::config_loader::check` (also replayed by stable tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccf_fuzz::config_loader::check(data));
