//! Unit tests of `client.rs`, kept in their own file so the module reads as its logic.

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
    let base = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: a\n    url: https://api.example.com\n",
    )
    .unwrap();
    for kind in [
        OutboundProxyType::Http,
        OutboundProxyType::Https,
        OutboundProxyType::Socks5,
    ] {
        let mut config = base.clone();
        config.proxy = proxy(kind, None, Some("127.0.0.1"), Some(9));
        assert!(build_upstream_client(&config, Duration::from_secs(1)).is_ok());
    }
    assert!(build_upstream_client(&base, Duration::from_secs(1)).is_ok());
}

#[test]
fn each_per_core_thread_opens_its_own_lanes_and_other_threads_share_one_set() {
    let mut config = ccf_config::Config::from_yaml_str(
        "server:\n  threads: 2\nendpoints:\n  - name: a\n    url: https://api.example.com\n",
    )
    .unwrap();
    config.upstream.max_streams_per_connection = 100;
    let client = build_upstream_client(&config, Duration::from_secs(1)).unwrap();
    let uri: Uri = "https://api.example.com/v1/messages".parse().unwrap();
    let origin = "https://api.example.com:443";
    // Not a per-core thread: set 0, one lane carrying both requests.
    let shared = (client.lane_for(&uri, None), client.lane_for(&uri, None));
    assert_eq!(client.lane_loads(origin), vec![2]);
    // Each core's thread opens a lane of its own although set 0's lane has room.
    let held: Vec<(LaneClient, LaneLoad)> = std::thread::scope(|scope| {
        let on_core = |core: usize| {
            let client = client.clone();
            let uri = uri.clone();
            scope.spawn(move || {
                use_core_lanes(core);
                let first = client.lane_for(&uri, None);
                let second = client.lane_for(&uri, None);
                vec![first, second]
            })
        };
        let (zero, one) = (on_core(0), on_core(1));
        let mut held = zero.join().unwrap();
        held.extend(one.join().unwrap());
        held
    });
    assert_eq!(client.lane_loads(origin), vec![2, 2, 2]);
    drop(shared);
    drop(held);
    assert_eq!(client.lane_loads(origin), vec![0, 0, 0]);
}

#[tokio::test]
async fn a_full_connection_opens_another_lane_and_a_dropped_body_frees_it() {
    let mut config = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: a\n    url: https://api.example.com\n",
    )
    .unwrap();
    config.upstream.max_streams_per_connection = 2;
    let client = build_upstream_client(&config, Duration::from_secs(1)).unwrap();
    let uri: Uri = "https://api.example.com/v1/messages".parse().unwrap();
    let origin = "https://api.example.com:443";
    let first = client.lane_for(&uri, None);
    let second = client.lane_for(&uri, None);
    assert_eq!(client.lane_loads(origin), vec![2]);
    let third = client.lane_for(&uri, None);
    assert_eq!(client.lane_loads(origin), vec![2, 1]);
    drop(first);
    let fourth = client.lane_for(&uri, None);
    assert_eq!(client.lane_loads(origin), vec![2, 1]);
    drop((second, third, fourth));
    assert_eq!(client.lane_loads(origin), vec![0, 0]);
}

#[test]
fn a_reload_rebuilds_the_client_when_trust_or_connection_settings_change() {
    let base = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: a\n    url: https://api.example.com\n",
    )
    .unwrap();
    assert!(same_client_settings(&base, &base.clone()));
    let mut tls = base.clone();
    tls.tls.ca_file = Some(PathBuf::from("/etc/ssl/relay-ca.pem"));
    assert!(!same_client_settings(&base, &tls));
    let mut streams = base.clone();
    streams.upstream.max_streams_per_connection = 10;
    assert!(!same_client_settings(&base, &streams));
    let mut own_ca = base.clone();
    own_ca
        .endpoint_ca_files
        .insert("a".into(), PathBuf::from("/etc/ssl/a.pem"));
    assert!(!same_client_settings(&base, &own_ca));
    let mut own_proxy = base.clone();
    own_proxy.endpoint_proxies.insert(
        "a".into(),
        ccf_config::OutboundProxyConfig {
            enabled: true,
            url: Some("socks5://127.0.0.1:1080".into()),
            ..ccf_config::OutboundProxyConfig::default()
        },
    );
    assert!(!same_client_settings(&base, &own_proxy));
}

#[test]
fn an_endpoint_with_its_own_proxy_gets_lanes_of_its_own() {
    let mut config = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: a\n    url: https://api.example.com\n  - name: b\n    url: https://api.example.com\n    group: other\n    proxy:\n      enabled: true\n      url: http://127.0.0.1:3128\n",
    )
    .unwrap();
    config.upstream.max_streams_per_connection = 1;
    let client = build_upstream_client(&config, Duration::from_secs(1)).unwrap();
    let uri: Uri = "https://api.example.com/v1/messages".parse().unwrap();
    let origin = "https://api.example.com:443";
    let direct = client.lane_for(&uri, Some("a"));
    let proxied = client.lane_for(&uri, Some("b"));
    // `b`'s request did not take a slot of the origin's shared lanes.
    assert_eq!(client.lane_loads(origin), vec![1]);
    assert_eq!(client.lane_loads(&format!("{origin} via b")), vec![1]);
    drop((direct, proxied));
}

