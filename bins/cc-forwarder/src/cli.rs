//! The command line: clap definitions plus the Go-flag compatibility shim.
//!
//! The Go original used the standard `flag` package, where `-config x`, `-config=x`, `--config x`
//! and `-web-port=9000` are all the same flag and booleans take `-web=false`. Clap expects `--long`
//! names, so [`normalize_go_style_args`] rewrites the known single-dash long names before parsing.

use std::ffi::OsString;
use std::path::PathBuf;

use ccf_config::CliOverrides;
use clap::{Parser, Subcommand};

/// The version line: the package version plus, when known at build time, the git commit and date.
pub const VERSION: &str = env!("CC_FORWARDER_VERSION");

/// The default `--config`, as in the Go original.
pub const DEFAULT_CONFIG: &str = "config/example.yaml";

/// cc-forwarder: a forwarding proxy for the Anthropic Messages API.
///
/// Point Claude Code at it with `ANTHROPIC_BASE_URL=http://<host>:<port>`; it forwards every
/// request to the configured endpoints with failover, retries and usage tracking. Without a
/// subcommand it serves until SIGINT or SIGTERM. Single-dash spellings from the Go version
/// (`-config x.yaml`, `-no-tui`, `-web-port 9000`) are accepted.
#[derive(Debug, Parser)]
#[command(name = "cc-forwarder", version = VERSION, about, long_about)]
pub struct Cli {
    /// Configuration file (YAML).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,

    /// Start the terminal UI (overrides `tui.enabled`).
    #[arg(long, conflicts_with = "no_tui", global = true)]
    pub tui: bool,

    /// Do not start the terminal UI (overrides `tui.enabled`).
    #[arg(long, global = true)]
    pub no_tui: bool,

    /// Prefer this endpoint: it gets priority 1 and others at priority 1 or better move back by 2.
    #[arg(
        short = 'p',
        long = "primary-endpoint",
        value_name = "ENDPOINT",
        global = true
    )]
    pub primary_endpoint: Option<String>,

    /// Serve the admin API and dashboard (forces `web.enabled`).
    #[arg(long, global = true)]
    pub web: bool,

    /// Port of the admin API and dashboard (overrides `web.port`).
    #[arg(long, value_name = "PORT", global = true)]
    pub web_port: Option<u16>,

    /// Proxy listen host (overrides `server.host`).
    #[arg(long, value_name = "HOST", global = true)]
    pub host: Option<String>,

    /// Proxy listen port (overrides `server.port`; 0 picks a free port).
    #[arg(long, value_name = "PORT", global = true)]
    pub port: Option<u16>,

    /// What to do; without one, serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands. Serving is the default, so this is optional in [`Cli`].
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the configuration, print warnings and a summary, and exit
    /// (0 when the forwarder would start with it, 2 when not).
    CheckConfig {
        /// Print the effective configuration (defaults, environment, command-line overrides and
        /// inheritance applied) as YAML, every secret masked, instead of the summary.
        #[arg(long)]
        print: bool,
    },
    /// Apply the usage store's migrations (SQLite or MySQL, as configured) and exit.
    Migrate,
    /// Write the stored usage rows to stdout as CSV or JSON, oldest first.
    ///
    /// The rows are streamed from the configured usage database (SQLite or MySQL), so an export
    /// has no row limit. Pending schema migrations are applied first, as at startup. The row
    /// count goes to stderr.
    Export(crate::commands::ExportArgs),
    /// Print the settings that point Claude Code at this forwarder.
    ///
    /// Prints `ANTHROPIC_BASE_URL` (from `server.host` and `server.port`) and, when inbound auth
    /// is on, `ANTHROPIC_AUTH_TOKEN` with the REAL token from the configuration: this is the one
    /// command that prints it (everything else masks it), so mind where the output goes. With
    /// `--shell json` it prints a snippet for Claude Code's `~/.claude/settings.json`.
    Env(crate::commands::EnvArgs),
    /// Print a shell completion script (used by `cargo xtask dist`).
    #[command(hide = true)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff (used by `cargo xtask dist`).
    #[command(hide = true)]
    Manpage,
}

