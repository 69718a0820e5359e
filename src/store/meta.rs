//! Metadata that survives restarts: per asset its size, when it was added
//! and last used, the URLs it came from, and the leases that pin it.
//!
//! Kept in redb (`<root>/meta.redb`), a crash-safe embedded store, but never
//! the only truth: at every start it is reconciled with `blobs/` (records
//! without a file go, files without a record are added), and a damaged
//! database is moved aside and rebuilt from `blobs/`. Every write is durable
//! when it returns; last-use times reach it in batches (see
//! [`super::Store::flush_uses`]), so a crash loses at most the last few
//! seconds of LRU order.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::index::{Entry, Index};
use crate::digest::Digest;

/// Digest bytes → JSON [`Record`].
const ASSETS: TableDefinition<&[u8], &str> = TableDefinition::new("assets");
/// (digest bytes, lease) → expiry in Unix milliseconds, 0 for never.
const PINS: TableDefinition<(&[u8], &str), u64> = TableDefinition::new("pins");

/// What is known of one asset besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Size in bytes.
    pub size: u64,
    /// When it entered the cache, Unix seconds.
    pub added: i64,
    /// When a fetch last asked for it, Unix milliseconds.
    pub last_used: u64,
    /// The URLs it was fetched from, oldest first.
    pub urls: Vec<String>,
}

/// A lease's pin on an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The lease's name, chosen by the caller (a sandbox id, say).
    pub lease: String,
    /// When the pin lapses, Unix milliseconds; `None` for never.
    pub expires: Option<u64>,
}

impl Pin {
    /// Whether the pin still holds at `now` (Unix milliseconds).
    pub fn holds(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A metadata failure.
#[derive(Debug, thiserror::Error)]
#[error("metadata store {path}: {source}")]
pub struct MetaError {
    path: PathBuf,
    source: redb::Error,
}

/// The metadata database.
pub struct Meta {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("path", &self.path).finish()
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Meta {
    /// Opens `<root>/meta.redb`, rebuilding it when it is damaged, and
    /// reconciles it with `on_disk` (each blob's digest, size and mtime).
    pub fn open(root: &Path, on_disk: &[(Digest, u64, i64)]) -> Result<Meta, MetaError> {
        let path = root.join("meta.redb");
        private_file(&path).map_err(|e| MetaError {
            path: path.clone(),
            source: redb::Error::Io(e),
        })?;
        let db = match Database::create(&path) {
            Ok(db) => db,
            // Only damage is repaired by a rebuild; an I/O or permission
            // error must not cost the leases.
            Err(e) if !is_damage(&e) => {
                return Err(MetaError {
                    path,
                    source: e.into(),
                });
            }
            Err(e) => {
                let aside = root.join(format!("meta.redb.damaged-{}", now_ms()));
                tracing::warn!(error = %e, moved_to = %aside.display(), "metadata store damaged; rebuilding it from blobs/");
                std::fs::rename(&path, &aside)
                    .and_then(|()| private_file(&aside))
                    .and_then(|()| private_file(&path))
                    .map_err(|e| MetaError {
                        path: path.clone(),
                        source: redb::Error::Io(e),
                    })?;
                Database::create(&path).map_err(|e| MetaError {
                    path: path.clone(),
                    source: e.into(),
                })?
            }
        };
        let meta = Meta { db, path };
        meta.reconcile(on_disk)?;
        Ok(meta)
    }

    fn fail(&self) -> impl Fn(redb::Error) -> MetaError + '_ {
        |source| MetaError {
            path: self.path.clone(),
            source,
        }
    }

    /// Makes the records match the blobs on disk.
    fn reconcile(&self, on_disk: &[(Digest, u64, i64)]) -> Result<(), MetaError> {
        let known: HashSet<Digest> = self.records()?.into_keys().collect();
        let present: HashSet<Digest> = on_disk.iter().map(|(d, _, _)| *d).collect();
        let gone: Vec<Digest> = known.difference(&present).copied().collect();
        let added: Vec<&(Digest, u64, i64)> = on_disk
            .iter()
            .filter(|(d, _, _)| !known.contains(d))
            .collect();
        if gone.is_empty() && added.is_empty() {
            return Ok(());
        }
        self.write(Durability::Immediate, |tx| {
            let mut assets = tx.open_table(ASSETS)?;
            for (digest, size, mtime) in &added {
                let record = Record {
                    size: *size,
                    added: *mtime,
                    last_used: (*mtime).max(0) as u64 * 1000,
                    urls: Vec::new(),
                };
                assets.insert(&digest_key(digest)[..], encode(&record).as_str())?;
            }
            drop(assets);
            for digest in &gone {
                remove_in(tx, digest)?;
            }
            Ok(())
        })?;
        tracing::info!(
            added = added.len(),
            removed = gone.len(),
            "metadata reconciled with blobs/"
        );
        Ok(())
    }

    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), MetaError> {
        let run = || -> Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(durability)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
            f(&tx)?;
            tx.commit()?;
            Ok(())
        };
        run().map_err(self.fail())
    }

