//! Ranged transfers: a large asset from a source that serves byte ranges
//! is read as pieces over several connections at once, into one
//! [`Pieces`] file that hashes its contiguous prefix as it fills.
//!
//! Every piece is read from the version the first response named (its
//! validator; without one, the digest alone guards the result). A piece
//! that fails or stalls is retried alone, from the bytes it already wrote,
//! with the pipeline's backoff. The first response's own body serves the
//! first piece. Pieces in flight are capped per transfer and daemon-wide,
//! and memory is one write batch per piece in flight.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_stream::StreamExt as _;

use super::flight::State;
use super::{FetchError, Inner};
use crate::digest::Digest;
use crate::source::{Access, ByteStream, Source, SourceError, SourceUrl};
use crate::store::{Blob, Partial, Pieces, SourceInfo};

/// The smallest and largest piece; in between, about 32 pieces an asset.
const MIN_PIECE: u64 = 8 << 20;
const MAX_PIECE: u64 = 64 << 20;
const PIECES_PER_ASSET: u64 = 32;
/// Pieces in flight in the whole daemon.
pub(super) const DAEMON_IN_FLIGHT: usize = 32;
/// Bytes a piece gathers before writing them.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes a try of a piece must bring for its failure not to count.
const PROGRESS_RESETS_TRIES: u64 = 1 << 20;

/// The piece size for an asset of `size` bytes, or `None` to read it in one
/// stream (below `min_size`, or with one connection).
pub(super) fn piece_size(size: u64, min_size: u64, connections: usize) -> Option<u64> {
    (size >= min_size && connections > 1 && size > MIN_PIECE).then(|| {
        (size / PIECES_PER_ASSET)
            .clamp(MIN_PIECE, MAX_PIECE)
            .next_multiple_of(1 << 20)
    })
}

/// `[0, size)` cut into pieces of `piece` bytes (the last may be shorter).
fn cut(size: u64, piece: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(piece))
        .map(|i| i * piece..((i + 1) * piece).min(size))
        .collect()
}

/// One ranged read of one URL.
pub(super) struct Job<'a> {
    pub inner: &'a Inner,
    pub digest: Digest,
    pub source: &'a dyn Source,
    pub url: &'a SourceUrl,
    pub access: Access,
    /// The version the first response named.
    pub validator: Option<String>,
    pub size: u64,
    pub piece: u64,
    /// Pieces in flight at once.
    pub connections: usize,
    /// Pieces of this version kept from before a restart, to go on with.
    pub resume: Option<Partial>,
}

/// Reads the asset in pieces (the first from `first`, the open body of the
/// first response) and commits it. On error nothing is left on disk.
pub(super) async fn run(
    job: Job<'_>,
    first: ByteStream,
    state: &watch::Sender<State>,
) -> Result<Blob, FetchError> {
    let (store, digest, size) = (job.inner.store.clone(), job.digest, job.size);
    let resume = job.resume.clone();
    let pieces = tokio::task::spawn_blocking(move || match resume {
        Some(partial) => store.resume_pieces(digest, size, &partial).or_else(|e| {
            tracing::warn!(%digest, error = %e, "cannot resume the kept pieces; starting over");
            store.discard_partial(&partial);
            store.pieces(digest, size)
        }),
        None => store.pieces(digest, size),
    })
    .await
    .map_err(|_| FetchError::Panicked { what: "pieces" })?
    .map_err(FetchError::Store)?;
    let pieces = Arc::new(pieces);
    if let Some(validator) = &job.validator {
        pieces.set_source(SourceInfo {
            url: job.url.redacted().to_owned(),
            validator: validator.clone(),
            size: Some(job.size),
        });
    }
    // Pieces kept from before a restart are not asked for again.
    let ranges: Vec<Range<u64>> = cut(job.size, job.piece)
        .into_iter()
        .filter(|r| !pieces.covers(r))
        .collect();
    if job.resume.is_some() {
        tracing::info!(digest = %job.digest, left = ranges.len(), "going on with pieces kept from before the restart");
    }
    if ranges.is_empty() {
        return pieces
            .commit(job.url.redacted())
            .await
            .map_err(FetchError::Store);
    }
    let first_is_ours = ranges[0].start == 0;
    let shared = Shared {
        job: &job,
        pieces: pieces.clone(),
        ranges,
        next: AtomicUsize::new(usize::from(first_is_ours)),
        done: AtomicU64::new(0),
        state,
    };
    tracing::info!(
        digest = %job.digest,
        url = %job.url,
        bytes = job.size,
        pieces = shared.ranges.len(),
        piece_bytes = job.piece,
        "reading in pieces"
    );
    // The first response's body serves piece 0, unless that was kept.
    let mut first = first_is_ours.then_some(first);
    let connections = job.connections.max(1);
    let workers: Vec<_> = (0..connections.min(shared.ranges.len()))
        .map(|_| shared.worker(first.take()))
        .collect();
    // The first error drops the other workers (their connections close).
    let outcome = async {
        futures_util::future::try_join_all(workers).await?;
        pieces
            .commit(job.url.redacted())
            .await
            .map_err(FetchError::Store)
    }
    .await;
    if outcome.is_err() {
        pieces.abandon();
    }
    outcome
}

/// What the workers of one ranged read share.
struct Shared<'a, 'j> {
    job: &'a Job<'j>,
    pieces: Arc<Pieces>,
    ranges: Vec<Range<u64>>,
    /// The next piece to take.
    next: AtomicUsize,
    /// Bytes written, all pieces.
    done: AtomicU64,
    state: &'a watch::Sender<State>,
}

