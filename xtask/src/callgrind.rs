//! `cargo xtask callgrind`: the forwarder's user-space instructions per request (issue #19),
//! the method of docs/benchmarks.md ("Where the time goes per request") as one command.
//!
//! Instruction counts are repeatable on a shared, loaded machine where wall-clock figures are
//! not. For each scenario (JSON with usage recording off, JSON with usage on (SQLite), SSE with
//! usage on) the forwarder runs twice under `valgrind --tool=callgrind` in front of the test kit's
//! mock upstream: once serving `--requests + 20` requests from `ccf-loadgen --concurrency 1`, once
//! serving 20, then SIGTERM. The difference divided by `--requests` is the cost of one request:
//! start-up, migrations, warm-up and shutdown cancel out. Valgrind counts user-space instructions
//! only: system calls (the socket reads and writes) are not in the figures. Two more scenarios
//! (JSON and SSE) measure `ccf-floor-proxy` the same way: the cheapest proxy hyper and tokio
//! make, with nothing of the forwarder's own, the floor under the forwarder's figures (issue 19
//! part 17). `--only` picks scenarios.
//!
//! Writes `target/bench/callgrind.json`, keeps each longer run's profile as
//! `target/bench/callgrind-<scenario>.out` and the shorter one's as `...-short.out`
//! (`callgrind_annotate --inclusive=yes <file>`), and subtracts the two per function into
//! `target/bench/callgrind-<scenario>-per-request.txt`: one request's instructions by function,
//! inclusive and exclusive, without the start-up (certificate parsing, migrations) that a whole
//! profile is dominated by.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::{cargo_build, free_port, target_dir, Proc, TempDir};

/// Requests every run serves before the measured ones (also the whole shorter run).
const BASE_REQUESTS: u64 = 20;
/// How long the forwarder may take to exit after SIGTERM under valgrind.
const EXIT_WITHIN: Duration = Duration::from_secs(120);

/// `cargo xtask callgrind` options.
#[derive(Debug, clap::Args)]
pub struct CallgrindArgs {
    /// Measured requests per scenario (the longer run serves this many more than the shorter).
    #[arg(long, default_value_t = 200)]
    requests: u64,
    /// Cargo profile the forwarder is built with (`release`, or `dist` as shipped: fat LTO,
    /// a long link).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Measure only these scenarios (comma-separated: json_usage_off, json_usage_on,
    /// sse_usage_on, json_floor, sse_floor); all by default. `callgrind.json` then holds only
    /// these.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use the binaries already built (`target/<profile>/cc-forwarder`, the test kit's in
    /// `target/release`).
    #[arg(long)]
    no_build: bool,
}

/// One measured configuration.
struct Scenario {
    name: &'static str,
    mode: &'static str,
    proxy: Proxy,
}

/// What serves the requests of a scenario.
#[derive(Clone, Copy)]
enum Proxy {
    /// The forwarder, with usage recording on (SQLite) or off.
    Forwarder { usage: bool },
    /// `ccf-floor-proxy`: hyper and tokio forwarding with nothing of the forwarder's own, the
    /// floor under the forwarder's figures (issue 19).
    Floor,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "json_usage_off",
        mode: "json",
        proxy: Proxy::Forwarder { usage: false },
    },
    Scenario {
        name: "json_usage_on",
        mode: "json",
        proxy: Proxy::Forwarder { usage: true },
    },
    Scenario {
        name: "sse_usage_on",
        mode: "sse",
        proxy: Proxy::Forwarder { usage: true },
    },
    Scenario {
        name: "json_floor",
        mode: "json",
        proxy: Proxy::Floor,
    },
    Scenario {
        name: "sse_floor",
        mode: "sse",
        proxy: Proxy::Floor,
    },
];

