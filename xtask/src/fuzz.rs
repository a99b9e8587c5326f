//! `cargo xtask fuzz [--seconds N] [--target T]...`: a bounded cargo-fuzz run of every fuzz
//! target (issue 9).
//!
//! Needs the nightly toolchain and `cargo-fuzz` (`cargo install --locked cargo-fuzz`). Builds
//! the targets in `fuzz/` with `cargo +nightly fuzz build` into `target/fuzz/`, then runs each
//! for N seconds (`-max_total_time`). libFuzzer starts from the committed seeds
//! (`fuzz/corpus/<target>/`) and the committed crash inputs (`fuzz/regressions/<target>/`) and
//! writes what it discovers to a scratch corpus in `target/fuzz/corpus/<target>/`, so the
//! committed directories only change when a human decides. When a target crashes (a panic, a
//! broken property, a leak, a timeout or running out of memory) its crash input is copied into
//! `fuzz/regressions/<target>/`, where the owning crate's stable `fuzz_regressions` test replays
//! it on every `cargo test`, and the task fails.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Every fuzz target (a `[[bin]]` of `fuzz/Cargo.toml`).
pub const TARGETS: [&str; 5] = [
    "sse_decoder",
    "usage_extractor",
    "count_tokens_estimator",
    "config_loader",
    "header_rewriting",
];

/// Extra time a target may run over `--seconds` (start-up, corpus loading) before it is killed.
const RUN_GRACE: Duration = Duration::from_secs(120);
/// Lines of a failing target's output shown again at the end.
const TAIL_LINES: usize = 40;

/// `cargo xtask fuzz` options.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Fuzz only this target (repeatable); default: all of them.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
}

/// What one target's run gave.
struct Outcome {
    target: String,
    executions: Option<u64>,
    crash_inputs: Vec<PathBuf>,
    failed: bool,
}

/// Builds and runs the fuzz targets.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let targets = select_targets(&args.targets)?;
    check_tools(root)?;
    let target_dir = root.join("target").join("fuzz");
    let target_dir_arg = target_dir.display().to_string();
    cargo_fuzz(root, &["build", "--target-dir", &target_dir_arg])?;

    let mut outcomes = Vec::new();
    for target in &targets {
        println!("\n==> fuzzing {target} for {} s", args.seconds);
        outcomes.push(run_target(root, &target_dir, target, args.seconds)?);
    }

    println!("\n| target | executions | result |\n|---|---|---|");
    for outcome in &outcomes {
        let result = if outcome.failed {
            format!(
                "**crash**: {}",
                outcome
                    .crash_inputs
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "ok".to_string()
        };
        let executions = outcome
            .executions
            .map_or_else(|| "?".to_string(), |count| count.to_string());
        println!("| {} | {executions} | {result} |", outcome.target);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.failed)
        .map(|outcome| outcome.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) {} crashed; the inputs are in fuzz/regressions/ (replayed by the \
             owning crates' fuzz_regressions tests): fix the code, keep the inputs",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The targets to run: the ones named (each must exist), or all.
fn select_targets(named: &[String]) -> Result<Vec<String>> {
    if named.is_empty() {
        return Ok(TARGETS.iter().map(|target| target.to_string()).collect());
    }
    for target in named {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "unknown fuzz target `{target}`; the targets are: {}",
                TARGETS.join(", ")
            );
        }
    }
    Ok(named.to_vec())
}

/// Fails with instructions when nightly or cargo-fuzz is missing.
fn check_tools(root: &Path) -> Result<()> {
    let works = nightly_cargo(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        bail!(
            "`cargo +nightly fuzz` does not run: install the nightly toolchain and cargo-fuzz \
             (`rustup toolchain install nightly && cargo install --locked cargo-fuzz`)"
        );
    }
    Ok(())
}

/// `cargo +nightly` from the workspace root, through rustup's proxy (not `$CARGO`, which names
/// the stable toolchain's own binary and would ignore `+nightly`).
fn nightly_cargo(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR");
    command
}

/// `cargo +nightly fuzz <args>`, failing when it fails.
fn cargo_fuzz(root: &Path, args: &[&str]) -> Result<()> {
    println!("$ cargo +nightly fuzz {}", args.join(" "));
    let status = nightly_cargo(root)
        .arg("fuzz")
        .args(args)
        .status()
        .context("could not start cargo +nightly fuzz")?;
    if !status.success() {
        bail!("`cargo +nightly fuzz {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs one target for `seconds`; copies any crash input into `fuzz/regressions/<target>/`.
fn run_target(root: &Path, target_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let scratch_corpus = target_dir.join("corpus").join(target);
    let artifacts = target_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&scratch_corpus)
        .with_context(|| format!("creating {}", scratch_corpus.display()))?;
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts)
            .with_context(|| format!("clearing {}", artifacts.display()))?;
    }
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let regressions = root.join("fuzz").join("regressions").join(target);

    // The binary `cargo fuzz build` made, run directly: `cargo fuzz run` would rebuild first
    // whenever a source file changed, and that time would count against the run's deadline.
    let binary = fuzz_binary(target_dir, target)?;
    let mut command = Command::new(&binary);
    // The first corpus directory is where libFuzzer writes: the scratch one.
    command.current_dir(root).arg(&scratch_corpus);
    for seeds in [
        root.join("fuzz").join("corpus").join(target),
        regressions.clone(),
    ] {
        if seeds.is_dir() {
            command.arg(seeds);
        }
    }
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    println!("$ {command:?}");
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    // libFuzzer reports on stderr: pass it through and keep what the summary needs.
    let reader = thread::spawn(move || {
        let mut tail = VecDeque::new();
        let mut executions = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Every new coverage point is a line: pass through the rest (pulses, stats, crashes).
            let progress =
                line.starts_with('#') && (line.contains("\tNEW ") || line.contains("\tREDUCE "));
            if !progress {
                eprintln!("{line}");
            }
            if let Some(count) = parse_executions(&line) {
                executions = Some(count);
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        (executions, tail)
    });
    let deadline = Instant::now() + Duration::from_secs(seconds) + RUN_GRACE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("fuzz target {target} did not stop in time");
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (executions, tail) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))?;

    let crash_inputs = keep_crash_inputs(&artifacts, &regressions)?;
    let failed = !status.success() || !crash_inputs.is_empty();
    if failed {
        eprintln!("\n--- last lines of {target} ---");
        for line in tail {
            eprintln!("{line}");
        }
    }
    Ok(Outcome {
        target: target.to_string(),
        executions,
        crash_inputs,
        failed,
    })
}

