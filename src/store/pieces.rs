//! A ranged ingest: pieces of an asset of known size written at their
//! offsets, from several connections at once, into one temp file.
//!
//! SHA-256 is still one pass in order: a hasher thread follows the
//! contiguous prefix as pieces fill it, reading back what was just written
//! (from the page cache: these writes are buffered), so verification never
//! reads the whole file again after the last byte. Memory is the pieces'
//! in-flight chunks plus the hasher's one buffer, whatever the size.
//!
//! Cleanup as for [`super::Ingest`]: the temp file is removed when the
//! [`Pieces`] is dropped or aborted, unless it was committed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};
use std::os::unix::fs::OpenOptionsExt as _;

use tempfile::{NamedTempFile, TempPath};
use tokio::task::JoinHandle;

use super::partial::{self, Partial, SourceInfo};
use super::{Blob, Store, StoreError};
use crate::digest::Digest;

/// Bytes written between two flushes of the file to disk: the flush at
/// commit then waits for little (the writes go through the page cache, so
/// the hasher can read them back), and dirty pages stay few.
const FLUSH_EVERY: u64 = 64 << 20;
/// Bytes the hasher reads back at a time.
const HASH_READ: usize = 1 << 20;

/// The hasher thread: the digest of the whole file, or why it stopped.
type Hasher = JoinHandle<Result<[u8; 32], io::Error>>;

/// Which bytes are in the file, and how far the hash has got.
#[derive(Debug, Default)]
struct Coverage {
    /// Written ranges beyond the contiguous prefix: start → end.
    ahead: BTreeMap<u64, u64>,
    /// Bytes `[0, contiguous)` are all written.
    contiguous: u64,
    /// Set when the ingest is given up: the hasher stops.
    abandoned: bool,
}

impl Coverage {
    /// Notes `[start, end)` as written.
    fn add(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        if start <= self.contiguous {
            self.contiguous = self.contiguous.max(end);
        } else {
            // Merged with every range it touches, so each written stretch
            // is one entry.
            let (mut start, mut end) = (start, end);
            let touching: Vec<u64> = self
                .ahead
                .range(..=end)
                .filter(|&(_, &e)| e >= start)
                .map(|(&s, _)| s)
                .collect();
            for s in touching {
                if let Some(e) = self.ahead.remove(&s) {
                    start = start.min(s);
                    end = end.max(e);
                }
            }
            self.ahead.insert(start, end);
        }
        // Fold in what now touches the prefix.
        while let Some((&s, &e)) = self.ahead.first_key_value() {
            if s > self.contiguous {
                break;
            }
            self.ahead.pop_first();
            self.contiguous = self.contiguous.max(e);
        }
    }
}

/// State the writers and the hasher share.
#[derive(Debug, Default)]
struct Shared {
    coverage: Mutex<Coverage>,
    grown: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Coverage> {
        self.coverage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An asset of `size` bytes being written in pieces. Cheap to share
/// (`Arc`); writes from several tasks at once are fine.
#[derive(Debug)]
pub struct Pieces {
    expected: Digest,
    size: u64,
    /// Until commit: the temp file (removed on drop).
    temp: Mutex<Option<NamedTempFile>>,
    file: File,
    temp_path: PathBuf,
    shared: Arc<Shared>,
    hasher: Mutex<Option<Hasher>>,
    store: Arc<Store>,
    /// For the sidecar: the source, once it named its version.
    info: Mutex<Option<SourceInfo>>,
    /// Held across a checkpoint: pieces finishing together must not write
    /// the sidecar at once (an older snapshot could land last).
    checkpointing: Mutex<()>,
    /// Bytes written since the last flush (see [`FLUSH_EVERY`]).
    unflushed: std::sync::atomic::AtomicU64,
}

impl Pieces {
    pub(super) fn start(
        store: &Arc<Store>,
        expected: Digest,
        size: u64,
    ) -> Result<Pieces, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("{}.", expected.hex()))
            .tempfile_in(&store.ingest)
            .map_err(StoreError::io("create temp file in", &store.ingest))?;
        let temp_path = temp.path().to_owned();
        let wrap = |op| StoreError::io(op, &temp_path);
        // The space is taken now, so a full disk fails here and not at a
        // piece halfway; where fallocate is not supported, a sparse length.
        let len = i64::try_from(size).map_err(|_| StoreError::LimitExceeded {
            limit: i64::MAX as u64,
        })?;
        if nix::fcntl::fallocate(temp.as_file(), nix::fcntl::FallocateFlags::empty(), 0, len)
            .is_err()
        {
            temp.as_file()
                .set_len(size)
                .map_err(wrap("set the length of"))?;
        }
        Pieces::spawn(store, expected, size, temp, Coverage::default())
    }

