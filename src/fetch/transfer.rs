//! One transfer: the URL, then each mirror; on each, attempts with backoff,
//! resuming from the bytes already written and hashed when the source can.
//!
//! Retried on the same URL: connection failures and resets, stalls (no
//! bytes for the stall timeout), HTTP 408, 429 (after its `Retry-After`) and
//! 5xx. The count of tries starts over whenever an attempt made progress, so a
//! long transfer over a flaky link is not cut short, and cannot loop for
//! ever either: every attempt that made progress brought the end closer.
//! Moving to the next mirror: any other source failure, or bytes that don't
//! verify. Ending the transfer: local failures (disk full, I/O).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_stream::StreamExt as _;
use url::Url;

use super::flight::{Flight, Flights, State};
use super::{FetchError, Shared, Want};
use crate::source::{Resume, Source, redacted, redacted_str};
use crate::store::{Blob, Ingest, StoreError};

/// First backoff; doubled per failed try, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest wait between tries, `Retry-After` included.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bytes between progress updates: often enough for a smooth bar, rarely
/// enough that waking watchers costs nothing.
const PROGRESS_EVERY: u64 = 1 << 20;
/// Bytes between free-space checks while the size is unknown.
const SPACE_CHECK_EVERY: u64 = 4 << 20;

/// Starts the transfer of `want` as its own task.
pub(super) fn spawn(
    shared: Arc<Shared>,
    flights: Arc<Flights>,
    want: Want,
    limit: u64,
) -> Arc<Flight> {
    let (tx, rx) = watch::channel(State::default());
    let id = flights.next_id();
    let digest = want.digest;
    let task = tokio::spawn(async move {
        let outcome = match run(&shared, &want, limit, &tx).await {
            Ok((blob, url)) => after_commit(&shared, &flights, blob, url).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            tracing::warn!(%digest, error = %e, "transfer failed");
        }
        tx.send_modify(|s| s.outcome = Some(outcome.map_err(Arc::new)));
        flights.finish(digest, id);
    });
    Arc::new(Flight::new(id, digest, task.abort_handle(), rx))
}

/// Records the new asset durably, then evicts what no longer fits. Runs
/// while the transfer is still registered, so the new asset is safe from
/// this eviction.
async fn after_commit(
    shared: &Arc<Shared>,
    flights: &Flights,
    blob: Blob,
    url: String,
) -> Result<Blob, FetchError> {
    let keep = flights.running();
    let digest = blob.digest;
    let (store, policy) = (shared.store.clone(), shared.options.evict);
    let recorded = tokio::task::spawn_blocking(move || {
        // The blob is verified and in place: a metadata failure is logged,
        // not turned into a failed fetch (reconcile re-adds it at start).
        if let Err(e) = store.used(&blob, &url, true) {
            tracing::warn!(digest = %blob.digest, error = %e, "recording the new asset failed");
        }
        let evicted = store.evict(&policy, &keep, false);
        Ok::<_, StoreError>((blob, evicted))
    })
    .await
    .map_err(|_| FetchError::Lost { digest })?;
    let (blob, evicted) = recorded.map_err(FetchError::Store)?;
    match evicted {
        Ok(gone) if !gone.is_empty() => {
            let bytes: u64 = gone.iter().map(|b| b.size).sum();
            tracing::info!(
                assets = gone.len(),
                bytes,
                "evicted least recently used assets"
            );
        }
        Ok(_) => {}
        // The fetch itself succeeded; eviction tries again on its timer.
        Err(e) => tracing::warn!(error = %e, "eviction failed"),
    }
    Ok(blob)
}

