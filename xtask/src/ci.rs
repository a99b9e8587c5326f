//! `cargo xtask ci`: the checks CI runs, in order, stopping at the first failure: format check,
//! `cargo deny`, clippy, the workspace's tests, its doc tests and the dashboard's vitest unit
//! tests.
//!
//! The run ends with one plain `ci: N passed, M failed, K skipped` line covering every test
//! binary and the web unit tests, with the skipped tests' names and reasons listed above it.
//! libtest has no "skipped at run time" outcome: a test missing a prerequisite (Chromium, tmux,
//! npm) calls `ccf_testkit::skip_unless_ci`, which panics under CI and otherwise returns (libtest
//! counts a pass) after writing `test<TAB>reason` to `skips-<pid>.tsv` in the folder named by
//! `CC_FORWARDER_TEST_SKIP_DIR`. This task gives the test steps a fresh, empty such folder and reads it back
//! at the end: each recorded skip moves one test from "passed" to "skipped". Under CI (`CI` set)
//! a recorded skip, or a step this task could not run, fails the run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The environment variable naming the folder where skipped tests are recorded (the same name
/// as `ccf_testkit::prerequisite::SKIP_DIR_VARIABLE`; xtask depends on no workspace crate).
const SKIP_DIR_VARIABLE: &str = "CC_FORWARDER_TEST_SKIP_DIR";

/// What a step runs.
enum Action {
    /// `cargo <args>`; when `counts_tests`, its `test result:` lines are added up.
    Cargo {
        /// Arguments to `cargo`.
        args: &'static [&'static str],
        /// Whether the step runs tests whose results are counted.
        counts_tests: bool,
    },
    /// The dashboard's vitest unit tests (`npm run test:unit` in `web/`).
    WebUnitTests,
}

/// One step of the CI run.
struct Step {
    /// Short name used in messages.
    name: &'static str,
    /// What it runs.
    action: Action,
}

impl Step {
    /// The command line shown before the step runs.
    fn shown(&self) -> String {
        match &self.action {
            Action::Cargo { args, .. } => format!("cargo {}", args.join(" ")),
            Action::WebUnitTests => format!("(cd web && npm run test:unit -- {VITEST_REPORTERS})"),
        }
    }
}

/// vitest's reporters: its usual output plus a JSON report, which is what gets counted.
const VITEST_REPORTERS: &str = "--reporter=default --reporter=json --outputFile.json=<report>";

const STEPS: &[Step] = &[
    Step {
        name: "format check",
        action: Action::Cargo {
            args: &["fmt", "--all", "--", "--check"],
            counts_tests: false,
        },
    },
    Step {
        // Offline checks of deny.toml (the advisory database needs GitHub: run
        // `cargo deny check advisories` where it is reachable).
        name: "cargo deny",
        action: Action::Cargo {
            args: &["deny", "check", "bans", "licenses", "sources"],
            counts_tests: false,
        },
    },
    Step {
        name: "clippy",
        action: Action::Cargo {
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
    },
    Step {
        // Includes the dashboard's browser test (tests/tests/it/dashboard.rs) and the terminal UI
        // test in tmux (bins/cc-forwarder/tests/tui.rs).
        name: "tests",
        action: Action::Cargo {
            args: &["test", "--workspace", "--all-targets", "--no-fail-fast"],
            counts_tests: true,
        },
    },
    Step {
        name: "doc tests",
        action: Action::Cargo {
            args: &["test", "--workspace", "--doc", "--no-fail-fast"],
            counts_tests: true,
        },
    },
    Step {
        name: "web unit tests",
        action: Action::WebUnitTests,
    },
];

/// Whether this process runs under CI: `CI` set to anything but empty, `0` or `false` (the rule
/// of `ccf_testkit::in_ci`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| ci_value_means_ci(&value))
}

