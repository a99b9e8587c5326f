//! The outbound proxy (`proxy.*`): upstream traffic goes through an HTTP CONNECT or SOCKS5 proxy
//! with credentials, or an HTTPS proxy (CONNECT over TLS). The HTTP and SOCKS5 proxies here are
//! minimal, written for the test, on loopback; the HTTPS one is the test kit's
//! [`TlsConnectProxy`], whose certificate comes from a CA made at test time.
//!
//! The forwarder trusts only the built-in webpki roots, for upstreams and proxy alike, and has
//! no setting to trust another CA; so the HTTPS mode is checked up to the TLS handshake here (it
//! speaks TLS to the proxy and verifies its certificate), and the full tunnel through that proxy
//! with the test CA trusted is checked on the same client stack in the test kit
//! (`tls_proxy.rs`).

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ccf_testkit::{MockUpstream, TlsConnectProxy};
use serde_json::json;
use support::{config, endpoint_yaml, Forwarder, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What a test proxy saw.
#[derive(Default)]
pub(crate) struct ProxyLog {
    pub(crate) tunnels: AtomicUsize,
    pub(crate) credentials: Mutex<Vec<String>>,
    /// The `CONNECT` targets (`host:port`), in order (HTTP proxy only).
    pub(crate) targets: Mutex<Vec<String>>,
}

/// An HTTP proxy that only supports `CONNECT`, records `Proxy-Authorization` and the target,
/// then splices. Also used by `failover_triggers.rs` (per-endpoint proxies).
pub(crate) async fn http_connect_proxy() -> (String, Arc<ProxyLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let log = Arc::new(ProxyLog::default());
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let log = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut request_line = String::new();
                client.read_line(&mut request_line).await.ok()?;
                let target = request_line
                    .strip_prefix("CONNECT ")?
                    .split(' ')
                    .next()?
                    .to_string();
                loop {
                    let mut line = String::new();
                    client.read_line(&mut line).await.ok()?;
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(value) = line
                        .to_ascii_lowercase()
                        .strip_prefix("proxy-authorization:")
                    {
                        log.credentials
                            .lock()
                            .expect("log lock")
                            .push(value.trim().to_string());
                    }
                }
                log.targets.lock().expect("log lock").push(target.clone());
                let mut upstream = TcpStream::connect(&target).await.ok()?;
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .ok()?;
                log.tunnels.fetch_add(1, Ordering::SeqCst);
                tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .ok()?;
                Some(())
            });
        }
    });
    (address, log)
}

/// A SOCKS5 proxy with username/password authentication (RFC 1928 / 1929), CONNECT only.
async fn socks5_proxy() -> (String, Arc<ProxyLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let log = Arc::new(ProxyLog::default());
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut greeting = [0u8; 2];
                client.read_exact(&mut greeting).await.ok()?;
                let mut methods = vec![0u8; usize::from(greeting[1])];
                client.read_exact(&mut methods).await.ok()?;
                if !methods.contains(&2) {
                    client.write_all(&[5, 0xff]).await.ok()?;
                    return None;
                }
                client.write_all(&[5, 2]).await.ok()?;
                let mut version_and_length = [0u8; 2];
                client.read_exact(&mut version_and_length).await.ok()?;
                let mut user = vec![0u8; usize::from(version_and_length[1])];
                client.read_exact(&mut user).await.ok()?;
                let mut password_length = [0u8; 1];
                client.read_exact(&mut password_length).await.ok()?;
                let mut password = vec![0u8; usize::from(password_length[0])];
                client.read_exact(&mut password).await.ok()?;
                log.credentials.lock().expect("log lock").push(format!(
                    "{}:{}",
                    String::from_utf8_lossy(&user),
                    String::from_utf8_lossy(&password)
                ));
                client.write_all(&[1, 0]).await.ok()?;
                let mut header = [0u8; 4];
                client.read_exact(&mut header).await.ok()?;
                let host = match header[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        client.read_exact(&mut ip).await.ok()?;
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut length = [0u8; 1];
                        client.read_exact(&mut length).await.ok()?;
                        let mut name = vec![0u8; usize::from(length[0])];
                        client.read_exact(&mut name).await.ok()?;
                        String::from_utf8(name).ok()?
                    }
                    _ => return None,
                };
                let mut port = [0u8; 2];
                client.read_exact(&mut port).await.ok()?;
                let mut upstream = TcpStream::connect((host.as_str(), u16::from_be_bytes(port)))
                    .await
                    .ok()?;
                client
                    .write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
                    .await
                    .ok()?;
                log.tunnels.fetch_add(1, Ordering::SeqCst);
                tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .ok()?;
                Some(())
            });
        }
    });
    (address, log)
}

