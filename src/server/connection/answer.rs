//! An answer's body on its way to the client: its request counts as in flight until the body is
//! done, and on HTTP/2 the connection knows whether the answer waits for the client.
//!
//! HTTP/2 flow control (RFC 9113 §5.2, §6.9) lets a client hold back every answer: hyper asks a
//! body for its next frame only once the client's windows have room for it, so an answer the
//! client lets nothing of through waits inside the proxy, its socket never blocks, and the
//! socket's own limit (`limits.send_timeout`, `client_io`) never applies. The body therefore
//! tells the connection's `Activity` when it waits for the client (a frame handed over and not
//! taken, or its head sent and its first frame not asked for) and when the client took one;
//! the connection's clock cuts off a client that took nothing for `limits.send_timeout`, and a
//! newcomer may take the place of one that took nothing for a while (`capacity`).
//!
//! Frames are handed over at most [`FRAME`] at a time, so that "the client took a frame" means
//! as much whatever size the upstream's chunks come in: without it, a chunk of a few hundred
//! kilobytes would take a slow but steady client longer than the limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::server::capacity::InFlight;
use crate::web::pages::{Body, BoxError};

/// The largest frame handed over at once on HTTP/2: the protocol's default largest frame
/// (`SETTINGS_MAX_FRAME_SIZE`, RFC 9113 §6.5.2), what hyper sends per DATA frame anyway.
const FRAME: usize = 16 * 1024;

/// A response body that keeps its request counted as in flight until it is done.
pub(super) struct Answer {
    body: Body,
    in_flight: InFlight,
    /// On HTTP/2: where the answer stands with its client.
    http2: Option<Delivery>,
}

/// Where an HTTP/2 answer stands with its client, and what is left of a frame cut to [`FRAME`].
struct Delivery {
    stage: Stage,
    rest: Bytes,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The head went to hyper; no frame asked for yet (the client's window may be closed).
    Headed,
    /// A frame was handed over; hyper has not asked for the next (the client has not let it
    /// through yet).
    Handed,
    /// The last ask found nothing ready: the answer waits on the upstream, not the client.
    Working,
    /// The body ended.
    Done,
}

impl Stage {
    fn waits_for_client(self) -> bool {
        matches!(self, Stage::Headed | Stage::Handed)
    }
}

impl Answer {
    pub fn new(body: Body, in_flight: InFlight, http2: bool) -> Self {
        let http2 = http2.then(|| {
            in_flight.activity().answer_waits();
            Delivery { stage: Stage::Headed, rest: Bytes::new() }
        });
        Self { body, in_flight, http2 }
    }

    /// The next frame of the body, at most [`FRAME`] of data at once.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(delivery) = &mut self.http2 else {
            return Pin::new(&mut self.body).poll_frame(cx);
        };
        if !delivery.rest.is_empty() {
            let cut = delivery.rest.len().min(FRAME);
            return Poll::Ready(Some(Ok(Frame::data(delivery.rest.split_to(cut)))));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) if data.len() > FRAME => {
                    delivery.rest = data.split_off(FRAME);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let before = this.http2.as_ref().map(|delivery| delivery.stage);
        if before == Some(Stage::Handed) {
            // Asked for the next frame: the client let the last one through.
            this.in_flight.activity().client_took_some();
        }
        let polled = this.next_frame(cx);
        if let (Some(before), Some(delivery)) = (before, &mut this.http2) {
            delivery.stage = match &polled {
                Poll::Ready(Some(Ok(_))) => Stage::Handed,
                Poll::Ready(_) => Stage::Done,
                Poll::Pending => Stage::Working,
            };
            let activity = this.in_flight.activity();
            match (before.waits_for_client(), delivery.stage.waits_for_client()) {
                (true, false) => activity.answer_stops_waiting(),
                (false, true) => activity.answer_waits(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.http2.as_ref().is_none_or(|delivery| delivery.rest.is_empty()) && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.body.size_hint();
        let Some(delivery) = self.http2.as_ref().filter(|delivery| !delivery.rest.is_empty()) else {
            return hint;
        };
        let rest = delivery.rest.len() as u64;
        let mut with_rest = SizeHint::new();
        with_rest.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            with_rest.set_upper(upper + rest);
        }
        with_rest
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.http2.as_ref().is_some_and(|delivery| delivery.stage.waits_for_client()) {
            self.in_flight.activity().answer_stops_waiting();
        }
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
