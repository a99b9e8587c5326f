//! Tracing setup from `logging.*`: console output on stderr plus an optional size-rotated file.
//!
//! - Level: `logging.level`, unless `CCF_LOG` (or else `RUST_LOG`) holds an `EnvFilter` directive.
//! - Format: `text` (human-readable) or `json` (one JSON object per line), for both outputs.
//! - File: when `file_enabled`, `file_path` is rotated by `file-rotate` once it passes
//!   `max_file_size`; `max_files` rotated files are kept (`app.log.1` is the newest), gzipped when
//!   `compress_rotated`. Writes go through a `tracing-appender` worker thread (which also rotates
//!   and gzips) so the request path never waits on the disk: up to [`FILE_BUFFERED_LINES`] lines
//!   wait in memory, and past that new lines are dropped and counted rather than stalling the
//!   caller. The count is reported as a warning every [`DROPPED_LINES_REPORT_INTERVAL`] while it
//!   grows and once more on stderr at exit. The worker is flushed when the returned [`LogGuard`]
//!   is dropped, so the binary keeps the guard alive until it exits.
//!
//! [`build_subscriber`] does all of it without touching global state, for tests; [`init`] installs
//! the result as the process's default subscriber.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ccf_config::{LogFormat, LogLevel, LoggingConfig};
use ccf_tui::{LogBuffer, LogLevel as TuiLevel};
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;
use tracing::Subscriber;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The level filter, replaceable at run time (configuration reload).
type ReloadableFilter = reload::Layer<EnvFilter, Registry>;

/// The subscriber's base: the registry under the level filter.
type Base = Layered<ReloadableFilter, Registry>;

/// An output layer over [`Base`].
type OutputLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Crates whose `debug` output is about their own internals; capped at `info` unless the
/// environment filter asks otherwise.
const NOISY_DEPENDENCIES: &[&str] = &["h2", "hyper", "hyper_util", "rustls", "tokio_util", "mio"];

/// Lines the file writer thread may hold while the disk is slow (about 10 MB at typical line
/// lengths); past it new lines are dropped and counted instead of stalling the logging thread.
pub const FILE_BUFFERED_LINES: usize = 32_768;

/// How often a growing count of dropped file log lines is reported.
pub const DROPPED_LINES_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the file writer's worker alive; dropping it flushes what is queued and reports on stderr
/// how many lines the file lost because it could not keep up.
#[must_use = "dropping the guard stops the log file writer"]
#[derive(Debug, Default)]
pub struct LogGuard {
    file_worker: Option<WorkerGuard>,
    /// Lines dropped because the file writer's buffer was full.
    file_dropped: Option<ErrorCounter>,
    /// Stops the periodic dropped-lines report when dropped.
    _stop_drop_reports: Option<mpsc::Sender<()>>,
    /// Replaces the level filter; `None` when `CCF_LOG`/`RUST_LOG` chose it (they win).
    level: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogGuard {
    /// Lines the log file has lost so far because the disk could not keep up (0 without a file).
    pub fn dropped_file_lines(&self) -> usize {
        self.file_dropped
            .as_ref()
            .map_or(0, ErrorCounter::dropped_lines)
    }

    /// Warns through the installed subscriber whenever the dropped count has grown, checking every
    /// `interval`, until the guard is dropped.
    fn report_dropped_lines(&mut self, interval: Duration) {
        let Some(counter) = self.file_dropped.clone() else {
            return;
        };
        let (stop, stopped) = mpsc::channel::<()>();
        // The subscriber current here (the global one once `init` installed it).
        let dispatch = tracing::dispatcher::get_default(|dispatch| dispatch.clone());
        let reporter = std::thread::Builder::new()
            .name("ccf-log-drops".into())
            .spawn(move || {
                let mut reported = 0;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let dropped = counter.dropped_lines();
                    if dropped > reported {
                        tracing::dispatcher::with_default(&dispatch, || {
                            tracing::warn!(
                                dropped_total = dropped,
                                "{} log lines dropped because the log file could not keep up",
                                dropped - reported
                            );
                        });
                        reported = dropped;
                    }
                }
            });
        match reporter {
            Ok(_) => self._stop_drop_reports = Some(stop),
            Err(error) => tracing::warn!("cannot start the dropped log lines report: {error}"),
        }
    }