fn request() -> serde_json::Value {
    json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn upstream_traffic_goes_through_an_http_proxy_with_credentials() {
    let upstream = MockUpstream::start().await;
    let (proxy, log) = http_connect_proxy().await;
    let forwarder = Forwarder::start(config(
        &format!("proxy:\n  enabled: true\n  type: http\n  url: http://{proxy}\n  username: alice\n  password: s3cret\n"),
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = forwarder.messages(request(), &[]).await;
    assert_eq!(answer.status, 200);
    assert!(
        log.tunnels.load(Ordering::SeqCst) >= 1,
        "the request went through the proxy"
    );
    let credentials = log.credentials.lock().unwrap().clone();
    // "alice:s3cret" in base64.
    assert!(
        credentials
            .iter()
            .all(|value| value == "basic ywxpy2u6cznjcmv0"),
        "{credentials:?}"
    );
    assert!(!credentials.is_empty());
}

#[tokio::test]
async fn upstream_traffic_goes_through_a_socks5_proxy_with_credentials() {
    let upstream = MockUpstream::start().await;
    let (proxy, log) = socks5_proxy().await;
    let forwarder = Forwarder::start(config(
        &format!("proxy:\n  enabled: true\n  type: socks5\n  url: socks5://bob:hunter2@{proxy}\n"),
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = forwarder.messages(request(), &[]).await;
    assert_eq!(answer.status, 200);
    assert!(log.tunnels.load(Ordering::SeqCst) >= 1);
    assert!(log
        .credentials
        .lock()
        .unwrap()
        .iter()
        .all(|value| value == "bob:hunter2"));
    assert_eq!(support::messages_sent(&upstream), 1);
}

#[tokio::test]
async fn https_proxy_mode_speaks_tls_to_the_proxy_and_refuses_a_certificate_it_does_not_trust() {
    let upstream = MockUpstream::start().await;
    let proxy = TlsConnectProxy::start().await;
    let forwarder = Forwarder::start(config(
        &format!(
            "proxy:\n  enabled: true\n  type: https\n  url: {}\n  username: alice\n  password: s3cret\n",
            proxy.url()
        ),
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = forwarder.messages(request(), &[]).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    let body: serde_json::Value =
        serde_json::from_slice(answer.body.as_ref().expect("answer body")).expect("json");
    assert_eq!(body["type"], "error", "{body}");
    // The forwarder opened TLS to the proxy (a plain CONNECT would not even be a handshake) and
    // aborted it over the certificate: nothing was sent through, nothing reached the upstream.
    let log = proxy
        .wait_for(WAIT, |log| !log.failed_handshakes.is_empty())
        .await
        .unwrap_or_else(|log| panic!("the forwarder never spoke TLS to the proxy: {log:?}"));
    assert!(
        log.failed_handshakes
            .iter()
            .all(|reason| reason.contains("UnknownCA")),
        "refused for its unknown CA: {:?}",
        log.failed_handshakes
    );
    assert_eq!(
        log.connects,
        vec![],
        "no CONNECT before the proxy is trusted"
    );
    assert_eq!(support::messages_sent(&upstream), 0);
}

#[tokio::test]
async fn upstream_traffic_goes_through_an_https_proxy_trusted_by_its_ca_file() {
    let upstream = MockUpstream::start().await;
    let proxy = TlsConnectProxy::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let ca_file = folder.path().join("proxy-ca.pem");
    std::fs::write(&ca_file, proxy.ca_certificate_pem()).expect("write the CA file");
    let usage = format!(
        "  enabled: true\n  database_path: {}\n",
        folder.path().join("usage.db").display()
    );
    let forwarder = Forwarder::start(support::config_with_usage(
        &usage,
        &format!(
            "proxy:\n  enabled: true\n  type: https\n  url: {}\n  ca_file: {}\n  username: alice\n  password: s3cret\n",
            proxy.url(),
            ca_file.display()
        ),
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = forwarder.messages(request(), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let request_id = answer
        .header("x-ccf-request-id")
        .expect("request id")
        .to_string();
    let usage = forwarder.stop_settled().await.expect("usage tracking on");
    let log = proxy.log();
    // The request and the health checker's probes: every one tunnelled, with the credentials.
    let expected = ccf_testkit::ConnectRecord {
        target: upstream.url().trim_start_matches("http://").to_string(),
        proxy_authorization: Some("Basic YWxpY2U6czNjcmV0".into()),
    };
    assert!(!log.connects.is_empty());
    assert!(log.connects.iter().all(|c| *c == expected), "{log:?}");
    assert_eq!(log.tunnels, log.connects.len());
    assert!(log.failed_handshakes.is_empty(), "{log:?}");
    assert_eq!(support::messages_sent(&upstream), 1);
    let row = usage
        .store
        .get_request(&request_id)
        .await
        .expect("read the row")
        .expect("the row is stored");
    assert_eq!(row.record.status, "completed");
    assert_eq!(row.record.endpoint_name.as_deref(), Some("a"));
    assert_eq!(row.record.http_status_code, Some(200));
}
