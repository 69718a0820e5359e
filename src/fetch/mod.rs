//! Fetch: the only door to the store, and the daemon's policy.
//!
//! A fetch answers from the cache when it can (memory only, no source
//! touched, no I/O unless a lease must be made durable). Otherwise it takes
//! a seat on the digest's transfer, starting one if none runs: one transfer
//! per digest, shared fairly by its callers ([`flight`]). A transfer runs as
//! its own task while at least one caller waits; it tries each URL in turn,
//! retrying transient failures with backoff and resuming from the bytes
//! already written and hashed ([`transfer`]). Each caller's own `size` and
//! `max_size` are judged on the result, and its lease is pinned before its
//! path is returned.
//!
//! Everything that touches the disk or `meta.redb` runs on tokio's blocking
//! pool; the registry of transfers is locked for map updates only. Tasks
//! (transfers, prewarms, upkeep) run under the daemon's task tracker and stop
//! when its cancellation token fires.
//!
//! Logging: a transfer logs its outcome once; a caller's own refusal is
//! logged where it is decided; hits are logged at debug.

mod admin;
mod flight;
mod limits;
mod prewarm;
mod ranged;
mod transfer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CacheConfig, FetchConfig};
use crate::digest::Digest;
use crate::source::{SourceError, SourceUrl, Sources};
use crate::store::{AssetInfo, Blob, Store, StoreError};
pub use admin::{GcReport, Stats, VerifyReport};
pub use flight::TransferInfo;
use flight::{CallerTerms, Flights, Joined, Seat, State};
use limits::Limits;
pub use prewarm::{DEFAULT_CONCURRENCY as DEFAULT_PREWARM_CONCURRENCY, PrewarmEvent, PrewarmKind};

/// Times a caller goes around again when the asset it found was evicted
/// (under free-space pressure) before its lease could pin it.
const PIN_ROUNDS: usize = 3;

/// A fetch failure.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source failed or refused.
    #[error(transparent)]
    Source(SourceError),
    /// The store failed, or the bytes broke a limit or did not verify.
    #[error(transparent)]
    Store(StoreError),
    /// The request's own size is over the limit.
    #[error("requested size {size} bytes is over the size limit of {limit} bytes")]
    RequestTooLarge {
        /// The request's `size`.
        size: u64,
        /// The limit that applies.
        limit: u64,
    },
    /// The asset is larger than this caller's limit.
    #[error("{digest} is {size} bytes, over the size limit of {limit} bytes")]
    AssetTooLarge {
        /// The digest.
        digest: Digest,
        /// The asset's size.
        size: u64,
        /// This caller's limit.
        limit: u64,
    },
    /// The source declares a size over the limit; no body was read.
    #[error("{url} declares {size} bytes, over the size limit of {limit} bytes")]
    DeclaredTooLarge {
        /// The URL, redacted.
        url: String,
        /// The declared size (for HTTP, `Content-Length`).
        size: u64,
        /// The limit that applies.
        limit: u64,
    },
    /// The source declares a size other than the request's; no body was read.
    #[error("size mismatch: expected {expected} bytes, {url} declares {declared}")]
    DeclaredSizeMismatch {
        /// The URL, redacted.
        url: String,
        /// The request's `size`.
        expected: u64,
        /// What the source declares.
        declared: u64,
    },
    /// The asset's size differs from the request's.
    #[error("size mismatch: expected {expected} bytes, {digest} has {actual}")]
    SizeMismatch {
        /// The digest.
        digest: Digest,
        /// The request's `size`.
        expected: u64,
        /// The asset's size.
        actual: u64,
    },
    /// No bytes arrived for too long.
    #[error("{url}: no bytes for {secs:.1} s (stalled)")]
    Stalled {
        /// The URL, redacted.
        url: String,
        /// The stall timeout.
        secs: f64,
    },
    /// Bytes arrived, but slower than the minimum rate.
    #[error(
        "{url}: {bytes} bytes in {secs:.1} s, below the minimum rate of {min_rate} bytes/s (stalled)"
    )]
    TooSlow {
        /// The URL, redacted.
        url: String,
        /// Bytes received in the window.
        bytes: u64,
        /// The window's length.
        secs: f64,
        /// The minimum rate, bytes a second.
        min_rate: u64,
    },
    /// One try took longer than the attempt timeout.
    #[error("{url}: the try took longer than --attempt-timeout ({secs:.0} s)")]
    AttemptTimedOut {
        /// The URL, redacted.
        url: String,
        /// The attempt timeout.
        secs: f64,
    },
    /// The asset is larger than the whole cache may be.
    #[error("{size} bytes can never fit in the cache (--max-cache-bytes {max})")]
    NeverFits {
        /// The asset's size.
        size: u64,
        /// The cache's cap.
        max: u64,
    },
    /// A transfer of this digest is running, so it cannot be deleted now.
    #[error("{digest} is being fetched; delete it after the fetch ends")]
    InProgress {
        /// The digest.
        digest: Digest,
    },
    /// The asset kept being evicted before its lease could pin it.
    #[error(
        "{digest} was evicted {PIN_ROUNDS} times before it could be leased: \
         the cache is short of free space"
    )]
    Evicted {
        /// The digest.
        digest: Digest,
    },
    /// A prewarm would take a user's queued and running prewarm assets past
    /// its cap; nothing of the batch was queued.
    #[error(
        "uid {uid} has {queued} prewarm assets queued or running; {asked} more would pass \
         the cap of {cap} (--max-prewarm-per-uid)"
    )]
    TooManyPrewarms {
        /// The user.
        uid: u32,
        /// Its assets queued or running.
        queued: usize,
        /// The assets of the refused batch.
        asked: usize,
        /// The cap.
        cap: usize,
    },
    /// The shared transfer this caller waited on failed.
    #[error(transparent)]
    Transfer(Arc<FetchError>),
    /// An admin cancelled the transfer.
    #[error("the transfer of {digest} was cancelled by an admin")]
    Cancelled {
        /// The digest.
        digest: Digest,
    },
    /// No transfer of this digest is running.
    #[error("no transfer of {digest} is running")]
    NoTransfer {
        /// The digest.
        digest: Digest,
    },
    /// The daemon is shutting down.
    #[error("assetd is shutting down")]
    ShuttingDown,
    /// A task of the daemon panicked.
    #[error("the {what} task panicked")]
    Panicked {
        /// What the task was doing.
        what: &'static str,
    },
    /// The transfer task ended without a result (it panicked).
    #[error("the transfer of {digest} ended without a result")]
    Lost {
        /// The digest.
        digest: Digest,
    },
}