/// Runs every scenario and prints instructions per request.
pub fn run(root: &Path, args: &CallgrindArgs) -> Result<()> {
    if Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |status| !status.success())
    {
        bail!("valgrind is not installed (apt-get install valgrind)");
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if let Some(unknown) = args.only.iter().find(|name| {
        !SCENARIOS
            .iter()
            .any(|scenario| scenario.name == name.as_str())
    }) {
        bail!("--only: no scenario is named {unknown}");
    }
    if !args.no_build {
        cargo_build(
            root,
            &["build", "--profile", &args.profile, "-p", "cc-forwarder"],
        )?;
        cargo_build(root, &["build", "--release", "-p", "ccf-testkit", "--bins"])?;
    }
    let bin = target_dir(root).join("release");
    let forwarder = target_dir(root).join(&args.profile).join("cc-forwarder");
    let out_dir = target_dir(root).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = TempDir::new("ccf-callgrind")?;
    let stop = AtomicBool::new(false);
    let mock_port = free_port()?;
    let mut mock = Proc::spawn(
        "mock",
        Command::new(bin.join("ccf-mock-upstream")).args(["--port", &mock_port.to_string()]),
    )?;
    mock.wait_listening(mock_port, &stop)?;

    let mut results = BTreeMap::new();
    for scenario in SCENARIOS.iter().filter(|scenario| {
        args.only.is_empty() || args.only.iter().any(|name| name == scenario.name)
    }) {
        let mut totals = Vec::new();
        for requests in [BASE_REQUESTS + args.requests, BASE_REQUESTS] {
            let run = Run {
                forwarder: &forwarder,
                floor: &bin.join("ccf-floor-proxy"),
                loadgen: &bin.join("ccf-loadgen"),
                dir: &work.path.join(format!("{}-{requests}", scenario.name)),
                mock_port,
                stop: &stop,
            };
            let (total, profile) = run.measure(scenario, requests)?;
            let suffix = if requests > BASE_REQUESTS {
                ""
            } else {
                "-short"
            };
            let kept = out_dir.join(format!("callgrind-{}{suffix}.out", scenario.name));
            std::fs::copy(&profile, &kept)
                .with_context(|| format!("keeping {}", kept.display()))?;
            totals.push(total);
        }
        let long = out_dir.join(format!("callgrind-{}.out", scenario.name));
        let short = out_dir.join(format!("callgrind-{}-short.out", scenario.name));
        let per_request = per_request_profile(&long, &short, args.requests)?;
        let table = out_dir.join(format!("callgrind-{}-per-request.txt", scenario.name));
        std::fs::write(&table, per_request)
            .with_context(|| format!("writing {}", table.display()))?;
        let per_request = totals[0].saturating_sub(totals[1]) / args.requests;
        println!(
            "{}: {per_request} instructions per request ({} - {} over {} requests)",
            scenario.name, totals[0], totals[1], args.requests
        );
        results.insert(
            scenario.name,
            json!({
                "instructions_per_request": per_request,
                "total_long_run": totals[0],
                "total_short_run": totals[1],
            }),
        );
    }
    mock.stop();
    let report = json!({
        "profile": args.profile,
        "requests": args.requests,
        "scenarios": results,
    });
    let path = out_dir.join("callgrind.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One run under callgrind: the forwarder or the floor.
struct Run<'a> {
    forwarder: &'a Path,
    floor: &'a Path,
    loadgen: &'a Path,
    dir: &'a Path,
    mock_port: u16,
    stop: &'a AtomicBool,
}

impl Run<'_> {
    /// Serves `requests` requests of `scenario` under callgrind; the instructions counted and the
    /// profile's path.
    fn measure(&self, scenario: &Scenario, requests: u64) -> Result<(u64, PathBuf)> {
        std::fs::create_dir_all(self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let port = free_port()?;
        let profile = self.dir.join("callgrind.out");
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", profile.display()));
        match scenario.proxy {
            Proxy::Forwarder { usage } => {
                let config = self.dir.join("forwarder.yaml");
                std::fs::write(&config, self.config(port, usage))
                    .with_context(|| format!("writing {}", config.display()))?;
                command
                    .arg(self.forwarder)
                    .arg("--config")
                    .arg(&config)
                    .arg("--no-tui");
            }
            Proxy::Floor => {
                command
                    .arg(self.floor)
                    .args(["--port", &port.to_string()])
                    .args(["--upstream", &format!("127.0.0.1:{}", self.mock_port)]);
            }
        }
        let mut proxy = Proc::spawn(
            scenario.name,
            command
                .current_dir(self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        proxy.wait_listening(port, self.stop)?;
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let output = Command::new(self.loadgen)
            .args(["--mode", scenario.mode])
            .args(["--target", &target.to_string()])
            .args(["--concurrency", "1"])
            .args(["--requests", &requests.to_string()])
            // Bounded by the request count, not by time: valgrind makes the first ones slow.
            .args(["--duration", "600"])
            .args(["--timeout", "60"])
            .output()
            .context("running ccf-loadgen")?;
        let report: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("ccf-loadgen's output ({})", output.status))?;
        let ok = report.get("ok").and_then(Value::as_u64).unwrap_or(0);
        if !output.status.success() || ok != requests {
            bail!("ccf-loadgen through {} failed: {report}", scenario.name);
        }
        proxy.terminate(EXIT_WITHIN)?;
        let text = std::fs::read_to_string(&profile)
            .with_context(|| format!("reading {}", profile.display()))?;
        let total = total_instructions(&text)
            .with_context(|| format!("no instruction total in {}", profile.display()))?;
        Ok((total, profile))
    }

    /// The forwarder's configuration: as in `cargo xtask bench`.
    fn config(&self, port: u16, usage: bool) -> String {
        format!(
            "server:\n  host: \"127.0.0.1\"\n  port: {port}\n\
             logging:\n  level: warn\n\
             web:\n  enabled: false\n\
             tui:\n  enabled: false\n\
             health:\n  check_interval: 300s\n\
             usage_tracking:\n  enabled: {usage}\n  database:\n    type: sqlite\n    path: \"{}\"\n\
             endpoints:\n  - name: mock\n    url: http://127.0.0.1:{}\n    token: bench-token\n",
            self.dir.join("usage.db").display(),
            self.mock_port
        )
    }
}

/// Functions shown per table of the per-request profile.
const TOP_FUNCTIONS: usize = 80;

/// One request's instructions by function: the long run's profile minus the short run's, divided
/// by the requests between them, inclusive and exclusive, largest first.
fn per_request_profile(long: &Path, short: &Path, requests: u64) -> Result<String> {
    let mut text = String::new();
    for inclusive in [true, false] {
        let long_counts = annotate(long, inclusive)?;
        let short_counts = annotate(short, inclusive)?;
        let mut rows: Vec<(i64, &str)> = long_counts
            .iter()
            .map(|(name, count)| {
                let base = short_counts.get(name).copied().unwrap_or(0);
                let delta = i64::try_from(*count).unwrap_or(i64::MAX)
                    - i64::try_from(base).unwrap_or(i64::MAX);
                (delta / i64::try_from(requests).unwrap_or(1), name.as_str())
            })
            .filter(|(delta, _)| *delta != 0)
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        text.push_str(if inclusive {
            "# instructions per request, inclusive (callees counted)\n"
        } else {
            "\n# instructions per request, exclusive (own code only)\n"
        });
        for (delta, name) in rows.iter().take(TOP_FUNCTIONS) {
            text.push_str(&format!("{delta:>10}  {name}\n"));
        }
    }
    Ok(text)
}

/// Instructions by function of a profile, from `callgrind_annotate` (every function: no
/// threshold).
fn annotate(profile: &Path, inclusive: bool) -> Result<BTreeMap<String, u64>> {
    let output = Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .arg("--threshold=100")
        .arg(profile)
        .output()
        .context("running callgrind_annotate (part of valgrind)")?;
    if !output.status.success() {
        bail!("callgrind_annotate {} failed", profile.display());
    }
    Ok(annotated_counts(&String::from_utf8_lossy(&output.stdout)))
}

/// The `count (percent) file:function` lines of `callgrind_annotate`'s output, summed by function
/// (the file part, which differs between inlined copies, dropped).
fn annotated_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, function)) = rest.trim_start().split_once(") ") else {
            continue;
        };
        let function = function.trim_start();
        if function.starts_with("PROGRAM TOTALS") {
            continue;
        }
        let function = function.split(" [").next().unwrap_or(function);
        let name = function.split_once(':').map_or(function, |(_, name)| name);
        *counts.entry(name.to_string()).or_insert(0) += count;
    }
    counts
}

