//! The load balancer of `cargo xtask cluster`: nginx or HAProxy (Debian's package, installed
//! with `apt-get` when missing, saying why) in the foreground on a loopback port, configured as
//! `deploy/nginx/cc-forwarder.conf` and `deploy/haproxy/haproxy.cfg` are for production, plus a
//! response header naming the instance that answered.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::Proc;

/// Which load balancer fronts the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balancer {
    /// nginx: passive health (`max_fails`), `proxy_next_upstream error timeout`.
    Nginx,
    /// HAProxy: active health checks on `/health`, `retry-on conn-failure` + `redispatch`.
    Haproxy,
}

impl Balancer {
    /// The program's name.
    pub(super) fn name(self) -> &'static str {
        match self {
            Balancer::Nginx => "nginx",
            Balancer::Haproxy => "haproxy",
        }
    }
}

/// `nginx` / `haproxy` on the `PATH` or in `/usr/sbin`; when missing, Debian's `package` is
/// installed with `apt-get` (the reason is printed first).
pub(super) fn find_or_install(program: &str, package: &str) -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    println!(
        "==> {program} is not installed: installing Debian's {package} with apt-get, to run it as \
         the load balancer in front of the three instances"
    );
    let apt = |args: &[&str]| {
        println!("$ apt-get {}", args.join(" "));
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    // Package lists may be missing in a fresh container: update once, then try again.
    if !(apt(&install) || (apt(&["update"]) && apt(&install))) {
        bail!("could not install {package} (not root, or no network?)");
    }
    find().with_context(|| format!("{package} was installed but {program} is not on the PATH"))
}

/// The load balancer process (nginx or HAProxy in the foreground), stopped on drop.
pub(super) struct LoadBalancer {
    process: Option<Proc>,
}

impl LoadBalancer {
    /// Writes the configuration into `dir` (emptied first, kept afterwards with the balancer's
    /// log) and starts the balancer.
    pub(super) fn start(
        kind: Balancer,
        program: &Path,
        dir: &Path,
        port: u16,
        targets: &[(String, u16)],
        stop: &AtomicBool,
    ) -> Result<LoadBalancer> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut command = Command::new(program);
        match kind {
            Balancer::Nginx => {
                let config = dir.join("nginx.conf");
                std::fs::write(&config, nginx_config(dir, port, targets))
                    .with_context(|| format!("writing {}", config.display()))?;
                command
                    .arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&config);
            }
            Balancer::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(port, targets))
                    .with_context(|| format!("writing {}", config.display()))?;
                command.arg("-db").arg("-f").arg(&config);
            }
        }
        let log = File::create(dir.join("balancer.log")).context("creating balancer.log")?;
        command.stdout(log.try_clone()?).stderr(log);
        let mut process = Proc::spawn(kind.name(), &mut command)?;
        process.wait_listening(port, stop)?;
        Ok(LoadBalancer {
            process: Some(process),
        })
    }

    /// SIGTERM: nginx's master stops its worker (a SIGKILL would leave the worker running).
    pub(super) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if let Err(error) = process.terminate(Duration::from_secs(10)) {
                println!("warning: stopping the load balancer: {error:#}");
            }
        }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx as the production example in `deploy/nginx/cc-forwarder.conf` has it, on loopback:
/// keep-alive to the instances, no buffering (streams pass through as they come), a refused or
/// failed connection moves the request to the next instance, and the answering instance's
/// address in `x-ccf-upstream` (so this run can attribute every answer).
fn nginx_config(dir: &Path, port: u16, targets: &[(String, u16)]) -> String {
    let dir = dir.display();
    let servers: String = targets
        .iter()
        .map(|(_, port)| format!("        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    access_log off;\n    \
         client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;\n    \
         fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    \
         scgi_temp_path {dir}/scgi;\n    \
         upstream cc_forwarder {{\n{servers}        keepalive 64;\n    }}\n    \
         server {{\n        listen 127.0.0.1:{port};\n        client_max_body_size 32m;\n        \
         location / {{\n            proxy_pass http://cc_forwarder;\n            \
         proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            \
         proxy_buffering off;\n            proxy_read_timeout 600s;\n            \
         proxy_connect_timeout 2s;\n            proxy_next_upstream error timeout;\n            \
         add_header X-Ccf-Upstream $upstream_addr always;\n        }}\n    }}\n}}\n"
    )
}

/// HAProxy as `deploy/haproxy/haproxy.cfg` has it, on loopback: active checks on `/health`,
/// one retry on a refused connection, on another instance (`redispatch`), and the answering
/// instance's id in `x-ccf-upstream`.
fn haproxy_config(port: u16, targets: &[(String, u16)]) -> String {
    let servers: String = targets
        .iter()
        .map(|(id, port)| {
            format!("    server {id} 127.0.0.1:{port} check inter 1s fall 1 rise 2\n")
        })
        .collect();
    format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 600s\n    \
         timeout server 600s\n    retries 2\n    option redispatch 1\n    retry-on conn-failure\n\
         frontend cluster\n    bind 127.0.0.1:{port}\n    default_backend cc_forwarder\n\
         backend cc_forwarder\n    balance roundrobin\n    option httpchk GET /health\n    \
         http-check expect status 200\n    http-response set-header X-Ccf-Upstream %[srv_name]\n{servers}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<(String, u16)> {
        (1..=3)
            .map(|n| (format!("cluster-{n}"), 8100 + n))
            .collect()
    }

    #[test]
    fn nginx_moves_only_unsent_requests_to_another_instance_and_names_the_one_that_answered() {
        let config = nginx_config(Path::new("/tmp/lb"), 9000, &targets());
        for port in [8101, 8102, 8103] {
            assert!(
                config.contains(&format!("server 127.0.0.1:{port} ")),
                "{config}"
            );
        }
        assert!(config.contains("listen 127.0.0.1:9000;"), "{config}");
        assert!(
            config.contains("proxy_next_upstream error timeout;"),
            "{config}"
        );
        // A POST already sent is never replayed elsewhere: that could bill a request twice.
        assert!(!config.contains("non_idempotent"), "{config}");
        assert!(config.contains("proxy_buffering off;"), "{config}");
        assert!(config.contains("add_header X-Ccf-Upstream $upstream_addr always;"));
    }

    #[test]
    fn haproxy_checks_health_and_names_the_server_that_answered() {
        let config = haproxy_config(9000, &targets());
        for (id, port) in targets() {
            assert!(
                config.contains(&format!("server {id} 127.0.0.1:{port} check")),
                "{config}"
            );
        }
        assert!(config.contains("bind 127.0.0.1:9000"), "{config}");
        assert!(config.contains("option httpchk GET /health"), "{config}");
        assert!(config.contains("retry-on conn-failure"), "{config}");
        assert!(config.contains("X-Ccf-Upstream %[srv_name]"), "{config}");
    }
}
