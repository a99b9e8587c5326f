//! Tests that need something from outside the workspace (Chromium, tmux, a capability of root):
//! under CI a missing prerequisite is a failure, never a pass; outside CI the test is skipped
//! *visibly*.
//!
//! libtest has no "skipped at run time" outcome and captures a test's output, so a test that
//! returns early would count as passed and its message would vanish. [`skip_unless_ci`] therefore
//! also writes one line per skip into the folder named by [`SKIP_DIR_VARIABLE`] (set by
//! `cargo xtask ci`), which reads them back to count the skips, subtract them from the passes and
//! list the skipped tests' names above its closing line.
//!
//! ```no_run
//! fn browser_available() -> bool { false }
//! #[test]
//! fn dashboard_renders() {
//!     if !browser_available() {
//!         ccf_testkit::skip_unless_ci("dashboard_renders", "chromium is not installed");
//!         return;
//!     }
//!     // ... the real test ...
//! }
//! ```

use std::io::Write as _;
use std::path::PathBuf;

/// The environment variable naming the folder where skipped tests are recorded. Not `CCF_...`:
/// that prefix is the forwarder's own configuration, and the binaries under test inherit it.
pub const SKIP_DIR_VARIABLE: &str = "CC_FORWARDER_TEST_SKIP_DIR";

/// Whether this process runs under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

/// Records that `test` could not run because of `reason`.
///
/// Under CI this panics with the reason (the test fails). Outside CI it prints a `SKIPPED` line on
/// standard error and appends `test<TAB>reason` to a file in `$CC_FORWARDER_TEST_SKIP_DIR` when that is
/// set; the caller then returns early.
#[track_caller]
pub fn skip_unless_ci(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test} cannot run under CI: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (CI is not set, so this is a counted skip, not a failure)");
    let Some(folder) = std::env::var_os(SKIP_DIR_VARIABLE).map(PathBuf::from) else {
        return;
    };
    if std::fs::create_dir_all(&folder).is_err() {
        return;
    }
    // One file per process: concurrent test binaries never interleave within a line.
    let file = folder.join(format!("skips-{}.tsv", std::process::id()));
    let line = format!(
        "{}\t{}\n",
        test.replace(['\t', '\n'], " "),
        reason.replace(['\t', '\n'], " ")
    );
    if let Ok(mut out) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = out.write_all(line.as_bytes());
    }
}
