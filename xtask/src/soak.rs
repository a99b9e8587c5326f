//! `cargo xtask soak --minutes N`: steady mixed traffic through the forwarder for N minutes, to
//! show that memory stays flat and that every request ends up in the usage database (issue 9).
//!
//! Builds the release binaries, starts `ccf-mock-upstream` (paced streams, and every
//! `--fail-every`th reply a 529 or 500) and the forwarder (usage tracking on SQLite in a
//! temporary directory, one attempt per request so upstream failures reach the client), then
//! sends a steady `--rate` of requests from a pool of client threads: 40% JSON, 40% streamed
//! (read to the end) and 20% streamed then cancelled by the client after the first text delta.
//!
//! Every `--sample-seconds` it samples the forwarder: RSS (`VmRSS` in `/proc/<pid>/status`),
//! open file descriptors (entries of `/proc/<pid>/fd`), OS threads (`Threads:`; tokio's task
//! count needs `tokio_unstable`, so the forwarder's own `ccf_requests_in_flight` gauge from
//! `/metrics` stands in for the live request tasks) and the requests sent and finished so far.
//! At the end it stops the forwarder with SIGTERM (a graceful shutdown flushes the recorder),
//! exports the database with `cc-forwarder export --format json`, and checks that the rows match
//! the requests sent one for one (by the `x-ccf-request-id` each response carried).
//!
//! Verdicts: memory is flat when the median RSS of the last third of the samples is within 5%
//! (or 2 MiB) of the median of the middle third (the first third is warm-up: allocator pools and
//! connection pools grow to their working size); every request is accounted for when the row
//! count equals the request count and no response's id is missing from the database.
//!
//! With `--db-outage-minutes M`, a `sqlite3` process holds the usage database locked
//! (`BEGIN EXCLUSIVE`) for M minutes starting a tenth into the run: the recorder keeps
//! `--buffer-size` records in memory and the rest in its journal, then writes everything once
//! the lock goes (issue 18). The samples show its backlog and journal; the summary the peak RSS
//! (`VmHWM`).
//!
//! Writes `target/soak/results.json` and `target/soak/results.md` (the forwarder's log goes to
//! `target/soak/forwarder.log`) and prints the table.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{
    cargo_build, free_port, machine, proc_status_number, target_dir, Proc, TempDir,
};
use serde_json::{json, Value};

/// How long the forwarder gets to shut down gracefully after SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a single client request may take before the client gives up (an error, counted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Streamed replies: text deltas per message and delay between two events (about 0.3 s each).
const STREAM_DELTAS: u32 = 20;
const STREAM_DELAY_MS: u32 = 10;
/// Memory is "flat" when the last third's median RSS is within this fraction ...
const FLAT_FRACTION: f64 = 0.05;
/// ... or within this many kB of the middle third's.
const FLAT_SLACK_KB: f64 = 2048.0;
/// At most this many rows in the markdown table (the JSON has every sample).
const TABLE_ROWS: usize = 24;

/// `cargo xtask soak` options.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Length of the traffic phase in minutes (fractions allowed: 0.5 is 30 s).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Requests started per second.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Client threads (each request uses its own connection).
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 5)]
    sample_seconds: u64,
    /// Every Nth upstream reply is a failure (529 and 500 alternately); 0 for none.
    /// (The default 7 is prime to the 10-request mix, so failures hit every kind of request.)
    #[arg(long, default_value_t = 7)]
    fail_every: u64,
    /// Minutes the usage database is held locked by another process, from a tenth into the
    /// run (0: no outage). Needs `sqlite3`.
    #[arg(long, default_value_t = 0.0)]
    db_outage_minutes: f64,
    /// `usage_tracking.buffer_size` of the forwarder.
    #[arg(long, default_value_t = 1000)]
    buffer_size: u32,
}

/// Another process holding the SQLite database's write lock (a `sqlite3` shell in an open
/// `BEGIN EXCLUSIVE` transaction) until dropped.
struct DbLock {
    shell: std::process::Child,
}