#[test]
fn an_unusable_ca_file_is_reported_with_its_key_and_path() {
    let path = std::env::temp_dir().join(format!("ccf-bad-ca-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate").unwrap();
    let error = read_ca_file(&path, "endpoints[0].ca_file")
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(error.starts_with("endpoints[0].ca_file: "), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
}

#[test]
fn a_lane_key_is_its_written_form_and_nothing_else() {
    let uri: Uri = "https://relay.example:8443/v1/messages".parse().unwrap();
    let plain = LaneKey::of(&uri, None);
    let proxied = LaneKey::of(&uri, Some("relay"));
    assert_eq!(plain.written(), "https://relay.example:8443");
    assert_eq!(proxied.written(), "https://relay.example:8443 via relay");
    assert!(plain.is(&plain.written()));
    assert!(proxied.is(&proxied.written()));
    for other in [
        "https://relay.example:8443 via relay",
        "http://relay.example:8443",
        "https://relay.example:443",
        "https://relay.example:84430",
        "https://relay.exampl:8443",
        "https://relay.example.org:8443",
        "https://relay.example:",
        "",
    ] {
        assert!(!plain.is(other), "{other}");
    }
    for other in [
        "https://relay.example:8443",
        "https://relay.example:8443 via relay2",
        "https://relay.example:8443 via rela",
        "https://relay.example:8443 via ",
    ] {
        assert!(!proxied.is(other), "{other}");
    }
    // Default ports are written out.
    let default_port: Uri = "http://127.0.0.1/v1/messages".parse().unwrap();
    assert_eq!(
        LaneKey::of(&default_port, None).written(),
        "http://127.0.0.1:80"
    );
}

#[test]
fn host_and_port_read_an_authority_as_the_http_crate_does() {
    for authority in [
        "relay.example",
        "relay.example:8443",
        "user:secret@relay.example:8443",
        "user@relay.example",
        "127.0.0.1:9000",
        "[::1]",
        "[::1]:9000",
        "[2001:db8::1]:443",
        "relay.example:99999",
        "relay.example:",
    ] {
        let parsed: http::uri::Authority = authority.parse().unwrap();
        assert_eq!(
            host_and_port(authority),
            (parsed.host(), parsed.port_u16()),
            "{authority}"
        );
    }
}

// Connections driven in the request's task (`in_task.rs`), on a per-core runtime's thread.

/// Runs `test` on a thread marked as per-core runtime 0's, on a runtime of its own, as
/// `serve_per_core` runs each core.
fn on_core_thread<Test, Done>(test: Test)
where
    Test: FnOnce() -> Done + Send + 'static,
    Done: Future<Output = ()>,
{
    std::thread::spawn(move || {
        use_core_lanes(0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test());
    })
    .join()
    .expect("the test's thread ends without a panic");
}

/// A client for one endpoint, `mock`, at `url`, serving one core.
fn one_core_client(url: &str) -> UpstreamClient {
    let config = ccf_config::Config::from_yaml_str(&format!(
        "server:\n  threads: 1\nendpoints:\n  - name: mock\n    url: {url}\n"
    ))
    .expect("configuration");
    build_upstream_client(&config, Duration::from_secs(5)).expect("client")
}

fn post(url: &str, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request")
}

const JSON_ANSWER: &[&str] = &["content-type: application/json", "content-length: 2"];

/// A scripted upstream answering every request with `reply` and keeping the connection.
async fn keeping_upstream(reply: ccf_testkit::RawReply) -> ccf_testkit::RawUpstream {
    ccf_testkit::RawUpstream::start(reply.then(ccf_testkit::RawEnd::KeepAlive))
        .await
        .expect("upstream")
}

async fn read_whole(response: Response<UpstreamBody>) -> Bytes {
    use http_body_util::BodyExt as _;
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

#[test]
fn frames_that_arrived_together_are_all_ready_without_a_wait() {
    on_core_thread(|| async {
        let chunked = ccf_testkit::RawReply::response(
            200,
            &[
                "content-type: text/event-stream",
                "transfer-encoding: chunked",
            ],
            "6\r\nevent1\r\n6\r\nevent2\r\n6\r\nevent3\r\n0\r\n\r\n",
        );
        let upstream = keeping_upstream(chunked).await;
        let client = one_core_client(&upstream.url());
        let response = client
            .request("mock", post(&upstream.url(), "/v1/messages"))
            .await
            .expect("answer");
        let mut body = response.into_body();
        // The whole answer is in this side's socket by now.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    frames.push(frame.into_data().expect("data"));
                }
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(error))) => panic!("body failed: {error}"),
                // The pooled client hands each chunk over from the connection's own task.
                Poll::Pending => panic!("a frame that had arrived was not ready"),
            }
        }
        assert_eq!(frames, ["event1", "event2", "event3"]);
        assert_eq!(
            client.idle_in_task_connections(&upstream.url()),
            vec![1],
            "read whole, the connection waits for the next request"
        );
    });
}

