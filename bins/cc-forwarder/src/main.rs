//! The `cc-forwarder` binary: parse the command line, load the configuration, set up logging, run
//! [`ccf_app::App`] until SIGINT/SIGTERM, and turn the outcome into an exit status.
//!
//! Exit status: 0 after a clean shutdown (or `--version`/`--help`); 2 for command-line and
//! configuration errors (every problem is printed, each naming its file and key); 1 for anything
//! else that stops the forwarder (a port in use, a log file that cannot be opened, a shutdown that
//! had to be forced).
//!
//! This file is the only place that knows about processes: exit codes, stdout/stderr, signals and
//! the runtime. Everything about forwarding lives in the library crates.

mod cli;
mod commands;
mod logging;
mod shutdown;
mod tui;

/// mimalloc (v3) instead of glibc's malloc: 11-13 % fewer instructions per request (a fifth of
/// them were glibc's `malloc`/`free`), with idle RSS (19.3-19.7 MB) and 1,000 paced streams
/// (70-74 MB peak) still within the memory goals in the shipped `dist` build. An earlier try
/// (v2, issue 8) broke them; docs/benchmarks.md, "Issue 19, part 3", has both measurements.
///
/// Linked through mimalloc's `override` feature (it defines `malloc`, `free` and the rest, and
/// Rust's default allocator calls them) rather than as `mimalloc::MiMalloc`, whose
/// `GlobalAlloc` sends every allocation through `mi_malloc_aligned`: in v3 that path
/// over-allocates any block that is neither small enough for the fast path nor a power of two
/// (about 14 per request), and costs 2-4 % of every request's instructions ("Issue 19, part
/// 14"). SQLite's allocations come from mimalloc too.
#[cfg(feature = "mimalloc")]
use mimalloc as _;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ccf_app::reload::ConfigSource;
use ccf_app::App;
use ccf_config::{Config, ConfigError, ConfigLoader, LoadedConfig};
use clap::Parser;
use tracing::{error, info, warn};

use crate::cli::{Cli, Command};

/// Exit status for configuration and command-line errors (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;
/// Exit status for every other fatal error.
const EXIT_FATAL: u8 = 1;
/// How long runtime teardown waits for tasks that ignore cancellation (blocking calls).
const RUNTIME_TEARDOWN: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = cli::normalize_go_style_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Prints help/version (exit 0) or the usage error (exit 2).
        Err(error) => error.exit(),
    };
    match cli.command {
        Some(Command::CheckConfig { print }) => check_config(&cli, print),
        Some(Command::Migrate) => migrate(&cli),
        Some(Command::Export(ref args)) => commands::export(&cli, args),
        Some(Command::Env(ref args)) => commands::env(&cli, args),
        Some(Command::Completions { shell }) => commands::completions(shell),
        Some(Command::Manpage) => commands::manpage(),
        None => serve(&cli),
    }
}

/// Environment variables of the binary itself that share the configuration's `CCF_` prefix; they
/// are kept out of the configuration overrides (`CCF_LOG` is not the key `log`).
const BINARY_ENV_VARS: &[&str] = &["CCF_LOG"];

/// The process environment for the configuration loader: without [`BINARY_ENV_VARS`], and without
/// variables whose name or value is not UTF-8 (they can be neither overrides nor `${VAR}` values).
fn config_environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| !BINARY_ENV_VARS.contains(&name.as_str()))
        .collect()
}

/// Loads the configuration with the command-line overrides and applies `-p`.
fn load_config(cli: &Cli) -> Result<LoadedConfig, ConfigError> {
    let mut loaded = ConfigLoader::new()
        .file(&cli.config)
        .env_vars(config_environment())
        .overrides(cli.overrides())
        .load()?;
    if let Some(name) = &cli.primary_endpoint {
        loaded.config.prefer_endpoint(name)?;
    }
    Ok(loaded)
}

/// How a reload makes the configuration again: the same file, the environment captured at start,
/// the same command-line overrides and `-p`; the file is watched for changes.
fn config_source(cli: &Cli) -> ConfigSource {
    ConfigSource::new(
        ConfigLoader::new()
            .file(&cli.config)
            .env_vars(config_environment())
            .overrides(cli.overrides()),
    )
    .primary_endpoint(cli.primary_endpoint.clone())
    .watch(&cli.config)
}

