//! One transfer: the URL, then each mirror; on each, attempts with backoff,
//! resuming from the bytes already written and hashed when the source can.
//!
//! Retried on the same URL: connection failures and resets, stalls (no
//! bytes for the stall timeout), HTTP 408, 429 (after its `Retry-After`) and
//! 5xx. The count of tries starts over whenever an attempt made progress, so a
//! long transfer over a flaky link is not cut short, and cannot loop for
//! ever either: an attempt counts as progress only when it brought at least
//! [`PROGRESS_RESETS_TRIES`] bytes, and a trickle below the minimum rate is a
//! stall.
//! Moving to the next mirror: any other source failure, or bytes that don't
//! verify. Ending the transfer: local failures (disk full, I/O).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::timeout_at;
use tokio_stream::StreamExt as _;

use super::flight::{Launch, State, Terms, lock};
use super::{Caller, FetchError, Inner};
use crate::source::{Access, Resume, Source, SourceError, SourceUrl};
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
/// Bytes an attempt must bring for its failure not to count against the
/// URL's tries: a source that sends a little and breaks, again and again,
/// runs out of tries; one that breaks after real progress is resumed.
const PROGRESS_RESETS_TRIES: u64 = 1 << 20;
/// Times a transfer goes around its URLs again for callers who joined after
/// a failure that depended on the terms: bounded, so callers arriving one
/// after another cannot keep a transfer going for ever.
const MAX_ROUNDS: u32 = 3;

/// Starts the transfer `launch` describes as a tracked task; it stops early
/// when the daemon shuts down. Returns the handle that cancels it.
pub(super) fn spawn(inner: Arc<Inner>, launch: Launch, starter: Caller) -> AbortHandle {
    let tracker = inner.lifetime.tracker.clone();
    let task = tracker.spawn(async move {
        let Launch {
            digest,
            id,
            terms,
            state,
            cancel,
        } = launch;
        let started = Instant::now();
        let token = inner.lifetime.token.clone();
        let outcome = tokio::select! {
            outcome = run(&inner, digest, &terms, &state, starter) => outcome,
            () = token.cancelled() => Err(Arc::new(FetchError::ShuttingDown)),
            () = cancel.cancelled() => Err(Arc::new(FetchError::Cancelled { digest })),
        };
        match &outcome {
            Ok((blob, url)) => {
                log_fetched(blob, url, started);
                let kind = crate::metrics::source_kind(url.url());
                inner
                    .metrics
                    .transferred(kind, blob.size, started.elapsed().as_secs_f64());
                // Before the callers hear of it, so that what they see (and
                // tests check) is the cache within its limits.
                evict_after_commit(&inner, blob.digest).await;
            }
            // The transfer's failure, logged once for all its callers.
            Err(e) => tracing::warn!(%digest, error = %e, "transfer failed"),
        }
        // INVARIANT: closed before the outcome is published, so a caller
        // arriving now starts afresh rather than inheriting this outcome.
        lock(&terms).close();
        state.send_modify(|s| s.outcome = Some(outcome.map(|(b, _)| b)));
        inner.flights.finish(digest, id);
    });
    task.abort_handle()
}

/// One line for a new asset, however many callers shared its transfer.
fn log_fetched(blob: &Blob, url: &SourceUrl, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        digest = %blob.digest,
        url = %url,
        bytes = blob.size,
        secs = format_args!("{secs:.3}"),
        mib_per_s = format_args!("{:.1}", blob.size as f64 / secs.max(1e-9) / f64::from(1 << 20)),
        outcome = "fetched",
        "transfer"
    );
}

/// Evicts what no longer fits after `digest` was committed: never that
/// asset (its callers are pinning it) nor any other being fetched.
async fn evict_after_commit(inner: &Inner, digest: crate::digest::Digest) {
    let mut keep = inner.flights.running();
    keep.insert(digest);
    let (store, policy) = (inner.store.clone(), inner.evict_policy());
    let evicted = tokio::task::spawn_blocking(move || store.evict(&policy, &keep, false)).await;
    match evicted {
        Ok(Ok(gone)) if !gone.is_empty() => {
            let bytes: u64 = gone.iter().map(|b| b.size).sum();
            inner.metrics.evicted(gone.len(), bytes);
            tracing::info!(
                assets = gone.len(),
                bytes,
                "evicted least recently used assets"
            );
        }
        Ok(Ok(_)) => {}
        // The fetch itself succeeded; eviction tries again on its timer.
        Ok(Err(e)) => tracing::warn!(error = %e, "eviction failed"),
        Err(e) => tracing::warn!(error = %e, "eviction panicked"),
    }
}

