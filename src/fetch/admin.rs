//! The cache's upkeep, for admins and the daemon's timer: leases, garbage
//! collection and verification. Disk work runs on blocking threads.

use std::sync::Arc;

use super::{FetchError, Fetcher, Shared};
use crate::digest::Digest;
use crate::store::{Blob, Corrupt, Store, StoreError};

/// What a garbage collection did (or would do).
#[derive(Debug, Clone)]
pub struct GcReport {
    /// The assets evicted.
    pub evicted: Vec<Blob>,
    /// Lease pins dropped because they lapsed.
    pub lapsed_pins: usize,
}

/// What a verification found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub checked: usize,
    /// Those that did not match, now in quarantine.
    pub corrupt: Vec<Corrupt>,
}

impl Fetcher {
    /// Drops every pin of `lease`; returns how many assets it held.
    pub async fn release(&self, lease: String) -> Result<usize, FetchError> {
        self.blocking(move |store| store.release(&lease)).await
    }

    /// Drops lapsed pins, then evicts until the cache is within its limits
    /// (never leased assets, never ones being fetched). With `dry_run`,
    /// only reports what would go.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, FetchError> {
        let keep = self.flights.running();
        let policy = self.shared.options.evict;
        self.blocking(move |store| {
            let lapsed_pins = if dry_run { 0 } else { store.sweep_lapsed()? };
            let evicted = store.evict(&policy, &keep, dry_run)?;
            Ok(GcReport {
                evicted,
                lapsed_pins,
            })
        })
        .await
    }

    /// Re-hashes `digest`, or every asset; corrupt blobs go to quarantine.
    pub async fn verify(&self, digest: Option<Digest>) -> Result<VerifyReport, FetchError> {
        self.blocking(move |store| {
            let digests = match digest {
                Some(d) => vec![d],
                None => store.digests()?,
            };
            let mut corrupt = Vec::new();
            for digest in &digests {
                corrupt.extend(store.verify(digest)?);
            }
            Ok(VerifyReport {
                checked: digests.len(),
                corrupt,
            })
        })
        .await
    }

    /// Runs `f` on the store on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, FetchError> {
        let shared: Arc<Shared> = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.store))
            .await
            .map_err(|_| FetchError::Panicked { what: "store" })?
            .map_err(FetchError::Store)
    }
}
