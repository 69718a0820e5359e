//! The event stream of `FetchProgress`: progress about every 250 ms, then
//! the result. The stream's task owns the caller's place in the transfer;
//! when the client goes away the task ends, and the caller leaves.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument as _;

use super::assets::{fetch_response, status};
use crate::fetch::{Progress, Started, Waiting};
use crate::proto::{self, fetch_event::Event};

/// Time between progress events: smooth for a bar, cheap for the daemon.
const EVERY: Duration = Duration::from_millis(250);

/// What `FetchProgress` returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::FetchEvent, Status>> + Send>>;

/// The events of a fetch that has `started`.
pub(super) fn events(started: Started, span: tracing::Span) -> EventStream {
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
                .map_err(|e| status(&e));
            let _ = tx.send(event).await;
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

/// Sends progress until the transfer ends; `None` when the client left.
async fn follow(
    mut waiting: Waiting,
    tx: &mpsc::Sender<Result<proto::FetchEvent, Status>>,
) -> Option<Result<crate::fetch::Fetched, crate::fetch::FetchError>> {
    let mut tick = tokio::time::interval(EVERY);
    let mut sent = None;
    while !waiting.is_done() {
        tokio::select! {
            _ = tick.tick() => {
                let now = waiting.progress();
                if sent != Some(now.done) {
                    sent = Some(now.done);
                    tx.send(Ok(event(Event::Progress(progress(&now))))).await.ok()?;
                }
            }
            () = waiting.changed() => {}
            () = tx.closed() => return None,
        }
    }
    Some(waiting.finish().await)
}

fn event(event: Event) -> proto::FetchEvent {
    proto::FetchEvent { event: Some(event) }
}

fn progress(p: &Progress) -> proto::Progress {
    proto::Progress {
        bytes_done: p.done,
        bytes_total: p.total.unwrap_or(0),
        bytes_per_second: p.rate(),
        source: p.source.clone(),
    }
}
