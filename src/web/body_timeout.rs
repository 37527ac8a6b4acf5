//! A request body that must keep moving: if the client sends nothing for `idle`, the body ends in
//! an error, so a connection that dribbles a byte now and then cannot be held open forever
//! (slow-body attacks: 20 such uploads used to fill `max_connections` and turn everyone else away).
//! Streams of any length and speed pass, as long as some data arrives within each `idle`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};

use crate::web::pages::BoxError;

/// The error a stalled body ends with; [`crate::web::forward`] answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no body data for {0:?}")]
pub struct BodyIdle(pub Duration);

/// The error a body ends with when the client's side of it fails (the client reset the
/// connection, or closed it before sending all it announced): the client's doing, not the
/// upstream's, so it is never reported as an unreachable upstream.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke off: {0}")]
pub struct BodyBroken(BoxError);

pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// When data last came (or the body began).
    last_data: tokio::time::Instant,
    /// Made the first time the body has to wait: most forwarded requests (a GET) have no body and
    /// are never polled, and need no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self { inner, idle, last_data: tokio::time::Instant::now(), deadline: None }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.last_data = tokio::time::Instant::now();
                let next = self.last_data + self.idle;
                if let Some(deadline) = self.deadline.as_mut() {
                    deadline.as_mut().reset(next);
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(BodyBroken(e.into())) as BoxError)))
            }
            Poll::Pending => {
                let until = self.last_data + self.idle;
                let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(self.idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_and_a_slow_steady_one_passes() {
        // Three chunks, 40 s apart, with 60 s allowed between chunks: passes.
        let steady = futures_util::stream::unfold(0, |n| async move {
            if n == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(40)).await;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))), n + 1))
        });
        let body = IdleTimeout::new(StreamBody::new(Box::pin(steady)), Duration::from_secs(60));
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from_static(b"xxx"));

        // One chunk, then nothing: fails once 60 s pass.
        let stalled = futures_util::stream::unfold(0, |n| async move {
            if n == 1 {
                std::future::pending::<()>().await;
            }
            Some((Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))), n + 1))
        });
        let body = IdleTimeout::new(StreamBody::new(Box::pin(stalled)), Duration::from_secs(60));
        let error = body.collect().await.expect_err("a stalled body fails");
        assert!(error.downcast_ref::<BodyIdle>().is_some(), "{error}");
    }
}
