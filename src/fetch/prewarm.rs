//! Prewarm: a batch of fetches with bounded concurrency and an event per
//! asset. The batch runs as its own task, so it goes on when the caller
//! leaves (node agents fire and forget); a task per asset is spawned only
//! once it has a slot.
//!
//! A user that is not an admin may have at most `fetch.max_prewarm_per_uid`
//! assets queued or running: a batch that would pass it is refused whole,
//! up front. Each asset counts from the request until its fetch ends (or
//! the batch is dropped at shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::{Caller, FetchError, Fetched, Fetcher, Progress, Started, Want};

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

/// Prewarm assets queued or running, per uid. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(super) struct Queued(Arc<Mutex<HashMap<u32, usize>>>);

/// One asset's place in its user's count; dropping it gives the place back.
#[derive(Debug)]
struct Place {
    queued: Queued,
    uid: u32,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.queued.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

impl Queued {
    /// Counts `n` more assets for `uid`, or refuses them all when that
    /// would pass `cap`.
    fn reserve(&self, uid: u32, n: usize, cap: usize) -> Result<Vec<Place>, FetchError> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let queued = counts.get(&uid).copied().unwrap_or(0);
        if queued.saturating_add(n) > cap {
            return Err(FetchError::TooManyPrewarms {
                uid,
                queued,
                asked: n,
                cap,
            });
        }
        *counts.entry(uid).or_default() += n;
        drop(counts);
        let place = || Place {
            queued: self.clone(),
            uid,
        };
        Ok((0..n).map(|_| place()).collect())
    }
}

impl Fetcher {
    /// Starts fetching `wants` for `caller`, at most `concurrency` at once,
    /// as tracked tasks that stop at shutdown; returns the events. A fetch
    /// that fails (a source refusing, an unsupported scheme) is an event,
    /// not the end of the batch. Refused up front with
    /// [`FetchError::TooManyPrewarms`] when `caller` is not an admin and the
    /// batch would take its assets queued or running past
    /// `fetch.max_prewarm_per_uid`.
    pub fn prewarm(
        &self,
        caller: Caller,
        wants: Vec<Want>,
        concurrency: usize,
    ) -> Result<mpsc::Receiver<PrewarmEvent>, FetchError> {
        let places = if caller.admin {
            Vec::new()
        } else {
            let cap = self.inner.fetch.max_prewarm_per_uid;
            self.inner.prewarms.reserve(caller.uid, wants.len(), cap)?
        };
        let mut places = places.into_iter();
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
                let place = places.next();
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    () = token.cancelled() => return,
                };
                let Ok(slot) = slot else { return };
                let (fetcher, tx, token) = (fetcher.clone(), tx.clone(), token.clone());
                fetcher.inner.lifetime.tracker.clone().spawn(async move {
                    let (_slot, _place) = (slot, place);
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
        Ok(rx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_queued_assets_are_capped_and_given_back_when_done() {
        let queued = Queued::default();
        let first = queued.reserve(1000, 2, 3).unwrap();
        let err = queued.reserve(1000, 2, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "uid 1000 has 2 prewarm assets queued or running; 2 more would pass \
             the cap of 3 (--max-prewarm-per-uid)"
        );
        let other = queued.reserve(1001, 3, 3).unwrap();
        assert_eq!(other.len(), 3, "another user has its own count");
        drop(first);
        assert_eq!(queued.reserve(1000, 3, 3).unwrap().len(), 3);
        assert!(
            queued.0.lock().unwrap().get(&1000).is_none(),
            "all given back"
        );
    }
}
