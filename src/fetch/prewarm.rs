//! Prewarm: a batch of fetches with bounded concurrency and an event per
//! asset. The batch runs as its own task, so it goes on when the caller
//! leaves (node agents fire and forget); a task per asset is spawned only
//! once it has a slot.

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
    /// Starts fetching `wants`, at most `concurrency` at once, as tracked
    /// tasks that stop at shutdown; returns the events. A fetch that fails
    /// (a source refusing, an unsupported scheme) is an event, not the end of
    /// the batch.
    pub fn prewarm(&self, wants: Vec<Want>, concurrency: usize) -> mpsc::Receiver<PrewarmEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let (fetcher, lifetime) = (self.clone(), self.inner.lifetime.clone());
        let token = lifetime.token.clone();
        lifetime.tracker.spawn(async move {
            for index in 0..wants.len() {
                // The caller may have left; the batch goes on.
                let _ = tx
                    .send(PrewarmEvent {
                        index,
                        kind: PrewarmKind::Queued,
                    })
                    .await;
            }
            for (index, want) in wants.into_iter().enumerate() {
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    () = token.cancelled() => return,
                };
                let Ok(slot) = slot else { return };
                let (fetcher, tx, token) = (fetcher.clone(), tx.clone(), token.clone());
                fetcher.inner.lifetime.tracker.clone().spawn(async move {
                    let _slot = slot;
                    let kind = tokio::select! {
                        result = fetcher.prewarm_one(index, want, &tx) => match result {
                            Ok(fetched) => PrewarmKind::Done(fetched),
                            Err(error) => PrewarmKind::Failed(error),
                        },
                        () = token.cancelled() => PrewarmKind::Failed(FetchError::ShuttingDown),
                    };
                    // The caller may have left; the asset is cached all the same.
                    let _ = tx.send(PrewarmEvent { index, kind }).await;
                });
            }
        });
        rx
    }

    async fn prewarm_one(
        &self,
        index: usize,
        want: Want,
        tx: &mpsc::Sender<PrewarmEvent>,
    ) -> Result<Fetched, FetchError> {
        let mut waiting = match self.start(want).await? {
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
