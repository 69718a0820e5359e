//! Single flight: at most one transfer per digest and user, shared fairly
//! by its callers.
//!
//! Flights are per user (the uid of the caller that starts one): callers of
//! one user share a transfer, another user's fetch of the same digest runs
//! its own. So no user can hold up another's fetch with a source that
//! trickles, or with transfers queued behind its own per-user slots; the
//! price is one transfer per user fetching an asset at the same moment
//! (nodes run their runtimes as one or a few users). The commit of the
//! second to finish finds the blob in place and keeps it.
//!
//! Each caller takes a [`Seat`] on the digest's [`Flight`]. The flight's
//! [`Terms`] are the union of its live callers' requests: their URLs in the
//! order they arrived (a joiner's are tried after the ones before them), the
//! most permissive size limit among them, and an expected size only when
//! every live caller gave the same one. The transfer reads the terms as it
//! goes, so a joiner's URL or larger limit counts from the moment it joins,
//! and a caller that leaves stops counting. A transfer that has run out of
//! URLs closes its terms under the same lock a joiner takes, so a joiner
//! either gets its URLs tried or starts a flight of its own: no caller is
//! failed by a URL it did not give.
//!
//! The registry holds weak references: a transfer lives exactly as long as
//! some caller holds a seat; dropping the last one aborts the task (and with
//! it the ingest, which removes its temp file). The registry's lock is held
//! for map updates only, never across I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::Caller;
use super::{FetchError, Progress};
use crate::digest::Digest;
use crate::source::{Access, SourceUrl};
use crate::store::Blob;

/// A URL remembers who gave it: a source reads it with the giver's access,
/// never with another caller's.
impl From<Caller> for Access {
    fn from(caller: Caller) -> Access {
        Access {
            admin: caller.admin,
            uid: caller.uid,
            gid: caller.gid,
        }
    }
}

/// URLs one transfer takes from all its callers together: a caller bringing
/// more starts a transfer of its own rather than making everyone wait
/// behind its list.
const MAX_URLS: usize = 64;

/// A transfer's state, as its callers see it.
#[derive(Debug, Default)]
pub(super) struct State {
    pub progress: Progress,
    /// Set once, when the transfer ends.
    pub outcome: Option<Result<Blob, Arc<FetchError>>>,
    /// Each URL given up on, in order, with why: a caller is told of the
    /// last failure among the URLs it gave, not of another caller's.
    pub failed: Vec<(SourceUrl, Arc<FetchError>)>,
}

/// One caller's part of the terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CallerTerms {
    /// The size the caller expects, if it said.
    pub size: Option<u64>,
    /// The most bytes the caller accepts.
    pub limit: u64,
    /// Connections the caller allows for pieces (`None`: the daemon's).
    pub connections: Option<usize>,
}

/// What a shared transfer runs under: the union of its live callers'
/// requests.
#[derive(Debug, Default)]
pub(super) struct Terms {
    /// Each URL with the access of the caller who gave it. The same URL
    /// from an admin and from another caller is kept twice: one's refusal
    /// must not fail the other, nor one's access read for the other.
    urls: Vec<(SourceUrl, Access)>,
    callers: HashMap<u64, CallerTerms>,
    /// No more URLs will be taken: the transfer has tried them all (or
    /// ended), so a later caller must start a flight of its own.
    closed: bool,
    /// Counts joins, so the transfer can tell whether its callers changed.
    generation: u64,
}

impl Terms {
    /// The most permissive limit among the live callers (0 with none: the
    /// transfer is being cancelled then).
    pub fn limit(&self) -> u64 {
        self.callers.values().map(|c| c.limit).max().unwrap_or(0)
    }

    /// Connections for pieces: the most any live caller allows (`None`,
    /// the daemon's own, when one of them left it to the daemon).
    pub fn connections(&self) -> Option<usize> {
        let mut most = Some(0);
        for caller in self.callers.values() {
            most = match (most, caller.connections) {
                (Some(m), Some(c)) => Some(m.max(c)),
                _ => None,
            };
        }
        most.filter(|&n| n > 0)
    }

    /// The size every live caller expects, if they all gave the same one.
    pub fn size(&self) -> Option<u64> {
        let mut sizes = self.callers.values().map(|c| c.size);
        let first = sizes.next()??;
        sizes.all(|s| s == Some(first)).then_some(first)
    }

