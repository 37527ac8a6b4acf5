//! A request body as the client sent it (hyper's [`Incoming`]), which tells the connection when
//! it has been read to its end.
//!
//! Why: an HTTP/1.1 connection is taken back from hyper between requests only when no byte that
//! belongs to a request can still be in the socket. A body that was read to its end (its
//! `Content-Length` counted down, or its last chunk and trailers read, RFC 9112 §6.3) leaves the
//! socket at the next request's first byte; a body that was dropped half-read does not. So the
//! connection hears of the first kind only, and a body never read to the end keeps the connection
//! with hyper for good.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What the connection under a watched body hears of it: its end (once), and, for a form of ours,
/// when it waits for the client.
pub trait BodyWatcher: Send + Sync {
    /// The body was read to its end.
    fn read_to_end(&self);
    /// Whether a form of ours ([`ClientBody::read_as_form`]) waits for its client's next bytes:
    /// the client's doing, as a request head still on its way is, not work of the proxy's.
    fn form_waits_for_client(&self, waiting: bool);
}

pub struct ClientBody {
    inner: Incoming,
    /// Taken when the body ends, so the watcher is told at most once.
    watcher: Option<Arc<dyn BodyWatcher>>,
    /// Read whole before anything is done with it (our own forms): its waits are the client's.
    form: bool,
    /// The last read of a form found nothing yet, and the watcher was told.
    waiting: bool,
}

impl ClientBody {
    pub fn new(inner: Incoming) -> Self {
        Self { inner, watcher: None, form: false, waiting: false }
    }

    /// A body whose end `watcher` hears of: one that is not empty from the start (an empty one
    /// would never tell, and is [`ClientBody::new`]'s).
    pub fn watched(inner: Incoming, watcher: Arc<dyn BodyWatcher>) -> Self {
        Self { inner, watcher: Some(watcher), form: false, waiting: false }
    }

    /// A body read whole before the request is acted on (one of our forms): while it waits for
    /// the client's bytes, the watcher knows the connection is held by its client.
    pub fn read_as_form(mut self) -> Self {
        self.form = true;
        self
    }

    fn tell_waiting(&mut self, waiting: bool) {
        if self.form && waiting != self.waiting {
            self.waiting = waiting;
            if let Some(watcher) = &self.watcher {
                watcher.form_waits_for_client(waiting);
            }
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.tell_waiting(false);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        self.tell_waiting(frame.is_pending());
        // Only a clean end counts: hyper ends the stream (`None`) once its decoder has read the
        // body's framing to the end. Two ends come earlier, and a consumer such as hyper's
        // client stops at them without asking for `None`: a body with a `Content-Length`
        // reports its end with its last byte, which is when hyper's decoder reached it; and
        // trailers are handed on only after the last chunk and the trailer section were read
        // (RFC 9112 §7.1.2). An error, or a body dropped before any of these, says nothing.
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || self.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(watcher) = self.watcher.take() {
            watcher.read_to_end();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
