//! A request body must arrive whole within a deadline from the end of its headers. A
//! header deadline and a connection lifetime alone let a client declare a body and send
//! it a byte every two seconds: 1,030 such connections held the notify endpoint for a
//! minute each, and a genuine notification waited 70 s. A body over its
//! deadline ends with [`BodyTimeout`]; the handler reading it answers (see [`timed_out`])
//! and the connection is closed, since its body was not read to the end.

use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};

/// The request body did not arrive within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A body that fails with [`BodyTimeout`] once its deadline passes.
pub(super) struct Deadline {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    /// `inner`, due whole within `timeout` from now.
    pub(super) fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // The deadline first: a client trickling bytes always has the next one "ready"
        // when it is polled, and must still be cut off.
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.timeout)))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`BodyTimeout`] somewhere in `error`'s chain of sources (a body extractor's
/// rejection wraps the body's error), if any.
pub fn timed_out(error: &(dyn Error + 'static)) -> Option<BodyTimeout> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
            return Some(*timeout);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;

    #[tokio::test(start_paused = true)]
    async fn a_body_not_complete_by_its_deadline_fails_and_says_so() {
        use futures_util::StreamExt;
        // Two bytes, then nothing more, ever.
        let trickle = futures_util::stream::once(async { Ok::<_, axum::Error>("a=") })
            .chain(futures_util::stream::pending());
        let body = Deadline::new(Body::from_stream(trickle), Duration::from_secs(2));
        let request = axum::http::Request::new(Body::new(body));
        let rejection = Bytes::from_request(request, &()).await.unwrap_err();
        assert_eq!(
            timed_out(&rejection),
            Some(BodyTimeout(Duration::from_secs(2))),
            "{rejection}"
        );

        let whole = Deadline::new(Body::from("a=b"), Duration::from_secs(2));
        let request = axum::http::Request::new(Body::new(whole));
        assert_eq!(
            Bytes::from_request(request, &()).await.unwrap(),
            Bytes::from_static(b"a=b")
        );
    }
}