impl DbLock {
    fn take(db: &Path) -> Result<DbLock> {
        let mut shell = Command::new("sqlite3")
            .arg("-bail")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting sqlite3 (needed by --db-outage-minutes)")?;
        let stdin = shell.stdin.as_mut().context("sqlite3 stdin")?;
        stdin.write_all(b".timeout 30000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")?;
        stdin.flush()?;
        let stdout = shell.stdout.as_mut().context("sqlite3 stdout")?;
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"locked") {
            if stdout.read(&mut byte)? == 0 {
                bail!("sqlite3 could not lock the usage database");
            }
            seen.push(byte[0]);
        }
        println!("==> usage database locked by another process");
        Ok(DbLock { shell })
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        if let Some(stdin) = self.shell.stdin.as_mut() {
            let _ = stdin.write_all(b"COMMIT;\n.quit\n");
        }
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
        println!("==> usage database unlocked");
    }
}

/// What kind of request a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Stream,
    Cancel,
}

impl Kind {
    /// The fixed mix: 4 JSON, 4 streamed, 2 cancelled out of every 10 requests.
    fn of(ticket: u64) -> Kind {
        match ticket % 10 {
            0 | 2 | 5 | 7 => Kind::Json,
            1 | 3 | 6 | 8 => Kind::Stream,
            _ => Kind::Cancel,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Stream => "sse",
            Kind::Cancel => "sse_cancelled",
        }
    }
}

/// What the client saw for one request.
#[derive(Debug, Clone)]
struct Sent {
    kind: Kind,
    /// `x-ccf-request-id` of the response, when headers arrived.
    request_id: Option<String>,
    /// `ok`, `cancelled`, `http_<status>` or `client_error`.
    outcome: String,
    error: Option<String>,
}

/// One sample of the forwarder.
#[derive(Debug, Clone)]
struct Sample {
    seconds: f64,
    rss_kb: u64,
    fds: u64,
    threads: u64,
    in_flight: Option<f64>,
    /// `ccf_recorder_backlog` and `ccf_recorder_journal_records`.
    backlog: Option<f64>,
    journal_records: Option<f64>,
    sent: u64,
    finished: u64,
}