    /// Every record, by digest.
    pub fn records(&self) -> Result<HashMap<Digest, Record>, MetaError> {
        let read = || -> Result<HashMap<Digest, Record>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = match tx.open_table(ASSETS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
                Err(e) => return Err(e.into()),
            };
            let mut all = HashMap::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                if let (Some(digest), Some(record)) =
                    (digest_from(key.value()), decode(value.value()))
                {
                    all.insert(digest, record);
                }
            }
            Ok(all)
        };
        read().map_err(self.fail())
    }

    /// Every record with its pins, as the in-memory index.
    pub fn load(&self) -> Result<Index, MetaError> {
        let mut pins = self.pins()?;
        let entries = self
            .records()?
            .into_iter()
            .map(|(digest, record)| {
                let pins = pins.remove(&digest).unwrap_or_default();
                (digest, Entry::from_record(record, pins))
            })
            .collect();
        Ok(Index::new(entries))
    }

    /// Writes `records`, durably (one fsync for the batch).
    pub fn put(&self, records: &[(Digest, Record)]) -> Result<(), MetaError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(Durability::Immediate, |tx| {
            let mut assets = tx.open_table(ASSETS)?;
            for (digest, record) in records {
                assets.insert(&digest_key(digest)[..], encode(record).as_str())?;
            }
            Ok(())
        })
    }

    /// Every pin, by digest.
    pub fn pins(&self) -> Result<HashMap<Digest, Vec<Pin>>, MetaError> {
        let read = || -> Result<HashMap<Digest, Vec<Pin>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = match tx.open_table(PINS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
                Err(e) => return Err(e.into()),
            };
            let mut all: HashMap<Digest, Vec<Pin>> = HashMap::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let (digest, lease) = key.value();
                if let Some(digest) = digest_from(digest) {
                    all.entry(digest).or_default().push(Pin {
                        lease: lease.to_owned(),
                        expires: (value.value() != 0).then(|| value.value()),
                    });
                }
            }
            Ok(all)
        };
        read().map_err(self.fail())
    }

    /// Pins `digest` for `lease` until `expires` (Unix ms; `None` for never).
    pub fn pin(&self, digest: &Digest, lease: &str, expires: Option<u64>) -> Result<(), MetaError> {
        self.write(Durability::Immediate, |tx| {
            let mut pins = tx.open_table(PINS)?;
            pins.insert((&digest_key(digest)[..], lease), expires.unwrap_or(0))?;
            Ok(())
        })
    }

    /// Drops every pin of `lease`; returns how many there were.
    pub fn release(&self, lease: &str) -> Result<usize, MetaError> {
        let mut released = 0;
        self.write(Durability::Immediate, |tx| {
            let mut pins = tx.open_table(PINS)?;
            let gone = pins.extract_if(|(_, l), _| l == lease)?;
            released = gone.count();
            Ok(())
        })?;
        Ok(released)
    }

    /// Drops the pins that lapsed before `now`; returns how many.
    pub fn sweep_lapsed(&self, now: u64) -> Result<usize, MetaError> {
        let mut swept = 0;
        self.write(Durability::Immediate, |tx| {
            let mut pins = tx.open_table(PINS)?;
            swept = pins
                .extract_if(|_, expires| expires != 0 && expires <= now)?
                .count();
            Ok(())
        })?;
        Ok(swept)
    }

    /// Forgets `digest` and its pins.
    pub fn remove(&self, digest: &Digest) -> Result<(), MetaError> {
        self.write(Durability::Immediate, |tx| remove_in(tx, digest))
    }
}

/// Creates `path` (or takes the existing file) as a regular file of mode
/// 0600 whatever the umask: leases and URLs are no one else's. A link or
/// anything but a regular file is refused, never followed or waited on.
fn private_file(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                std::io::Error::other("a symlink, refused (rm it: it is rebuilt)")
            }
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "not a regular file, refused (move it away: it is rebuilt)",
        ));
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Whether opening failed because the file is not a sound database.
fn is_damage(err: &redb::DatabaseError) -> bool {
    match err {
        redb::DatabaseError::UpgradeRequired(_) => true,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

fn remove_in(tx: &redb::WriteTransaction, digest: &Digest) -> Result<(), redb::Error> {
    let key = digest_key(digest);
    tx.open_table(ASSETS)?.remove(&key[..])?;
    let mut pins = tx.open_table(PINS)?;
    let _ = pins.extract_if(|(d, _), _| d == &key[..])?.count();
    Ok(())
}

fn digest_key(digest: &Digest) -> [u8; 32] {
    digest.bytes()
}

fn digest_from(bytes: &[u8]) -> Option<Digest> {
    <[u8; 32]>::try_from(bytes).ok().map(Digest::from_bytes)
}

fn encode(record: &Record) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn decode(text: &str) -> Option<Record> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn reconcile_adds_missing_and_drops_stale_records() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path(), &[(d(1), 10, 100), (d(2), 20, 200)]).unwrap();
        meta.pin(&d(2), "sandbox-a", None).unwrap();
        drop(meta);
        let meta = Meta::open(dir.path(), &[(d(1), 10, 100), (d(3), 30, 300)]).unwrap();
        let records = meta.records().unwrap();
        let mut keys: Vec<_> = records.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, vec![d(1), d(3)]);
        assert_eq!(records[&d(3)].size, 30);
        assert!(
            meta.pins().unwrap().is_empty(),
            "pins of a vanished blob go too"
        );
    }

    #[test]
    fn leases_pin_release_and_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path(), &[(d(1), 1, 1), (d(2), 2, 2)]).unwrap();
        meta.pin(&d(1), "a", None).unwrap();
        meta.pin(&d(2), "a", None).unwrap();
        meta.pin(&d(2), "b", Some(1000)).unwrap();
        assert_eq!(meta.sweep_lapsed(999).unwrap(), 0);
        assert_eq!(meta.sweep_lapsed(1000).unwrap(), 1);
        assert_eq!(meta.release("a").unwrap(), 2);
        assert!(meta.pins().unwrap().is_empty());
    }

    #[test]
    fn damaged_database_is_rebuilt_from_blobs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.redb"), b"this is not a database").unwrap();
        let meta = Meta::open(dir.path(), &[(d(7), 70, 700)]).unwrap();
        assert_eq!(meta.records().unwrap()[&d(7)].size, 70);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("meta.redb.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }
}