/// Prints a configuration error, one problem per line, to stderr.
fn report_config_error(error: &ConfigError) {
    for line in error.to_string().lines() {
        eprintln!("cc-forwarder: error: {line}");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

/// `cc-forwarder check-config`: validate, print warnings and a summary (or, with `--print`, the
/// effective configuration with every secret masked). Exits 2 for anything the forwarder would
/// refuse at start, through the same [`ccf_app::check_startable`] that start runs.
fn check_config(cli: &Cli, print: bool) -> ExitCode {
    let loaded = match load_config(cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &loaded.warnings {
        eprintln!("cc-forwarder: warning: {warning}");
    }
    // Loading never fails for an exposed listener (a Go config must load); starting does, and so
    // does this check, so a systemd `ExecStartPre` stops a unit that would crash-loop.
    if let Err(refusal) = ccf_app::check_startable(&loaded.config) {
        eprintln!("cc-forwarder: error: {refusal}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if print {
        let view = ccf_app::effective_config(&loaded.config, Some(&cli.config));
        match serde_yaml::to_string(&view) {
            Ok(yaml) => print!("{yaml}"),
            Err(error) => {
                eprintln!("cc-forwarder: error: cannot render the configuration: {error}");
                return ExitCode::from(EXIT_FATAL);
            }
        }
    } else {
        println!("{}", summary(&cli.config.display().to_string(), &loaded));
    }
    ExitCode::SUCCESS
}

/// `cc-forwarder migrate`: apply the usage store's migrations and exit.
fn migrate(cli: &Cli) -> ExitCode {
    let loaded = match load_config(cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cc-forwarder: error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    match runtime.block_on(ccf_app::usage::migrate(&loaded.config)) {
        Ok(report) => {
            let applied: Vec<String> = report.applied.iter().map(u32::to_string).collect();
            println!(
                "cc-forwarder: usage store at schema version {}; applied now: {}{}",
                report.current_version,
                if applied.is_empty() {
                    "none".to_string()
                } else {
                    applied.join(", ")
                },
                if report.detected_legacy {
                    " (a database written by the Go forwarder was detected and kept)"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cc-forwarder: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// A short, human-readable description of a loaded configuration.
fn summary(file: &str, loaded: &LoadedConfig) -> String {
    let config = &loaded.config;
    let mut groups: BTreeMap<(u32, &str), Vec<&str>> = BTreeMap::new();
    for endpoint in &config.endpoints {
        groups
            .entry((endpoint.group_priority, endpoint.group.as_str()))
            .or_default()
            .push(endpoint.name.as_str());
    }
    let groups: Vec<String> = groups
        .iter()
        .map(|((priority, group), names)| {
            format!("{group} (priority {priority}): {}", names.join(", "))
        })
        .collect();
    let on_off = |enabled: bool| if enabled { "on" } else { "off" };
    let web = if config.web.enabled {
        format!("on, {}:{}", config.web.host, config.web.port)
    } else {
        "off".to_string()
    };
    let file_log = if config.logging.file_enabled {
        format!(
            ", file {} (rotated at {}, {} kept{})",
            config.logging.file_path,
            config.logging.max_file_size,
            config.logging.max_files,
            if config.logging.compress_rotated {
                ", gzipped"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        1 => " (1 warning)".to_string(),
        n => format!(" ({n} warnings)"),
    };
    [
        format!("{file}: valid{warnings}"),
        format!(
            "  listen:    {}:{} (inbound auth {})",
            config.server.host,
            config.server.port,
            on_off(config.auth.enabled)
        ),
        format!(
            "  endpoints: {} in {} group(s): {}",
            config.endpoints.len(),
            groups.len(),
            groups.join("; ")
        ),
        format!(
            "  strategy:  {}, group auto-switch {}",
            format!("{:?}", config.strategy.kind).to_lowercase(),
            on_off(config.group.auto_switch_between_groups)
        ),
        format!("  web:       {web}"),
        format!("  tui:       {}", on_off(config.tui.enabled)),
        format!(
            "  logging:   {} {}{file_log}",
            format!("{:?}", config.logging.level).to_lowercase(),
            format!("{:?}", config.logging.format).to_lowercase()
        ),
        format!("  usage:     {}", on_off(config.usage_tracking.enabled)),
    ]
    .join("\n")
}

/// Serve until a signal; see the crate docs for the exit status.
fn serve(cli: &Cli) -> ExitCode {
    let loaded = match load_config(cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Refused before logging starts, with the words and status `check-config` uses.
    if let Err(refusal) = ccf_app::check_startable(&loaded.config) {
        for warning in &loaded.warnings {
            eprintln!("cc-forwarder: warning: {warning}");
        }
        eprintln!("cc-forwarder: error: {refusal}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // The terminal UI runs only on a terminal; its log panel then replaces stderr.
    let tui_wanted = loaded.config.tui.enabled;
    let tui_logs = (tui_wanted && ccf_tui::stdout_is_terminal()).then(ccf_tui::LogBuffer::default);
    let guard = match logging::init(&loaded.config.logging, tui_logs.clone()) {
        Ok(guard) => guard,
        Err(error) => {
            for warning in &loaded.warnings {
                eprintln!("cc-forwarder: warning: {warning}");
            }
            eprintln!("cc-forwarder: error: cannot set up logging: {error:#}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    for warning in &loaded.warnings {
        warn!(file = %warning.file, key = %warning.key, "configuration: {}", warning.message);
    }
    if tui_wanted && tui_logs.is_none() {
        warn!("the terminal UI is on (--tui or tui.enabled) but stdout is not a terminal: not starting it");
    }
    let reload = config_source(cli);
    let set_level = guard.level_setter();
    let status = match run(loaded.config, tui_logs, reload, set_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::from(EXIT_FATAL)
        }
    };
    // Flushes the log file writer before the process exits.
    drop(guard);
    status
}

/// Builds the runtime and runs the app on it until a signal (or until the terminal UI, when
/// `tui_logs` is given, is quit).
fn run(
    config: Config,
    tui_logs: Option<ccf_tui::LogBuffer>,
    reload: ConfigSource,
    set_level: impl Fn(ccf_config::LogLevel) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // Thread-per-core (`server.threads`, default one per core): the proxy listeners are served
    // by per-core runtimes the app starts on their own threads (`ccf_proxy::serve_per_core`);
    // this runtime then only carries the background work (health probes, usage recorder, admin
    // API, reload, TUI), so one worker is enough. With `server.threads: 0` it serves the proxy
    // too, on every core, as before issue #19.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match config.server.per_core_runtimes() {
        Some(_) => builder.worker_threads(1).thread_name("ccf-background"),
        None => builder.thread_name("ccf-worker"),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_app(config, tui_logs, reload, set_level));
    // Tasks the app left behind are cancelled; blocking ones get a moment, not forever.
    runtime.shutdown_timeout(RUNTIME_TEARDOWN);
    result
}

async fn run_app(
    config: Config,
    tui_logs: Option<ccf_tui::LogBuffer>,
    reload: ConfigSource,
    set_level: impl Fn(ccf_config::LogLevel) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let drain_timeout = config.server.shutdown_timeout.get();
    let flush_timeout = if config.usage_tracking.enabled {
        config.usage_tracking.shutdown_flush_timeout.get()
    } else {
        std::time::Duration::ZERO
    };
    let show_export_line = tui_logs.is_none();
    let source = config
        .source
        .as_ref()
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    // Installed before binding, so a signal that arrives while starting still shuts down cleanly.
    let (shutdown, forced, trigger) = shutdown::watch_signals(drain_timeout, flush_timeout)
        .context("cannot install signal handlers")?;
    let app = App::bind(config)
        .await
        .context("cannot start the forwarder")?
        .with_reload(reload)
        .on_reload(std::sync::Arc::new(move |config: &Config| {
            set_level(config.logging.level)
        }));
    let base_url = app.base_url();
    info!(
        version = cli::VERSION,
        address = %app.proxy_addr(),
        config = %source,
        "cc-forwarder started"
    );
    if show_export_line {
        println!("export ANTHROPIC_BASE_URL={base_url}");
    }
    info!("point Claude Code at the forwarder: export ANTHROPIC_BASE_URL={base_url}");
    let usage_store = app.usage().map(|tracking| tracking.store.clone());
    let tui = tui::start(
        tui_logs,
        app.forwarder(),
        usage_store,
        app.webhooks(),
        base_url,
        trigger,
    );
    let result = tokio::select! {
        result = app.run(shutdown) => {
            result.context("the forwarder stopped with an error")
        }
        shutdown::Forced(reason) = forced => Err(anyhow::anyhow!(reason)),
    };
    // The terminal is given back before the last lines are logged.
    tui.stop().await;
    result?;
    info!("cc-forwarder stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml).unwrap()
    }

    const ENDPOINTS: &str = "endpoints:\n  - name: a\n    url: https://a.example\n    group: main\n    group-priority: 1\n";

    #[test]
    fn summary_lists_listen_address_and_groups() {
        let loaded = LoadedConfig {
            config: config(&format!(
                "server:\n  host: 127.0.0.1\n  port: 8087\n{ENDPOINTS}"
            )),
            warnings: Vec::new(),
        };
        let text = summary("x.yaml", &loaded);
        assert!(text.starts_with("x.yaml: valid\n"), "{text}");
        assert!(
            text.contains("listen:    127.0.0.1:8087 (inbound auth off)"),
            "{text}"
        );
        assert!(text.contains("endpoints: 1 in 1 group(s): main"), "{text}");
    }
}
