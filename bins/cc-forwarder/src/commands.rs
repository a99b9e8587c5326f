//! Operator commands beyond serving: `export` (usage rows to stdout), `env` (how to point Claude
//! Code at this forwarder), and the hidden `completions` / `manpage` used by `cargo xtask dist`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_config::{Config, StorageTarget};
use ccf_store::{ExportCursor, ExportFormat, LegacyZone, RequestFilter, UsageStore};
use clap::{Args, CommandFactory, ValueEnum};

use crate::cli::Cli;
use crate::{load_config, report_config_error, EXIT_CONFIG, EXIT_FATAL};

/// `cc-forwarder export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormatArg::Csv)]
    pub format: ExportFormatArg,

    /// Only requests that started at or after this: RFC 3339 (`2025-01-31T08:00:00Z`), a date
    /// (`2025-01-31`, midnight in the configured time zone) or a duration back from now (`7d`,
    /// `12h`, `30m`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only requests that started at or before this; same forms as `--since`, and a bare date
    /// includes that whole day.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

/// The export formats on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// RFC 4180 CSV with a header row (the Go version's columns first).
    Csv,
    /// One JSON array of row objects.
    Json,
}

impl From<ExportFormatArg> for ExportFormat {
    fn from(format: ExportFormatArg) -> Self {
        match format {
            ExportFormatArg::Csv => ExportFormat::Csv,
            ExportFormatArg::Json => ExportFormat::Json,
        }
    }
}

/// `cc-forwarder env`.
#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    /// Output syntax: POSIX shells, fish, PowerShell, or a `settings.json` snippet for Claude
    /// Code (`~/.claude/settings.json`).
    #[arg(long, value_enum, default_value_t = ShellArg::Sh)]
    pub shell: ShellArg,
}

/// The syntaxes `env` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    /// `export NAME=value` (sh, bash, zsh).
    Sh,
    /// `set -gx NAME value`.
    Fish,
    /// `$env:NAME = 'value'`.
    Powershell,
    /// `{"env": {...}}` for Claude Code's `settings.json`.
    Json,
}

