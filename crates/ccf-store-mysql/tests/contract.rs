//! The shared usage-store contract, run against the real MariaDB, one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

ccf_store::usage_store_contract!(common::fixture);
