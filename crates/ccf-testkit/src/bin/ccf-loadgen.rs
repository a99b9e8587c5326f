//! `ccf-loadgen`: a small HTTP/1.1 load generator for the benchmarks (`cargo xtask bench`).
//!
//! Written with the project's own stack (hyper 1 client, tokio) and HDR histograms. Each worker
//! owns one keep-alive connection (reconnecting after an error) and sends `POST /v1/messages`
//! back to back until the request budget or the time budget runs out, whichever comes first.
//!
//! Modes:
//! - `json`: non-streaming requests; records the full latency (request sent to body read).
//! - `sse`: streaming requests; also records the time to first body byte (TTFB) and every gap
//!   between two body frames, counts streams that did not end with `message_stop`
//!   (incomplete) and streams with a gap above `--stall-ms` (stalled). `--concurrency 1000
//!   --requests 1000` is the "1,000 concurrent streams" scenario.
//!
//! Prints exactly one JSON line on stdout: counts, requests/s and p50/p90/p99/max in µs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

/// Largest value the histograms hold, in µs (a minute).
const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// What kind of requests to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Non-streaming Messages requests.
    Json,
    /// Streaming (SSE) Messages requests.
    Sse,
}

/// A load generator for the Anthropic Messages API (loopback benchmarks).
#[derive(Debug, Parser)]
#[command(name = "ccf-loadgen", version)]
struct Args {
    /// json or sse.
    #[arg(long, value_enum, default_value = "json")]
    mode: Mode,
    /// Address of the server (an IP address and a port: 127.0.0.1:8087).
    #[arg(long)]
    target: SocketAddr,
    /// Number of concurrent workers (connections).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many requests in total (0: no limit; then --duration must bound the run).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Stop starting new requests after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests sent before measuring starts (not counted), per worker.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Give up on one request after this many seconds (counted as an error).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// A gap between two SSE frames longer than this marks the stream as stalled.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One worker's measurements.
struct Stats {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    gap: Histogram<u64>,
    ok: u64,
    errors: u64,
    incomplete: u64,
    stalled: u64,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> Result<Self, String> {
        let histogram = || {
            Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                .map_err(|error| format!("histogram: {error}"))
        };
        Ok(Self {
            latency: histogram()?,
            ttfb: histogram()?,
            gap: histogram()?,
            ok: 0,
            errors: 0,
            incomplete: 0,
            stalled: 0,
            first_error: None,
        })
    }

    fn merge(&mut self, other: &Stats) -> Result<(), String> {
        for (into, from) in [
            (&mut self.latency, &other.latency),
            (&mut self.ttfb, &other.ttfb),
            (&mut self.gap, &other.gap),
        ] {
            into.add(from)
                .map_err(|error| format!("merging histograms: {error}"))?;
        }
        self.ok += other.ok;
        self.errors += other.errors;
        self.incomplete += other.incomplete;
        self.stalled += other.stalled;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }
}

/// The shared request budget.
struct Budget {
    started: AtomicU64,
    limit: u64,
    deadline: Instant,
}

impl Budget {
    /// Takes one request from the budget; false when it is spent or time is up.
    fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        if self.limit == 0 {
            return true;
        }
        self.started.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ccf-loadgen: starting tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ccf-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, String> {
    if args.requests == 0 && (args.duration.is_nan() || args.duration <= 0.0) {
        return Err("set --requests or a positive --duration".to_string());
    }
    let body = Bytes::from(
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 256,
            "stream": args.mode == Mode::Sse,
            "messages": [{"role": "user", "content": "Benchmark request: say hello."}],
        })
        .to_string(),
    );
    let args = Arc::new(args);
    let concurrency = args.concurrency.max(1);