impl FetchError {
    /// The error a shared transfer's failure stands for.
    pub fn root(&self) -> &FetchError {
        match self {
            FetchError::Transfer(inner) => inner.root(),
            other => other,
        }
    }
}

/// Who is asking, from the socket's peer credentials (never the pid alone:
/// pids are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller's user id.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The caller's process id, for logs.
    pub pid: Option<i32>,
    /// The caller's role, decided at the edge: an admin may change the
    /// cache and is exempt from per-user caps.
    pub admin: bool,
}

/// What a caller wants on this node, parsed at the edge.
#[derive(Debug, Clone)]
pub struct Want {
    /// What the bytes must hash to.
    pub digest: Digest,
    /// Where to get them, in order: the URL, then its mirrors. Never empty.
    pub urls: Vec<SourceUrl>,
    /// Their exact size, when the caller knows it.
    pub size: Option<u64>,
    /// The caller's own size limit, when lower than the daemon's.
    pub max_size: Option<u64>,
    /// Connections the caller allows for pieces (`None`: the daemon's).
    pub connections: Option<usize>,
    /// The lease to pin the asset for, once it is cached.
    pub lease: Option<Lease>,
    /// Who asks.
    pub caller: Caller,
}

/// A caller's pin on what it fetched.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The caller-chosen name (a sandbox id, say).
    pub name: String,
    /// How long the pin holds by itself; `None` until released.
    pub ttl: Option<Duration>,
}

/// A fetched (or already cached) asset.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The asset on disk.
    pub blob: Blob,
    /// True when it was already cached and no source was contacted.
    pub cache_hit: bool,
}

/// How far a transfer is.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Bytes received and accepted so far.
    pub done: u64,
    /// The whole size, when known.
    pub total: Option<u64>,
    /// The URL being read (redacted), or "" while waiting for a slot.
    pub source: String,
    /// When the transfer began.
    pub started: Option<Instant>,
}

impl Progress {
    /// Average bytes per second since the transfer began.
    pub fn rate(&self) -> f64 {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }
}

