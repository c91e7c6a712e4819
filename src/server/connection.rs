//! One API connection: hyper serves it, and a [`Clock`] holds its client to
//! `--client-timeout`.
//!
//! The clock knows which phase the connection's current exchange is in, and
//! each phase but one has a deadline, the timeout after the phase began:
//!
//! | phase | begins when | at its deadline |
//! |---|---|---|
//! | idle | the connection is accepted, or hyper took the whole previous answer | closed quietly |
//! | head | the first byte of a request arrives | answered 408 on the socket, closed |
//! | body | the head is in and the handler runs, but the body is still arriving | the body fails with [`RequestTimedOut`], the handler answers 408, and the connection closes |
//! | handling | the body is in (or the handler has let it go) | none: the server's own work |
//! | answering | the handler answered | closed: a client that does not read its answer |
//!
//! The body phase keeps the head's start, so a whole request must arrive
//! within one timeout. Reading, the handler and writing the answer all run in
//! the connection's own task (hyper polls the handler inline), so the deadline
//! is read again after every poll: no timer per request, no lock held across
//! an await.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a request's body gives once the request has taken longer than
/// `--client-timeout`; the API answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request was not sent within --client-timeout")]
pub struct RequestTimedOut;

/// Serves one connection until it closes, times out, or `stop` ends it (after
/// the request in progress, if any). A request head that times out is
/// answered with `timed_out`.
pub(super) async fn serve(
    stream: TcpStream,
    router: Router,
    timeout: Duration,
    timed_out: &[u8],
    linger: Duration,
    stop: &CancellationToken,
) {
    let clock = Arc::new(Clock::new(timeout));
    // Shared with hyper's handle only so that the socket can be taken back to
    // answer a head that never arrived whole: hyper itself closes without a word.
    let socket = Arc::new(Mutex::new(stream));
    let end = {
        let io = TokioIo::new(Watched { socket: socket.clone(), clock: clock.clone() });
        let mut builder = http1::Builder::new();
        // The clock keeps time; hyper has no timer (and would warn of its default without one).
        builder.header_read_timeout(None);
        let conn = pin!(builder.serve_connection(io, Handler { router, clock: clock.clone() }));
        drive(conn, &clock, stop).await
    };
    if end == End::HeadTimedOut
        && let Ok(socket) = Arc::try_unwrap(socket)
    {
        let stream = socket.into_inner().unwrap_or_else(PoisonError::into_inner);
        answer_and_close(stream, timed_out, linger, stop).await;
    }
}

/// Writes `answer` (a whole HTTP response), says that nothing more will come,
/// then reads and drops what the client still sends until it closes too or
/// `linger` ends: closing a socket with unread input resets the connection,
/// and a client may then lose the answer before reading it.
pub(super) async fn answer_and_close(mut stream: TcpStream, answer: &[u8], linger: Duration, stop: &CancellationToken) {
    let exchange = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    tokio::select! {
        _ = tokio::time::timeout(linger, exchange) => {}
        () = stop.cancelled() => {}
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// hyper finished it: the client closed, an answer closed it, or shutdown.
    Closed,
    /// Idle too long, or its answer was not read in time: closed quietly.
    TimedOut,
    /// A request head did not arrive whole in time: to be answered 408.
    HeadTimedOut,
}

/// Polls the connection, and after each poll holds it to the clock's deadline.
async fn drive(
    mut conn: Pin<&mut http1::Connection<TokioIo<Watched>, Handler>>,
    clock: &Clock,
    stop: &CancellationToken,
) -> End {
    let mut stopped = pin!(stop.cancelled());
    let mut stopping = false;
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed = None;
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                return Poll::Ready(End::Closed);
            }
            if !stopping && stopped.as_mut().poll(cx).is_ready() {
                stopping = true;
                // Nothing of a request has been handled yet: close at once (its
                // client may send it again elsewhere). A request in progress may finish.
                if clock.between_requests() {
                    return Poll::Ready(End::Closed);
                }
                conn.as_mut().graceful_shutdown();
                continue;
            }
            let Some(deadline) = clock.deadline() else { return Poll::Pending };
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            armed = None;
            match clock.expire() {
                Expiry::Close => return Poll::Ready(End::TimedOut),
                Expiry::AnswerHead => return Poll::Ready(End::HeadTimedOut),
                // The handler reads the failed body when polled: poll it now.
                Expiry::FailBody => continue,
            }
        }
    })
    .await
}

/// The phase of a connection's current exchange (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { since: Instant },
    Head { since: Instant },
    Body { since: Instant },
    Handling,
    Answering { since: Instant },
}

/// What to do at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Close,
    AnswerHead,
    FailBody,
}

struct State {
    phase: Phase,
    /// Counts requests, so that a body dropped late cannot end a later request's body phase.
    request: u64,
    /// Set when the body phase ran out: the request's body then fails.
    body_expired: bool,
}

/// A connection's phase and deadline. Only the connection's own task touches
/// it, so the lock is never contended; it is a lock because hyper wants its
/// handler and I/O to be `Send`.
struct Clock {
    timeout: Duration,
    state: Mutex<State>,
}