    /// URL number `i` with its giver's access, or `None` when there is
    /// none: then the terms close.
    pub fn url(&mut self, i: usize) -> Option<(SourceUrl, Access)> {
        let url = self.urls.get(i).cloned();
        if url.is_none() {
            self.closed = true;
        }
        url
    }

    /// Changes with every caller that joins.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes callers again: the transfer goes around its URLs once more for
    /// callers who joined after a failure that depended on the terms.
    pub fn reopen(&mut self) {
        self.closed = false;
    }

    /// Takes no more callers: the transfer has ended.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Adds a caller and the URLs it brings that are not there yet; false
    /// when closed, or when its URLs would take the list past [`MAX_URLS`].
    fn join(&mut self, id: u64, terms: CallerTerms, urls: &[SourceUrl], access: Access) -> bool {
        let has = |urls: &[(SourceUrl, Access)], url: &SourceUrl| {
            urls.iter()
                .any(|(u, a)| u == url && a.admin == access.admin)
        };
        let new = urls.iter().filter(|u| !has(&self.urls, u)).count();
        if self.closed || self.urls.len() + new > MAX_URLS {
            return false;
        }
        self.callers.insert(id, terms);
        self.generation += 1;
        for url in urls {
            if !has(&self.urls, url) {
                self.urls.push((url.clone(), access));
            }
        }
        true
    }
}

/// One running transfer.
pub(super) struct Flight {
    digest: Digest,
    id: u64,
    task: OnceLock<AbortHandle>,
    state: watch::Receiver<State>,
    terms: Arc<Mutex<Terms>>,
    /// The uid of the caller that started it.
    starter: u32,
    /// Fired by an admin's cancel: the transfer ends with `Cancelled`.
    cancel: CancellationToken,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.state.borrow().outcome.is_none() {
            tracing::info!(digest = %self.digest, "transfer cancelled: every caller left");
        }
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// A caller's place in a flight. Dropping it leaves: the caller's terms stop
/// counting, and the last seat to go cancels the transfer.
pub(super) struct Seat {
    flight: Arc<Flight>,
    caller: u64,
}

impl Seat {
    /// The flight's state, to watch.
    pub fn state(&self) -> watch::Receiver<State> {
        self.flight.state.clone()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        lock(&self.flight.terms).callers.remove(&self.caller);
    }
}

/// What a new flight needs to start its transfer.
pub(super) struct Launch {
    pub digest: Digest,
    pub id: u64,
    pub terms: Arc<Mutex<Terms>>,
    pub state: watch::Sender<State>,
    /// Fires when an admin cancels this transfer.
    pub cancel: CancellationToken,
}

/// A running transfer, as an admin sees it.
#[derive(Debug, Clone)]
pub struct TransferInfo {
    /// What it fetches.
    pub digest: Digest,
    /// Its URLs, redacted, in the order they are tried.
    pub urls: Vec<String>,
    /// How far it is.
    pub progress: super::Progress,
    /// Callers waiting on it.
    pub callers: usize,
    /// The uid that started it.
    pub started_by: u32,
}

/// The running transfers, by digest and the uid that started them.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<(Digest, u32), Weak<Flight>>>,
    next_id: AtomicU64,
}

/// How a caller got its seat.
pub(super) enum Joined {
    /// The digest turned out to be cached (committed since the caller looked).
    Cached(Blob),
    /// A seat on a running or new flight.
    Seat(Seat),
}

