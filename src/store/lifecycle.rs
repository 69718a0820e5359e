//! The cache's lifecycle: what is cached and who holds it, last use, leases,
//! deletes, eviction and verification.
//!
//! Invariant: a leased asset is never deleted except by an explicit forced
//! delete, and never evicted; a blob that fails verification leaves `blobs/`
//! (for `quarantine/`) before anyone can be given its path again. How pins
//! and removals stay atomic is in [`super::index`].

use std::collections::HashSet;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;

use sha2::{Digest as _, Sha256};

use super::index::{Entry, Refusal, Removal, eviction_order};
use super::layout::{self, Found};
use super::meta::{Pin, now_ms};
use super::{Blob, Store, StoreError, fsync_dir};
use crate::config::MinFree;
use crate::digest::Digest;

/// One cached asset with its metadata, for admins.
#[derive(Debug, Clone)]
pub struct AssetInfo {
    /// The file.
    pub blob: Blob,
    /// When a fetch last asked for it, Unix milliseconds.
    pub last_used: u64,
    /// The URLs it was fetched from.
    pub urls: Vec<String>,
    /// The leases that hold it now.
    pub pins: Vec<Pin>,
}

/// Which assets `List` returns.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only digests after this one.
    pub after: Option<Digest>,
    /// At most this many.
    pub limit: usize,
    /// Only assets this lease holds.
    pub lease: Option<String>,
    /// Only assets fetched from a URL starting with this.
    pub url_prefix: Option<String>,
    /// Only assets no lease holds.
    pub unleased: bool,
    /// Only this uid's pins count (for the filters) and are shown; `None`
    /// for everyone's (an admin's view).
    pub owner: Option<u32>,
}

/// When the cache is too big.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvictPolicy {
    /// Most bytes of assets to keep; `None` for no cap.
    pub max_bytes: Option<u64>,
    /// Free bytes to keep on the file system.
    pub min_free_bytes: u64,
    /// Free share of the file system to keep, in percent.
    pub min_free_percent: u8,
    /// How long a path handed out without a lease is kept from eviction,
    /// unless free space is below the floor.
    pub grace: std::time::Duration,
}

/// What was found at a blob's path that failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actual {
    /// A regular file whose bytes hash to this.
    Digest(Digest),
    /// Not a regular file (a symlink, folder, FIFO...): never read.
    NotRegular(&'static str),
}

impl std::fmt::Display for Actual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actual::Digest(d) => d.fmt(f),
            Actual::NotRegular(kind) => write!(f, "not a regular file but a {kind}"),
        }
    }
}

/// A blob that failed verification.
#[derive(Debug, Clone)]
pub struct Corrupt {
    /// Its name.
    pub digest: Digest,
    /// What its bytes hash to, or what it is instead of a file.
    pub actual: Actual,
    /// Where it was moved.
    pub quarantined: std::path::PathBuf,
}

/// What one user (not an admin) may hold under lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCap {
    /// Pins.
    pub pins: usize,
    /// Bytes of the assets pinned: a size, or a share of the store's file
    /// system.
    pub bytes: MinFree,
}

impl Store {
    /// One asset with its metadata; `None` when it is not cached. Memory only.
    pub fn info(&self, digest: &Digest) -> Option<AssetInfo> {
        let index = self.index();
        let now = now_ms();
        index.get(digest).map(|e| self.asset_info(digest, e, now))
    }

    /// Assets matching `query`, in digest order. Memory only.
    pub fn list(&self, query: &ListQuery) -> Vec<AssetInfo> {
        let index = self.index();
        let now = now_ms();
        index
            .range_after(query.after.as_ref())
            .filter(|(_, e)| {
                let held = || {
                    e.pins
                        .iter()
                        .filter(|p| p.holds(now) && query.owner.is_none_or(|o| p.owner == o))
                };
                query
                    .lease
                    .as_ref()
                    .is_none_or(|l| held().any(|p| &p.lease == l))
                    && query
                        .url_prefix
                        .as_ref()
                        .is_none_or(|u| e.urls.iter().any(|r| r.starts_with(u)))
                    && (!query.unleased || held().next().is_none())
            })
            .take(query.limit)
            .map(|(d, e)| {
                let mut info = self.asset_info(d, e, now);
                if let Some(owner) = query.owner {
                    info.pins.retain(|p| p.owner == owner);
                }
                info
            })
            .collect()
    }

