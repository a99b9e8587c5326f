//! `cargo xtask bench [--quick]`: the forwarder's performance harness (issue 8).
//!
//! Builds the forwarder (`dist` profile by default: what ships) and the test kit (`release`),
//! starts two mock upstreams (record off: one fast, one paced at 64
//! deltas every 20 ms) and three forwarders (usage tracking on SQLite, usage tracking off, and a
//! third, usage on, in front of the paced mock), all on loopback. Then, over several rounds and
//! alternating the order inside each round, it runs `ccf-loadgen` directly against the mock and
//! through each forwarder, and reports medians across rounds: added latency at concurrency 1,
//! requests/s at concurrency 64 (JSON and SSE) and the ratio to direct, added TTFB and
//! inter-event gap on paced streams, 1,000 concurrent paced streams, RSS (idle, peak) and CPU
//! seconds per 10,000 requests (from `/proc/<pid>/stat`).
//!
//! nginx runs in the same rounds as a comparison target (issue #19): Debian's nginx (installed
//! with `apt-get` when missing, saying why), one worker, a plain reverse proxy with keep-alive
//! to the same mocks (`proxy_buffering off` so streams pass through as they come). The table
//! shows its figures next to the forwarder's and the forwarder/nginx ratios. Without nginx
//! (not installable here) its column shows `-`.
//!
//! `ccf-floor-proxy` (the test kit's) runs in the same rounds too, for the JSON and SSE
//! scenarios: the cheapest proxy hyper and tokio make, forwarding to the fast mock with nothing
//! of the forwarder's own, the floor under the forwarder's cost. A second table sets it beside
//! nginx and the forwarder with usage off.
//!
//! Writes `target/bench/results.json` and `target/bench/results.md` and prints the table.
//! Every child is killed on every way out (its `Drop`), every load run is bounded in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{
    cargo_build, free_port, machine, proc_status_number, target_dir, Proc, TempDir,
};
use serde_json::{json, Value};

/// Extra time a load run may take over its nominal duration before it is killed.
const RUN_GRACE: Duration = Duration::from_secs(60);
/// Paced stream: deltas per message and delay between two events.
const PACED_DELTAS: u32 = 64;
const PACED_DELAY_MS: u32 = 20;
/// The "many streams" scenario.
const MANY_STREAMS: u32 = 1_000;

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (2 rounds, short scenarios): checks the harness, not for published figures.
    #[arg(long)]
    quick: bool,
    /// Number of interleaved rounds (default 3, or 2 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Cargo profile the forwarder is built with: `dist` (fat LTO, one codegen unit: what
    /// `cargo xtask dist` ships) or `release` (faster to build). The mock and the load generator
    /// are always built with `release`.
    #[arg(long, default_value = "dist")]
    profile: String,
}

/// Durations and sizes of one run.
struct Plan {
    rounds: u32,
    seconds: f64,
    paced_seconds: f64,
    warmup: u32,
}

