//! Caps on transfers running at once: per user (the uid that started the
//! transfer; admins are exempt), per host and overall. Waiters are served in
//! arrival order (tokio's semaphore is fair). Semaphores of idle users and
//! hosts are dropped, so the maps don't grow with every uid or host seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

/// The two caps.
pub(super) struct Limits {
    all: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_uid: usize,
    uids: Mutex<HashMap<u32, Arc<Semaphore>>>,
    /// A user's slots on one host: fewer than the host's, so one user can
    /// never hold them all.
    uid_hosts: Mutex<HashMap<(u32, String), Arc<Semaphore>>>,
    counts: Arc<Counts>,
}

/// Transfers waiting for slots and running, for status lines and metrics.
#[derive(Debug, Default)]
struct Counts {
    waiting: AtomicUsize,
    running: AtomicUsize,
}

/// Adds one to a count until dropped.
struct Counted(Arc<Counts>, fn(&Counts) -> &AtomicUsize);

impl Counted {
    fn new(counts: &Arc<Counts>, which: fn(&Counts) -> &AtomicUsize) -> Counted {
        which(counts).fetch_add(1, Ordering::Relaxed);
        Counted(counts.clone(), which)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transfer's slots; released on drop.
pub(super) struct Permits {
    _uid: Option<OwnedSemaphorePermit>,
    _uid_host: Option<OwnedSemaphorePermit>,
    _host: Option<OwnedSemaphorePermit>,
    _all: Option<OwnedSemaphorePermit>,
    _running: Counted,
}

impl Limits {
    pub(super) fn new(max_transfers: usize, max_per_host: usize, max_per_uid: usize) -> Limits {
        Limits {
            all: Arc::new(Semaphore::new(max_transfers.max(1))),
            per_host: max_per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
            per_uid: max_per_uid.max(1),
            uids: Mutex::new(HashMap::new()),
            uid_hosts: Mutex::new(HashMap::new()),
            counts: Arc::default(),
        }
    }

    /// Transfers waiting for their slots, and running.
    pub(super) fn counts(&self) -> (usize, usize) {
        let counts = &self.counts;
        (
            counts.waiting.load(Ordering::Relaxed),
            counts.running.load(Ordering::Relaxed),
        )
    }

    /// Waits for a slot of `uid` (the user who started the transfer; `None`
    /// for an admin, who is exempt), then of that user on `url`'s host (one
    /// fewer than the host has), then of the host, then an overall
    /// one. The narrower ones come first so that a transfer waiting on a busy
    /// user or host holds no slot that others could use.
    pub(super) async fn acquire(&self, url: &Url, uid: Option<u32>) -> Permits {
        let waiting = Counted::new(&self.counts, |c| &c.waiting);
        // The port counts: another port on the same host is another server.
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let per_uid_host = self.per_host.saturating_sub(1).max(1);
        let uid_host = uid.map(|uid| slot(&self.uid_hosts, (uid, key.clone()), per_uid_host));
        let uid = uid.map(|uid| slot(&self.uids, uid, self.per_uid));
        let host = slot(&self.hosts, key, self.per_host);
        // The semaphores are never closed, so acquiring cannot fail.
        let uid = match uid {
            Some(s) => s.acquire_owned().await.ok(),
            None => None,
        };
        let uid_host = match uid_host {
            Some(s) => s.acquire_owned().await.ok(),
            None => None,
        };
        let host = host.acquire_owned().await.ok();
        let all = self.all.clone().acquire_owned().await.ok();
        drop(waiting);
        Permits {
            _uid: uid,
            _uid_host: uid_host,
            _host: host,
            _all: all,
            _running: Counted::new(&self.counts, |c| &c.running),
        }
    }
}

/// `key`'s semaphore of `permits`, made on first use. One held by the map
/// alone is idle and dropped first.
fn slot<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Arc<Semaphore>>>,
    key: K,
    permits: usize,
) -> Arc<Semaphore> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    map.retain(|_, s| Arc::strong_count(s) > 1);
    map.entry(key)
        .or_insert_with(|| Arc::new(Semaphore::new(permits)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_host_waits_without_taking_an_overall_slot() {
        let limits = Arc::new(Limits::new(2, 1, 8));
        let _a = limits.acquire(&url("http://a/1"), None).await;
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.acquire(&url("http://a/2"), None).await })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "host a is at its cap");
        // Host b still gets the second overall slot.
        let b = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://b/1"), None),
        )
        .await;
        assert!(b.is_ok());
        assert_eq!(limits.counts(), (1, 2), "one waiting, two running");
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(
            limits.counts(),
            (0, 2),
            "a waiter that gave up is not counted"
        );
        drop(b);
        assert_eq!(limits.counts(), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn one_user_cannot_take_every_slot_of_a_host_and_ports_are_hosts() {
        let limits = Arc::new(Limits::new(16, 4, 8));
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(
                limits
                    .acquire(&url(&format!("http://h:8082/{i}")), Some(1000))
                    .await,
            );
        }
        let fourth = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://h:8082/3"), Some(1000)),
        )
        .await;
        assert!(
            fourth.is_err(),
            "a user holds at most 3 of a host's 4 slots"
        );
        // Another user gets the fourth; another port is another host.
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://h:8082/x"), Some(2000)),
        )
        .await;
        assert!(other.is_ok());
        let port = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://h:8080/x"), Some(1000)),
        )
        .await;
        assert!(port.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn one_user_cannot_take_every_slot_and_admins_are_exempt() {
        let limits = Arc::new(Limits::new(3, 8, 2));
        let _a = limits.acquire(&url("http://a/1"), Some(1000)).await;
        let _b = limits.acquire(&url("http://b/1"), Some(1000)).await;
        let third = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.acquire(&url("http://c/1"), Some(1000)).await })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "uid 1000 is at its cap");
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://c/2"), Some(2000)),
        )
        .await;
        assert!(other.is_ok(), "another user gets the last overall slot");
        drop(other);
        let admin = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            limits.acquire(&url("http://d/1"), None),
        )
        .await;
        assert!(admin.is_ok(), "an admin is not held by any user's cap");
        third.abort();
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limits = Limits::new(4, 1, 1);
        for i in 0..50 {
            drop(
                limits
                    .acquire(&url(&format!("http://host{i}/x")), Some(i))
                    .await,
            );
        }
        let uids = limits.uids.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(uids.len() <= 1, "{} uids kept", uids.len());
        drop(uids);
        let hosts = limits.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(hosts.len() <= 1, "{} hosts kept", hosts.len());
    }
}
