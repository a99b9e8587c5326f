//! [`LogBuffer`]: the bounded ring of formatted log lines the Logs tab shows.
//!
//! The binary's logging setup owns the writer that fills it (this crate knows nothing about
//! `tracing-subscriber`); the terminal UI only reads. While the UI runs, log lines go here instead
//! of over the screen. Writers never block on the UI: a push takes a short mutex and drops the
//! oldest line when the ring is full.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Lines kept by [`LogBuffer::default`] (the original kept 500).
pub const DEFAULT_LOG_CAPACITY: usize = 1000;

/// Severity of a log line, most verbose first (so `level >= filter` keeps the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `TRACE`.
    Trace,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `WARN`.
    Warn,
    /// `ERROR`.
    Error,
}

impl LogLevel {
    /// Every level, most verbose first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    /// The upper-case name (`INFO`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One formatted log line and its level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity, for filtering.
    pub level: LogLevel,
    /// The formatted line, without its trailing newline.
    pub text: String,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    lines: Mutex<VecDeque<LogLine>>,
    /// Lines ever pushed; the UI compares it to know whether to redraw.
    pushed: AtomicU64,
    /// Whether a terminal UI shows the buffer now (see [`LogBuffer::set_attached`]).
    attached: AtomicBool,
}

/// A bounded, shared ring of log lines. Clones share the same ring.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_CAPACITY)
    }
}

impl LogBuffer {
    /// An empty ring keeping the last `capacity` lines (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        LogBuffer {
            shared: Arc::new(Shared {
                capacity,
                lines: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
                pushed: AtomicU64::new(0),
                attached: AtomicBool::new(true),
            }),
        }
    }

    /// Adds one line per line of `text` (empty lines are skipped), dropping the oldest lines past
    /// the capacity.
    pub fn push(&self, level: LogLevel, text: &str) {
        let mut lines = self.lock();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            if lines.len() == self.shared.capacity {
                lines.pop_front();
            }
            lines.push_back(LogLine {
                level,
                text: line.to_string(),
            });
            self.shared.pushed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy of the lines kept, oldest first.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().iter().cloned().collect()
    }

    /// How many lines were ever pushed (grows by one per line; never decreases).
    pub fn pushed(&self) -> u64 {
        self.shared.pushed.load(Ordering::Relaxed)
    }

    /// Lines kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no line is kept.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether the terminal UI shows the buffer. A log writer should send lines elsewhere (stderr)
    /// when it is not: before the UI starts and after it has restored the terminal.
    pub fn is_attached(&self) -> bool {
        self.shared.attached.load(Ordering::Acquire)
    }

    /// Sets [`is_attached`](Self::is_attached).
    pub fn set_attached(&self, attached: bool) {
        self.shared.attached.store(attached, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogLine>> {
        // A writer that panicked mid-push leaves a consistent deque; keep using it.
        self.shared
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_up_to_capacity() {
        let buffer = LogBuffer::new(3);
        buffer.push(LogLevel::Info, "one\ntwo\n");
        buffer.push(LogLevel::Warn, "three");
        buffer.push(LogLevel::Error, "four\n\n");
        let texts: Vec<String> = buffer.lines().into_iter().map(|line| line.text).collect();
        assert_eq!(texts, ["two", "three", "four"]);
        assert_eq!(buffer.pushed(), 4);
        assert_eq!(buffer.lines()[2].level, LogLevel::Error);
    }

    #[test]
    fn levels_order_from_verbose_to_severe() {
        assert!(LogLevel::Trace < LogLevel::Debug);
        assert!(LogLevel::Warn < LogLevel::Error);
        assert_eq!(LogLevel::Info.to_string(), "INFO");
    }
}
