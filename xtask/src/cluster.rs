//! `cargo xtask cluster`: three forwarder instances behind a local load balancer, one of them
//! stopped gracefully and another killed mid-run, and an account of every request (issue 21).
//!
//! The topology is the production one of `docs/operations.md` ("Several instances") on
//! loopback: nginx (or HAProxy with `--balancer haproxy`; Debian's package is installed with
//! `apt-get` when missing, saying why) in front of three `cc-forwarder` processes, each with its
//! own `instance_id` and port, all sharing one MariaDB database (`ccf_cluster_<random>`, created
//! here, dropped at the end unless `--keep`), one Redis key prefix (`ccf-xtask-<random>`, its
//! keys deleted at the end unless `--keep`) and two test-kit mock upstreams.
//!
//! Client threads send a steady rate of `/v1/messages` requests to the balancer, three in five
//! JSON and two streamed (read to `message_stop`), each with an `x-session-id` from a small pool
//! of sessions. A request that fails (connection error, non-200, stream cut short, no
//! `x-ccf-request-id`) is sent once more after a short pause and counted as retried. A third into the run instance
//! 2 gets SIGTERM (it drains and flushes its usage rows); two thirds in, instance 3 gets SIGKILL
//! (it loses what it had not flushed yet). The balancer names the instance that answered in a
//! response header (`x-ccf-upstream`), so every answer is attributed exactly.
//!
//! At the end the last instance is stopped with SIGTERM and `request_logs` is read back. Checks
//! (any failure exits non-zero): every request answered (after at most one retry); no
//! `request_id` stored twice; every answer's row stored under the instance that answered it,
//! except on the killed instance, whose missing rows must all have been answered within its
//! last flush interval before the kill (the count and that bound are printed); and, when the
//! instances have a Redis link (a `cluster` section in `/health/detailed`), that session
//! bindings are in Redis under the run's prefix. The instances' configurations and logs and the
//! balancer's are kept in `target/cluster/`.
//!
//! `request_id` is a unique key of `request_logs`: a second write of one id is an upsert, so a
//! request recorded by two instances would show as a row under the wrong instance, which the
//! attribution check catches; the duplicate query guards the same thing should the key change.

mod account;
mod balancer;
mod client;
mod shared;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{cargo_build, free_port, target_dir, Proc};
use account::{Report, FLUSH_INTERVAL};
use balancer::{find_or_install, Balancer, LoadBalancer};
use client::{cluster_section, wait_until, Traffic};
use shared::{redis_cli, redis_count, Database, RedisPrefix, MYSQL_HOST, MYSQL_PORT, REDIS_URL};

/// Longest wait for an instance to exit after SIGTERM (drain + flush, with a wide margin).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(90);
/// The mock's streamed answers: deltas per message and the pause between two events, so that a
/// stream lasts long enough (~400 ms) for the kill to cut some of them.
const STREAM_DELTAS: u32 = 40;
const STREAM_DELAY_MS: u32 = 10;
/// Number of forwarder instances.
const INSTANCES: usize = 3;

/// `cargo xtask cluster` options.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Seconds of traffic (SIGTERM at a third, SIGKILL at two thirds).
    #[arg(long, default_value_t = 24)]
    seconds: u64,
    /// Requests per second sent to the load balancer, all clients together.
    #[arg(long, default_value_t = 60)]
    rate: u32,
    /// Client threads (enough to keep the rate with streams of ~0.5 s in a debug build).
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Sessions (distinct `x-session-id` values) the requests are spread over.
    #[arg(long, default_value_t = 12)]
    sessions: u32,
    /// The load balancer: `nginx` or `haproxy` (Debian's package, installed when missing).
    #[arg(long, default_value = "nginx")]
    balancer: Balancer,
    /// Cargo profile of the forwarder and the mock (`dev`: this is a correctness run, not a
    /// benchmark, and the dev build is the one most often at hand).
    #[arg(long, default_value = "dev")]
    profile: String,
    /// Keep the database and the Redis keys afterwards (their names are printed).
    #[arg(long)]
    keep: bool,
}

