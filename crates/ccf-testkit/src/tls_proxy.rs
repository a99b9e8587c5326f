//! [`TlsConnectProxy`]: an HTTPS forward proxy for tests — TLS from the client to the proxy,
//! then HTTP `CONNECT` inside it, then a plain TCP tunnel to the target — with a certificate
//! issued at start-up by a throwaway CA ([`TlsConnectProxy::ca_certificate_pem`]) that a client
//! must be told to trust.
//!
//! It owns what the proxy saw: every `CONNECT` (target and `Proxy-Authorization`) and every TLS
//! handshake that failed (with rustls's reason, e.g. the client's "unknown CA" alert), so a test
//! can tell "went through the proxy" from "reached the proxy but refused its certificate".
//!
//! Ownership: [`TlsConnectProxy::start`] spawns one accept task owning a `JoinSet` of connection
//! tasks; dropping the handle aborts the accept task, which aborts every connection.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Longest `CONNECT` head accepted; a longer one closes the connection.
const MAX_HEAD: usize = 16 * 1024;

/// Why the proxy could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TlsProxyError {
    /// The CA or the proxy's certificate could not be generated.
    #[error("test certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the generated certificate or key.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The loopback listener could not be bound.
    #[error("bind the proxy listener: {0}")]
    Bind(#[source] io::Error),
}

/// One `CONNECT` the proxy accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    /// The request target, `host:port`.
    pub target: String,
    /// The `Proxy-Authorization` header's value, if one was sent.
    pub proxy_authorization: Option<String>,
}

/// Everything the proxy saw so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsProxyLog {
    /// Every `CONNECT` received over TLS, in order (also those whose target was unreachable).
    pub connects: Vec<ConnectRecord>,
    /// Tunnels opened: the target answered and `200` was sent.
    pub tunnels: usize,
    /// TLS handshakes that failed, with rustls's reason.
    pub failed_handshakes: Vec<String>,
}

/// A running HTTPS `CONNECT` proxy on `127.0.0.1`; see the module doc.
pub struct TlsConnectProxy {
    address: SocketAddr,
    ca_certificate: CertificateDer<'static>,
    ca_certificate_pem: String,
    log: watch::Receiver<TlsProxyLog>,
    accept_task: JoinHandle<()>,
}

impl TlsConnectProxy {
    /// Generates a CA and a certificate for `127.0.0.1` and `localhost` signed by it, and starts
    /// the proxy on a free loopback port. Panics when that fails (see [`Self::try_start`]).
    pub async fn start() -> TlsConnectProxy {
        match TlsConnectProxy::try_start().await {
            Ok(proxy) => proxy,
            Err(problem) => panic!("test TLS proxy cannot start: {problem}"),
        }
    }

    /// [`Self::start`], returning what went wrong instead of panicking.
    pub async fn try_start() -> Result<TlsConnectProxy, TlsProxyError> {
        let (ca_certificate, ca_certificate_pem, acceptor) = tls_acceptor()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(TlsProxyError::Bind)?;
        let address = listener.local_addr().map_err(TlsProxyError::Bind)?;
        let (log_sender, log) = watch::channel(TlsProxyLog::default());
        let log_sender = Arc::new(log_sender);
        let accept_task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(serve_connection(
                            client,
                            acceptor.clone(),
                            Arc::clone(&log_sender),
                        ));
                    }
                    // Reap finished connections so the set does not grow for ever.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(TlsConnectProxy {
            address,
            ca_certificate,
            ca_certificate_pem,
            log,
            accept_task,
        })
    }

    /// The listening address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://127.0.0.1:<port>`: the proxy's URL (its certificate names `127.0.0.1`).
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The CA certificate (DER) that issued the proxy's certificate: add it to a client's roots.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_certificate
    }

    /// The same CA certificate in PEM, e.g. to write to a CA file.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_certificate_pem
    }

    /// What the proxy saw so far.
    pub fn log(&self) -> TlsProxyLog {
        self.log.borrow().clone()
    }

    /// Waits until `wanted` holds for the log, or `timeout` passes (`None`, with the log as it
    /// was, so the caller's assert can show it).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        wanted: impl FnMut(&TlsProxyLog) -> bool,
    ) -> Result<TlsProxyLog, TlsProxyLog> {
        let mut log = self.log.clone();
        let waited = tokio::time::timeout(timeout, async {
            log.wait_for(wanted).await.map(|seen| seen.clone())
        })
        .await;
        match waited {
            Ok(Ok(seen)) => Ok(seen),
            _ => Err(self.log()),
        }
    }
}

impl Drop for TlsConnectProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// A fresh CA, a server certificate for `127.0.0.1` and `localhost` signed by it, and the
/// acceptor presenting that certificate (and the CA, as a real proxy would send its chain).
fn tls_acceptor() -> Result<(CertificateDer<'static>, String, TlsAcceptor), TlsProxyError> {
    let (ca_certificate, ca_certificate_pem, config) =
        test_ca_server_config("cc-forwarder test proxy")?;
    Ok((
        ca_certificate,
        ca_certificate_pem,
        TlsAcceptor::from(Arc::new(config)),
    ))
}