#[test]
fn a_core_reuses_its_connection_and_sends_origin_form_with_a_host() {
    on_core_thread(|| async {
        let upstream =
            keeping_upstream(ccf_testkit::RawReply::response(200, JSON_ANSWER, "{}")).await;
        let client = one_core_client(&upstream.url());
        for _ in 0..3 {
            let response = client
                .request("mock", post(&upstream.url(), "/v1/messages?beta=true"))
                .await
                .expect("answer");
            assert_eq!(read_whole(response).await, "{}");
        }
        assert_eq!(upstream.connection_count(), 1);
        let requests = upstream.requests();
        assert_eq!(requests.len(), 3);
        let address = upstream.addr();
        for request in &requests {
            assert_eq!(request.target(), "/v1/messages?beta=true");
            assert_eq!(request.header("host"), Some(address.to_string().as_str()));
        }
    });
}

/// An upstream that answers one request per connection, keeps the connection open a little
/// (long enough for the client to take it back into its pool), then closes it, as upstreams
/// close idle keep-alive connections. Returns its URL and the count of connections accepted.
async fn upstream_closing_idle_connections() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The test's requests carry a two-byte body after their head.
                while !request.windows(6).any(|window| window == b"\r\n\r\n{}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                let _ = socket.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (url, accepted)
}

#[test]
fn an_idle_connection_the_upstream_closed_costs_no_request() {
    on_core_thread(|| async {
        let (url, accepted) = upstream_closing_idle_connections().await;
        let client = one_core_client(&url);
        for round in 0..3 {
            let response = client
                .request("mock", post(&url, "/v1/messages"))
                .await
                .unwrap_or_else(|error| panic!("request {round}: {error}"));
            assert_eq!(read_whole(response).await, "{}");
            assert_eq!(
                client.idle_in_task_connections(&url),
                vec![1],
                "the connection looked reusable when its answer ended"
            );
            // The upstream's FIN arrives while the connection waits in the pool.
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn a_request_off_the_cores_uses_the_pooled_client() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let upstream =
            keeping_upstream(ccf_testkit::RawReply::response(200, JSON_ANSWER, "{}")).await;
        let client = one_core_client(&upstream.url());
        let response = client
            .request("mock", post(&upstream.url(), "/v1/messages"))
            .await
            .expect("answer");
        assert_eq!(read_whole(response).await, "{}");
        assert_eq!(client.idle_in_task_connections(&upstream.url()), vec![0]);
        assert_eq!(client.lane_loads(&upstream.url()), vec![0]);
    });
}

/// Sends a request to `url` under a 200 ms limit (the header timeout's place) and says whether
/// `request_watched`'s watch saw a connection taken for it.
async fn watched_until_timeout(client: &UpstreamClient, url: &str) -> bool {
    let watch = super::ConnectionWatch::default();
    let exchange = client.request_watched("mock", post(url, "/v1/messages"), &watch);
    let outcome = tokio::time::timeout(Duration::from_millis(200), exchange).await;
    match outcome {
        Err(_elapsed) => {}
        Ok(Ok(_)) => panic!("no answer was expected from {url}"),
        // Refused: the exchange ends before the limit.
        Ok(Err(_)) => {}
    }
    watch.connection_taken()
}

/// An address nothing listens on.
async fn refusing_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

/// A watch sees a connection taken for a request to an upstream that holds it unanswered, and
/// none for one to a refusing port. Returns the held upstream and its client, for the checks
/// of the path the requests took.
async fn watch_sees_a_held_request_but_not_a_refused_one(
) -> (ccf_testkit::RawUpstream, UpstreamClient) {
    let upstream = ccf_testkit::RawUpstream::start(
        ccf_testkit::RawReply::new("").then(ccf_testkit::RawEnd::Hold),
    )
    .await
    .expect("upstream");
    let client = one_core_client(&upstream.url());
    assert!(watched_until_timeout(&client, &upstream.url()).await);
    let refusing = refusing_url().await;
    assert!(!watched_until_timeout(&one_core_client(&refusing), &refusing).await);
    (upstream, client)
}

#[test]
fn a_watch_tells_whether_a_connection_carried_a_request_driven_in_its_task() {
    on_core_thread(|| async {
        let (upstream, client) = watch_sees_a_held_request_but_not_a_refused_one().await;
        assert_eq!(client.lane_loads(&upstream.url()), Vec::<usize>::new());
    });
}

#[test]
fn a_watch_tells_whether_a_connection_carried_a_pooled_request() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (upstream, client) = watch_sees_a_held_request_but_not_a_refused_one().await;
        assert_eq!(client.idle_in_task_connections(&upstream.url()), vec![0]);
    });
}
