//! The one shared upstream HTTP client: pooled connections, rustls (HTTP/2 by ALPN), and the
//! optional outbound proxy (`proxy.*`: HTTP CONNECT, CONNECT over TLS, or SOCKS5, with
//! credentials).
//!
//! Connections are reused across requests and retries (the Go original built a new transport per
//! attempt). Every upstream connection, whatever the proxy, is a [`BoxedIo`], so the client has
//! one concrete type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ccf_config::{OutboundProxyConfig, OutboundProxyType};
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::BoxError;

/// The client every upstream request goes through.
pub type UpstreamClient = Client<HttpsConnector<UpstreamConnector>, Full<Bytes>>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `proxy.*` does not describe a usable proxy.
    #[error("proxy: {0}")]
    Proxy(String),
}

/// Builds the shared pooled client.
pub fn build_upstream_client(
    proxy: &OutboundProxyConfig,
    connect_timeout: Duration,
) -> Result<UpstreamClient, ClientBuildError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    tcp.set_connect_timeout(Some(connect_timeout));
    let base = UpstreamConnector::new(proxy, tcp)?;
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(base);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Opens the TCP (or proxied) connection under TLS.
#[derive(Clone)]
pub enum UpstreamConnector {
    /// Straight to the upstream.
    Direct(HttpConnector),
    /// Through an HTTP proxy with `CONNECT`.
    HttpTunnel(Tunnel<HttpConnector>),
    /// Through an HTTP proxy reached over TLS, with `CONNECT`.
    HttpsTunnel(Tunnel<HttpsConnector<HttpConnector>>),
    /// Through a SOCKS5 proxy (host names resolved by the proxy).
    Socks5(SocksV5<HttpConnector>),
}

impl UpstreamConnector {
    fn new(proxy: &OutboundProxyConfig, tcp: HttpConnector) -> Result<Self, ClientBuildError> {
        if !proxy.enabled {
            return Ok(UpstreamConnector::Direct(tcp));
        }
        let (proxy_uri, username, password) = proxy_target(proxy)?;
        Ok(match proxy.kind {
            OutboundProxyType::Http => UpstreamConnector::HttpTunnel(with_basic_auth(
                Tunnel::new(proxy_uri, tcp),
                username,
                password,
            )?),
            OutboundProxyType::Https => {
                let tls = HttpsConnectorBuilder::new()
                    .with_tls_config(proxy_tls_config(proxy.ca_file.as_deref())?)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                UpstreamConnector::HttpsTunnel(with_basic_auth(
                    Tunnel::new(proxy_uri, tls),
                    username,
                    password,
                )?)
            }
            OutboundProxyType::Socks5 => {
                let socks = SocksV5::new(proxy_uri, tcp).local_dns(false);
                match (username, password) {
                    (Some(user), Some(pass)) => {
                        UpstreamConnector::Socks5(socks.with_auth(user, pass))
                    }
                    _ => UpstreamConnector::Socks5(socks),
                }
            }
        })
    }
}

