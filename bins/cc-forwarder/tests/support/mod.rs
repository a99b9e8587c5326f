//! Helpers shared by the process-level tests of this folder (each test file that needs them
//! declares `mod support;`).

pub mod gated_upstream;
