//! The content-addressed store: verified assets on disk, and nothing else.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<64 hex>   verified assets, mode 0444
//! ingest/                 temp files of ingests in progress
//! quarantine/             blobs that failed verification, out of service
//! meta.redb               metadata (sizes, last use, URLs, leases)
//! lock                    flock held by the one daemon using this root
//! ```
//!
//! The files are the truth: the metadata is reconciled with `blobs/` at
//! every start and rebuilt from it when damaged, then loaded into an
//! in-memory index (see [`index`] for the lock discipline that keeps pins and
//! removals atomic). Hits, `Stat` and `List` read only memory; every method
//! that touches the disk or redb is blocking and documented so: the fetch
//! layer runs those on tokio's blocking pool. A blocking pool rather than one
//! store thread: redb already serializes its writers, and reads never reach
//! redb, so a dedicated thread would add a queue hop and gain nothing.
//!
//! Invariant: a file under `blobs/` holds exactly the bytes its name says.
//! Only [`Ingest::commit`] puts files there, after checking size and digest and
//! fsyncing; a crash leaves at most a temp file in `ingest/`, which
//! [`Store::open`] sweeps. The store knows nothing of networks or URLs.

mod index;
mod ingest;
mod lifecycle;
mod meta;
mod writer;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;
use index::{Entry, Index};
pub use ingest::Ingest;
pub use lifecycle::{AssetInfo, Corrupt, EvictPolicy, ListQuery};
pub use meta::{MetaError, Pin, Record, now_ms};

/// A store failure, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, such as "create" or "rename".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The root belongs to another user.
    #[error("{path} is owned by uid {owner}, not by this daemon's uid {me}")]
    NotOwned {
        /// The root.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        me: u32,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The asset is not cached.
    #[error("{digest} is not cached")]
    NotCached {
        /// The asset.
        digest: Digest,
    },
    /// The asset is pinned by a lease.
    #[error("{digest} is held by lease {leases}; release it or delete with force")]
    Leased {
        /// The asset.
        digest: Digest,
        /// The holding leases, comma-separated.
        leases: String,
    },
    /// Another process holds the root's lock.
    #[error("{path} is in use by another assetd (its lock is held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Writing the asset would take free space below the reserve.
    #[error(
        "not enough disk space in {path}: {needed} bytes wanted, {available} available, \
         {reserve} kept free"
    )]
    NoSpace {
        /// The store's root.
        path: PathBuf,
        /// Bytes the asset still needs.
        needed: u64,
        /// Bytes available to assetd on the file system.
        available: u64,
        /// Bytes to keep free (`--reserve-free`).
        reserve: u64,
    },
    /// More bytes arrived than the ingest's limit allows.
    #[error("more than {limit} bytes received: over the size limit of {limit} bytes")]
    LimitExceeded {
        /// The limit in bytes.
        limit: u64,
    },
    /// The bytes counted differ from the size the caller expected.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The size the caller asked for.
        expected: u64,
        /// What arrived; "more than N" when cut off early.
        actual: String,
    },
    /// The bytes hash to a different digest than the caller asked for.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the caller asked for.
        expected: Digest,
        /// The digest of the bytes that arrived.
        actual: Digest,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { op, path, source }
    }

    /// True when the disk (or quota) is full or would go below the reserve.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::NoSpace { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// One cached asset, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The asset's digest, which is also its file name.
    pub digest: Digest,
    /// Absolute path of the read-only file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// When it was committed, in seconds since the Unix epoch.
    pub added_unix_seconds: i64,
}