impl Cli {
    /// The command-line layer of the configuration.
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            web_enabled: self.web.then_some(true),
            web_port: self.web_port,
            tui_enabled: if self.no_tui {
                Some(false)
            } else if self.tui {
                Some(true)
            } else {
                None
            },
            server_host: self.host.clone(),
            server_port: self.port,
        }
    }
}

/// Long flags, spelled without dashes, that the Go original accepted with a single dash.
const GO_LONG_FLAGS: &[&str] = &[
    "config",
    "version",
    "help",
    "tui",
    "no-tui",
    "web",
    "web-port",
    "host",
    "port",
    "primary-endpoint",
];

/// Flags that take a value (the next argument when not given as `name=value`).
const VALUE_FLAGS: &[&str] = &[
    "config",
    "web-port",
    "host",
    "port",
    "primary-endpoint",
    "p",
];

/// Boolean flags, which Go also accepts as `-name=true` / `-name=false`.
const BOOL_FLAGS: &[&str] = &["version", "help", "tui", "no-tui", "web"];

/// Rewrites Go `flag`-style arguments into the `--long` form clap parses.
///
/// - `-config x`, `-config=x`, `-web-port 9000` become `--config x`, `--config=x`,
///   `--web-port 9000`; the value after a flag that takes one is never rewritten.
/// - Boolean `-name=true` becomes `--name`; `-name=false` is dropped (it asks for the default),
///   except `-tui=false`, which becomes `--no-tui`. The same holds for `--name=true|false`.
/// - `-p` and unknown arguments are left alone; everything after `--` too.
pub fn normalize_go_style_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut normalized = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    // The program name.
    normalized.extend(args.next());
    let mut next_is_value = false;
    let mut verbatim = false;
    for arg in args {
        if verbatim || next_is_value {
            next_is_value = false;
            normalized.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            normalized.push(arg);
            continue;
        };
        if text == "--" {
            verbatim = true;
            normalized.push(arg);
            continue;
        }
        let Some(flag) = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|flag| !flag.is_empty())
        else {
            normalized.push(arg);
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        if name == "p" {
            next_is_value = value.is_none();
            normalized.push(arg);
            continue;
        }
        if !GO_LONG_FLAGS.contains(&name) {
            normalized.push(arg);
            continue;
        }
        match value {
            None => {
                next_is_value = VALUE_FLAGS.contains(&name);
                normalized.push(OsString::from(format!("--{name}")));
            }
            Some(value) if BOOL_FLAGS.contains(&name) => match go_bool(value) {
                Some(true) => normalized.push(OsString::from(format!("--{name}"))),
                Some(false) if name == "tui" => normalized.push(OsString::from("--no-tui")),
                Some(false) => {}
                // Not a boolean: keep it so clap reports the mistake.
                None => normalized.push(OsString::from(format!("--{name}={value}"))),
            },
            Some(value) => normalized.push(OsString::from(format!("--{name}={value}"))),
        }
    }
    normalized
}