    fn asset_info(&self, digest: &Digest, entry: &Entry, now: u64) -> AssetInfo {
        AssetInfo {
            blob: self.blob(digest, entry),
            last_used: entry.last_used,
            urls: entry.urls.clone(),
            pins: entry
                .pins
                .iter()
                .filter(|p| p.holds(now))
                .cloned()
                .collect(),
        }
    }

    /// How many assets and bytes are cached. Memory only.
    pub fn totals(&self) -> (usize, u64) {
        let index = self.index();
        (index.len(), index.bytes())
    }

    /// Pins `digest` for `owner`'s `lease` until `expires` (Unix ms), or
    /// for ever, if it is cached: `Ok(false)` when it is not (the caller
    /// fetches it again). With a `cap`, a new pin (not the renewal of one
    /// `owner` holds) is refused with [`StoreError::TooManyLeases`] when
    /// `owner` holds `cap.pins` pins already, and a pin on an asset `owner`
    /// pins no other way with [`StoreError::TooMuchLeased`] when it would
    /// take `owner` past `cap.bytes`; nothing changes then. Once this
    /// returns `Ok(true)` no delete (short of a forced one) or eviction
    /// removes the asset while the pin holds. Blocking: the pin is durable
    /// when this returns.
    pub fn pin(
        &self,
        digest: &Digest,
        lease: &str,
        owner: u32,
        expires: Option<u64>,
        cap: Option<LeaseCap>,
    ) -> Result<bool, StoreError> {
        self.heal_meta()?;
        let max_bytes = match cap.map(|c| c.bytes) {
            Some(MinFree::Bytes(n)) => Some(n),
            Some(MinFree::Percent(p)) => Some(self.space()?.1 / 100 * u64::from(p)),
            Some(MinFree::None) | None => None,
        };
        let _leases = self.leases();
        let previous = {
            let mut index = self.index();
            let Some(entry) = index.get(digest) else {
                return Ok(false);
            };
            let previous = entry.pins.iter().find(|p| p.is(lease, owner)).cloned();
            let now = now_ms();
            let size = entry.size;
            if let Some(cap) = cap
                && !previous.as_ref().is_some_and(|p| p.holds(now))
            {
                let held = index.pins_of(owner, now);
                if held >= cap.pins {
                    return Err(StoreError::TooManyLeases {
                        uid: owner,
                        held,
                        cap: cap.pins,
                    });
                }
                let (held, has) = index.pinned_bytes_of(owner, now, digest);
                if let Some(max) = max_bytes
                    && !has
                    && held.saturating_add(size) > max
                {
                    return Err(StoreError::TooMuchLeased {
                        uid: owner,
                        held,
                        size,
                        cap: max,
                    });
                }
            }
            index.pin(digest, lease, owner, expires);
            // The same pin for ever again (a runtime re-fetching what it
            // holds): nothing to write.
            if expires.is_none() && previous.as_ref().is_some_and(|p| p.expires.is_none()) {
                return Ok(true);
            }
            previous
        };
        // The pin holds in memory from here on, so nothing can remove the
        // asset while it is being made durable.
        if let Err(e) = self.meta.pin(digest, lease, owner, expires) {
            self.index().unpin(digest, lease, owner, previous);
            return Err(e.into());
        }
        Ok(true)
    }

    /// Drops every pin of `lease` owned by `owner`, or by anyone when
    /// `owner` is `None` (an admin); returns how many. Durable when it
    /// returns; on error nothing changed. Blocking.
    pub fn release(&self, lease: &str, owner: Option<u32>) -> Result<usize, StoreError> {
        self.heal_meta()?;
        let _leases = self.leases();
        let released = self.meta.release(lease, owner)?;
        self.index().release(lease, owner);
        Ok(released)
    }

