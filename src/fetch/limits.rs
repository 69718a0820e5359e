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
            // A host's semaphore held by the map alone is idle: drop it, so
            // the map does not grow with every host ever seen.
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_host_waits_without_taking_an_overall_slot() {
        let limits = Arc::new(Limits::new(2, 1));
        let _a = limits.acquire(&url("http://a/1")).await;
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.acquire(&url("http://a/2")).await })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "host a is at its cap");
        // Host b still gets the second overall slot.
        let b = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://b/1")),
        )
        .await;
        assert!(b.is_ok());
        waiting.abort();
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limits = Limits::new(4, 1);
        for i in 0..50 {
            drop(limits.acquire(&url(&format!("http://host{i}/x"))).await);
        }
        let hosts = limits.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(hosts.len() <= 1, "{} hosts kept", hosts.len());
    }
}