    // Warm-up: each worker connects and sends `warmup` requests; the measured phase (and its
    // clock) starts once every worker is done, when the budget is published.
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let (budget_sender, budget_receiver) = tokio::sync::watch::channel::<Option<Arc<Budget>>>(None);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let args = Arc::clone(&args);
        let body = body.clone();
        let barrier = Arc::clone(&barrier);
        let mut budget_receiver = budget_receiver.clone();
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::new()?;
            let mut connection: Option<SendRequest<Full<Bytes>>> = None;
            let mut scratch = Stats::new()?;
            for _ in 0..args.warmup {
                one_request(&args, &body, &mut connection, &mut scratch).await;
            }
            barrier.wait().await;
            let budget = budget_receiver
                .wait_for(Option::is_some)
                .await
                .map_err(|_| "the budget was never published".to_string())?
                .clone();
            let Some(budget) = budget else {
                return Err("no budget".to_string());
            };
            while budget.take() {
                one_request(&args, &body, &mut connection, &mut stats).await;
            }
            Ok::<Stats, String>(stats)
        }));
    }
    let warmup_allowance = Duration::from_secs_f64(args.timeout * (args.warmup as f64 + 1.0));
    if tokio::time::timeout(warmup_allowance, barrier.wait())
        .await
        .is_err()
    {
        for worker in &workers {
            worker.abort();
        }
        return Err("workers did not finish warming up in time".to_string());
    }
    let started = Instant::now();
    let measured_deadline = started + Duration::from_secs_f64(args.duration.max(0.0));
    let _ = budget_sender.send(Some(Arc::new(Budget {
        started: AtomicU64::new(0),
        limit: args.requests,
        deadline: measured_deadline,
    })));
    let hard_deadline = measured_deadline + Duration::from_secs_f64(args.timeout + 5.0);

    let mut total = Stats::new()?;
    for worker in workers {
        let remaining = hard_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, worker).await {
            Ok(Ok(Ok(stats))) => total.merge(&stats)?,
            Ok(Ok(Err(error))) => total.error(error),
            Ok(Err(join_error)) => total.error(format!("worker failed: {join_error}")),
            Err(_) => total.error("worker did not finish before the hard deadline".to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(report(&args, &total, elapsed).to_string())
}

fn percentiles(histogram: &Histogram<u64>) -> serde_json::Value {
    if histogram.is_empty() {
        return serde_json::Value::Null;
    }
    json!({
        "count": histogram.len(),
        "p50": histogram.value_at_quantile(0.50),
        "p90": histogram.value_at_quantile(0.90),
        "p99": histogram.value_at_quantile(0.99),
        "max": histogram.max(),
    })
}

fn report(args: &Args, stats: &Stats, elapsed: f64) -> serde_json::Value {
    let requests = stats.ok + stats.errors;
    json!({
        "mode": match args.mode { Mode::Json => "json", Mode::Sse => "sse" },
        "target": args.target.to_string(),
        "concurrency": args.concurrency,
        "requests": requests,
        "ok": stats.ok,
        "errors": stats.errors,
        "incomplete": stats.incomplete,
        "stalled": stats.stalled,
        "elapsed_s": elapsed,
        "rps": if elapsed > 0.0 { stats.ok as f64 / elapsed } else { 0.0 },
        "latency_us": percentiles(&stats.latency),
        "ttfb_us": percentiles(&stats.ttfb),
        "gap_us": percentiles(&stats.gap),
        "first_error": stats.first_error,
    })
}

/// Sends one request on the worker's connection (opening one if needed) and records it.
async fn one_request(
    args: &Args,
    body: &Bytes,
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    stats: &mut Stats,
) {
    let timeout = Duration::from_secs_f64(args.timeout);
    match tokio::time::timeout(timeout, exchange(args, body, connection, stats)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            *connection = None;
            stats.error(error);
        }
        Err(_) => {
            *connection = None;
            stats.error(format!("request timed out after {}s", args.timeout));
        }
    }
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|error| format!("connect {target}: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn exchange(
    args: &Args,
    body: &Bytes,
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    stats: &mut Stats,
) -> Result<(), String> {
    let mut sender = match connection.take() {
        Some(sender) if !sender.is_closed() => sender,
        _ => connect(args.target).await?,
    };
    sender
        .ready()
        .await
        .map_err(|error| format!("connection not ready: {error}"))?;
    let request = hyper::Request::post("/v1/messages")
        .header(hyper::header::HOST, args.target.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", "2023-06-01")
        .header(hyper::header::AUTHORIZATION, "Bearer ccf-loadgen")
        .body(Full::new(body.clone()))
        .map_err(|error| format!("building the request: {error}"))?;
    let started = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("sending: {error}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first: Option<Instant> = None;
    let mut previous = started;
    let mut max_gap = Duration::ZERO;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| format!("reading the body: {error}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        if args.mode == Mode::Sse {
            match first {
                None => {
                    first = Some(now);
                    record(&mut stats.ttfb, now - started);
                }
                Some(_) => {
                    let gap = now - previous;
                    max_gap = max_gap.max(gap);
                    record(&mut stats.gap, gap);
                }
            }
            // Keep the last bytes only: enough to see `message_stop` at the end.
            tail.extend_from_slice(&data);
            if tail.len() > 512 {
                tail.drain(..tail.len() - 256);
            }
        }
        previous = now;
    }
    let elapsed = started.elapsed();
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    record(&mut stats.latency, elapsed);
    stats.ok += 1;
    if args.mode == Mode::Sse {
        let complete = tail.windows(12).any(|window| window == b"message_stop");
        if !complete {
            stats.incomplete += 1;
        }
        if max_gap > Duration::from_millis(args.stall_ms) {
            stats.stalled += 1;
        }
    }
    *connection = Some(sender);
    Ok(())
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, HISTOGRAM_MAX_US));
}