impl Flights {
    /// Takes a seat on the flight of `digest` that the caller's user
    /// started, with `terms` and `urls` (given by a caller with `access`),
    /// or starts a new flight: first `cached` is asked (under the registry's lock, so a
    /// transfer that just committed is seen), then `launch` spawns the
    /// transfer and returns its abort handle. Neither may do I/O.
    pub fn join_or_start(
        &self,
        digest: Digest,
        terms: CallerTerms,
        urls: &[SourceUrl],
        access: Access,
        cached: impl FnOnce() -> Option<Blob>,
        launch: impl FnOnce(Launch) -> AbortHandle,
    ) -> Joined {
        let caller = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (digest, access.uid);
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key).and_then(Weak::upgrade)
            && lock(&flight.terms).join(caller, terms, urls, access)
        {
            return Joined::Seat(Seat { flight, caller });
        }
        if let Some(blob) = cached() {
            return Joined::Cached(blob);
        }
        // Dead entries (every caller left) go whenever a flight starts.
        map.retain(|_, weak| weak.strong_count() > 0);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut fresh = Terms::default();
        fresh.join(caller, terms, urls, access);
        let terms_arc = Arc::new(Mutex::new(fresh));
        let (tx, rx) = watch::channel(State::default());
        let cancel = CancellationToken::new();
        let flight = Arc::new(Flight {
            digest,
            id,
            task: OnceLock::new(),
            state: rx,
            terms: terms_arc.clone(),
            starter: access.uid,
            cancel: cancel.clone(),
        });
        let task = launch(Launch {
            digest,
            id,
            terms: terms_arc,
            state: tx,
            cancel,
        });
        let _ = flight.task.set(task);
        map.insert(key, Arc::downgrade(&flight));
        Joined::Seat(Seat { flight, caller })
    }

    /// The transfers running (or waiting for a slot), by digest.
    pub fn list(&self) -> Vec<TransferInfo> {
        let live: Vec<Arc<Flight>> = lock(&self.map).values().filter_map(Weak::upgrade).collect();
        let mut all: Vec<TransferInfo> = live
            .iter()
            .map(|flight| {
                let terms = lock(&flight.terms);
                TransferInfo {
                    digest: flight.digest,
                    urls: terms
                        .urls
                        .iter()
                        .map(|(u, _)| u.redacted().to_owned())
                        .collect(),
                    progress: flight.state.borrow().progress.clone(),
                    callers: terms.callers.len(),
                    started_by: flight.starter,
                }
            })
            .collect();
        all.sort_by_key(|t| (t.digest, t.started_by));
        all
    }

    /// The live flights of `digest` (one per user fetching it).
    fn of(&self, digest: &Digest) -> Vec<Arc<Flight>> {
        lock(&self.map)
            .iter()
            .filter(|((d, _), _)| d == digest)
            .filter_map(|(_, weak)| weak.upgrade())
            .collect()
    }

    /// Cancels every transfer of `digest`; how many callers waited on them,
    /// or `None` when none runs.
    pub fn cancel(&self, digest: &Digest) -> Option<usize> {
        let flights = self.of(digest);
        if flights.is_empty() {
            return None;
        }
        let mut callers = 0;
        for flight in flights {
            callers += lock(&flight.terms).callers.len();
            flight.cancel.cancel();
        }
        Some(callers)
    }

    /// Whether a transfer of `digest` is running.
    pub fn is_running(&self, digest: &Digest) -> bool {
        !self.of(digest).is_empty()
    }

    /// The digests with a transfer running.
    pub fn running(&self) -> HashSet<Digest> {
        lock(&self.map)
            .iter()
            .filter(|(_, weak)| weak.strong_count() > 0)
            .map(|((digest, _), _)| *digest)
            .collect()
    }

    /// Forgets the ended flight `id` of `digest`, so later fetches look at
    /// the cache.
    pub fn finish(&self, digest: Digest, id: u64) {
        lock(&self.map).retain(|(d, _), weak| {
            *d != digest || weak.upgrade().is_some_and(|flight| flight.id != id)
        });
    }

    /// Entries in the registry, live or dead (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Locks `m`; a poisoned lock's data is still consistent here (every
