//! `cargo xtask ci`: the checks CI runs, in order, stopping at the first failure.
//!
//! The test steps' output is passed through line by line and their `test result:` lines are added
//! up, so the run ends with one plain `ci: N passed, N failed, N skipped` line covering every test
//! binary (the last binary cargo runs often has no tests, and its `0 passed` would otherwise be the
//! closing line).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// One step of the CI run.
struct Step {
    /// Short name used in messages.
    name: &'static str,
    /// Arguments to `cargo`.
    args: &'static [&'static str],
    /// Whether the step runs tests whose results are counted.
    counts_tests: bool,
}

const STEPS: &[Step] = &[
    Step {
        name: "format check",
        args: &["fmt", "--all", "--", "--check"],
        counts_tests: false,
    },
    Step {
        // Offline checks of deny.toml (the advisory database needs GitHub: run
        // `cargo deny check advisories` where it is reachable).
        name: "cargo deny",
        args: &["deny", "check", "bans", "licenses", "sources"],
        counts_tests: false,
    },
    Step {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        counts_tests: false,
    },
    Step {
        name: "tests",
        args: &["test", "--workspace", "--all-targets"],
        counts_tests: true,
    },
    Step {
        name: "doc tests",
        args: &["test", "--workspace", "--doc"],
        counts_tests: true,
    },
];

/// Runs every step in order from the workspace root.
pub fn run(root: &Path) -> Result<()> {
    let cargo = crate::cargo_program();
    let mut totals = TestCounts::default();
    for (index, step) in STEPS.iter().enumerate() {
        println!(
            "\n==> ci step {}/{}: {}\n$ cargo {}",
            index + 1,
            STEPS.len(),
            step.name,
            step.args.join(" ")
        );
        flush_stdout();
        let mut command = Command::new(&cargo);
        command.args(step.args).current_dir(root);
        let status = if step.counts_tests {
            run_counting_tests(command, &mut totals)?
        } else {
            command
                .status()
                .with_context(|| format!("could not start `{cargo}`"))?
        };
        if !status.success() {
            if totals.any() {
                println!("{}", totals.closing_line());
            }
            bail!(
                "ci step `{}` failed ({status}): `cargo {}`; later steps were not run",
                step.name,
                step.args.join(" ")
            );
        }
    }
    println!("\nci: every step passed");
    println!("{}", totals.closing_line());
    Ok(())
}

/// Runs a test command, echoing its standard output while adding up its `test result:` lines.
fn run_counting_tests(mut command: Command, totals: &mut TestCounts) -> Result<ExitStatus> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(counts) = parse_test_result(&line) {
                totals.add(counts);
            }
        }
    }
    flush_stdout();
    child.wait().context("waiting for cargo test")
}

fn flush_stdout() {
    // A failed flush of our own stdout is not worth failing CI over.
    let _ = std::io::stdout().flush();
}

/// Test counts from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests that were ignored.
    pub ignored: u64,
}

impl TestCounts {
    fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    fn any(&self) -> bool {
        self.passed + self.failed + self.ignored > 0
    }

    /// The plain summary line printed at the end of a run.
    fn closing_line(&self) -> String {
        format!(
            "ci: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
pub fn parse_test_result(line: &str) -> Option<TestCounts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_outcome, counts) = rest.split_once(". ")?;
    let mut result = TestCounts::default();
    let mut seen_passed = false;
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(number), Some(label)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => {
                result.passed = number;
                seen_passed = true;
            }
            "failed" => result.failed = number,
            "ignored" => result.ignored = number,
            _ => {}
        }
    }
    seen_passed.then_some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(u64, u64, u64)>) {
        let actual = parse_test_result(line).map(|c| (c.passed, c.failed, c.ignored));
        assert_eq!(actual, expected, "line: {line:?}");
    }

    #[test]
    fn parses_libtest_result_lines() {
        check(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            Some((12, 0, 1)),
        );
        check(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            Some((3, 2, 0)),
        );
        check(
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            Some((0, 0, 0)),
        );
        check("running 3 tests", None);
        check("test result: garbage", None);
        check("test foo ... ok", None);
    }

    #[test]
    fn closing_line_has_the_plain_counted_form() {
        let mut totals = TestCounts::default();
        totals.add(TestCounts {
            passed: 2,
            failed: 1,
            ignored: 0,
        });
        totals.add(TestCounts {
            passed: 5,
            failed: 0,
            ignored: 3,
        });
        assert_eq!(totals.closing_line(), "ci: 7 passed, 1 failed, 3 skipped");
    }

    #[test]
    fn steps_run_format_then_clippy_then_tests() {
        let names: Vec<_> = STEPS.iter().map(|step| step.name).collect();
        assert_eq!(
            names,
            ["format check", "cargo deny", "clippy", "tests", "doc tests"]
        );
        assert!(STEPS[2].args.ends_with(&["-D", "warnings"]));
    }
}
