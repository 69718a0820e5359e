//! Single flight: at most one transfer per digest, shared by its callers.
//!
//! The registry holds weak references, so a transfer lives exactly as long
//! as some caller holds its [`Flight`]; dropping the last one aborts the task
//! (and with it the ingest, which removes its temp file).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{FetchError, Progress};
use crate::digest::Digest;
use crate::store::Blob;

/// A transfer's state, as its callers see it.
#[derive(Debug, Default)]
pub(super) struct State {
    pub progress: Progress,
    /// Set once, when the transfer ends.
    pub outcome: Option<Result<Blob, Arc<FetchError>>>,
}

/// One running transfer.
pub(super) struct Flight {
    id: u64,
    digest: Digest,
    task: AbortHandle,
    state: watch::Receiver<State>,
}

impl Flight {
    pub(super) fn new(
        id: u64,
        digest: Digest,
        task: AbortHandle,
        state: watch::Receiver<State>,
    ) -> Flight {
        Flight {
            id,
            digest,
            task,
            state,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.state.borrow().outcome.is_none() {
            tracing::info!(digest = %self.digest, "transfer cancelled: every caller left");
        }
        self.task.abort();
    }
}

/// A flight joined or started, or the cached blob that made one needless.
pub(super) type Joined = Result<(Arc<Flight>, watch::Receiver<State>), Blob>;

/// The running transfers, by digest.
#[derive(Default)]
pub(super) struct Flights {
    /// A std mutex: held only for map updates and a `stat`, never across an
    /// await.
    map: Mutex<HashMap<Digest, Weak<Flight>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Flights {
    /// A fresh flight id.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Joins the running transfer of `digest`, or else calls `start` under
    /// the registry's lock; `start` answers from the cache (`Err(blob)`) or
    /// spawns a transfer.
    pub(super) fn join_or_start(
        &self,
        digest: Digest,
        start: impl FnOnce() -> Result<Result<Arc<Flight>, Blob>, FetchError>,
    ) -> Result<Joined, FetchError> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = map.get(&digest).and_then(Weak::upgrade) {
            let state = flight.state.clone();
            return Ok(Ok((flight, state)));
        }
        match start()? {
            Err(blob) => Ok(Err(blob)),
            Ok(flight) => {
                map.insert(digest, Arc::downgrade(&flight));
                let state = flight.state.clone();
                Ok(Ok((flight, state)))
            }
        }
    }

    /// Runs `f` unless a transfer of `digest` is running
    /// ([`FetchError::InProgress`]), holding the registry's lock so that none
    /// can start meanwhile.
    pub(super) fn unless_running<T>(
        &self,
        digest: Digest,
        f: impl FnOnce() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let running = map.get(&digest).is_some_and(|weak| weak.strong_count() > 0);
        if running {
            return Err(FetchError::InProgress { digest });
        }
        f()
    }

    /// The digests with a transfer running.
    pub(super) fn running(&self) -> std::collections::HashSet<Digest> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(_, weak)| weak.strong_count() > 0)
            .map(|(digest, _)| *digest)
            .collect()
    }

    /// Forgets the finished flight `id`, so later fetches look at the cache.
    pub(super) fn finish(&self, digest: Digest, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let same = map
            .get(&digest)
            .and_then(Weak::upgrade)
            .is_some_and(|flight| flight.id == id);
        if same {
            map.remove(&digest);
        }
    }
}
