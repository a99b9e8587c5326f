//! `cargo xtask brownout`: the brown-out scenario of issue #17 at full length, for
//! docs/benchmarks.md ("Brown-out"). The end-to-end test `brownout::` runs the same scenario
//! for a few seconds.
//!
//! Starts two `ccf-realistic-upstream`s (paced generation, each checking its own key) and the
//! forwarder (its default retry and health settings; `group.cooldown` from `--cooldown-secs`),
//! all built with `--profile` (release by default), with the first upstream in group `primary`
//! (two endpoints: two keys on one upstream) and the second in group `backup`. After a
//! warm-up in which every client was answered, it starts a 529 storm on the primary for
//! `--storm-secs` (its `GET /v1/models` keeps answering 200) while `--clients` clients send
//! message requests one after another (four streaming, one non-streaming), each tagged in its
//! message text so every upstream attempt is tied to its client request. The primary group's
//! cooldowns come from the admin API (`GET /api/v1/groups`, polled every 100 ms; its
//! `cooldown_remaining_seconds` is truncated, so a window's end is known to within a second and
//! is taken early: returns are never over-counted).
//!
//! Reports: upstream attempts per client request sent during the storm, time to fail over,
//! message requests that reached the primary inside a cooldown window (not counting requests
//! still in their first pass over the group when the window began), time from the storm's end
//! to the first 200 from the primary, and client answers with a 5xx status. Writes
//! `target/brownout/results.json` and `results.md`. Every child is killed on every way out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::http::{get, post_json};
use crate::process::{cargo_build, free_port, machine, target_dir, Proc, TempDir};

/// The storming group's name in the generated configuration.
const PRIMARY: &str = "primary";
/// Longest wait for one client answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo xtask brownout` options.
#[derive(Debug, clap::Args)]
pub struct BrownoutArgs {
    /// Length of the 529 storm on the first group, in seconds.
    #[arg(long, default_value_t = 300)]
    storm_secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// `group.cooldown` of the forwarder, in seconds (its default, 600, outlasts the storm).
    #[arg(long, default_value_t = 60)]
    cooldown_secs: u64,
    /// Generation time per output token of both upstreams, in milliseconds.
    #[arg(long, default_value_t = 20)]
    per_token_ms: u64,
    /// Output tokens per answer (50 × 20 ms: one-second answers).
    #[arg(long, default_value_t = 50)]
    output_tokens: u32,
    /// Cargo profile of the forwarder and the upstreams (`release`, `dist`, or `dev` for a
    /// quick check with the debug build).
    #[arg(long, default_value = "release")]
    profile: String,
}

/// One client request and how it ended.
#[derive(Clone, Debug)]
struct ClientRequest {
    tag: String,
    started_ms: u64,
    status: Option<u16>,
    error_event: bool,
}

/// One upstream record (a line of `/_realistic/records`).
#[derive(Clone, Debug)]
struct UpstreamRecord {
    unix_ms: u64,
    probe: bool,
    message: bool,
    status: u16,
    tag: String,
}