/// `target/fuzz/<host triple>/release/<target>`, as `cargo fuzz build` leaves it.
fn fuzz_binary(target_dir: &Path, target: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(target_dir)
        .with_context(|| format!("listing {}", target_dir.display()))?;
    for entry in entries {
        let candidate = entry?.path().join("release").join(target);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no fuzz binary for {target} under {}/<triple>/release/ (did cargo fuzz build run?)",
        target_dir.display()
    )
}

/// libFuzzer's execution count: `stat::number_of_executed_units: N` (final stats) or the
/// `#N` at the start of a progress line.
fn parse_executions(line: &str) -> Option<u64> {
    if let Some(count) = line.strip_prefix("stat::number_of_executed_units:") {
        return count.trim().parse().ok();
    }
    let rest = line.strip_prefix('#')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    if digits.is_empty() || !after.starts_with('\t') {
        return None;
    }
    digits.parse().ok()
}

/// Copies every libFuzzer artifact (`crash-*`, `leak-*`, `timeout-*`, `oom-*`, `slow-unit-*`
/// excepted) from `artifacts` into `regressions`; returns the new paths.
fn keep_crash_inputs(artifacts: &Path, regressions: &Path) -> Result<Vec<PathBuf>> {
    let mut kept = Vec::new();
    let entries =
        std::fs::read_dir(artifacts).with_context(|| format!("listing {}", artifacts.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if !is_crash_artifact(name) {
            continue;
        }
        std::fs::create_dir_all(regressions)
            .with_context(|| format!("creating {}", regressions.display()))?;
        let destination = regressions.join(name);
        std::fs::copy(&path, &destination)
            .with_context(|| format!("copying {} to {}", path.display(), destination.display()))?;
        println!("kept crash input {}", destination.display());
        kept.push(destination);
    }
    kept.sort();
    Ok(kept)
}

/// Whether a file libFuzzer wrote is an input that made the target fail.
fn is_crash_artifact(name: &str) -> bool {
    ["crash-", "leak-", "timeout-", "oom-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_fuzz_binary_an_oracle_and_seeds() {
        let root = crate::workspace_root();
        let manifest =
            std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml exists");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a [[bin]] of fuzz/Cargo.toml"
            );
            assert!(
                root.join(format!("fuzz/fuzz_targets/{target}.rs"))
                    .is_file(),
                "fuzz/fuzz_targets/{target}.rs is missing"
            );
            assert!(
                root.join(format!("fuzz/src/{target}.rs")).is_file(),
                "the oracle fuzz/src/{target}.rs is missing"
            );
            let seeds = std::fs::read_dir(root.join(format!("fuzz/corpus/{target}")))
                .map(|entries| entries.count())
                .unwrap_or(0);
            assert!(seeds > 0, "fuzz/corpus/{target} has no seed inputs");
        }
    }

    #[test]
    fn unknown_targets_are_refused_by_name() {
        let error = select_targets(&["sse".to_string()]).expect_err("not a target");
        assert!(error.to_string().contains("`sse`"));
        assert!(error.to_string().contains("sse_decoder"));
        assert_eq!(select_targets(&[]).expect("all").len(), TARGETS.len());
    }

    #[test]
    fn execution_counts_are_read_from_final_stats_and_progress_lines() {
        assert_eq!(
            parse_executions("stat::number_of_executed_units: 123456"),
            Some(123_456)
        );
        assert_eq!(
            parse_executions("#65536\tpulse  cov: 10 ft: 20 corp: 5/1Kb exec/s: 3000 rss: 40Mb"),
            Some(65_536)
        );
        assert_eq!(parse_executions("#x\tnope"), None);
        assert_eq!(parse_executions("INFO: Seed: 1"), None);
    }

    #[test]
    fn crash_artifacts_are_copied_into_the_regression_directory() {
        let scratch =
            std::env::temp_dir().join(format!("ccf-xtask-fuzz-test-{}", std::process::id()));
        let artifacts = scratch.join("artifacts");
        let regressions = scratch.join("regressions");
        std::fs::create_dir_all(&artifacts).expect("scratch dir");
        std::fs::write(artifacts.join("crash-abc"), b"boom").expect("write");
        std::fs::write(artifacts.join("slow-unit-def"), b"slow").expect("write");
        let kept = keep_crash_inputs(&artifacts, &regressions).expect("copy");
        assert_eq!(kept, vec![regressions.join("crash-abc")]);
        assert_eq!(
            std::fs::read(regressions.join("crash-abc")).expect("copied"),
            b"boom"
        );
        assert!(!regressions.join("slow-unit-def").exists());
        std::fs::remove_dir_all(&scratch).expect("cleanup");
    }
}
