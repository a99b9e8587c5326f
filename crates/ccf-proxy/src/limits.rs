//! The in-flight request limit (`server.max_in_flight`).
//!
//! A request holds one slot from admission until its response body has been relayed to the end
//! (or dropped), held and suspended requests included. With every slot taken the proxy answers
//! at once with 529 `overloaded_error` (what the Anthropic API itself answers when overloaded, so
//! clients back off and retry) instead of queueing without bound. The limit is read on every
//! admission, so a reloaded configuration applies to the next request.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, ProxyBody};

/// The monitoring routes (answered by `crate::monitoring`), which take no in-flight slot so that
/// health checks and scrapes still work while the forwarder is saturated.
pub(crate) fn is_monitoring_path(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/health/detailed" | "/health/usage-tracker" | "/metrics"
    )
}

/// Counts requests in flight; shared by every clone of the forwarder.
#[derive(Debug, Default, Clone)]
pub(crate) struct InFlightLimit {
    in_flight: Arc<AtomicUsize>,
}

/// One taken slot; released when dropped.
#[derive(Debug)]
pub(crate) struct InFlightSlot {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlightLimit {
    /// Takes a slot if fewer than `limit` are taken.
    pub(crate) fn try_acquire(&self, limit: usize) -> Option<InFlightSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < limit).then_some(taken + 1)
            })
            .ok()
            .map(|_| InFlightSlot {
                in_flight: Arc::clone(&self.in_flight),
            })
    }

    /// Slots taken now.
    pub(crate) fn taken(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A response body that keeps its request's slot until it ends or is dropped.
struct SlotBody {
    inner: ProxyBody,
    slot: Option<InFlightSlot>,
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `response` with `slot` released only when its body is done.
pub(crate) fn hold_until_body_ends(
    response: http::Response<ProxyBody>,
    slot: InFlightSlot,
) -> http::Response<ProxyBody> {
    response.map(|inner| {
        SlotBody {
            inner,
            slot: Some(slot),
        }
        .boxed_unsync()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full_body;

    #[test]
    fn slots_are_limited_and_released_on_drop() {
        let limit = InFlightLimit::default();
        let first = limit.try_acquire(2).expect("first slot");
        let second = limit.try_acquire(2).expect("second slot");
        assert!(
            limit.try_acquire(2).is_none(),
            "third request over the limit"
        );
        drop(first);
        let third = limit.try_acquire(2).expect("a slot was released");
        assert_eq!(limit.taken(), 2);
        drop((second, third));
        assert_eq!(limit.taken(), 0);
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_body_is_read_to_the_end() {
        let limit = InFlightLimit::default();
        let slot = limit.try_acquire(1).expect("slot");
        let response = hold_until_body_ends(http::Response::new(full_body("hello")), slot);
        assert_eq!(limit.taken(), 1, "held while the body is unread");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"hello"));
        assert_eq!(limit.taken(), 0, "released at the end of the body");
    }
}
