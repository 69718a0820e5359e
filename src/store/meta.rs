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
//!
//! After a failed write (a full disk, any I/O error) redb refuses every
//! later write until it is reopened. So a failed write marks the database
//! broken; every later write fails at once with [`MetaError::Broken`] (naming
//! the first failure, so a full disk stays a full disk) until the store calls
//! [`Meta::reopen`], which drops the database, opens it again and rewrites
//! it from what memory holds (the daemon's truth while it runs).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::index::{Entry, Index};
use crate::digest::Digest;

/// Digest bytes → JSON [`Record`].
const ASSETS: TableDefinition<&[u8], &str> = TableDefinition::new("assets");
/// (digest bytes, lease, owner uid) → expiry in Unix milliseconds, 0 for
/// never. A lease name is scoped to its owner: two users' leases of one
/// name are two pins.
const PINS: TableDefinition<(&[u8], &str, u32), u64> = TableDefinition::new("pins_v2");
/// The table of pins before they had owners: (digest bytes, lease) →
/// expiry. Migrated into [`PINS`] at open, owned by root (0), then dropped.
const PINS_V1: TableDefinition<(&[u8], &str), u64> = TableDefinition::new("pins");

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
    /// The uid that made it: only it or an admin releases it.
    pub owner: u32,
    /// When the pin lapses, Unix milliseconds; `None` for never.
    pub expires: Option<u64>,
}

impl Pin {
    /// Whether this is `owner`'s pin of `lease`.
    pub fn is(&self, lease: &str, owner: u32) -> bool {
        self.lease == lease && self.owner == owner
    }

    /// Whether the pin still holds at `now` (Unix milliseconds).
    pub fn holds(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A metadata failure.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// redb failed.
    #[error("metadata store {path}: {source}")]
    Redb {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: redb::Error,
    },
    /// An earlier write failed, and the database has not been reopened
    /// since: writes are refused until it is.
    #[error(
        "metadata store {path} is not writable since a write failed ({cause}); \
         it is reopened once writes succeed again"
    )]
    Broken {
        /// The database file.
        path: PathBuf,
        /// The failure that broke it.
        cause: String,
        /// Whether that failure was a full disk or quota.
        no_space: bool,
    },
}

impl MetaError {
    /// True when the disk (or quota) is full: ENOSPC or EDQUOT anywhere in
    /// the error's chain, or in the failure that broke the database.
    pub fn is_no_space(&self) -> bool {
        match self {
            MetaError::Redb { source, .. } => chain_has_no_space(source),
            MetaError::Broken { no_space, .. } => *no_space,
        }
    }
}

/// Whether `err` or any error it wraps is an I/O error of a full disk.
fn chain_has_no_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && is_no_space_io(io)
        {
            return true;
        }
        if let Some(redb::Error::Io(io)) = e.downcast_ref::<redb::Error>()
            && is_no_space_io(io)
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn is_no_space_io(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(
        err.raw_os_error(),
        Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
    )
}

/// The database, and whether it may be written.
struct State {
    /// `None` only while a reopen failed. A broken handle is kept until
    /// [`Meta::reopen`] drops it: redb allows one handle per file.
    db: Option<Database>,
    /// Set when a write failed: no write is tried until a reopen.
    broken: Option<Broken>,
}

