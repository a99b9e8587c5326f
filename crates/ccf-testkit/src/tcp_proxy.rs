//! [`TcpProxy`]: a TCP relay in front of a real server (MariaDB, Redis) that a test can cut and
//! restore, which is what a server restart or a network outage looks like to a client.
//!
//! Cutting it ([`TcpProxy::interrupt`]) closes the listener and every relayed connection at
//! once (both sides see the connection end), so the port refuses new connections; restoring it
//! ([`TcpProxy::resume`]) listens again on the same port, so a client configured with the
//! proxy's address reconnects without being told anything. The relay task owns its listener and
//! a `JoinSet` of the relayed connections: aborting the task drops them all.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP relay to one target that can be cut and restored on the same port.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Relays connections accepted on `on` (`127.0.0.1:0` for a free port) to `target`.
    ///
    /// # Panics
    /// When `on` cannot be bound: a test cannot go on without its proxy. Use
    /// [`TcpProxy::try_start`] to handle the error.
    pub async fn start(on: SocketAddr, target: SocketAddr) -> TcpProxy {
        match TcpProxy::try_start(on, target).await {
            Ok(proxy) => proxy,
            Err(problem) => panic!("TCP proxy cannot listen on {on}: {problem}"),
        }
    }

    /// [`TcpProxy::start`], returning the bind error instead of panicking.
    pub async fn try_start(on: SocketAddr, target: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(on).await?;
        let addr = listener.local_addr()?;
        Ok(TcpProxy {
            addr,
            target,
            task: Some(tokio::spawn(relay(listener, target))),
        })
    }

    /// The address clients connect to (the same after [`TcpProxy::resume`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it accepts and relays connections now.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Closes the listener and drops every relayed connection; the port refuses connections
    /// until [`TcpProxy::resume`]. Nothing happens when already interrupted.
    pub async fn interrupt(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port and relays to the same target. Nothing happens when
    /// running.
    pub async fn resume(&mut self) -> io::Result<()> {
        if self.task.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.task = Some(tokio::spawn(relay(listener, self.target)));
        }
        Ok(())
    }

    /// Drops the listener and every relayed connection for good; returns the address, so a
    /// new proxy can be started on the same port.
    pub async fn stop(mut self) -> SocketAddr {
        self.interrupt().await;
        self.addr
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts on `listener` and copies each connection both ways to `target` until aborted.
async fn relay(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so a long test does not accumulate them.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server: what a client writes comes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0; text.len()];
        stream.read_exact(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn interrupting_drops_connections_and_resuming_serves_on_the_same_port() {
        let target = echo().await;
        let mut proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), target).await;
        let addr = proxy.addr();
        let mut client = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut client, b"hello").await, b"hello");

        proxy.interrupt().await;
        assert!(!proxy.is_running());
        // The relayed connection is gone: the client reads the end of the stream.
        let mut rest = Vec::new();
        let read = client.read_to_end(&mut rest).await;
        assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "the port refuses");

        proxy.resume().await.unwrap();
        assert_eq!(proxy.addr(), addr);
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut again, b"again").await, b"again");
        assert_eq!(proxy.stop().await, addr);
    }
}
