//! Fetch: joins a source to the store, under the daemon's limits.
//!
//! A fetch first answers from the cache when it can, without touching the
//! source; otherwise it opens the source, refuses a declared size that breaks
//! the limits before reading the body, and streams the body into a store
//! [`Ingest`](crate::store::Ingest). On every failure the temp file is removed
//! before the error is returned; if the caller goes away (the future is
//! dropped), the ingest removes it moments later.
//!
//! Fetches register the digest they work on, so an admin's delete cannot
//! race a fetch of the same digest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_stream::StreamExt as _;

use crate::digest::Digest;
use crate::source::{SourceError, Sources};
use crate::store::{Blob, Store, StoreError};

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
    /// The asset is not in the cache.
    #[error("{digest} is not cached")]
    NotCached {
        /// The digest.
        digest: Digest,
    },
    /// A fetch of this digest is running, so it cannot be deleted now.
    #[error("{digest} is being fetched; delete it after the fetch ends")]
    InProgress {
        /// The digest.
        digest: Digest,
    },
}

/// What a caller wants on this node.
#[derive(Debug, Clone)]
pub struct Want {
    /// Where to get the bytes.
    pub url: String,
    /// What the bytes must hash to.
    pub digest: Digest,
    /// Their exact size, when the caller knows it.
    pub size: Option<u64>,
    /// The caller's own size limit, when lower than the daemon's.
    pub max_size: Option<u64>,
}

/// A fetched (or already cached) asset.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The asset on disk.
    pub blob: Blob,
    /// True when it was already cached and no source was contacted.
    pub cache_hit: bool,
}

/// Fetches assets into the store. Shared by every request handler.
pub struct Fetcher {
    store: Arc<Store>,
    sources: Sources,
    /// The daemon's size limit in bytes; requests may only lower it.
    max_size: u64,
    /// Fetches in progress per digest; guards deletes (see module docs).
    /// A std mutex: it is never held across an await.
    in_flight: Mutex<HashMap<Digest, usize>>,
}

impl Fetcher {
    /// A fetcher writing into `store`, reading from `sources`, with a size
    /// limit of `max_size` bytes.
    pub fn new(store: Arc<Store>, sources: Sources, max_size: u64) -> Fetcher {
        Fetcher {
            store,
            sources,
            max_size,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The store, for read-only admin calls.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes sure `want` is cached, and logs one line with the outcome.
    pub async fn fetch(&self, want: &Want) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        let result = self.fetch_inner(want).await;
        let secs = started.elapsed().as_secs_f64();
        match &result {
            Ok(f) => tracing::info!(
                digest = %want.digest,
                url = %want.url,
                bytes = f.blob.size,
                secs = format_args!("{secs:.3}"),
                mb_per_s = format_args!("{:.1}", f.blob.size as f64 / secs.max(1e-9) / 1e6),
                outcome = if f.cache_hit { "hit" } else { "fetched" },
                "fetch"
            ),
            Err(e) => tracing::warn!(
                digest = %want.digest,
                url = %want.url,
                secs = format_args!("{secs:.3}"),
                outcome = "failed",
                error = %e,
                "fetch"
            ),
        }
        result
    }

    /// Deletes a cached asset, returning its size. Errors: [`FetchError::NotCached`],
    /// [`FetchError::InProgress`] while a fetch of it runs.
    pub fn delete(&self, digest: &Digest) -> Result<u64, FetchError> {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight.contains_key(digest) {
            return Err(FetchError::InProgress { digest: *digest });
        }
        // INVARIANT: the lock is held across the unlink, so no fetch can
        // begin (and see a hit) between the check and the removal.
        match self.store.delete(digest).map_err(FetchError::Store)? {
            Some(size) => Ok(size),
            None => Err(FetchError::NotCached { digest: *digest }),
        }
    }

    async fn fetch_inner(&self, want: &Want) -> Result<Fetched, FetchError> {
        let (url, source) = self
            .sources
            .resolve(&want.url)
            .map_err(FetchError::Source)?;
        let limit = want
            .max_size
            .map_or(self.max_size, |m| m.min(self.max_size));
        let _guard = InFlight::enter(&self.in_flight, want.digest);
        if let Some(blob) = self.store.stat(&want.digest).map_err(FetchError::Store)? {
            return self.hit(want, blob, limit);
        }
        if let Some(size) = want.size
            && size > limit
        {
            return Err(FetchError::RequestTooLarge { size, limit });
        }
        let mut opened = source.open(&url).await.map_err(FetchError::Source)?;
        if let Some(declared) = opened.size {
            check_declared(want, declared, limit)?;
        }
        let mut ingest = self
            .store
            .ingest(want.digest, want.size, limit)
            .map_err(FetchError::Store)?;
        let streamed = async {
            while let Some(chunk) = opened.body.next().await {
                let chunk = chunk.map_err(FetchError::Source)?;
                ingest.write(chunk).await.map_err(FetchError::Store)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            ingest.abort().await;
            return Err(e);
        }
        let blob = ingest.commit().await.map_err(FetchError::Store)?;
        Ok(Fetched {
            blob,
            cache_hit: false,
        })
    }

    fn hit(&self, want: &Want, blob: Blob, limit: u64) -> Result<Fetched, FetchError> {
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
        Ok(Fetched {
            blob,
            cache_hit: true,
        })
    }
}

/// Refuses a declared size over the limit or other than the request's.
fn check_declared(want: &Want, declared: u64, limit: u64) -> Result<(), FetchError> {
    if let Some(expected) = want.size
        && expected != declared
    {
        return Err(FetchError::DeclaredSizeMismatch {
            url: want.url.clone(),
            expected,
            declared,
        });
    }
    if declared > limit {
        return Err(FetchError::DeclaredTooLarge {
            url: want.url.clone(),
            size: declared,
            limit,
        });
    }
    Ok(())
}

/// Registers one fetch of a digest for as long as it lives.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<Digest, usize>>,
    digest: Digest,
}

impl<'a> InFlight<'a> {
    fn enter(map: &'a Mutex<HashMap<Digest, usize>>, digest: Digest) -> InFlight<'a> {
        *map.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest)
            .or_default() += 1;
        InFlight { map, digest }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.digest);
            }
        }
    }
}
