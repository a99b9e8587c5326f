//! Capture of every log line the process emits, from every thread, at TRACE level, for the tests
//! that search the logs (the secrets test).
//!
//! A global subscriber can be installed once per process, and every test of this binary shares
//! the process: the subscriber is installed on first use and stays, but it records (and asks the
//! callsites for their events at all) only while at least one [`Capture`] is alive. The rest of
//! the time logging costs the other tests one atomic load per callsite.
//!
//! While a capture is alive, lines from tests running at the same time land in the buffer too:
//! harmless for a leak search (their credentials are not the searched markers), and the reason
//! a capture is searched, never compared line for line.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

/// How many captures are alive.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Records every log line while alive; [`Capture::text`] reads what was recorded so far.
pub struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    /// Installs the process's subscriber on first use and starts recording.
    pub fn start() -> Capture {
        let buffer = Arc::clone(installed());
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Capture { buffer }
    }

    /// Every line recorded since the first capture of this process started.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("log buffer")).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The buffer behind the process's subscriber, installing both on first use.
fn installed() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedWriter(Arc::clone(&buffer));
        // A dynamic filter: callsites keep asking, so a capture started later is seen at once.
        let recording =
            tracing_subscriber::filter::dynamic_filter_fn(|_, _| ACTIVE.load(Ordering::SeqCst) > 0);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(recording);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("only the log capture installs a global subscriber in this binary");
        buffer
    })
}

/// Appends every write to the shared buffer.
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
