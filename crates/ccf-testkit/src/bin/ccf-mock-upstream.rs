//! `ccf-mock-upstream`: the mock Anthropic upstream as a standalone server, for benchmarks and
//! manual runs. Serves `Reply::auto()` forever, records nothing, exits on Ctrl+C.
//!
//! `--fail-every N` (for `cargo xtask soak`) makes every Nth reply an upstream failure,
//! alternating 529 `overloaded_error` and 500 `api_error`: a task keeps the reply queue topped
//! up with that cycle.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ccf_testkit::{MockConfig, MockUpstream, Reply};
use clap::Parser;

/// A mock Anthropic Messages API upstream (JSON and SSE messages, count_tokens, models).
#[derive(Debug, Parser)]
#[command(name = "ccf-mock-upstream", version)]
struct Args {
    /// Address or host name to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8099)]
    port: u16,
    /// Delay between two SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Number of text deltas per streamed message.
    #[arg(long, default_value_t = 3)]
    deltas: usize,
    /// Make every Nth reply a failure (529 and 500 alternately); 0 never fails.
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
}

/// Replies kept waiting in the queue when `--fail-every` is on (refilled every few ms).
const FAILURE_QUEUE_DEPTH: usize = 256;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("ccf-mock-upstream: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let addr = resolve(&args.host, args.port).await?;
    let upstream = MockUpstream::start_with(MockConfig {
        addr,
        // A benchmark sends millions of requests: keeping them would grow without bound.
        record: false,
        default_reply: Reply::auto()
            .deltas(args.deltas)
            .chunk_delay(Duration::from_millis(args.chunk_delay_ms)),
    })
    .await?;
    println!("ccf-mock-upstream listening on {}", upstream.url());
    if args.fail_every == 0 {
        tokio::signal::ctrl_c().await?;
    } else {
        let normal = Reply::auto()
            .deltas(args.deltas)
            .chunk_delay(Duration::from_millis(args.chunk_delay_ms));
        // Counts down to the next failure; failures alternate between 529 and 500.
        let mut until_failure = args.fail_every;
        let mut failures: u64 = 0;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            while upstream.queued_replies() < FAILURE_QUEUE_DEPTH {
                until_failure -= 1;
                let reply = if until_failure > 0 {
                    normal.clone()
                } else {
                    until_failure = args.fail_every;
                    failures += 1;
                    if failures % 2 == 1 {
                        Reply::overloaded()
                    } else {
                        Reply::error(500, "api_error", "Internal server error")
                    }
                };
                upstream.enqueue(reply);
            }
            tokio::select! {
                result = &mut ctrl_c => {
                    result?;
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
    upstream.shutdown().await;
    Ok(())
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} resolves to no address")))
}