/// One forwarder instance of the run.
struct Instance {
    id: String,
    port: u16,
    process: Proc,
}

/// Runs the whole scenario.
pub fn run(root: &Path, args: &ClusterArgs) -> Result<()> {
    if args.seconds < 6 || args.rate == 0 || args.clients == 0 || args.sessions == 0 {
        bail!("--seconds must be at least 6 and --rate, --clients, --sessions positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl+C handler")?;
    }
    let tag = random_tag();
    let out_dir = target_dir(root).join("cluster");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let bin = binaries(root, &args.profile)?;
    let balancer_program = match args.balancer {
        Balancer::Nginx => find_or_install("nginx", "nginx")?,
        Balancer::Haproxy => find_or_install("haproxy", "haproxy")?,
    };
    redis_cli(&["PING"]).context("Redis at 127.0.0.1:6379 does not answer")?;

    let database = Database::create(&format!("ccf_cluster_{tag}"), args.keep)?;
    let redis = RedisPrefix {
        prefix: format!("ccf-xtask-{tag}"),
        keep: args.keep,
    };
    println!(
        "==> database {} on {MYSQL_HOST}:{MYSQL_PORT}, Redis prefix {} on {REDIS_URL}, logs in {}",
        database.name,
        redis.prefix,
        out_dir.display()
    );

    // Upstreams: two mocks, so that a session's binding names one of two endpoints.
    let mut mocks = Vec::new();
    for name in ["mock-a", "mock-b"] {
        let port = free_port()?;
        let mut mock = Proc::spawn(
            name,
            Command::new(bin.join("ccf-mock-upstream"))
                .args(["--port", &port.to_string()])
                .args(["--deltas", &STREAM_DELTAS.to_string()])
                .args(["--chunk-delay-ms", &STREAM_DELAY_MS.to_string()])
                .stdout(Stdio::null()),
        )?;
        mock.wait_listening(port, &stop)?;
        mocks.push((name, port, mock));
    }
    let upstreams: Vec<(&str, u16)> = mocks.iter().map(|(name, port, _)| (*name, *port)).collect();

    // The instances.
    let mut instances = Vec::new();
    for number in 1..=INSTANCES {
        let id = format!("cluster-{number}");
        let port = free_port()?;
        let config = out_dir.join(format!("{id}.yaml"));
        std::fs::write(
            &config,
            instance_config(&id, port, &database.name, &redis.prefix, &upstreams),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = File::create(out_dir.join(format!("{id}.log")))
            .with_context(|| format!("creating {id}.log"))?;
        let mut process = Proc::spawn(
            &id,
            Command::new(bin.join("cc-forwarder"))
                .arg("--config")
                .arg(&config)
                .arg("--no-tui")
                .current_dir(&out_dir)
                .env_remove("RUST_LOG")
                .env_remove("CCF_LOG")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        process.wait_listening(port, &stop)?;
        instances.push(Instance { id, port, process });
    }

    // The load balancer in front of them.
    let lb_port = free_port()?;
    let targets: Vec<(String, u16)> = instances.iter().map(|i| (i.id.clone(), i.port)).collect();
    let lb_dir = out_dir.join("balancer");
    let mut balancer = LoadBalancer::start(
        args.balancer,
        &balancer_program,
        &lb_dir,
        lb_port,
        &targets,
        &stop,
    )?;
    let lb = SocketAddr::from(([127, 0, 0, 1], lb_port));

    // A cluster section in /health/detailed says the build shares state through Redis.
    let cluster_sections: Vec<(String, Option<Value>)> = instances
        .iter()
        .map(|instance| (instance.id.clone(), cluster_section(instance.port)))
        .collect();
    for (id, section) in &cluster_sections {
        match section {
            Some(section) => println!("{id}: /health/detailed cluster = {section}"),
            None => println!("{id}: /health/detailed has no cluster section"),
        }
    }

    // Traffic, with the two stops in the middle.
    let duration = Duration::from_secs(args.seconds);
    println!(
        "\n==> {} s of traffic through {} at {lb}: {} requests/s from {} clients over {} sessions (JSON and SSE)",
        args.seconds,
        args.balancer.name(),
        args.rate,
        args.clients,
        args.sessions
    );
    let traffic = Traffic::new(lb, args, &tag, duration, Arc::clone(&stop));
    let workers: Vec<_> = (0..args.clients)
        .map(|_| {
            let traffic = Arc::clone(&traffic);
            thread::spawn(move || traffic.work())
        })
        .collect();

    wait_until(traffic.started + duration / 3, &stop);
    let terminated = instances[1].id.clone();
    println!("==> SIGTERM {terminated} (graceful: drains, then flushes its usage rows)");
    let term_status = instances[1].process.terminate(SHUTDOWN_DEADLINE)?;
    println!("    {terminated} exited: {term_status}");

    wait_until(traffic.started + duration * 2 / 3, &stop);
    let killed = instances[2].id.clone();
    println!("==> SIGKILL {killed} (loses what it had not flushed yet)");
    instances[2].process.stop();
    let killed_at = Instant::now();

    for worker in workers {
        if worker.join().is_err() {
            bail!("a client thread panicked");
        }
    }
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let outcomes = traffic.outcomes();

    // Shared state in Redis, read while the last instance still runs.
    let bindings = redis_count(&format!("{}:session:*", redis.prefix))?;
    let all_keys = redis_count(&format!("{}:*", redis.prefix))?;
    if let Some(section) = cluster_section(instances[0].port) {
        println!(
            "{}: /health/detailed cluster after the traffic = {section}",
            instances[0].id
        );
    }

    let survivor = instances[0].id.clone();
    println!("==> SIGTERM {survivor} (the last one: its rows are flushed before counting)");
    let last_status = instances[0].process.terminate(SHUTDOWN_DEADLINE)?;
    println!("    {survivor} exited: {last_status}");
    balancer.stop();

    let rows = database.rows()?;
    let duplicates = database.duplicates()?;
    let report = Report::build(&outcomes, &rows, &duplicates, &targets, &killed, killed_at);
    // Every instance must have shown a connected Redis link before the traffic.
    let linked = cluster_sections.iter().all(|(_, section)| {
        section
            .as_ref()
            .is_some_and(|section| section["connected"] == true)
    });
    let failures = report.print(&killed, bindings, all_keys, linked);
    drop(mocks);
    if failures.is_empty() {
        println!("\ncluster: all checks passed");
        Ok(())
    } else {
        bail!(
            "cluster: {} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        )
    }
}

/// Builds the forwarder and the test kit with `profile`; the folder holding the binaries.
fn binaries(root: &Path, profile: &str) -> Result<PathBuf> {
    cargo_build(
        root,
        &[
            "build",
            "--profile",
            profile,
            "-p",
            "cc-forwarder",
            "-p",
            "ccf-testkit",
            "--bins",
        ],
    )?;
    // Cargo's `dev` and `test` profiles build into `debug/`.
    let folder = match profile {
        "dev" | "test" => "debug",
        other => other,
    };
    Ok(target_dir(root).join(folder))
}

/// A short random hex tag for names (database, Redis prefix): time and process id, hashed.
fn random_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// One instance's configuration: its own id and port, the shared database, Redis prefix and
/// upstreams, a 1 s flush interval, health probes rare (the mocks are always up).
fn instance_config(
    id: &str,
    port: u16,
    database: &str,
    prefix: &str,
    upstreams: &[(&str, u16)],
) -> String {
    let mut config = format!(
        "instance_id: {id}\n\
         server:\n  host: \"127.0.0.1\"\n  port: {port}\n\
         logging:\n  level: info\n  format: json\n\
         web:\n  enabled: false\n\
         tui:\n  enabled: false\n\
         health:\n  check_interval: 300s\n\
         cluster:\n  redis_url: \"{REDIS_URL}\"\n  redis_prefix: \"{prefix}\"\n\
         usage_tracking:\n  enabled: true\n  flush_interval: {}ms\n  database:\n    type: mysql\n    \
         host: {MYSQL_HOST}\n    port: {MYSQL_PORT}\n    database: {database}\n    username: root\n\
         endpoints:\n",
        FLUSH_INTERVAL.as_millis()
    );
    for (priority, (name, port)) in upstreams.iter().enumerate() {
        config.push_str(&format!(
            "  - name: {name}\n    url: http://127.0.0.1:{port}\n    token: cluster-token\n    priority: {}\n",
            priority + 1
        ));
    }
    config
}

/// The production files of `deploy/` describe one topology: these tests keep the instance
/// configurations, the systemd unit, both load balancers and the Compose file in step (text
/// checks: xtask has no YAML parser; `deploy/compose.yaml` is checked as YAML by hand, Docker
/// Compose being unavailable on the development machines).
#[cfg(test)]
mod deploy_files {
    use std::path::Path;

    fn read(path: &str) -> String {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// `(instance_id, proxy port)` of `deploy/config/ccf-N.yaml`.
    fn instance(n: u32) -> (String, u16) {
        let text = read(&format!("deploy/config/ccf-{n}.yaml"));
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.trim_start().strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .unwrap_or_else(|| panic!("ccf-{n}.yaml has no {key}"))
        };
        let port = text
            .split("\nserver:\n")
            .nth(1)
            .and_then(|server| {
                server
                    .lines()
                    .find_map(|line| line.trim_start().strip_prefix("port: "))
            })
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("ccf-{n}.yaml has no server.port"));
        (value("instance_id: "), port)
    }

    #[test]
    fn every_instance_is_behind_both_balancers_and_in_the_compose_file() {
        let nginx = read("deploy/nginx/cc-forwarder.conf");
        let nginx_compose = read("deploy/nginx/compose.conf");
        let haproxy = read("deploy/haproxy/haproxy.cfg");
        let compose = read("deploy/compose.yaml");
        let mut ports = Vec::new();
        for n in 1..=3 {
            let (id, port) = instance(n);
            assert_eq!(id, format!("ccf-{n}"));
            assert!(!ports.contains(&port), "port {port} used twice");
            ports.push(port);
            assert!(
                nginx.contains(&format!("server 127.0.0.1:{port} ")),
                "nginx: {id}"
            );
            assert!(
                nginx_compose.contains(&format!("server {id}:{port} ")),
                "compose.conf: {id}"
            );
            assert!(
                haproxy.contains(&format!("server {id} 127.0.0.1:{port} check")),
                "haproxy: {id}"
            );
            assert!(compose.contains(&format!("\n  {id}:\n")), "compose: {id}");
            assert!(
                compose.contains(&format!(
                    "./config/{id}.yaml:/etc/cc-forwarder/config.yaml:ro"
                )),
                "compose mounts {id}'s file"
            );
        }
        for config in [&nginx, &nginx_compose] {
            assert!(config.contains("proxy_next_upstream error timeout;"));
            let directives = config
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'));
            assert!(directives
                .into_iter()
                .all(|l| !l.contains("non_idempotent")));
            assert!(config.contains("proxy_buffering off;"));
        }
        assert!(compose.contains("./nginx/compose.conf:/etc/nginx/conf.d/default.conf:ro"));
    }

    #[test]
    fn the_systemd_template_runs_each_instance_from_its_own_file_and_state_directory() {
        let unit = read("deploy/systemd/cc-forwarder@.service");
        for line in [
            "ExecStart=/usr/local/bin/cc-forwarder --config /etc/cc-forwarder/%i.yaml --no-tui",
            "ExecStartPre=/usr/local/bin/cc-forwarder check-config --config /etc/cc-forwarder/%i.yaml",
            "StateDirectory=cc-forwarder/%i",
            "WorkingDirectory=/var/lib/cc-forwarder/%i",
            "EnvironmentFile=/etc/cc-forwarder/env",
            "TimeoutStopSec=45s",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
        // The single-instance unit's hardening, line for line.
        let single = read("packaging/cc-forwarder.service");
        let hardening = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    l.starts_with("Protect")
                        || l.starts_with("Private")
                        || l.starts_with("Restrict")
                        || l.starts_with("SystemCall")
                        || l.starts_with("Capability")
                })
                .map(str::to_string)
                .collect()
        };
        assert_eq!(hardening(&unit), hardening(&single));
    }
}