/// The `summary:` (or `totals:`) line of a callgrind profile: instructions executed.
fn total_instructions(profile: &str) -> Option<u64> {
    profile.lines().find_map(|line| {
        line.strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_of_a_profile() {
        let profile = "version: 1\ncreator: callgrind-3.22.0\nevents: Ir\nfn=(1) main\n0 5\nsummary: 123456789\n";
        assert_eq!(total_instructions(profile), Some(123_456_789));
        assert_eq!(total_instructions("totals: 42\n"), Some(42));
        assert_eq!(total_instructions("events: Ir\n"), None);
    }

    #[test]
    fn reads_functions_of_an_annotation_summed_over_files() {
        let text = "98,259,149 (100.0%)  PROGRAM TOTALS\n\
            11,450,098 (11.65%)  ???:rustls_pki_types::base64::decode_public [/x/cc-forwarder]\n\
             4,948,485 ( 5.04%)  ./malloc/./malloc/malloc.c:_int_free [/lib/libc.so.6]\n\
                 1,000 ( 0.01%)  ./malloc/arena.c:_int_free\n\
            Ir  file:function\n";
        let counts = annotated_counts(text);
        assert_eq!(counts.get("_int_free"), Some(&4_949_485));
        assert_eq!(
            counts.get("rustls_pki_types::base64::decode_public"),
            Some(&11_450_098)
        );
        assert_eq!(counts.len(), 2);
    }
}