/// Tries each URL of the terms in turn, the ones joiners add included.
async fn run(
    inner: &Inner,
    digest: crate::digest::Digest,
    terms: &Mutex<Terms>,
    state: &watch::Sender<State>,
    starter: Caller,
) -> Result<(Blob, SourceUrl), Arc<FetchError>> {
    let (size, limit) = {
        let terms = lock(terms);
        (terms.size(), terms.limit())
    };
    if let Some(size) = size {
        check_fits(inner, size).map_err(Arc::new)?;
        if size > limit {
            return Err(Arc::new(FetchError::RequestTooLarge { size, limit }));
        }
        check_space(inner, size).await.map_err(Arc::new)?;
    }
    let mut failure: Option<(Arc<FetchError>, u64)> = None;
    let (mut i, mut rounds) = (0, 1);
    loop {
        let url = {
            let mut terms = lock(terms);
            match terms.url(i) {
                Some(url) => Some(url),
                // Out of URLs after a failure that depended on the callers'
                // terms (a limit, a size), while the terms changed since:
                // the callers now waiting get their own go.
                None => match &failure {
                    Some((e, generation))
                        if is_terms_error(e)
                            && terms.generation() != *generation
                            && rounds < MAX_ROUNDS =>
                    {
                        (i, rounds) = (0, rounds + 1);
                        terms.reopen();
                        terms.url(0)
                    }
                    _ => None,
                },
            }
        };
        let Some((url, access)) = url else { break };
        if let Some((e, _)) = &failure {
            // Logged here, with a next URL to go to; the last failure is
            // logged once, as the transfer's.
            tracing::info!(%digest, error = %e, next = %url, "source failed; trying the next URL");
        }
        i += 1;
        let generation = lock(terms).generation();
        match from_url(inner, digest, (&url, access), terms, state, starter).await {
            Ok(blob) => return Ok((blob, url)),
            Err(e) if is_local(&e) => return Err(Arc::new(e)),
            Err(e) => {
                // Each caller is told of the failure of a URL it gave.
                let e = Arc::new(e);
                state.send_modify(|s| s.failed.push((url, e.clone())));
                failure = Some((e, generation));
            }
        }
    }
    Err(failure.map_or_else(|| Arc::new(FetchError::Lost { digest }), |(e, _)| e))
}

/// Reads the asset from one URL, with retries and resume.
async fn from_url(
    inner: &Inner,
    digest: crate::digest::Digest,
    (url, access): (&SourceUrl, Access),
    terms: &Mutex<Terms>,
    state: &watch::Sender<State>,
    starter: Caller,
) -> Result<Blob, FetchError> {
    let source = inner.sources.resolve(url).map_err(FetchError::Source)?;
    state.send_modify(|s| s.progress.source = String::new());
    // The user who started the transfer is charged for its slot.
    let uid = (!starter.admin).then_some(starter.uid);
    let _permits = inner.limits.acquire(url.url(), uid).await;
    state.send_modify(|s| {
        s.progress.source = crate::source::bounded(url.redacted()).into_owned();
        s.progress.started.get_or_insert_with(Instant::now);
    });
    let mut attempt = Attempt {
        inner,
        digest,
        url,
        access,
        terms,
        ingest: None,
        validator: None,
        done: None,
        one_stream: false,
        kept_pieces: None,
    };
    // A partial download of this asset from before a restart: go on with
    // it (the source decides, by its validator, whether it still can).
    let kept = inner.store.take_partial(&digest);
    let (kept, kept_pieces) = match kept {
        Some(p) if p.ranged => (None, Some(p)),
        other => (other, None),
    };
    attempt.kept_pieces = kept_pieces;
    if let Some(partial) = kept {
        let (size, limit) = attempt.terms();
        let store = inner.store.clone();
        let resumed = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || store.resume(digest, &partial, size, limit)).await
        };
        match resumed {
            Ok(Ok(ingest)) => {
                tracing::info!(%digest, from = partial.done, partial_url = %partial.url, "resuming a partial download from before the restart");
                attempt.ingest = Some(ingest);
                attempt.validator = Some(partial.validator);
            }
            Ok(Err(e)) => {
                tracing::warn!(%digest, error = %e, "cannot resume the partial download; starting over")
            }
            Err(_) => {}
        }
    }
    let mut failures = 0;
    loop {
        let before = attempt.received();
        let was_ranged = !attempt.one_stream;
        let Err(e) = attempt.run(source.as_ref(), state).await else {
            break;
        };
        if was_ranged && attempt.one_stream {
            // A ranged read gave up on pieces: start over in one stream
            // from byte 0, at once and without counting a try.
            tracing::info!(%digest, %url, error = %e, "reading in one stream instead");
            continue;
        }
        // A try cut by the deadline counts whatever it brought: a trickle
        // just above the minimum rate can't go on for ever.
        if attempt.received() >= before.saturating_add(PROGRESS_RESETS_TRIES)
            && !matches!(e, FetchError::AttemptTimedOut { .. })
        {
            failures = 0;
        }
        failures += 1;
        if !is_retryable(&e) || failures >= inner.fetch.attempts {
            attempt.abort().await;
            return Err(e);
        }
        let delay = backoff(failures, retry_after(&e));
        tracing::info!(%digest, %url, error = %e, retry_in = ?delay, "retrying");
        inner.metrics.retried();
        tokio::time::sleep(delay).await;
    }
    if let Some(blob) = attempt.done.take() {
        return Ok(blob);
    }
    match attempt.ingest.take() {
        Some(mut ingest) => {
            let (size, limit) = attempt.terms();
            ingest.set_terms(size, limit);
            ingest
                .commit(url.redacted())
                .await
                .map_err(FetchError::Store)
        }
        None => Err(FetchError::Lost { digest }),
    }
}