/// TLS to an HTTPS proxy: the webpki roots plus the CAs of `proxy.ca_file`.
fn proxy_tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let unreadable = |error: &dyn std::fmt::Display| {
            ClientBuildError::Proxy(format!("ca_file `{}`: {error}", path.display()))
        };
        let certificates = CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))?;
        for certificate in certificates {
            roots
                .add(certificate.map_err(|e| unreadable(&e))?)
                .map_err(|e| unreadable(&e))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Proxy(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn with_basic_auth<C>(
    tunnel: Tunnel<C>,
    username: Option<String>,
    password: Option<String>,
) -> Result<Tunnel<C>, ClientBuildError> {
    let Some(user) = username else {
        return Ok(tunnel);
    };
    let credentials = format!("{user}:{}", password.unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
        ClientBuildError::Proxy("username or password is not a valid header value".into())
    })?;
    value.set_sensitive(true);
    Ok(tunnel.with_auth(value))
}

/// The proxy's address and credentials from `proxy.url` (which may carry `user:pass@`) or
/// `proxy.host` + `proxy.port`.
fn proxy_target(
    proxy: &OutboundProxyConfig,
) -> Result<(Uri, Option<String>, Option<String>), ClientBuildError> {
    let scheme = match proxy.kind {
        OutboundProxyType::Http => "http",
        OutboundProxyType::Https => "https",
        OutboundProxyType::Socks5 => "socks5",
    };
    let (host, port, mut username, mut password) = if let Some(raw) = proxy.url.as_deref() {
        let parsed = url::Url::parse(raw)
            .map_err(|error| ClientBuildError::Proxy(format!("url `{raw}` is invalid: {error}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| ClientBuildError::Proxy(format!("url `{raw}` has no host")))?
            .to_string();
        let port = parsed
            .port_or_known_default()
            .or(match proxy.kind {
                OutboundProxyType::Socks5 => Some(1080),
                _ => None,
            })
            .ok_or_else(|| ClientBuildError::Proxy(format!("url `{raw}` has no port")))?;
        let username = (!parsed.username().is_empty()).then(|| parsed.username().to_string());
        let password = parsed.password().map(str::to_string);
        (host, port, username, password)
    } else {
        let host = proxy
            .host
            .clone()
            .ok_or_else(|| ClientBuildError::Proxy("set `url`, or `host` and `port`".into()))?;
        let port = proxy
            .port
            .ok_or_else(|| ClientBuildError::Proxy("set `url`, or `host` and `port`".into()))?;
        (host, port, None, None)
    };
    if let Some(user) = &proxy.username {
        username = Some(user.clone());
    }
    if let Some(pass) = &proxy.password {
        password = Some(pass.expose().to_string());
    }
    let uri: Uri = format!("{scheme}://{host}:{port}")
        .parse()
        .map_err(|_| ClientBuildError::Proxy(format!("`{host}:{port}` is not a valid address")))?;
    Ok((uri, username, password))
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = BoxedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<BoxedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every variant wraps an HttpConnector, which is always ready; readiness is checked
        // again inside `call` by the wrapped service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match self {
            UpstreamConnector::Direct(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::HttpTunnel(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::HttpsTunnel(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::Socks5(connector) => {
                let future = connector.call(destination);
                Box::pin(async move {
                    Ok(BoxedIo::new(
                        future.await.map_err(|e| Box::new(e) as BoxError)?,
                    ))
                })
            }
        }
    }
}

/// Anything an upstream connection can be.
trait UpstreamIo: Read + Write + Connection + Unpin + Send {}
impl<T: Read + Write + Connection + Unpin + Send> UpstreamIo for T {}

/// A type-erased upstream connection.
pub struct BoxedIo(Box<dyn UpstreamIo>);

impl BoxedIo {
    fn new(io: impl Read + Write + Connection + Unpin + Send + 'static) -> Self {
        BoxedIo(Box::new(io))
    }
}

impl Connection for BoxedIo {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl Read for BoxedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl Write for BoxedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_config::Secret;

    fn proxy(
        kind: OutboundProxyType,
        url: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
    ) -> OutboundProxyConfig {
        OutboundProxyConfig {
            enabled: true,
            kind,
            url: url.map(str::to_string),
            host: host.map(str::to_string),
            port,
            username: None,
            password: None,
            ca_file: None,
        }
    }

    #[test]
    fn proxy_address_comes_from_url_with_credentials() {
        let (uri, user, pass) = proxy_target(&proxy(
            OutboundProxyType::Socks5,
            Some("socks5://u:p@127.0.0.1:1080"),
            None,
            None,
        ))
        .unwrap();
        assert_eq!(uri.to_string(), "socks5://127.0.0.1:1080/");
        assert_eq!(user.as_deref(), Some("u"));
        assert_eq!(pass.as_deref(), Some("p"));
    }

    #[test]
    fn proxy_address_comes_from_host_and_port_and_explicit_credentials_win() {
        let mut config = proxy(
            OutboundProxyType::Http,
            None,
            Some("proxy.example.com"),
            Some(8080),
        );
        config.username = Some("user".into());
        config.password = Some(Secret::new("pw"));
        let (uri, user, pass) = proxy_target(&config).unwrap();
        assert_eq!(uri.to_string(), "http://proxy.example.com:8080/");
        assert_eq!(user.as_deref(), Some("user"));
        assert_eq!(pass.as_deref(), Some("pw"));
    }

    #[test]
    fn a_proxy_without_address_is_an_error() {
        let error = proxy_target(&proxy(OutboundProxyType::Http, None, None, None)).unwrap_err();
        assert!(error.to_string().contains("host"));
    }

    #[tokio::test]
    async fn every_proxy_kind_builds_a_client() {
        for kind in [
            OutboundProxyType::Http,
            OutboundProxyType::Https,
            OutboundProxyType::Socks5,
        ] {
            let config = proxy(kind, None, Some("127.0.0.1"), Some(9));
            assert!(build_upstream_client(&config, Duration::from_secs(1)).is_ok());
        }
        assert!(
            build_upstream_client(&OutboundProxyConfig::default(), Duration::from_secs(1)).is_ok()
        );
    }
}
