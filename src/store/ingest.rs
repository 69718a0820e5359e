//! Ingest: a stream of bytes in, a verified blob out.
//!
//! Three stages overlap so a fetch runs near the disk's speed on two cores:
//! the caller's task counts bytes and enforces the limit; a writer thread
//! appends batches to the temp file (see [`super::writer`]); a hasher thread
//! updates SHA-256 over the same buffers. Batches are reference-counted [`Bytes`],
//! never copied, and the queues between stages are bounded, so memory stays
//! flat whatever the asset's size.
//!
//! Cleanup: the temp file is owned by the writer thread until commit. If the
//! [`Ingest`] is dropped (the caller went away) or aborted, the writer sees
//! its queue close and deletes the file; [`Ingest::abort`] waits for that.

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tempfile::{NamedTempFile, TempPath};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::index::Entry;
use super::meta::now_ms;
use super::partial::{self, Partial, SourceInfo};
use super::writer::Writer;
use super::{Blob, Store, StoreError, fsync_dir};
use crate::digest::Digest;

/// Bytes gathered before a batch goes to the writer: large enough that the
/// per-batch costs (a wake-up, a `writev`) vanish, small enough to keep
/// memory flat.
const BATCH_BYTES: usize = 1 << 20;
/// Batches queued between stages. A fetch holds at most about
/// `2 * QUEUE_DEPTH + 3` batches, about 7 MiB, plus the writer's 4 MiB
/// staging buffer.
const QUEUE_DEPTH: usize = 2;
/// An asset being written into `ingest/`. Feed it with [`Ingest::write`], then
/// [`Ingest::commit`] or [`Ingest::abort`]. Dropping it removes the temp file
/// (soon after, from the writer thread).
#[derive(Debug)]
pub struct Ingest {
    expected: Digest,
    size: Option<u64>,
    limit: u64,
    received: u64,
    batch: Vec<Bytes>,
    batch_len: usize,
    tx: mpsc::Sender<Vec<Bytes>>,
    /// Taken when joined early, after the writer failed.
    writer: Option<JoinHandle<Result<NamedTempFile, StoreError>>>,
    hasher: JoinHandle<Result<[u8; 32], io::Error>>,
    temp_path: PathBuf,
    store: Arc<Store>,
    /// For the sidecar: the source, once it named its version.
    info: Arc<Mutex<Option<SourceInfo>>>,
    /// Set by [`Ingest::commit`]: the writer's end is not a cut-off.
    committing: Arc<AtomicBool>,
}

