//! Counting in-flight MCP requests for the shutdown drain: a guard per request that lives until
//! its response body (often an SSE stream) has been sent or dropped.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct Inflight(Arc<(AtomicUsize, Notify)>);

pub struct Guard(Inflight);

impl Inflight {
    pub fn enter(&self) -> Guard {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        Guard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Resolves when no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

/// A response body that holds a `Guard` until it is finished or dropped.
pub struct Guarded<B> {
    inner: Pin<Box<B>>,
    _guard: Guard,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner: Box::pin(inner),
            _guard: guard,
        }
    }
}

impl<B: http_body::Body> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
