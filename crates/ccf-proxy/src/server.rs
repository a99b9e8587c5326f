//! Serving a [`Forwarder`] on a TCP listener with graceful shutdown.
//!
//! Ownership: [`serve`] owns the accept loop and one task per connection. When `shutdown`
//! resolves it stops accepting, asks every connection to finish its in-flight request (HTTP/1
//! connections close after their current response, HTTP/2 ones send GOAWAY) and waits up to
//! `drain_timeout` for them; connections still open after that are dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::forwarder::Forwarder;

/// The address of the client that sent a request, put into the request's extensions by
/// [`serve`] (embedders serving the engine themselves may insert it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The forwarder as one connection's service: every request learns the peer address.
#[derive(Clone)]
struct WithClientAddr {
    forwarder: Forwarder,
    client: ClientAddr,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithClientAddr {
    type Response =
        <Forwarder as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Response;
    type Error = std::convert::Infallible;
    type Future =
        <Forwarder as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Future;

    fn call(&self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.client);
        self.forwarder.call(request)
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest time a client may take to send request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest time in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
}

/// How a [`serve`] run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections that were still open when the drain timeout ran out.
    pub abandoned_connections: usize,
}

/// Serves `forwarder` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    forwarder: Forwarder,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    serve_connections(
        listener,
        move |peer| WithClientAddr {
            forwarder: forwarder.clone(),
            client: ClientAddr(peer),
        },
        options,
        shutdown,
    )
    .await
}

/// The accept loop shared by every listener of the forwarder (proxy and admin): HTTP/1 and
/// HTTP/2 on one port, a header read timeout, one task per connection, and on `shutdown` a
/// graceful drain bounded by `options.drain_timeout`. `service_for` makes the service of one
/// connection from the peer's address.
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    service_for: impl Fn(SocketAddr) -> S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        warn!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service_for(peer))
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%peer, "connection ended: {error}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    info!(
        open_connections = open,
        "shutting down: draining open connections"
    );
    match tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await {
        Ok(()) => ServeReport {
            abandoned_connections: 0,
        },
        Err(_) => {
            warn!(timeout = ?options.drain_timeout, "drain timeout: closing remaining connections");
            ServeReport {
                abandoned_connections: open,
            }
        }
    }
}