/// Runs the soak.
pub fn run(root: &Path, args: &SoakArgs) -> Result<()> {
    if !args.minutes.is_finite()
        || args.minutes <= 0.0
        || args.rate == 0
        || args.clients == 0
        || args.sample_seconds == 0
        || !args.db_outage_minutes.is_finite()
        || args.db_outage_minutes < 0.0
        || args.buffer_size == 0
    {
        bail!("--minutes, --rate, --clients and --sample-seconds must be positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl+C handler")?;
    }
    build(root)?;
    let bin = target_dir(root).join("release");
    let out_dir = target_dir(root).join("soak");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = TempDir::new("ccf-soak")?;

    let mock_port = free_port()?;
    let mut mock = Proc::spawn(
        "ccf-mock-upstream",
        Command::new(bin.join("ccf-mock-upstream"))
            .args(["--port", &mock_port.to_string()])
            .args(["--deltas", &STREAM_DELTAS.to_string()])
            .args(["--chunk-delay-ms", &STREAM_DELAY_MS.to_string()])
            .args(["--fail-every", &args.fail_every.to_string()])
            .stdout(Stdio::null()),
    )?;
    mock.wait_listening(mock_port, &stop)?;

    let port = free_port()?;
    let config = work.path.join("soak.yaml");
    std::fs::write(
        &config,
        forwarder_config(&work.path, port, mock_port, args.buffer_size),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    // Its log (a warning per upstream failure) goes to a file, not the terminal.
    let log_path = out_dir.join("forwarder.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut forwarder = Proc::spawn(
        "cc-forwarder",
        Command::new(bin.join("cc-forwarder"))
            .arg("--config")
            .arg(&config)
            .arg("--no-tui")
            .current_dir(&work.path)
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log),
    )?;
    forwarder.wait_listening(port, &stop)?;
    let pid = forwarder.pid();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    thread::sleep(Duration::from_secs(1));

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "\n==> soak: {:.1} min at {} requests/s ({} clients), every {} s a sample, upstream \
         failure every {} replies",
        args.minutes, args.rate, args.clients, args.sample_seconds, args.fail_every
    );
    let started = Instant::now();
    let traffic = Traffic::new(address, args.rate, started, duration, Arc::clone(&stop));
    let workers: Vec<_> = (0..args.clients)
        .map(|_| {
            let traffic = Arc::clone(&traffic);
            thread::spawn(move || traffic.work())
        })
        .collect();

    let mut samples = Vec::new();
    let sample_every = Duration::from_secs(args.sample_seconds);
    let mut next_sample = started;
    let outage_from = duration / 10;
    let outage_until = outage_from + Duration::from_secs_f64(args.db_outage_minutes * 60.0);
    let mut outage: Option<DbLock> = None;
    let mut outage_done = args.db_outage_minutes == 0.0;
    loop {
        let now = started.elapsed();
        if !outage_done && outage.is_none() && now >= outage_from {
            outage = Some(DbLock::take(&work.path.join("usage.db"))?);
        }
        if outage.is_some() && (now >= outage_until || now >= duration) {
            outage = None;
            outage_done = true;
        }
        let sample = take_sample(pid, address, &traffic, started)?;
        print_sample(&sample);
        samples.push(sample);
        let traffic_over = started.elapsed() >= duration || stop.load(Ordering::SeqCst);
        if traffic_over && workers.iter().all(|worker| worker.is_finished()) {
            break;
        }
        next_sample += sample_every;
        while Instant::now() < next_sample && !workers.iter().all(|worker| worker.is_finished()) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    drop(outage);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    // The last outcomes are recorded when their bodies end: give the tasks a moment, then take
    // an idle sample (in-flight should be back to 0).
    thread::sleep(Duration::from_secs(2));
    let mut idle = take_sample(pid, address, &traffic, started)?;
    // After an outage the journal drains at the database's pace: wait for it (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while (idle.backlog.unwrap_or(0.0) > 0.0 || idle.journal_records.unwrap_or(0.0) > 0.0)
        && Instant::now() < drain_deadline
    {
        thread::sleep(Duration::from_secs(1));
        idle = take_sample(pid, address, &traffic, started)?;
    }
    print_sample(&idle);
    samples.push(idle);
    let peak_rss_kb = proc_status_number(pid, "VmHWM")?;
    let traffic_seconds = started.elapsed().as_secs_f64();

    println!("\n==> graceful shutdown (SIGTERM) and export");
    let exit = forwarder.terminate(SHUTDOWN_DEADLINE)?;
    mock.stop();
    let rows = export_rows(&bin, &config, &work.path)?;

    let sent = traffic
        .sent
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut summary = summarize(&sent, &rows, &samples, &exit);
    summary["peak_rss_hwm_kb"] = json!(peak_rss_kb);
    summary["db_outage_minutes"] = json!(args.db_outage_minutes);
    summary["buffer_size"] = json!(args.buffer_size);
    summary["max_backlog"] = json!(samples.iter().filter_map(|s| s.backlog).fold(0.0, f64::max));
    summary["max_journal_records"] = json!(samples
        .iter()
        .filter_map(|s| s.journal_records)
        .fold(0.0, f64::max));
    let table = markdown(args, &summary, &samples, traffic_seconds);
    let results = json!({
        "command": format!("cargo xtask soak --minutes {}", args.minutes),
        "settings": {
            "minutes": args.minutes,
            "rate": args.rate,
            "clients": args.clients,
            "sample_seconds": args.sample_seconds,
            "fail_every": args.fail_every,
            "db_outage_minutes": args.db_outage_minutes,
            "buffer_size": args.buffer_size,
            "stream_deltas": STREAM_DELTAS,
            "stream_delay_ms": STREAM_DELAY_MS,
        },
        "machine": machine(),
        "traffic_seconds": traffic_seconds,
        "summary": summary,
        "samples": samples.iter().map(sample_json).collect::<Vec<_>>(),
    });
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out_dir.join("results.md");
    std::fs::write(&md_path, &table).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{table}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    let flat = summary["memory"]["flat"].as_bool().unwrap_or(false);
    let accounted = summary["accounting"]["all_accounted"]
        .as_bool()
        .unwrap_or(false);
    if !flat || !accounted {
        bail!("soak failed: memory flat = {flat}, every request accounted for = {accounted}");
    }
    Ok(())
}

