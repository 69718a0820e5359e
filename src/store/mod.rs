//! The content-addressed store: verified assets on disk, and nothing else.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<64 hex>   verified assets, mode 0444, folders 0755
//! ingest/                 temp files of ingests in progress, and the
//!                         sidecars (`<temp>.part`) of partial downloads
//!                         kept across a restart (0700)
//! quarantine/             blobs that failed verification or reconcile (0700)
//! meta.redb               metadata (sizes, last use, URLs, leases), 0600
//! lock                    flock held by the one daemon using this root, 0600
//! ```
//!
//! Modes are set explicitly, whatever the umask. The store trusts nothing it
//! did not make: see [`layout`] for the checks at start (folders the daemon's
//! alone, one file system, no link followed, non-blobs quarantined).
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
//! [`Store::open`] sweeps, unless its sidecar says which leading bytes are
//! durable and it is younger than the keep time: then it is kept, never
//! served, and the next fetch of its digest re-hashes those bytes and goes
//! on from there (see [`partial`]). The store knows nothing of networks;
//! URLs only pass through it, redacted.

mod index;
mod ingest;
mod layout;
mod lifecycle;
mod meta;
mod partial;
mod pieces;
mod writer;

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::digest::Digest;
use index::{Entry, Index};
pub use ingest::Ingest;
pub use layout::Unsafe;
pub use lifecycle::{Actual, AssetInfo, Corrupt, EvictPolicy, LeaseCap, ListQuery};
pub use meta::{MetaError, Pin, Record, now_ms};
pub use partial::{Partial, SourceInfo};
pub use pieces::Pieces;

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
    /// A store folder is not the daemon's alone, or not where it must be:
    /// another user owns it, group or others may write in it, it is a
    /// symlink or no folder, or it is on another file system than `blobs/`.
    /// The daemon refuses to start on it.
    // The name predates the other problems; it stays until the status
    // mapping (src/server) can move with it.
    #[error("refusing {path}: {problem}; fix: {}", .problem.fix(.path))]
    NotOwned {
        /// The folder.
        path: PathBuf,
        /// What is wrong with it.
        problem: Unsafe,
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
    /// A user holds as many pins as it may; the asset was not pinned.
    #[error(
        "uid {uid} holds {held} lease pins, the most a user may hold \
         (--max-leases-per-uid {cap}); release some first"
    )]
    TooManyLeases {
        /// The user.
        uid: u32,
        /// The pins it holds.
        held: usize,
        /// The cap.
        cap: usize,
    },
    /// A user's pins would hold more bytes than it may; the asset was not
    /// pinned.
    #[error(
        "uid {uid} holds {held} bytes under lease; {size} more would pass the most a user may hold \
         (--max-leased-bytes-per-uid: {cap} bytes); release some first"
    )]
    TooMuchLeased {
        /// The user.
        uid: u32,
        /// Bytes of the assets it pins now.
        held: u64,
        /// The asset's size.
        size: u64,
        /// The cap, in bytes.
        cap: u64,
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

    /// True when the disk (or quota) is full or would go below the reserve;
    /// for metadata, when a full disk broke (or keeps breaking) its writes.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::NoSpace { .. } => true,
            StoreError::Meta(e) => e.is_no_space(),
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
    /// Partial downloads kept from before a restart, by digest.
    partials: Mutex<std::collections::HashMap<Digest, Partial>>,
    /// Set when the daemon stops: an ingest cut off then keeps its temp
    /// file and sidecar, to be resumed after the restart.
    keeping: std::sync::atomic::AtomicBool,
    _lock: Flock<fs::File>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, takes its lock,
    /// removes every leftover temp file in `ingest/` and moves whatever in
    /// `blobs/sha256/` is not a blob to `quarantine/`.
    ///
    /// Errors: [`StoreError::NotOwned`] when the root or a store folder is
    /// not the daemon's alone (see [`Unsafe`]); [`StoreError::Locked`] when
    /// another process uses `root`; [`StoreError::Io`] when a folder can't be
    /// made or read.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_keeping(root, DEFAULT_KEEP_PARTIALS)
    }

    /// [`Store::open`], keeping partial downloads younger than `keep_for`
    /// (see [`partial`]) instead of sweeping them.
    pub fn open_keeping(root: &Path, keep_for: std::time::Duration) -> Result<Store, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        let quarantine = root.join("quarantine");
        layout::prepare_root(root)?;
        let lock = lock(&root.join("lock"))?;
        // INVARIANT: the lock is held before anything in the root changes,
        // and each folder is checked before anything is made in it.
        layout::prepare_folder(&root.join("blobs"), layout::SHARED)?;
        layout::prepare_folder(&blobs, layout::SHARED)?;
        layout::prepare_folder(&ingest, layout::PRIVATE)?;
        layout::prepare_folder(&quarantine, layout::PRIVATE)?;
        // A commit renames from ingest/, Verify and reconcile into
        // quarantine/: refused now rather than after a whole download.
        layout::same_device(&ingest, &blobs)?;
        layout::same_device(&quarantine, &blobs)?;
        let partials = partial::sweep_keeping(&ingest, keep_for)?;
        let on_disk = layout::scan_blobs(&blobs, &quarantine)?;
        let meta = meta::Meta::open(root, &on_disk)?;
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
            partials: Mutex::new(partials),
            keeping: std::sync::atomic::AtomicBool::new(false),
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

    /// A hit: the cached asset `digest`, noting a use now; `None` when not
    /// cached. Memory only: the use reaches `meta.redb` at the next
    /// [`Store::flush_uses`]. The caller's URL is not recorded: nothing was
    /// read from it, and anyone may name any URL.
    pub fn lookup(&self, digest: &Digest) -> Option<Blob> {
        self.lookup_from(digest, "")
    }

    /// The same, noting `url` (redacted) as a source of the asset: for a
    /// transfer from `url` that brought these bytes.
    fn lookup_from(&self, digest: &Digest, url: &str) -> Option<Blob> {
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

    /// Resumes `partial` (from [`Store::take_partial`]) as an ingest of
    /// `expected`; see [`Ingest`]. Blocking.
    pub fn resume(
        self: &std::sync::Arc<Self>,
        expected: Digest,
        partial: &Partial,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Ingest, StoreError> {
        Ingest::resume(self, expected, partial, size, limit)
    }

    /// Resumes `partial`, the pieces of `expected` kept from before a
    /// restart (see [`Pieces`]). Blocking.
    pub fn resume_pieces(
        self: &std::sync::Arc<Self>,
        expected: Digest,
        size: u64,
        partial: &Partial,
    ) -> Result<Pieces, StoreError> {
        Pieces::resume(self, expected, size, partial)
    }

    /// Drops `partial`'s files: it won't be resumed. Blocking.
    pub fn discard_partial(&self, partial: &Partial) {
        partial.discard();
    }

    /// Starts a ranged ingest of `expected`, `size` bytes, written in
    /// pieces (see [`Pieces`]).
    pub fn pieces(
        self: &std::sync::Arc<Self>,
        expected: Digest,
        size: u64,
    ) -> Result<Pieces, StoreError> {
        Pieces::start(self, expected, size)
    }
}

impl Store {
    /// Whether `meta.redb` takes writes (false after a failed write, until
    /// [`Store::heal_meta`] succeeds). Memory only.
    pub fn meta_writable(&self) -> bool {
        !self.meta.is_broken()
    }

    /// After a failed metadata write, reopens `meta.redb` and rewrites it
    /// from the index (memory is the daemon's truth while it runs, so
    /// nothing it holds is lost); does nothing while the database is sound.
    /// Errors: [`StoreError::Meta`] while it still can't be written (a full
    /// disk says so). Takes the files and leases locks: the caller holds
    /// neither. Blocking.
    pub fn heal_meta(&self) -> Result<(), StoreError> {
        if !self.meta.is_broken() {
            return Ok(());
        }
        // INVARIANT: no pin, release or removal runs between the snapshot
        // and the rewrite (each changes memory and redb under one of these
        // locks), so the rewrite is what memory holds when it lands; writes
        // queued behind it apply on top, as they would have.
        let _files = self.files();
        let _leases = self.leases();
        let (records, pins) = self.index().snapshot();
        self.meta.reopen(&records, &pins)?;
        Ok(())
    }

    /// Drops `digest`'s durable record after its file left `blobs/`, best
    /// effort: it is already out of the index, and a record left behind is
    /// dropped by the rewrite after the next reopen or by the next start's
    /// reconcile (a record without a file). Blocking.
    fn forget_record(&self, digest: &Digest) {
        if let Err(e) = self.meta.remove(digest) {
            tracing::warn!(%digest, error = %e, "dropping the record failed; meta.redb is rewritten from memory once writable");
        }
    }

    /// Removes every temp file in `ingest/`: at shutdown, once no transfer
    /// runs; partial downloads with a sidecar stay, to be resumed. Blocking.
    pub fn sweep_ingest(&self) -> Result<(), StoreError> {
        let keep: Vec<PathBuf> = std::fs::read_dir(&self.ingest)
            .map_err(StoreError::io("read", &self.ingest))?
            .flatten()
            .map(|e| e.path())
            // A sidecar, one being written (`.part.new`: a transfer cut off
            // by the stop may be saving it right now), or a file with one.
            .filter(|p| {
                p.extension().is_some_and(|e| e == "part" || e == "new")
                    || partial::sidecar_path(p).exists()
            })
            .collect();
        layout::sweep_except(&self.ingest, &keep)
    }

    /// From now on, an ingest cut off keeps its temp file and sidecar for
    /// the next start (the daemon is stopping).
    pub fn keep_partials(&self) {
        self.keeping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The partial download of `digest` kept from before a restart, taken
    /// (a second fetch won't find it).
    pub fn take_partial(&self, digest: &Digest) -> Option<Partial> {
        self.partials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest)
    }
}

/// How long partial downloads are kept across a restart by default.
pub const DEFAULT_KEEP_PARTIALS: std::time::Duration = std::time::Duration::from_secs(3600);

/// Takes the root's lock: a file of the daemon's user alone (anyone who can
/// open it could hold the lock and keep the daemon from starting).
fn lock(path: &Path) -> Result<Flock<fs::File>, StoreError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(StoreError::io("open", path))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(StoreError::io("chmod", path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| StoreError::Locked {
        path: path.to_owned(),
    })
}

/// Makes a rename or unlink in `dir` durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY).bits())
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync", dir))
}