/// The daemon's lifetime, as the fetch layer sees it.
#[derive(Debug, Clone, Default)]
pub struct Lifetime {
    /// Fires at shutdown: transfers, prewarms and upkeep stop.
    pub token: CancellationToken,
    /// Every task the fetch layer starts, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// What every part of the fetch layer shares.
struct Inner {
    store: Arc<Store>,
    sources: Sources,
    fetch: FetchConfig,
    cache: CacheConfig,
    limits: Limits,
    flights: Flights,
    lifetime: Lifetime,
    /// Prewarm assets queued or running, per uid (non-admins only).
    prewarms: prewarm::Queued,
    metrics: Arc<crate::metrics::Metrics>,
    /// Pieces of ranged transfers in flight, daemon-wide.
    piece_slots: tokio::sync::Semaphore,
}

/// Fetches assets into the store and answers for it. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

/// A fetch that is waiting on a transfer: its progress, then its result.
/// Dropping it leaves the transfer; the last one to leave cancels it.
pub struct Waiting {
    want: Want,
    limit: u64,
    started: Instant,
    state: watch::Receiver<State>,
    fetcher: Fetcher,
    /// Keeps this caller's terms in the transfer while it waits.
    _seat: Seat,
}

/// How a fetch begins: answered from the cache, or waiting on a transfer.
pub enum Started {
    /// Cached already.
    Hit(Fetched),
    /// Waiting on a transfer (new or joined).
    Waiting(Waiting),
}

impl Fetcher {
    /// A fetcher writing into `store`, reading from `sources`, whose tasks
    /// live within `lifetime`.
    pub fn new(
        store: Store,
        sources: Sources,
        fetch: FetchConfig,
        cache: CacheConfig,
        lifetime: Lifetime,
    ) -> Fetcher {
        let limits = Limits::new(fetch.max_transfers, fetch.max_per_host, fetch.max_per_uid);
        let inner = Inner {
            store: Arc::new(store),
            sources,
            fetch,
            cache,
            limits,
            flights: Flights::default(),
            lifetime,
            prewarms: prewarm::Queued::default(),
            metrics: Arc::default(),
            piece_slots: tokio::sync::Semaphore::new(ranged::DAEMON_IN_FLIGHT),
        };
        Fetcher {
            inner: Arc::new(inner),
        }
    }

    /// The daemon's metrics, which the fetch layer keeps.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    /// Makes sure `want` is cached and waits for it.
    pub async fn fetch(&self, want: Want) -> Result<Fetched, FetchError> {
        match self.start(want).await? {
            Started::Hit(fetched) => Ok(fetched),
            Started::Waiting(waiting) => waiting.finish().await,
        }
    }

    /// Begins a fetch: checks every URL's scheme, answers a hit (pinning its
    /// lease), or takes a seat on the digest's transfer. Errors here change
    /// nothing on disk.
    pub async fn start(&self, want: Want) -> Result<Started, FetchError> {
        let source = want.source_kind();
        let started = self.start_once(want).await;
        match &started {
            Ok(Started::Hit(_)) => self.inner.metrics.fetch("hit", source),
            Ok(Started::Waiting(_)) => {}
            Err(e) => self.inner.note_failure(e, source),
        }
        started
    }

    /// [`Fetcher::start`], uncounted.
    async fn start_once(&self, want: Want) -> Result<Started, FetchError> {
        for url in &want.urls {
            self.inner
                .sources
                .resolve(url)
                .map_err(FetchError::Source)?;
        }
        let limit = self.inner.limit_for(&want);
        // The caller's own size against its own limits, before it joins a
        // transfer whose terms are shared.
        if let Some(size) = want.size {
            if let Some(max) = self.inner.cache.max_bytes()
                && size > max
            {
                return Err(FetchError::NeverFits { size, max });
            }
            if size > limit {
                return Err(FetchError::RequestTooLarge { size, limit });
            }
        }
        let started = Instant::now();
        for _ in 0..PIN_ROUNDS {
            let blob = match self.inner.store.lookup(&want.digest) {
                Some(blob) => blob,
                None => match self.join(&want, limit) {
                    Joined::Cached(blob) => blob,
                    Joined::Seat(seat) => {
                        return Ok(Started::Waiting(Waiting {
                            state: seat.state(),
                            want,
                            limit,
                            started,
                            fetcher: self.clone(),
                            _seat: seat,
                        }));
                    }
                },
            };
            if let Some(fetched) = self.settle(&want, blob, limit, true, started).await? {
                return Ok(Started::Hit(fetched));
            }
        }
        Err(FetchError::Evicted {
            digest: want.digest,
        })
    }