/// The forwarder's configuration: usage tracking on SQLite, one attempt per request (an
/// upstream failure reaches the client instead of being retried), health checks rare.
fn forwarder_config(dir: &Path, port: u16, upstream: u16, buffer_size: u32) -> String {
    let db = dir.join("usage.db");
    format!(
        "server:\n  host: \"127.0.0.1\"\n  port: {port}\n\
         logging:\n  level: warn\n\
         web:\n  enabled: false\n\
         tui:\n  enabled: false\n\
         retry:\n  max_attempts: 1\n\
         health:\n  check_interval: 300s\n\
         usage_tracking:\n  enabled: true\n  buffer_size: {buffer_size}\n  batch_size: {}\n  database:\n    type: sqlite\n    path: \"{}\"\n\
         endpoints:\n  - name: mock\n    url: http://127.0.0.1:{upstream}\n    token: soak-token\n",
        buffer_size.min(100),
        db.display()
    )
}

/// The client side: a schedule of tickets (one per request) shared by the client threads.
struct Traffic {
    address: SocketAddr,
    rate: u32,
    started: Instant,
    duration: Duration,
    stop: Arc<AtomicBool>,
    next_ticket: AtomicU64,
    finished: AtomicU64,
    sent: Mutex<Vec<Sent>>,
}

impl Traffic {
    fn new(
        address: SocketAddr,
        rate: u32,
        started: Instant,
        duration: Duration,
        stop: Arc<AtomicBool>,
    ) -> Arc<Traffic> {
        Arc::new(Traffic {
            address,
            rate,
            started,
            duration,
            stop,
            next_ticket: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            sent: Mutex::new(Vec::new()),
        })
    }