/// Runs the whole benchmark.
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl+C handler")?;
    }
    let plan = if args.quick {
        Plan {
            rounds: args.rounds.unwrap_or(2),
            seconds: 1.5,
            paced_seconds: 3.0,
            warmup: 20,
        }
    } else {
        Plan {
            rounds: args.rounds.unwrap_or(3),
            seconds: 5.0,
            paced_seconds: 6.0,
            warmup: 100,
        }
    };
    let started = Instant::now();
    build(root, &args.profile)?;
    let bin = target_dir(root).join("release");
    let forwarder_bin = target_dir(root).join(&args.profile).join("cc-forwarder");
    let out_dir = target_dir(root).join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = TempDir::new("ccf-bench")?;

    // Upstreams.
    let fast_port = free_port()?;
    let paced_port = free_port()?;
    let mut fast_mock = Proc::spawn(
        "mock (fast)",
        Command::new(bin.join("ccf-mock-upstream")).args(["--port", &fast_port.to_string()]),
    )?;
    let mut paced_mock = Proc::spawn(
        "mock (paced)",
        Command::new(bin.join("ccf-mock-upstream")).args([
            "--port",
            &paced_port.to_string(),
            "--deltas",
            &PACED_DELTAS.to_string(),
            "--chunk-delay-ms",
            &PACED_DELAY_MS.to_string(),
        ]),
    )?;
    fast_mock.wait_listening(fast_port, &stop)?;
    paced_mock.wait_listening(paced_port, &stop)?;
    let nginx = match find_or_install_nginx() {
        Some(program) => Some(Nginx::start(
            &program, &work.path, fast_port, paced_port, &stop,
        )?),
        None => None,
    };

    let floor_port = free_port()?;
    let mut floor = Proc::spawn(
        "floor",
        Command::new(bin.join("ccf-floor-proxy")).args([
            "--port".to_string(),
            floor_port.to_string(),
            "--upstream".to_string(),
            format!("127.0.0.1:{fast_port}"),
        ]),
    )?;
    floor.wait_listening(floor_port, &stop)?;

    // Forwarders.
    let mut forwarders = Vec::new();
    for (name, upstream, usage) in [
        ("usage_on", fast_port, true),
        ("usage_off", fast_port, false),
        ("paced", paced_port, true),
    ] {
        let port = free_port()?;
        let config = work.path.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            forwarder_config(&work.path, name, port, upstream, usage),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut child = Proc::spawn(
            name,
            Command::new(&forwarder_bin)
                .arg("--config")
                .arg(&config)
                .arg("--no-tui")
                .current_dir(&work.path),
        )?;
        child.wait_listening(port, &stop)?;
        forwarders.push((name, port, child));
    }
    // Idle RSS: after start-up settles, before any request.
    thread::sleep(Duration::from_secs(1));
    let mut idle_rss = BTreeMap::new();
    for (name, _, child) in &forwarders {
        idle_rss.insert(*name, proc_status_number(child.pid(), "VmRSS")?);
    }

    let loadgen = bin.join("ccf-loadgen");
    let target = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let fast = target(fast_port);
    let paced = target(paced_port);
    let on = target(forwarders[0].1);
    let off = target(forwarders[1].1);
    let paced_fwd = target(forwarders[2].1);
    let mut pids: BTreeMap<&str, u32> = [
        ("direct", fast_mock.pid()),
        ("usage_on", forwarders[0].2.pid()),
        ("usage_off", forwarders[1].2.pid()),
        ("floor", floor.pid()),
    ]
    .into_iter()
    .collect();
    if let Some(nginx) = &nginx {
        pids.insert("nginx", nginx.process.pid());
    }

    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        println!("\n==> round {} of {}", round + 1, plan.rounds);
        let mut order = vec![
            ("direct", fast),
            ("floor", target(floor_port)),
            ("usage_on", on),
            ("usage_off", off),
        ];
        if let Some(nginx) = &nginx {
            order.insert(1, ("nginx", target(nginx.fast_port)));
        }
        if round % 2 == 1 {
            order.reverse();
        }
        let mut results = BTreeMap::new();
        for (scenario, mode, concurrency) in [
            ("json_c1", "json", 1u32),
            ("json_c64", "json", 64),
            ("sse_c64", "sse", 64),
        ] {
            for (who, address) in &order {
                let cpu_before = pids
                    .get(who)
                    .map(|pid| process_tree_ticks(*pid))
                    .transpose()?;
                let mut result = load(
                    &loadgen,
                    &stop,
                    &LoadRun {
                        mode,
                        target: *address,
                        concurrency,
                        requests: 0,
                        seconds: plan.seconds,
                        warmup: plan.warmup,
                    },
                )?;
                if *who == "usage_on" {
                    // The recording the run left behind is part of its cost: wait for it (and
                    // count its CPU) before the next run, which it would otherwise slow down.
                    let (behind, seconds) = catch_up(on, &stop)?;
                    result["records_behind"] = json!(behind);
                    result["catch_up_s"] = json!(seconds);
                }
                if let (Some(before), Some(pid)) = (cpu_before, pids.get(who)) {
                    let ticks = process_tree_ticks(*pid)?.saturating_sub(before);
                    let ok = result["ok"].as_f64().unwrap_or(0.0);
                    let seconds = ticks as f64 / clock_ticks_per_second();
                    if ok > 0.0 {
                        result["cpu_s_per_10k"] = json!(seconds / ok * 10_000.0);
                    }
                }
                print_line(scenario, who, &result);
                results.insert(format!("{scenario}/{who}"), result);
            }
        }
        let mut paced_order = vec![("direct", paced), ("usage_on", paced_fwd)];
        if let Some(nginx) = &nginx {
            paced_order.insert(1, ("nginx", target(nginx.paced_port)));
        }
        if round % 2 == 1 {
            paced_order.reverse();
        }
        for (who, address) in paced_order {
            let result = load(
                &loadgen,
                &stop,
                &LoadRun {
                    mode: "sse",
                    target: address,
                    concurrency: 32,
                    requests: 0,
                    seconds: plan.paced_seconds,
                    warmup: 1,
                },
            )?;
            print_line("paced_sse", who, &result);
            results.insert(format!("paced_sse/{who}"), result);
        }
        rounds.push(results);
    }

    println!("\n==> {MANY_STREAMS} concurrent paced streams");
    let mut many = BTreeMap::new();
    for (who, address) in [("direct", paced), ("usage_on", paced_fwd)] {
        let result = load(
            &loadgen,
            &stop,
            &LoadRun {
                mode: "sse",
                target: address,
                concurrency: MANY_STREAMS,
                requests: u64::from(MANY_STREAMS),
                seconds: 60.0,
                warmup: 0,
            },
        )?;
        print_line("many_streams", who, &result);
        many.insert(who, result);
    }
    let mut peak_rss = BTreeMap::new();
    for (name, _, child) in &forwarders {
        peak_rss.insert(*name, proc_status_number(child.pid(), "VmHWM")?);
    }
    for (_, _, child) in &mut forwarders {
        child.stop();
    }
    let nginx_version = nginx.as_ref().map(|nginx| nginx.version.clone());
    drop(nginx);
    floor.stop();
    paced_mock.stop();
    fast_mock.stop();

    let summary = summarize(&rounds, &many, &idle_rss, &peak_rss);
    let table = markdown(
        &summary,
        &plan,
        args.quick,
        &args.profile,
        nginx_version.as_deref(),
    );
    let results = json!({
        "command": if args.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" },
        "forwarder_profile": args.profile,
        "nginx": nginx_version,
        "rounds": plan.rounds,
        "seconds_per_run": plan.seconds,
        "machine": machine(),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "summary": summary,
        "raw": { "rounds": rounds, "many_streams": many, "idle_rss_kb": idle_rss, "peak_rss_kb": peak_rss },
    });
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out_dir.join("results.md");
    std::fs::write(&md_path, &table).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{table}");
    println!(
        "wrote {} and {} ({:.0} s)",
        json_path.display(),
        md_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The forwarder's configuration for one instance.
fn forwarder_config(dir: &Path, name: &str, port: u16, upstream: u16, usage: bool) -> String {
    let db = dir.join(format!("{name}.db"));
    format!(
        "server:\n  host: \"127.0.0.1\"\n  port: {port}\n\
         logging:\n  level: warn\n\
         web:\n  enabled: false\n\
         tui:\n  enabled: false\n\
         health:\n  check_interval: 300s\n\
         usage_tracking:\n  enabled: {usage}\n  database:\n    type: sqlite\n    path: \"{}\"\n\
         endpoints:\n  - name: mock\n    url: http://127.0.0.1:{upstream}\n    token: bench-token\n",
        db.display()
    )
}

/// Longest wait for a forwarder's recorder to write what a run left behind.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// The usage records a forwarder had not written when a run ended (its recorder's backlog plus
/// its journal, from `/metrics`), and how long it then took to write them all.
fn catch_up(forwarder: SocketAddr, stop: &AtomicBool) -> Result<(f64, f64)> {
    let behind = || -> Result<f64> {
        let response = crate::http::get(forwarder, "/metrics", Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&response.body);
        let gauge = |name| {
            crate::http::gauge(&text, name)
                .with_context(|| format!("{name} missing from the forwarder's /metrics"))
        };
        Ok(gauge("ccf_recorder_backlog")? + gauge("ccf_recorder_journal_records")?)
    };
    let started = Instant::now();
    let at_end = behind()?;
    let mut now = at_end;
    while now > 0.0 {
        if started.elapsed() > CATCH_UP_LIMIT || stop.load(Ordering::SeqCst) {
            bail!(
                "the forwarder still had {now} usage records to write {} s after the run",
                CATCH_UP_LIMIT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(20));
        now = behind()?;
    }
    Ok((at_end, started.elapsed().as_secs_f64()))
}

/// One `ccf-loadgen` invocation.
struct LoadRun {
    mode: &'static str,
    target: SocketAddr,
    concurrency: u32,
    requests: u64,
    seconds: f64,
    warmup: u32,
}

/// Runs `ccf-loadgen` and parses its JSON line; bounded in time, killed on Ctrl+C.
fn load(loadgen: &Path, stop: &AtomicBool, run: &LoadRun) -> Result<Value> {
    let mut command = Command::new(loadgen);
    command
        .args(["--mode", run.mode])
        .args(["--target", &run.target.to_string()])
        .args(["--concurrency", &run.concurrency.to_string()])
        .args(["--requests", &run.requests.to_string()])
        .args(["--duration", &run.seconds.to_string()])
        .args(["--warmup", &run.warmup.to_string()])
        .args(["--timeout", "30"])
        .stdout(Stdio::piped());
    let mut child = Proc::spawn_quiet("ccf-loadgen", &mut command)?;
    let deadline = Instant::now() + Duration::from_secs_f64(run.seconds) + RUN_GRACE;
    loop {
        if let Some(status) = child.child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.child.stdout.take() {
                use std::io::Read;
                stdout.read_to_string(&mut out)?;
            }
            if !status.success() {
                bail!("ccf-loadgen failed ({status}): {out}");
            }
            return serde_json::from_str(out.trim())
                .with_context(|| format!("parsing ccf-loadgen's output: {out}"));
        }
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!("ccf-loadgen did not finish in time");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn print_line(scenario: &str, who: &str, result: &Value) {
    let pick = |key: &str, q: &str| result[key][q].as_u64().unwrap_or(0);
    println!(
        "{scenario:<13} {who:<10} {:>9.0} req/s  p50 {:>7} µs  p99 {:>7} µs  ttfb p99 {:>6} µs  gap p99 {:>6} µs  errors {} incomplete {} stalled {}",
        result["rps"].as_f64().unwrap_or(0.0),
        pick("latency_us", "p50"),
        pick("latency_us", "p99"),
        pick("ttfb_us", "p99"),
        pick("gap_us", "p99"),
        result["errors"],
        result["incomplete"],
        result["stalled"],
    );
}

/// Median of the values (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians across rounds of every figure the table shows.
fn summarize(
    rounds: &[BTreeMap<String, Value>],
    many: &BTreeMap<&str, Value>,
    idle_rss: &BTreeMap<&str, u64>,
    peak_rss: &BTreeMap<&str, u64>,
) -> Value {
    let get = |round: &BTreeMap<String, Value>, key: &str, field: &str, q: &str| -> f64 {
        let value = &round.get(key).unwrap_or(&Value::Null)[field];
        if q.is_empty() {
            value.as_f64().unwrap_or(f64::NAN)
        } else {
            value[q].as_f64().unwrap_or(f64::NAN)
        }
    };
    let med = |f: &dyn Fn(&BTreeMap<String, Value>) -> f64| median(rounds.iter().map(f).collect());
    let mut out = serde_json::Map::new();
    for who in ["direct", "nginx", "floor", "usage_on", "usage_off"] {
        for q in ["p50", "p99"] {
            out.insert(
                format!("json_c1_{who}_{q}_us"),
                json!(med(&|r| get(r, &format!("json_c1/{who}"), "latency_us", q))),
            );
        }
        // The CPU of a request when nothing else is in flight (issue 19: at c=1 a request costs
        // the forwarder about three times its CPU at c=64).
        out.insert(
            format!("json_c1_{who}_cpu_us_per_request"),
            json!(
                med(&|r| get(r, &format!("json_c1/{who}"), "cpu_s_per_10k", "")) * 1_000_000.0
                    / 10_000.0
            ),
        );
        for scenario in ["json_c64", "sse_c64"] {
            out.insert(
                format!("{scenario}_{who}_rps"),
                json!(med(&|r| get(r, &format!("{scenario}/{who}"), "rps", ""))),
            );
            out.insert(
                format!("{scenario}_{who}_cpu_s_per_10k"),
                json!(med(&|r| get(
                    r,
                    &format!("{scenario}/{who}"),
                    "cpu_s_per_10k",
                    ""
                ))),
            );
            // The worst round: a recorder behind in one round is behind.
            for field in ["records_behind", "catch_up_s"] {
                out.insert(
                    format!("{scenario}_{who}_{field}"),
                    json!(rounds
                        .iter()
                        .map(|r| get(r, &format!("{scenario}/{who}"), field, ""))
                        .fold(f64::NAN, f64::max)),
                );
            }
            out.insert(
                format!("{scenario}_{who}_errors"),
                json!(rounds
                    .iter()
                    .map(|r| get(r, &format!("{scenario}/{who}"), "errors", ""))
                    .sum::<f64>()),
            );
        }
        if who != "direct" {
            for q in ["p50", "p99"] {
                out.insert(
                    format!("json_c1_{who}_added_{q}_us"),
                    json!(med(&|r| get(r, &format!("json_c1/{who}"), "latency_us", q)
                        - get(r, "json_c1/direct", "latency_us", q))),
                );
            }
            for scenario in ["json_c64", "sse_c64"] {
                out.insert(
                    format!("{scenario}_{who}_ratio"),
                    json!(med(&|r| get(r, &format!("{scenario}/{who}"), "rps", "")
                        / get(r, &format!("{scenario}/direct"), "rps", ""))),
                );
            }
        }
        if who.starts_with("usage") || who == "floor" {
            // The forwarder (and the floor) against nginx, per round (same machine load), then the median.
            for scenario in ["json_c64", "sse_c64"] {
                out.insert(
                    format!("{scenario}_{who}_vs_nginx"),
                    json!(med(&|r| get(r, &format!("{scenario}/{who}"), "rps", "")
                        / get(r, &format!("{scenario}/nginx"), "rps", ""))),
                );
            }
            for q in ["p50", "p99"] {
                out.insert(
                    format!("json_c1_{who}_added_{q}_minus_nginx_us"),
                    json!(med(&|r| get(r, &format!("json_c1/{who}"), "latency_us", q)
                        - get(r, "json_c1/nginx", "latency_us", q))),
                );
            }
        }
    }
    for who in ["direct", "nginx", "usage_on"] {
        let key = format!("paced_sse/{who}");
        for (field, q) in [
            ("ttfb_us", "p50"),
            ("ttfb_us", "p99"),
            ("gap_us", "p50"),
            ("gap_us", "p99"),
            ("gap_us", "max"),
        ] {
            out.insert(
                format!("paced_{who}_{field}_{q}"),
                json!(med(&|r| get(r, &key, field, q))),
            );
        }
    }
    for (field, q) in [("ttfb_us", "p50"), ("ttfb_us", "p99"), ("gap_us", "p99")] {
        for who in ["nginx", "usage_on"] {
            let key = format!("paced_sse/{who}");
            let prefix = if who == "usage_on" {
                String::new()
            } else {
                format!("{who}_")
            };
            out.insert(
                format!("paced_{prefix}added_{field}_{q}"),
                json!(med(
                    &|r| get(r, &key, field, q) - get(r, "paced_sse/direct", field, q)
                )),
            );
        }
    }
    for (who, result) in many {
        for field in ["ok", "errors", "incomplete", "stalled"] {
            out.insert(format!("many_{who}_{field}"), result[field].clone());
        }
        out.insert(
            format!("many_{who}_gap_p99_us"),
            result["gap_us"]["p99"].clone(),
        );
        out.insert(
            format!("many_{who}_ttfb_p99_us"),
            result["ttfb_us"]["p99"].clone(),
        );
        out.insert(format!("many_{who}_elapsed_s"), result["elapsed_s"].clone());
    }
    for (name, kb) in idle_rss {
        out.insert(format!("idle_rss_{name}_kb"), json!(kb));
    }
    for (name, kb) in peak_rss {
        out.insert(format!("peak_rss_{name}_kb"), json!(kb));
    }
    Value::Object(out)
}

/// The markdown tables: direct, nginx and both forwarders side by side, then the forwarder
/// against nginx (NaN, e.g. without nginx, is shown as `-`); then the floor beside nginx and the
/// forwarder with usage off.
fn markdown(s: &Value, plan: &Plan, quick: bool, profile: &str, nginx: Option<&str>) -> String {
    let f = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
    let shown = |value: f64, text: String| {
        if value.is_finite() {
            text
        } else {
            "-".to_string()
        }
    };
    let us = |key: &str| shown(f(key), format!("{:.0} µs", f(key)));
    let rps = |key: &str| shown(f(key), format!("{:.0}/s", f(key)));
    let pct = |key: &str| shown(f(key), format!("{:.0}%", f(key) * 100.0));
    let times = |key: &str| shown(f(key), format!("{:.2}×", f(key)));
    let mb = |key: &str| shown(f(key), format!("{:.1} MB", f(key) / 1024.0));
    let cpu = |key: &str| shown(f(key), format!("{:.2} s", f(key)));
    let signed_us = |key: &str| shown(f(key), format!("{:+.0} µs", f(key)));
    let mut t = String::new();
    t.push_str(&format!(
        "`cargo xtask bench{}{}`: forwarder built with the `{profile}` profile, {} interleaved rounds of {} s per run (paced: {} s), medians across rounds. nginx: {}.\n\n",
        if quick { " --quick" } else { "" },
        if profile == "dist" { String::new() } else { format!(" --profile {profile}") },
        plan.rounds,
        plan.seconds,
        plan.paced_seconds,
        nginx.map_or("not available (its column shows -)".to_string(), |version| {
            format!("{version}, 1 worker, plain reverse proxy with keep-alive to the same mock")
        }),
    ));
    t.push_str(
        "| scenario | figure | direct | nginx (1 worker) | forwarder, usage on (SQLite) | forwarder, usage off |\n",
    );
    t.push_str("|---|---|---|---|---|---|\n");
    let row = |t: &mut String, a: &str, b: &str, cells: [String; 4]| {
        let [c, n, d, e] = cells;
        t.push_str(&format!("| {a} | {b} | {c} | {n} | {d} | {e} |\n"));
    };
    let each = |pattern: &dyn Fn(&str) -> String, who: [&str; 4]| -> [String; 4] {
        who.map(|who| {
            if who.is_empty() {
                String::new()
            } else {
                pattern(who)
            }
        })
    };
    for q in ["p50", "p99"] {
        row(
            &mut t,
            "JSON, concurrency 1",
            &format!("latency {q}"),
            each(
                &|who| us(&format!("json_c1_{who}_{q}_us")),
                ["direct", "nginx", "usage_on", "usage_off"],
            ),
        );
        let mut added = each(
            &|who| us(&format!("json_c1_{who}_added_{q}_us")),
            ["nginx", "nginx", "usage_on", "usage_off"],
        );
        added[0] = "-".into();
        row(
            &mut t,
            "JSON, concurrency 1",
            &format!("**added latency {q}**"),
            added,
        );
        let mut minus = each(
            &|who| signed_us(&format!("json_c1_{who}_added_{q}_minus_nginx_us")),
            ["usage_on", "usage_on", "usage_on", "usage_off"],
        );
        minus[0] = "-".into();
        minus[1] = "-".into();
        row(
            &mut t,
            "JSON, concurrency 1",
            &format!("**added {q} minus nginx's**"),
            minus,
        );
    }
    row(
        &mut t,
        "JSON, concurrency 1",
        "CPU µs per request (mock / proxy, every thread)",
        each(
            &|who| us(&format!("json_c1_{who}_cpu_us_per_request")),
            ["direct", "nginx", "usage_on", "usage_off"],
        ),
    );
    for (scenario, label) in [
        ("json_c64", "JSON, concurrency 64"),
        ("sse_c64", "SSE (3 deltas), concurrency 64"),
    ] {
        let all = ["direct", "nginx", "usage_on", "usage_off"];
        row(
            &mut t,
            label,
            "requests/s",
            each(&|who| rps(&format!("{scenario}_{who}_rps")), all),
        );
        let mut ratio = each(&|who| pct(&format!("{scenario}_{who}_ratio")), all);
        ratio[0] = "100%".into();
        row(&mut t, label, "**ratio to direct**", ratio);
        let mut vs_nginx = each(&|who| times(&format!("{scenario}_{who}_vs_nginx")), all);
        vs_nginx[0] = "-".into();
        vs_nginx[1] = "1.00×".into();
        row(&mut t, label, "**ratio to nginx**", vs_nginx);
        row(
            &mut t,
            label,
            "CPU s per 10k requests (mock / proxy)",
            each(&|who| cpu(&format!("{scenario}_{who}_cpu_s_per_10k")), all),
        );
        row(
            &mut t,
            label,
            "usage records not yet written when the run ended (most of all rounds; then written in)",
            [
                String::new(),
                String::new(),
                {
                    let behind = f(&format!("{scenario}_usage_on_records_behind"));
                    let seconds = f(&format!("{scenario}_usage_on_catch_up_s"));
                    shown(behind, format!("{behind:.0} ({seconds:.2} s)"))
                },
                String::new(),
            ],
        );
        row(
            &mut t,
            label,
            "errors (all rounds)",
            each(
                &|who| {
                    let value = f(&format!("{scenario}_{who}_errors"));
                    shown(value, format!("{value}"))
                },
                all,
            ),
        );
    }
    let paced = format!("Paced SSE ({PACED_DELTAS} deltas / {PACED_DELAY_MS} ms), 32 streams");
    for (field, q, label) in [
        ("ttfb_us", "p50", "TTFB p50"),
        ("ttfb_us", "p99", "TTFB p99"),
        ("gap_us", "p99", "inter-event gap p99"),
    ] {
        row(
            &mut t,
            &paced,
            label,
            each(
                &|who| us(&format!("paced_{who}_{field}_{q}")),
                ["direct", "nginx", "usage_on", ""],
            ),
        );
        row(
            &mut t,
            &paced,
            &format!("**added {label}**"),
            [
                "-".into(),
                us(&format!("paced_nginx_added_{field}_{q}")),
                us(&format!("paced_added_{field}_{q}")),
                String::new(),
            ],
        );
    }
    let many = |who: &str| {
        format!(
            "{} ok, {} incomplete, {} stalled, {} errors; gap p99 {:.0} µs",
            s[format!("many_{who}_ok")],
            s[format!("many_{who}_incomplete")],
            s[format!("many_{who}_stalled")],
            s[format!("many_{who}_errors")],
            s[format!("many_{who}_gap_p99_us")]
                .as_f64()
                .unwrap_or(f64::NAN),
        )
    };
    row(
        &mut t,
        &format!("{MANY_STREAMS} concurrent paced streams"),
        "completed (stall = gap > 1 s)",
        [many("direct"), "-".into(), many("usage_on"), String::new()],
    );
    row(
        &mut t,
        "memory",
        "idle RSS (VmRSS before any request)",
        [
            "-".into(),
            "-".into(),
            mb("idle_rss_usage_on_kb"),
            mb("idle_rss_usage_off_kb"),
        ],
    );
    row(
        &mut t,
        "memory",
        "peak RSS (VmHWM): JSON/SSE c64 runs; paced + 1,000 streams",
        [
            "-".into(),
            "-".into(),
            format!(
                "{}; {}",
                mb("peak_rss_usage_on_kb"),
                mb("peak_rss_paced_kb")
            ),
            mb("peak_rss_usage_off_kb"),
        ],
    );
    // The floor (`ccf-floor-proxy`: hyper and tokio with nothing of the forwarder's own) beside
    // nginx and the forwarder with usage off, from the same rounds.
    t.push_str(
        "\nThe floor, in the same rounds: `ccf-floor-proxy`, the cheapest proxy hyper and tokio make, forwarding to the same mock with nothing of the forwarder's own (per-core runtimes as the forwarder's, HTTP/1 only and no header-read timeout, `hyper::client::conn::http1` driven in the request's task, the body streamed).\n\n\
         | scenario | figure | nginx (1 worker) | floor (hyper + tokio) | forwarder, usage off |\n|---|---|---|---|---|\n",
    );
    let who = ["nginx", "floor", "usage_off"];
    let floor_row = |t: &mut String, label: &str, figure: &str, cells: [String; 3]| {
        let [a, b, c] = cells;
        t.push_str(&format!("| {label} | {figure} | {a} | {b} | {c} |\n"));
    };
    for q in ["p50", "p99"] {
        floor_row(
            &mut t,
            "JSON, concurrency 1",
            &format!("added latency {q}"),
            who.map(|w| us(&format!("json_c1_{w}_added_{q}_us"))),
        );
    }
    floor_row(
        &mut t,
        "JSON, concurrency 1",
        "CPU µs per request",
        who.map(|w| us(&format!("json_c1_{w}_cpu_us_per_request"))),
    );
    for (scenario, label) in [
        ("json_c64", "JSON, concurrency 64"),
        ("sse_c64", "SSE (3 deltas), concurrency 64"),
    ] {
        floor_row(
            &mut t,
            label,
            "requests/s",
            who.map(|w| rps(&format!("{scenario}_{w}_rps"))),
        );
        let mut ratio = who.map(|w| times(&format!("{scenario}_{w}_vs_nginx")));
        ratio[0] = "1.00×".into();
        floor_row(&mut t, label, "**ratio to nginx**", ratio);
        floor_row(
            &mut t,
            label,
            "CPU s per 10k requests",
            who.map(|w| cpu(&format!("{scenario}_{w}_cpu_s_per_10k"))),
        );
        floor_row(
            &mut t,
            label,
            "errors (all rounds)",
            who.map(|w| {
                let value = f(&format!("{scenario}_{w}_errors"));
                shown(value, format!("{value}"))
            }),
        );
    }
    t
}

/// The nginx to compare with: `nginx` on the `PATH` or in `/usr/sbin`; when there is none,
/// Debian's package is installed with `apt-get` (the reason is printed first). `None` when it
/// cannot be had (the bench then runs without it and says so).
fn find_or_install_nginx() -> Option<std::path::PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return Some(found);
    }
    println!(
        "==> nginx is not installed: installing Debian's nginx with apt-get, to run it as the \
         comparison target (1 worker, plain reverse proxy) in this same run"
    );
    let apt = |args: &[&str]| {
        println!("$ apt-get {}", args.join(" "));
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    let install = ["install", "-y", "--no-install-recommends", "nginx"];
    // Package lists may be missing in a fresh container: update once, then try again.
    let installed = apt(&install) || (apt(&["update"]) && apt(&install));
    if !installed {
        println!("warning: could not install nginx (not root, or no network?): running without it");
        return None;
    }
    let found = find();
    if found.is_none() {
        println!("warning: nginx was installed but is not on the PATH nor in /usr/sbin");
    }
    found
}

/// nginx as the comparison target: one worker, one server per mock.
struct Nginx {
    process: Proc,
    fast_port: u16,
    paced_port: u16,
    /// `nginx -v`, e.g. `nginx/1.22.1`.
    version: String,
}

impl Nginx {
    /// Writes the configuration into `dir` and starts nginx in the foreground (`daemon off`).
    fn start(
        program: &Path,
        dir: &Path,
        fast_upstream: u16,
        paced_upstream: u16,
        stop: &AtomicBool,
    ) -> Result<Nginx> {
        let fast_port = free_port()?;
        let paced_port = free_port()?;
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            nginx_config(dir, fast_port, fast_upstream, paced_port, paced_upstream),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let version = Command::new(program)
            .arg("-v")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stderr).trim().to_string())
            .unwrap_or_default();
        let version = version
            .strip_prefix("nginx version: ")
            .unwrap_or(&version)
            .to_string();
        let mut process = Proc::spawn(
            "nginx",
            Command::new(program)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("nginx-error.log"))
                .arg("-c")
                .arg(&config),
        )?;
        process.wait_listening(fast_port, stop)?;
        process.wait_listening(paced_port, stop)?;
        Ok(Nginx {
            process,
            fast_port,
            paced_port,
            version,
        })
    }
}

