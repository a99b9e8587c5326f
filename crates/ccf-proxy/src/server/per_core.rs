//! Thread-per-core serving (issue #19): one current-thread Tokio runtime per core, each on its
//! own OS thread with its own `SO_REUSEPORT` listener on the proxy port and its own upstream
//! connections (`client.rs`'s lane sets), so a request is accepted, forwarded, relayed and
//! finished by one thread, and its upstream connection is driven by that same thread. Nothing
//! moves between workers on the hot path (a multi-threaded runtime steals tasks and wakes the
//! other worker for I/O readiness).
//!
//! Ownership: [`serve_per_core`] builds every runtime and registers every listener before it
//! starts a thread (so a failure is reported before anything serves), starts one thread per
//! listener, and returns once `shutdown` has resolved and every core has drained (each core
//! drains its own connections, bounded by `drain_timeout`; the connection slots of
//! `server.max_connections` are shared by all cores). The caller's runtime only waits: it keeps
//! the background work (health probes, usage recorder, admin API, reload triggers, TUI).
//!
//! What stays shared between cores is the [`Forwarder`] itself: routing, limits, metrics, the
//! event bus and the observers are `Arc`s with atomics or short locks, correct from any thread.
//!
//! The kernel spreads new connections over the listeners by a hash of the connection's
//! addresses; an accepted connection never moves. Embedders who want one runtime instead keep
//! calling [`crate::serve`] on their own listener (`server.threads: 0` in the application).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{debug, error};

use super::{serve_forwarder_with_slots, ConnectionLimits, ServeOptions, ServeReport};
use crate::client::use_core_lanes;
use crate::forwarder::Forwarder;

/// How long a core's runtime waits, after its drain, for tasks that ignore cancellation.
const CORE_TEARDOWN: Duration = Duration::from_secs(1);

/// Why per-core serving could not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PerCoreError {
    /// A core's runtime could not be built.
    #[error("cannot build the runtime of core {core}: {source}")]
    Runtime {
        /// The core's index.
        core: usize,
        /// The error from Tokio.
        #[source]
        source: std::io::Error,
    },
    /// A core's listener could not be registered with its runtime.
    #[error("cannot register the listener of core {core}: {source}")]
    Listener {
        /// The core's index.
        core: usize,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A core's thread could not be started.
    #[error("cannot start the thread of core {core}: {source}")]
    Thread {
        /// The core's index.
        core: usize,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A core's thread ended without a report (it panicked).
    #[error("core {core} stopped unexpectedly")]
    CoreStopped {
        /// The core's index.
        core: usize,
    },
    /// No listener was given.
    #[error("no listener to serve on")]
    NoListener,
}

/// Binds `count` listeners on `address` with `SO_REUSEADDR` and `SO_REUSEPORT` and a listen
/// backlog of `backlog` each, non-blocking, ready for [`serve_per_core`]. Port 0 picks a free
/// port for the first one; the others bind that same port.
pub fn bind_reuseport_listeners(
    address: SocketAddr,
    count: usize,
    backlog: i32,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    // Without `SO_REUSEPORT` (not a Unix) a second socket cannot bind the port: one listener.
    #[cfg(not(unix))]
    let count = 1;
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count.max(1));
    let mut bound_to = address;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bound_to),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound_to.into())?;
        socket.listen(backlog)?;
        let listener = std::net::TcpListener::from(socket);
        if listeners.is_empty() {
            bound_to = listener.local_addr()?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `forwarder` with one current-thread runtime per listener (see the module doc) until
/// `shutdown` resolves, then lets every core drain and returns the sum of their reports.
/// `listeners` must be non-blocking (as [`bind_reuseport_listeners`] makes them); the
/// connection limits are the forwarder's `server.*` settings at the time of the call.
pub async fn serve_per_core(
    listeners: Vec<std::net::TcpListener>,
    forwarder: Forwarder,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<ServeReport, PerCoreError> {
    if listeners.is_empty() {
        return Err(PerCoreError::NoListener);
    }
    // Every runtime and listener first: nothing serves unless every core can.
    let mut prepared = Vec::with_capacity(listeners.len());
    for (core, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PerCoreError::Runtime { core, source })?;
        // Registered with the core's own I/O driver, not the caller's.
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)
                .map_err(|source| PerCoreError::Listener { core, source })?
        };
        prepared.push((core, runtime, listener));
    }
    let limits = ConnectionLimits::from_config(&forwarder.config().server);
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut reports = Vec::with_capacity(prepared.len());
    for (core, runtime, listener) in prepared {
        let forwarder = forwarder.clone();
        let options = options.clone();
        let connection_slots = Arc::clone(&connection_slots);
        let mut stopped = stopped.clone();
        let (report_to, report) = oneshot::channel();
        let started = std::thread::Builder::new()
            .name(format!("ccf-core-{core}"))
            .spawn(move || {
                use_core_lanes(core);
                let report = runtime.block_on(serve_forwarder_with_slots(
                    listener,
                    forwarder,
                    options,
                    limits,
                    connection_slots,
                    async move {
                        // An error means the sender is gone: stop as well.
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                ));
                // Pooled upstream connections and leftover tasks of this core end here.
                runtime.shutdown_timeout(CORE_TEARDOWN);
                debug!(core, "core stopped");
                let _ = report_to.send(report);
            });
        if let Err(source) = started {
            // The cores already started stop again before the error is returned.
            let _ = stop.send(true);
            for (_, report) in reports {
                let _ = report.await;
            }
            return Err(PerCoreError::Thread { core, source });
        }
        reports.push((core, report));
    }
    shutdown.await;
    let _ = stop.send(true);
    let mut total = ServeReport {
        abandoned_connections: 0,
    };
    let mut failed = None;
    for (core, report) in reports {
        match report.await {
            Ok(report) => total.abandoned_connections += report.abandoned_connections,
            Err(_) => {
                error!(core, "a per-core runtime stopped without draining");
                failed.get_or_insert(PerCoreError::CoreStopped { core });
            }
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(total),
    }
}