    /// Applies a reloaded `logging.level`, unless `CCF_LOG` or `RUST_LOG` set the filter.
    pub fn level_setter(&self) -> impl Fn(LogLevel) + Send + Sync + 'static {
        let handle = self.level.clone();
        move |level| {
            if let Some(handle) = &handle {
                if let Err(error) = handle.reload(level_filter(level)) {
                    tracing::warn!("cannot change the log level: {error}");
                }
            }
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Flush first so the count is final.
        drop(self.file_worker.take());
        let dropped = self.dropped_file_lines();
        if dropped > 0 {
            // The subscriber may no longer reach anyone (the file writer is gone), so stderr.
            eprintln!(
                "cc-forwarder: warning: {dropped} log lines dropped because the log file could \
                 not keep up"
            );
        }
    }
}

/// Builds the subscriber from `config`, filtering with `CCF_LOG`/`RUST_LOG` when set, and installs
/// it as the global default. Console output goes to stderr, with colours when it is a terminal, or
/// into the terminal UI's log panel when `tui` is given (see [`TuiConsole`]).
pub fn init(config: &LoggingConfig, tui: Option<LogBuffer>) -> Result<LogGuard> {
    let ccf_log = std::env::var("CCF_LOG").ok();
    let rust_log = std::env::var("RUST_LOG").ok();
    let from_env = [&ccf_log, &rust_log].iter().any(|value| {
        value
            .as_deref()
            .is_some_and(|value| !value.trim().is_empty())
    });
    let filter = match env_filter(config.level, ccf_log.as_deref(), rust_log.as_deref()) {
        Ok(filter) => filter,
        Err(message) => {
            // Logging is not up yet, so this one goes straight to stderr.
            eprintln!("cc-forwarder: warning: {message}");
            level_filter(config.level)
        }
    };
    let mut guard = match tui {
        // The terminal UI's log panel instead of stderr (no colour codes in the panel).
        Some(logs) => {
            let (subscriber, guard) = build_subscriber(config, filter, TuiConsole { logs }, false)?;
            tracing::subscriber::set_global_default(subscriber)
                .context("a global tracing subscriber is already installed")?;
            guard
        }
        None => {
            let ansi = std::io::stderr().is_terminal();
            let (subscriber, guard) = build_subscriber(config, filter, std::io::stderr, ansi)?;
            tracing::subscriber::set_global_default(subscriber)
                .context("a global tracing subscriber is already installed")?;
            guard
        }
    };
    if from_env {
        guard.level = None;
    }
    guard.report_dropped_lines(DROPPED_LINES_REPORT_INTERVAL);
    Ok(guard)
}

/// Console output while the terminal UI may run: each formatted line goes into the UI's
/// [`LogBuffer`] with its level while the UI shows it, and to stderr before it starts and after it
/// has given the terminal back.
#[derive(Debug, Clone)]
pub struct TuiConsole {
    /// The UI's log panel.
    pub logs: LogBuffer,
}

/// One event's formatted text, delivered when the formatter drops the writer.
#[derive(Debug)]
pub struct TuiLine {
    logs: LogBuffer,
    level: TuiLevel,
    text: Vec<u8>,
}

impl Write for TuiLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TuiLine {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        if self.logs.is_attached() {
            self.logs
                .push(self.level, &String::from_utf8_lossy(&self.text));
        } else {
            let _ = std::io::stderr().write_all(&self.text);
        }
    }
}

impl<'writer> MakeWriter<'writer> for TuiConsole {
    type Writer = TuiLine;