/// A cooldown window of the primary group, wall-clock milliseconds.
#[derive(Clone, Copy, Debug)]
struct Window {
    began_ms: u64,
    until_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn records(address: SocketAddr) -> Result<Vec<UpstreamRecord>> {
    let response = get(address, "/_realistic/records", Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&response.body);
    let mut records = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).context("a record line")?;
        records.push(UpstreamRecord {
            unix_ms: value["unix_ms"].as_u64().unwrap_or(0),
            probe: value["probe"].as_bool().unwrap_or(false),
            message: value["message"].as_bool().unwrap_or(false),
            status: value["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0),
            tag: value["tag"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(records)
}

fn forwarder_config(
    port: u16,
    admin_port: u16,
    primary: u16,
    backup: u16,
    cooldown: u64,
) -> String {
    format!(
        "server:\n  host: \"127.0.0.1\"\n  port: {port}\n\
         logging:\n  level: warn\n\
         web:\n  enabled: true\n  host: \"127.0.0.1\"\n  port: {admin_port}\n\
         tui:\n  enabled: false\n\
         usage_tracking:\n  enabled: false\n\
         group:\n  cooldown: {cooldown}s\n\
         endpoints:\n\
         \x20 - name: storming\n    url: http://127.0.0.1:{primary}\n    api-key: sk-primary\n\
         \x20   group: {PRIMARY}\n    group-priority: 1\n    priority: 1\n\
         \x20 - name: storming-2\n    url: http://127.0.0.1:{primary}\n    api-key: sk-primary\n\
         \x20   priority: 2\n\
         \x20 - name: steady\n    url: http://127.0.0.1:{backup}\n    api-key: sk-backup\n\
         \x20   group: backup\n    group-priority: 2\n"
    )
}

/// Runs the scenario and writes the report.
pub fn run(root: &Path, args: &BrownoutArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl+C handler")?;
    }
    cargo_build(
        root,
        &[
            "build",
            "--profile",
            &args.profile,
            "-p",
            "cc-forwarder",
            "-p",
            "ccf-testkit",
            "--bins",
        ],
    )?;
    // Cargo puts the `dev` profile's output in `debug`.
    let profile_dir = if args.profile == "dev" {
        "debug"
    } else {
        args.profile.as_str()
    };
    let bin_dir = target_dir(root).join(profile_dir);
    let forwarder_bin = bin_dir.join("cc-forwarder");
    let out_dir = target_dir(root).join("brownout");
    std::fs::create_dir_all(&out_dir)?;
    let work = TempDir::new("ccf-brownout")?;

    let upstream = |name: &str, port: u16, key: &str| -> Result<Proc> {
        Proc::spawn(
            name,
            Command::new(bin_dir.join("ccf-realistic-upstream")).args([
                "--port",
                &port.to_string(),
                "--per-token-ms",
                &args.per_token_ms.to_string(),
                "--output-tokens",
                &args.output_tokens.to_string(),
                "--key",
                key,
            ]),
        )
    };
    let primary_port = free_port()?;
    let backup_port = free_port()?;
    let mut primary = upstream("primary upstream", primary_port, "sk-primary")?;
    let mut backup = upstream("backup upstream", backup_port, "sk-backup")?;
    primary.wait_listening(primary_port, &stop)?;
    backup.wait_listening(backup_port, &stop)?;
    let primary_address = SocketAddr::from(([127, 0, 0, 1], primary_port));
    let backup_address = SocketAddr::from(([127, 0, 0, 1], backup_port));

    let port = free_port()?;
    let admin_port = free_port()?;
    let config = work.path.join("brownout.yaml");
    std::fs::write(
        &config,
        forwarder_config(
            port,
            admin_port,
            primary_port,
            backup_port,
            args.cooldown_secs,
        ),
    )?;
    let mut forwarder = Proc::spawn(
        "cc-forwarder",
        Command::new(&forwarder_bin)
            .arg("--config")
            .arg(&config)
            .arg("--no-tui")
            .current_dir(&work.path),
    )?;
    forwarder.wait_listening(port, &stop)?;
    forwarder.wait_listening(admin_port, &stop)?;
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));

    // Cooldown windows from the admin API.
    let windows: Arc<Mutex<Vec<Window>>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let windows = Arc::clone(&windows);
        let watching = Arc::clone(&watching);
        thread::spawn(move || {
            let mut in_cooldown = false;
            while watching.load(Ordering::SeqCst) {
                let polled = now_ms();
                if let Ok(response) = get(admin, "/api/v1/groups", Duration::from_secs(5)) {
                    let value: Value = serde_json::from_slice(&response.body).unwrap_or_default();
                    let group = value["groups"]
                        .as_array()
                        .and_then(|groups| groups.iter().find(|g| g["name"] == PRIMARY));
                    if let Some(group) = group {
                        let cooling = group["in_cooldown"].as_bool().unwrap_or(false);
                        let remaining = group["cooldown_remaining_seconds"].as_u64().unwrap_or(0);
                        let until = polled + remaining * 1000;
                        let mut windows = windows.lock().unwrap_or_else(|e| e.into_inner());
                        match (cooling, in_cooldown, windows.last_mut()) {
                            // Still the same cooldown unless its end moved by over 1.5 s.
                            (true, true, Some(last)) if until.abs_diff(last.until_ms) <= 1_500 => {
                                // Truncated seconds: the earliest estimate is the safe one.
                                last.until_ms = last.until_ms.min(until);
                            }
                            (true, _, _) => windows.push(Window {
                                began_ms: polled,
                                until_ms: until,
                            }),
                            (false, _, _) => {}
                        }
                        in_cooldown = cooling;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Clients.
    let clients_stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let clients_stop = Arc::clone(&clients_stop);
            let answered = Arc::clone(&answered);
            thread::spawn(move || {
                let mut done = Vec::new();
                let mut number = 0u64;
                while !clients_stop.load(Ordering::SeqCst) {
                    let tag = format!("brownout client {client} request {number}");
                    let stream = number % 5 != 4;
                    number += 1;
                    let body = json!({
                        "model": "claude-sonnet-4-5",
                        "max_tokens": 1024,
                        "stream": stream,
                        "messages": [{"role": "user", "content": tag}],
                    })
                    .to_string();
                    let started_ms = now_ms();
                    let answer = post_json(
                        proxy,
                        "/v1/messages",
                        &[("anthropic-version", "2023-06-01")],
                        &body,
                        REQUEST_TIMEOUT,
                    );
                    let (status, error_event) = match answer {
                        Ok(response) => (
                            Some(response.status),
                            response.status == 200
                                && String::from_utf8_lossy(&response.body).contains("event: error"),
                        ),
                        Err(_) => (None, false),
                    };
                    done.push(ClientRequest {
                        tag,
                        started_ms,
                        status,
                        error_event,
                    });
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                done
            })
        })
        .collect();

    let warmup_deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < args.clients {
        if stop.load(Ordering::SeqCst) || Instant::now() >= warmup_deadline {
            clients_stop.store(true, Ordering::SeqCst);
            bail!("the clients were not all answered during the warm-up");
        }
        thread::sleep(Duration::from_millis(50));
    }

    let storm_ms = args.storm_secs * 1000;
    let response = post_json(
        primary_address,
        &format!("/_realistic/storm?for_ms={storm_ms}"),
        &[],
        "",
        Duration::from_secs(10),
    )?;
    let reply: Value = serde_json::from_slice(&response.body)?;
    let storm_start = reply["unix_ms"].as_u64().context("the storm's start")?;
    let storm_end = storm_start + storm_ms;
    println!(
        "storm on the primary for {}s, {} clients",
        args.storm_secs, args.clients
    );
    while now_ms() < storm_end {
        if stop.load(Ordering::SeqCst) {
            clients_stop.store(true, Ordering::SeqCst);
            bail!("interrupted");
        }
        thread::sleep(Duration::from_millis(200));
    }

    // Recovery: a 200 from the primary after the storm and after the last cooldown's end.
    let recovery_deadline = Instant::now() + Duration::from_secs(args.cooldown_secs + 180);
    let recovered_ms = loop {
        let last_until = windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|w| w.until_ms)
            .max()
            .unwrap_or(storm_end);
        let back = records(primary_address)?
            .into_iter()
            .find(|r| r.message && r.status == 200 && r.unix_ms >= storm_end.max(last_until))
            .map(|r| r.unix_ms);
        if back.is_some() || stop.load(Ordering::SeqCst) || Instant::now() >= recovery_deadline {
            break back;
        }
        thread::sleep(Duration::from_millis(500));
    };
    clients_stop.store(true, Ordering::SeqCst);
    let mut requests = Vec::new();
    for client in clients {
        requests.extend(client.join().unwrap_or_default());
    }
    watching.store(false, Ordering::SeqCst);
    let _ = watcher.join();
    let windows = windows.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let primary_records = records(primary_address)?;
    let backup_records = records(backup_address)?;

    let summary = summarize(
        &requests,
        &primary_records,
        &backup_records,
        &windows,
        storm_start,
        storm_end,
        recovered_ms,
    );
    let result = json!({
        "scenario": {
            "storm_secs": args.storm_secs, "clients": args.clients,
            "cooldown_secs": args.cooldown_secs, "per_token_ms": args.per_token_ms,
            "output_tokens": args.output_tokens, "profile": args.profile,
        },
        "machine": machine(),
        "results": summary,
    });
    let markdown = markdown(&result);
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    std::fs::write(out_dir.join("results.md"), &markdown)?;
    println!("{markdown}");
    let _ = forwarder.terminate(Duration::from_secs(30));
    Ok(())
}

fn summarize(
    requests: &[ClientRequest],
    primary: &[UpstreamRecord],
    backup: &[UpstreamRecord],
    windows: &[Window],
    storm_start: u64,
    storm_end: u64,
    recovered_ms: Option<u64>,
) -> Value {
    let by_tag = |records: &[UpstreamRecord]| -> HashMap<String, Vec<u64>> {
        let mut map: HashMap<String, Vec<u64>> = HashMap::new();
        for record in records.iter().filter(|r| r.message) {
            map.entry(record.tag.clone())
                .or_default()
                .push(record.unix_ms);
        }
        map
    };
    let primary_by_tag = by_tag(primary);
    let backup_by_tag = by_tag(backup);
    let attempts = |tag: &str| {
        primary_by_tag.get(tag).map_or(0, Vec::len) + backup_by_tag.get(tag).map_or(0, Vec::len)
    };
    let during: Vec<&ClientRequest> = requests
        .iter()
        .filter(|r| r.started_ms >= storm_start && r.started_ms < storm_end)
        .collect();
    let storm_attempts: usize = during.iter().map(|r| attempts(&r.tag)).sum();
    let per_request = storm_attempts as f64 / during.len().max(1) as f64;
    let fail_over_ms = backup
        .iter()
        .filter(|r| r.message && r.unix_ms >= storm_start)
        .map(|r| r.unix_ms - storm_start)
        .min();
    let started: HashMap<&str, u64> = requests
        .iter()
        .map(|r| (r.tag.as_str(), r.started_ms))
        .collect();
    let returns = primary
        .iter()
        .filter(|r| r.message)
        .filter(|record| {
            let Some(window) = windows
                .iter()
                .find(|w| record.unix_ms >= w.began_ms && record.unix_ms < w.until_ms)
            else {
                return false;
            };
            let on_backup_before = backup_by_tag
                .get(&record.tag)
                .is_some_and(|tries| tries.iter().any(|at| *at < record.unix_ms));
            let first_pass = started
                .get(record.tag.as_str())
                .is_some_and(|at| *at < window.began_ms)
                && !on_backup_before;
            !first_pass
        })
        .count();
    let server_errors = requests
        .iter()
        .filter(|r| r.status.is_some_and(|s| s >= 500))
        .count();
    let storm_server_errors = during
        .iter()
        .filter(|r| r.status.is_some_and(|s| s >= 500))
        .count();
    let unanswered = requests.iter().filter(|r| r.status.is_none()).count();
    let error_events = requests.iter().filter(|r| r.error_event).count();
    let storm_probes = primary
        .iter()
        .filter(|r| r.probe && r.unix_ms >= storm_start && r.unix_ms < storm_end)
        .count();
    json!({
        "client_requests": requests.len(),
        "client_requests_during_storm": during.len(),
        "upstream_attempts_during_storm": storm_attempts,
        "attempts_per_client_request_during_storm": (per_request * 100.0).round() / 100.0,
        "time_to_fail_over_ms": fail_over_ms,
        "cooldown_windows_from_storm_start_s": windows.iter().map(|w| json!([
            (w.began_ms as f64 - storm_start as f64) / 1000.0,
            (w.until_ms as f64 - storm_start as f64) / 1000.0,
        ])).collect::<Vec<_>>(),
        "returns_to_storming_group_before_cooldown_end": returns,
        "recovery_after_storm_ms": recovered_ms.map(|at| at.saturating_sub(storm_end)),
        "client_5xx": server_errors,
        "client_5xx_during_storm": storm_server_errors,
        "unanswered": unanswered,
        "streams_with_error_event": error_events,
        "probes_to_storming_group_during_storm": storm_probes,
    })
}

fn markdown(result: &Value) -> String {
    let r = &result["results"];
    let s = &result["scenario"];
    let row = |name: &str, value: &Value| format!("| {name} | {value} |\n");
    let mut text = format!(
        "Brown-out: {} clients, 529 storm of {} s on group 1, group.cooldown {} s, answers of \
         {} tokens × {} ms, forwarder profile {}\n\n| measure | value |\n|---|---|\n",
        s["clients"],
        s["storm_secs"],
        s["cooldown_secs"],
        s["output_tokens"],
        s["per_token_ms"],
        s["profile"]
    );
    for (name, key) in [
        (
            "client requests (during the storm)",
            "client_requests_during_storm",
        ),
        (
            "upstream attempts during the storm",
            "upstream_attempts_during_storm",
        ),
        (
            "attempts per client request during the storm (goal ≤ 1.5)",
            "attempts_per_client_request_during_storm",
        ),
        ("time to fail over (ms)", "time_to_fail_over_ms"),
        (
            "returns to the storming group before cooldown end",
            "returns_to_storming_group_before_cooldown_end",
        ),
        ("recovery after the storm (ms)", "recovery_after_storm_ms"),
        ("client 5xx (whole run)", "client_5xx"),
        ("client 5xx during the storm", "client_5xx_during_storm"),
        ("unanswered client requests", "unanswered"),
        (
            "200 streams with an error event",
            "streams_with_error_event",
        ),
        (
            "probes to the storming group during the storm (all 200)",
            "probes_to_storming_group_during_storm",
        ),
        (
            "cooldown windows (s from storm start)",
            "cooldown_windows_from_storm_start_s",
        ),
    ] {
        text.push_str(&row(name, &r[key]));
    }
    text
}
