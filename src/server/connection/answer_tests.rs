use std::task::Waker;

use super::*;
use crate::server::activity::{Activity, CLIENT_STALLED};

/// A body that gives `chunks` one at a time, then ends; `Pending` where a chunk is empty (the
/// upstream has nothing yet).
struct Chunks(Vec<Bytes>);

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let next = self.0.remove(0);
        if next.is_empty() { Poll::Pending } else { Poll::Ready(Some(Ok(Frame::data(next)))) }
    }
}

fn answer(activity: &Arc<Activity>, chunks: Vec<Bytes>, http2: bool) -> Answer {
    Answer::new(Body::new(Chunks(chunks)), activity.begin(), http2)
}

fn pull(answer: &mut Answer) -> Poll<Option<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(answer).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(frame.into_data().map(|d| d.len()).unwrap_or(0))),
        Poll::Ready(_) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

use std::sync::Arc;
use tokio::time::{Duration, Instant, advance};

#[tokio::test(start_paused = true)]
async fn an_http2_answer_waits_for_its_client_from_its_head_until_a_frame_is_let_through() {
    let activity = Activity::for_tests();
    let mut answer =
        answer(&activity, vec![Bytes::from(vec![1u8; 100]), Bytes::new(), Bytes::from(vec![2u8; 10])], true);
    assert_eq!(activity.answers_waiting_for(Instant::now()), Some(Duration::ZERO), "its head went out");
    advance(Duration::from_secs(3)).await;
    // The first frame asked for: the window opened, but nothing of the answer was let through.
    assert_eq!(pull(&mut answer), Poll::Ready(Some(100)));
    assert_eq!(
        activity.answers_waiting_for(Instant::now()),
        Some(Duration::from_secs(3)),
        "still waiting since its head"
    );
    advance(Duration::from_secs(2)).await;
    // Asked again: the client took the frame; the body now waits on the upstream.
    assert_eq!(pull(&mut answer), Poll::Pending);
    assert_eq!(activity.answers_waiting_for(Instant::now()), None, "worked on, not waiting");
    advance(Duration::from_secs(7)).await;
    assert_eq!(pull(&mut answer), Poll::Ready(Some(10)));
    assert_eq!(activity.answers_waiting_for(Instant::now()), Some(Duration::ZERO), "waiting from its new frame");
    assert_eq!(pull(&mut answer), Poll::Ready(None));
    assert_eq!(activity.answers_waiting_for(Instant::now()), None, "done");
    drop(answer);
    assert!(activity.is_quiet());
}

#[tokio::test(start_paused = true)]
async fn a_connection_gives_way_only_when_every_answer_has_waited_its_while() {
    let activity = Activity::for_tests();
    let waiting = answer(&activity, vec![Bytes::from_static(b"page")], true);
    advance(CLIENT_STALLED).await;
    assert_eq!(activity.displaceable_for(Instant::now()), Some(CLIENT_STALLED));
    // Another request, still being worked on: the connection is busy.
    let in_flight = activity.begin();
    assert_eq!(activity.displaceable_for(Instant::now()), None);
    // Its answer ready too: the first one's wait still counts (a new request lets nothing through).
    let second = Answer::new(Body::new(Chunks(vec![Bytes::from_static(b"page")])), in_flight, true);
    assert_eq!(activity.displaceable_for(Instant::now()), Some(CLIENT_STALLED));
    drop((waiting, second));
    assert_eq!(activity.answers_waiting_for(Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn http2_frames_are_handed_over_at_most_a_frame_at_a_time_and_http1_ones_whole() {
    let activity = Activity::for_tests();
    let big = Bytes::from(vec![7u8; FRAME * 2 + 5]);
    let mut http2 = answer(&activity, vec![big.clone()], true);
    assert_eq!(http2.size_hint().lower(), 0, "the inner body's hint before anything is cut");
    assert_eq!(pull(&mut http2), Poll::Ready(Some(FRAME)));
    assert!(!http2.is_end_stream(), "the rest is still to come");
    assert_eq!(http2.size_hint().lower(), (FRAME + 5) as u64);
    assert_eq!(pull(&mut http2), Poll::Ready(Some(FRAME)));
    assert_eq!(pull(&mut http2), Poll::Ready(Some(5)));
    assert_eq!(pull(&mut http2), Poll::Ready(None));
    let mut http1 = answer(&activity, vec![big], false);
    assert_eq!(activity.answers_waiting_for(Instant::now()), None, "HTTP/1.1 answers are the socket's to stall");
    assert_eq!(pull(&mut http1), Poll::Ready(Some(FRAME * 2 + 5)));
}

#[tokio::test(start_paused = true)]
async fn forms_still_arriving_wait_on_the_client_and_give_way_at_once_alone() {
    let activity = Activity::for_tests();
    let form = activity.begin();
    assert_eq!(activity.displaceable_for(Instant::now()), None, "a request being worked on");
    activity.form_waits_for_client(true);
    assert!(activity.displaceable_for(Instant::now()).is_some(), "a form arriving alone: as half a head");
    assert_eq!(activity.answers_waiting_for(Instant::now()), None, "no answer held back: no send timeout");
    // With an answer held back beside it: once the answer has waited its while.
    let held = answer(&activity, vec![Bytes::from_static(b"page")], true);
    assert_eq!(activity.displaceable_for(Instant::now()), None);
    advance(CLIENT_STALLED).await;
    assert_eq!(activity.displaceable_for(Instant::now()), Some(CLIENT_STALLED));
    assert_eq!(activity.answers_waiting_for(Instant::now()), Some(CLIENT_STALLED));
    // The form's bytes came: it is being worked on, and the connection is busy again.
    activity.form_waits_for_client(false);
    assert_eq!(activity.displaceable_for(Instant::now()), None);
    drop((held, form));
    assert!(activity.is_quiet());
}