impl Drop for Nginx {
    /// SIGTERM: the master stops its worker (a SIGKILL would leave the worker running).
    fn drop(&mut self) {
        if let Err(error) = self.process.terminate(Duration::from_secs(10)) {
            println!("warning: stopping nginx: {error:#}");
        }
    }
}

/// nginx as a plain reverse proxy: 1 worker, no access log, keep-alive to the client and the
/// upstream (pools of idle connections per worker), responses passed on as they arrive.
fn nginx_config(dir: &Path, fast_port: u16, fast: u16, paced_port: u16, paced: u16) -> String {
    let dir = dir.display();
    let server = |port: u16, upstream: &str| {
        format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            \
             proxy_pass http://{upstream};\n            proxy_http_version 1.1;\n            \
             proxy_set_header Connection \"\";\n            proxy_buffering off;\n        }}\n    }}\n"
        )
    };
    format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
         worker_rlimit_nofile 16384;\n\
         events {{\n    worker_connections 8192;\n}}\n\
         http {{\n    access_log off;\n    keepalive_timeout 75s;\n    keepalive_requests 10000000;\n    \
         client_body_temp_path {dir}/nginx-body;\n    proxy_temp_path {dir}/nginx-proxy;\n    \
         fastcgi_temp_path {dir}/nginx-fastcgi;\n    uwsgi_temp_path {dir}/nginx-uwsgi;\n    \
         scgi_temp_path {dir}/nginx-scgi;\n    \
         upstream fast {{\n        server 127.0.0.1:{fast};\n        keepalive 256;\n        keepalive_requests 10000000;\n    }}\n    \
         upstream paced {{\n        server 127.0.0.1:{paced};\n        keepalive 1100;\n    }}\n{}{}}}\n",
        server(fast_port, "fast"),
        server(paced_port, "paced"),
    )
}

/// utime + stime of a process and its direct children (nginx's worker is the master's child),
/// in clock ticks.
fn process_tree_ticks(pid: u32) -> Result<u64> {
    let mut ticks = cpu_ticks(pid)?;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        // A child that exited meanwhile counts nothing.
        ticks += cpu_ticks(child).unwrap_or(0);
    }
    Ok(ticks)
}

/// `cargo build --profile <profile> -p cc-forwarder`, then
/// `cargo build --release -p ccf-testkit --bins` (the mock and the load generator).
fn build(root: &Path, profile: &str) -> Result<()> {
    let forwarder = ["build", "--profile", profile, "-p", "cc-forwarder"];
    let testkit = ["build", "--release", "-p", "ccf-testkit", "--bins"];
    for args in [&forwarder[..], &testkit[..]] {
        cargo_build(root, args)?;
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let after = text
        .rfind(')')
        .map(|at| &text[at + 1..])
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

/// `getconf CLK_TCK` (100 on every Linux this runs on; read to be sure).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}