fn ci_value_means_ci(value: &str) -> bool {
    let value = value.trim();
    !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Runs every step in order from the workspace root.
pub fn run(root: &Path) -> Result<()> {
    let ci = in_ci();
    let target = crate::dist::target_dir(root);
    let skip_dir = target.join("ci-skips");
    reset_folder(&skip_dir)?;
    if ci {
        println!("ci: CI is set: a missing prerequisite (Chromium, tmux, npm) fails the run");
    } else {
        println!(
            "ci: CI is not set: a test missing a prerequisite (Chromium, tmux, npm) is a counted \
             skip, listed at the end"
        );
    }
    let mut summary = Summary::default();
    for (index, step) in STEPS.iter().enumerate() {
        println!(
            "\n==> ci step {}/{}: {}\n$ {}",
            index + 1,
            STEPS.len(),
            step.name,
            step.shown()
        );
        flush_stdout();
        let outcome = match &step.action {
            Action::Cargo { args, counts_tests } => {
                run_cargo(root, args, *counts_tests, &skip_dir, &mut summary)
            }
            Action::WebUnitTests => run_web_unit_tests(root, &target, ci, &mut summary),
        };
        if let Err(error) = outcome {
            summary.recorded = read_recorded_skips(&skip_dir)?;
            summary.print();
            return Err(error.context(format!(
                "ci step `{}` failed: `{}`; later steps were not run",
                step.name,
                step.shown()
            )));
        }
    }
    summary.recorded = read_recorded_skips(&skip_dir)?;
    if ci && !summary.recorded.is_empty() {
        summary.print();
        bail!(
            "CI is set, yet {} test(s) recorded a skip in {}: under CI every prerequisite must be \
             installed (see .ci/run)",
            summary.recorded.len(),
            skip_dir.display()
        );
    }
    println!("\nci: every step passed");
    summary.print();
    Ok(())
}

/// Removes `folder` with everything in it, then creates it empty.
fn reset_folder(folder: &Path) -> Result<()> {
    match std::fs::remove_dir_all(folder) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot remove {}", folder.display()))
        }
    }
    std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))
}

/// Runs one cargo step; a test step gets the skip folder and has its results counted.
fn run_cargo(
    root: &Path,
    args: &[&str],
    counts_tests: bool,
    skip_dir: &Path,
    summary: &mut Summary,
) -> Result<()> {
    let cargo = crate::cargo_program();
    let mut command = Command::new(&cargo);
    command.args(args).current_dir(root);
    let status = if counts_tests {
        command.env(SKIP_DIR_VARIABLE, skip_dir);
        run_counting_tests(command, summary)?
    } else {
        command
            .status()
            .with_context(|| format!("could not start `{cargo}`"))?
    };
    if !status.success() {
        bail!("`cargo {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a test command, echoing its standard output while adding up its `test result:` lines and
/// noting the names of ignored tests.
fn run_counting_tests(mut command: Command, summary: &mut Summary) -> Result<ExitStatus> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(counts) = parse_test_result(&line) {
                summary.counts.add(counts);
            } else if let Some(skip) = parse_ignored_test(&line) {
                summary.ignored.push(skip);
            }
        }
    }
    flush_stdout();
    child.wait().context("waiting for cargo test")
}

/// Runs the dashboard's vitest unit tests and counts them; without npm this is a failure under CI
/// and a counted skip otherwise.
fn run_web_unit_tests(root: &Path, target: &Path, ci: bool, summary: &mut Summary) -> Result<()> {
    let web = root.join("web");
    if crate::web::npm_version().is_none() {
        let reason = "npm is not installed (install Node.js 20+ with npm)";
        if ci {
            bail!("the web unit tests cannot run under CI: {reason}");
        }
        println!("SKIPPED web unit tests: {reason} (CI is not set, so this is a counted skip)");
        summary.own.push(Skip {
            test: "web unit tests (web/src/*.test.ts, vitest)".to_string(),
            reason: reason.to_string(),
        });
        return Ok(());
    }
    crate::web::ensure_node_modules(&web)?;
    let report = target.join("ci-web").join("vitest.json");
    reset_folder(report.parent().unwrap_or(target))?;
    let status = Command::new(crate::web::npm_program())
        .args([
            "run",
            "test:unit",
            "--",
            "--reporter=default",
            "--reporter=json",
        ])
        .arg(format!("--outputFile.json={}", report.display()))
        .current_dir(&web)
        .status()
        .context("could not start `npm run test:unit`")?;
    flush_stdout();
    let text = match std::fs::read_to_string(&report) {
        Ok(text) => text,
        Err(error) if status.success() => {
            return Err(error).with_context(|| {
                format!("vitest passed but wrote no report at {}", report.display())
            })
        }
        Err(_) => bail!("`npm run test:unit` exited with {status} and wrote no report"),
    };
    let (counts, skipped) = parse_vitest_report(&text)?;
    summary.counts.add(counts);
    summary.ignored.extend(skipped);
    if !status.success() || counts.failed > 0 {
        bail!(
            "`npm run test:unit` exited with {status}: {} web unit test(s) failed",
            counts.failed
        );
    }
    if counts.passed + counts.ignored == 0 {
        bail!("vitest found no web unit tests (web/src/**/*.test.ts)");
    }
    Ok(())
}

