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
        let nested = POLLING.with(|polling| polling.replace(true));
        let polled = self.project().connection.poll(cx);
        if !nested {
            POLLING.with(|polling| polling.set(false));
            // A job may queue another: run until none is left.
            while let Some(jobs) = QUEUED.with(|queued| {
                let mut queued = queued.borrow_mut();
                (!queued.is_empty()).then(|| std::mem::take(&mut *queued))
            }) {
                for job in jobs {
                    job();
                }
            }
        }
        polled
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
}