    /// One client thread: takes the next ticket, waits for its time, sends it; until the end.
    fn work(&self) {
        loop {
            let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
            let due = Duration::from_secs_f64(ticket as f64 / f64::from(self.rate));
            if due >= self.duration || self.stop.load(Ordering::SeqCst) {
                return;
            }
            let due_at = self.started + due;
            let now = Instant::now();
            if due_at > now {
                thread::sleep(due_at - now);
            }
            let kind = Kind::of(ticket);
            let sent = match send(self.address, kind) {
                Ok(sent) => sent,
                Err(error) => Sent {
                    kind,
                    request_id: None,
                    outcome: "client_error".to_string(),
                    error: Some(format!("{error:#}")),
                },
            };
            if let Ok(mut all) = self.sent.lock() {
                all.push(sent);
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Requests started so far (tickets handed out that were due).
    fn started_count(&self) -> u64 {
        let handed = self.next_ticket.load(Ordering::SeqCst);
        let due_now = (self.started.elapsed().min(self.duration).as_secs_f64()
            * f64::from(self.rate))
        .ceil() as u64;
        handed.min(due_now)
    }
}

/// Sends one request of `kind` on its own connection and reads (or abandons) the answer.
fn send(address: SocketAddr, kind: Kind) -> Result<Sent> {
    let stream = kind != Kind::Json;
    let body = format!(
        "{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":{stream},\
         \"messages\":[{{\"role\":\"user\",\"content\":\"soak test\"}}]}}"
    );
    let mut connection = crate::http::send_post_json(
        address,
        "/v1/messages",
        &[
            ("anthropic-version", "2023-06-01"),
            ("x-api-key", "soak-client"),
        ],
        &body,
        REQUEST_TIMEOUT,
    )?;

    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = connection.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
        if kind == Kind::Cancel {
            if let Some(head_end) = find(&raw, b"\r\n\r\n") {
                let head = parse_head(&raw[..head_end])?;
                if head.status == 200 && find(&raw[head_end..], b"content_block_delta").is_some() {
                    // Mid-stream: hang up without reading the rest.
                    drop(connection);
                    return Ok(Sent {
                        kind,
                        request_id: head.request_id,
                        outcome: "cancelled".to_string(),
                        error: None,
                    });
                }
            }
        }
    }
    let response = crate::http::parse_response(&raw)?;
    let request_id = response.header("x-ccf-request-id").map(str::to_string);
    let outcome = if response.status == 200 {
        let complete = !stream || find(&response.body, b"message_stop").is_some();
        if complete {
            "ok".to_string()
        } else {
            "incomplete".to_string()
        }
    } else {
        format!("http_{}", response.status)
    };
    Ok(Sent {
        kind,
        request_id,
        outcome,
        error: None,
    })
}

/// The status and request id of a response head.
struct Head {
    status: u16,
    request_id: Option<String>,
}

fn parse_head(head: &[u8]) -> Result<Head> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("bad status line")?;
    let request_id = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-ccf-request-id")
            .then(|| value.trim().to_string())
    });
    Ok(Head { status, request_id })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Samples the forwarder's process and in-flight gauge.
fn take_sample(
    pid: u32,
    address: SocketAddr,
    traffic: &Traffic,
    started: Instant,
) -> Result<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    let metrics = metrics_text(address);
    let gauge = |name| {
        metrics
            .as_deref()
            .and_then(|text| crate::http::gauge(text, name))
    };
    Ok(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kb: proc_status_number(pid, "VmRSS")?,
        fds,
        threads: proc_status_number(pid, "Threads")?,
        in_flight: gauge("ccf_requests_in_flight"),
        backlog: gauge("ccf_recorder_backlog"),
        journal_records: gauge("ccf_recorder_journal_records"),
        sent: traffic.started_count(),
        finished: traffic.finished.load(Ordering::SeqCst),
    })
}

fn print_sample(sample: &Sample) {
    println!(
        "{:>6.0} s  RSS {:>7.1} MB  fds {:>4}  threads {:>3}  in flight {:>4}  sent {:>6}  finished {:>6}  backlog {:>5}  journal {:>6}",
        sample.seconds,
        sample.rss_kb as f64 / 1024.0,
        sample.fds,
        sample.threads,
        sample
            .in_flight
            .map_or_else(|| "?".to_string(), |value| format!("{value:.0}")),
        sample.sent,
        sample.finished,
        sample
            .backlog
            .map_or_else(|| "?".to_string(), |value| format!("{value:.0}")),
        sample
            .journal_records
            .map_or_else(|| "?".to_string(), |value| format!("{value:.0}")),
    );
}

/// The forwarder's `/metrics` text (None when unreadable).
fn metrics_text(address: SocketAddr) -> Option<String> {
    let response = crate::http::get(address, "/metrics", Duration::from_secs(5)).ok()?;
    Some(String::from_utf8_lossy(&response.body).into_owned())
}

/// The rows of the usage database, through the forwarder's own `export` command.
fn export_rows(bin: &Path, config: &Path, work: &Path) -> Result<Vec<Value>> {
    let output = Command::new(bin.join("cc-forwarder"))
        .arg("--config")
        .arg(config)
        .args(["export", "--format", "json"])
        .current_dir(work)
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cc-forwarder export")?;
    if !output.status.success() {
        bail!("cc-forwarder export failed ({})", output.status);
    }
    let rows: Value =
        serde_json::from_slice(&output.stdout).context("parsing the exported rows")?;
    match rows {
        Value::Array(rows) => Ok(rows),
        other => bail!("the export is not a JSON array: {other}"),
    }
}

