//! The server streams: `FetchProgress` (progress about every 250 ms, then
//! the result; the stream's task owns the caller's place in the transfer,
//! so when the client goes away the caller leaves) and `Prewarm` (the
//! batch's events; the batch goes on without the client).

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument as _;

use super::convert::{fetch_response, progress};
use super::fetch_status;
use crate::fetch::{Caller, PrewarmEvent, PrewarmKind, Started, Waiting};
use crate::proto::{self, fetch_event::Event, prewarm_event};

/// Time between progress events: smooth for a bar, cheap for the daemon.
const EVERY: Duration = Duration::from_millis(250);

/// A server stream of `T`.
pub type EventStream<T = proto::FetchEvent> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The events of a fetch that has `started`.
pub(super) fn events(started: Started, span: tracing::Span, caller: Caller) -> EventStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(
        async move {
            let result = match started {
                Started::Hit(fetched) => Ok(fetched),
                Started::Waiting(waiting) => match follow(waiting, &tx).await {
                    Some(result) => result,
                    // The client left; dropping `waiting` left the transfer.
                    None => return,
                },
            };
            let event = result
                .map(|f| event(Event::Done(fetch_response(f))))
                .map_err(|e| fetch_status(&e, &caller));
            let _ = tx.send(event).await;
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

/// Sends progress until the transfer ends, and then its last progress when
/// that moved since the last tick: the client sees the bytes and rate the
/// transfer ended with, not those of its last tick (for a quick transfer,
/// the first tick, at 0 bytes). `None` when the client left.
async fn follow(
    mut waiting: Waiting,
    tx: &mpsc::Sender<Result<proto::FetchEvent, Status>>,
) -> Option<Result<crate::fetch::Fetched, crate::fetch::FetchError>> {
    let mut tick = tokio::time::interval(EVERY);
    let mut sent = None;
    let mut send_if_moved = async |waiting: &Waiting| {
        let now = waiting.progress();
        if sent == Some(now.done) {
            return Some(());
        }
        sent = Some(now.done);
        tx.send(Ok(event(Event::Progress(progress(&now)))))
            .await
            .ok()
    };
    while !waiting.is_done() {
        tokio::select! {
            _ = tick.tick() => send_if_moved(&waiting).await?,
            () = waiting.changed() => {}
            () = tx.closed() => return None,
        }
    }
    send_if_moved(&waiting).await?;
    Some(waiting.finish().await)
}

fn event(event: Event) -> proto::FetchEvent {
    proto::FetchEvent { event: Some(event) }
}

/// What `Prewarm` returns.
pub type PrewarmStream = EventStream<proto::PrewarmEvent>;

/// The proto events of a prewarm batch; `digests` names each asset by index.
pub(super) fn prewarm_events(
    mut events: mpsc::Receiver<PrewarmEvent>,
    digests: Vec<String>,
    caller: Caller,
) -> PrewarmStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let index = event.index;
            let event = match event.kind {
                PrewarmKind::Queued => prewarm_event::Event::Queued(proto::Queued {}),
                PrewarmKind::Progress(p) => prewarm_event::Event::Progress(progress(&p)),
                PrewarmKind::Done(fetched) => prewarm_event::Event::Done(fetch_response(fetched)),
                PrewarmKind::Failed(error) => {
                    let status = fetch_status(&error, &caller);
                    prewarm_event::Event::Failed(proto::Failure {
                        code: code_name(status.code()).to_owned(),
                        message: status.message().to_owned(),
                    })
                }
            };
            let event = proto::PrewarmEvent {
                index: index as u32,
                digest: digests.get(index).cloned().unwrap_or_default(),
                event: Some(event),
            };
            // The caller left: the batch goes on; stop translating.
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The canonical name of `code` (`NOT_FOUND`), as the proto promises.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
