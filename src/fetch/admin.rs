//! The cache's upkeep, for admins and the daemon's timer: listing, deletes,
//! leases, garbage collection, verification and the flush of last-use
//! times. Disk and redb work runs on the blocking pool.

use std::time::Duration;

use super::{Caller, FetchError, Fetcher, Inner};
use crate::config::MinFree;
use crate::digest::Digest;
use crate::store::{AssetInfo, Blob, Corrupt, EvictPolicy, ListQuery};

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

/// Time between flushes of last-use times to `meta.redb`: what a crash may
/// lose of the LRU order, and never data.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

impl Inner {
    /// Eviction as the cache's configuration sets it.
    pub(super) fn evict_policy(&self) -> EvictPolicy {
        let (min_free_bytes, min_free_percent) = match self.cache.min_free {
            MinFree::None => (0, 0),
            MinFree::Bytes(n) => (n, 0),
            MinFree::Percent(p) => (0, p),
        };
        EvictPolicy {
            max_bytes: self.cache.max_bytes(),
            min_free_bytes,
            min_free_percent,
            grace: self.cache.unleased_grace.0,
        }
    }
}

/// What the cache holds and the transfers are doing: [`Fetcher::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Assets cached.
    pub assets: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Transfers reading from a source.
    pub running: usize,
    /// Transfers waiting for a slot.
    pub waiting: usize,
}

impl Fetcher {
    /// Assets matching `query`, in digest order. Memory only.
    pub fn list(&self, query: &ListQuery) -> Vec<AssetInfo> {
        self.inner.store.list(query)
    }

    /// Deletes a cached asset, returning its size. Errors:
    /// [`StoreError::NotCached`], [`StoreError::Leased`] unless `force`, and
    /// [`FetchError::InProgress`] while a transfer of it runs.
    pub async fn delete(&self, digest: Digest, force: bool) -> Result<u64, FetchError> {
        if self.inner.flights.is_running(&digest) {
            return Err(FetchError::InProgress { digest });
        }
        self.blocking(move |store| store.delete(&digest, force))
            .await
    }

    /// The transfers running or waiting for a slot. Memory only.
    pub fn transfers(&self) -> Vec<super::TransferInfo> {
        self.inner.flights.list()
    }

    /// Cancels the transfer of `digest`: its callers get
    /// [`FetchError::Cancelled`] and its temp file goes. Returns how many
    /// callers waited; [`FetchError::NoTransfer`] when none runs.
    pub fn cancel(&self, digest: Digest) -> Result<usize, FetchError> {
        self.inner
            .flights
            .cancel(&digest)
            .ok_or(FetchError::NoTransfer { digest })
    }

    /// Drops `caller`'s pins of `lease` (an admin's: everyone's pins of
    /// that name); returns how many. A lease name is scoped to its owner:
    /// other users' pins of the same name are neither touched nor counted.
    pub async fn release(&self, lease: String, caller: Caller) -> Result<usize, FetchError> {
        let owner = (!caller.admin).then_some(caller.uid);
        self.blocking(move |store| store.release(&lease, owner))
            .await
    }

    /// Drops lapsed pins, then evicts until the cache is within its limits
    /// (never leased assets, never ones being fetched, not ones handed out
    /// within the grace unless free space is short). With `dry_run`, only
    /// reports what would go.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, FetchError> {
        let keep = self.inner.flights.running();
        let policy = self.inner.evict_policy();
        let report = self
            .blocking(move |store| {
                let lapsed_pins = if dry_run { 0 } else { store.sweep_lapsed()? };
                let evicted = store.evict(&policy, &keep, dry_run)?;
                Ok(GcReport {
                    evicted,
                    lapsed_pins,
                })
            })
            .await?;
        if !dry_run {
            let bytes = report.evicted.iter().map(|b| b.size).sum();
            self.inner.metrics.evicted(report.evicted.len(), bytes);
        }
        Ok(report)
    }

    /// Re-hashes `digest`, or every asset; corrupt blobs go to quarantine.
    pub async fn verify(&self, digest: Option<Digest>) -> Result<VerifyReport, FetchError> {
        let report = self
            .blocking(move |store| {
                let digests = match digest {
                    Some(d) => vec![d],
                    None => store.digests(),
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
            .await?;
        self.inner.metrics.quarantined(report.corrupt.len());
        Ok(report)
    }

    /// Writes last-use times noted since the last flush; returns how many.
    pub async fn flush_uses(&self) -> Result<usize, FetchError> {
        self.blocking(|store| store.flush_uses()).await
    }

    /// Whether the metadata store takes writes: calls that pin, release or
    /// record fail while it does not. Memory only.
    pub fn metadata_writable(&self) -> bool {
        self.inner.store.meta_writable()
    }

    /// The daemon is stopping: transfers cut off from now on keep what
    /// arrived, to be resumed after the restart.
    pub fn keep_partials(&self) {
        self.inner.store.keep_partials();
    }

    /// What the cache holds and the transfers are doing now. Memory only.
    pub fn stats(&self) -> Stats {
        let (assets, bytes) = self.inner.store.totals();
        let (waiting, running) = self.inner.limits.counts();
        Stats {
            assets,
            bytes,
            running,
            waiting,
        }
    }

    /// The daemon's upkeep until shutdown: last-use times flushed every few
    /// seconds, garbage collected every `gc_interval`, and a last flush at
    /// the end. Each failure is logged here, where it is handled.
    pub async fn upkeep(&self) {
        let token = self.inner.lifetime.token.clone();
        let mut flush_failing = false;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut gc = tokio::time::interval(self.inner.cache.gc_interval.0);
        for tick in [&mut flush, &mut gc] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = flush.tick() => self.log_flush(&mut flush_failing).await,
                _ = gc.tick() => match self.gc(false).await {
                    Ok(report) if !report.evicted.is_empty() || report.lapsed_pins > 0 => {
                        let bytes: u64 = report.evicted.iter().map(|b| b.size).sum();
                        tracing::info!(
                            evicted = report.evicted.len(),
                            bytes,
                            lapsed_pins = report.lapsed_pins,
                            "gc"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                },
            }
        }
        self.log_flush(&mut flush_failing).await;
    }

    /// After shutdown: the last last-use times, and every temp file left by
    /// transfers that were stopped. Failures are logged.
    pub async fn close(&self) {
        self.log_flush(&mut false).await;
        if let Err(e) = self.blocking(|store| store.sweep_ingest()).await {
            tracing::warn!(error = %e, "removing temp files failed; the next start removes them");
        }
    }

    /// A flush, which also reopens a broken `meta.redb` once it can be
    /// written (see [`crate::store::Store::heal_meta`]). A failure is logged
    /// when it starts and when it ends, not at every retry.
    async fn log_flush(&self, failing: &mut bool) {
        match self.flush_uses().await {
            Ok(_) if *failing => {
                *failing = false;
                tracing::info!("metadata store writable again");
            }
            Ok(_) => {}
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!(error = %e, "recording last uses failed; retried every 5 s");
            }
            Err(e) => tracing::debug!(error = %e, "recording last uses still fails"),
        }
    }
}
