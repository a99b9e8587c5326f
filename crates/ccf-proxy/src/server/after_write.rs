//! Work that waits until a connection has written what it has to write: run by the connection's
//! own task, at the end of the poll that produced it.
//!
//! hyper polls a response body from the connection's task and writes (flushes) what it got
//! before that poll ends; whatever the body does while it is polled (the relay's end-of-answer
//! bookkeeping) delays those bytes. Queued with [`after_write`] instead, the work runs right
//! after the write, on the same thread and in the same poll: no task to spawn, nothing moved
//! elsewhere, and the client has its bytes first.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Job = Box<dyn FnOnce()>;

thread_local! {
    /// A connection wrapped in [`WritesFirst`] is being polled on this thread.
    static POLLING: Cell<bool> = const { Cell::new(false) };
    /// Work queued during that poll, run when it ends.
    static QUEUED: RefCell<Vec<Job>> = const { RefCell::new(Vec::new()) };
}

/// Runs `job` once the connection being polled on this thread has written what this poll
/// produced, or at once when no connection is being polled here (a body polled elsewhere: an
/// HTTP/2 stream's task, a test).
pub(crate) fn after_write(job: impl FnOnce() + 'static) {
    if POLLING.with(Cell::get) {
        QUEUED.with(|queued| queued.borrow_mut().push(Box::new(job)));
    } else {
        job();
    }
}

pin_project_lite::pin_project! {
    /// A connection future whose polls end with the work queued during them ([`after_write`]).
    pub(crate) struct WritesFirst<F> {
        #[pin]
        connection: F,
    }
}

impl<F> WritesFirst<F> {
    pub(crate) fn new(connection: F) -> Self {
        WritesFirst { connection }
    }
}

impl<F: Future> Future for WritesFirst<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polling = Polling::start();
        let polled = self.project().connection.poll(cx);
        if polling.end() {
            // Nothing is polling now, so the jobs' own `after_write`s run at once.
            for job in QUEUED.with(|queued| std::mem::take(&mut *queued.borrow_mut())) {
                job();
            }
        }
        polled
    }
}

/// Marks this thread as polling a connection while it lives. Restored on drop, so a poll that
/// panics (tokio catches a task's panic and the thread serves on) does not leave every later
/// `after_write` of the thread queued for good.
struct Polling {
    outermost: bool,
}

impl Polling {
    fn start() -> Self {
        Polling {
            outermost: !POLLING.with(|polling| polling.replace(true)),
        }
    }

    /// Ends the mark; whether this was the outermost poll (the one to run the queued work).
    fn end(self) -> bool {
        self.outermost
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        if self.outermost {
            POLLING.with(|polling| polling.set(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn queued_work_runs_when_the_connection_poll_ends_and_at_once_elsewhere() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let at_once = Rc::clone(&log);
        after_write(move || at_once.borrow_mut().push("outside a connection: at once"));
        assert_eq!(log.borrow().len(), 1);

        let inside = Rc::clone(&log);
        let connection = WritesFirst::new(std::future::poll_fn(move |_| {
            let queued = Rc::clone(&inside);
            after_write(move || queued.borrow_mut().push("after the poll"));
            inside.borrow_mut().push("the poll writes");
            Poll::Ready(())
        }));
        let mut connection = std::pin::pin!(connection);
        let waker = std::task::Waker::noop();
        assert!(connection
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_ready());
        assert_eq!(
            *log.borrow(),
            [
                "outside a connection: at once",
                "the poll writes",
                "after the poll"
            ]
        );
        // The poll is over: work goes at once again.
        let after = Rc::clone(&log);
        after_write(move || after.borrow_mut().push("later: at once"));
        assert_eq!(log.borrow().len(), 4);
    }

    #[test]
    fn a_connection_poll_that_panics_leaves_the_thread_running_work_at_once() {
        let panicked = std::panic::catch_unwind(|| {
            let connection = WritesFirst::new(std::future::poll_fn(|_| -> Poll<()> {
                panic!("a connection's poll panics");
            }));
            let mut connection = std::pin::pin!(connection);
            let _ = connection
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
        });
        assert!(panicked.is_err());
        let ran = Rc::new(Cell::new(false));
        let job = Rc::clone(&ran);
        after_write(move || job.set(true));
        assert!(ran.get(), "not queued behind a poll that is over");
    }
}
