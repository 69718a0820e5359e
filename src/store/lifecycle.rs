//! The cache's lifecycle: what is cached and who holds it, last use, leases,
//! deletes, eviction and verification.
//!
//! Invariant: a leased asset is never deleted except by an explicit forced
//! delete, and never evicted; a blob that fails verification leaves `blobs/`
//! (for `quarantine/`) before anyone can be given its path again.

use std::collections::HashSet;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;

use sha2::{Digest as _, Sha256};

use super::meta::{Pin, Record, now_ms};
use super::{Blob, Store, StoreError, fsync_dir};
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
}

/// A blob that failed verification.
#[derive(Debug, Clone)]
pub struct Corrupt {
    /// Its name.
    pub digest: Digest,
    /// What its bytes hash to.
    pub actual: Digest,
    /// Where it was moved.
    pub quarantined: std::path::PathBuf,
}

impl Store {
    /// One asset with its metadata; `Ok(None)` when it is not cached.
    pub fn info(&self, digest: &Digest) -> Result<Option<AssetInfo>, StoreError> {
        let Some(blob) = self.stat(digest)? else {
            return Ok(None);
        };
        let record = self.meta.get(digest)?;
        let pins = self.meta.pins_of(digest)?;
        Ok(Some(with_meta(blob, record, pins)))
    }

    /// Assets matching `query`, in digest order.
    pub fn list(&self, query: &ListQuery) -> Result<Vec<AssetInfo>, StoreError> {
        let now = now_ms();
        let mut found = Vec::new();
        let mut failed = None;
        self.meta.scan(query.after.as_ref(), |digest, record| {
            let held: Vec<Pin> = self
                .meta
                .pins_of(&digest)?
                .into_iter()
                .filter(|p| p.holds(now))
                .collect();
            let wanted = query
                .lease
                .as_ref()
                .is_none_or(|l| held.iter().any(|p| &p.lease == l))
                && query
                    .url_prefix
                    .as_ref()
                    .is_none_or(|u| record.urls.iter().any(|r| r.starts_with(u)))
                && (!query.unleased || held.is_empty());
            // A file removed behind the daemon's back is not listed.
            match self.stat(&digest) {
                Ok(Some(blob)) if wanted => found.push(with_meta(blob, Some(record), held)),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
            Ok(failed.is_none() && found.len() < query.limit)
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// Records that `blob` was fetched from `url` (`new` when it just
    /// entered the cache, which is made durable).
    pub fn used(&self, blob: &Blob, url: &str, new: bool) -> Result<(), StoreError> {
        self.meta
            .used(&blob.digest, blob.size, url, blob.added_unix_seconds, new)
            .map_err(StoreError::from)
    }

    /// Pins `digest` for `lease` until `expires` (Unix ms), or for ever.
    pub fn pin(
        &self,
        digest: &Digest,
        lease: &str,
        expires: Option<u64>,
    ) -> Result<(), StoreError> {
        self.meta
            .pin(digest, lease, expires)
            .map_err(StoreError::from)
    }

    /// Drops every pin of `lease`; returns how many.
    pub fn release(&self, lease: &str) -> Result<usize, StoreError> {
        self.meta.release(lease).map_err(StoreError::from)
    }

    /// Drops lapsed pins; returns how many.
    pub fn sweep_lapsed(&self) -> Result<usize, StoreError> {
        self.meta.sweep_lapsed(now_ms()).map_err(StoreError::from)
    }

    /// Removes a cached asset; `Ok(None)` when it was not cached, else its
    /// size. Refused while a lease holds it, unless `force`. Sandboxes that
    /// opened the file keep reading it until they close it.
    pub fn delete(&self, digest: &Digest, force: bool) -> Result<Option<u64>, StoreError> {
        let holders = self.holders(digest)?;
        if !force && !holders.is_empty() {
            return Err(StoreError::Leased {
                digest: *digest,
                leases: holders.join(", "),
            });
        }
        self.remove_blob(digest)
    }

    /// Evicts least recently used, unleased assets not in `keep` until the
    /// cache is within `policy`; with `dry_run`, only says which would go.
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
        let mut records: Vec<(Digest, Record)> = self.meta.records()?.into_iter().collect();
        records.sort_by_key(|(_, r)| r.last_used);
        let pins = self.meta.pins()?;
        let mut total: u64 = records.iter().map(|(_, r)| r.size).sum();
        let (mut free, fs_size) = self.space()?;
        let want_free = policy
            .min_free_bytes
            .max(fs_size / 100 * u64::from(policy.min_free_percent));
        let mut evicted = Vec::new();
        for (digest, record) in records {
            let over = policy.max_bytes.is_some_and(|m| total > m) || free < want_free;
            if !over {
                break;
            }
            let leased = pins
                .get(&digest)
                .is_some_and(|p| p.iter().any(|p| p.holds(now)));
            if leased || keep.contains(&digest) {
                continue;
            }
            // Gone already (deleted meanwhile): it no longer counts either.
            if !dry_run && self.remove_blob(&digest)?.is_none() {
                total = total.saturating_sub(record.size);
                continue;
            }
            total = total.saturating_sub(record.size);
            free = free.saturating_add(record.size);
            evicted.push(Blob {
                digest,
                path: self.blob_path(&digest),
                size: record.size,
                added_unix_seconds: record.added,
            });
        }
        Ok(evicted)
    }

    /// Re-hashes a blob. A mismatch moves it to `quarantine/` and forgets
    /// it; `Ok(None)` when it verifies (or is not cached).
    pub fn verify(&self, digest: &Digest) -> Result<Option<Corrupt>, StoreError> {
        let path = self.blob_path(digest);
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(StoreError::io("read", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual == *digest {
            return Ok(None);
        }
        let quarantine = self.root.join("quarantine");
        super::mkdir(&quarantine, 0o700)?;
        let moved = quarantine.join(format!("{}.{}", digest.hex(), now_ms()));
        // INVARIANT: out of blobs/ first, so its path is never handed out again.
        fs::rename(&path, &moved).map_err(StoreError::io("rename", &path))?;
        fsync_dir(&self.blobs)?;
        self.meta.remove(digest)?;
        tracing::error!(%digest, %actual, quarantined = %moved.display(), "blob failed verification");
        Ok(Some(Corrupt {
            digest: *digest,
            actual,
            quarantined: moved,
        }))
    }

    /// Every cached digest, per the metadata.
    pub fn digests(&self) -> Result<Vec<Digest>, StoreError> {
        let mut all: Vec<Digest> = self.meta.records()?.into_keys().collect();
        all.sort_unstable();
        Ok(all)
    }

    /// Leases holding `digest` now.
    fn holders(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let pins = self.meta.pins_of(digest)?;
        Ok(pins
            .into_iter()
            .filter(|p| p.holds(now))
            .map(|p| p.lease)
            .collect())
    }

    /// Unlinks a blob and forgets it; `Ok(None)` when it was not there.
    fn remove_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.size(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.meta.remove(digest)?;
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("stat", &path)(e)),
        };
        // INVARIANT: the file goes before its record; a crash in between
        // leaves a record without a file, which the next start drops.
        fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
        fsync_dir(&self.blobs)?;
        self.meta.remove(digest)?;
        Ok(Some(size))
    }
}

fn with_meta(blob: Blob, record: Option<Record>, pins: Vec<Pin>) -> AssetInfo {
    let (last_used, urls) = record.map_or((0, Vec::new()), |r| (r.last_used, r.urls));
    AssetInfo {
        blob,
        last_used,
        urls,
        pins,
    }
}