    /// Takes a seat on `want`'s transfer, starting one if none runs.
    fn join(&self, want: &Want, limit: u64) -> Joined {
        let terms = CallerTerms {
            size: want.size,
            limit,
            connections: want.connections,
        };
        let inner = &self.inner;
        let mut launched = false;
        let joined = inner.flights.join_or_start(
            want.digest,
            terms,
            &want.urls,
            want.caller.into(),
            || inner.store.lookup(&want.digest),
            |launch| {
                launched = true;
                transfer::spawn(self.inner.clone(), launch, want.caller)
            },
        );
        if matches!(joined, Joined::Seat(_)) && !launched {
            inner.metrics.joined();
        }
        joined
    }

    /// Judges `blob` against this caller's request and pins its lease:
    /// `Ok(None)` when it was evicted before the pin (go around again).
    async fn settle(
        &self,
        want: &Want,
        blob: Blob,
        limit: u64,
        cache_hit: bool,
        started: Instant,
    ) -> Result<Option<Fetched>, FetchError> {
        let result = match check_blob(want, blob, limit) {
            Err(e) => Err(e),
            Ok(blob) => self.pin(want, blob).await,
        };
        let (digest, uid, pid) = (&want.digest, want.caller.uid, want.caller.pid);
        match &result {
            Ok(Some(blob)) => {
                let secs = started.elapsed().as_secs_f64();
                tracing::debug!(%digest, uid, pid, bytes = blob.size, secs, cache_hit, "fetch");
            }
            Ok(None) => {
                tracing::info!(%digest, uid, pid, "evicted before its lease could pin it; fetching again");
            }
            // This caller's own refusal: logged here, once.
            Err(e) => tracing::info!(%digest, uid, pid, error = %e, "fetch refused"),
        }
        Ok(result?.map(|blob| Fetched { blob, cache_hit }))
    }

    /// Pins `want`'s lease on `blob` for its caller, if it has one;
    /// `Ok(None)` when the asset is no longer cached. A caller that is not
    /// an admin has its TTL cut to `cache.max_lease_ttl` and may hold at
    /// most `cache.max_leases_per_uid` pins ([`StoreError::TooManyLeases`])
    /// on at most `cache.max_leased_bytes_per_uid` ([`StoreError::TooMuchLeased`]);
    /// refused, the asset stays cached but unpinned.
    async fn pin(&self, want: &Want, blob: Blob) -> Result<Option<Blob>, FetchError> {
        let Some(lease) = &want.lease else {
            return Ok(Some(blob));
        };
        let caller = want.caller;
        let cache = &self.inner.cache;
        let ttl = match cache.max_lease_ttl.0 {
            max if caller.admin || max.is_zero() => lease.ttl,
            max => Some(lease.ttl.map_or(max, |ttl| ttl.min(max))),
        };
        let expires = ttl.map(|ttl| {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            crate::store::now_ms().saturating_add(ms)
        });
        let cap = (!caller.admin).then_some(crate::store::LeaseCap {
            pins: cache.max_leases_per_uid,
            bytes: cache.max_leased_bytes_per_uid,
        });
        let (digest, name) = (want.digest, lease.name.clone());
        let pinned = self
            .blocking(move |store| store.pin(&digest, &name, caller.uid, expires, cap))
            .await?;
        Ok(pinned.then_some(blob))
    }

    /// Runs `f` on the store on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, FetchError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| FetchError::Panicked { what: "store" })?
            .map_err(FetchError::Store)
    }

    /// One cached asset with its metadata ([`StoreError::NotCached`] if
    /// it is not). Memory only.
    pub fn stat(&self, digest: Digest) -> Result<AssetInfo, FetchError> {
        self.inner
            .store
            .info(&digest)
            .ok_or(FetchError::Store(StoreError::NotCached { digest }))
    }
}

impl Want {
    /// The kind of its first URL, for metrics.
    fn source_kind(&self) -> &'static str {
        self.urls
            .first()
            .map_or("other", |u| crate::metrics::source_kind(u.url()))
    }
}

/// Why a fetch was refused before any transfer, as a metrics label; `None`
/// for a failure of the transfer or of the node.
fn refusal_reason(err: &FetchError) -> Option<&'static str> {
    match err {
        FetchError::Source(SourceError::Denied { .. }) => Some("denied"),
        FetchError::Source(SourceError::InvalidUrl { .. })
        | FetchError::Source(SourceError::UnsupportedScheme { .. }) => Some("invalid"),
        FetchError::RequestTooLarge { .. }
        | FetchError::AssetTooLarge { .. }
        | FetchError::DeclaredTooLarge { .. }
        | FetchError::NeverFits { .. } => Some("too_large"),
        FetchError::TooManyPrewarms { .. }
        | FetchError::Store(StoreError::TooManyLeases { .. })
        | FetchError::Store(StoreError::TooMuchLeased { .. }) => Some("per_user_cap"),
        FetchError::Transfer(inner) => refusal_reason(inner),
        _ => None,
    }
}

