//! Prewarm: a batch of fetches with bounded concurrency and an event per
//! asset. The batch runs as its own task, so it goes on when the caller
//! leaves (node agents fire and forget).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::{FetchError, Fetched, Fetcher, Progress, Started, Want};

/// Fetches at once when the request does not say.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Time between progress events of one asset.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Events buffered for a slow reader; past that, the batch waits for it
/// (or, once it has left, drops them).
const EVENT_BUFFER: usize = 64;

/// What happens to one asset of a batch.
#[derive(Debug)]
pub struct PrewarmEvent {
    /// The asset's place in the batch.
    pub index: usize,
    /// What happened.
    pub kind: PrewarmKind,
}

/// The kinds of [`PrewarmEvent`].
#[derive(Debug)]
pub enum PrewarmKind {
    /// Waiting for a place in the batch.
    Queued,
    /// How far its transfer is.
    Progress(Progress),
    /// Cached.
    Done(Fetched),
    /// Failed.
    Failed(FetchError),
}

impl Fetcher {
    /// Starts fetching `wants`, at most `concurrency` at once; returns the
    /// events. Invalid requests fail as events, not as the batch.
    pub fn prewarm(
        self: &Arc<Self>,
        wants: Vec<Want>,
        concurrency: usize,
    ) -> mpsc::Receiver<PrewarmEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        for index in 0..wants.len() {
            // A full buffer here only means the reader is slow; never block.
            let _ = tx.try_send(PrewarmEvent {
                index,
                kind: PrewarmKind::Queued,
            });
        }
        for (index, want) in wants.into_iter().enumerate() {
            let (fetcher, tx, slots) = (self.clone(), tx.clone(), slots.clone());
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let kind = match fetcher.prewarm_one(index, want, &tx).await {
                    Ok(fetched) => PrewarmKind::Done(fetched),
                    Err(error) => PrewarmKind::Failed(error),
                };
                let event = PrewarmEvent { index, kind };
                // The caller may have left; the asset is cached all the same.
                let _ = tx.send(event).await;
            });
        }
        rx
    }

    async fn prewarm_one(
        &self,
        index: usize,
        want: Want,
        tx: &mpsc::Sender<PrewarmEvent>,
    ) -> Result<Fetched, FetchError> {
        let mut waiting = match self.start(want)? {
            Started::Hit(fetched) => return Ok(fetched),
            Started::Waiting(waiting) => waiting,
        };
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        while !waiting.is_done() {
            tokio::select! {
                _ = tick.tick() => {
                    let progress = waiting.progress();
                    let kind = PrewarmKind::Progress(progress);
                    let _ = tx.try_send(PrewarmEvent { index, kind });
                }
                () = waiting.changed() => {}
            }
        }
        waiting.finish().await
    }
}