/// A fresh CA (DER and PEM) and a rustls server configuration presenting a certificate for
/// `127.0.0.1` and `localhost` named `common_name`, signed by that CA, with the CA in the chain.
/// Shared with the realistic upstream (`realistic.rs`), which adds its ALPN protocols.
pub(crate) fn test_ca_server_config(
    common_name: &str,
) -> Result<(CertificateDer<'static>, String, rustls::ServerConfig), TlsProxyError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cc-forwarder test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_certificate = ca_params.self_signed(&ca_key)?;
    let ca_certificate_pem = ca_certificate.pem();
    let ca = Issuer::new(ca_params, ca_key);

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_certificate = server_params.signed_by(&server_key, &ca)?;

    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    // An explicit provider: the process-wide default is not installed in every test binary.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                server_certificate.der().clone(),
                ca_certificate.der().clone(),
            ],
            private_key,
        )?;
    Ok((ca_certificate.der().clone(), ca_certificate_pem, config))
}

/// One client connection: TLS, one `CONNECT`, then bytes copied both ways until either side
/// closes.
async fn serve_connection(
    client: TcpStream,
    acceptor: TlsAcceptor,
    log: Arc<watch::Sender<TlsProxyLog>>,
) {
    let tls = match acceptor.accept(client).await {
        Ok(tls) => tls,
        Err(error) => {
            log.send_modify(|log| log.failed_handshakes.push(error.to_string()));
            return;
        }
    };
    let mut reader = BufReader::new(tls);
    let Some(connect) = read_connect(&mut reader).await else {
        return;
    };
    let target = connect.target.clone();
    log.send_modify(|log| log.connects.push(connect));
    let mut client = reader;
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
        || client.flush().await.is_err()
    {
        return;
    }
    log.send_modify(|log| log.tunnels += 1);
    // The BufReader passes on what it had read ahead (the client may send before the 200).
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads `CONNECT host:port HTTP/1.1` and its headers; `None` for anything else.
async fn read_connect<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<ConnectRecord> {
    let mut read = 0;
    let mut request_line = String::new();
    read += reader.read_line(&mut request_line).await.ok()?;
    let target = request_line
        .strip_prefix("CONNECT ")?
        .split(' ')
        .next()?
        .to_string();
    let mut proxy_authorization = None;
    loop {
        let mut line = String::new();
        let length = reader.read_line(&mut line).await.ok()?;
        read += length;
        if length == 0 || read > MAX_HEAD {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("proxy-authorization") {
                proxy_authorization = Some(value.trim().to_string());
            }
        }
    }
    Some(ConnectRecord {
        target,
        proxy_authorization,
    })
}

#[cfg(test)]
mod tests {
    //! The proxy driven by the forwarder's own client stack (hyper-util's `Tunnel` over a
    //! hyper-rustls connector, as `ccf-proxy`'s `client.rs` builds it for `proxy.type: https`),
    //! here with the test CA trusted.

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::MockUpstream;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_rustls::HttpsConnectorBuilder;
    use hyper_util::client::legacy::connect::proxy::Tunnel;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// A client that reaches every target through `proxy` with `CONNECT` over TLS.
    fn client_through(
        proxy: &TlsConnectProxy,
        roots: rustls::RootCertStore,
    ) -> Client<Tunnel<hyper_rustls::HttpsConnector<HttpConnector>>, Full<Bytes>> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        let tls = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(roots))
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let tunnel = Tunnel::new(proxy.url().parse().unwrap(), tls)
            .with_auth(http::HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"));
        Client::builder(TokioExecutor::new()).build(tunnel)
    }

    fn models_request(upstream: &MockUpstream) -> http::Request<Full<Bytes>> {
        http::Request::get(format!("{}/v1/models", upstream.url()))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_client_trusting_the_test_ca_tunnels_through_the_proxy() {
        let upstream = MockUpstream::start().await;
        let proxy = TlsConnectProxy::start().await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(proxy.ca_certificate().clone()).unwrap();
        let client = client_through(&proxy, roots);

        let response = client.request(models_request(&upstream)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{"), "{body:?}");

        let log = proxy.log();
        let upstream_address = upstream.url().trim_start_matches("http://").to_string();
        assert_eq!(
            log.connects,
            vec![ConnectRecord {
                target: upstream_address,
                proxy_authorization: Some("Basic YWxpY2U6czNjcmV0".into()),
            }]
        );
        assert_eq!(log.tunnels, 1);
        assert!(log.failed_handshakes.is_empty(), "{log:?}");
    }

    #[tokio::test]
    async fn a_client_without_the_test_ca_is_refused_before_any_connect() {
        let upstream = MockUpstream::start().await;
        let proxy = TlsConnectProxy::start().await;
        let client = client_through(&proxy, rustls::RootCertStore::empty());

        let error = client.request(models_request(&upstream)).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        let log = proxy
            .wait_for(Duration::from_secs(30), |log| {
                !log.failed_handshakes.is_empty()
            })
            .await
            .expect("the proxy saw the refused handshake");
        assert!(log.connects.is_empty(), "{log:?}");
        assert!(
            log.failed_handshakes[0].contains("UnknownCA"),
            "{:?}",
            log.failed_handshakes
        );
    }
}