impl Shared<'_, '_> {
    /// Takes pieces until none is left; the first worker begins with piece
    /// 0 from `first`.
    async fn worker(&self, first: Option<ByteStream>) -> Result<(), FetchError> {
        if let Some(body) = first {
            let range = self.ranges[0].clone();
            let mut at = range.start;
            // The first response's body: a failure is retried as a range.
            if self.stream_into(body, &mut at, range.end).await.is_err() || at < range.end {
                self.piece(at..range.end).await?;
            }
            self.checkpoint().await;
        }
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(range) = self.ranges.get(i) else {
                return Ok(());
            };
            self.piece(range.clone()).await?;
            self.checkpoint().await;
        }
    }

    /// Records the written pieces for a restart (off the runtime).
    async fn checkpoint(&self) {
        let pieces = self.pieces.clone();
        let _ = tokio::task::spawn_blocking(move || pieces.checkpoint()).await;
    }

    /// Reads `range` with retries, each from where the last stopped.
    async fn piece(&self, range: Range<u64>) -> Result<(), FetchError> {
        let job = self.job;
        let _slot = job.inner.piece_slots.acquire().await;
        let mut at = range.start;
        let mut failures = 0;
        while at < range.end {
            let before = at;
            let tried = async {
                let opened = timeout(
                    job.inner.fetch.stall_timeout.0,
                    job.source.open_range(
                        job.url.url(),
                        at..range.end,
                        job.validator.as_deref(),
                        job.access,
                    ),
                )
                .await
                .map_err(|_| stalled(job))?
                .map_err(FetchError::Source)?;
                self.stream_into(opened.body, &mut at, range.end).await
            }
            .await;
            let e = match tried {
                Ok(()) if at == range.end => return Ok(()),
                Ok(()) => FetchError::Source(SourceError::Transport {
                    url: job.url.redacted().to_owned(),
                    detail: format!(
                        "a piece ended at byte {at} of {}..{}",
                        range.start, range.end
                    ),
                    retryable: true,
                }),
                Err(e) => e,
            };
            if at >= before.saturating_add(PROGRESS_RESETS_TRIES) {
                failures = 0;
            }
            failures += 1;
            if !super::transfer::is_retryable(&e) || failures >= job.inner.fetch.attempts {
                return Err(e);
            }
            let delay = super::transfer::backoff(failures, None);
            tracing::info!(digest = %job.digest, url = %job.url, from = at, error = %e, retry_in = ?delay, "retrying a piece");
            job.inner.metrics.retried();
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Writes `body` at `*at` on, up to `end`, advancing `*at` as batches
    /// land. Bytes past `end` are an error (the source sent another range).
    async fn stream_into(
        &self,
        mut body: ByteStream,
        at: &mut u64,
        end: u64,
    ) -> Result<(), FetchError> {
        let job = self.job;
        let stall = job.inner.fetch.stall_timeout.0;
        let mut batch = BytesMut::new();
        loop {
            let next = timeout(stall, body.next())
                .await
                .map_err(|_| stalled(job))?;
            let chunk: Option<Bytes> = next.transpose().map_err(FetchError::Source)?;
            let last = chunk.is_none();
            if let Some(chunk) = chunk {
                let room = (end - *at) as usize - batch.len();
                if chunk.len() > room {
                    // The first body runs on past its piece: stop there.
                    batch.extend_from_slice(&chunk[..room]);
                    self.write(&mut batch, at).await?;
                    return Ok(());
                }
                batch.extend_from_slice(&chunk);
            }
            if batch.len() >= WRITE_BATCH || (last && !batch.is_empty()) {
                self.write(&mut batch, at).await?;
            }
            if last || *at == end {
                return Ok(());
            }
        }
    }

    /// Writes `batch` at `*at` (off the runtime) and notes the progress.
    async fn write(&self, batch: &mut BytesMut, at: &mut u64) -> Result<(), FetchError> {
        let data = batch.split().freeze();
        let (pieces, offset, len) = (self.pieces.clone(), *at, data.len() as u64);
        tokio::task::spawn_blocking(move || pieces.write_at(offset, &data))
            .await
            .map_err(|_| FetchError::Panicked { what: "write" })?
            .map_err(FetchError::Store)?;
        *at += len;
        let done = self.done.fetch_add(len, Ordering::Relaxed) + len;
        self.state.send_modify(|s| {
            s.progress.done = done;
            s.progress.total = Some(self.job.size);
        });
        Ok(())
    }
}

fn stalled(job: &Job<'_>) -> FetchError {
    FetchError::Stalled {
        url: crate::source::bounded(job.url.redacted()).into_owned(),
        secs: job.inner.fetch.stall_timeout.0.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_assets_are_one_stream_and_pieces_grow_with_the_size() {
        let min = 64 << 20;
        assert_eq!(piece_size(min - 1, min, 8), None);
        assert_eq!(piece_size(min, min, 8), Some(MIN_PIECE));
        assert_eq!(piece_size(min, min, 1), None, "one connection: one stream");
        assert_eq!(piece_size(1 << 30, min, 8), Some(32 << 20));
        assert_eq!(piece_size(20 << 30, min, 8), Some(MAX_PIECE));
        assert_eq!(piece_size(MIN_PIECE, 0, 8), None, "one piece: one stream");
        let ranges = cut(100, 30);
        assert_eq!(ranges, vec![0..30, 30..60, 60..90, 90..100]);
    }
}