impl Clock {
    fn new(timeout: Duration) -> Self {
        let phase = Phase::Idle { since: Instant::now() };
        Self { timeout, state: Mutex::new(State { phase, request: 0, body_expired: false }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: on an idle connection, a request has begun.
    fn bytes_arrived(&self) {
        let mut state = self.state();
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::Head { since: Instant::now() };
        }
    }

    /// The head is in and the handler is called; returns the request's number.
    fn request_started(&self, body_complete: bool) -> u64 {
        let mut state = self.state();
        let since = match state.phase {
            Phase::Head { since } => since,
            // The head was read along with the previous request.
            _ => Instant::now(),
        };
        state.phase = if body_complete { Phase::Handling } else { Phase::Body { since } };
        state.request += 1;
        state.body_expired = false;
        state.request
    }

    /// Request `request`'s body is over: read whole, failed, or let go.
    fn body_ended(&self, request: u64) {
        let mut state = self.state();
        if state.request == request && matches!(state.phase, Phase::Body { .. }) {
            state.phase = Phase::Handling;
        }
    }

    fn body_expired(&self, request: u64) -> bool {
        let state = self.state();
        state.request == request && state.body_expired
    }

    fn answered(&self) {
        self.state().phase = Phase::Answering { since: Instant::now() };
    }

    /// hyper has taken the whole answer: the connection waits for the next request.
    fn answer_taken(&self) {
        let mut state = self.state();
        if let Phase::Answering { .. } = state.phase {
            state.phase = Phase::Idle { since: Instant::now() };
        }
    }

    /// Idle, or still reading a request's head: no handler has seen it.
    fn between_requests(&self) -> bool {
        matches!(self.state().phase, Phase::Idle { .. } | Phase::Head { .. })
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state().phase {
            Phase::Idle { since } | Phase::Head { since } | Phase::Body { since } | Phase::Answering { since } => {
                Some(since + self.timeout)
            }
            Phase::Handling => None,
        }
    }

    /// The deadline has passed.
    fn expire(&self) -> Expiry {
        let mut state = self.state();
        match state.phase {
            Phase::Idle { .. } | Phase::Answering { .. } => Expiry::Close,
            Phase::Head { .. } => Expiry::AnswerHead,
            Phase::Body { .. } | Phase::Handling => {
                state.body_expired = true;
                state.phase = Phase::Handling;
                Expiry::FailBody
            }
        }
    }
}

/// The socket as hyper sees it: every read tells the clock that bytes arrived.
struct Watched {
    socket: Arc<Mutex<TcpStream>>,
    clock: Arc<Clock>,
}

impl Watched {
    fn socket(&self) -> MutexGuard<'_, TcpStream> {
        self.socket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.socket()).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.socket()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.socket()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.socket()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.socket()).poll_shutdown(cx)
    }
}

/// Calls the router with the request's body on the clock, and tells the
/// clock when the answer is ready and when hyper has taken it.
struct Handler {
    router: Router,
    clock: Arc<Clock>,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<AnswerBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let clock = self.clock.clone();
        let complete = request.body().is_end_stream();
        let number = clock.request_started(complete);
        let request =
            request.map(|inner| Body::new(TimedBody { inner, clock: clock.clone(), request: number, ended: complete }));
        let answer = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = answer.await.unwrap_or_else(|never| match never {});
            clock.answered();
            Ok(response.map(|inner| AnswerBody { inner, clock }))
        })
    }
}

/// A request body that fails with [`RequestTimedOut`] once its request's
/// time is up, and tells the clock when it is over.
struct TimedBody {
    inner: Incoming,
    clock: Arc<Clock>,
    request: u64,
    ended: bool,
}

impl TimedBody {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.clock.body_ended(self.request);
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.ended && self.clock.body_expired(self.request) {
            self.end();
            return Poll::Ready(Some(Err(Box::new(RequestTimedOut))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => self.end(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.end(),
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.end();
    }
}

/// An answer's body; hyper drops it once it has taken all of it.
struct AnswerBody {
    inner: Body,
    clock: Arc<Clock>,
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.clock.answer_taken();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    async fn wait(seconds: u64) {
        tokio::time::advance(Duration::from_secs(seconds)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_must_arrive_whole_within_one_timeout_from_its_first_byte() {
        let clock = Clock::new(T);
        wait(10).await;
        clock.bytes_arrived();
        let first_byte = Instant::now();
        assert_eq!(clock.deadline(), Some(first_byte + T));
        wait(5).await;
        clock.bytes_arrived();
        let request = clock.request_started(false);
        assert_eq!(clock.deadline(), Some(first_byte + T), "the body keeps the head's start");
        assert_eq!(clock.expire(), Expiry::FailBody);
        assert!(clock.body_expired(request));
        assert_eq!(clock.deadline(), None, "the handler answers the failed body");
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_ends_its_own_way() {
        let clock = Clock::new(T);
        assert_eq!(clock.expire(), Expiry::Close, "idle");
        clock.bytes_arrived();
        assert_eq!(clock.expire(), Expiry::AnswerHead, "half a head");
        clock.request_started(true);
        assert_eq!(clock.deadline(), None, "handling a whole request");
        wait(100).await;
        clock.answered();
        assert_eq!(clock.deadline(), Some(Instant::now() + T));
        assert_eq!(clock.expire(), Expiry::Close, "an answer nobody reads");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_makes_the_connection_idle_until_the_next_byte() {
        let clock = Clock::new(T);
        clock.bytes_arrived();
        let first = clock.request_started(false);
        clock.body_ended(first);
        clock.answered();
        wait(3).await;
        clock.answer_taken();
        assert_eq!(clock.deadline(), Some(Instant::now() + T));
        // The next request; the first one's body ending late changes nothing.
        wait(1).await;
        clock.bytes_arrived();
        let second = clock.request_started(false);
        clock.body_ended(first);
        assert!(matches!(clock.state().phase, Phase::Body { .. }));
        assert_eq!(clock.expire(), Expiry::FailBody);
        assert!(clock.body_expired(second) && !clock.body_expired(first));
    }
}