impl Inner {
    /// Counts a fetch call that failed: a refusal by its reason.
    fn note_failure(&self, err: &FetchError, source: &'static str) {
        match refusal_reason(err) {
            Some(reason) => {
                self.metrics.fetch("refused", source);
                self.metrics.refusal(reason);
            }
            None => self.metrics.fetch("failed", source),
        }
    }

    /// The most bytes `want` may bring in: its own limit under the daemon's,
    /// and never more than the whole cache may hold (an asset of unknown
    /// size is cut off there rather than committed and evicted at once).
    fn limit_for(&self, want: &Want) -> u64 {
        let daemon = self.fetch.max_size.0;
        want.max_size
            .map_or(daemon, |m| m.min(daemon))
            .min(self.cache.max_bytes().unwrap_or(u64::MAX))
    }
}

impl Waiting {
    /// The failure to tell this caller: that of the last URL it gave itself
    /// that was tried, else the transfer's (a failure of this node).
    fn own_failure(&self, transfer: Arc<FetchError>) -> Arc<FetchError> {
        let state = self.state.borrow();
        state
            .failed
            .iter()
            .rev()
            .find(|(url, _)| self.want.urls.contains(url))
            .map_or(transfer, |(_, e)| e.clone())
    }

    /// The transfer's progress now.
    pub fn progress(&self) -> Progress {
        self.state.borrow().progress.clone()
    }

    /// True once the transfer has its outcome.
    pub fn is_done(&self) -> bool {
        // A closed channel means the transfer task died: `finish` says so.
        self.state.borrow().outcome.is_some() || self.state.has_changed().is_err()
    }

    /// Waits until the transfer's state changes.
    pub async fn changed(&mut self) {
        // An error means the transfer is gone; `is_done` now says so.
        let _ = self.state.changed().await;
    }

    /// Waits for the transfer's outcome, judged against this caller's own
    /// size and limit, with its lease pinned.
    pub async fn finish(self) -> Result<Fetched, FetchError> {
        let (source, inner) = (self.want.source_kind(), self.fetcher.inner.clone());
        let finished = self.finish_once().await;
        match &finished {
            Ok(f) => inner
                .metrics
                .fetch(if f.cache_hit { "hit" } else { "fetched" }, source),
            Err(e) => inner.note_failure(e, source),
        }
        finished
    }

    /// [`Waiting::finish`], uncounted.
    async fn finish_once(self) -> Result<Fetched, FetchError> {
        let mut waiting = self;
        for _ in 0..PIN_ROUNDS {
            let outcome = match waiting.state.wait_for(|s| s.outcome.is_some()).await {
                Ok(state) => state.outcome.clone(),
                Err(_) => None,
            };
            let blob = match outcome {
                Some(Ok(blob)) => blob,
                Some(Err(e)) => return Err(FetchError::Transfer(waiting.own_failure(e))),
                None => {
                    return Err(FetchError::Lost {
                        digest: waiting.want.digest,
                    });
                }
            };
            let Waiting {
                want,
                limit,
                started,
                fetcher,
                ..
            } = waiting;
            if let Some(f) = fetcher.settle(&want, blob, limit, false, started).await? {
                return Ok(f);
            }
            // Evicted before the pin: this caller fetches again.
            waiting = match fetcher.start_once(want).await? {
                Started::Hit(fetched) => return Ok(fetched),
                Started::Waiting(w) => w,
            };
        }
        Err(FetchError::Evicted {
            digest: waiting.want.digest,
        })
    }
}

/// Checks a cached or freshly fetched blob against one caller's request.
fn check_blob(want: &Want, blob: Blob, limit: u64) -> Result<Blob, FetchError> {
    if let Some(expected) = want.size
        && expected != blob.size
    {
        return Err(FetchError::SizeMismatch {
            digest: want.digest,
            expected,
            actual: blob.size,
        });
    }
    if blob.size > limit {
        return Err(FetchError::AssetTooLarge {
            digest: want.digest,
            size: blob.size,
            limit,
        });
    }
    Ok(blob)
}