/// The store rooted at one folder. Holds the root's lock while it lives.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    meta: meta::Meta,
    /// What is cached; memory only, never held across I/O.
    index: Mutex<Index>,
    /// Held (on blocking threads only) across every change to the files in
    /// `blobs/` and the matching index update; see [`index`].
    files: Mutex<()>,
    /// Serializes eviction passes; held on blocking threads only.
    evicting: Mutex<()>,
    /// Held (on blocking threads only) across both halves of a pin, a
    /// release and a sweep of lapsed pins (memory and `meta.redb`), so the
    /// two never disagree.
    leases: Mutex<()>,
    ingest: PathBuf,
    _lock: Flock<fs::File>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, takes its lock and
    /// removes every leftover temp file in `ingest/`.
    ///
    /// Errors: [`StoreError::Locked`] when another process uses `root`;
    /// [`StoreError::Io`] when a folder can't be made or read.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        // Blobs are shared read-only with every sandbox; temp files are not.
        mkdir(&blobs, 0o755)?;
        check_owner(root)?;
        mkdir(&ingest, 0o700)?;
        let lock_path = root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("open", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked { path: lock_path })?;
        // INVARIANT: the lock is held before anything in the root changes.
        sweep(&ingest)?;
        let meta = meta::Meta::open(root, &scan_blobs(&blobs)?)?;
        let index = meta.load()?;
        Ok(Store {
            root: root.to_owned(),
            blobs,
            meta,
            index: Mutex::new(index),
            files: Mutex::new(()),
            evicting: Mutex::new(()),
            leases: Mutex::new(()),
            ingest,
            _lock: lock,
        })
    }

    /// Where the asset `digest` lives (or would live).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The folder of temp files; exposed for logs and tests.
    pub fn ingest_dir(&self) -> &Path {
        &self.ingest
    }

    /// The cached asset `digest`, without noting a use; memory only.
    pub fn stat(&self, digest: &Digest) -> Option<Blob> {
        let index = self.index();
        index.get(digest).map(|e| self.blob(digest, e))
    }

    /// A hit: the cached asset `digest`, noting a use from `url` (redacted)
    /// now; `None` when not cached. Memory only: the use reaches `meta.redb`
    /// at the next [`Store::flush_uses`].
    pub fn lookup(&self, digest: &Digest, url: &str) -> Option<Blob> {
        let mut index = self.index();
        let entry = index.touch(digest, url, now_ms())?;
        Some(Blob {
            digest: *digest,
            path: self.blob_path(digest),
            size: entry.size,
            added_unix_seconds: entry.added,
        })
    }

    fn blob(&self, digest: &Digest, entry: &Entry) -> Blob {
        Blob {
            digest: *digest,
            path: self.blob_path(digest),
            size: entry.size,
            added_unix_seconds: entry.added,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn leases(&self) -> MutexGuard<'_, ()> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn files(&self) -> MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes available on the store's file system, and its size.
    fn space(&self) -> Result<(u64, u64), StoreError> {
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StoreError::io("statvfs", &self.root)(e.into()))?;
        // f_bavail: what an unprivileged writer may use; the root-only
        // blocks are not ours to fill.
        let block = stat.fragment_size() as u64;
        Ok((
            stat.blocks_available() as u64 * block,
            stat.blocks() as u64 * block,
        ))
    }

    /// Checks that `needed` more bytes fit while keeping `reserve` bytes
    /// free on the store's file system ([`StoreError::NoSpace`] if not).
    pub fn check_space(&self, needed: u64, reserve: u64) -> Result<(), StoreError> {
        let (available, _) = self.space()?;
        if available < needed.saturating_add(reserve) {
            return Err(StoreError::NoSpace {
                path: self.root.clone(),
                needed,
                available,
                reserve,
            });
        }
        Ok(())
    }

    /// Starts ingesting the asset `expected`: a temp file in `ingest/` fed by
    /// [`Ingest::write`], accepting at most `limit` bytes (and at most
    /// `size` when given). See [`Ingest`] for who cleans up.
    pub fn ingest(
        self: &std::sync::Arc<Self>,
        expected: Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Ingest, StoreError> {
        Ingest::start(self, expected, size, limit)
    }
}

impl Store {
    /// Removes every temp file in `ingest/`: at shutdown, once no transfer
    /// runs. Blocking.
    pub fn sweep_ingest(&self) -> Result<(), StoreError> {
        sweep(&self.ingest)
    }
}

/// Removes every leftover temp file of interrupted fetches.
fn sweep(ingest: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(ingest).map_err(StoreError::io("read", ingest))?;
    let mut swept = 0usize;
    for entry in entries {
        let path = entry.map_err(StoreError::io("read", ingest))?.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            // A stopped transfer's writer thread removed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.map_err(StoreError::io("remove", &path))?,
        }
        swept += 1;
    }
    if swept > 0 {
        tracing::info!(swept, dir = %ingest.display(), "removed temp files of interrupted fetches");
    }
    Ok(())
}

/// Every blob's digest, size and mtime; names that are not digests are
/// skipped.
fn scan_blobs(blobs: &Path) -> Result<Vec<(Digest, u64, i64)>, StoreError> {
    let entries = fs::read_dir(blobs).map_err(StoreError::io("read", blobs))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read", blobs))?;
        let name = entry.file_name();
        let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
            continue;
        };
        // A file deleted since the listing is simply not there.
        if let Ok(meta) = entry.metadata() {
            found.push((digest, meta.len(), meta.mtime()));
        }
    }
    Ok(found)
}

/// Refuses a root another user owns: they could have planted files in
/// `blobs/` that do not hold what their names say.
fn check_owner(root: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(root).map_err(StoreError::io("stat", root))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StoreError::NotOwned {
            path: root.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(StoreError::io("create", path))
}

/// Makes a rename or unlink in `dir` durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync", dir))
}
