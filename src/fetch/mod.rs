//! Fetch: joins sources to the store, one transfer per digest.
//!
//! A fetch answers from the cache when it can, without touching any source.
//! Otherwise it joins the transfer of that digest if one is running
//! (single flight, whatever the URLs) or starts one. A transfer runs as its
//! own task while at least one caller waits: when the last caller goes away,
//! the task is cancelled and its temp file removed. A transfer tries the URL
//! and then each mirror; on each it retries transient failures with
//! backoff, resuming from the bytes already written and hashed
//! ([`transfer`]).
//!
//! Deletes are refused while a transfer of the digest runs, under the same
//! lock that starts transfers, so a delete cannot race a fetch.

mod admin;
mod flight;
mod limits;
mod prewarm;
mod transfer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::digest::Digest;
use crate::source::{SourceError, Sources};
use crate::store::{Blob, EvictPolicy, Store, StoreError};
pub use admin::{GcReport, VerifyReport};
use flight::{Flights, State};
use limits::Limits;
pub use prewarm::{DEFAULT_CONCURRENCY as DEFAULT_PREWARM_CONCURRENCY, PrewarmEvent, PrewarmKind};

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
    /// The source declares a size over the limit; no body was read.
    #[error("{url} declares {size} bytes, over the size limit of {limit} bytes")]
    DeclaredTooLarge {
        /// The URL.
        url: String,
        /// The declared size (for HTTP, `Content-Length`).
        size: u64,
        /// The limit that applies.
        limit: u64,
    },
    /// The source declares a size other than the request's; no body was read.
    #[error("size mismatch: expected {expected} bytes, {url} declares {declared}")]
    DeclaredSizeMismatch {
        /// The URL.
        url: String,
        /// The request's `size`.
        expected: u64,
        /// What the source declares.
        declared: u64,
    },
    /// The cached asset's size differs from the request's.
    #[error("size mismatch: expected {expected} bytes, cached {digest} has {actual}")]
    CachedSizeMismatch {
        /// The digest.
        digest: Digest,
        /// The request's `size`.
        expected: u64,
        /// The cached file's size.
        actual: u64,
    },
    /// No bytes arrived for too long.
    #[error("{url}: no bytes for {secs:.1} s (stalled)")]
    Stalled {
        /// The URL.
        url: String,
        /// The stall timeout.
        secs: f64,
    },
    /// The asset is not in the cache.
    #[error("{digest} is not cached")]
    NotCached {
        /// The digest.
        digest: Digest,
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
    /// The shared transfer this caller waited on failed.
    #[error(transparent)]
    Transfer(Arc<FetchError>),
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

/// What a caller wants on this node.
#[derive(Debug, Clone)]
pub struct Want {
    /// Where to get the bytes first.
    pub url: String,
    /// More URLs for the same bytes, tried in order when one fails.
    pub mirrors: Vec<String>,
    /// What the bytes must hash to.
    pub digest: Digest,
    /// Their exact size, when the caller knows it.
    pub size: Option<u64>,
    /// The caller's own size limit, when lower than the daemon's.
    pub max_size: Option<u64>,
    /// The lease to pin the asset for, once it is cached.
    pub lease: Option<Lease>,
}

/// A caller's pin on what it fetched.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The caller-chosen name (a sandbox id, say).
    pub name: String,
    /// How long the pin holds by itself; `None` until released.
    pub ttl: Option<Duration>,
}

impl Want {
    fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.mirrors.iter().map(String::as_str))
    }
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
    /// The URL being read, or "" while waiting for a transfer slot.
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

/// The daemon's fetch policy.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The largest asset, in bytes; requests may only lower it.
    pub max_size: u64,
    /// Transfers running at once; the rest wait in arrival order.
    pub max_transfers: usize,
    /// Transfers running at once against one host.
    pub max_per_host: usize,
    /// Tries per URL before moving to the next mirror.
    pub attempts: u32,
    /// No bytes for this long counts as a failure (and is retried).
    pub stall_timeout: Duration,
    /// Free space to keep on the store's file system, in bytes.
    pub reserve_free: u64,
    /// When to evict.
    pub evict: EvictPolicy,
}

/// What every transfer shares.
struct Shared {
    store: Arc<Store>,
    sources: Sources,
    options: FetchOptions,
    limits: Limits,
}

/// Fetches assets into the store. Shared by every request handler.
pub struct Fetcher {
    shared: Arc<Shared>,
    flights: Arc<Flights>,
}

/// A fetch that is waiting on a transfer: its progress, then its result.
/// Dropping it leaves the transfer; the last one to leave cancels it.
pub struct Waiting {
    want: Want,
    limit: u64,
    started: Instant,
    state: watch::Receiver<State>,
    shared: Arc<Shared>,
    /// Keeps the transfer alive while this caller waits.
    _flight: Arc<flight::Flight>,
}

/// How a fetch begins: answered from the cache, or waiting on a transfer.
pub enum Started {
    /// Cached already.
    Hit(Fetched),
    /// Waiting on a transfer (new or joined).
    Waiting(Waiting),
}

impl Fetcher {
    /// A fetcher writing into `store`, reading from `sources`.
    pub fn new(store: Arc<Store>, sources: Sources, options: FetchOptions) -> Fetcher {
        let limits = Limits::new(options.max_transfers, options.max_per_host);
        let shared = Shared {
            store,
            sources,
            options,
            limits,
        };
        Fetcher {
            shared: Arc::new(shared),
            flights: Arc::new(Flights::default()),
        }
    }

