//! `ccf-floor-proxy`: the libraries the forwarder is built on, forwarding with nothing of the
//! forwarder's own: the floor under its cost per request (issue 19).
//!
//! The cheapest proxy the two make: one current-thread tokio runtime per core, each with its
//! own `SO_REUSEPORT` listener, as the forwarder's; HTTP/1 only, hyper's
//! `server::conn::http1` with `writev(false)` as the forwarder's, but without its HTTP/2 on the
//! same port (hyper-util's `auto` connection) and without a header-read timeout (a timer per
//! request), which cost 3,100-3,500 instructions per request more (docs/benchmarks.md, issue 19
//! part 17). Every request goes unchanged to one upstream over `hyper::client::conn::http1`,
//! one upstream connection per client connection, driven in the request's own task as the
//! forwarder drives its upstream connections (`ccf-proxy/src/client/in_task.rs`): no
//! admission, routing, body buffering, header rewriting, usage reading, records, metrics or
//! logs. The request body is streamed, not read whole first.
//!
//! `cargo xtask bench` runs it beside nginx and the forwarders, and `cargo xtask callgrind`
//! counts its instructions per request, so that what hyper and tokio cost by themselves is
//! measured in the same run as what the forwarder costs (docs/benchmarks.md, issue 19 part 17).
//! Not a product: there is no configuration, no limit and no retry.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A reverse proxy made of hyper and tokio alone (a benchmark's floor, not a product).
#[derive(Debug, Parser)]
#[command(name = "ccf-floor-proxy", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (not 0: every thread binds the same port).
    #[arg(long)]
    port: u16,
    /// The upstream every request goes to (`host:port`, plain HTTP/1).
    #[arg(long)]
    upstream: SocketAddr,
    /// Serving threads (default: one per core, as the forwarder).
    #[arg(long)]
    threads: Option<NonZeroUsize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.port == 0 {
        eprintln!("ccf-floor-proxy: --port must not be 0");
        return ExitCode::FAILURE;
    }
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let listen = SocketAddr::new(args.host, args.port);
    for index in 0..threads {
        let upstream = args.upstream;
        let spawned = std::thread::Builder::new()
            .name(format!("floor-{index}"))
            .spawn(move || {
                if let Err(problem) = serve_thread(listen, upstream) {
                    eprintln!("ccf-floor-proxy: {problem}");
                    std::process::exit(1);
                }
            });
        if let Err(problem) = spawned {
            eprintln!("ccf-floor-proxy: cannot start a thread: {problem}");
            return ExitCode::FAILURE;
        }
    }
    // SIGTERM and Ctrl+C end the process with `exit`, so that a profiler running it (callgrind)
    // writes its output.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(wait_for_signal()));
    match signals {
        Ok(()) => std::process::exit(0),
        Err(problem) => {
            eprintln!("ccf-floor-proxy: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted,
    }
}

/// One serving thread: its own runtime and its own `SO_REUSEPORT` listener.
fn serve_thread(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        accept_loop(socket.listen(1024)?, upstream).await
    })
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.writev(false);
    loop {
        let (stream, _) = listener.accept().await?;
        // As the forwarder: a client gone before this is no reason to stop serving the others.
        let _ = stream.set_nodelay(true);
        let http1 = http1.clone();
        tokio::spawn(async move {
            let slot = UpstreamSlot::default();
            let service = hyper::service::service_fn(move |request| {
                let slot = slot.clone();
                async move { Ok::<_, std::convert::Infallible>(forward(slot, upstream, request).await) }
            });
            // A client that goes away mid-request is no concern of a floor measurement.
            let _ = http1.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The upstream connection of one client connection, between two of its requests.
type UpstreamSlot = Arc<Mutex<Option<Upstream>>>;

/// An upstream connection's two halves: where requests go in, and the driver doing the I/O.
struct Upstream {
    sender: http1::SendRequest<Incoming>,
    /// Boxed, as the forwarder's (hyper's connection state is large).
    driver: Pin<Box<http1::Connection<TokioIo<TcpStream>, Incoming>>>,
}

impl Upstream {
    async fn connect(upstream: SocketAddr) -> Result<Self, Box<dyn std::error::Error>> {
        let stream = TcpStream::connect(upstream).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Self {
            sender,
            driver: Box::pin(driver),
        })
    }

    /// Polls the driver once; `false` once the connection has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.as_mut().poll(cx).is_pending()
    }
}

type ProxyBody = Either<DrivenBody, Full<Bytes>>;

/// Sends `request` upstream and answers with the upstream's answer, or a 502.
async fn forward(
    slot: UpstreamSlot,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let reused = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut connection = match reused {
        Some(connection) => connection,
        None => match Upstream::connect(upstream).await {
            Ok(connection) => connection,
            Err(problem) => return bad_gateway(&problem.to_string()),
        },
    };
    let ready = poll_fn(|cx| {
        let alive = connection.drive(cx);
        match connection.sender.poll_ready(cx) {
            Poll::Pending if alive => Poll::Pending,
            Poll::Pending => Poll::Ready(false),
            Poll::Ready(result) => Poll::Ready(result.is_ok()),
        }
    })
    .await;
    if !ready {
        return bad_gateway("the upstream connection closed");
    }
    let mut answer = Box::pin(connection.sender.send_request(request));
    let answer = poll_fn(|cx| {
        connection.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await;
    match answer {
        Ok(response) => response.map(|body| {
            Either::Left(DrivenBody {
                body,
                connection: Some(connection),
                slot,
            })
        }),
        Err(problem) => bad_gateway(&problem.to_string()),
    }
}

fn bad_gateway(problem: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "ccf-floor-proxy: {problem}\n"
    )))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// The upstream's answer body, whose connection is driven whenever no frame is ready, and
/// goes back to its slot once the answer has been read whole.
struct DrivenBody {
    body: Incoming,
    connection: Option<Upstream>,
    slot: UpstreamSlot,
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(connection) = this.connection.as_mut() {
                if !connection.drive(cx) {
                    this.connection = None;
                }
            }
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        // hyper's server stops polling once `is_end_stream` says so (a body with a length
        // ends with its last data frame): the connection goes back then.
        let ended = matches!(polled, Poll::Ready(None)) || this.body.is_end_stream();
        if ended {
            if let Some(mut connection) = this.connection.take() {
                if connection.drive(cx) {
                    *this.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