/// critical section is a few plain assignments).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str) -> SourceUrl {
        SourceUrl::parse(&format!("http://h/{path}")).unwrap()
    }

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    const ANYONE: Access = Access {
        admin: false,
        uid: 4242,
        gid: 4242,
    };

    const OPEN: CallerTerms = CallerTerms {
        size: None,
        limit: 100,
        connections: None,
    };

    /// Starts or joins with a launch that spawns nothing (a dummy task).
    fn seat(flights: &Flights, terms: CallerTerms, urls: &[SourceUrl]) -> (Seat, Option<Launch>) {
        seat_as(flights, terms, urls, ANYONE)
    }

    fn seat_as(
        flights: &Flights,
        terms: CallerTerms,
        urls: &[SourceUrl],
        access: Access,
    ) -> (Seat, Option<Launch>) {
        let mut launched = None;
        let joined = flights.join_or_start(
            d(1),
            terms,
            urls,
            access,
            || None,
            |launch| {
                launched = Some(launch);
                tokio::spawn(std::future::pending::<()>()).abort_handle()
            },
        );
        match joined {
            Joined::Seat(seat) => (seat, launched),
            Joined::Cached(_) => panic!("nothing is cached"),
        }
    }

    #[tokio::test]
    async fn joiners_add_their_urls_after_the_ones_before() {
        let flights = Flights::default();
        let (_a, launch) = seat(&flights, OPEN, &[url("a"), url("m")]);
        let launch = launch.unwrap();
        let (_b, none) = seat(&flights, OPEN, &[url("b"), url("a")]);
        assert!(none.is_none(), "the second caller joins");
        let mut terms = lock(&launch.terms);
        let urls: Vec<_> = (0..).map_while(|i| terms.url(i)).map(|(u, _)| u).collect();
        assert_eq!(urls, vec![url("a"), url("m"), url("b")]);
    }

    #[tokio::test]
    async fn another_users_fetch_runs_its_own_transfer() {
        let flights = Flights::default();
        let (a, first) = seat(&flights, OPEN, &[url("slow")]);
        let other = Access {
            admin: false,
            uid: 4343,
            gid: 4343,
        };
        let (b, second) = seat_as(&flights, OPEN, &[url("good")], other);
        let second = second.expect("a flight of its own");
        let urls: Vec<_> = (0..)
            .map_while(|i| lock(&second.terms).url(i))
            .map(|(u, _)| u)
            .collect();
        assert_eq!(urls, vec![url("good")], "not behind the other user's URL");
        assert_eq!(flights.list().len(), 2);
        assert!(first.is_some());
        // A cancel by digest stops both.
        assert_eq!(flights.cancel(&d(1)), Some(2));
        drop((a, b));
        assert!(!flights.is_running(&d(1)));
    }

    #[test]
    fn a_url_keeps_the_access_of_who_gave_it() {
        let admin = Access {
            admin: true,
            uid: 0,
            gid: 0,
        };
        let mut terms = Terms::default();
        assert!(terms.join(1, OPEN, &[url("a")], ANYONE));
        assert!(terms.join(2, OPEN, &[url("a"), url("b")], admin));
        let other = Access { uid: 7, ..ANYONE };
        assert!(terms.join(3, OPEN, &[url("a")], other));
        let urls: Vec<_> = (0..).map_while(|i| terms.url(i)).collect();
        assert_eq!(
            urls,
            vec![(url("a"), ANYONE), (url("a"), admin), (url("b"), admin)],
            "an admin's copy of a URL is tried with the admin's access"
        );
    }

    #[tokio::test]
    async fn terms_take_the_most_permissive_limit_of_live_callers() {
        let flights = Flights::default();
        let low = CallerTerms {
            size: Some(10),
            limit: 10,
            connections: None,
        };
        let (a, launch) = seat(&flights, low, &[url("a")]);
        let terms = launch.unwrap().terms;
        assert_eq!(lock(&terms).limit(), 10);
        assert_eq!(lock(&terms).size(), Some(10));
        let (b, _) = seat(&flights, OPEN, &[url("a")]);
        assert_eq!(lock(&terms).limit(), 100);
        assert_eq!(lock(&terms).size(), None, "callers disagree on the size");
        drop(b);
        assert_eq!(
            lock(&terms).limit(),
            10,
            "a caller that left stops counting"
        );
        drop(a);
        assert_eq!(lock(&terms).limit(), 0);
    }

    #[tokio::test]
    async fn a_closed_flight_sends_a_joiner_to_a_new_one() {
        let flights = Flights::default();
        let (_a, launch) = seat(&flights, OPEN, &[url("a")]);
        let launch = launch.unwrap();
        assert!(lock(&launch.terms).url(1).is_none(), "out of URLs: closed");
        let (_b, second) = seat(&flights, OPEN, &[url("b")]);
        let second = second.expect("a new flight");
        assert_eq!(lock(&second.terms).url(0), Some((url("b"), ANYONE)));
    }

    #[tokio::test]
    async fn the_last_seat_leaving_cancels_and_dead_entries_go() {
        let flights = Flights::default();
        let (a, _) = seat(&flights, OPEN, &[url("a")]);
        let (b, _) = seat(&flights, OPEN, &[url("a")]);
        assert!(flights.is_running(&d(1)));
        drop(a);
        assert!(flights.is_running(&d(1)), "one caller still waits");
        drop(b);
        assert!(!flights.is_running(&d(1)));
        assert_eq!(flights.len(), 1, "dead until the next start");
        let joined = flights.join_or_start(
            d(2),
            OPEN,
            &[url("x")],
            ANYONE,
            || None,
            |_| tokio::spawn(std::future::pending::<()>()).abort_handle(),
        );
        assert_eq!(flights.len(), 1, "the dead entry went");
        drop(joined);
    }
}
