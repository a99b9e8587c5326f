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
