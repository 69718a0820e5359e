//! Closing idle connections: a connection with no call open for
//! `--idle-timeout` is closed, so a client that connects and then does
//! nothing does not hold one of its user's connection slots for ever.
//! HTTP/2 pings don't count as activity (they are what keeps a live peer's
//! connection open); an open call does, however long it runs: a fetch of a
//! large asset may wait silently for minutes.
//!
//! Every call takes a [`Busy`] mark on its connection's [`Activity`] (the
//! [`TrackCalls`] layer), held until its response body is dropped, that is
//! until the last message of a streaming reply has gone or the client
//! left. The connection ([`super::authority::FixAuthority`]) reads as ended
//! once it has had no mark for the timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http_body_util::BodyExt as _;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tower::{Layer, Service};

use super::authority::ConnInfo;

/// How many calls are open on one connection.
#[derive(Debug, Default)]
pub(super) struct Activity {
    open: AtomicUsize,
    /// The connection's reader, woken when the last call ends so that it
    /// starts its idle clock.
    reader: AtomicWaker,
}

/// One open call; ends (and may start the idle clock) when dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Busy {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The idle clock of one connection.
#[derive(Debug)]
pub(super) struct IdleClock {
    activity: Arc<Activity>,
    timeout: Duration,
    /// Running while no call is open.
    since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleClock {
    pub(super) fn new(activity: Arc<Activity>, timeout: Duration) -> IdleClock {
        IdleClock {
            activity,
            timeout,
            since: None,
        }
    }

    /// The client sent something other than a ping: the clock starts over.
    pub(super) fn touch(&mut self) {
        self.since = None;
    }

    /// Whether the connection has been idle for the timeout; if not, `cx`
    /// is woken when that may have changed.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.activity.reader.register(cx.waker());
        if self.activity.open.load(Ordering::Acquire) > 0 {
            self.since = None;
            return false;
        }
        let timeout = self.timeout;
        let clock = self
            .since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        clock.as_mut().poll(cx).is_ready()
    }
}

/// The layer that marks each call on its connection's [`Activity`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TrackCalls;

impl<S> Layer<S> for TrackCalls {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked(inner)
    }
}

/// A service whose calls are marked; see [`TrackCalls`].
#[derive(Debug, Clone)]
pub(super) struct Tracked<S>(S);

impl<S, B> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let busy = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| Busy::new(info.activity.clone()));
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The mark goes with the body: a streaming reply is open until
            // its last message is sent or the client goes.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _open = &busy;
                    frame
                }))
            }))
        })
    }
}