fn flush_stdout() {
    // A failed flush of our own stdout is not worth failing CI over.
    let _ = std::io::stdout().flush();
}

/// Test counts from libtest's `test result:` lines or vitest's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests that were ignored (`#[ignore]`, vitest's `.skip` and `.todo`).
    pub ignored: u64,
}

impl TestCounts {
    fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// A test that did not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The test's name.
    pub test: String,
    /// Why it did not run.
    pub reason: String,
}

/// Everything the closing lines report.
#[derive(Debug, Default)]
struct Summary {
    /// What libtest and vitest counted (a recorded skip is among their passes).
    counts: TestCounts,
    /// Tests libtest or vitest reported as ignored (already in `counts.ignored`).
    ignored: Vec<Skip>,
    /// Skips the tests recorded in the skip folder (counted as passes by libtest).
    recorded: Vec<Skip>,
    /// Steps this task skipped itself (the web unit tests without npm), one count each.
    own: Vec<Skip>,
}

impl Summary {
    fn passed(&self) -> u64 {
        self.counts.passed.saturating_sub(count(&self.recorded))
    }

    fn skipped(&self) -> u64 {
        self.counts.ignored + count(&self.recorded) + count(&self.own)
    }

    /// The plain summary line printed at the end of a run.
    fn closing_line(&self) -> String {
        format!(
            "ci: {} passed, {} failed, {} skipped",
            self.passed(),
            self.counts.failed,
            self.skipped()
        )
    }

    /// One line per skipped test, recorded skips first.
    fn skipped_lines(&self) -> Vec<String> {
        let recorded = self.recorded.iter().chain(&self.own).map(|skip| {
            format!(
                "ci: SKIPPED {}: {} (prerequisite missing)",
                skip.test, skip.reason
            )
        });
        let ignored = self
            .ignored
            .iter()
            .map(|skip| format!("ci: IGNORED {}: {}", skip.test, skip.reason));
        recorded.chain(ignored).collect()
    }

    fn print(&self) {
        for line in self.skipped_lines() {
            println!("{line}");
        }
        println!("{}", self.closing_line());
        flush_stdout();
    }
}

fn count(skips: &[Skip]) -> u64 {
    u64::try_from(skips.len()).unwrap_or(u64::MAX)
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

/// Parses libtest's `test some::name ... ignored` (or `... ignored, reason`).
pub fn parse_ignored_test(line: &str) -> Option<Skip> {
    let rest = line.trim().strip_prefix("test ")?;
    let (test, outcome) = rest.split_once(" ... ")?;
    let reason = outcome.strip_prefix("ignored")?;
    let reason = reason.strip_prefix(", ").unwrap_or("#[ignore]");
    Some(Skip {
        test: test.to_string(),
        reason: reason.to_string(),
    })
}

/// Parses the lines of the `skips-*.tsv` files `ccf_testkit::skip_unless_ci` writes:
/// `test<TAB>reason`, one per skip.
pub fn parse_recorded_skips(text: &str) -> Vec<Skip> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split_once('\t') {
            Some((test, reason)) => Skip {
                test: test.trim().to_string(),
                reason: reason.trim().to_string(),
            },
            None => Skip {
                test: line.trim().to_string(),
                reason: "(no reason recorded)".to_string(),
            },
        })
        .collect()
}

