//! Caps on transfers running at once, overall and per host. Waiters are
//! served in arrival order (tokio's semaphore is fair).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

/// The two caps.
pub(super) struct Limits {
    all: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A transfer's slots; released on drop.
pub(super) struct Permits {
    _host: Option<OwnedSemaphorePermit>,
    _all: Option<OwnedSemaphorePermit>,
}

impl Limits {
    pub(super) fn new(max_transfers: usize, max_per_host: usize) -> Limits {
        Limits {
            all: Arc::new(Semaphore::new(max_transfers.max(1))),
            per_host: max_per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot for `url`'s host, then for an overall slot. The
    /// host's comes first so that a transfer waiting on a busy host holds no
    /// overall slot that others could use.
    pub(super) async fn acquire(&self, url: &Url) -> Permits {
        let key = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let host = {
            let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        // The semaphores are never closed, so acquiring cannot fail.
        let host = host.acquire_owned().await.ok();
        let all = self.all.clone().acquire_owned().await.ok();
        Permits {
            _host: host,
            _all: all,
        }
    }
}