    /// Drops lapsed pins from memory, then from `meta.redb` best effort: a
    /// lapsed pin holds nothing wherever it is read, and one left in redb
    /// goes at the rewrite after its next reopen. So a broken metadata
    /// store does not stop a gc, which is what frees a full disk. Returns
    /// how many pins lapsed. Blocking.
    pub fn sweep_lapsed(&self) -> Result<usize, StoreError> {
        let _leases = self.leases();
        let now = now_ms();
        let swept = self.index().sweep_lapsed(now);
        if swept > 0
            && let Err(e) = self.meta.sweep_lapsed(now)
        {
            tracing::warn!(error = %e, "dropping lapsed pins from meta.redb failed; it is rewritten from memory once writable");
        }
        Ok(swept)
    }

    /// Writes the last-use times and URLs noted since the last flush to
    /// `meta.redb`, in one durable transaction; returns how many. First
    /// reopens and rewrites a broken `meta.redb` ([`Store::heal_meta`]):
    /// the daemon's timer calls this every few seconds, so the metadata
    /// heals on its own once the disk has room again. Blocking.
    pub fn flush_uses(&self) -> Result<usize, StoreError> {
        self.heal_meta()?;
        let dirty = self.index().take_dirty();
        if let Err(e) = self.meta.put(&dirty) {
            self.index().mark_dirty(dirty.iter().map(|(d, _)| *d));
            return Err(e.into());
        }
        Ok(dirty.len())
    }

    /// Removes a cached asset; returns its size. Refused while a lease holds
    /// it ([`StoreError::Leased`]), unless `force`; [`StoreError::NotCached`]
    /// when it is not cached. Sandboxes that opened the file keep reading it
    /// until they close it. Blocking.
    pub fn delete(&self, digest: &Digest, force: bool) -> Result<u64, StoreError> {
        match self.remove(digest, Removal::Delete { force })? {
            Ok(size) => Ok(size),
            Err(Refusal::Leased(leases)) => Err(StoreError::Leased {
                digest: *digest,
                leases: leases.join(", "),
            }),
            Err(Refusal::Absent | Refusal::InGrace) => {
                Err(StoreError::NotCached { digest: *digest })
            }
        }
    }

    /// Evicts least recently used assets not in `keep` until the cache is
    /// within `policy`: never a leased one, and not one handed out within
    /// `policy.grace` unless free space is below its floor. With `dry_run`,
    /// only says which would go. Blocking.
    pub fn evict(
        &self,
        policy: &EvictPolicy,
        keep: &HashSet<Digest>,
        dry_run: bool,
    ) -> Result<Vec<Blob>, StoreError> {
        if policy.max_bytes.is_none() && policy.min_free_bytes == 0 && policy.min_free_percent == 0
        {
            return Ok(Vec::new());
        }
        // One pass at a time: two passes over one snapshot would both evict.
        let _pass = self
            .evicting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        let (candidates, mut total) = {
            let index = self.index();
            (index.eviction_candidates(keep, now), index.bytes())
        };
        let order = eviction_order(candidates);
        let (mut free, fs_size) = self.space()?;
        let want_free = policy
            .min_free_bytes
            .max(fs_size / 100 * u64::from(policy.min_free_percent));
        let grace_ms = u64::try_from(policy.grace.as_millis()).unwrap_or(u64::MAX);
        let mut evicted = Vec::new();
        for (digest, size) in order {
            let floor = free < want_free;
            if !floor && policy.max_bytes.is_none_or(|m| total <= m) {
                break;
            }
            let why = Removal::Evict { grace_ms, floor };
            let gone = if dry_run {
                self.index().evictable(&digest, why, now).then_some(size)
            } else {
                self.remove(&digest, why)?.ok()
            };
            let Some(size) = gone else { continue };
            total = total.saturating_sub(size);
            free = free.saturating_add(size);
            evicted.push(Blob {
                digest,
                path: self.blob_path(&digest),
                size,
                added_unix_seconds: 0,
            });
        }
        Ok(evicted)
    }