/// `cc-forwarder export`: streams the matching rows to stdout.
pub fn export(cli: &Cli, args: &ExportArgs) -> ExitCode {
    let loaded = match load_config(cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = loaded.config;
    let zone = legacy_zone(&config);
    let now = SystemTime::now();
    let start = match parse_bound("--since", args.since.as_deref(), zone, now, false) {
        Ok(start) => start,
        Err(message) => return usage_error(&message),
    };
    let end = match parse_bound("--until", args.until.as_deref(), zone, now, true) {
        Ok(end) => end,
        Err(message) => return usage_error(&message),
    };
    if let StorageTarget::Sqlite { path } = config.usage_tracking.storage() {
        // Opening a missing SQLite file would create an empty database: say so instead.
        if !path.exists() {
            eprintln!(
                "cc-forwarder: error: no usage database at {} (usage_tracking.database)",
                path.display()
            );
            return ExitCode::from(EXIT_FATAL);
        }
    }
    let filter = RequestFilter {
        start,
        end,
        ..RequestFilter::default()
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
    let result = runtime.block_on(stream_export(&config, filter, args.format.into()));
    match result {
        Ok(rows) => {
            eprintln!("cc-forwarder: exported {rows} row(s)");
            ExitCode::SUCCESS
        }
        // `cc-forwarder export | head`: the reader has what it wanted.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cc-forwarder: error: {error:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// Opens the store without migrating it, then writes every chunk to stdout as it is read.
///
/// Export is a reader: it may run while the Go forwarder still writes the database, so it
/// refuses an unmigrated schema instead of migrating it in place (which rewrites timestamps and
/// drops the Go triggers); reading the Go schema as it is would need a second read path.
async fn stream_export(
    config: &Config,
    filter: RequestFilter,
    format: ExportFormat,
) -> anyhow::Result<u64> {
    let store: Arc<dyn UsageStore> = ccf_app::usage::open_store(config).await?;
    let pending = store.pending_migrations().await?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the usage database is not migrated (pending versions {pending:?}): \
             run `cc-forwarder migrate` first"
        );
    }
    let mut cursor = ExportCursor::new(store, filter, format);
    let stdout = std::io::stdout();
    while let Some(chunk) = cursor.next_chunk().await? {
        let mut out = stdout.lock();
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(cursor.rows_written())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("cc-forwarder: error: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// The zone `--since`/`--until` dates are read in: the database's `timezone`, else the global
/// `timezone`, else (as `timezone` defaults to) the machine's local zone at its current offset.
fn legacy_zone(config: &Config) -> LegacyZone {
    let database_timezone = config
        .usage_tracking
        .database
        .as_ref()
        .and_then(|database| database.timezone.as_deref());
    let configured = database_timezone
        .or(config.timezone.as_deref())
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.eq_ignore_ascii_case("local"));
    match configured {
        Some(name) => LegacyZone::from_config(Some(name), None),
        None => {
            use chrono::Offset;
            LegacyZone::Fixed(chrono::Local::now().offset().fix())
        }
    }
}

/// Reads `--since` / `--until`: a duration back from `now`, or a timestamp or date. With
/// `end_of_day`, a bare date means the last instant of that day.
pub(crate) fn parse_bound(
    flag: &str,
    text: Option<&str>,
    zone: LegacyZone,
    now: SystemTime,
    end_of_day: bool,
) -> Result<Option<SystemTime>, String> {
    let Some(text) = text.map(str::trim).filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    let starts_with_digit_and_unit = text.chars().next().is_some_and(|c| c.is_ascii_digit())
        && text.chars().last().is_some_and(|c| c.is_ascii_alphabetic());
    if starts_with_digit_and_unit {
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Some(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
    let invalid = || {
        format!(
            "{flag} `{text}` is not a time: use RFC 3339 (2025-01-31T08:00:00Z), a date \
             (2025-01-31) or a duration back from now (7d, 12h, 30m)"
        )
    };
    let time = ccf_store::time::parse_timestamp(text, zone).ok_or_else(invalid)?;
    let bare_date = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    if end_of_day && bare_date {
        return Ok(Some(
            time + Duration::from_secs(86_400) - Duration::from_micros(1),
        ));
    }
    Ok(Some(time))
}

/// `cc-forwarder env`: prints the client settings.
pub fn env(cli: &Cli, args: &EnvArgs) -> ExitCode {
    let loaded = match load_config(cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = &loaded.config;
    if config.server.port == 0 {
        eprintln!(
            "cc-forwarder: warning: server.port is 0 (a free port is picked at startup): the \
             URL below is not usable; the forwarder prints the real one when it starts"
        );
    }
    let token = config
        .auth
        .token
        .as_ref()
        .filter(|_| config.auth.enabled)
        .map(|token| token.expose().to_string());
    // Named tokens belong to people: only their names are printed, never the tokens.
    let key_names: Vec<&str> = if config.auth.enabled {
        config
            .auth
            .tokens
            .iter()
            .map(|named| named.name.as_str())
            .collect()
    } else {
        Vec::new()
    };
    if token.is_none() && !key_names.is_empty() && args.shell == ShellArg::Json {
        // A JSON document has no comments: the note goes to stderr.
        eprint!("{}", named_keys_note(&key_names));
    }
    print!(
        "{}",
        render_env(&base_url(config), token.as_deref(), &key_names, args.shell)
    );
    ExitCode::SUCCESS
}

/// The URL clients use: a wildcard listen address becomes loopback, IPv6 gets brackets.
pub(crate) fn base_url(config: &Config) -> String {
    let host = match config.server.host.trim() {
        "0.0.0.0" | "::" | "[::]" | "" => "127.0.0.1".to_string(),
        host if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
        host => host.to_string(),
    };
    format!("http://{host}:{}", config.server.port)
}

/// The note for a forwarder whose inbound auth accepts only named tokens (`auth.tokens`): the
/// names exist, the client has to bring its own token.
fn named_keys_note(key_names: &[&str]) -> String {
    format!(
        "# inbound auth is on with named tokens ({}): set ANTHROPIC_AUTH_TOKEN to your own \
         token from auth.tokens\n",
        key_names.join(", ")
    )
}

/// The lines (or JSON document) for `shell`; `key_names` are the names of the inbound
/// `auth.tokens` (empty when auth is off).
pub(crate) fn render_env(
    base_url: &str,
    token: Option<&str>,
    key_names: &[&str],
    shell: ShellArg,
) -> String {
    let mut vars = vec![("ANTHROPIC_BASE_URL", base_url)];
    if let Some(token) = token {
        vars.push(("ANTHROPIC_AUTH_TOKEN", token));
    }
    let auth_off_note = "# inbound auth is off: the forwarder replaces the client's credentials \
                         with each endpoint's own, so any ANTHROPIC_AUTH_TOKEN works\n";
    let mut out = String::new();
    match shell {
        ShellArg::Json => {
            let env: serde_json::Map<String, serde_json::Value> = vars
                .iter()
                .map(|(name, value)| (name.to_string(), serde_json::Value::from(*value)))
                .collect();
            let document = serde_json::json!({ "env": env });
            let text = serde_json::to_string_pretty(&document).unwrap_or_default();
            out.push_str(&text);
            out.push('\n');
            return out;
        }
        ShellArg::Sh => {
            for (name, value) in &vars {
                out.push_str(&format!("export {name}={}\n", sh_quote(value)));
            }
        }
        ShellArg::Fish => {
            for (name, value) in &vars {
                out.push_str(&format!("set -gx {name} {}\n", fish_quote(value)));
            }
        }
        ShellArg::Powershell => {
            for (name, value) in &vars {
                out.push_str(&format!("$env:{name} = '{}'\n", value.replace('\'', "''")));
            }
        }
    }
    if token.is_none() {
        if key_names.is_empty() {
            out.push_str(auth_off_note);
        } else {
            out.push_str(&named_keys_note(key_names));
        }
    }
    out
}

/// Single-quotes `value` for sh and fish unless it needs no quoting.
fn sh_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=,".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// Quotes `value` for fish, where `\\` and `\'` are the escapes inside single quotes.
fn fish_quote(value: &str) -> String {
    if sh_quote(value) == value {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `cc-forwarder completions <shell>`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    let mut out = std::io::stdout();
    clap_complete::generate(shell, &mut command, "cc-forwarder", &mut out);
    ExitCode::SUCCESS
}

/// `cc-forwarder manpage`.
pub fn manpage() -> ExitCode {
    let man = clap_mangen::Man::new(Cli::command());
    let mut buffer = Vec::new();
    let written = man
        .render(&mut buffer)
        .and_then(|()| std::io::stdout().write_all(&buffer));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cc-forwarder: error: cannot write the man page: {error}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_accept_durations_dates_and_timestamps() {
        let zone = LegacyZone::Utc;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ago = parse_bound("--since", Some("7d"), zone, now, false).unwrap();
        assert_eq!(ago, Some(now - Duration::from_secs(7 * 86_400)));
        let date = parse_bound("--since", Some("2023-11-14"), zone, now, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            ccf_store::time::format_timestamp(date),
            ccf_store::time::format_timestamp(
                ccf_store::time::parse_timestamp("2023-11-14T00:00:00Z", zone).unwrap()
            )
        );
        let end = parse_bound("--until", Some("2023-11-14"), zone, now, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            end,
            date + Duration::from_secs(86_400) - Duration::from_micros(1)
        );
        let exact = parse_bound("--until", Some("2023-11-14T10:00:00Z"), zone, now, true)
            .unwrap()
            .unwrap();
        assert_eq!(exact, date + Duration::from_secs(10 * 3600));
        assert_eq!(parse_bound("--since", None, zone, now, false), Ok(None));
        let error = parse_bound("--since", Some("last week"), zone, now, false).unwrap_err();
        assert!(error.contains("--since `last week`"), "{error}");
    }

    #[test]
    fn env_renders_every_shell() {
        let url = "http://127.0.0.1:8087";
        assert_eq!(
            render_env(url, Some("s3cret"), &[], ShellArg::Sh),
            "export ANTHROPIC_BASE_URL=http://127.0.0.1:8087\nexport ANTHROPIC_AUTH_TOKEN=s3cret\n"
        );
        assert_eq!(
            render_env(url, Some("it's"), &[], ShellArg::Fish),
            "set -gx ANTHROPIC_BASE_URL http://127.0.0.1:8087\nset -gx ANTHROPIC_AUTH_TOKEN 'it\\'s'\n"
        );
        assert_eq!(
            render_env(url, Some("it's"), &[], ShellArg::Powershell),
            "$env:ANTHROPIC_BASE_URL = 'http://127.0.0.1:8087'\n$env:ANTHROPIC_AUTH_TOKEN = 'it''s'\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_env(url, Some("s3cret"), &[], ShellArg::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"env": {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": "s3cret"}})
        );
        let open = render_env(url, None, &[], ShellArg::Sh);
        assert!(open.starts_with("export ANTHROPIC_BASE_URL=http://127.0.0.1:8087\n# "));
        assert!(!open.contains("export ANTHROPIC_AUTH_TOKEN"));
    }
}