/// Every skip recorded in `folder`'s `skips-*.tsv` files, in file-name order.
fn read_recorded_skips(folder: &Path) -> Result<Vec<Skip>> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", folder.display()))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("skips-") && name.ends_with(".tsv"))
        })
        .collect();
    files.sort();
    let mut skips = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        skips.extend(parse_recorded_skips(&text));
    }
    Ok(skips)
}

/// Counts and skipped test names from vitest's JSON report (Jest's format:
/// `numPassedTests`, `numFailedTests`, `numPendingTests`, `numTodoTests`, `testResults`).
pub fn parse_vitest_report(text: &str) -> Result<(TestCounts, Vec<Skip>)> {
    let report: Value = serde_json::from_str(text).context("vitest's report is not JSON")?;
    let number = |key: &str| -> Result<u64> {
        report
            .get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("vitest's report has no `{key}`"))
    };
    let counts = TestCounts {
        passed: number("numPassedTests")?,
        failed: number("numFailedTests")?,
        ignored: number("numPendingTests")? + number("numTodoTests")?,
    };
    let skipped = report
        .get("testResults")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|file| file.get("assertionResults").and_then(Value::as_array))
        .flatten()
        .filter_map(|test| {
            let status = test.get("status").and_then(Value::as_str)?;
            matches!(status, "pending" | "skipped" | "todo").then(|| Skip {
                test: format!(
                    "web: {}",
                    test.get("fullName")
                        .and_then(Value::as_str)
                        .unwrap_or("(unnamed)")
                ),
                reason: format!("vitest {status}"),
            })
        })
        .collect();
    Ok((counts, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(u64, u64, u64)>) {
        let actual = parse_test_result(line).map(|c| (c.passed, c.failed, c.ignored));
        assert_eq!(actual, expected, "line: {line:?}");
    }

    fn skip(test: &str, reason: &str) -> Skip {
        Skip {
            test: test.to_string(),
            reason: reason.to_string(),
        }
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
    fn parses_ignored_test_lines() {
        assert_eq!(
            parse_ignored_test("test slow::soak ... ignored"),
            Some(skip("slow::soak", "#[ignore]"))
        );
        assert_eq!(
            parse_ignored_test("test slow::soak ... ignored, needs a GPU"),
            Some(skip("slow::soak", "needs a GPU"))
        );
        assert_eq!(parse_ignored_test("test fast ... ok"), None);
        assert_eq!(parse_ignored_test("test result: ok. 1 passed"), None);
    }

    #[test]
    fn parses_recorded_skip_lines() {
        assert_eq!(
            parse_recorded_skips(
                "dashboard_renders\tchromium is not installed\n\ntui_test\ttmux is not installed\n"
            ),
            [
                skip("dashboard_renders", "chromium is not installed"),
                skip("tui_test", "tmux is not installed"),
            ]
        );
        assert_eq!(
            parse_recorded_skips("odd line without a tab\n"),
            [skip("odd line without a tab", "(no reason recorded)")]
        );
        assert!(parse_recorded_skips("").is_empty());
    }

    #[test]
    fn recorded_skips_move_passes_to_skipped_and_are_listed_above_the_closing_line() {
        let mut summary = Summary::default();
        // Two test binaries: 7 passes (2 of which returned early after recording a skip), 1
        // failure, 3 ignored; the web unit tests could not run.
        summary.counts.add(TestCounts {
            passed: 2,
            failed: 1,
            ignored: 0,
        });
        summary.counts.add(TestCounts {
            passed: 5,
            failed: 0,
            ignored: 3,
        });
        summary.recorded = vec![
            skip("dashboard_renders", "chromium is not installed"),
            skip("tui_test", "tmux is not installed"),
        ];
        summary.own = vec![skip("web unit tests", "npm is not installed")];
        summary.ignored = vec![skip("slow::soak", "#[ignore]")];
        assert_eq!(summary.closing_line(), "ci: 5 passed, 1 failed, 6 skipped");
        assert_eq!(
            summary.skipped_lines(),
            [
                "ci: SKIPPED dashboard_renders: chromium is not installed (prerequisite missing)",
                "ci: SKIPPED tui_test: tmux is not installed (prerequisite missing)",
                "ci: SKIPPED web unit tests: npm is not installed (prerequisite missing)",
                "ci: IGNORED slow::soak: #[ignore]",
            ]
        );
    }

    #[test]
    fn without_skips_the_closing_line_is_libtests_counts() {
        let mut summary = Summary::default();
        summary.counts.add(TestCounts {
            passed: 7,
            failed: 0,
            ignored: 0,
        });
        assert_eq!(summary.closing_line(), "ci: 7 passed, 0 failed, 0 skipped");
        assert!(summary.skipped_lines().is_empty());
    }

    #[test]
    fn reads_every_skip_file_of_the_folder_and_nothing_else() {
        let folder = std::env::temp_dir().join(format!("xtask-ci-skips-{}", std::process::id()));
        reset_folder(&folder).expect("fresh folder");
        assert!(read_recorded_skips(&folder).expect("read").is_empty());
        std::fs::write(folder.join("skips-20.tsv"), "b_test\tno tmux\n").expect("write");
        std::fs::write(
            folder.join("skips-10.tsv"),
            "a_test\tno chromium\nc_test\tno npm\n",
        )
        .expect("write");
        std::fs::write(folder.join("notes.txt"), "not\ta skip\n").expect("write");
        let skips = read_recorded_skips(&folder).expect("read");
        assert_eq!(
            skips,
            [
                skip("a_test", "no chromium"),
                skip("c_test", "no npm"),
                skip("b_test", "no tmux"),
            ]
        );
        // A new run starts from an empty folder.
        reset_folder(&folder).expect("reset");
        assert!(read_recorded_skips(&folder).expect("read").is_empty());
        std::fs::remove_dir_all(&folder).expect("clean up");
        assert!(read_recorded_skips(&folder).expect("missing").is_empty());
    }

    #[test]
    fn parses_vitest_json_reports() {
        let report = r#"{"numTotalTests": 4, "numPassedTests": 2, "numFailedTests": 1,
            "numPendingTests": 1, "numTodoTests": 0, "success": false,
            "testResults": [{"name": "src/format.test.ts", "assertionResults": [
                {"fullName": "formatCost rounds", "status": "passed"},
                {"fullName": "formatCost zero", "status": "failed"},
                {"fullName": "later", "status": "skipped"},
                {"fullName": "bytes", "status": "passed"}]}]}"#;
        let (counts, skipped) = parse_vitest_report(report).expect("parses");
        assert_eq!(
            counts,
            TestCounts {
                passed: 2,
                failed: 1,
                ignored: 1
            }
        );
        assert_eq!(skipped, [skip("web: later", "vitest skipped")]);
        assert!(parse_vitest_report("{}").is_err());
        assert!(parse_vitest_report("Tests 2 passed").is_err());
    }

    #[test]
    fn ci_is_detected_like_the_test_kit_does() {
        for value in ["true", "1", "yes", " TRUE "] {
            assert!(ci_value_means_ci(value), "{value:?}");
        }
        for value in ["", " ", "0", "false", "FALSE"] {
            assert!(!ci_value_means_ci(value), "{value:?}");
        }
    }

    #[test]
    fn steps_run_format_deny_clippy_tests_doc_tests_then_web_unit_tests() {
        let names: Vec<_> = STEPS.iter().map(|step| step.name).collect();
        assert_eq!(
            names,
            [
                "format check",
                "cargo deny",
                "clippy",
                "tests",
                "doc tests",
                "web unit tests"
            ]
        );
        assert!(STEPS[2].shown().ends_with("-D warnings"));
        let counted: Vec<_> = STEPS
            .iter()
            .filter(|step| {
                matches!(
                    step.action,
                    Action::Cargo {
                        counts_tests: true,
                        ..
                    } | Action::WebUnitTests
                )
            })
            .map(|step| step.name)
            .collect();
        assert_eq!(counted, ["tests", "doc tests", "web unit tests"]);
    }
}
