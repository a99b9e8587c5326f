//! Go-syntax durations and `100MB`-style sizes, as parsed from the file.

use std::time::Duration;

use ccf_config::{ByteSize, Config, GoDuration};

#[test]
fn durations() {
    let check = |text: &str, expected: Result<Duration, &str>| match expected {
        Ok(duration) => assert_eq!(GoDuration::parse(text), Ok(GoDuration(duration)), "{text}"),
        Err(fragment) => {
            let message = GoDuration::parse(text).expect_err(text);
            assert!(message.contains(fragment), "{text}: {message}");
        }
    };
    check("300s", Ok(Duration::from_secs(300)));
    check("1m30s", Ok(Duration::from_secs(90)));
    check("500ms", Ok(Duration::from_millis(500)));
    check("1.5h", Ok(Duration::from_secs(5400)));
    check("2h45m", Ok(Duration::from_secs(9900)));
    check("250us", Ok(Duration::from_micros(250)));
    check("0", Ok(Duration::ZERO));
    check("0s", Ok(Duration::ZERO));
    check("30", Ok(Duration::from_secs(30)));
    check("5x", Err("unknown unit `x`"));
    check("1d", Err("unknown unit `d`"));
    check("-5s", Err("negative duration"));
    check("", Err("empty duration"));
    check("s", Err("invalid duration"));
}

#[test]
fn durations_display_like_go() {
    let check = |duration: Duration, expected: &str| {
        assert_eq!(GoDuration(duration).to_string(), expected);
    };
    check(Duration::from_secs(5400), "1h30m0s");
    check(Duration::from_millis(2500), "2.5s");
    check(Duration::from_millis(300), "300ms");
    check(Duration::ZERO, "0s");
}

#[test]
fn sizes() {
    let check = |text: &str, expected: Result<u64, &str>| match expected {
        Ok(bytes) => assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}"),
        Err(fragment) => {
            let message = ByteSize::parse(text).expect_err(text);
            assert!(message.contains(fragment), "{text}: {message}");
        }
    };
    check("100MB", Ok(104_857_600));
    check("512kb", Ok(524_288));
    check("1GB", Ok(1_073_741_824));
    check("1.5KB", Ok(1536));
    check("4096", Ok(4096));
    check("10B", Ok(10));
    check("10XB", Err("unknown unit"));
    check("MB", Err("invalid size"));
    check("", Err("invalid size"));
}

#[test]
fn durations_and_sizes_in_the_file() {
    let config = Config::from_yaml_str(
        "health:\n  check_interval: 1m30s\n  timeout: 30\n\
         logging:\n  max_file_size: 512kb\n\
         server:\n  max_request_body_size: 1048576\n\
         endpoints:\n  - name: a\n    url: https://a.example\n    timeout: 1.5h\n",
    )
    .unwrap();
    assert_eq!(config.health.check_interval.get(), Duration::from_secs(90));
    assert_eq!(config.health.timeout.get(), Duration::from_secs(30));
    assert_eq!(config.logging.max_file_size.bytes(), 524_288);
    assert_eq!(config.server.max_request_body_size.bytes(), 1_048_576);
    assert_eq!(config.endpoints[0].timeout, Duration::from_secs(5400));
}