/// The ingest and resume point that carry over between tries on one URL.
struct Attempt<'a> {
    inner: &'a Inner,
    digest: crate::digest::Digest,
    url: &'a SourceUrl,
    /// Who gave `url`: the source reads it for them.
    access: Access,
    terms: &'a Mutex<Terms>,
    ingest: Option<Ingest>,
    validator: Option<String>,
    /// The asset, when a ranged read committed it.
    done: Option<Blob>,
    /// Read in one stream from now on: the source could not serve the
    /// pieces (it changed, refused ranges, or its pieces did not verify).
    one_stream: bool,
    /// Pieces of this asset kept from before a restart.
    kept_pieces: Option<crate::store::Partial>,
}

impl Attempt<'_> {
    fn received(&self) -> u64 {
        self.ingest.as_ref().map_or(0, Ingest::received)
    }

    /// Drops kept pieces that won't be used (off the runtime).
    async fn discard(&self, partial: crate::store::Partial) {
        let store = self.inner.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.discard_partial(&partial)).await;
    }

    /// Connections for pieces: what the callers allow, at most the daemon's.
    fn connections(&self) -> usize {
        let daemon = self.inner.fetch.connections;
        lock(self.terms)
            .connections()
            .map_or(daemon, |n| n.min(daemon))
    }

    /// The expected size and the limit, as the callers waiting now set them.
    fn terms(&self) -> (Option<u64>, u64) {
        let terms = lock(self.terms);
        (terms.size(), terms.limit())
    }

    /// One try: opens the source (resuming when there is something to
    /// resume) and streams its body into the ingest to the end.
    async fn run(
        &mut self,
        source: &dyn Source,
        state: &watch::Sender<State>,
    ) -> Result<(), FetchError> {
        let attempt_timeout = self.inner.fetch.attempt_timeout.0;
        let deadline =
            (!attempt_timeout.is_zero()).then(|| tokio::time::Instant::now() + attempt_timeout);
        let resume = match (self.received(), &self.validator) {
            (offset, Some(validator)) if offset > 0 => Some(Resume {
                offset,
                validator: validator.clone(),
            }),
            _ => None,
        };
        let opened = self
            .within(
                deadline,
                source.open(self.url.url(), resume.as_ref(), self.access),
            )
            .await?
            .map_err(FetchError::Source)?;
        if let Some(total) = opened.size {
            self.check_declared(total)?;
            check_space(self.inner, total.saturating_sub(opened.offset)).await?;
        }
        // Pieces kept from before a restart go on only with the same version.
        let mut kept = None;
        if let Some(partial) = self.kept_pieces.take() {
            if opened.size == partial.size && opened.validator.as_ref() == Some(&partial.validator)
            {
                kept = Some(partial);
            } else {
                self.discard(partial).await;
            }
        }
        if let (0, 0, true, false, Some(size)) = (
            self.received(),
            opened.offset,
            opened.ranges,
            self.one_stream,
            opened.size,
        ) && let connections = self.connections()
            && let Some(piece) =
                super::ranged::piece_size(size, self.inner.fetch.ranged_min_size.0, connections)
        {
            let job = super::ranged::Job {
                inner: self.inner,
                digest: self.digest,
                source,
                url: self.url,
                access: self.access,
                validator: opened.validator.clone(),
                size,
                piece,
                connections,
                resume: kept.take(),
            };
            return match super::ranged::run(job, opened.body, state).await {
                Ok(blob) => {
                    self.done = Some(blob);
                    Ok(())
                }
                Err(e) => {
                    // Another version, ranges refused or answered wrongly, or
                    // (without a validator to hold pieces to one version)
                    // bytes that don't verify: one stream from byte 0.
                    self.one_stream = matches!(
                        e,
                        FetchError::Source(
                            SourceError::Changed { .. }
                                | SourceError::NoRanges { .. }
                                | SourceError::BadRange { .. }
                        )
                    ) || (opened.validator.is_none()
                        && matches!(e, FetchError::Store(StoreError::DigestMismatch { .. })));
                    Err(e)
                }
            };
        }
        if let Some(stale) = kept.take() {
            // Kept pieces, but the source no longer serves ranges: of no use.
            self.discard(stale).await;
        }
        if opened.offset != self.received() {
            // The source could not go on (a new version, or Range ignored):
            // start over with what it sends, from byte 0.
            tracing::info!(url = %self.url, from = opened.offset, "source cannot resume; starting over");
            self.abort().await;
        } else if opened.offset > 0 {
            self.inner.metrics.resumed();
        }
        let (size, limit) = self.terms();
        let mut ingest = match self.ingest.take() {
            Some(ingest) => ingest,
            None => {
                // Creating the temp file touches the disk: off the runtime.
                let (store, digest) = (self.inner.store.clone(), self.digest);
                tokio::task::spawn_blocking(move || store.ingest(digest, size, limit))
                    .await
                    .map_err(|_| FetchError::Panicked { what: "ingest" })?
                    .map_err(FetchError::Store)?
            }
        };
        if let Some(validator) = &opened.validator {
            ingest.set_source(crate::store::SourceInfo {
                url: self.url.redacted().to_owned(),
                validator: validator.clone(),
                size: opened.size,
            });
        }
        self.validator = opened.validator;
        let streamed = stream(
            self,
            &mut ingest,
            (opened.body, opened.size),
            deadline,
            state,
        )
        .await;
        self.ingest = Some(ingest);
        streamed
    }

    /// Refuses a declared size over the limit or other than the request's.
    fn check_declared(&self, declared: u64) -> Result<(), FetchError> {
        let (size, limit) = self.terms();
        if let Some(expected) = size
            && expected != declared
        {
            return Err(FetchError::DeclaredSizeMismatch {
                url: crate::source::bounded(self.url.redacted()).into_owned(),
                expected,
                declared,
            });
        }
        check_fits(self.inner, declared)?;
        if declared > limit {
            return Err(FetchError::DeclaredTooLarge {
                url: crate::source::bounded(self.url.redacted()).into_owned(),
                size: declared,
                limit,
            });
        }
        Ok(())
    }

    /// Fails when fewer than `min_rate` bytes a second arrived over the last
    /// stall-timeout window; `window` is (its start, bytes received then).
    fn check_rate(&self, window: &mut (Instant, u64), received: u64) -> Result<(), FetchError> {
        let (stall, min_rate) = (
            self.inner.fetch.stall_timeout.0,
            self.inner.fetch.min_rate.0,
        );
        let elapsed = window.0.elapsed();
        if elapsed < stall {
            return Ok(());
        }
        let bytes = received.saturating_sub(window.1);
        let wanted = (min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if bytes < wanted {
            return Err(FetchError::TooSlow {
                url: crate::source::bounded(self.url.redacted()).into_owned(),
                bytes,
                secs: elapsed.as_secs_f64(),
                min_rate,
            });
        }
        *window = (Instant::now(), received);
        Ok(())
    }

    /// `work`'s output, unless the source stalls (nothing for the stall
    /// timeout) or the try's `deadline` passes first.
    async fn within<T>(
        &self,
        deadline: Option<tokio::time::Instant>,
        work: impl Future<Output = T>,
    ) -> Result<T, FetchError> {
        let now = tokio::time::Instant::now();
        let stall_at = now + self.inner.fetch.stall_timeout.0;
        let timed_out = || FetchError::AttemptTimedOut {
            url: crate::source::bounded(self.url.redacted()).into_owned(),
            secs: self.inner.fetch.attempt_timeout.0.as_secs_f64(),
        };
        match deadline {
            // Checked first: a source that is always ready would never let
            // a timer fire.
            Some(deadline) if deadline <= now => Err(timed_out()),
            Some(deadline) if deadline <= stall_at => {
                timeout_at(deadline, work).await.map_err(|_| timed_out())
            }
            _ => timeout_at(stall_at, work).await.map_err(|_| self.stalled()),
        }
    }

    fn stalled(&self) -> FetchError {
        FetchError::Stalled {
            url: crate::source::bounded(self.url.redacted()).into_owned(),
            secs: self.inner.fetch.stall_timeout.0.as_secs_f64(),
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
    (mut body, total): (crate::source::ByteStream, Option<u64>),
    deadline: Option<tokio::time::Instant>,
    state: &watch::Sender<State>,
) -> Result<(), FetchError> {
    let mut published = ingest.received();
    let mut space_checked = ingest.received();
    let mut window = (Instant::now(), ingest.received());
    loop {
        let next = attempt.within(deadline, body.next()).await?;
        let Some(chunk) = next else {
            break;
        };
        if ingest.received() == 0 {
            // The URL's first byte (again, after a start over).
            let since = state.borrow().progress.started.map(|s| s.elapsed());
            if let Some(since) = since {
                let kind = crate::metrics::source_kind(attempt.url.url());
                attempt.inner.metrics.first_byte(kind, since.as_secs_f64());
            }
        }
        attempt.check_rate(&mut window, ingest.received())?;
        let (size, limit) = attempt.terms();
        ingest.set_terms(size, limit);
        ingest
            .write(chunk.map_err(FetchError::Source)?)
            .await
            .map_err(FetchError::Store)?;
        let done = ingest.received();
        if total.is_none() && done - space_checked >= SPACE_CHECK_EVERY {
            check_space(attempt.inner, 0).await?;
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
fn check_fits(inner: &Inner, size: u64) -> Result<(), FetchError> {
    match inner.cache.max_bytes() {
        Some(max) if size > max => Err(FetchError::NeverFits { size, max }),
        _ => Ok(()),
    }
}

/// Checks (statvfs, on the blocking pool) that `needed` more bytes fit
/// above the reserve.
async fn check_space(inner: &Inner, needed: u64) -> Result<(), FetchError> {
    let (store, reserve) = (inner.store.clone(), inner.fetch.reserve_free.0);
    tokio::task::spawn_blocking(move || store.check_space(needed, reserve))
        .await
        .map_err(|_| FetchError::Panicked { what: "statvfs" })?
        .map_err(FetchError::Store)
}

/// Failures of this node rather than of the source: no mirror helps.
/// A size that could never fit, or a disk filling up, is what one URL
/// declared or sent: another URL (a joiner's) may do better, so those are not
/// local.
fn is_local(err: &FetchError) -> bool {
    match err {
        FetchError::Store(e) => {
            !e.is_no_space()
                && !matches!(
                    e,
                    StoreError::LimitExceeded { .. }
                        | StoreError::SizeMismatch { .. }
                        | StoreError::DigestMismatch { .. }
                )
        }
        FetchError::RequestTooLarge { .. } | FetchError::Lost { .. } => true,
        _ => false,
    }
}

/// Failures that depend on the callers' terms (a limit, a size), which
/// callers who joined since may not share.
fn is_terms_error(err: &FetchError) -> bool {
    match err {
        FetchError::Store(e) => matches!(
            e,
            StoreError::LimitExceeded { .. } | StoreError::SizeMismatch { .. }
        ),
        FetchError::RequestTooLarge { .. }
        | FetchError::DeclaredTooLarge { .. }
        | FetchError::DeclaredSizeMismatch { .. } => true,
        _ => false,
    }
}

pub(super) fn is_retryable(err: &FetchError) -> bool {
    match err {
        FetchError::Source(e) => e.is_retryable(),
        FetchError::Stalled { .. }
        | FetchError::TooSlow { .. }
        | FetchError::AttemptTimedOut { .. } => true,
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
pub(super) fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
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