    /// Resumes `partial`, the pieces of `expected` (`size` bytes) kept from
    /// before a restart: its durable ranges count as written, and the
    /// hasher reads the prefix back from the file.
    pub(super) fn resume(
        store: &Arc<Store>,
        expected: Digest,
        size: u64,
        partial: &Partial,
    ) -> Result<Pieces, StoreError> {
        let wrap = |op| StoreError::io(op, &partial.path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&partial.path)
            .map_err(wrap("open"))?;
        let len = file.metadata().map_err(wrap("stat"))?.len();
        if len != size {
            return Err(StoreError::SizeMismatch {
                expected: size,
                actual: len.to_string(),
            });
        }
        let path = TempPath::try_from_path(&partial.path).map_err(wrap("resolve"))?;
        let temp = NamedTempFile::from_parts(file, path);
        let mut coverage = Coverage::default();
        coverage.add(0, partial.done);
        for range in &partial.pieces {
            coverage.add(range.start, range.end);
        }
        Pieces::spawn(store, expected, size, temp, coverage)
    }

    fn spawn(
        store: &Arc<Store>,
        expected: Digest,
        size: u64,
        temp: NamedTempFile,
        coverage: Coverage,
    ) -> Result<Pieces, StoreError> {
        let temp_path = temp.path().to_owned();
        let wrap = |op| StoreError::io(op, &temp_path);
        let file = temp.as_file().try_clone().map_err(wrap("open"))?;
        let reader = temp.as_file().try_clone().map_err(wrap("open"))?;
        let shared = Arc::new(Shared {
            coverage: Mutex::new(coverage),
            grown: Condvar::new(),
        });
        let hasher = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || hash_prefix(&reader, size, &shared))
        };
        Ok(Pieces {
            expected,
            size,
            temp: Mutex::new(Some(temp)),
            file,
            temp_path,
            shared,
            hasher: Mutex::new(Some(hasher)),
            store: store.clone(),
            info: Mutex::new(None),
            checkpointing: Mutex::new(()),
            unflushed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Notes the source that named this version, so that completed pieces
    /// can be kept across a restart (see [`super::partial`]).
    pub fn set_source(&self, info: SourceInfo) {
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    /// Whether every byte of `range` is written.
    pub fn covers(&self, range: &std::ops::Range<u64>) -> bool {
        let coverage = self.shared.lock();
        range.end <= coverage.contiguous
            || coverage
                .ahead
                .range(..=range.start)
                .next_back()
                .is_some_and(|(_, &end)| end >= range.end)
    }

    /// Makes the written pieces durable and records them in the sidecar.
    /// Blocking; best effort (a failure only loses the chance to resume).
    pub fn checkpoint(&self) -> bool {
        let _one_at_a_time = self
            .checkpointing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let durable = {
            let coverage = self.shared.lock();
            partial::Durable {
                done: coverage.contiguous,
                pieces: coverage.ahead.iter().map(|(&a, &b)| (a, b)).collect(),
                ranged: true,
            }
        };
        partial::save(
            &self.file,
            &self.temp_path,
            &self.expected,
            &self.info,
            durable,
        )
    }

    /// The asset's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written so far (all pieces).
    pub fn contiguous(&self) -> u64 {
        self.shared.lock().contiguous
    }

    /// Writes `data` at `offset`. Blocking. Refuses bytes past the size
    /// ([`StoreError::LimitExceeded`]), writing none of them.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let end = offset.saturating_add(data.len() as u64);
        if end > self.size {
            return Err(StoreError::SizeMismatch {
                expected: self.size,
                actual: format!("a piece reaching byte {end}"),
            });
        }
        self.file
            .write_all_at(data, offset)
            .map_err(StoreError::io("write", &self.temp_path))?;
        self.shared.lock().add(offset, end);
        self.shared.grown.notify_one();
        // One writer in a while flushes what all have written, so the
        // flush at commit is short; the others go on meanwhile.
        let unflushed = self
            .unflushed
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed)
            + data.len() as u64;
        if unflushed >= FLUSH_EVERY
            && self
                .unflushed
                .compare_exchange(
                    unflushed,
                    0,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            self.file
                .sync_data()
                .map_err(StoreError::io("flush", &self.temp_path))?;
        }
        Ok(())
    }

    /// Verifies and publishes the asset once every byte is written (see
    /// [`super::Ingest::commit`]); on any error the temp file is gone when
    /// this returns.
    pub async fn commit(&self, url: &str) -> Result<Blob, StoreError> {
        let hasher = self.take_hasher();
        let temp = self
            .temp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (Some(hasher), Some(temp)) = (hasher, temp) else {
            return Err(StoreError::Io {
                op: "commit",
                path: self.temp_path.clone(),
                source: io::Error::other("already committed or given up"),
            });
        };
        let written = self.contiguous();
        if written != self.size {
            self.abandon();
            return Err(StoreError::SizeMismatch {
                expected: self.size,
                actual: written.to_string(),
            });
        }
        let actual = hasher
            .await
            .map_err(|e| StoreError::io("hash", &self.temp_path)(io::Error::other(e)))?
            .map_err(StoreError::io("read back", &self.temp_path))?;
        let actual = Digest::from_bytes(actual);
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        let (store, url) = (self.store.clone(), url.to_owned());
        let path = self.temp_path.clone();
        let published = tokio::task::spawn_blocking(move || store.publish(temp, actual, &url))
            .await
            .map_err(|e| StoreError::io("publish", &path)(io::Error::other(e)))?;
        partial::remove(&self.temp_path);
        published
    }

    /// Gives up: the hasher stops and the temp file and its sidecar go.
    pub fn abandon(&self) {
        self.shared.lock().abandoned = true;
        self.shared.grown.notify_all();
        let temp = self
            .temp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if temp.is_some() {
            partial::remove(&self.temp_path);
        }
        drop(temp);
    }

    fn take_hasher(&self) -> Option<Hasher> {
        self.hasher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for Pieces {
    /// Cut off while the daemon stops: the written pieces are kept for the
    /// restart. Otherwise, as [`Pieces::abandon`].
    fn drop(&mut self) {
        let stopping = self.store.keeping.load(std::sync::atomic::Ordering::SeqCst);
        let live = self
            .temp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if stopping && live && self.checkpoint() {
            self.shared.lock().abandoned = true;
            self.shared.grown.notify_all();
            let temp = self
                .temp
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if temp.is_some_and(|t| t.keep().is_ok()) {
                return;
            }
        }
        self.abandon();
    }
}

/// The hasher thread: SHA-256 of `[0, size)` of `file`, read back as the
/// contiguous prefix grows. Stops early (with an error) when abandoned.
fn hash_prefix(file: &File, size: u64, shared: &Shared) -> Result<[u8; 32], io::Error> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut hashed = 0u64;
    while hashed < size {
        let ready = {
            let mut coverage = shared.lock();
            while coverage.contiguous <= hashed && !coverage.abandoned {
                coverage = shared
                    .grown
                    .wait(coverage)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if coverage.abandoned {
                return Err(io::Error::other("given up"));
            }
            coverage.contiguous
        };
        while hashed < ready {
            let n = (ready - hashed).min(HASH_READ as u64) as usize;
            file.read_exact_at(&mut buf[..n], hashed)?;
            hasher.update(&buf[..n]);
            hashed += n as u64;
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_folds_pieces_into_the_prefix_in_any_order() {
        let mut c = Coverage::default();
        c.add(10, 20);
        c.add(30, 40);
        assert_eq!(c.contiguous, 0);
        c.add(0, 5);
        assert_eq!(c.contiguous, 5);
        c.add(5, 10);
        assert_eq!(c.contiguous, 20);
        c.add(20, 30);
        assert_eq!(c.contiguous, 40);
        assert!(c.ahead.is_empty());
        c.add(35, 38);
        assert_eq!(c.contiguous, 40, "inside the prefix changes nothing");
        // Adjacent and overlapping stretches ahead become one.
        c.add(50, 60);
        c.add(60, 70);
        c.add(65, 80);
        c.add(45, 51);
        assert_eq!(c.ahead.iter().collect::<Vec<_>>(), vec![(&45, &80)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_in_any_order_commit_as_one_verified_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::from_bytes(Sha256::digest(&body).into());
        let pieces = Arc::new(Pieces::start(&store, digest, body.len() as u64).unwrap());
        let chunks: Vec<(usize, usize)> =
            vec![(2_000_000, 3_000_000), (0, 700_000), (700_000, 2_000_000)];
        for (a, b) in chunks {
            let (p, data) = (pieces.clone(), body[a..b].to_vec());
            tokio::task::spawn_blocking(move || p.write_at(a as u64, &data))
                .await
                .unwrap()
                .unwrap();
        }
        let blob = pieces.commit("http://h/x").await.unwrap();
        assert_eq!(std::fs::read(&blob.path).unwrap(), body);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_digest_or_a_missing_piece_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let body = vec![7u8; 100_000];
        let wrong = Digest::from_bytes([0; 32]);
        let pieces = Pieces::start(&store, wrong, body.len() as u64).unwrap();
        pieces.write_at(0, &body).unwrap();
        assert!(matches!(
            pieces.commit("u").await,
            Err(StoreError::DigestMismatch { .. })
        ));
        drop(pieces);
        let right = Digest::from_bytes(Sha256::digest(&body).into());
        let pieces = Pieces::start(&store, right, body.len() as u64).unwrap();
        pieces.write_at(0, &body[..50_000]).unwrap();
        assert!(
            pieces.write_at(90_000, &body[..20_000]).is_err(),
            "past the size"
        );
        assert!(matches!(
            pieces.commit("u").await,
            Err(StoreError::SizeMismatch { .. })
        ));
        drop(pieces);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        assert!(store.stat(&right).is_none());
    }
}