    fn make_writer(&'writer self) -> TuiLine {
        TuiLine {
            logs: self.logs.clone(),
            level: TuiLevel::Info,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'writer self, meta: &tracing::Metadata<'_>) -> TuiLine {
        let level = match *meta.level() {
            tracing::Level::TRACE => TuiLevel::Trace,
            tracing::Level::DEBUG => TuiLevel::Debug,
            tracing::Level::INFO => TuiLevel::Info,
            tracing::Level::WARN => TuiLevel::Warn,
            tracing::Level::ERROR => TuiLevel::Error,
        };
        TuiLine {
            logs: self.logs.clone(),
            level,
            text: Vec::new(),
        }
    }
}

/// The level filter: the first non-empty of `ccf_log` and `rust_log` as `EnvFilter` directives,
/// else `level` (with [`NOISY_DEPENDENCIES`] capped at `info`). An invalid directive string is an
/// error naming the variable, so the caller can fall back to `level` and say why.
pub fn env_filter(
    level: LogLevel,
    ccf_log: Option<&str>,
    rust_log: Option<&str>,
) -> Result<EnvFilter, String> {
    let from_env = [("CCF_LOG", ccf_log), ("RUST_LOG", rust_log)]
        .into_iter()
        .find_map(|(name, value)| Some((name, value?)).filter(|(_, v)| !v.trim().is_empty()));
    match from_env {
        Some((name, directives)) => EnvFilter::try_new(directives).map_err(|error| {
            format!("ignoring {name}={directives:?} ({error}); using logging.level")
        }),
        None => Ok(level_filter(level)),
    }
}

/// The filter for `logging.level` alone.
fn level_filter(level: LogLevel) -> EnvFilter {
    EnvFilter::new(level_directives(level))
}

/// `logging.level` as `EnvFilter` directives.
fn level_directives(level: LogLevel) -> String {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let mut directives = level.to_string();
    if level == "debug" {
        for name in NOISY_DEPENDENCIES {
            directives.push_str(&format!(",{name}=info"));
        }
    }
    directives
}

/// Builds the subscriber without installing it: `console` receives every event in
/// `config.format`, and so does the rotating file when `config.file_enabled`.
pub fn build_subscriber<W>(
    config: &LoggingConfig,
    filter: EnvFilter,
    console: W,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogGuard)>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let mut layers: Vec<OutputLayer> = vec![output_layer(config.format, console, ansi)];
    let mut guard = LogGuard::default();
    if config.file_enabled {
        let file = rotating_file(config)?;
        let (writer, worker) = file_writer(file, FILE_BUFFERED_LINES);
        guard.file_dropped = Some(writer.error_counter());
        layers.push(output_layer(config.format, writer, false));
        guard.file_worker = Some(worker);
    }
    let (filter, handle) = reload::Layer::new(filter);
    guard.level = Some(handle);
    let subscriber = tracing_subscriber::registry().with(filter).with(layers);
    Ok((subscriber, guard))
}

/// Puts `file` behind the log writer thread, which owns it (rotation and gzip run there). At most
/// `buffered_lines` lines wait for the thread; past that a line is dropped and counted in the
/// writer's `error_counter()`, so a stalled disk never stalls the thread that logs.
pub fn file_writer<F>(file: F, buffered_lines: usize) -> (NonBlocking, WorkerGuard)
where
    F: Write + Send + 'static,
{
    NonBlockingBuilder::default()
        .buffered_lines_limit(buffered_lines)
        // Drop (and count) rather than wait when the disk falls behind: logging happens on the
        // request path.
        .lossy(true)
        .thread_name("ccf-log-writer")
        .finish(file)
}

/// One fmt layer in the configured format.
fn output_layer<W>(format: LogFormat, writer: W, ansi: bool) -> OutputLayer
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