/// The metadata database.
pub struct Meta {
    /// Held across each read and write (redb serializes writers anyway) and
    /// across a reopen, so no write sees a half-reopened database.
    state: Mutex<State>,
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
        let db = open_db(root, &path, "blobs/")?;
        migrate_pins(&db).map_err(redb_error(&path))?;
        let meta = Meta {
            state: Mutex::new(State {
                db: Some(db),
                broken: None,
            }),
            path,
        };
        meta.reconcile(on_disk)?;
        Ok(meta)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a write failed and the database awaits [`Meta::reopen`].
    pub fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }

    /// Drops the database and opens it again (moving it aside and starting
    /// afresh if it is damaged), then replaces its content with `records`
    /// and `pins`, what memory holds, in one durable transaction. Does
    /// nothing unless a write failed since the last (re)open. On failure
    /// the database stays broken, with this failure as its cause. Blocking.
    pub fn reopen(
        &self,
        records: &[(Digest, Record)],
        pins: &[(Digest, Pin)],
    ) -> Result<(), MetaError> {
        let mut state = self.lock();
        if state.broken.is_none() {
            return Ok(());
        }
        // redb allows one handle per file: the old one goes first.
        state.db = None;
        let root = self.path.parent().unwrap_or(Path::new("/"));
        let reopened = open_db(root, &self.path, "memory").and_then(|db| {
            rewrite(&db, records, pins).map_err(redb_error(&self.path))?;
            Ok(db)
        });
        match reopened {
            Ok(db) => {
                state.db = Some(db);
                state.broken = None;
                tracing::info!(
                    path = %self.path.display(),
                    assets = records.len(),
                    pins = pins.len(),
                    "metadata store reopened and rewritten from memory"
                );
                Ok(())
            }
            Err(e) => {
                state.broken = Some(Broken::from(&e));
                Err(e)
            }
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

    /// The open database, or [`MetaError::Broken`].
    fn usable<'a>(&self, state: &'a State) -> Result<&'a Database, MetaError> {
        match (&state.db, &state.broken) {
            (Some(db), None) => Ok(db),
            (_, broken) => {
                let broken = broken.clone().unwrap_or_default();
                Err(MetaError::Broken {
                    path: self.path.clone(),
                    cause: broken.cause,
                    no_space: broken.no_space,
                })
            }
        }
    }

    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), MetaError> {
        let mut state = self.lock();
        let db = self.usable(&state)?;
        let run = || -> Result<(), redb::Error> {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
            f(&tx)?;
            tx.commit()?;
            Ok(())
        };
        let result = run().map_err(redb_error(&self.path));
        // Whatever failed, a reopen and a rewrite from memory is safe, and
        // after an I/O error redb accepts nothing less.
        if let Err(e) = &result {
            state.broken = Some(Broken::from(e));
        }
        result
    }

    /// Every record, by digest.
    pub fn records(&self) -> Result<HashMap<Digest, Record>, MetaError> {
        let state = self.lock();
        let db = self.usable(&state)?;
        let read = || -> Result<HashMap<Digest, Record>, redb::Error> {
            let tx = db.begin_read()?;
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
        read().map_err(redb_error(&self.path))
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
        let state = self.lock();
        let db = self.usable(&state)?;
        let read = || -> Result<HashMap<Digest, Vec<Pin>>, redb::Error> {
            let tx = db.begin_read()?;
            let table = match tx.open_table(PINS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
                Err(e) => return Err(e.into()),
            };
            let mut all: HashMap<Digest, Vec<Pin>> = HashMap::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let (digest, lease, owner) = key.value();
                if let Some(digest) = digest_from(digest) {
                    all.entry(digest).or_default().push(Pin {
                        lease: lease.to_owned(),
                        owner,
                        expires: (value.value() != 0).then(|| value.value()),
                    });
                }
            }
            Ok(all)
        };
        read().map_err(redb_error(&self.path))
    }

    /// Pins `digest` for `owner`'s `lease` until `expires` (Unix ms;
    /// `None` for never).
    pub fn pin(
        &self,
        digest: &Digest,
        lease: &str,
        owner: u32,
        expires: Option<u64>,
    ) -> Result<(), MetaError> {
        self.write(Durability::Immediate, |tx| {
            let mut pins = tx.open_table(PINS)?;
            pins.insert(
                (&digest_key(digest)[..], lease, owner),
                expires.unwrap_or(0),
            )?;
            Ok(())
        })
    }

    /// Drops every pin of `lease` owned by `owner`, or by anyone when
    /// `owner` is `None`; returns how many there were.
    pub fn release(&self, lease: &str, owner: Option<u32>) -> Result<usize, MetaError> {
        let mut released = 0;
        self.write(Durability::Immediate, |tx| {
            let mut pins = tx.open_table(PINS)?;
            let gone =
                pins.extract_if(|(_, l, o), _| l == lease && owner.is_none_or(|w| w == o))?;
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

/// Why the database is broken.
#[derive(Debug, Clone, Default)]
struct Broken {
    /// What redb said when the write (or reopen) failed.
    cause: String,
    /// Whether that was a full disk or quota.
    no_space: bool,
}

impl From<&MetaError> for Broken {
    fn from(err: &MetaError) -> Broken {
        let cause = match err {
            MetaError::Redb { source, .. } => source.to_string(),
            MetaError::Broken { cause, .. } => cause.clone(),
        };
        Broken {
            cause,
            no_space: err.is_no_space(),
        }
    }
}

fn redb_error(path: &Path) -> impl Fn(redb::Error) -> MetaError + '_ {
    move |source| MetaError::Redb {
        path: path.to_owned(),
        source,
    }
}

/// Opens (creating) the database at `path` in `root`, 0600; a damaged one
/// is moved aside and a new one made, to be filled from `rebuilt_from`
/// (for the log).
fn open_db(root: &Path, path: &Path, rebuilt_from: &str) -> Result<Database, MetaError> {
    let io = |e: std::io::Error| redb_error(path)(redb::Error::Io(e));
    private_file(path).map_err(io)?;
    match Database::create(path) {
        Ok(db) => Ok(db),
        // Only damage is repaired by a rebuild; an I/O or permission
        // error must not cost the leases.
        Err(e) if !is_damage(&e) => Err(redb_error(path)(e.into())),
        Err(e) => {
            let aside = root.join(format!("meta.redb.damaged-{}", now_ms()));
            tracing::warn!(error = %e, moved_to = %aside.display(), "metadata store damaged; rebuilding it from {rebuilt_from}");
            std::fs::rename(path, &aside)
                .and_then(|()| private_file(&aside))
                .and_then(|()| private_file(path))
                .map_err(io)?;
            Database::create(path).map_err(|e| redb_error(path)(e.into()))
        }
    }
}

/// Replaces everything in `db` with `records` and `pins`, durably.
fn rewrite(
    db: &Database,
    records: &[(Digest, Record)],
    pins: &[(Digest, Pin)],
) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    tx.delete_table(ASSETS)?;
    tx.delete_table(PINS)?;
    tx.delete_table(PINS_V1)?;
    {
        let mut assets = tx.open_table(ASSETS)?;
        for (digest, record) in records {
            assets.insert(&digest_key(digest)[..], encode(record).as_str())?;
        }
        let mut table = tx.open_table(PINS)?;
        for (digest, pin) in pins {
            table.insert(
                (&digest_key(digest)[..], pin.lease.as_str(), pin.owner),
                pin.expires.unwrap_or(0),
            )?;
        }
    }
    tx.commit()?;
    Ok(())
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
    let _ = pins.extract_if(|(d, _, _), _| d == &key[..])?.count();
    Ok(())
}

/// Moves the pins of a database made before pins had owners into
/// [`PINS`], owned by root (0): only an admin releases them (or their TTL
/// lapses), as before. Does nothing when there is no old table. Durable.
fn migrate_pins(db: &Database) -> Result<(), redb::Error> {
    match db.begin_read()?.open_table(PINS_V1) {
        Ok(_) => {}
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let tx = db.begin_write()?;
    let old = tx.open_table(PINS_V1)?;
    let mut rows = Vec::new();
    for entry in old.iter()? {
        let (key, value) = entry?;
        let (digest, lease) = key.value();
        rows.push((digest.to_vec(), lease.to_owned(), value.value()));
    }
    drop(old);
    let migrated = rows.len();
    {
        let mut pins = tx.open_table(PINS)?;
        for (digest, lease, expires) in &rows {
            pins.insert((&digest[..], lease.as_str(), 0), *expires)?;
        }
    }
    tx.delete_table(PINS_V1)?;
    tx.commit()?;
    if migrated > 0 {
        tracing::info!(
            migrated,
            "pins of meta.redb migrated to owned pins (owner root)"
        );
    }
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
        meta.pin(&d(2), "sandbox-a", 0, None).unwrap();
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
        meta.pin(&d(1), "a", 0, None).unwrap();
        meta.pin(&d(2), "a", 0, None).unwrap();
        meta.pin(&d(2), "b", 0, Some(1000)).unwrap();
        assert_eq!(meta.sweep_lapsed(999).unwrap(), 0);
        assert_eq!(meta.sweep_lapsed(1000).unwrap(), 1);
        assert_eq!(meta.release("a", None).unwrap(), 2);
        assert!(meta.pins().unwrap().is_empty());
    }

    #[test]
    fn a_broken_database_refuses_writes_until_reopened_with_what_memory_holds() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path(), &[(d(1), 10, 100), (d(2), 20, 200)]).unwrap();
        meta.pin(&d(1), "a", 0, None).unwrap();
        meta.lock().broken = Some(Broken {
            cause: "I/O error: No space left on device (os error 28)".into(),
            no_space: true,
        });
        let err = meta.pin(&d(2), "b", 0, None).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(err.to_string().contains("No space left"), "{err}");
        // Memory's truth: d(2) went, d(3) came, and d(3) holds lease b.
        let record = Record {
            size: 30,
            added: 3,
            last_used: 3000,
            urls: vec!["http://h/3".into()],
        };
        let pin = Pin {
            lease: "b".into(),
            owner: 1000,
            expires: Some(99),
        };
        meta.reopen(&[(d(3), record.clone())], &[(d(3), pin.clone())])
            .unwrap();
        assert!(!meta.is_broken());
        assert_eq!(meta.records().unwrap(), HashMap::from([(d(3), record)]));
        assert_eq!(meta.pins().unwrap(), HashMap::from([(d(3), vec![pin])]));
        meta.pin(&d(3), "c", 0, None).unwrap();
    }

    #[test]
    fn a_lease_name_is_scoped_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path(), &[(d(1), 1, 1)]).unwrap();
        meta.pin(&d(1), "x", 0, None).unwrap();
        meta.pin(&d(1), "x", 1000, Some(5000)).unwrap();
        assert_eq!(meta.pins().unwrap()[&d(1)].len(), 2, "two owners, two pins");
        assert_eq!(meta.release("x", Some(2000)).unwrap(), 0);
        assert_eq!(meta.release("x", Some(1000)).unwrap(), 1);
        let left = &meta.pins().unwrap()[&d(1)];
        assert_eq!(
            left,
            &vec![Pin {
                lease: "x".into(),
                owner: 0,
                expires: None
            }]
        );
        drop(meta);
        let meta = Meta::open(dir.path(), &[(d(1), 1, 1)]).unwrap();
        assert_eq!(meta.pins().unwrap()[&d(1)][0].owner, 0, "owners persist");
    }

    #[test]
    fn pins_without_owners_are_migrated_as_roots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            // A database as the daemon wrote it before pins had owners.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut old = tx.open_table(PINS_V1).unwrap();
                old.insert((&digest_key(&d(1))[..], "old-forever"), 0)
                    .unwrap();
                old.insert((&digest_key(&d(1))[..], "old-ttl"), 4242)
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let meta = Meta::open(dir.path(), &[(d(1), 1, 1)]).unwrap();
        let mut pins = meta.pins().unwrap().remove(&d(1)).unwrap();
        pins.sort_by(|a, b| a.lease.cmp(&b.lease));
        let pin = |lease: &str, expires| Pin {
            lease: lease.into(),
            owner: 0,
            expires,
        };
        assert_eq!(
            pins,
            vec![pin("old-forever", None), pin("old-ttl", Some(4242))]
        );
        // The old table is gone, so a second open migrates nothing again.
        let state = meta.lock();
        let db = state.db.as_ref().unwrap();
        assert!(matches!(
            db.begin_read().unwrap().open_table(PINS_V1),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        drop(state);
        // A non-admin release of the migrated name by its old holder's
        // name finds nothing of its own.
        assert_eq!(meta.release("old-forever", Some(1000)).unwrap(), 0);
        assert_eq!(meta.release("old-forever", None).unwrap(), 1);
    }

    #[test]
    fn no_space_is_found_anywhere_in_the_chain() {
        let full = redb::Error::Io(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        assert!(chain_has_no_space(&full));
        let quota = redb::Error::Io(std::io::Error::from_raw_os_error(nix::libc::EDQUOT));
        assert!(chain_has_no_space(&quota));
        assert!(!chain_has_no_space(&redb::Error::PreviousIo));
        let eio = redb::Error::Io(std::io::Error::from_raw_os_error(nix::libc::EIO));
        assert!(!chain_has_no_space(&eio));
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
