//! `ccf-realistic-upstream`: the test kit's realistic upstream ([`RealisticUpstream`]) as a
//! standalone server, for `cargo xtask brownout` and manual runs. Generation time, paced
//! streams, optional TLS with HTTP/2, rate-limit headers; a driver starts and ends storms and
//! reads the record over `/_realistic/*`:
//!
//! - `POST /_realistic/storm?for_ms=N` (or `?next=N`; `&status=429|500`, `&retry_after=S`)
//! - `POST /_realistic/calm`
//! - `GET /_realistic/records`: one JSON object per request and line (`unix_ms`, `method`,
//!   `path`, `probe`, `message`, `status`, `storm`, `stream`, `tag`)
//!
//! Exits on Ctrl+C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ccf_testkit::{RateLimitFamily, RealisticConfig, RealisticUpstream};
use clap::Parser;

/// An Anthropic-like upstream that takes time and fails like production.
#[derive(Debug, Parser)]
#[command(name = "ccf-realistic-upstream", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8098)]
    port: u16,
    /// Generation time per output token, in milliseconds.
    #[arg(long, default_value_t = 5)]
    per_token_ms: u64,
    /// Output tokens per answer (capped by the request's `max_tokens`).
    #[arg(long, default_value_t = 20)]
    output_tokens: u32,
    /// Output tokens per `content_block_delta` event.
    #[arg(long, default_value_t = 5)]
    tokens_per_delta: u32,
    /// Wait before a stream's headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    time_to_first_byte_ms: u64,
    /// Serve TLS (h2 and http/1.1) with a CA made at start; its PEM goes to `--ca-out`.
    #[arg(long)]
    tls: bool,
    /// Where to write the test CA's certificate (PEM) with `--tls`.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS for h2 clients.
    #[arg(long, default_value_t = 100)]
    max_concurrent_streams: u32,
    /// Answer `HEAD /` with 404, like some relays.
    #[arg(long)]
    head_not_found: bool,
    /// Send the subscription family `anthropic-ratelimit-unified-*` instead of per-minute.
    #[arg(long)]
    unified: bool,
    /// The credential to require (`x-api-key` or Bearer); any is accepted without it.
    #[arg(long)]
    key: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("ccf-realistic-upstream: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await?
        .next()
        .ok_or("the host name resolves to no address")?;
    let upstream = RealisticUpstream::start_with(RealisticConfig {
        addr,
        tls: args.tls,
        max_concurrent_streams: args.max_concurrent_streams,
        per_token: Duration::from_millis(args.per_token_ms),
        output_tokens: args.output_tokens,
        tokens_per_delta: args.tokens_per_delta,
        time_to_first_byte: Duration::from_millis(args.time_to_first_byte_ms),
        head_root_not_found: args.head_not_found,
        rate_limits: if args.unified {
            RateLimitFamily::Unified
        } else {
            RateLimitFamily::PerMinute
        },
        required_key: args.key,
        control_paths: true,
        // A long run keeps every record but not every body.
        keep_bodies: false,
    })
    .await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, upstream.ca_certificate_pem()) {
        std::fs::write(path, pem)?;
    }
    println!("ccf-realistic-upstream listening on {}", upstream.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