/// Go's `strconv.ParseBool`.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[&str], expected: &[&str]) {
        let mut args = vec![OsString::from("cc-forwarder")];
        args.extend(input.iter().map(OsString::from));
        let actual = normalize_go_style_args(args);
        let actual: Vec<_> = actual[1..]
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(actual, expected, "input: {input:?}");
    }

    #[test]
    fn rewrites_go_single_dash_long_flags() {
        check(&["-config", "x.yaml"], &["--config", "x.yaml"]);
        check(&["-config=x.yaml"], &["--config=x.yaml"]);
        check(&["-version"], &["--version"]);
        check(&["-no-tui"], &["--no-tui"]);
        check(&["-tui"], &["--tui"]);
        check(
            &["-web", "-web-port", "9000"],
            &["--web", "--web-port", "9000"],
        );
        check(&["-web-port=9000"], &["--web-port=9000"]);
        check(
            &["-host", "0.0.0.0", "-port", "8087"],
            &["--host", "0.0.0.0", "--port", "8087"],
        );
        check(&["-help"], &["--help"]);
    }

    #[test]
    fn leaves_modern_short_unknown_and_positional_args_alone() {
        check(
            &["--config", "x.yaml", "--no-tui"],
            &["--config", "x.yaml", "--no-tui"],
        );
        check(&["-p", "main"], &["-p", "main"]);
        check(&["-p=main"], &["-p=main"]);
        check(&["-h", "-V"], &["-h", "-V"]);
        check(&["-bogus", "--other"], &["-bogus", "--other"]);
        check(
            &["check-config", "-config", "a.yaml"],
            &["check-config", "--config", "a.yaml"],
        );
        check(&["-", ""], &["-", ""]);
    }

    #[test]
    fn never_rewrites_a_flag_value() {
        check(&["-config", "-web"], &["--config", "-web"]);
        check(&["-p", "-web"], &["-p", "-web"]);
        check(&["--host", "-port"], &["--host", "-port"]);
        check(&["--", "-config"], &["--", "-config"]);
    }

    #[test]
    fn maps_go_boolean_values() {
        check(&["-web=true"], &["--web"]);
        check(&["-web=false"], &[]);
        check(&["-no-tui=1"], &["--no-tui"]);
        check(&["-no-tui=false"], &[]);
        check(&["-tui=false"], &["--no-tui"]);
        check(&["--tui=F"], &["--no-tui"]);
        check(&["-version=false"], &[]);
        check(&["-web=maybe"], &["--web=maybe"]);
    }

    fn parse(input: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec![OsString::from("cc-forwarder")];
        args.extend(input.iter().map(OsString::from));
        Cli::try_parse_from(normalize_go_style_args(args))
    }

    #[test]
    fn parses_go_style_command_lines() {
        let cli = parse(&[
            "-config=x.yaml",
            "-no-tui",
            "-web",
            "-web-port",
            "9000",
            "-p",
            "b",
        ])
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("x.yaml"));
        assert!(cli.no_tui && cli.web);
        assert_eq!(cli.web_port, Some(9000));
        assert_eq!(cli.primary_endpoint.as_deref(), Some("b"));
        assert!(cli.command.is_none());

        let cli = parse(&["-p=b"]).unwrap();
        assert_eq!(cli.primary_endpoint.as_deref(), Some("b"));
        assert_eq!(cli.config, PathBuf::from(DEFAULT_CONFIG));
    }

    #[test]
    fn builds_overrides_from_flags() {
        let cli = parse(&["--tui", "--host", "0.0.0.0", "--port", "0"]).unwrap();
        let overrides = cli.overrides();
        assert_eq!(overrides.tui_enabled, Some(true));
        assert_eq!(overrides.web_enabled, None);
        assert_eq!(overrides.web_port, None);
        assert_eq!(overrides.server_host.as_deref(), Some("0.0.0.0"));
        assert_eq!(overrides.server_port, Some(0));

        let overrides = parse(&["--no-tui", "--web"]).unwrap().overrides();
        assert_eq!(overrides.tui_enabled, Some(false));
        assert_eq!(overrides.web_enabled, Some(true));
    }

    #[test]
    fn rejects_conflicting_and_malformed_flags() {
        assert!(parse(&["--tui", "--no-tui"]).is_err());
        assert!(parse(&["--port", "99999"]).is_err());
        assert!(parse(&["-web=maybe"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn check_config_takes_config_before_or_after_the_subcommand() {
        let cli = parse(&["check-config", "-config", "a.yaml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::CheckConfig { .. })));
        assert_eq!(cli.config, PathBuf::from("a.yaml"));
        let cli = parse(&["--config", "b.yaml", "check-config"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("b.yaml"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