impl Ingest {
    pub(super) fn start(
        store: &Arc<Store>,
        expected: Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Ingest, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("{}.", expected.hex()))
            .tempfile_in(&store.ingest)
            .map_err(StoreError::io("create temp file in", &store.ingest))?;
        Ok(Ingest::spawn(store, expected, size, limit, temp, 0, None))
    }

    /// Resumes the partial download `partial` of `expected` kept from before
    /// a restart: its durable prefix is re-hashed (by the hasher, before the
    /// new bytes), and [`Ingest::received`] starts there.
    pub(super) fn resume(
        store: &Arc<Store>,
        expected: Digest,
        partial: &Partial,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Ingest, StoreError> {
        let wrap = |op| StoreError::io(op, &partial.path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&partial.path)
            .map_err(wrap("open"))?;
        file.set_len(partial.done).map_err(wrap("truncate"))?;
        let reader = file.try_clone().map_err(wrap("open"))?;
        let path = TempPath::try_from_path(&partial.path).map_err(wrap("resolve"))?;
        let temp = NamedTempFile::from_parts(file, path);
        let info = SourceInfo {
            url: partial.url.clone(),
            validator: partial.validator.clone(),
            size,
        };
        let mut ingest = Ingest::spawn(
            store,
            expected,
            size,
            limit,
            temp,
            partial.done,
            Some((reader, info)),
        );
        ingest.received = partial.done;
        Ok(ingest)
    }

    /// Starts the writer and hasher threads on `temp`, whose first `offset`
    /// bytes are written already (`prefix`: a handle to read them for the
    /// hash, and the source they came from).
    fn spawn(
        store: &Arc<Store>,
        expected: Digest,
        size: Option<u64>,
        limit: u64,
        temp: NamedTempFile,
        offset: u64,
        prefix: Option<(std::fs::File, SourceInfo)>,
    ) -> Ingest {
        let temp_path = temp.path().to_owned();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (hash_tx, hash_rx) = std_mpsc::sync_channel(QUEUE_DEPTH);
        let (reader, info) = match prefix {
            Some((reader, info)) => (Some(reader), Some(info)),
            None => (None, None),
        };
        let info = Arc::new(Mutex::new(info));
        let committing = Arc::new(AtomicBool::new(false));
        let checkpoints = Checkpoints {
            store: store.clone(),
            digest: expected,
            info: info.clone(),
            committing: committing.clone(),
        };
        let writer =
            tokio::task::spawn_blocking(move || write_all(temp, offset, rx, hash_tx, checkpoints));
        let hasher = tokio::task::spawn_blocking(move || hash_all(reader, offset, hash_rx));
        Ingest {
            expected,
            size,
            limit,
            received: 0,
            batch: Vec::new(),
            batch_len: 0,
            tx,
            writer: Some(writer),
            hasher,
            temp_path,
            store: store.clone(),
            info,
            committing,
        }
    }

    /// Notes the source that named this version, so the ingest can be
    /// resumed after a restart (see [`super::partial`]).
    pub fn set_source(&self, info: SourceInfo) {
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    /// Changes the expected size and the limit for the bytes still to come
    /// (a shared transfer's terms change as callers join and leave). Bytes
    /// already accepted are judged at the next write or at commit.
    pub fn set_terms(&mut self, size: Option<u64>, limit: u64) {
        self.size = size;
        self.limit = limit;
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends `chunk`. Refuses it, without writing any of it, when it would
    /// take the total past the expected size ([`StoreError::SizeMismatch`]) or
    /// the limit ([`StoreError::LimitExceeded`]). After an error, abort.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let total = self.received.saturating_add(chunk.len() as u64);
        if let Some(size) = self.size
            && total > size
        {
            return Err(StoreError::SizeMismatch {
                expected: size,
                actual: format!("more than {size}"),
            });
        }
        if total > self.limit {
            return Err(StoreError::LimitExceeded { limit: self.limit });
        }
        self.received = total;
        if chunk.is_empty() {
            return Ok(());
        }
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= BATCH_BYTES {
            self.send_batch().await?;
        }
        Ok(())
    }

    /// Verifies and publishes the asset: checks the size and digest, fsyncs,
    /// makes the file read-only, renames it into `blobs/`, fsyncs the folder
    /// and records it as fetched from `url` (redacted) and handed out now. On
    /// any error the temp file is gone when this returns.
    pub async fn commit(mut self, url: &str) -> Result<Blob, StoreError> {
        self.send_batch().await?;
        self.committing.store(true, Ordering::SeqCst);
        let Ingest {
            tx,
            writer,
            hasher,
            temp_path,
            ..
        } = self;
        drop(tx);
        let Some(writer) = writer else {
            return Err(StoreError::Io {
                op: "write",
                path: temp_path,
                source: io::Error::other("writer already failed"),
            });
        };
        let temp = join(writer, &temp_path).await??;
        let actual = join(hasher, &temp_path)
            .await?
            .map_err(StoreError::io("read back", &temp_path))?;
        let actual = Digest::from_bytes(actual);
        if let Some(expected) = self.size
            && self.received != expected
        {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: self.received.to_string(),
            });
        }
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        let (store, url) = (self.store, url.to_owned());
        let publish = move || store.publish(temp, actual, &url);
        join(tokio::task::spawn_blocking(publish), &temp_path).await?
    }

    /// Gives up: the temp file is removed by the time this returns.
    pub async fn abort(self) {
        drop(self.tx);
        // The writer's result, Ok or not, owns the temp file; dropping it here
        // deletes the file.
        if let Some(writer) = self.writer {
            let _ = writer.await;
        }
    }

    async fn send_batch(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        if self.tx.send(batch).await.is_ok() {
            return Ok(());
        }
        // The writer only stops taking batches when it failed: report why.
        let stopped = || StoreError::Io {
            op: "write",
            path: self.temp_path.clone(),
            source: io::Error::other("writer stopped early"),
        };
        match self.writer.take() {
            Some(writer) => match join(writer, &self.temp_path).await? {
                Err(e) => Err(e),
                Ok(_) => Err(stopped()),
            },
            None => Err(stopped()),
        }
    }
}