async fn run(
    shared: &Shared,
    want: &Want,
    limit: u64,
    state: &watch::Sender<State>,
) -> Result<(Blob, String), FetchError> {
    if let Some(size) = want.size {
        check_fits(shared, size)?;
        if size > limit {
            return Err(FetchError::RequestTooLarge { size, limit });
        }
        check_space(shared, size)?;
    }
    let mut failure = None;
    for url in want.urls() {
        match from_url(shared, want, url, limit, state).await {
            Ok(blob) => return Ok((blob, url.to_owned())),
            Err(e) if is_local(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(digest = %want.digest, url = %redacted_str(url), error = %e, "source failed");
                failure = Some(e);
            }
        }
    }
    // `urls()` is never empty, so a failure was recorded.
    Err(failure.unwrap_or(FetchError::Lost {
        digest: want.digest,
    }))
}

/// Reads `want` from one URL, with retries and resume.
async fn from_url(
    shared: &Shared,
    want: &Want,
    url: &str,
    limit: u64,
    state: &watch::Sender<State>,
) -> Result<Blob, FetchError> {
    let (url, source) = shared.sources.resolve(url).map_err(FetchError::Source)?;
    state.send_modify(|s| s.progress.source = String::new());
    let _permits = shared.limits.acquire(&url).await;
    state.send_modify(|s| {
        s.progress.source = redacted(&url);
        s.progress.started.get_or_insert_with(Instant::now);
    });
    let mut attempt = Attempt {
        shared,
        want,
        url: &url,
        limit,
        ingest: None,
        validator: None,
    };
    let mut failures = 0;
    loop {
        let before = attempt.received();
        let Err(e) = attempt.run(source.as_ref(), state).await else {
            break;
        };
        if attempt.received() > before {
            failures = 0;
        }
        failures += 1;
        if !is_retryable(&e) || failures >= shared.options.attempts {
            attempt.abort().await;
            return Err(e);
        }
        let delay = backoff(failures, retry_after(&e));
        tracing::info!(digest = %want.digest, url = %redacted(&url), error = %e, retry_in = ?delay, "retrying");
        tokio::time::sleep(delay).await;
    }
    match attempt.ingest.take() {
        Some(ingest) => ingest.commit().await.map_err(FetchError::Store),
        None => Err(FetchError::Lost {
            digest: want.digest,
        }),
    }
}

/// The ingest and resume point that carry over between tries on one URL.
struct Attempt<'a> {
    shared: &'a Shared,
    want: &'a Want,
    url: &'a Url,
    limit: u64,
    ingest: Option<Ingest>,
    validator: Option<String>,
}