    /// Re-hashes a blob. A mismatch, or anything but a regular file at its
    /// path (never followed, read or waited on), moves it to `quarantine/`
    /// and forgets it; `Ok(None)` when it verifies (or is not there).
    /// Blocking.
    pub fn verify(&self, digest: &Digest) -> Result<Option<Corrupt>, StoreError> {
        let path = self.blob_path(digest);
        let (actual, inode) = match layout::open_blob(&path) {
            Ok(Found::Regular(file)) => {
                let inode = file
                    .metadata()
                    .map_err(StoreError::io("stat", &path))?
                    .ino();
                let actual = hash(file, &path)?;
                if actual == *digest {
                    return Ok(None);
                }
                (Actual::Digest(actual), inode)
            }
            Ok(Found::NotRegular { kind, ino }) => (Actual::NotRegular(kind), ino),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind the daemon's back: stop handing it out.
                let _files = self.files();
                if self
                    .index()
                    .take(digest, Removal::Delete { force: true }, 0)
                    .is_ok()
                {
                    tracing::warn!(%digest, "blob vanished from blobs/; forgotten");
                    self.forget_record(digest);
                }
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let quarantine = self.root.join("quarantine");
        layout::prepare_folder(&quarantine, layout::PRIVATE)?;
        let moved = {
            let _files = self.files();
            // Deleted and fetched again while we hashed: the new file is
            // another one, verified by its own commit.
            match fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == inode => {}
                _ => return Ok(None),
            }
            // INVARIANT: out of the index and blobs/ first, so its path is
            // never handed out again.
            self.index()
                .take(digest, Removal::Delete { force: true }, 0)
                .ok();
            let moved = layout::quarantine_entry(&path, &quarantine)?;
            fsync_dir(&self.blobs)?;
            self.forget_record(digest);
            moved
        };
        tracing::error!(%digest, %actual, quarantined = %moved.display(), "blob failed verification");
        Ok(Some(Corrupt {
            digest: *digest,
            actual,
            quarantined: moved,
        }))
    }

    /// Every cached digest, in order. Memory only.
    pub fn digests(&self) -> Vec<Digest> {
        self.index().digests()
    }

    /// Takes `digest` out of the index if `why` allows it, then unlinks its
    /// file and forgets its record: `Ok(Ok(size))` when removed,
    /// `Ok(Err(refusal))` when not allowed or not there. Blocking.
    ///
    /// The record and the file go together or neither, as callers see them:
    /// callers see the index (memory, the daemon's truth while it runs), and
    /// the entry leaves it exactly when the file leaves `blobs/`. The durable
    /// record follows best effort ([`Store::forget_record`]).
    fn remove(&self, digest: &Digest, why: Removal) -> Result<Result<u64, Refusal>, StoreError> {
        let _files = self.files();
        let entry = match self.index().take(digest, why, now_ms()) {
            Ok(entry) => entry,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let path = self.blob_path(digest);
        // INVARIANT: the file goes before its durable record, and a failed
        // unlink puts the entry back, so an error means nothing changed.
        // A crash (or a failed redb write) in between leaves a record
        // without a file, which the next reopen's rewrite from memory or the
        // next start's reconcile drops. The other order (record first) would
        // wedge a full disk: redb cannot commit even a removal without free
        // pages, so no delete or eviction could free the space it needs.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Still there: it stays served.
                self.index().insert_back(*digest, entry);
                return Err(StoreError::io("remove", &path)(e));
            }
        }
        // The name is gone; a failed fsync only risks it coming back after
        // a crash, as a verified blob that reconcile records again.
        if let Err(e) = fsync_dir(&self.blobs) {
            tracing::warn!(%digest, error = %e, "removal may not survive a crash");
        }
        self.forget_record(digest);
        Ok(Ok(entry.size))
    }
}

/// What the bytes of `file` hash to. Blocking.
fn hash(mut file: fs::File, path: &std::path::Path) -> Result<Digest, StoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_bytes(hasher.finalize().into()))
}