/// Median of the values (None when empty).
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Memory verdict: medians of the middle and last thirds of the samples.
fn memory_verdict(rss_kb: &[f64]) -> Value {
    let third = rss_kb.len() / 3;
    let middle = median(&rss_kb[third..(2 * third).max(third)]);
    let last = median(&rss_kb[(2 * third).min(rss_kb.len())..]);
    let (Some(middle), Some(last)) = (middle, last) else {
        return json!({ "flat": false, "reason": "too few samples" });
    };
    let growth = last - middle;
    let flat = growth <= (middle * FLAT_FRACTION).max(FLAT_SLACK_KB);
    json!({
        "flat": flat,
        "middle_third_median_rss_kb": middle,
        "last_third_median_rss_kb": last,
        "growth_kb": growth,
        "growth_percent": if middle > 0.0 { growth / middle * 100.0 } else { 0.0 },
        "peak_rss_kb": rss_kb.iter().copied().fold(0.0, f64::max),
        "criterion": format!(
            "last-third median RSS <= middle-third median + max({:.0}%, {:.0} kB)",
            FLAT_FRACTION * 100.0,
            FLAT_SLACK_KB
        ),
    })
}

/// Everything the verdicts need.
fn summarize(sent: &[Sent], rows: &[Value], samples: &[Sample], exit: &str) -> Value {
    let mut client_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let mut client_errors = Vec::new();
    for request in sent {
        *client_outcomes.entry(request.outcome.clone()).or_default() += 1;
        *kinds.entry(request.kind.name()).or_default() += 1;
        if let Some(error) = &request.error {
            if client_errors.len() < 5 {
                client_errors.push(error.clone());
            }
        }
    }
    let mut db_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut db_http: BTreeMap<String, u64> = BTreeMap::new();
    let mut db_ids = BTreeSet::new();
    for row in rows {
        let status = row["status"].as_str().unwrap_or("?").to_string();
        *db_status.entry(status).or_default() += 1;
        let code = match &row["http_status_code"] {
            Value::Null => "none".to_string(),
            other => other.to_string().trim_matches('"').to_string(),
        };
        *db_http.entry(code).or_default() += 1;
        if let Some(id) = row["request_id"].as_str() {
            db_ids.insert(id.to_string());
        }
    }
    let client_ids: BTreeSet<&str> = sent
        .iter()
        .filter_map(|request| request.request_id.as_deref())
        .collect();
    let missing: Vec<&str> = client_ids
        .iter()
        .filter(|id| !db_ids.contains(**id))
        .copied()
        .collect();
    let without_id = sent
        .iter()
        .filter(|request| request.request_id.is_none())
        .count();
    let all_accounted = rows.len() == sent.len() && missing.is_empty();
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_kb as f64).collect();
    let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
    let threads: Vec<u64> = samples.iter().map(|s| s.threads).collect();
    json!({
        "memory": memory_verdict(&rss),
        "fds": { "min": fds.iter().min(), "max": fds.iter().max(), "last": fds.last() },
        "threads": { "min": threads.iter().min(), "max": threads.iter().max(), "last": threads.last() },
        "in_flight_after": samples.last().and_then(|s| s.in_flight),
        "accounting": {
            "all_accounted": all_accounted,
            "requests_sent": sent.len(),
            "rows_in_database": rows.len(),
            "requests_by_kind": kinds,
            "client_outcomes": client_outcomes,
            "rows_by_status": db_status,
            "rows_by_http_status": db_http,
            "responses_without_request_id": without_id,
            "response_ids_missing_from_database": missing.len(),
            "first_missing_ids": missing.iter().take(5).collect::<Vec<_>>(),
            "first_client_errors": client_errors,
        },
        "forwarder_exit": exit,
    })
}