impl Attempt<'_> {
    fn received(&self) -> u64 {
        self.ingest.as_ref().map_or(0, Ingest::received)
    }

    /// One try: opens the source (resuming when there is something to
    /// resume) and streams its body into the ingest to the end.
    async fn run(
        &mut self,
        source: &dyn Source,
        state: &watch::Sender<State>,
    ) -> Result<(), FetchError> {
        let stall = self.shared.options.stall_timeout;
        let resume = match (self.received(), &self.validator) {
            (offset, Some(validator)) if offset > 0 => Some(Resume {
                offset,
                validator: validator.clone(),
            }),
            _ => None,
        };
        let opened = timeout(stall, source.open(self.url, resume.as_ref()))
            .await
            .map_err(|_| self.stalled())?
            .map_err(FetchError::Source)?;
        if let Some(total) = opened.size {
            self.check_declared(total)?;
            check_space(self.shared, total.saturating_sub(opened.offset))?;
        }
        if opened.offset != self.received() {
            // The source could not go on (a new version, or Range ignored):
            // start over with what it sends, from byte 0.
            tracing::info!(url = %redacted(self.url), from = opened.offset, "source cannot resume; starting over");
            self.abort().await;
        }
        let mut ingest = match self.ingest.take() {
            Some(ingest) => ingest,
            None => self
                .shared
                .store
                .ingest(self.want.digest, self.want.size, self.limit)
                .map_err(FetchError::Store)?,
        };
        self.validator = opened.validator;
        let streamed = stream(self, &mut ingest, opened.body, opened.size, state).await;
        self.ingest = Some(ingest);
        streamed
    }

    /// Refuses a declared size over the limit or other than the request's.
    fn check_declared(&self, declared: u64) -> Result<(), FetchError> {
        if let Some(expected) = self.want.size
            && expected != declared
        {
            return Err(FetchError::DeclaredSizeMismatch {
                url: redacted(self.url),
                expected,
                declared,
            });
        }
        check_fits(self.shared, declared)?;
        if declared > self.limit {
            return Err(FetchError::DeclaredTooLarge {
                url: redacted(self.url),
                size: declared,
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn stalled(&self) -> FetchError {
        FetchError::Stalled {
            url: redacted(self.url),
            secs: self.shared.options.stall_timeout.as_secs_f64(),
        }
    }

    /// Drops the ingest; its temp file is gone when this returns.
    async fn abort(&mut self) {
        if let Some(ingest) = self.ingest.take() {
            ingest.abort().await;
        }
        self.validator = None;
    }
}

/// Streams `body` into `ingest` until it ends, publishing progress.
async fn stream(
    attempt: &Attempt<'_>,
    ingest: &mut Ingest,
    mut body: crate::source::ByteStream,
    total: Option<u64>,
    state: &watch::Sender<State>,
) -> Result<(), FetchError> {
    let stall = attempt.shared.options.stall_timeout;
    let mut published = ingest.received();
    let mut space_checked = ingest.received();
    loop {
        let next = timeout(stall, body.next())
            .await
            .map_err(|_| attempt.stalled())?;
        let Some(chunk) = next else {
            break;
        };
        ingest
            .write(chunk.map_err(FetchError::Source)?)
            .await
            .map_err(FetchError::Store)?;
        let done = ingest.received();
        if total.is_none() && done - space_checked >= SPACE_CHECK_EVERY {
            check_space(attempt.shared, 0)?;
            space_checked = done;
        }
        if done - published >= PROGRESS_EVERY {
            publish(state, done, total);
            published = done;
        }
    }
    publish(state, ingest.received(), total);
    Ok(())
}

fn publish(state: &watch::Sender<State>, done: u64, total: Option<u64>) {
    state.send_modify(|s| {
        s.progress.done = done;
        s.progress.total = total;
    });
}

/// Refuses an asset larger than the whole cache may be.
fn check_fits(shared: &Shared, size: u64) -> Result<(), FetchError> {
    match shared.options.evict.max_bytes {
        Some(max) if size > max => Err(FetchError::NeverFits { size, max }),
        _ => Ok(()),
    }
}

fn check_space(shared: &Shared, needed: u64) -> Result<(), FetchError> {
    shared
        .store
        .check_space(needed, shared.options.reserve_free)
        .map_err(FetchError::Store)
}

/// Failures of this node rather than of the source: no mirror helps.
fn is_local(err: &FetchError) -> bool {
    match err {
        FetchError::Store(e) => !matches!(
            e,
            StoreError::LimitExceeded { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::DigestMismatch { .. }
        ),
        FetchError::RequestTooLarge { .. }
        | FetchError::NeverFits { .. }
        | FetchError::Lost { .. } => true,
        _ => false,
    }
}

fn is_retryable(err: &FetchError) -> bool {
    match err {
        FetchError::Source(e) => e.is_retryable(),
        FetchError::Stalled { .. } => true,
        _ => false,
    }
}

fn retry_after(err: &FetchError) -> Option<Duration> {
    match err {
        FetchError::Source(e) => e.retry_after(),
        _ => None,
    }
}

/// Exponential backoff with full jitter, or the upstream's `Retry-After`,
/// capped at [`BACKOFF_MAX`].
fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(BACKOFF_MAX);
    }
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(jitter())
}

/// A number in [0, 1), different on every call: `RandomState` is seeded
/// randomly per instance, which is all the randomness jitter needs.
fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        for failures in 1..20 {
            let wait = backoff(failures, None);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (failures - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(wait <= ceiling, "{failures}: {wait:?} > {ceiling:?}");
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(3600))), BACKOFF_MAX);
        let samples: Vec<f64> = (0..32).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(samples.windows(2).any(|w| w[0] != w[1]), "jitter must vary");
    }
}