    /// The store, for read-only admin calls.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Makes sure `want` is cached and waits for it.
    pub async fn fetch(&self, want: Want) -> Result<Fetched, FetchError> {
        match self.start(want)? {
            Started::Hit(fetched) => Ok(fetched),
            Started::Waiting(waiting) => waiting.finish().await,
        }
    }

    /// Begins a fetch: validates every URL, answers a hit, or joins or starts
    /// the digest's transfer. Errors here change nothing on disk.
    pub fn start(&self, want: Want) -> Result<Started, FetchError> {
        let started = Instant::now();
        for url in want.urls() {
            self.shared
                .sources
                .resolve(url)
                .map_err(FetchError::Source)?;
        }
        // An asset of unknown size is also cut off where it could never fit
        // the cache, rather than committed and evicted at once.
        let limit = want
            .max_size
            .map_or(self.shared.options.max_size, |m| {
                m.min(self.shared.options.max_size)
            })
            .min(self.shared.options.evict.max_bytes.unwrap_or(u64::MAX));
        let shared = self.shared.clone();
        let flights = self.flights.clone();
        let joined = self.flights.join_or_start(want.digest, || {
            match shared.store.stat(&want.digest).map_err(FetchError::Store)? {
                Some(blob) => Ok(Err(blob)),
                None => Ok(Ok(transfer::spawn(
                    shared.clone(),
                    flights,
                    want.clone(),
                    limit,
                ))),
            }
        })?;
        match joined {
            Err(blob) => {
                let fetched = check_blob(&want, blob, limit, true)
                    .and_then(|f| self.shared.record_use(&want, f));
                log_outcome(&want, &fetched, started);
                fetched.map(Started::Hit)
            }
            Ok((flight, state)) => Ok(Started::Waiting(Waiting {
                want,
                limit,
                started,
                state,
                shared: self.shared.clone(),
                _flight: flight,
            })),
        }
    }

    /// Deletes a cached asset, returning its size. Errors: [`FetchError::NotCached`],
    /// [`FetchError::InProgress`] while a transfer of it runs.
    pub fn delete(&self, digest: &Digest, force: bool) -> Result<u64, FetchError> {
        self.flights.unless_running(*digest, || {
            match self
                .shared
                .store
                .delete(digest, force)
                .map_err(FetchError::Store)?
            {
                Some(size) => Ok(size),
                None => Err(FetchError::NotCached { digest: *digest }),
            }
        })
    }
}

impl Waiting {
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

    /// Waits for the transfer's outcome, checked against this caller's own
    /// size and limit, and logs it.
    pub async fn finish(mut self) -> Result<Fetched, FetchError> {
        let outcome = match self.state.wait_for(|s| s.outcome.is_some()).await {
            Ok(state) => state.outcome.clone(),
            Err(_) => None,
        };
        let result = match outcome {
            Some(Ok(blob)) => check_blob(&self.want, blob, self.limit, false)
                .and_then(|f| self.shared.record_use(&self.want, f)),
            Some(Err(e)) => Err(FetchError::Transfer(e)),
            None => Err(FetchError::Lost {
                digest: self.want.digest,
            }),
        };
        log_outcome(&self.want, &result, self.started);
        result
    }
}

impl Shared {
    /// Notes a caller's use of `fetched`: last use, its URL, its lease.
    fn record_use(&self, want: &Want, fetched: Fetched) -> Result<Fetched, FetchError> {
        // The transfer recorded a new asset durably; a hit is a cheap touch,
        // and it only orders eviction: a failure to record it is logged.
        if fetched.cache_hit
            && let Err(e) = self.store.used(&fetched.blob, &want.url, false)
        {
            tracing::warn!(digest = %want.digest, error = %e, "recording a use failed");
        }
        if let Some(lease) = &want.lease {
            let expires = lease.ttl.map(|ttl| {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                crate::store::now_ms().saturating_add(ms)
            });
            self.store
                .pin(&want.digest, &lease.name, expires)
                .map_err(FetchError::Store)?;
        }
        Ok(fetched)
    }
}

/// Checks a cached or freshly fetched blob against one caller's request.
fn check_blob(want: &Want, blob: Blob, limit: u64, cache_hit: bool) -> Result<Fetched, FetchError> {
    if let Some(expected) = want.size
        && expected != blob.size
    {
        return Err(FetchError::CachedSizeMismatch {
            digest: want.digest,
            expected,
            actual: blob.size,
        });
    }
    if blob.size > limit {
        return Err(FetchError::RequestTooLarge {
            size: blob.size,
            limit,
        });
    }
    Ok(Fetched { blob, cache_hit })
}

/// One line per fetch call: digest, URL, bytes, time, rate, outcome.
fn log_outcome(want: &Want, result: &Result<Fetched, FetchError>, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(f) => tracing::info!(
            digest = %want.digest,
            url = %crate::source::redacted_str(&want.url),
            bytes = f.blob.size,
            secs = format_args!("{secs:.3}"),
            mb_per_s = format_args!("{:.1}", f.blob.size as f64 / secs.max(1e-9) / 1e6),
            outcome = if f.cache_hit { "hit" } else { "fetched" },
            "fetch"
        ),
        Err(e) => tracing::warn!(
            digest = %want.digest,
            url = %crate::source::redacted_str(&want.url),
            secs = format_args!("{secs:.3}"),
            outcome = "failed",
            error = %e,
            "fetch"
        ),
    }
}