/// Awaits a pipeline thread, turning a panic into an I/O error on `path`.
async fn join<T>(handle: JoinHandle<T>, path: &std::path::Path) -> Result<T, StoreError> {
    handle.await.map_err(|e| StoreError::Io {
        op: "ingest",
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

/// What the writer thread needs for the sidecar.
struct Checkpoints {
    store: Arc<Store>,
    digest: Digest,
    info: Arc<Mutex<Option<SourceInfo>>>,
    committing: Arc<AtomicBool>,
}

impl Checkpoints {
    /// Makes the first `done` bytes of `temp` durable and records them in
    /// its sidecar, when the source named its version. Best effort: a
    /// failure only loses the chance to resume.
    fn save(&self, temp: &NamedTempFile, done: u64) -> bool {
        let durable = partial::Durable {
            done,
            pieces: Vec::new(),
            ranged: false,
        };
        partial::save(
            temp.as_file(),
            temp.path(),
            &self.digest,
            &self.info,
            durable,
        )
    }
}

/// The writer thread: appends each batch (from byte `offset` on), then
/// passes it to the hasher; records a resume point every
/// [`partial::CHECKPOINT_BYTES`]. Returns the temp file only when the queue
/// closed with every byte written. Cut off while the daemon stops, it keeps
/// the file and its sidecar for the next start.
fn write_all(
    temp: NamedTempFile,
    offset: u64,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    hash_tx: std_mpsc::SyncSender<Vec<Bytes>>,
    checkpoints: Checkpoints,
) -> Result<NamedTempFile, StoreError> {
    let wrap = |op| StoreError::io(op, temp.path());
    let mut writer = Writer::at(temp.as_file(), temp.path(), offset);
    let mut saved = offset;
    let result = (|| {
        while let Some(batch) = rx.blocking_recv() {
            for chunk in &batch {
                writer.write(chunk).map_err(wrap("write"))?;
            }
            if hash_tx.send(batch).is_err() {
                break;
            }
            let written = writer.written();
            if written >= saved + partial::CHECKPOINT_BYTES && checkpoints.save(&temp, written) {
                saved = written;
            }
        }
        writer.finish().map_err(wrap("write"))
    })();
    let stopping = checkpoints.store.keeping.load(Ordering::SeqCst);
    let cut_off = !checkpoints.committing.load(Ordering::SeqCst) && stopping;
    // The daemon stops mid-transfer: keep what arrived for the restart.
    if cut_off
        && let Ok(done) = result
        && checkpoints.save(&temp, done)
    {
        let path = temp.path().to_owned();
        if temp.keep().is_ok() {
            return Err(StoreError::Io {
                op: "write",
                path,
                source: io::Error::other("kept for resuming after the restart"),
            });
        }
        partial::remove(&path);
        return Err(StoreError::Io {
            op: "keep",
            path,
            source: io::Error::other("could not keep the partial download"),
        });
    }
    partial::remove(temp.path());
    result.map(|_| temp)
}

/// The hasher thread: SHA-256 over the first `offset` bytes of `prefix`
/// (a resumed ingest's), then every batch, in order.
fn hash_all(
    prefix: Option<std::fs::File>,
    offset: u64,
    rx: std_mpsc::Receiver<Vec<Bytes>>,
) -> Result<[u8; 32], io::Error> {
    use std::os::unix::fs::FileExt as _;
    let mut hasher = Sha256::new();
    if let Some(file) = prefix {
        let mut buf = vec![0u8; BATCH_BYTES];
        let mut at = 0u64;
        while at < offset {
            let n = (offset - at).min(BATCH_BYTES as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
    }
    for batch in rx {
        for chunk in &batch {
            hasher.update(chunk);
        }
    }
    Ok(hasher.finalize().into())
}

impl Store {
    /// The commit sequence, in an order that must not change. Blocking.
    pub(super) fn publish(
        &self,
        temp: NamedTempFile,
        digest: Digest,
        url: &str,
    ) -> Result<Blob, StoreError> {
        let wrap = |op| StoreError::io(op, temp.path());
        // INVARIANT: data and mode are durable before the name appears.
        temp.as_file()
            .set_permissions(Permissions::from_mode(0o444))
            .map_err(wrap("chmod"))?;
        temp.as_file().sync_all().map_err(wrap("fsync"))?;
        let blob_path = self.blob_path(&digest);
        let (blob, record) = {
            // INVARIANT: the name appears and enters the index under the
            // files lock, so no removal can interleave (see `index`).
            let _files = self.files();
            // Committed meanwhile by another transfer (whose callers all left
            // while it published): keep that file, its entry and its pins;
            // these bytes are the same.
            if let Some(blob) = self.lookup_from(&digest, url) {
                return Ok(blob);
            }
            let file: File = temp
                .persist(&blob_path)
                .map_err(|e| StoreError::io("rename", &blob_path)(e.error))?;
            fsync_dir(&self.blobs)?;
            let meta = file
                .metadata()
                .map_err(StoreError::io("stat", &blob_path))?;
            let entry = Entry {
                size: meta.len(),
                added: meta.mtime(),
                last_used: 0,
                handed_out: 0,
                urls: Vec::new(),
                pins: Vec::new(),
                dirty: false,
            };
            let mut index = self.index();
            index.insert(digest, entry, url, now_ms());
            let record = index.get(&digest).map(Entry::record);
            let blob = Blob {
                digest,
                path: blob_path,
                size: meta.len(),
                added_unix_seconds: meta.mtime(),
            };
            (blob, record)
        };
        // The blob is verified and in place: a metadata failure is logged,
        // not turned into a failed fetch (reconcile re-adds it at start, and
        // the next flush retries the record).
        if let Some(record) = record
            && let Err(e) = self.meta.put(&[(digest, record)])
        {
            tracing::warn!(%digest, error = %e, "recording the new asset failed");
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn digest(bytes: &[u8]) -> Digest {
        Digest::from_bytes(Sha256::digest(bytes).into())
    }

    fn files(dir: &std::path::Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    async fn ingest(
        store: &Arc<Store>,
        bytes: &[u8],
        expected: Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Blob, StoreError> {
        let mut ingest = store.ingest(expected, size, limit)?;
        for chunk in bytes.chunks(300_000) {
            if let Err(e) = ingest.write(Bytes::copy_from_slice(chunk)).await {
                ingest.abort().await;
                return Err(e);
            }
        }
        ingest.commit("http://h/x").await
    }

    #[tokio::test]
    async fn commit_publishes_verified_read_only_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let bytes = vec![3u8; 3 << 20];
        let blob = ingest(
            &store,
            &bytes,
            digest(&bytes),
            Some(bytes.len() as u64),
            u64::MAX,
        )
        .await
        .unwrap();
        assert_eq!(fs::read(&blob.path).unwrap(), bytes);
        assert_eq!(
            fs::metadata(&blob.path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(files(store.ingest_dir()), 0);
    }

    #[tokio::test]
    async fn a_second_commit_of_a_digest_keeps_the_first_and_its_pins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let bytes = vec![9u8; 100_000];
        let first = ingest(&store, &bytes, digest(&bytes), None, u64::MAX)
            .await
            .unwrap();
        assert!(store.pin(&first.digest, "sandbox", 0, None, None).unwrap());
        let inode = fs::metadata(&first.path).unwrap().ino();
        let second = ingest(&store, &bytes, digest(&bytes), None, u64::MAX)
            .await
            .unwrap();
        assert_eq!(second.path, first.path);
        assert_eq!(
            fs::metadata(&first.path).unwrap().ino(),
            inode,
            "not replaced"
        );
        let info = store.info(&first.digest).unwrap();
        assert_eq!(info.pins.len(), 1, "the pin survives");
        assert_eq!(files(store.ingest_dir()), 0);
        assert!(matches!(
            store.delete(&first.digest, false),
            Err(StoreError::Leased { .. })
        ));
    }

    #[tokio::test]
    async fn commit_rejects_digest_mismatch_and_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let wrong = digest(b"something else");
        let err = ingest(&store, &[1u8; 5000], wrong, None, u64::MAX)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DigestMismatch { expected, .. } if expected == wrong),
            "{err}"
        );
        assert_eq!(files(store.ingest_dir()), 0);
        assert!(store.stat(&wrong).is_none());
    }

    #[tokio::test]
    async fn write_refuses_chunk_past_limit_without_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let bytes = vec![5u8; 1000];
        let mut ingest = store.ingest(digest(&bytes), None, 999).unwrap();
        let err = ingest.write(Bytes::from(bytes)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LimitExceeded { limit: 999 }),
            "{err}"
        );
        assert_eq!(ingest.received(), 0);
        ingest.abort().await;
        assert_eq!(files(store.ingest_dir()), 0);
    }

    #[tokio::test]
    async fn dropping_an_ingest_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut ingest = store.ingest(digest(b"x"), None, u64::MAX).unwrap();
        ingest.write(Bytes::from(vec![0u8; 2 << 20])).await.unwrap();
        assert_eq!(files(store.ingest_dir()), 1);
        drop(ingest);
        for _ in 0..200 {
            if files(store.ingest_dir()) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("temp file still there 2 s after the drop");
    }
}