/// Opens `file_path` for size-based rotation, creating its folder. The file is opened once here so
/// that a path that cannot be written is an error now rather than silently lost lines later
/// (`FileRotate` ignores open failures).
pub fn rotating_file(config: &LoggingConfig) -> Result<FileRotate<AppendCount>> {
    let path = PathBuf::from(&config.file_path);
    if path.file_name().is_none() {
        anyhow::bail!(
            "logging.file_path: `{}` does not name a file",
            config.file_path
        );
    }
    let folder = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(folder).with_context(|| {
        format!(
            "logging.file_path: cannot create the log folder {}",
            folder.display()
        )
    })?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("logging.file_path: cannot open {}", path.display()))?;
    // file-rotate asserts a non-zero limit; anything beyond usize is "never".
    let limit = usize::try_from(config.max_file_size.bytes())
        .unwrap_or(usize::MAX)
        .max(1);
    let max_files = usize::try_from(config.max_files).unwrap_or(usize::MAX);
    let compression = if config.compress_rotated {
        // Keep no rotated file uncompressed, like the Go version's lumberjack.
        Compression::OnRotate(0)
    } else {
        Compression::None
    };
    Ok(FileRotate::new(
        path,
        AppendCount::new(max_files),
        ContentLimit::BytesSurpassed(limit),
        compression,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};

    use ccf_config::ByteSize;

    use super::*;

    /// A console writer that keeps everything in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logging(format: LogFormat) -> LoggingConfig {
        LoggingConfig {
            format,
            ..LoggingConfig::default()
        }
    }

    #[test]
    fn json_format_writes_one_parseable_object_per_line() {
        let console = Captured::default();
        let (subscriber, _guard) = build_subscriber(
            &logging(LogFormat::Json),
            level_filter(LogLevel::Info),
            console.clone(),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(request_id = "req-1", status = 200, "request finished");
            tracing::warn!(endpoint = "main", "endpoint \"slow\"\nsecond line");
            tracing::debug!("filtered out at info");
        });
        let text = console.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "request finished");
        assert_eq!(first["request_id"], "req-1");
        assert_eq!(first["status"], 200);
        assert!(first["timestamp"].is_string());
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "endpoint \"slow\"\nsecond line");
    }

    #[test]
    fn text_format_writes_readable_lines_at_the_configured_level() {
        let console = Captured::default();
        let (subscriber, _guard) = build_subscriber(
            &logging(LogFormat::Text),
            level_filter(LogLevel::Warn),
            console.clone(),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("hidden");
            tracing::warn!(endpoint = "main", "shown");
        });
        let text = console.text();
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("shown endpoint=\"main\""), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "no colour codes without ansi: {text}"
        );
    }

    #[test]
    fn file_output_rotates_by_size_and_compresses_rotated_files() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("nested/logs/app.log");
        let config = LoggingConfig {
            format: LogFormat::Json,
            file_enabled: true,
            file_path: path.to_string_lossy().into_owned(),
            max_file_size: ByteSize(2048),
            max_files: 3,
            compress_rotated: true,
            ..LoggingConfig::default()
        };
        let console = Captured::default();
        let (subscriber, guard) = build_subscriber(
            &config,
            level_filter(LogLevel::Info),
            console.clone(),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            for line in 0..400 {
                tracing::info!(line, padding = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "filler");
            }
            tracing::info!("last line");
        });
        // Dropping the guard flushes the worker thread.
        drop(guard);

        let mut names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["app.log", "app.log.1.gz", "app.log.2.gz", "app.log.3.gz"],
            "max_files rotated files kept, all compressed"
        );
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 2048 + 512, "rotated near the limit");
        let last = current.lines().last().unwrap();
        let last: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["message"], "last line");
        // The rotated files are real gzip streams.
        let gz = fs::read(path.with_file_name("app.log.1.gz")).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        // The console got every line too.
        assert_eq!(console.text().lines().count(), 401);
    }

    #[test]
    fn file_output_without_compression_keeps_plain_rotated_files() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("app.log");
        let config = LoggingConfig {
            file_enabled: true,
            file_path: path.to_string_lossy().into_owned(),
            max_file_size: ByteSize(1024),
            max_files: 2,
            ..LoggingConfig::default()
        };
        let file = rotating_file(&config).unwrap();
        let (writer, guard) = tracing_appender::non_blocking(file);
        let mut writer = writer.make_writer();
        for line in 0..100 {
            writeln!(writer, "line {line} of the plain rotation test").unwrap();
        }
        drop(writer);
        drop(guard);
        for name in ["app.log", "app.log.1", "app.log.2"] {
            assert!(folder.path().join(name).is_file(), "{name} missing");
        }
        assert!(!folder.path().join("app.log.3").exists());
    }

    /// A log file whose writes wait until the test opens the gate: a stalled disk.
    struct StalledFile {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for StalledFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, opened) = &*self.gate;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = opened.wait(is_open).unwrap();
            }
            drop(is_open);
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_log_file_drops_and_counts_lines_instead_of_blocking_the_caller() {
        const LINES: usize = 200;
        const BUFFERED: usize = 8;
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let file = StalledFile {
            gate: gate.clone(),
            written: written.clone(),
        };
        let (writer, worker) = file_writer(file, BUFFERED);
        let dropped = writer.error_counter();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // The "request path": it logs while the disk is stalled and must get through.
        let request_path = std::thread::spawn(move || {
            tracing::subscriber::with_default(subscriber, || {
                for line in 0..LINES {
                    tracing::info!(line, "request finished");
                }
            });
            let _ = done_tx.send(());
        });
        let finished = done_rx.recv_timeout(std::time::Duration::from_secs(30));
        // Open the gate in any case so that a failing run does not leave threads hanging.
        {
            let (open, opened) = &*gate;
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
        assert!(
            finished.is_ok(),
            "logging waited for the stalled log file (the gate was still closed)"
        );
        request_path.join().unwrap();
        // Dropping the guard lets the writer thread drain what it had queued.
        drop(worker);
        let written_lines = String::from_utf8(written.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count();
        let dropped_lines = dropped.dropped_lines();
        assert!(dropped_lines > 0, "a full buffer drops lines");
        assert!(
            written_lines <= BUFFERED + 1,
            "{written_lines} written past a buffer of {BUFFERED}"
        );
        assert_eq!(
            written_lines + dropped_lines,
            LINES,
            "every line written or counted"
        );
    }

    #[test]
    fn dropped_file_lines_are_reported_as_a_warning_while_the_guard_lives() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let file = StalledFile {
            gate: gate.clone(),
            written: Arc::default(),
        };
        let (writer, worker) = file_writer(file, 2);
        let mut guard = LogGuard::default();
        guard.file_dropped = Some(writer.error_counter());
        guard.file_worker = Some(worker);
        let file_log = tracing_subscriber::fmt().with_writer(writer).finish();
        tracing::subscriber::with_default(file_log, || {
            for line in 0..20 {
                tracing::info!(line, "request finished");
            }
        });
        assert!(guard.dropped_file_lines() > 0);
        let console = Captured::default();
        let console_log = tracing_subscriber::fmt()
            .with_writer(console.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(console_log, || {
            guard.report_dropped_lines(Duration::from_millis(10));
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let reported = loop {
            let text = console.text();
            if text.contains("log lines dropped because the log file could not keep up") {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "no report: {text}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            reported.contains(&format!("dropped_total={}", guard.dropped_file_lines())),
            "{reported}"
        );
        let (open, opened) = &*gate;
        *open.lock().unwrap() = true;
        opened.notify_all();
        drop(guard);
    }

    #[test]
    fn unwritable_log_path_is_an_error_not_a_panic() {
        let folder = tempfile::tempdir().unwrap();
        let blocker = folder.path().join("file");
        fs::write(&blocker, "not a folder").unwrap();
        let config = LoggingConfig {
            file_enabled: true,
            file_path: blocker.join("app.log").to_string_lossy().into_owned(),
            ..LoggingConfig::default()
        };
        let Err(error) = rotating_file(&config) else {
            panic!("a log path under a file must not open");
        };
        assert!(
            format!("{error:#}").contains("logging.file_path"),
            "{error:#}"
        );

        let config = LoggingConfig {
            file_path: "/".into(),
            ..config
        };
        assert!(rotating_file(&config).is_err());
    }

    #[test]
    fn environment_filter_overrides_the_configured_level() {
        let check = |ccf: Option<&str>, rust: Option<&str>, expected: &str| {
            let filter = env_filter(LogLevel::Info, ccf, rust).unwrap();
            assert_eq!(
                filter.to_string(),
                expected,
                "CCF_LOG={ccf:?} RUST_LOG={rust:?}"
            );
        };
        check(None, None, "info");
        check(Some("debug"), Some("error"), "debug");
        check(Some("  "), Some("ccf_proxy=trace"), "ccf_proxy=trace");
        check(None, Some("warn"), "warn");
        let error = env_filter(LogLevel::Info, Some("ccf_proxy=[loud"), None).unwrap_err();
        assert!(error.contains("CCF_LOG"), "{error}");
    }

    #[test]
    fn tui_console_sends_lines_with_their_level_to_the_log_panel_while_attached() {
        let logs = LogBuffer::new(10);
        let (subscriber, _guard) = build_subscriber(
            &logging(LogFormat::Text),
            level_filter(LogLevel::Debug),
            TuiConsole { logs: logs.clone() },
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(endpoint = "main", "request finished");
            tracing::warn!("slow endpoint");
            logs.set_attached(false);
            // Goes to stderr now, not to the panel.
            tracing::error!("after the UI");
        });
        let lines = logs.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].level, TuiLevel::Info);
        assert!(lines[0].text.contains("request finished endpoint=\"main\""));
        assert!(
            !lines[0].text.contains('\u{1b}'),
            "no colour codes in the panel"
        );
        assert_eq!(lines[1].level, TuiLevel::Warn);
        assert!(lines[1].text.contains("slow endpoint"));
    }

    #[test]
    fn debug_level_caps_noisy_dependencies() {
        let directives = level_directives(LogLevel::Debug);
        assert!(directives.starts_with("debug,"));
        assert!(directives.contains("hyper=info"));
        assert_eq!(level_directives(LogLevel::Error), "error");
    }
}