fn sample_json(sample: &Sample) -> Value {
    json!({
        "seconds": sample.seconds,
        "rss_kb": sample.rss_kb,
        "fds": sample.fds,
        "threads": sample.threads,
        "in_flight": sample.in_flight,
        "backlog": sample.backlog,
        "journal_records": sample.journal_records,
        "sent": sample.sent,
        "finished": sample.finished,
    })
}

/// The markdown report: settings, samples over time (thinned to [`TABLE_ROWS`]), verdicts.
fn markdown(args: &SoakArgs, summary: &Value, samples: &[Sample], traffic_seconds: f64) -> String {
    let accounting = &summary["accounting"];
    let memory = &summary["memory"];
    let mb = |value: &Value| format!("{:.1} MB", value.as_f64().unwrap_or(f64::NAN) / 1024.0);
    let counts = |value: &Value| {
        value
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(key, count)| format!("{key} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut t = String::new();
    t.push_str(&format!(
        "`cargo xtask soak --minutes {}`: {} requests/s from {} clients for {:.0} s (4 JSON, 4 \
         streamed, 2 streamed then cancelled by the client in every 10; every {}th upstream \
         reply a 529 or 500; streams of {STREAM_DELTAS} deltas {STREAM_DELAY_MS} ms apart); \
         forwarder release build, usage tracking on SQLite, one attempt per request.\n\n",
        args.minutes, args.rate, args.clients, traffic_seconds, args.fail_every
    ));
    t.push_str("| time | RSS | open fds | OS threads | in flight | requests sent | finished |\n");
    t.push_str("|---|---|---|---|---|---|---|\n");
    let step = samples.len().div_ceil(TABLE_ROWS).max(1);
    for (index, sample) in samples.iter().enumerate() {
        if index % step != 0 && index + 1 != samples.len() {
            continue;
        }
        t.push_str(&format!(
            "| {:.0} s | {:.1} MB | {} | {} | {} | {} | {} |\n",
            sample.seconds,
            sample.rss_kb as f64 / 1024.0,
            sample.fds,
            sample.threads,
            sample
                .in_flight
                .map_or_else(|| "?".to_string(), |value| format!("{value:.0}")),
            sample.sent,
            sample.finished
        ));
    }
    if args.db_outage_minutes > 0.0 {
        t.push_str(&format!(
            "\n**Usage database locked by another process for {} min** (from a tenth into the \
             run), `buffer_size` {}: largest in-memory backlog {}, largest journal {} records; \
             peak RSS (VmHWM) {}.\n",
            args.db_outage_minutes,
            args.buffer_size,
            summary["max_backlog"],
            summary["max_journal_records"],
            mb(&summary["peak_rss_hwm_kb"]),
        ));
    }
    t.push_str(&format!(
        "\n**Memory: {}.** Median RSS of the middle third {}, of the last third {} ({:+.1}%), \
         peak {} ({}).\n\n",
        if memory["flat"].as_bool().unwrap_or(false) {
            "flat"
        } else {
            "NOT flat"
        },
        mb(&memory["middle_third_median_rss_kb"]),
        mb(&memory["last_third_median_rss_kb"]),
        memory["growth_percent"].as_f64().unwrap_or(f64::NAN),
        mb(&memory["peak_rss_kb"]),
        memory["criterion"].as_str().unwrap_or_default(),
    ));
    t.push_str(&format!(
        "**Every request accounted for: {}.** {} requests sent, {} rows in the database; {} \
         response ids missing from the database, {} responses without an id.\n\n",
        if accounting["all_accounted"].as_bool().unwrap_or(false) {
            "yes"
        } else {
            "NO"
        },
        accounting["requests_sent"],
        accounting["rows_in_database"],
        accounting["response_ids_missing_from_database"],
        accounting["responses_without_request_id"],
    ));
    t.push_str(&format!(
        "- requests by kind: {}\n- what the clients saw: {}\n- rows by status: {}\n- rows by \
         HTTP status: {}\n- open fds {}..{}, OS threads {}..{}, in flight after the run: {}; \
         forwarder exit after SIGTERM: {}\n",
        counts(&accounting["requests_by_kind"]),
        counts(&accounting["client_outcomes"]),
        counts(&accounting["rows_by_status"]),
        counts(&accounting["rows_by_http_status"]),
        summary["fds"]["min"],
        summary["fds"]["max"],
        summary["threads"]["min"],
        summary["threads"]["max"],
        summary["in_flight_after"],
        summary["forwarder_exit"].as_str().unwrap_or("?"),
    ));
    t
}

/// `cargo build --release -p cc-forwarder -p ccf-testkit --bins`.
fn build(root: &Path) -> Result<()> {
    cargo_build(
        root,
        &[
            "build",
            "--release",
            "-p",
            "cc-forwarder",
            "-p",
            "ccf-testkit",
            "--bins",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::parse_status_field;

    #[test]
    fn the_mix_is_four_json_four_streamed_two_cancelled_in_ten() {
        let mut counts = BTreeMap::new();
        for ticket in 0..1000 {
            *counts.entry(Kind::of(ticket).name()).or_insert(0) += 1;
        }
        assert_eq!(counts["json"], 400);
        assert_eq!(counts["sse"], 400);
        assert_eq!(counts["sse_cancelled"], 200);
    }

    #[test]
    fn flat_memory_passes_and_growing_memory_fails() {
        let flat: Vec<f64> = (0..30)
            .map(|i| 20_000.0 + f64::from(i % 3) * 100.0)
            .collect();
        assert_eq!(memory_verdict(&flat)["flat"], true);
        let growing: Vec<f64> = (0..30).map(|i| 20_000.0 + f64::from(i) * 1_000.0).collect();
        assert_eq!(memory_verdict(&growing)["flat"], false);
        assert_eq!(memory_verdict(&[1.0])["flat"], false);
    }

    #[test]
    fn gauges_and_status_fields_are_parsed() {
        let metrics = "# HELP ccf_requests_in_flight x\n# TYPE ccf_requests_in_flight gauge\n\
                       ccf_requests_in_flight 3\nccf_requests_in_flight_other 9\n";
        assert_eq!(
            crate::http::gauge(metrics, "ccf_requests_in_flight"),
            Some(3.0)
        );
        assert_eq!(crate::http::gauge(metrics, "missing"), None);
        let status = "Name:\tcc-forwarder\nThreads:\t7\nVmRSS:\t  12345 kB\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(12_345));
        assert_eq!(parse_status_field(status, "Threads"), Some(7));
    }

    #[test]
    fn accounting_requires_one_row_per_request_and_every_id() {
        let sent = |id: &str| Sent {
            kind: Kind::Json,
            request_id: Some(id.to_string()),
            outcome: "ok".to_string(),
            error: None,
        };
        let row =
            |id: &str| json!({"request_id": id, "status": "completed", "http_status_code": 200});
        let samples = Vec::new();
        let good = summarize(
            &[sent("a"), sent("b")],
            &[row("a"), row("b")],
            &samples,
            "0",
        );
        assert_eq!(good["accounting"]["all_accounted"], true);
        let lost = summarize(&[sent("a"), sent("b")], &[row("a")], &samples, "0");
        assert_eq!(lost["accounting"]["all_accounted"], false);
        let swapped = summarize(
            &[sent("a"), sent("b")],
            &[row("a"), row("c")],
            &samples,
            "0",
        );
        assert_eq!(swapped["accounting"]["all_accounted"], false);
        assert_eq!(
            swapped["accounting"]["response_ids_missing_from_database"],
            1
        );
    }
}
