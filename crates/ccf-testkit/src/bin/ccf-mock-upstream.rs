//! `ccf-mock-upstream`: the mock Anthropic upstream as a standalone server, for benchmarks and
//! manual runs. Serves `Reply::auto()` forever, records nothing, exits on Ctrl+C.

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
}

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
    tokio::signal::ctrl_c().await?;
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
